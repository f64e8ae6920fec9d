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
from qtpy.QtWidgets import (
    QApplication,
    QComboBox,
    QDockWidget,
    QMainWindow,
    QScrollArea,
    QSizePolicy,
    QStyle,
    QWidget,
)

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
#: In a taller window a dock is a tab too where the window cannot show every dock on
#: its side whole (each dock's fixed parts and all of its scrolling settings, tabs
#: counting once, at their tallest) with this much height (px) to spare for what
#: appears later (Train's loss plot, 70 px, and more status lines). Counting the docks'
#: minimum heights alone (their settings scroll) stacked Annotate, Train and Segment at
#: 1600x1000: Annotate's paint buttons and Train's settings were strips of 67 and 76 px
#: to scroll, and all five docks made the window grow past the screen.
STACKED_HEIGHT_RESERVE = 100
#: The Qt property that marks the widget of a napari-unet dock (True), and after its
#: first placement (:func:`tab_on_a_short_window`) says so ("placed").
DOCK_MARK = "napari_unet_dock"


def _is_ours(dock) -> bool:
    inside = dock.widget()
    return inside is not None and any(widget.property(DOCK_MARK) for widget in (inside, *inside.findChildren(QWidget)))


def tab_on_a_short_window(widget) -> None:
    """Tab ``widget``'s new dock with a napari-unet dock on its side of the window when
    the window is shorter than :data:`TABS_BELOW_HEIGHT`, or when, stacked, the docks of
    that side would not all fit whole with :data:`STACKED_HEIGHT_RESERVE` to spare; it
    comes to the front. Of the napari-unet tab groups it could join, the one that
    leaves the side shortest is chosen (the latest on a tie). Other plugins' docks and
    floating docks are left where they are."""
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
    groups = _tab_groups(window, stacked)
    height = window.height()
    joinable = [index for index, group in enumerate(groups) if any(_is_ours(other) for other in group)]
    fits = _stacked_height(window, [*groups, [dock]]) + STACKED_HEIGHT_RESERVE <= height
    if joinable and (height < TABS_BELOW_HEIGHT or not fits):

        def height_with_dock_in(index: int) -> int:
            return _stacked_height(window, [[*group, dock] if n == index else group for n, group in enumerate(groups)])

        best = min(reversed(joinable), key=height_with_dock_in)  # the latest group on a tie
        window.tabifyDockWidget([other for other in groups[best] if _is_ours(other)][-1], dock)
        dock.show()
        dock.raise_()
        for member in [*groups[best], dock]:
            _lift_height_cap(member)
        groups[best].append(dock)
        window.resize(window.width(), height)  # as tall as before, if stacking had made it grow
    else:
        groups.append([dock])
    QTimer.singleShot(0, lambda: _share_height(window, groups))


def _share_height(window: QMainWindow, groups: list[list[QDockWidget]]) -> None:
    """Share the side's height among the tab ``groups``: a group no taller than its
    content (a short form alone) gets that height, the others what is left in
    proportion to their heights whole. napari sizes a new dock's neighbours small:
    Annotate stacked above Train kept 128 px of its 345 px of controls in a 1440 px
    window, Train 1012 px for 619."""
    groups = [[dock for dock in group if dock.parent() is window and dock.isVisible()] for group in groups]
    groups = [group for group in groups if group]
    if len(groups) < 2:
        return
    wanted = list(map(_tallest, groups))
    capped = [all(_height_capped(dock) for dock in group) for group in groups]
    left = sum(group[-1].height() for group in groups) - sum(h for h, cap in zip(wanted, capped) if cap)
    growing = sum(h for h, cap in zip(wanted, capped) if not cap)
    sizes = [h if cap else max(1, round(left * h / growing)) for h, cap in zip(wanted, capped)]
    window.resizeDocks([group[-1] for group in groups], sizes, Qt.Orientation.Vertical)


def _capped_widgets(dock: QDockWidget) -> list[QWidget]:
    """The napari-unet widgets in ``dock`` that are no taller than their content
    (:class:`DockWidget` without a growing scroll area, see :func:`._forms.scrolling`)."""
    inside = dock.widget()
    return [
        widget
        for widget in ((inside, *inside.findChildren(QWidget)) if inside is not None else ())
        if widget.property(DOCK_MARK) and widget.sizePolicy().verticalPolicy() == QSizePolicy.Policy.Maximum
    ]


def _height_capped(dock: QDockWidget) -> bool:
    return bool(_capped_widgets(dock))


def _lift_height_cap(dock: QDockWidget) -> None:
    """Let a napari-unet widget no taller than its content take any height while it
    is a tab: in a tab group, Qt holds every tab to the lowest cap among them, and
    Train, tabbed with Live training, showed 116 px of its 619 px of settings. Moved
    out of the group (stacked, or floating), it is capped again."""
    lifted = _capped_widgets(dock)
    if not lifted:
        return
    for widget in lifted:
        widget.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)

    def cap_again_out_of_a_tab_group(*_) -> None:
        window = dock.parent()
        if isinstance(window, QMainWindow) and (dock.isFloating() or not window.tabifiedDockWidgets(dock)):
            for widget in lifted:
                widget.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)

    dock.dockLocationChanged.connect(cap_again_out_of_a_tab_group)
    dock.topLevelChanged.connect(cap_again_out_of_a_tab_group)


def _tab_groups(window: QMainWindow, docks: list[QDockWidget]) -> list[list[QDockWidget]]:
    """``docks`` in their tab groups (a dock alone is a group of one), in order."""
    groups: list[list[QDockWidget]] = []
    for dock in docks:
        for group in groups:
            if dock in window.tabifiedDockWidgets(group[0]):
                group.append(dock)
                break
        else:
            groups.append([dock])
    return groups


def _whole_height(dock: QDockWidget) -> int:
    """``dock``'s height with all of its scrolling settings in view: its minimum
    height plus what each of its scroll areas holds beyond that area's minimum (or
    its size hint, where that is more: a few px for a short form)."""
    hidden = 0
    for area in dock.findChildren(QScrollArea):
        inside = area.widget()
        if inside is not None and area.isVisibleTo(dock):
            hidden += max(0, inside.sizeHint().height() - area.minimumSizeHint().height())
    return max(dock.minimumSizeHint().height() + hidden, dock.sizeHint().height())


def _stacked_height(window: QMainWindow, groups: list[list[QDockWidget]]) -> int:
    """The height of ``window`` that shows the tab ``groups`` stacked on one side, each
    as tall as its tallest dock whole (:func:`_whole_height`), with the separators
    between them and the window's menu and status bars."""
    separator = window.style().pixelMetric(QStyle.PixelMetric.PM_DockWidgetSeparatorExtent, None, window)
    bars = sum(bar.sizeHint().height() for bar in (window.menuBar(), window.statusBar()) if bar.isVisible())
    return sum(map(_tallest, groups)) + separator * (len(groups) - 1) + bars


def _tallest(group: list[QDockWidget]) -> int:
    return max(_whole_height(dock) for dock in group)


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
