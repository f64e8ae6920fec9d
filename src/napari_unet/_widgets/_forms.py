"""Layout helpers for long dock-widget forms: titled groups, a scrolling part, and
radio buttons and drop-down boxes that stay quiet when napari resets a widget's choices."""

from __future__ import annotations

from magicgui.widgets import ComboBox, Container, Label, RadioButtons
from qtpy.QtCore import QEvent, QSize, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QSizePolicy


class SteadyRadioButtons(RadioButtons):
    """Radio buttons whose ``changed`` fires only when the choice changes. napari resets
    every docked widget's choices whenever a layer is added or removed, and magicgui's
    radio buttons then report their unchanged value as a change: the Train widget took
    that for a new network and put back the default width, depth and tile, and Segment
    put back the model's smallest object and tile, under the user's feet."""

    def reset_choices(self, *args) -> None:
        value = self.value
        with self.changed.blocked():
            super().reset_choices(*args)
        if self.value != value:
            self.changed.emit(self.value)


class SteadyComboBox(ComboBox):
    """A drop-down box that keeps the object it holds (a layer) when napari resets the
    choices, and says ``changed`` only when that object changes. magicgui finds the
    chosen item by its name: renaming the chosen layer dropped it for the first choice,
    and Train and Live then matched the image with another image's annotation of the
    same shape and trained on it."""

    def reset_choices(self, *args) -> None:
        value = self.value
        with self.changed.blocked():
            super().reset_choices(*args)
            if self.value is not value and any(choice is value for choice in self.choices):
                self.value = value
        if self.value is not value:
            self.changed.emit(self.value)


def form(*widgets) -> Container:
    """Controls with their labels on their left, one a row, without margins of their
    own. A dock's own rows carry no label (:class:`~._base.DockWidget`), so that
    blocks of settings, buttons and status lines use its whole width."""
    box = Container(widgets=list(widgets), labels=True)
    box.margins = (0, 0, 0, 0)
    return box


def group(title: str, *widgets) -> Container:
    """A titled block of labelled controls."""
    heading = Label(value=f"<b>{title}</b>")
    return Container(widgets=[heading, form(*widgets)], labels=False)


def side_by_side(*widgets) -> Container:
    """Widgets in one row (e.g. Start and Stop), so that a dock among several stays short."""
    row = Container(widgets=list(widgets), layout="horizontal", labels=False)
    row.margins = (0, 0, 0, 0)
    return row


class _SettingsArea(QScrollArea):
    """A frameless, vertically scrolling area as wide as its content needs (which
    grows once napari's style is applied), however short."""

    def __init__(self) -> None:
        super().__init__()
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

    def minimumSizeHint(self) -> QSize:
        return self._as_wide_as_content(super().minimumSizeHint(), minimum=True)

    def sizeHint(self) -> QSize:
        # QScrollArea keeps the size its content asked for first: the width before its
        # drop-down boxes were narrowed (see _base.narrow_choice_boxes), the height before
        # napari's style made its rows taller (Live training's form then scrolled by 6
        # px); ask the content again, within QScrollArea's bound of 24 lines
        hint = self._as_wide_as_content(super().sizeHint(), minimum=False)
        content = self.widget()
        if content is None:
            return hint
        height = content.sizeHint().height() + 2 * self.frameWidth()
        return QSize(hint.width(), min(height, 24 * self.fontMetrics().height()))

    def _as_wide_as_content(self, hint: QSize, minimum: bool) -> QSize:
        content = self.widget()
        if content is None:
            return hint
        width = (content.minimumSizeHint() if minimum else content.sizeHint()).width()
        return QSize(width + self.verticalScrollBar().sizeHint().width(), hint.height())

    def eventFilter(self, watched, event) -> bool:
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()  # the content's minimum width may have changed
        return super().eventFilter(watched, event)


def scrolling(widget: Container, layout, grow: bool = True) -> QScrollArea:
    """Move ``widget`` (in ``layout``) into a vertically scrolling area at the same
    place, without margins of its own, and return the area: a long block of settings
    then scrolls within the dock instead of making it taller than the screen. With
    ``grow`` the dock may take any height (other docks take no more than their
    content); without, it stays no taller than its content, and only shrinks."""
    widget.margins = (0, 0, 0, 0)
    if grow:
        layout.parentWidget().setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
    area = _SettingsArea()
    held = widget.native  # or the frame magicgui put around it in the layout
    while held.parentWidget() is not layout.parentWidget():
        held = held.parentWidget()
    index = layout.indexOf(held)
    area.setWidget(held)
    layout.insertWidget(index, area, stretch=1)
    return area
