"""Annotate cells: a labels layer per image, a new-cell key, ignore regions, live counts."""

from __future__ import annotations

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Label, PushButton, SpinBox
from napari.layers import Image, Labels

from ..core.config import IGNORE_LABEL
from ..core.metrics import touching_pairs
from ..core.weights import separation_gap
from ._base import DockWidget
from ._layers import EditWatcher, LayerError, labels_data, layers_of, put_layer, spatial_shape

NEW_CELL_KEY = "n"


def annotation_name(image: Image) -> str:
    return f"{image.name} annotation"


class AnnotateWidget(DockWidget):
    """Paint cells (1, 2, ...), background (0) and unannotated regions (-1).

    Training ignores pixels labelled -1, so a few cells in a large image are enough:
    paint them, paint some background around them, then "Ignore unpainted".
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer, labels=True)
        viewer = self.viewer
        self.image = ComboBox(label="image", choices=lambda _: layers_of(viewer, Image))
        self.annotation = ComboBox(label="annotation", choices=lambda _: layers_of(viewer, Labels), nullable=True)
        self.create = PushButton(text="Create annotation layer for image")
        self.new_cell = PushButton(text=f"New cell ({NEW_CELL_KEY})")
        self.ignore_brush = PushButton(text="Paint unannotated (-1)")
        self.ignore_rest = PushButton(text="Ignore unpainted (0 -> -1)")
        self.brush_size = SpinBox(label="brush size", value=10, min=1, max=200)
        self.contours = CheckBox(text="show contours", value=False)
        self.show_touching = CheckBox(text="highlight touching cells", value=True)
        self.source = ComboBox(label="segmentation", choices=lambda _: layers_of(viewer, Labels), nullable=True)
        self.copy = PushButton(text="Start from segmentation")
        self.counts = Label(value="")
        self.counts.native.setWordWrap(True)
        self.extend(
            [
                self.image,
                self.create,
                self.annotation,
                self.new_cell,
                self.ignore_brush,
                self.ignore_rest,
                self.brush_size,
                self.contours,
                self.show_touching,
                self.source,
                self.copy,
                self.counts,
                self.status,
            ]
        )
        self.create.changed.connect(self.guarded(self.create_annotation))
        self.new_cell.changed.connect(self.guarded(self.select_new_cell))
        self.ignore_brush.changed.connect(self.guarded(self.select_ignore))
        self.ignore_rest.changed.connect(self.guarded(self.ignore_unpainted))
        self.copy.changed.connect(self.guarded(self.start_from_segmentation))
        self.brush_size.changed.connect(self._apply_display)
        self.contours.changed.connect(self._apply_display)
        self.show_touching.changed.connect(self.refresh)
        self.annotation.changed.connect(self._watch)
        self._edits = EditWatcher(self.refresh, self.native)

    def _layer(self) -> Labels:
        layer = self.annotation.value
        if layer is None:
            raise LayerError("no annotation layer: create one for the image first")
        return layer

    def create_annotation(self) -> Labels:
        """The annotation layer of the chosen image (made empty, matching its grid)."""
        image = self.image.value
        if image is None:
            raise LayerError("choose an image layer first")
        name = annotation_name(image)
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], Labels):
            layer = self.viewer.layers[name]
        else:
            layer = put_layer(self.viewer, name, np.zeros(spatial_shape(image), np.int32), "labels", image)
        self.annotation.value = layer
        self.select_new_cell()
        return layer

    def select_new_cell(self) -> None:
        """Paint the next free cell id."""
        layer = self._layer()
        layer.selected_label = int(max(np.max(layer.data), 0)) + 1
        layer.mode = "paint"

    def select_ignore(self) -> None:
        layer = self._layer()
        layer.selected_label = IGNORE_LABEL
        layer.mode = "paint"

    def ignore_unpainted(self) -> None:
        """Mark every unpainted (0) pixel as unannotated (-1)."""
        layer = self._layer()
        data = np.asarray(layer.data)
        layer.data = np.where(data == 0, IGNORE_LABEL, data).astype(data.dtype)
        self.refresh()

    def start_from_segmentation(self) -> None:
        """Copy a predicted labels layer into the annotation, for correction and retraining."""
        source = self.source.value
        if source is None:
            raise LayerError("choose the segmentation (labels layer) to start from")
        image = self.image.value
        layer = self.annotation.value or (self.create_annotation() if image is not None else None)
        if layer is None or layer is source:
            raise LayerError("choose an image (or another annotation layer) to copy the segmentation into")
        data = labels_data(source, image)
        layer.data = data.astype(np.int32, copy=True)
        self.select_new_cell()
        self.refresh()

    def _apply_display(self, *_) -> None:
        layer = self.annotation.value
        if layer is not None:
            layer.brush_size = self.brush_size.value
            layer.contour = 1 if self.contours.value else 0

    def _watch(self, layer: Labels | None) -> None:
        self._edits.watch(layer)
        if layer is not None:
            layer.bind_key(NEW_CELL_KEY, lambda _layer: self.select_new_cell(), overwrite=True)
            self._apply_display()
        self.refresh()

    def refresh(self, *_) -> None:
        """Update the counts and the touching-cells overlay from the annotation."""
        layer = self.annotation.value
        if layer is None:
            self.counts.value = "no annotation layer"
            return
        data = np.asarray(layer.data)
        planes = data.reshape(-1, *data.shape[-2:])
        cells = len(np.setdiff1d(np.unique(data), [0, IGNORE_LABEL]))
        pairs = sum(len(touching_pairs(plane)) for plane in planes)
        ignored = int((data == IGNORE_LABEL).sum())
        message = f"cells: {cells}   touching pairs: {pairs}   unannotated px: {ignored}"
        image = self.image.value
        if image is not None and data.shape != spatial_shape(image):
            message += f"\n⚠ shape {data.shape} differs from image '{image.name}' {spatial_shape(image)}"
        self.counts.value = message
        if self.show_touching.value and pairs:
            gaps = np.stack([separation_gap(plane) for plane in planes]).reshape(data.shape)
            put_layer(self.viewer, f"{layer.name} touching", gaps.astype(np.uint8), "labels", layer, opacity=0.9)
        elif f"{layer.name} touching" in self.viewer.layers:
            self.viewer.layers.remove(f"{layer.name} touching")
