"""One background job at a time for a widget, in a thread worker.

Jobs are generator functions (or plain functions) taking a ``stop`` event; a
generator job checks it at every yield (see :func:`napari_unet.core.progress.until_stopped`)
or hands it on (training: to the trainer, which ends after its current step) and runs
its own clean-up when it stops, in the worker thread: a stopped training writes its
checkpoint and model there.

A running job is registered with the napari window's task list, so closing napari
asks first and then calls :meth:`JobRunner.shutdown`: the job is stopped and waited
for (its clean-up included) before the window goes. Closing the dock widget does
the same (see :class:`~napari_unet._widgets._base.DockWidget`).
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable

from napari.utils.notifications import show_error
from superqt.utils import FunctionWorker, GeneratorWorker, create_worker

from ..core.errors import NapariUnetError

log = logging.getLogger(__name__)

#: Longest wait for a job to stop when its widget or napari closes (seconds).
SHUTDOWN_TIMEOUT = 300.0


class _Failed(Exception):
    """Carries the ``RuntimeError`` a job failed with (a :class:`TrainingError`, an
    ``ExportError``, torch's own) past superqt, which takes every ``RuntimeError`` for
    that of a deleted Qt object and drops it: no error, no end, the widget busy for good."""

    def __init__(self, error: RuntimeError) -> None:
        super().__init__(str(error))
        self.error = error


class _SignalsEnd:
    """A worker that sets ``ended`` once its job has finished in the worker thread,
    keeping what the job returned in ``result`` (None until then, or if it failed)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ended = threading.Event()
        self.result = None

    def work(self):
        result = super().work()  # a job's exception comes back as its result
        if isinstance(result, RuntimeError):
            return _Failed(result)
        if not isinstance(result, Exception):
            self.result = result
        return result

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.ended.set()


class _GeneratorJob(_SignalsEnd, GeneratorWorker):
    pass


class _FunctionJob(_SignalsEnd, FunctionWorker):
    pass


class JobRunner:
    """Starts jobs (functions taking a ``stop`` event) in a worker thread.

    ``on_yielded`` and ``on_returned`` run in the main thread; errors become napari
    notifications and ``on_error`` calls (a :class:`NapariUnetError` as its message
    alone, anything else with its traceback in the log); ``on_idle`` runs when the
    job has ended, however it ended. ``viewer`` (optional) is the viewer whose
    window lists the running job. ``on_closed`` (optional) takes, in the main
    thread, what a job returned when :meth:`shutdown` stopped it: the widget is
    closing and hears nothing else, but what the job made (a model) need not be lost.
    """

    def __init__(
        self,
        name: str,
        on_yielded: Callable,
        on_returned: Callable,
        on_idle: Callable[[], None],
        on_error: Callable[[str], None],
        viewer=None,
        on_closed: Callable | None = None,
    ) -> None:
        self.name = name
        self.on_yielded = on_yielded
        self.on_returned = on_returned
        self.on_idle = on_idle
        self.on_error = on_error
        self.on_closed = on_closed
        self.viewer = viewer
        self.worker = None
        self.stop_event = threading.Event()
        self._task = None

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def start(self, function: Callable, *args, **kwargs) -> None:
        if self.busy:
            raise RuntimeError(f"{self.name} is already running")
        self.stop_event = threading.Event()
        worker_class = _GeneratorJob if inspect.isgeneratorfunction(function) else _FunctionJob
        worker = create_worker(
            function,
            *args,
            stop=self.stop_event,
            _start_thread=False,
            _ignore_errors=True,
            _worker_class=worker_class,
            **kwargs,
        )
        if worker_class is _GeneratorJob:
            worker.yielded.connect(self.on_yielded)
        worker.returned.connect(self.on_returned)
        worker.errored.connect(self._errored)
        worker.finished.connect(self._finished)
        self.worker = worker
        self._register_task()
        worker.start()

    def stop(self) -> None:
        """Ask the job to stop at its next yield."""
        self.stop_event.set()

    @property
    def stopping(self) -> bool:
        """Asked to stop, and not ended yet."""
        return self.busy and self.stop_event.is_set()

    def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT) -> bool:
        """Stop the job and wait until it has ended (its clean-up included), without
        reporting anything more to the widget (which may be closing) than its result
        to ``on_closed``. True when no job is left running."""
        worker = self.worker
        if worker is None:
            return True
        for signal, slot in (
            (worker.returned, self.on_returned),
            (worker.errored, self._errored),
            (worker.finished, self._finished),
        ):
            signal.disconnect(slot)
        if isinstance(worker, _GeneratorJob):
            worker.yielded.disconnect(self.on_yielded)
        self.stop_event.set()
        ended = worker.ended.wait(timeout)
        self.worker = None
        self._update_task(ended)
        if not ended:
            log.warning("%s did not stop within %.0f s", self.name, timeout)
        elif worker.result is not None and self.on_closed is not None:
            self.on_closed(worker.result)
        return ended

    def _errored(self, error: BaseException) -> None:
        if isinstance(error, _Failed):
            error = error.error
        if isinstance(error, NapariUnetError):
            message = str(error)  # the same one line the command line prints; no traceback
            log.info("%s: %s", self.name, message)
        else:
            log.error("%s failed", self.name, exc_info=error)
            message = f"{self.name} failed: {error}"
        show_error(message)
        self.on_error(message)

    def _finished(self) -> None:
        self.worker = None
        self._update_task(True)
        self.on_idle()

    # -- napari's task list: closing the window stops and waits for the job ------

    def _window(self):
        viewer = getattr(self.viewer, "__wrapped__", self.viewer)  # napari hands plugins a proxy
        return getattr(viewer, "window", None)

    def _register_task(self) -> None:
        window = self._window()
        register = getattr(window, "_register_task_status", None)
        if register is None:
            self._task = None
            return
        from napari.utils.task_status import Status

        self._task = register("napari-unet", Status.BUSY, f"{self.name} running", cancel_callback=self.shutdown)

    def _update_task(self, ended: bool) -> None:
        window, task, self._task = self._window(), self._task, None
        update = getattr(window, "_update_task_status", None)
        if task is None or update is None:
            return
        from napari.utils.task_status import Status

        update(task, Status.COMPLETED if ended else Status.FAILED, f"{self.name} ended")
