"""Per-step progress shown at the pace a person reads it, not at the pace steps come.

On a display without a GPU (a laptop with software OpenGL, a virtual display) every
change of any widget in napari's window redraws the whole window: a status line's
new text held napari's event loop for 29-51 ms under Xvfb in a 1600x1000 window
(a canvas redraw: 30-60 ms). Live training makes about 7 steps a second; with every
step written into the status line, a 10 ms timer in the viewer ticked 54-60 times a
second during bench/bench_live.py, and 72-76 times with the steps shown twice a
second (two runs each, alternating).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

from qtpy.QtCore import QTimer

#: Least time between two progress updates of a widget (seconds).
PROGRESS_INTERVAL = 0.5

T = TypeVar("T")


class Throttle(Generic[T]):
    """Calls ``show`` with the latest value given, at most once every ``interval``
    seconds (main thread). A value that comes sooner waits for the end of the
    interval, and only the latest waiting one is shown then: the last value is never
    lost. :meth:`flush` shows a waiting value now, :meth:`cancel` drops it. With a
    ``parent`` (the widget whose lines ``show`` writes) the timer goes with it: a
    closed widget is never written to."""

    def __init__(self, show: Callable[[T], None], interval: float = PROGRESS_INTERVAL, parent=None) -> None:
        self._show = show
        self._interval = interval
        self._waiting: tuple[T] | None = None  # a 1-tuple, so that None is a value too
        self._shown_at = -float("inf")
        self._timer = QTimer(parent)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.flush)

    def __call__(self, value: T) -> None:
        self._waiting = (value,)
        wait = self._shown_at + self._interval - time.monotonic()
        if wait <= 0:
            self.flush()
        elif not self._timer.isActive():
            self._timer.start(int(wait * 1000) + 1)

    def flush(self) -> None:
        self._timer.stop()
        if self._waiting is not None:
            (value,), self._waiting = self._waiting, None
            self._shown_at = time.monotonic()
            self._show(value)

    def cancel(self) -> None:
        self._timer.stop()
        self._waiting = None
