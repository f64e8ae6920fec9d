"""What every napari-unet dock widget shares: a status line, error reporting and
background jobs that end cleanly when the widget or napari closes.

Widgets are docked with ``viewer.window.add_dock_widget``, which keeps their layer
choices in step with the layer list (and stops when the dock closes), so no widget
connects to layer events by hand.
"""

from __future__ import annotations

from collections.abc import Callable

from magicgui.widgets import Container, Label
from napari.utils.notifications import show_error
from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import QApplication, QComboBox, QDockWidget, QMainWindow, QSizePolicy, QStyle, QWidget

from ..core.errors import NapariUnetError
from ._runner import JobRunner

#: Characters of a choice (a layer's name) a drop-down box asks room for; longer names
#: are cut in the box and shortened in the middle in its list.
CHOICE_CHARACTERS = 18


class _DockWatcher(QObject):
    """Calls ``on_closed`` when napari takes the widget out of its dock (the dock's
    close button, or ``remove_dock_widget``): the widget loses its parent. When the
    widget is first shown, its drop-down boxes stop growing with their longest choice:
    a layer named after a long file name widened every dock that offers it, until the
    canvas of a 1366 px screen had no width left."""

    def __init__(self, widget, on_closed: Callable[[], None]) -> None:
        super().__init__(widget)
        self.on_closed = on_closed

    def eventFilter(self, watched, event) -> bool:
        if event.type() == QEvent.Type.ParentChange and watched.parent() is None:
            self.on_closed()
        elif event.type() in (QEvent.Type.ParentChange, QEvent.Type.Show):  # docked (before napari sizes the dock)
            narrow_choice_boxes(watched)
            if event.type() == QEvent.Type.ParentChange:
                QTimer.singleShot(0, lambda: tab_on_a_short_window(watched))  # once napari has placed the dock
        return False


#: Below this window height a napari-unet dock joins the other napari-unet docks of its
#: side as a tab instead of taking a share of the height: docked below Train at
#: 1366x768, Annotate kept a 40 px scrolling strip for its paint buttons.
TABS_BELOW_HEIGHT = 900
#: In a taller window a dock is a tab too where the docks stacked with it would leave
#: the window less free height than this (px) beyond their minimum heights: room for
#: what appears later (Train's loss plot, 70 px, and more status lines) and for the
#: controls that scroll. All five docks stacked at 1600x1000 needed 994 px, and 1118 px
#: once Train showed its plot: the window grew past the screen and Live training's
#: buttons went below its edge; four of them (793 px) left Annotate's paint buttons a
#: scrolling strip. Annotate, Train and Segment stack at 1000 px.
STACKED_HEIGHT_RESERVE = 250
#: The Qt property that marks the widget of a napari-unet dock (True), and after its
#: first placement (:func:`tab_on_a_short_window`) says so ("placed").
DOCK_MARK = "napari_unet_dock"


def _is_ours(dock) -> bool:
    inside = dock.widget()
    return inside is not None and any(widget.property(DOCK_MARK) for widget in (inside, *inside.findChildren(QWidget)))


def tab_on_a_short_window(widget) -> None:
    """Tab ``widget``'s new dock with the latest napari-unet dock on its side of the
    window when the window is shorter than :data:`TABS_BELOW_HEIGHT`, or when the
    window, with the dock stacked, would have less than :data:`STACKED_HEIGHT_RESERVE`
    of its height to spare; it comes to the front. Other plugins' docks and floating
    docks are left where they are."""
    dock = widget.parent()
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parent()
    window = dock.parent() if dock is not None else None
    if not isinstance(window, QMainWindow) or dock.isFloating() or widget.property(DOCK_MARK) == "placed":
        return
    widget.setProperty(DOCK_MARK, "placed")
    area = window.dockWidgetArea(dock)
    stacked = [
        other
        for other in window.findChildren(QDockWidget)
        if other is not dock and not other.isFloating() and other.isVisible() and window.dockWidgetArea(other) == area
    ]
    height = window.height()
    if height >= TABS_BELOW_HEIGHT and _stacked_height(window, [*stacked, dock]) + STACKED_HEIGHT_RESERVE <= height:
        return
    ours = [other for other in stacked if _is_ours(other)]
    if ours:
        window.tabifyDockWidget(ours[-1], dock)
        dock.show()
        dock.raise_()
        window.resize(window.width(), height)  # as tall as before, if stacking had made it grow


def _stacked_height(window: QMainWindow, docks: list[QDockWidget]) -> int:
    """The least height of ``window`` with ``docks`` stacked on one side: their minimum
    heights, the separators between them and the window's menu and status bars (the
    window's own minimum does not count a dock added since its last layout pass)."""
    separator = window.style().pixelMetric(QStyle.PixelMetric.PM_DockWidgetSeparatorExtent, None, window)
    bars = sum(bar.sizeHint().height() for bar in (window.menuBar(), window.statusBar()) if bar.isVisible())
    return sum(dock.minimumSizeHint().height() for dock in docks) + separator * (len(docks) - 1) + bars


def narrow_choice_boxes(widget) -> None:
    """Make the drop-down boxes inside ``widget`` ask room for :data:`CHOICE_CHARACTERS`
    characters, not for their longest choice."""
    for box in widget.findChildren(QComboBox):
        if box.minimumContentsLength() == CHOICE_CHARACTERS:
            continue
        box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        box.setMinimumContentsLength(CHOICE_CHARACTERS)
        box.view().setTextElideMode(Qt.TextElideMode.ElideMiddle)
        # Qt keeps the minimum width it computed before; a style change makes it compute again
        QApplication.sendEvent(box, QEvent(QEvent.Type.StyleChange))


def wrap_lines(label: Label) -> Label:
    """Make ``label`` wrap its lines within the dock's width, and return it: a long
    path, or the several lines of an annotation's counts for a stack, must not widen
    the dock (a wrapped label with the default size policy asks for the width of its
    longest line, which took 180 px from the canvas of a 1366 px screen)."""
    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
    return label


def fit_height(label: QWidget) -> None:
    """Give the wrapped ``label`` the least height its lines take at its width."""
    label.setMinimumHeight(0)  # a label's heightForWidth never answers less than its minimum
    label.setMinimumHeight(max(label.heightForWidth(max(label.width(), 1)), 0))  # (no text: -1)


class _RefitOnResize(QObject):
    """Refits a wrapped label's height (:func:`fit_height`) when its width changes."""

    def eventFilter(self, watched, event) -> bool:
        if event.type() == QEvent.Type.Resize:
            fit_height(watched)
        return False


_REFIT_ON_RESIZE = _RefitOnResize()


class StatusLine(Label):
    """A dock's word-wrapped status line, kept at least as tall as its lines at its
    width: the dock's layout gave it the height of one line, the settings above took
    the rest, and at 1366x768 a three-line message under Segment showed one and a half."""

    def __init__(self) -> None:
        super().__init__(value="")
        wrap_lines(self)
        self.native.installEventFilter(_REFIT_ON_RESIZE)

    @property
    def value(self) -> str:
        return Label.value.fget(self)

    @value.setter
    def value(self, text: str) -> None:
        Label.value.fset(self, text)
        fit_height(self.native)


class DockWidget(Container):
    """A vertical form with a word-wrapped ``status`` line at the bottom.

    :meth:`report` shows a problem with the user's input there and as a napari
    notification; :meth:`guarded` wraps a button's action so that such problems
    (:class:`NapariUnetError`, which :class:`LayerError` is too) are reported
    instead of raised. Anything else is a bug and propagates. Jobs started through
    :meth:`make_runner` are stopped (and waited for) when the dock closes.
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__(labels=False)  # labelled controls go in a form (_forms.form)
        self.viewer = napari_viewer
        self.status = StatusLine()
        # No taller than its content (a dock with a scrolling part can use any height,
        # see _forms.scrolling): docked below Annotate, Weight map took 300 px it left
        # blank while Annotate's controls shrank to two rows with the paint buttons hidden.
        self.native.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        self._runners: list[JobRunner] = []
        self.native.setProperty(DOCK_MARK, True)
        self._dock_watcher = _DockWatcher(self.native, self.shutdown)
        self.native.installEventFilter(self._dock_watcher)

    def make_runner(self, name: str, on_yielded, on_returned, on_idle, on_error, on_closed=None) -> JobRunner:
        """A :class:`JobRunner` whose jobs end with this widget and with napari's window
        (``on_closed``: see :class:`JobRunner`)."""
        runner = JobRunner(name, on_yielded, on_returned, on_idle, on_error, viewer=self.viewer, on_closed=on_closed)
        self._runners.append(runner)
        return runner

    def shutdown(self) -> None:
        """Stop every running job and wait until each has ended (a stopped training
        has written its checkpoint and model by then)."""
        for runner in self._runners:
            runner.shutdown()

    def report(self, message: str) -> None:
        self.status.value = f"⚠ {message}"
        show_error(message)

    def guarded(self, action: Callable[[], object]) -> Callable[..., None]:
        def run(*_) -> None:
            try:
                action()
            except NapariUnetError as error:
                self.report(str(error))

        return run
