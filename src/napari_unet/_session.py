"""What the napari-unet widgets of one viewer share: the current model.

Widgets receive a :class:`Session` at construction. napari builds dock widgets and
runs readers by itself, so those entry points look up the session of their viewer
with :meth:`Session.of`; there is one session per viewer and none outlives it.
"""

from __future__ import annotations

import weakref
from pathlib import Path

from psygnal import Signal

from .core.model import UNet


class Session:
    """The model the widgets of one viewer work with, and where it came from."""

    #: Emitted after the model changed.
    model_changed = Signal()

    _by_viewer: dict[int, tuple[weakref.ref, Session]] = {}  # noqa: RUF012 - one registry for all viewers

    def __init__(self) -> None:
        self.model: UNet | None = None
        self.source = ""
        self.path: Path | None = None

    def set_model(self, model: UNet, source: str, path: str | Path | None = None) -> None:
        """Make ``model`` the session's model; ``source`` says where it came from."""
        self.model = model
        self.source = source
        self.path = Path(path) if path else None
        self.model_changed.emit()

    def describe(self) -> str:
        """One line about the current model, for widget labels."""
        if self.model is None:
            return "no model yet: train one or open a model file"
        saved = f", file {self.path}" if self.path else ""
        return f"{self.source} ({summary(self.model)}{saved})"

    @classmethod
    def of(cls, viewer) -> Session:
        """The session of ``viewer``, created on first use.

        napari hands plugins a proxy of the viewer; the session belongs to the
        viewer behind it, so every widget of one viewer gets the same session.
        """
        viewer = getattr(viewer, "__wrapped__", viewer)
        for key, (ref, _) in list(cls._by_viewer.items()):
            if ref() is None:
                del cls._by_viewer[key]
        entry = cls._by_viewer.get(id(viewer))
        if entry is None or entry[0]() is not viewer:
            entry = (weakref.ref(viewer), cls())
            cls._by_viewer[id(viewer)] = entry
        return entry[1]


def summary(model: UNet) -> str:
    """What kind of network ``model`` is, e.g. "3D U-Net, base 8, depth 2, 1 channel(s)"."""
    config = model.config
    return f"{config.ndim}D U-Net, base {config.base_channels}, depth {config.depth}, {config.in_channels} channel(s)"
