"""What every napari-unet dock widget shares: a status line and error reporting.

Widgets are docked with ``viewer.window.add_dock_widget``, which keeps their layer
choices in step with the layer list (and stops when the dock closes), so no widget
connects to layer events by hand.
"""

from __future__ import annotations

from collections.abc import Callable

from magicgui.widgets import Container, Label
from napari.utils.notifications import show_error

from ..core.errors import NapariUnetError


class DockWidget(Container):
    """A vertical form with a word-wrapped ``status`` line at the bottom.

    :meth:`report` shows a problem with the user's input there and as a napari
    notification; :meth:`guarded` wraps a button's action so that such problems
    (:class:`NapariUnetError`, which :class:`LayerError` is too) are reported
    instead of raised. Anything else is a bug and propagates.
    """

    def __init__(self, napari_viewer, **kwargs) -> None:
        super().__init__(**kwargs)
        self.viewer = napari_viewer
        self.status = Label(value="")
        self.status.native.setWordWrap(True)  # long paths must not widen the dock

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
