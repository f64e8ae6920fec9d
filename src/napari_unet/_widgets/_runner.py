"""One background job at a time for a widget, in a napari thread worker."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error

log = logging.getLogger(__name__)


class JobRunner:
    """Starts jobs (generator functions taking a ``stop`` event) in a worker thread.

    ``on_yielded`` and ``on_returned`` run in the main thread; errors become napari
    notifications and ``on_error`` calls; ``on_idle`` runs when the job has ended,
    however it ended.
    """

    def __init__(
        self,
        name: str,
        on_yielded: Callable,
        on_returned: Callable,
        on_idle: Callable[[], None],
        on_error: Callable[[str], None],
    ) -> None:
        self.name = name
        self.on_yielded = on_yielded
        self.on_returned = on_returned
        self.on_idle = on_idle
        self.on_error = on_error
        self.worker = None
        self.stop_event = threading.Event()

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def start(self, function: Callable, *args, **kwargs) -> None:
        if self.busy:
            raise RuntimeError(f"{self.name} is already running")
        self.stop_event = threading.Event()
        worker = create_worker(
            function, *args, stop=self.stop_event, _start_thread=False, _ignore_errors=True, **kwargs
        )
        worker.yielded.connect(self.on_yielded)
        worker.returned.connect(self.on_returned)
        worker.errored.connect(self._errored)
        worker.finished.connect(self._finished)
        self.worker = worker
        worker.start()

    def stop(self) -> None:
        """Ask the job to stop at its next yield."""
        self.stop_event.set()

    def _errored(self, error: BaseException) -> None:
        log.error("%s failed", self.name, exc_info=error)
        message = f"{self.name} failed: {error}"
        show_error(message)
        self.on_error(message)

    def _finished(self) -> None:
        self.worker = None
        self.on_idle()
