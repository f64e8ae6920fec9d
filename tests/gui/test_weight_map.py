import numpy as np
import pytest

from napari_unet._sample_data import nuclei_2d
from napari_unet._widgets import WeightMapWidget
from napari_unet._widgets._layers import ANNOTATION, ROLE
from napari_unet.core.weights import separation_target, weight_map

from .conftest import created_annotation, docked, paint_discs


def test_weight_map_layer_matches_the_core_and_follows_parameters(viewer, wait_idle):
    labels = paint_discs((64, 64), [(20, 20), (20, 31), (45, 40)], 6)
    layer = viewer.add_labels(labels, name="ann", scale=(2, 2))
    widget = docked(viewer, WeightMapWidget(viewer))
    widget.annotation.value = layer
    widget.compute.clicked.emit()
    wait_idle(widget)
    shown = viewer.layers["ann weights"]
    np.testing.assert_allclose(shown.data, weight_map(labels, 10.0, 5.0), atol=1e-6)
    assert tuple(shown.scale) == (2, 2)
    assert np.array_equal(viewer.layers["ann target"].data, separation_target(labels))
    widget.w0.value = 0.0  # live update
    widget._edits.timer.timeout.emit()
    wait_idle(widget)
    np.testing.assert_allclose(viewer.layers["ann weights"].data, weight_map(labels, 0.0, 5.0), atol=1e-6)


def test_an_annotation_removed_while_its_map_is_computed_gets_no_map(viewer, wait_idle):
    """Its weights and target layers were added all the same, over nothing."""
    layer = viewer.add_labels(paint_discs((64, 64), [(20, 20), (45, 40)], 6), name="ann")
    widget = docked(viewer, WeightMapWidget(viewer))
    widget.annotation.value = layer
    widget.compute.clicked.emit()
    viewer.layers.remove(layer)
    wait_idle(widget)
    assert [layer.name for layer in viewer.layers] == []
    assert widget.status.value == "'ann' was removed while its weight map was computed: the map is not added"


def test_a_binary_mask_is_warned_about_beside_its_map(viewer, wait_idle):
    """The widget that shows what training sees says what the Train widget would:
    a 0/255 mask's touching cells are one object to the map."""
    mask = (paint_discs((64, 64), [(20, 20), (20, 31), (45, 40)], 6) > 0).astype(np.uint8) * 255
    widget = docked(viewer, WeightMapWidget(viewer))
    widget.annotation.value = viewer.add_labels(mask, name="mask")
    widget.compute.clicked.emit()
    wait_idle(widget)
    assert "weights from" in widget.status.value
    assert "⚠ labels 'mask' give all 2 separate regions the same id 255" in widget.status.value


def test_stacks_get_a_weight_map_per_plane(viewer, wait_idle):
    labels = np.stack([paint_discs((40, 40), [(10, 10), (10, 21)], 5), paint_discs((40, 40), [(30, 30)], 5)])
    widget = docked(viewer, WeightMapWidget(viewer))
    widget.annotation.value = viewer.add_labels(labels, name="stack")
    widget.compute.clicked.emit()
    wait_idle(widget)
    weights = viewer.layers["stack weights"].data
    assert weights.shape == (2, 40, 40)
    np.testing.assert_allclose(weights[1], weight_map(labels[1]), atol=1e-6)


def test_a_stack_gets_the_map_a_3d_network_trains_on_when_asked(viewer, wait_idle):
    zz, yy, xx = np.indices((6, 40, 40))
    labels = np.zeros((6, 40, 40), np.int32)
    labels[((zz - 2) / 2) ** 2 + ((yy - 14) / 8) ** 2 + ((xx - 14) / 8) ** 2 <= 1] = 1
    labels[((zz - 3) / 2) ** 2 + ((yy - 27) / 8) ** 2 + ((xx - 24) / 8) ** 2 <= 1] = 2
    widget = docked(viewer, WeightMapWidget(viewer))
    assert widget.volume.native.isHidden()  # nothing to choose without a stack
    widget.annotation.value = viewer.add_labels(labels, name="volume", scale=(2, 1, 1))
    assert not widget.volume.native.isHidden() and not widget.volume.value  # per plane, as 2D training
    widget.compute.clicked.emit()
    wait_idle(widget)
    np.testing.assert_allclose(viewer.layers["volume weights"].data[3], weight_map(labels[3]), atol=1e-6)
    widget.volume.value = True  # as a 3D network trains: one map of the volume, physical distances
    widget._edits.timer.timeout.emit()
    wait_idle(widget)
    shown = viewer.layers["volume weights"].data
    np.testing.assert_allclose(shown, weight_map(labels, spacing=(2, 1, 1)), atol=1e-6)
    assert np.abs(shown[3] - weight_map(labels[3])).max() > 0.1
    np.testing.assert_array_equal(viewer.layers["volume target"].data, separation_target(labels))


def test_the_newest_annotation_is_chosen_when_none_is(viewer, wait_idle):
    """Docked before or after the annotation exists, the widget offers it chosen, and
    leaves a choice the user made alone; the selected layer stays the user's."""
    image = viewer.add_image(np.zeros((40, 40), np.float32), name="img")
    widget = docked(viewer, WeightMapWidget(viewer))
    assert widget.annotation.value is None
    other = viewer.add_labels(np.zeros((40, 40), np.int32), name="other")
    assert widget.annotation.value is other  # the only labels layer
    widget.annotation.value = None
    annotation = viewer.add_labels(paint_discs((40, 40), [(10, 10), (10, 21)], 5), name="img annotation")
    annotation.metadata[ROLE] = ANNOTATION
    viewer.add_labels(np.zeros((40, 40), np.int32), name="newer")
    assert widget.annotation.value is annotation  # an annotation before a newer plain labels layer
    viewer.layers.selection.active = image
    widget.compute.clicked.emit()
    wait_idle(widget)
    assert "img annotation weights" in viewer.layers and viewer.layers.selection.active is image
    late = docked(viewer, WeightMapWidget(viewer))
    assert late.annotation.value is annotation


def test_no_labels_layer_is_reported(viewer):
    widget = docked(viewer, WeightMapWidget(viewer))
    widget.compute.clicked.emit()
    assert "choose a labels layer" in widget.status.value


def test_the_contrast_follows_the_map_until_the_user_sets_their_own(viewer, wait_idle):
    """The map of an empty annotation is all 0; painting raised it to 10 and more while
    the layer kept limits 0-1, so the separation ridges showed as one white blur."""
    empty = np.full((64, 64), -1, np.int32)
    layer = viewer.add_labels(empty, name="ann")
    widget = docked(viewer, WeightMapWidget(viewer))
    widget.annotation.value = layer
    widget.compute.clicked.emit()
    wait_idle(widget)
    shown = viewer.layers["ann weights"]
    layer.data = paint_discs((64, 64), [(20, 20), (20, 31), (45, 40)], 6)  # painted: the map updates live
    widget._edits.timer.timeout.emit()
    wait_idle(widget)
    low, top = float(shown.data.min()), float(shown.data.max())
    assert top > 5 and tuple(shown.contrast_limits) == pytest.approx((low, top))
    shown.contrast_limits = (0.0, 3.0)  # the user's own choice stays
    widget.w0.value = 5.0
    widget._edits.timer.timeout.emit()
    wait_idle(widget)
    assert float(shown.data.max()) < top and tuple(shown.contrast_limits) == (0.0, 3.0)


def test_an_annotation_made_after_the_dock_opened_is_the_one_shown(viewer):
    """Annotate's Create moved Train and Live to the new annotation, and Weight map
    stayed on the sample's complete one: its map was of an annotation not the user's
    (a new user's walk)."""
    for data, meta, kind in nuclei_2d():
        getattr(viewer, f"add_{kind}")(data, **meta)
    image, first = viewer.layers["nuclei"], viewer.layers["nuclei annotation"]
    widget = docked(viewer, WeightMapWidget(viewer))
    assert widget.annotation.value is first
    created = created_annotation(viewer, image)
    assert created is not first and widget.annotation.value is created
    viewer.add_labels(np.zeros(image.data.shape, np.int32), name="plain labels")  # not an annotation: ignored
    assert widget.annotation.value is created
    widget.annotation.value = first  # the user's own choice afterwards stays
    viewer.add_image(np.zeros((32, 32), np.float32), name="other")
    assert widget.annotation.value is first
