"""Reading image/labels layers and writing results back as layers.

Layers this plugin makes carry their role in ``layer.metadata["napari_unet"]``:
"annotation" for annotations, and a helper role ("touching", "weights", "target",
"preview", "segmentation", "probability") for layers that only show something.
Helper layers are added without taking the selection (the user keeps painting the
layer they were painting) and are not offered where an annotation is expected.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable
from functools import cache

import numpy as np
from napari.layers import Image, Labels, Layer
from qtpy.QtCore import QTimer

from ..core.config import IGNORE_LABEL
from ..core.errors import NapariUnetError

ROLE = "napari_unet"
ANNOTATION = "annotation"
#: Roles of layers that show a result or a view of an annotation.
HELPER_ROLES = frozenset({"touching", "weights", "target", "preview", "segmentation", "probability"})


class LayerError(NapariUnetError, ValueError):
    """A layer choice that cannot be used (shown to the user as a notification)."""


def role_of(layer: Layer) -> str | None:
    return layer.metadata.get(ROLE)


def is_helper(layer: Layer) -> bool:
    return role_of(layer) in HELPER_ROLES


def layers_of(viewer, kind: type[Layer], allow: Iterable[str] = ()) -> list[tuple[str, Layer]]:
    """(name, layer) choices for a ComboBox, newest last, without helper layers
    (except those whose role is in ``allow``)."""
    hidden = HELPER_ROLES - set(allow)
    return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, kind) and role_of(layer) not in hidden]


def annotations_for(viewer, image: Image, candidates) -> list[Labels]:
    """Labels layers among ``candidates`` (a ComboBox's choices) on ``image``'s grid:
    annotations before other labels, those named after the image first, newest first."""
    shape = spatial_shape(image)
    found = [layer for layer in candidates if layer is not None and layer.data.shape == shape]
    layers = list(viewer.layers)
    return sorted(
        found,
        key=lambda layer: (
            role_of(layer) != ANNOTATION,
            not layer.name.startswith(image.name),
            -(layers.index(layer) if layer in layers else 0),
        ),
    )


def choose_pair(viewer, image_choice, labels_choice) -> None:
    """Choose the obvious image and annotation in two ComboBoxes when no image is
    chosen yet: the newest image with an annotation on its grid (else the newest
    image), and that annotation (:func:`match_annotation`)."""
    if image_choice.value is None:
        images = [layer for layer in image_choice.choices if layer is not None]
        annotated = [image for image in images if annotations_for(viewer, image, labels_choice.choices)]
        if annotated or images:
            image_choice.value = (annotated or images)[-1]
    match_annotation(viewer, image_choice, labels_choice)


def match_annotation(viewer, image_choice, labels_choice) -> None:
    """Choose the chosen image's annotation unless the chosen labels already fit its grid."""
    image, labels = image_choice.value, labels_choice.value
    if image is None or (labels is not None and labels.data.shape == spatial_shape(image)):
        return
    matches = annotations_for(viewer, image, labels_choice.choices)
    if matches:
        labels_choice.value = matches[0]


class NewAnnotationFollower:
    """Moves a labels choice to an annotation made for the chosen image after the
    widget opened (Annotate's *Create*, or *New annotation from segmentation* in a
    correction round): training the previous one instead would silently leave out
    the user's corrections. Annotations that existed before are left to the user."""

    def __init__(self, labels_choice) -> None:
        self.labels_choice = labels_choice
        self.seen = weakref.WeakSet(self._annotations())

    def _annotations(self) -> list[Labels]:
        return [layer for layer in self.labels_choice.choices if layer is not None and role_of(layer) == ANNOTATION]

    def follow(self, image_choice=None, switch: bool = True) -> None:
        """Call after the choices were reset (a layer was added or removed): switches
        to the newest annotation the shape of ``image_choice``'s image, or to the
        newest of any shape for a widget without an image choice (``None``, Weight
        map); ``switch=False`` only notes the new annotations."""
        new = [layer for layer in self._annotations() if layer not in self.seen]
        self.seen.update(new)
        if not switch:
            return
        if image_choice is not None:
            image = image_choice.value
            new = [layer for layer in new if image is not None and layer.data.shape == spatial_shape(image)]
        if new:
            self.labels_choice.value = new[-1]


def _first_name(viewer, base: str, reusable: Callable[[Layer], bool]) -> str:
    """``base``, or ``base 2``, ``base 3``, ...: the first that no layer has, or whose
    layer is ``reusable``."""
    name, number = base, 1
    while name in viewer.layers and not reusable(viewer.layers[name]):
        number += 1
        name = f"{base} {number}"
    return name


def unique_name(viewer, base: str) -> str:
    """``base``, or ``base 2``, ``base 3``, ... whichever is not a layer name yet."""
    return _first_name(viewer, base, lambda layer: False)


def image_data(layer: Image | None) -> tuple[np.ndarray, int | None]:
    """The array of an image layer and its channel axis (-1 for RGB layers)."""
    if layer is None:
        raise LayerError("choose an image layer first (File > Open, or File > Open Sample > napari-unet)")
    return np.asarray(layer.data), (-1 if layer.rgb else None)


def spatial_shape(layer: Image) -> tuple[int, ...]:
    """Shape of an image layer without its RGB axis."""
    shape = np.shape(layer.data)
    return tuple(shape[:-1]) if layer.rgb else tuple(shape)


def with_layer_axes(result: np.ndarray, layer: Image) -> np.ndarray:
    """``result`` (labels or a probability map of ``layer``) with the layer's trailing
    axis of one, which the core reads as the channel: so that napari lines the two up."""
    shape = spatial_shape(layer)
    return result[..., None] if (*result.shape, 1) == shape else result


def layer_spacing(layer: Image) -> tuple[float, ...] | None:
    """The voxel spacing (z, y, x) of an image layer's stack: its scale (an RGB layer's
    scale has no colour axis). ``None`` for a single plane or a scale that is not positive."""
    if len(spatial_shape(layer)) < 3:
        return None
    scale = tuple(float(s) for s in layer.scale[-3:])
    return scale if min(scale) > 0 else None


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


@contextlib.contextmanager
def selection_kept(viewer):
    """Give the selected layers, the active layer and its mode back after the block
    (adding a layer selects it, which would turn the next brush stroke into a pan)."""
    selection = viewer.layers.selection
    active, chosen = selection.active, list(selection)
    mode = getattr(active, "mode", None)
    try:
        yield
    finally:
        kept = [layer for layer in chosen if layer in viewer.layers]
        if active is not None and active in viewer.layers:
            selection.active = active
            selection.update(kept)
            if mode is not None and active.mode != mode:
                active.mode = mode
        else:
            selection.clear()
            selection.update(kept)


def layer_named(viewer, name: str) -> Layer | None:
    """The viewer's layer called ``name``, or None (napari's LayerList has no ``get``)."""
    return viewer.layers[name] if name in viewer.layers else None  # noqa: SIM401


def helper_name(viewer, base: str, role: str) -> str:
    """The name of the helper layer of ``role`` called ``base``: ``base``, or ``base 2``,
    ``base 3``, ... where a layer of the user's (or of another role) has the name:
    the first that is free or held by a layer of ``role``. The user's layers are never
    taken for helpers, whatever their names."""
    return _first_name(viewer, base, lambda layer: role_of(layer) == role)


def helper_layer(viewer, base: str, role: str) -> Layer | None:
    """The helper layer of ``role`` called ``base`` (see :func:`helper_name`), or None."""
    return layer_named(viewer, helper_name(viewer, base, role))


def placement_on(like: Layer, ndim: int) -> dict:
    """Keywords that lay a new layer of ``ndim`` dimensions exactly on ``like``: its
    scale and translation (of its last ``ndim`` axes) and, when the dimensions agree,
    its rotation, shear and affine transform too. With scale and translation alone,
    the annotation of a rotated image took strokes on other pixels than the image
    showed under them, and its segmentation was drawn beside it."""
    placement = {"scale": like.scale[-ndim:], "translate": like.translate[-ndim:]}
    if like.ndim == ndim:
        placement.update(rotate=like.rotate, shear=like.shear, affine=like.affine)
    return placement


def placement_differences(layer: Layer, like: Layer) -> dict:
    """The keywords of :func:`placement_on` (``like``'s placement for ``layer``'s
    dimensions) on which ``layer`` lies elsewhere, with ``like``'s values."""
    wanted = placement_on(like, layer.ndim)
    matrix = lambda value: value.affine_matrix if hasattr(value, "affine_matrix") else value  # noqa: E731
    return {
        key: value
        for key, value in wanted.items()
        if np.shape(matrix(getattr(layer, key))) != np.shape(matrix(value))
        or not np.allclose(matrix(getattr(layer, key)), matrix(value))
    }


def follow_placement(layer: Layer, like: Layer) -> None:
    """Lay an existing helper ``layer`` on ``like`` again where it lies elsewhere: a
    result reused after the image's scale or translation was corrected kept the old
    one, and was drawn beside the cells."""
    for key, value in placement_differences(layer, like).items():
        setattr(layer, key, value)


def put_layer(viewer, name: str, data: np.ndarray, kind: str, like: Layer, *, role: str, **kwargs) -> Layer:
    """Show ``data`` as helper layer ``name`` (of ``role``), replacing that layer's data
    if it exists, without changing which layer is selected. A layer of the user's
    called ``name`` stays as it is: the helper takes the next free name
    (:func:`helper_name`).

    The new layer takes the placement of ``like`` (:func:`placement_on`), so it
    lies exactly on top of the image it came from.
    """
    ndim = data.ndim
    name = helper_name(viewer, name, role)
    existing = layer_named(viewer, name)
    layer_class = Labels if kind == "labels" else Image
    if isinstance(existing, layer_class) and existing.data.shape == data.shape and existing.data.dtype == data.dtype:
        existing.data = data
        for key, value in kwargs.items():
            setattr(existing, key, value)
        follow_placement(existing, like)
        return existing
    placement = {**placement_on(like, ndim), "name": name}
    add = viewer.add_labels if kind == "labels" else viewer.add_image
    with selection_kept(viewer):
        if existing is not None:
            viewer.layers.remove(existing)
        layer = add(data, **placement, metadata={ROLE: role}, **kwargs)
    return layer


@cache
def _annotation_colors() -> np.ndarray:
    from napari.utils.colormaps import label_colormap

    default = label_colormap(49).colors  # napari's default label colours (index 0 transparent)
    n = 2**15  # the most colours for which int16 labels still map without overflow
    colors = default[(np.arange(n) - 1) % (len(default) - 1) + 1].copy()
    colors[0] = 0.0
    colors[-1] = (0.55, 0.75, 1.0, 0.35)  # annotated background: a faint blue
    return colors


def annotation_colormap():
    """Cells in napari's usual label colours, annotated background (0) a faint tint,
    unannotated pixels (-1) transparent so the image shows unchanged.

    napari's cyclic label colormap maps value v to colour ``(v - 1) % n + 1`` and its
    ``background_value`` to transparent; with ``background_value=-1`` and ``n`` as large
    as napari allows for 2-byte labels, 0 lands on the last colour, which is the tint.
    Cell ids from 1 to n - 1 keep the colours of napari's default colormap.
    """
    from napari.utils.colormaps import CyclicLabelColormap

    colors = _annotation_colors()
    return CyclicLabelColormap(colors=colors, background_value=IGNORE_LABEL, name="napari-unet annotation")


def highlight_colormap():
    """Gaps cut between touching cells in orange, unannotated rims between cells in magenta."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(
        color_dict={None: "transparent", 0: "transparent", 1: (1.0, 0.55, 0.0, 1.0), 2: (1.0, 0.0, 1.0, 1.0)}
    )


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
