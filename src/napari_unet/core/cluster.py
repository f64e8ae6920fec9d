"""Spreading a streamed segmentation over a ``dask.distributed`` cluster.

The driver (the process that calls :func:`~napari_unet.core.stream.segment_to`)
plans the run, merges ids and writes the pyramid; the workers predict chunks (step 1)
and relabel rows of chunks (step 3), writing straight into the output store, which
must therefore be on storage that every worker sees (a local disk for a local
cluster, a shared file system on a compute cluster). The model travels as the bytes
of a model file (safetensors, never a pickled module) and each worker process loads
it once. Results do not depend on the number of workers.

``--workers N`` starts a :class:`distributed.LocalCluster` of N single-threaded worker
processes on this machine; ``--scheduler ADDRESS`` joins a running cluster. Batch
systems (SLURM, PBS, ...) are reached through ``dask-jobqueue`` and Kubernetes through
``dask-kubernetes``: start a cluster with either and pass its scheduler address.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from .errors import ConfigError

log = logging.getLogger(__name__)

#: Per worker process: the engine of the model it was last sent, keyed by digest.
_ENGINES: dict[tuple, Any] = {}
#: Per worker process: how many times a model was loaded from bytes (tests read it).
LOADS = {"count": 0}


@contextlib.contextmanager
def cluster_client(workers: int | None = None, scheduler: str | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` on a new local cluster of ``workers`` processes, or
    on the running cluster at ``scheduler``; closed (and the local cluster stopped) on
    exit. dask's own messages below warnings (50 lines of a cluster's start and
    teardown) are kept out of this process's log meanwhile."""
    try:
        import distributed  # noqa: F401  (sets its loggers' levels when first imported)
    except ImportError as error:
        raise ConfigError("--workers and --scheduler need dask.distributed: pip install distributed") from error
    with _quiet("distributed"):
        yield from _client(workers, scheduler)


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Logger ``name`` passes warnings and errors only, until the context ends."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _client(workers: int | None, scheduler: str | None) -> Iterator[Any]:
    from distributed import Client, LocalCluster

    if (workers is None) == (scheduler is None):
        raise ConfigError("give either a number of workers or a scheduler address, not both")
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as error:
            raise ConfigError(f"cannot reach a dask scheduler at {scheduler}: {error}") from error
        with client:
            yield client
        return
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    threads = max(1, (os.cpu_count() or 1) // workers)
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
        env={"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)},
    )
    with cluster, Client(cluster) as client:
        yield client


class DistributedExecutor:
    """Submits a run's chunks to a cluster and reports them as they finish."""

    def __init__(self, client, model_bytes: bytes, digest: str) -> None:
        self.client = client
        self.digest = digest
        self.model = client.scatter(model_bytes, broadcast=True, hash=False)
        self.network_seconds = 0.0
        self.pending: list = []
        self.runs: dict[int, tuple[Any, Any]] = {}

    def _shared(self, run):
        """The run, sent to the workers once (it may hold an in-memory image)."""
        if id(run) not in self.runs:
            self.runs[id(run)] = (run, self.client.scatter(run, broadcast=True, hash=False))
        return self.runs[id(run)][1]

    def _completed(self, futures) -> Iterator[Any]:
        from distributed import as_completed

        self.pending = list(futures)
        try:
            for future in as_completed(self.pending):
                yield future.result()
        finally:
            self.client.cancel(self.pending)
            self.pending = []

    def predict(self, run, plane, chunks, low, high):
        task = (_predict_task, self._shared(run), self.model, self.digest, plane)
        futures = [self.client.submit(*task, chunk, low, high, pure=False) for chunk in chunks]
        for chunk, tiles, seconds in self._completed(futures):
            self.network_seconds += seconds
            yield chunk, tiles, self.network_seconds

    def label(self, run, plane, rows, tables):
        shared = self.client.scatter(tables, broadcast=True, hash=False)
        futures = [self.client.submit(_label_task, self._shared(run), plane, row, shared, pure=False) for row in rows]
        yield from self._completed(futures)

    def close(self) -> None:
        if self.pending:
            self.client.cancel(self.pending)
        self.client.cancel([self.model, *(future for _, future in self.runs.values())])


def _engine(data: bytes, digest: str, options):
    from .chunk_work import make_engine, model_from_bytes

    key = (digest, options.device, options.precision, options.tile, options.batch_size, options.memory_bytes)
    if key not in _ENGINES:
        _ENGINES.clear()
        _ENGINES[key] = make_engine(model_from_bytes(data), options)
        LOADS["count"] += 1
    return _ENGINES[key]


def _predict_task(run, data, digest, plane, chunk, low, high):
    from .chunk_work import predict_chunk
    from .memory import reuse_freed_memory

    engine = _engine(data, digest, run.options)
    before = engine.network_seconds
    keep = reuse_freed_memory() if engine.device.type == "cpu" else contextlib.nullcontext()
    with keep:  # as predict does: activations' memory is reused from one chunk to the next
        tiles = predict_chunk(run, engine, plane, chunk, low, high)
    return chunk, tiles, engine.network_seconds - before


def _label_task(run, plane, row, tables):
    from .chunk_work import label_row

    return row, label_row(run, plane, row, tables)


def model_loads() -> int:
    """How many times this process loaded a model from bytes (``client.run`` it)."""
    return LOADS["count"]
