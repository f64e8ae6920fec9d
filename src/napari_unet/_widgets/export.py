"""The *Export model…* button: the chosen model written for other software
(bioimage.io, ONNX, TorchScript) in a worker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from magicgui.widgets import PushButton
from napari.layers import Image

from ..core.exchange import FORMATS, axis_sizes
from ..core.model import UNet
from ._base import DockWidget
from ._jobs import export_job
from ._layers import image_data, spatial_shape

#: Save-dialog filters: (format, file suffix) each.
EXPORT_FILTERS = {
    f"{name} (*{FORMATS[kind]})": (kind, FORMATS[kind])
    for kind, name in (("bioimageio", "bioimage.io model package"), ("onnx", "ONNX"), ("torchscript", "TorchScript"))
}


class ModelExport:
    """An *Export model…* button for ``dock``: writes ``model()`` to a file chosen in a
    save dialog. A bioimage.io package takes its test image from the layer ``image()``
    returns when that is large enough for the network (a volume for a 3D model). What it does, the file written
    and any problem go to the dock's status line."""

    def __init__(self, dock: DockWidget, model: Callable[[], UNet], image: Callable[[], Image | None]) -> None:
        self.dock, self.model, self.image = dock, model, image
        self.button = PushButton(text="Export model…", tooltip="write the model for Fiji, bioimage.io, ONNX")
        self.runner = dock.make_runner("export", self._show, self._on_exported, self._on_idle, self._on_error)
        self.button.changed.connect(dock.guarded(self.export))

    def ask_path(self) -> tuple[Path, str] | None:
        """The file and format chosen in a save dialog, or ``None`` if cancelled."""
        from qtpy.QtWidgets import QFileDialog

        name, chosen = QFileDialog.getSaveFileName(self.dock.native, "Export model", "", ";;".join(EXPORT_FILTERS))
        if not name:
            return None
        format, suffix = EXPORT_FILTERS.get(chosen, ("bioimageio", ".zip"))
        path = Path(name)
        typed = [kind for kind, ending in EXPORT_FILTERS.values() if ending == path.suffix.lower()]
        if typed:  # a name typed with another format's suffix: that format (not a refusal in command-line words)
            return path, typed[0]
        return (path if path.suffix else path.with_suffix(suffix)), format

    def export(self) -> None:
        """Ask where to, then export in a worker (one export at a time)."""
        if self.runner.busy:
            return
        model = self.model()
        target = self.ask_path()
        if target is None:
            return
        path, format = target
        options = {}
        layer = self.image()
        shape, sizes = (() if layer is None else spatial_shape(layer)), axis_sizes(model)
        large_enough = len(shape) >= len(sizes) and all(n >= a.smallest for n, a in zip(shape[-len(sizes) :], sizes))
        if format == "bioimageio" and large_enough:
            data, channel_axis = image_data(layer)
            options = {"image": np.asarray(data), "channel_axis": channel_axis}
        self.button.enabled = False
        self.runner.start(export_job, model, path, format, **options)

    def _show(self, message: str) -> None:
        self.dock.status.value = message

    def _on_exported(self, path: Path) -> None:
        size = path.stat().st_size
        amount = f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.0f} kB"  # (a small model: not 0.0 MB)
        self._show(f"exported {path} ({amount})")

    def _on_error(self, message: str) -> None:
        self._show(f"⚠ {message}")

    def _on_idle(self) -> None:
        self.button.enabled = True
