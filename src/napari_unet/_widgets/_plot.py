"""A light live loss plot (pyqtgraph): steps are recorded as they come, drawn when asked."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from qtpy.QtCore import QSize
from qtpy.QtWidgets import QSizePolicy

TOOLTIP = "training loss per step (faint) and its running mean"
TWIN_TOOLTIP = (
    f"{TOOLTIP}: first the 2D twin's warm start on the annotated planes (green), then the 3D network's steps (orange)"
)


#: The steps axis spans at least this many: over the first few steps it was labelled
#: in fractions of a step (1.2, 1.4, ...).
MIN_STEPS_SHOWN = 10


#: Pixels between the numbers of the loss axis at least: in a plot 70 px tall its five
#: numbers (1.0, 0.8, ..., 0.2) overlapped.
MIN_LABEL_SPACING_PX = 20


class _SparseAxis(pg.AxisItem):
    """An axis whose numbered ticks are at least :data:`MIN_LABEL_SPACING_PX` apart:
    pyqtgraph keeps at least two intervals and more numbers than a short axis holds."""

    def tickSpacing(self, minVal: float, maxVal: float, size: float):
        levels = super().tickSpacing(minVal, maxVal, size)
        if not levels or size <= 0:
            return levels
        spacing, offset = levels[0]
        while spacing * size / abs(maxVal - minVal) < MIN_LABEL_SPACING_PX:
            spacing *= 2
        return [(spacing, offset), *levels[1:]]


class _Curve:
    """One network's losses: each step (faint) and the running mean (bold), drawn
    ``offset`` steps to the right."""

    def __init__(self, plot: pg.PlotWidget, faint: tuple, bold: tuple) -> None:
        self.raw = plot.plot(pen=pg.mkPen(faint, width=1))
        self.smooth = plot.plot(pen=pg.mkPen(bold, width=2))
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.offset = 0

    def add(self, step: int, loss: float) -> None:
        self.steps.append(step)
        self.losses.append(loss)

    def clear(self) -> None:
        self.steps.clear()
        self.losses.clear()
        self.offset = 0

    def redraw(self) -> None:
        steps = np.asarray(self.steps) + self.offset
        self.raw.setData(steps, self.losses)
        if self.losses:
            window = max(1, min(25, len(self.losses) // 5))
            smooth = np.convolve(self.losses, np.ones(window) / window, mode="valid")
            self.smooth.setData(steps[window - 1 :], smooth)
        else:
            self.smooth.setData([], [])


class LossPlot(pg.PlotWidget):
    """Training loss per step (faint) and its running mean (bold). A 3D network's
    warm start draws its 2D twin's losses first, in their own colour, and the 3D
    steps after them on the same axis of optimiser steps."""

    def __init__(self) -> None:
        super().__init__(axisItems={"left": _SparseAxis("left")})
        self.setBackground(None)
        # Short enough that Annotate, Train and Segment docked together still fit a
        # 1366x768 screen while training; taller (up to 200 px) where there is room.
        self.setMinimumHeight(70)
        self.setMaximumHeight(200)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setToolTip(TOOLTIP)
        self.setLabel("left", "loss")  # the steps axis goes unnamed: its name took the room of the curve
        for side in ("bottom", "left"):
            axis = self.getAxis(side)
            axis.enableAutoSIPrefix(False)  # plain numbers: a scale such as "(x0.001)" did not fit beside the axis
            axis.setStyle(maxTickLevel=0)  # major ticks alone: the minor ones' numbers overlapped in a short plot
        self.getPlotItem().getViewBox().setLimits(minXRange=MIN_STEPS_SHOWN)
        self.twin = _Curve(self, faint=(120, 160, 130), bold=(60, 190, 110))
        self.network = _Curve(self, faint=(120, 120, 160), bold=(255, 170, 0))

    def sizeHint(self) -> QSize:
        """As tall as its minimum: in a short dock, room goes to the controls first."""
        return QSize(super().sizeHint().width(), self.minimumHeight())

    def clear_data(self) -> None:
        self.twin.clear()
        self.network.clear()
        self.setToolTip(TOOLTIP)
        self.redraw()

    def record_twin(self, step: int, loss: float) -> None:
        """Keep a warm-start step's loss (of the 2D twin) for the next :meth:`redraw`."""
        if not self.twin.steps:
            self.setToolTip(TWIN_TOOLTIP)
        self.twin.add(step, loss)

    @property
    def twin_steps(self) -> int:
        """The warm-start steps recorded since the plot was cleared."""
        return self.twin.steps[-1] if self.twin.steps else 0

    def record(self, step: int, loss: float) -> None:
        """Keep a step's loss for the next :meth:`redraw`; after a warm start it is
        drawn after the twin's last step."""
        self.network.offset = self.twin_steps
        self.network.add(step, loss)

    def redraw(self) -> None:
        self.twin.redraw()
        self.network.redraw()
