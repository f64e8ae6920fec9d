"""A light live loss plot (pyqtgraph): steps are recorded as they come, drawn when asked."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from qtpy.QtCore import QSize
from qtpy.QtWidgets import QSizePolicy


class LossPlot(pg.PlotWidget):
    """Training loss per step (faint) and its running mean (bold)."""

    def __init__(self) -> None:
        super().__init__()
        self.setBackground(None)
        # Short enough that Annotate, Train and Segment docked together still fit a
        # 1366x768 screen while training; taller (up to 200 px) where there is room.
        self.setMinimumHeight(70)
        self.setMaximumHeight(200)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setToolTip("training loss per step (faint) and its running mean")
        self.setLabel("left", "loss")  # the steps axis goes unnamed: its name took the room of the curve
        for side in ("bottom", "left"):
            axis = self.getAxis(side)
            axis.enableAutoSIPrefix(False)  # plain numbers: a scale such as "(x0.001)" did not fit beside the axis
            axis.setStyle(maxTickLevel=0)  # major ticks alone: the minor ones' numbers overlapped in a short plot
        self.raw = self.plot(pen=pg.mkPen((120, 120, 160), width=1))
        self.smooth = self.plot(pen=pg.mkPen((255, 170, 0), width=2))
        self.steps: list[int] = []
        self.losses: list[float] = []

    def sizeHint(self) -> QSize:
        """As tall as its minimum: in a short dock, room goes to the controls first."""
        return QSize(super().sizeHint().width(), self.minimumHeight())

    def clear_data(self) -> None:
        self.steps.clear()
        self.losses.clear()
        self.redraw()

    def record(self, step: int, loss: float) -> None:
        """Keep a step's loss for the next :meth:`redraw`."""
        self.steps.append(step)
        self.losses.append(loss)

    def redraw(self) -> None:
        self.raw.setData(self.steps, self.losses)
        if self.losses:
            window = max(1, min(25, len(self.losses) // 5))
            kernel = np.ones(window) / window
            smooth = np.convolve(self.losses, kernel, mode="valid")
            self.smooth.setData(self.steps[window - 1 :], smooth)
        else:
            self.smooth.setData([], [])
