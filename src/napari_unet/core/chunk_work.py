"""The work on one chunk, row of chunks or plane of a streamed segmentation.

:mod:`napari_unet.core.stream` plans a run and hands its pieces to whichever
process does them (this one, or the workers of a dask cluster,
:mod:`napari_unet.core.cluster`); the functions here are those pieces. Each takes
the picklable :class:`Run` and works on the store at ``run.out``:

1. :func:`predict_chunk`: predict one chunk, write its mask, probabilities and
   provisional labels, record its summary;
2. :func:`merge_plane`: merge a plane's chunk summaries into its objects;
3. :func:`label_row`: relabel one row of chunks through the merged tables and write
   it.

A process keeps its network (:class:`Engine`) and the opened source between pieces.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import tiling
from .atomic_files import write_atomic
from .blocks import ChunkGrid, ChunkSummary, LabelTables, final_chunk, label_chunk, merge, pregrow_chunk, summarize
from .checkpoint import load_model, save_model
from .config import InstanceConfig, NormalizationConfig
from .devices import resolve_device, resolve_precision
from .instances import foreground
from .model import UNet
from .predict import PredictOptions, _forward, _network
from .sources import Calibration, LazyPlane, LazyPlanes, open_source
from .store import LABELLED, PREDICTED, WORK
from .tile_budget import plan_for


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
    #: The labels' pixel size and unit per axis (*stack, y, x), from the source's.
    calibration: Calibration | None = None

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


def model_file_bytes(model: UNet) -> bytes:
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
