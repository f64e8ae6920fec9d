"""Reading image/labels layers and writing results back as layers."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from napari.layers import Image, Labels, Layer
from qtpy.QtCore import QTimer

from ..core.errors import NapariUnetError


class LayerError(NapariUnetError, ValueError):
    """A layer choice that cannot be used (shown to the user as a notification)."""


def layers_of(viewer, kind: type[Layer]) -> list[tuple[str, Layer]]:
    """(name, layer) choices for a ComboBox, newest last."""
    return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, kind)]


def image_data(layer: Image | None) -> tuple[np.ndarray, int | None]:
    """The array of an image layer and its channel axis (-1 for RGB layers)."""
    if layer is None:
        raise LayerError("choose an image layer first (File > Open, or File > Open Sample > napari-unet)")
    return np.asarray(layer.data), (-1 if layer.rgb else None)


def spatial_shape(layer: Image) -> tuple[int, ...]:
    """Shape of an image layer without its RGB axis."""
    shape = np.shape(layer.data)
    return tuple(shape[:-1]) if layer.rgb else tuple(shape)


def labels_data(layer: Labels | None, like: Image | None = None) -> np.ndarray:
    """The array of a labels layer, checked against an image layer's shape."""
    if layer is None:
        raise LayerError("choose a labels layer first (the Annotate widget makes one)")
    data = np.asarray(layer.data)
    if like is not None and data.shape != spatial_shape(like):
        raise LayerError(
            f"labels '{layer.name}' have shape {data.shape} but image '{like.name}' has {spatial_shape(like)}: "
            "pick the annotation made for this image"
        )
    return data


def put_layer(viewer, name: str, data: np.ndarray, kind: str, like: Layer, **kwargs) -> Layer:
    """Show ``data`` as layer ``name``, replacing that layer's data if it exists.

    The new layer takes the scale and translation of ``like`` (its last
    ``data.ndim`` axes), so it lies exactly on top of the image it came from.
    """
    ndim = data.ndim
    existing = viewer.layers[name] if name in viewer.layers else None  # noqa: SIM401 - LayerList has no get
    layer_class = Labels if kind == "labels" else Image
    if isinstance(existing, layer_class) and existing.data.shape == data.shape:
        existing.data = data
        for key, value in kwargs.items():
            setattr(existing, key, value)
        return existing
    if existing is not None:
        viewer.layers.remove(existing)
    placement = {"scale": like.scale[-ndim:], "translate": like.translate[-ndim:], "name": name}
    add = viewer.add_labels if kind == "labels" else viewer.add_image
    return add(data, **placement, **kwargs)


class EditWatcher:
    """Calls ``callback`` once edits of the watched labels layer pause for ``delay_ms``.

    Painting and replacing the data both count; the delay keeps heavy updates off
    every brush stroke. ``parent`` is the widget's Qt object.
    """

    def __init__(self, callback: Callable[[], None], parent, delay_ms: int = 250) -> None:
        self.timer = QTimer(parent)  # dies with the widget, so it never fires into a deleted one
        self.timer.setSingleShot(True)
        self.timer.setInterval(delay_ms)
        self.timer.timeout.connect(callback)
        self.layer: Labels | None = None

    def watch(self, layer: Labels | None) -> None:
        if self.layer is not None:
            self.layer.events.data.disconnect(self._edited)
            self.layer.events.paint.disconnect(self._edited)
        self.layer = layer
        if layer is not None:
            layer.events.data.connect(self._edited)
            layer.events.paint.connect(self._edited)

    def _edited(self, *_) -> None:
        self.timer.start()
