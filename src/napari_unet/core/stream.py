"""Segmentation of images larger than memory, written chunk by chunk to OME-Zarr.

:func:`segment_to` reads a (lazy) image tile by tile and writes instance labels into
an OME-Zarr image at ``out``: the full-resolution labels (int32) at path ``0``, a
pyramid of 2x-downsampled levels at ``1``, ``2``, ... (nearest neighbour, so napari
displays a large result quickly), multiscales and ``image-label`` metadata, and with
``probabilities=True`` the per-class probabilities (float32) in the OME-Zarr image
``probabilities`` inside it. The labels equal those of the in-memory
:func:`~napari_unet.core.predict.segment` (see :mod:`napari_unet.core.blocks`); for
planes above :data:`~napari_unet.core.sources.SAMPLE_PIXELS` the normalisation
percentiles come from a grid sample instead of every pixel.

Each plane goes through three steps; memory holds the tiles of one chunk, or one row
of chunks and its neighbours, never the image:

1. per chunk: predict the chunk (its tiles start on the chunk's corner, which lies on
   the network's pooling grid), write its foreground mask (a scratch array), its
   probabilities and provisional labels (so a viewer sees it appear), then record its
   summary;
2. merge the summaries into the plane's objects;
3. per row of chunks: relabel each chunk through the merged tables, grow it with a
   1-px halo from its neighbours, write it, record it.

The steps themselves live in :mod:`napari_unet.core.chunk_work`; this module plans
a run, checks and resumes its store, and runs the steps here or on a dask cluster.

Then the pyramid is written level by level (dask) and the store is marked complete.

Crash safety: the store is created under a temporary name and renamed into place; a
chunk's record (a file in ``out/work/records``) is written, atomically, only after its
arrays are written, so a run killed at any moment and restarted with ``resume=True``
redoes exactly the unrecorded work and ends identical to an uninterrupted run. An
existing ``out`` is never touched without ``resume``; with it, it must be a store of
this function for the same image, model and settings.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .blocks import ChunkGrid
from .checkpoint import load_model
from .chunk_work import Run, label_row, make_engine, merge_plane, model_digest, model_file_bytes, predict_chunk
from .config import InstanceConfig
from .devices import resolve_device
from .errors import ConfigError, NapariUnetError, OutputFileError
from .layout import ImageShapeError, axes_at_minus3
from .memory import reuse_freed_memory
from .model import UNet
from .predict import PredictOptions, instance_settings
from .progress import drive
from .records import to_dict
from .sources import Calibration, LazyPlanes, normalization_range, open_source, sample_digest, source_calibration
from .store import (
    LABELLED,
    PREDICTED,
    WORK,
    finish,
    open_store,
    read_fingerprint,
    write_pyramid,
)

log = logging.getLogger(__name__)

#: Default chunk edge (px) of the output store and unit of work.
DEFAULT_CHUNK = 1024
#: Chunk edges below this are warned about (px); tests use small chunks on purpose.
SMALL_CHUNK = 64


@dataclass(frozen=True)
class ChunkProgress:
    """A chunk went through a stage: ``"predicted"`` (step 1) or ``"labelled"``
    (step 3, its final labels are in the store). ``done``/``total`` count chunk
    stages over all planes (work recorded by an earlier run included); ``plane`` is
    the stack index, ``rows``/``cols`` the chunk's window of the plane."""

    done: int
    total: int
    stage: str
    plane: tuple[int, ...]
    rows: slice
    cols: slice
    tiles: int
    network_seconds: float


@dataclass(frozen=True)
class StreamResult:
    """What :func:`segment_to` wrote: the store, the labels' shape and each plane's
    number of objects; ``computed`` chunk stages run now, ``resumed`` ones found done."""

    path: Path
    shape: tuple[int, ...]
    n_objects: tuple[int, ...]
    computed: int
    resumed: int
    seconds: float


# --- the driver ---------------------------------------------------------------------------


def iter_segment_to(
    model: UNet | str | os.PathLike,
    source: Any,
    out: str | os.PathLike,
    *,
    chunk: int | tuple[int, int] = DEFAULT_CHUNK,
    probabilities: bool = False,
    resume: bool = False,
    client: Any = None,
    instances: InstanceConfig | dict | None = None,
    **options,
) -> Generator[ChunkProgress, None, StreamResult]:
    """:func:`segment_to` as a generator of :class:`ChunkProgress` (closing it stops
    the run between two chunks; ``resume=True`` continues it later). A failing read
    or write (a full disk, a vanished file) raises :class:`OutputFileError`; the
    store stays resumable."""
    settings = {"chunk": chunk, "probabilities": probabilities, "resume": resume, "client": client}
    try:
        return (yield from _segment_to(model, source, out, instances=instances, **settings, **options))
    except NapariUnetError:
        raise
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        then = "; once fixed, run again with resume=True (--resume) to continue" if Path(out).exists() else ""
        raise OutputFileError(f"segmenting into {out} stopped: {error.strerror or error}{where}{then}") from error


def _segment_to(model, source, out, *, chunk, probabilities, resume, client, instances, **options):
    began = time.perf_counter()
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    instances = instance_settings(instances, model)
    opts = PredictOptions(**options)
    run, planes = _plan_run(model, source, Path(out), chunk, probabilities, opts, client, instances)
    fingerprint = _fingerprint(run, planes, chunk)
    out = Path(out)
    complete = open_store(out, run, fingerprint, resume)
    _warn_if_split(instances)
    n_planes = math.prod(run.stack_shape)
    n_chunks = run.grid.grid[0] * run.grid.grid[1]
    total = 2 * n_planes * n_chunks
    if complete:
        shutil.rmtree(out / WORK, ignore_errors=True)  # a run killed while cleaning up
        objects = read_fingerprint(out).get("objects", [])
        return StreamResult(out, (*run.stack_shape, *run.grid.shape), tuple(objects), 0, total, 0.0)
    done = sum(1 for _ in (run.records / PREDICTED).glob("*.npz")) + sum(
        1 for _ in (run.records / LABELLED).glob("*.done")
    )
    resumed, n_objects = done, []
    executor = _Local(model, opts) if client is None else _Distributed(client, model, run)
    memory = reuse_freed_memory() if client is None and resolve_device(opts.device).type == "cpu" else None
    with memory or contextlib.nullcontext(), executor:
        for plane in np.ndindex(*run.stack_shape):
            todo = [c for c in run.grid.chunks() if not run.record(PREDICTED, plane, c).exists()]
            if todo:
                low, high = normalization_range(planes, plane, run.normalization)
                for chunk_done, tiles, seconds in executor.predict(run, plane, todo, low, high):
                    done += 1
                    rows, cols = run.grid.region(*chunk_done)
                    yield ChunkProgress(done, total, PREDICTED, plane, rows, cols, tiles, seconds)
            tables = merge_plane(run, plane)
            n_objects.append(tables.n_objects)
            rows_todo = [
                i for i in range(run.grid.grid[0])
                if not all(run.record(LABELLED, plane, (i, j)).exists() for j in range(run.grid.grid[1]))
            ]  # fmt: skip
            for row, columns in executor.label(run, plane, rows_todo, tables):
                for col in columns:
                    done += 1
                    rows, cols = run.grid.region(row, col)
                    yield ChunkProgress(done, total, LABELLED, plane, rows, cols, 0, executor.network_seconds)
    write_pyramid(run)
    finish(run, n_objects)
    seconds = time.perf_counter() - began
    return StreamResult(out, (*run.stack_shape, *run.grid.shape), tuple(n_objects), done - resumed, resumed, seconds)


def segment_to(
    model,
    source,
    out,
    *,
    chunk=DEFAULT_CHUNK,
    probabilities=False,
    resume=False,
    workers: int | None = None,
    scheduler: str | None = None,
    **options,
) -> StreamResult:
    """Segment ``source`` into the OME-Zarr image ``out``, chunk by chunk.

    ``model``: a :class:`~napari_unet.UNet` or a model file. ``source``: anything
    :func:`~napari_unet.core.sources.open_source` opens (numpy, memmap, dask, zarr,
    an OME-Zarr image, a TIFF or zarr path), ``(H, W)`` or a stack ``(*stack, H, W)``
    (channels as for :func:`~napari_unet.segment`). ``chunk``: the chunk edge of the
    store, a multiple of ``2**depth``. ``probabilities``: also write them.
    ``resume``: continue an interrupted run (an existing ``out`` is refused
    otherwise). ``workers``: spread the chunks over a local ``dask.distributed``
    cluster of that many processes; ``scheduler``: over an existing cluster at that
    address; ``client``: over that client's cluster (see
    :mod:`napari_unet.core.cluster`); the result is the same. ``instances``: how
    probabilities become objects (an :class:`~napari_unet.InstanceConfig`, or a dict
    of the settings that differ from the model's; default: the model's), except that
    touching objects are never split here. Other ``options`` as for :func:`~napari_unet.predict` (tile,
    device, precision, batch_size, memory_bytes, channel_axis). The module docstring
    says what is written and how.
    """
    settings = {"chunk": chunk, "probabilities": probabilities, "resume": resume, **options}
    if workers is None and scheduler is None:
        return drive(iter_segment_to(model, source, out, **settings))
    from .cluster import cluster_client

    with cluster_client(workers=workers, scheduler=scheduler) as client:
        return drive(iter_segment_to(model, source, out, client=client, **settings))


def _warn_if_split(instances: InstanceConfig) -> None:
    """Chunked labelling keeps the mask's components: say so when ``instances`` would
    split touching objects in memory."""
    if instances != instances.components():
        log.warning(
            "segment_to keeps touching objects that the network joined as one object (the model's split %g "
            "and shape split %g apply in memory only): its labels equal segment(...) with split 0 and min_fill 0",
            instances.split,
            instances.min_fill,
        )


def _plan_run(model: UNet, source: Any, out: Path, chunk, probabilities: bool, opts: PredictOptions, client, instances):
    if model.config.ndim != 2:
        raise ConfigError(
            "streaming into a zarr store takes 2D models (plane by plane); segment a volume with a 3D model "
            "in memory instead (napari_unet.segment, or napari-unet segment --out-dir)"
        )
    if opts.tta:
        raise ConfigError("tta (test-time augmentation) reads whole planes: use it with segment, not segment_to")
    if opts.rescale != 1.0:
        raise ConfigError("rescale resizes whole planes: use it with segment, not segment_to")
    opened = open_source(source)
    opts = _with_named_channels(opts, source, opened.shape, model.config.in_channels)
    axes = axes_at_minus3(opened.shape, model.config.in_channels, opts.channel_axis)
    planes = LazyPlanes(opened, axes)
    chunk = (chunk, chunk) if isinstance(chunk, int) else tuple(int(c) for c in chunk)
    step = 2**model.config.depth
    if any(c < step or c % step for c in chunk):
        raise ConfigError(f"chunk {chunk} must be a multiple of {step} px (2**depth) so that tiles stay exact")
    if any(c < SMALL_CHUNK for c in chunk):
        log.warning(
            "chunk %s is below %d px: every chunk is predicted with margins of its own, so small chunks multiply "
            "the work (8 px took 6 minutes where 1024 px took 5 s); the default is %d",
            chunk,
            SMALL_CHUNK,
            DEFAULT_CHUNK,
        )
    keep_path = isinstance(source, (str, os.PathLike)) and client is not None
    instances = instances.components()  # see _warn_if_split
    run = Run(
        source=str(source) if keep_path else opened,
        out=str(out),
        axes=axes,
        grid=ChunkGrid(tuple(planes.shape[-2:]), chunk),
        stack_shape=tuple(planes.shape[:-3]),
        n_classes=model.config.n_classes,
        instances=instances,
        normalization=model.spec.normalization,
        probabilities=probabilities,
        options=replace(opts, channel_axis=None),
        model_digest=model_digest(model),
        calibration=_labels_calibration(source, opened.ndim, axes),
    )
    return run, planes


def _with_named_channels(opts: PredictOptions, source: Any, shape: tuple[int, ...], in_channels: int) -> PredictOptions:
    """``opts`` with the channel axis an OME-Zarr image names ("c"), where none was
    given; an image that names several channels is refused by a one-channel model (an
    image of axes c, y, x went as 2 planes, its labels' axes written as z, y, x)."""
    found = source_calibration(source, len(shape)) if opts.channel_axis is None else None
    named = [axis for axis, name in enumerate(found.names if found else ()) if name and name.lower() == "c"]
    if not named:
        return opts
    if in_channels == 1 and shape[named[0]] > 1:
        raise ImageShapeError(
            f"the model takes images of 1 channel, and the image names its axis c with {shape[named[0]]} channels: "
            "write the channel to segment as an image of its own, or use a model trained on that many channels"
        )
    return opts if in_channels == 1 else replace(opts, channel_axis=named[0])


def _labels_calibration(source: Any, ndim: int, axes: tuple[int | None, ...]) -> Calibration | None:
    """The source's calibration (:func:`~napari_unet.core.sources.source_calibration`)
    on the labels' axes (*stack, y, x): its channel axis left out."""
    found = source_calibration(source, ndim)
    if found is None:
        return None
    kept = [*axes[:-3], *axes[-2:]]

    def per_axis(values: tuple, default) -> tuple:
        return tuple(default if axis is None else values[axis] for axis in kept)

    return Calibration(per_axis(found.scale, 1.0), per_axis(found.units, None), per_axis(found.names, None))


def _fingerprint(run: Run, planes: LazyPlanes, chunk) -> dict:
    """What a resumed run must share with the run that created the store (as JSON)."""
    return json.loads(
        json.dumps(
            {
                "version": 2,
                "image_shape": list(planes.array.shape),
                "image_dtype": str(planes.dtype),
                "image_sample": sample_digest(planes),
                "chunk": list(run.grid.chunk),
                "model": run.model_digest,
                "instances": to_dict(run.instances),
                "normalization": to_dict(run.normalization),
                "probabilities": run.probabilities,
                "tile": run.options.tile,
                "precision": run.options.precision,
            }
        )
    )


class _Local:
    """Runs the chunks in this process, one at a time."""

    def __init__(self, model: UNet, options: PredictOptions) -> None:
        self.engine = make_engine(model, options)

    @property
    def network_seconds(self) -> float:
        return self.engine.network_seconds

    def __enter__(self):
        return self

    def __exit__(self, *_):
        return False

    def predict(self, run, plane, chunks, low, high):
        for chunk in chunks:
            tiles = predict_chunk(run, self.engine, plane, chunk, low, high)
            yield chunk, tiles, self.engine.network_seconds

    def label(self, run, plane, rows, tables):
        cache: dict = {}
        for row in rows:
            for key in [k for k in cache if k[0] < row - 1]:
                del cache[key]
            yield row, label_row(run, plane, row, tables, cache)


class _Distributed:
    """Spreads the chunks over a dask.distributed cluster (see core/cluster.py)."""

    def __init__(self, client, model: UNet, run: Run) -> None:
        from .cluster import DistributedExecutor

        self.inner = DistributedExecutor(client, model_file_bytes(model), run.model_digest)

    @property
    def network_seconds(self) -> float:
        return self.inner.network_seconds

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.inner.close()
        return False

    def predict(self, run, plane, chunks, low, high):
        return self.inner.predict(run, plane, chunks, low, high)

    def label(self, run, plane, rows, tables):
        return self.inner.label(run, plane, rows, tables)
