"""Layout helpers for long dock-widget forms: titled groups and a scrolling part."""

from __future__ import annotations

from magicgui.widgets import Container, Label
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QScrollArea


def group(title: str, *widgets) -> Container:
    """A titled block of labelled controls."""
    box = Container(widgets=list(widgets), labels=True)
    box.margins = (0, 0, 0, 0)
    heading = Label(value=f"<b>{title}</b>")
    return Container(widgets=[heading, box], labels=False)


def scrolling(widget: Container, layout) -> QScrollArea:
    """Move ``widget`` (in ``layout``) into a frameless, vertically scrolling area at
    the same place and return the area: a long block of settings then scrolls within
    the dock instead of making it taller than the screen."""
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    held = widget.native  # or the frame magicgui put around it in the layout
    while held.parentWidget() is not layout.parentWidget():
        held = held.parentWidget()
    index = layout.indexOf(held)
    area.setWidget(held)
    layout.insertWidget(index, area, stretch=1)
    area.setMinimumWidth(held.minimumSizeHint().width() + area.verticalScrollBar().sizeHint().width())
    return area
