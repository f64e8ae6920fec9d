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
import hashlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import tiling
from .blocks import ChunkGrid, ChunkSummary, LabelTables, final_chunk, label_chunk, merge, pregrow_chunk, summarize
from .checkpoint import load_model, save_model
from .config import InstanceConfig, NormalizationConfig, to_dict
from .devices import resolve_device, resolve_precision
from .errors import ConfigError, NapariUnetError, OutputFileError
from .instances import foreground
from .io import write_atomic
from .layout import axes_at_minus3
from .memory import reuse_freed_memory
from .model import UNet
from .predict import PredictOptions, _forward, _network, plan_for
from .progress import drive
from .sources import LazyPlane, LazyPlanes, normalization_range, open_source
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


@dataclass(frozen=True)
class Run:
    """Everything a worker needs to do a piece of a run (picklable)."""

    source: Any  # a path (each process opens it) or an array-like
    out: str
    axes: tuple[int | None, ...]
    grid: ChunkGrid
    stack_shape: tuple[int, ...]
    n_classes: int
    instances: InstanceConfig
    normalization: NormalizationConfig
    probabilities: bool
    options: PredictOptions
    model_digest: str

    @property
    def records(self) -> Path:
        return Path(self.out) / WORK / "records"

    def record(self, stage: str, plane: tuple[int, ...], chunk: tuple[int, int]) -> Path:
        name = "_".join(str(n) for n in (*plane, *chunk))
        return self.records / stage / (name + (".npz" if stage == PREDICTED else ".done"))

    def window(self, plane: tuple[int, ...], chunk: tuple[int, int], *channels: slice) -> tuple:
        return (*plane, *channels, *self.grid.region(*chunk))


# --- the model, once per process ------------------------------------------------------


def model_digest(model: UNet) -> str:
    """A digest of a model's spec and weights (what resuming must match)."""
    digest = hashlib.sha256(json.dumps(model.spec.to_dict(), sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def model_bytes(model: UNet) -> bytes:
    """The model as the bytes of a napari-unet model file (safetensors)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        save_model(model, path)
        return path.read_bytes()


def model_from_bytes(data: bytes) -> UNet:
    """Load a model from a model file's bytes (never unpickled)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        path.write_bytes(data)
        return load_model(path)


@dataclass
class Engine:
    """A process's network for one model, device and precision, and its tile plans."""

    model: UNet
    device: torch.device
    dtype: torch.dtype | None
    options: PredictOptions
    network: Any = None
    plans: dict = field(default_factory=dict)
    network_seconds: float = 0.0

    def plan(self, shape: tuple[int, int]):
        if shape not in self.plans:
            self.plans[shape] = plan_for(self.model, shape, self.device, self.options, self.dtype)
        return self.plans[shape]

    def forward(self, batch: np.ndarray, plan) -> np.ndarray:
        if self.network is None:
            shape = (len(batch), self.model.config.in_channels, *plan.tile)
            self.network = _network(self.model, self.device, self.dtype, shape)
        began = time.perf_counter()
        probabilities = _forward(self.network, batch, self.device, self.dtype)
        self.network_seconds += time.perf_counter() - began
        return probabilities


def make_engine(model: UNet, options: PredictOptions) -> Engine:
    device = resolve_device(options.device)
    return Engine(model, device, resolve_precision(options.precision, device), options)


# --- per-process caches of opened sources and stores -----------------------------------

_OPENED: dict[tuple, Any] = {}


def _planes(run: Run) -> LazyPlanes:
    """The run's image; a path is opened once per process (again if the file changes)."""
    if not isinstance(run.source, (str, os.PathLike)):
        return LazyPlanes(run.source, run.axes)
    key = (str(run.source), os.stat(run.source).st_mtime_ns)
    if key not in _OPENED:
        _OPENED.clear()
        _OPENED[key] = open_source(run.source)
    return LazyPlanes(_OPENED[key], run.axes)


@dataclass
class Arrays:
    """The arrays a run writes."""

    labels: Any
    mask: Any
    probabilities: Any | None


def _arrays(run: Run) -> Arrays:
    """The store's arrays (opened per call: cheap next to a chunk's work)."""
    import zarr

    root = Path(run.out)
    return Arrays(
        labels=zarr.open_array(root / "0", mode="r+"),
        mask=zarr.open_array(root / WORK / "mask", mode="r+"),
        probabilities=zarr.open_array(root / "probabilities" / "0", mode="r+") if run.probabilities else None,
    )


# --- step 1: predict a chunk ------------------------------------------------------------


def predict_chunk(
    run: Run, engine: Engine, plane: tuple[int, ...], chunk: tuple[int, int], low: np.ndarray, high: np.ndarray
) -> int:
    """Predict chunk ``chunk`` of plane ``plane``, write its mask, probabilities and
    provisional labels, then record its summary. Returns the number of tiles."""
    rows, cols = run.grid.region(*chunk)
    shape = (rows.stop - rows.start, cols.stop - cols.start)
    plan, batch_size = engine.plan(shape)
    reader = LazyPlane(_planes(run), plane, low, high)
    probabilities = np.empty((run.n_classes, *shape), np.float32)
    for origins in tiling.tile_batches(plan, batch_size):
        batch = np.stack([reader.tile((y + rows.start, x + cols.start), plan) for y, x in origins])
        for origin, tile in zip(origins, engine.forward(batch, plan)):
            tiling.paste_tile(probabilities, tile, origin, plan)
    mask = foreground(probabilities) > run.instances.threshold
    labelled = label_chunk(mask)
    arrays = _arrays(run)
    arrays.mask[run.window(plane, chunk)] = mask
    if arrays.probabilities is not None:
        arrays.probabilities[run.window(plane, chunk, slice(None))] = probabilities
    arrays.labels[run.window(plane, chunk)] = _provisional(labelled[0], run, chunk)
    summary = summarize(mask, run.grid, *chunk, labelled=labelled)
    buffer = io.BytesIO()
    np.savez(buffer, **summary.to_arrays())
    write_atomic(run.record(PREDICTED, plane, chunk), buffer.getvalue())
    return plan.n_tiles


def _provisional(fg: np.ndarray, run: Run, chunk: tuple[int, int]) -> np.ndarray:
    """Chunk-local ids made distinct between chunks, for display until step 3."""
    offset = (chunk[0] * run.grid.grid[1] + chunk[1]) * 7919 % (1 << 24)
    return np.where(fg > 0, fg + offset, 0).astype(np.int32)


# --- steps 2 and 3: merge, relabel --------------------------------------------------------


def merge_plane(run: Run, plane: tuple[int, ...]) -> LabelTables:
    """Step 2 for a plane whose chunks are all recorded."""
    summaries = {}
    for chunk in run.grid.chunks():
        with np.load(run.record(PREDICTED, plane, chunk), allow_pickle=False) as arrays:
            summaries[chunk] = ChunkSummary.from_arrays(dict(arrays))
    mask = _arrays(run).mask

    def chunk_labels(i, j):
        fg, _, bg, _ = label_chunk(np.asarray(mask[run.window(plane, (i, j))]))
        return fg, bg

    return merge(summaries, run.grid, run.instances, chunk_labels)


def label_row(run: Run, plane: tuple[int, ...], row: int, tables: LabelTables, cache: dict | None = None) -> list[int]:
    """Step 3 for the unrecorded chunks of one row of chunks; returns their columns.
    ``cache`` keeps pre-grow labels between calls (rows ``row - 1 .. row + 1`` are used)."""
    cache = {} if cache is None else cache
    arrays = _arrays(run)

    def pregrow(i, j):
        if (i, j) not in cache:
            mask = np.asarray(arrays.mask[run.window(plane, (i, j))])
            cache[(i, j)] = pregrow_chunk(mask, tables, i, j)
        return cache[(i, j)]

    written = []
    for col in range(run.grid.grid[1]):
        record = run.record(LABELLED, plane, (row, col))
        if record.exists():
            continue
        arrays.labels[run.window(plane, (row, col))] = final_chunk(pregrow, tables, row, col)
        write_atomic(record, b"")
        written.append(col)
    return written


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
    **options,
) -> Generator[ChunkProgress, None, StreamResult]:
    """:func:`segment_to` as a generator of :class:`ChunkProgress` (closing it stops
    the run between two chunks; ``resume=True`` continues it later). A failing read
    or write (a full disk, a vanished file) raises :class:`OutputFileError`; the
    store stays resumable."""
    settings = {"chunk": chunk, "probabilities": probabilities, "resume": resume, "client": client}
    try:
        return (yield from _segment_to(model, source, out, **settings, **options))
    except NapariUnetError:
        raise
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        raise OutputFileError(
            f"segmenting into {out} stopped: {error.strerror or error}{where}; once fixed, run again with resume "
            "(--resume) to continue"
        ) from error


def _segment_to(model, source, out, *, chunk, probabilities, resume, client, **options):
    began = time.perf_counter()
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    opts = PredictOptions(**options)
    run, planes = _plan_run(model, source, Path(out), chunk, probabilities, opts, client)
    fingerprint = _fingerprint(run, planes, chunk)
    out = Path(out)
    complete = open_store(out, run, fingerprint, resume)
    _warn_if_split(model)
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
    :mod:`napari_unet.core.cluster`); the result is the same. Other ``options`` as for
    :func:`~napari_unet.predict` (tile, device, precision, batch_size, memory_bytes,
    channel_axis). The module docstring says what is written and how.
    """
    settings = {"chunk": chunk, "probabilities": probabilities, "resume": resume, **options}
    if workers is None and scheduler is None:
        return drive(iter_segment_to(model, source, out, **settings))
    from .cluster import cluster_client

    with cluster_client(workers=workers, scheduler=scheduler) as client:
        return drive(iter_segment_to(model, source, out, client=client, **settings))


def _warn_if_split(model: UNet) -> None:
    """Chunked labelling keeps the mask's components: say so when the model would
    split touching objects in memory."""
    if model.spec.instances.split:
        log.warning(
            "segment_to keeps touching objects that the network joined as one object (the model's split %g "
            "applies in memory only): its labels equal segment(...) with split 0",
            model.spec.instances.split,
        )


def _plan_run(model: UNet, source: Any, out: Path, chunk, probabilities: bool, opts: PredictOptions, client):
    if model.config.ndim != 2:
        raise ConfigError(
            "streaming into a zarr store takes 2D models (plane by plane); segment a volume with a 3D model "
            "in memory instead (napari_unet.segment, or napari-unet segment --out-dir)"
        )
    if opts.tta:
        raise ConfigError("tta (test-time augmentation) reads whole planes: use it with segment, not segment_to")
    opened = open_source(source)
    axes = axes_at_minus3(opened.shape, model.config.in_channels, opts.channel_axis)
    planes = LazyPlanes(opened, axes)
    chunk = (chunk, chunk) if isinstance(chunk, int) else tuple(int(c) for c in chunk)
    step = 2**model.config.depth
    if any(c < step or c % step for c in chunk):
        raise ConfigError(f"chunk {chunk} must be a multiple of {step} px (2**depth) so that tiles stay exact")
    keep_path = isinstance(source, (str, os.PathLike)) and client is not None
    instances = replace(model.spec.instances, split=0.0)  # see _warn_if_split
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
    )
    return run, planes


def _fingerprint(run: Run, planes: LazyPlanes, chunk) -> dict:
    """What a resumed run must share with the run that created the store (as JSON)."""
    return json.loads(
        json.dumps(
            {
                "version": 1,
                "image_shape": list(planes.array.shape),
                "image_dtype": str(planes.dtype),
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

        self.inner = DistributedExecutor(client, model_bytes(model), run.model_digest)

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
