"""Drawing the next training batch in a background thread while the current step trains."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from .data import Batch, SampleStream


class BatchPrefetcher:
    """Hands out batches of a :class:`SampleStream`, drawing the next one ahead.

    A batch is a pure function of its stream and sample indices, so one drawn ahead
    equals one drawn on demand; it is used only when both match what is asked for
    (the trainer swaps in a new stream when live training's annotation changes, and
    a batch of the old one is then dropped). The sample preparation releases the
    interpreter lock in its torch and numpy kernels, so it overlaps the step's
    convolutions. With ``ahead=False`` every batch is drawn on demand and no thread
    is started. Use as a context manager: leaving it waits for the thread.
    """

    def __init__(self, ahead: bool = True) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-unet-samples") if ahead else None
        self._ahead: tuple[SampleStream, tuple[int, ...], Future[Batch]] | None = None

    def batch(self, stream: SampleStream, indices: Sequence[int], next_indices: Sequence[int] | None) -> Batch:
        """The batch of ``indices``; starts drawing ``next_indices`` (unless ``None``)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] is stream and ahead[1] == tuple(indices):
            batch = ahead[2].result()
        else:
            if ahead is not None:
                ahead[2].cancel()
            batch = stream.batch(indices)
        if next_indices is not None and self._pool is not None:
            self._ahead = (stream, tuple(next_indices), self._pool.submit(stream.batch, next_indices))
        return batch

    def close(self) -> None:
        self._ahead = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> BatchPrefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
