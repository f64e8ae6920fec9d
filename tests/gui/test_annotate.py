import numpy as np

from napari_unet._widgets import AnnotateWidget
from napari_unet.core.config import IGNORE_LABEL

from .conftest import docked, paint_discs


def test_create_annotation_matches_the_image_grid(viewer, nuclei):
    image = viewer.add_image(nuclei[0], name="cells", scale=(0.5, 0.5), translate=(3, 4))
    widget = docked(viewer, AnnotateWidget(viewer))
    widget.image.value = image
    widget.create.clicked.emit()
    layer = viewer.layers["cells annotation"]
    assert layer.data.shape == (128, 128)
    assert tuple(layer.scale) == (0.5, 0.5) and tuple(layer.translate) == (3, 4)
    assert widget.annotation.value is layer and layer.selected_label == 1 and layer.mode == "paint"


def test_new_cell_counts_touching_and_ignore(viewer, qtbot):
    image = viewer.add_image(np.zeros((60, 60)), name="img")
    widget = docked(viewer, AnnotateWidget(viewer))
    widget.image.value = image
    widget.create.clicked.emit()
    layer = widget.annotation.value
    layer.data = paint_discs((60, 60), [(20, 20), (20, 31), (45, 45)], 6)  # cells 1 and 2 touch
    widget.new_cell.clicked.emit()
    assert layer.selected_label == 4
    qtbot.waitUntil(lambda: "cells: 3" in widget.counts.value, timeout=5000)
    assert "touching pairs: 1" in widget.counts.value
    assert "img annotation touching" in viewer.layers
    widget.ignore_brush.clicked.emit()
    assert layer.selected_label == IGNORE_LABEL
    widget.ignore_rest.clicked.emit()
    assert (layer.data == IGNORE_LABEL).sum() == (paint_discs((60, 60), [(20, 20), (20, 31), (45, 45)], 6) == 0).sum()
    assert "unannotated px: " in widget.counts.value and "unannotated px: 0" not in widget.counts.value


def test_start_from_segmentation_copies_labels(viewer, nuclei):
    image = viewer.add_image(nuclei[0], name="cells")
    predicted = viewer.add_labels(nuclei[1], name="cells labels")
    widget = docked(viewer, AnnotateWidget(viewer))
    widget.image.value = image
    widget.source.value = predicted
    widget.copy.clicked.emit()
    annotation = viewer.layers["cells annotation"]
    assert np.array_equal(annotation.data, nuclei[1])
    assert annotation.data is not predicted.data  # an editable copy
    assert annotation.selected_label == nuclei[1].max() + 1


def test_shape_mismatch_and_missing_layers_are_reported(viewer):
    image = viewer.add_image(np.zeros((50, 50)), name="img")
    other = viewer.add_labels(np.zeros((40, 40), np.int32), name="other")
    widget = docked(viewer, AnnotateWidget(viewer))
    widget.new_cell.clicked.emit()  # no annotation layer yet
    assert "no annotation layer" in widget.status.value
    widget.image.value = image
    widget.annotation.value = other
    widget.refresh()
    assert "differs from image" in widget.counts.value
    widget.source.value = other
    widget.copy.clicked.emit()
    assert "copy the segmentation into" in widget.status.value  # not into itself
    widget.create.clicked.emit()
    widget.copy.clicked.emit()
    assert "⚠" in widget.status.value and "pick the annotation made for this image" in widget.status.value
