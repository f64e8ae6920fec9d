import time

import numpy as np
import pytest
from qtpy.QtCore import QTimer

from napari_unet._sample_data import nuclei_2d
from napari_unet._widgets import AnnotateWidget, WeightMapWidget
from napari_unet._widgets._layers import ROLE

from .conftest import docked

TOUCHING_GAP, UNANNOTATED_RIM = 1, 2  # the highlight's values (napari_unet.core.annotation)


def counted(qtbot):
    """Let the widget count the edits napari reported (on the next event-loop turn)."""
    qtbot.wait(20)


def rect(top, left, height, width):
    """Indices of a rectangle, for ``layer.data_setitem`` (an edit napari records like a stroke)."""
    yy, xx = np.mgrid[top : top + height, left : left + width]
    return yy.ravel(), xx.ravel()


@pytest.fixture
def annotating(viewer):
    """An image, the Annotate widget and a fresh annotation layer for the image."""
    image = viewer.add_image(np.random.default_rng(0).random((80, 120)).astype(np.float32), name="img")
    widget = docked(viewer, AnnotateWidget(viewer))
    widget.image.value = image
    widget.create.clicked.emit()
    return widget, widget.annotation.value


def test_create_annotation_matches_the_image_grid(viewer, nuclei):
    image = viewer.add_image(nuclei[0], name="cells", scale=(0.5, 0.5), translate=(3, 4))
    widget = docked(viewer, AnnotateWidget(viewer))
    widget.image.value = image
    widget.create.clicked.emit()
    layer = viewer.layers["cells annotation"]
    assert layer.data.shape == (128, 128)
    assert tuple(layer.scale) == (0.5, 0.5) and tuple(layer.translate) == (3, 4)
    assert widget.annotation.value is layer and layer.selected_label == 1 and layer.mode == "paint"


def test_the_annotation_of_a_rotated_or_sheared_image_lies_on_its_pixels(viewer):
    """Only scale and translation were copied: on a rotated image a stroke over a
    cell landed on background pixels of the annotation's array, and trained so."""
    for transform in ({"rotate": 30, "translate": (40, 10)}, {"shear": [0.3], "scale": (2, 1)}):
        image = viewer.add_image(np.zeros((64, 80), np.float32), name="img", **transform)
        widget = docked(viewer, AnnotateWidget(viewer))
        widget.image.value = image
        widget.create.clicked.emit()
        layer = widget.annotation.value
        for point in ((37.5, 29.6), (0, 0), (63, 79)):
            np.testing.assert_allclose(layer.data_to_world(point), image.data_to_world(point), atol=1e-9)
        viewer.layers.clear()


def test_a_new_annotation_starts_unannotated_and_no_order_of_steps_loses_paint(annotating, qtbot):
    """Issue 18.1: -1 everywhere at first; painted cells and background survive every action."""
    widget, layer = annotating
    assert layer.data.dtype.kind == "i" and (layer.data == -1).all()
    assert widget.counts.value.startswith("cells 0, background 0% of the image, unannotated 100%")
    widget.background.clicked.emit()  # the README's old order: background first...
    layer.data_setitem(rect(0, 0, 8, 120), layer.selected_label)
    widget.new_cell.clicked.emit()  # ...then cells
    layer.paint((40, 30), layer.selected_label)
    counted(qtbot)
    widget.new_cell.clicked.emit()
    layer.paint((40, 80), layer.selected_label)
    counted(qtbot)
    painted = layer.data.copy()
    assert (painted[:8] == 0).all() and {1, 2} <= set(np.unique(painted))
    assert widget.counts.value.startswith("cells 2, background 10% of the image, unannotated")
    widget.rest_of_image.clicked.emit()  # only unannotated pixels change
    counted(qtbot)
    assert (layer.data[painted != -1] == painted[painted != -1]).all()
    assert (layer.data[painted == -1] == 0).all()
    assert "unannotated 0%" in widget.counts.value
    assert widget.status.value == "the rest of the image is background now (Ctrl+Z undoes it)"
    layer.undo()  # Ctrl+Z takes back the fill, not the stroke before it
    qtbot.waitUntil(lambda: "unannotated 88%" in widget.counts.value, timeout=5000)
    assert widget.status.value == ""  # no longer true: it went with the fill
    np.testing.assert_array_equal(layer.data, painted)
    layer.redo()
    qtbot.waitUntil(lambda: "unannotated 0%" in widget.counts.value, timeout=5000)
    widget.erase.clicked.emit()  # erasing makes pixels unannotated again, nothing else
    assert layer.mode == "erase"
    layer.paint((70, 110), layer.colormap.background_value)
    counted(qtbot)
    assert (layer.data == -1).sum() > 0 and (layer.data[painted > 0] == painted[painted > 0]).all()
    widget.new_cell.clicked.emit()
    assert layer.selected_label == 3 and layer.mode == "paint"
    layer.paint((60, 60), 3)
    counted(qtbot)
    assert widget.counts.value.startswith("cells 3,")
    layer.undo()  # napari's undo: the counts follow
    qtbot.waitUntil(lambda: widget.counts.value.startswith("cells 2,"), timeout=5000)


def test_the_background_brush_leaves_painted_cells_whole(annotating):
    """A background stroke that strayed over a painted cell took part of it (napari
    paints over labels by default); the cell brush may still paint over background."""
    widget, layer = annotating
    widget.new_cell.clicked.emit()
    layer.paint((40, 30), layer.selected_label)
    cell = layer.data == 1
    widget.background.clicked.emit()
    assert layer.preserve_labels and layer.mode == "paint" and layer.selected_label == 0
    layer.paint((40, 36), 0)  # a stroke over the cell's edge
    assert (layer.data[cell] == 1).all() and (layer.data == 0).any()
    widget.new_cell.clicked.emit()
    assert not layer.preserve_labels
    layer.paint((40, 42), layer.selected_label)  # over the background just painted
    assert (layer.data == 2).sum() > (layer.data == 0).sum() > 0
    widget.background.clicked.emit()
    widget.erase.clicked.emit()
    assert not layer.preserve_labels and layer.mode == "erase"
    layer.paint((40, 30), layer.colormap.background_value)
    assert not (layer.data == 1).any()  # the eraser still takes any cell


def test_a_new_cell_right_after_a_stroke_gets_a_new_id(annotating):
    """'New cell' pressed before the event loop has counted the last stroke (a fast
    key press, a script) still moves past that stroke's id."""
    widget, layer = annotating
    for row in range(3):
        layer.data_setitem(rect(10 + 20 * row, 10, 8, 8), layer.selected_label)
        widget.new_cell.clicked.emit()  # no event-loop turn in between
    assert layer.selected_label == 4 and set(np.unique(layer.data)) == {-1, 1, 2, 3}


def test_rest_of_this_plane_is_background_leaves_other_planes(viewer, qtbot):
    image = viewer.add_image(np.zeros((3, 40, 40), np.float32), name="stack")
    widget = docked(viewer, AnnotateWidget(viewer))
    widget.image.value = image
    widget.create.clicked.emit()
    layer = widget.annotation.value
    assert not widget.rest_of_plane.native.isHidden()
    viewer.dims.set_current_step(0, 1)
    widget.new_cell.clicked.emit()
    layer.paint((1, 20, 20), layer.selected_label)
    counted(qtbot)
    widget.rest_of_plane.clicked.emit()
    counted(qtbot)
    assert (layer.data[1] >= 0).all() and (layer.data[0] == -1).all() and (layer.data[2] == -1).all()
    assert "ids unique across the stack" in widget.counts.value
    assert "planes annotated 1 of 3 (1 complete: no -1 left)" in widget.counts.value


def test_unannotated_pixels_show_the_image_and_background_is_a_faint_tint(make_napari_viewer, qtbot):
    """Issue 18.2: -1 is transparent, 0 faintly tinted, cells in label colours."""
    viewer = make_napari_viewer(show=True)  # screenshots need a window on the screen
    image = viewer.add_image(np.full((60, 180), 0.5, np.float32), name="img", contrast_limits=(0, 1))
    widget = AnnotateWidget(viewer)  # not docked: the whole window is canvas
    widget.image.value = image
    widget.create.clicked.emit()
    layer = widget.annotation.value
    layer.data_setitem(rect(0, 60, 60, 60), 0)
    layer.data_setitem(rect(0, 120, 60, 60), 1)
    viewer.reset_view()
    qtbot.wait(50)
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    row = shot[shot.shape[0] // 2]
    left, middle, right = (row[int(shot.shape[1] * f)] for f in (0.3, 0.5, 0.7))
    layer.visible = False
    qtbot.wait(50)
    plain = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)[shot.shape[0] // 2]
    image_only = plain[int(shot.shape[1] * 0.3)]
    assert np.abs(left - image_only).max() <= 2, "unannotated pixels must show the image unchanged"
    tint = np.abs(middle - image_only).max()
    assert 10 <= tint <= 80, f"annotated background should be a faint tint, differs by {tint}"
    assert np.abs(right - image_only).max() > 60, "cells keep strong label colours"


def test_unsigned_labels_become_signed_once_and_a_full_dtype_value_is_warned_about(viewer, qtbot):
    """Issue 18.3: uint8/uint16 layers are converted when they become the annotation."""
    image = viewer.add_image(np.zeros((50, 50), np.float32), name="img")
    opened = np.zeros((50, 50), np.uint8)
    opened[10:20, 10:20] = 1
    layer = viewer.add_labels(opened, name="from disk")
    widget = docked(viewer, AnnotateWidget(viewer))
    widget.image.value = image
    widget.annotation.value = layer
    assert layer.data.dtype == np.int16 and (layer.data[10:20, 10:20] == 1).all()
    assert "was uint8: converted to int16" in widget.status.value
    widget.erase.clicked.emit()
    layer.paint((40, 40), layer.colormap.background_value)  # raised before
    counted(qtbot)
    assert (layer.data == -1).any() and "unannotated" in widget.counts.value
    widget.annotation.value = None
    widget.annotation.value = layer
    assert "converted" not in widget.status.value  # said once
    missing = viewer.add_labels(np.where(opened == 1, 1, 255).astype(np.uint8), name="255 is missing")
    widget.annotation.value = missing
    assert "the largest uint8 value" in widget.status.value and "giant cell" in widget.status.value


def test_cells_separated_only_by_unannotated_pixels_are_shown(viewer, annotating, wait_idle, qtbot):
    """Issue 18.4: a 1-px unpainted rim between cells is reported and highlighted."""
    widget, layer = annotating
    layer.data_setitem(rect(20, 10, 20, 20), 1)
    layer.data_setitem(rect(20, 31, 20, 20), 2)  # column 30 stays unannotated
    layer.data_setitem(rect(20, 60, 20, 20), 3)
    layer.data_setitem(rect(20, 80, 20, 20), 4)  # touches 3
    counted(qtbot)
    assert "touching pairs 1" in widget.counts.value
    assert "1 pair(s) of cells separated only by unannotated pixels" in widget.counts.value
    shown = viewer.layers["img annotation touching"].data
    assert (shown[20:40, 30] == UNANNOTATED_RIM).all() and (shown[20:40, 79:81] == TOUCHING_GAP).all()
    weights = docked(viewer, WeightMapWidget(viewer))
    weights.annotation.value = layer
    weights.compute.clicked.emit()
    wait_idle(weights)
    assert "1 pair(s) of cells are separated only by unannotated pixels" in weights.status.value
    target = viewer.layers["img annotation target"]
    assert target.visible and (target.data[20:40, 30] == UNANNOTATED_RIM).all()
    assert viewer.layers["img annotation weights"].data[30, 30] == 0
    layer.data_setitem(rect(20, 30, 20, 1), 0)  # paint the rim as background
    counted(qtbot)
    assert "separated only by unannotated" not in widget.counts.value
    assert not (viewer.layers["img annotation touching"].data == UNANNOTATED_RIM).any()


def test_create_makes_a_new_layer_and_never_reuses_one(viewer):
    """Issue 18.5: with the sample's complete annotation open, Create makes an empty one."""
    for data, meta, kind in nuclei_2d():
        getattr(viewer, f"add_{kind}")(data, **meta)
    truth = viewer.layers["nuclei annotation"].data.copy()
    widget = docked(viewer, AnnotateWidget(viewer))
    widget.image.value = viewer.layers["nuclei"]
    widget.create.clicked.emit()
    created = widget.annotation.value
    assert created.name == "nuclei annotation 2" and (created.data == -1).all()
    assert np.array_equal(viewer.layers["nuclei annotation"].data, truth)
    widget.create.clicked.emit()
    assert widget.annotation.value.name == "nuclei annotation 3"


def test_the_brush_size_box_follows_napari_s_own_control(annotating):
    widget, layer = annotating
    widget.brush_size.value = 14
    assert layer.brush_size == 14
    layer.brush_size = 25  # napari's layer controls, or its keys
    assert widget.brush_size.value == 25


def test_helper_layers_keep_the_selection_and_the_brush(viewer, annotating, qtbot):
    """Issue 18.6: the touching highlight appears without taking the selection or the mode."""
    widget, layer = annotating
    viewer.layers.selection.active = layer
    layer.mode = "paint"
    layer.data_setitem(rect(10, 10, 10, 10), 1)
    layer.data_setitem(rect(10, 20, 10, 10), 2)  # touches 1: the highlight layer is added
    counted(qtbot)
    assert "img annotation touching" in viewer.layers
    assert viewer.layers.selection.active is layer and layer.mode == "paint"
    assert viewer.layers["img annotation touching"] not in widget.annotation.choices


def test_the_touching_marks_show_only_with_their_annotation(viewer, annotating, qtbot):
    """Hiding an annotation, or creating a new one, left its orange marks on the canvas
    (over the segmentation, and as if the new empty annotation were painted)."""
    widget, layer = annotating
    layer.data_setitem(rect(10, 10, 10, 10), 1)
    layer.data_setitem(rect(10, 20, 10, 10), 2)
    counted(qtbot)
    marks = viewer.layers["img annotation touching"]
    assert marks.visible
    layer.visible = False
    assert not marks.visible
    layer.visible = True
    assert marks.visible
    widget.create.clicked.emit()  # a new annotation for the same image
    assert widget.annotation.value is not layer and not marks.visible


def test_strokes_on_a_large_annotation_never_stall_the_viewer(viewer, qtbot):
    """Issue 18.7: counting a stroke (and its highlight) works on the stroke's
    neighbourhood, so painting a 4096x4096 annotation never stalls the event loop."""
    image = viewer.add_image(np.zeros((4096, 4096), np.uint8), name="big")
    widget = docked(viewer, AnnotateWidget(viewer))
    widget.image.value = image
    widget.create.clicked.emit()
    qtbot.waitUntil(lambda: widget.annotation.value is not None, timeout=60_000)  # large ones: made in a worker
    layer = widget.annotation.value
    layer.brush_size = 30
    qtbot.wait(500)
    ticks = [time.perf_counter()]
    probe = QTimer()
    probe.setInterval(10)
    probe.timeout.connect(lambda: ticks.append(time.perf_counter()))
    probe.start()
    qtbot.wait(50)
    for step, x in enumerate(range(100, 500, 20)):  # 20 strokes, 5 touching cells
        if step % 4 == 0:
            widget.new_cell.clicked.emit()
        layer.paint((2000, x), layer.selected_label)
        qtbot.wait(30)  # the widget counts the stroke on the next turn of the event loop
    qtbot.wait(600)  # and nothing heavy follows later
    probe.stop()
    gaps = np.diff(ticks)
    assert gaps.max() < 0.25, f"the event loop stalled for {gaps.max() * 1000:.0f} ms"
    assert widget.counts.value.startswith("cells 5,")
    assert "touching pairs 4" in widget.counts.value


def test_new_annotation_from_segmentation_copies_and_keeps_the_old_one(viewer, nuclei):
    image = viewer.add_image(nuclei[0], name="cells")
    predicted = viewer.add_labels(nuclei[1], name="cells labels", metadata={"napari_unet": "segmentation"})
    widget = docked(viewer, AnnotateWidget(viewer))
    widget.image.value = image
    widget.create.clicked.emit()
    first = widget.annotation.value
    first.data_setitem(rect(0, 0, 5, 5), 0)
    widget.source.value = predicted
    widget.copy.clicked.emit()
    annotation = widget.annotation.value
    assert annotation is not first and annotation.name == "cells annotation 2"
    assert np.array_equal(annotation.data, nuclei[1]) and annotation.data.dtype.kind == "i"
    assert annotation.data is not predicted.data  # an editable copy
    assert annotation.selected_label == nuclei[1].max() + 1
    assert (first.data[:5, :5] == 0).all()  # nothing overwritten
    # missed cells would be trained as background unless painted: the status says so
    assert "every pixel outside its objects is background now, so paint the cells it missed" in widget.status.value


def test_shape_mismatch_and_missing_layers_are_reported(viewer):
    image = viewer.add_image(np.zeros((50, 50)), name="img")
    other = viewer.add_labels(np.zeros((40, 40), np.int32), name="other")
    widget = docked(viewer, AnnotateWidget(viewer))
    widget.new_cell.clicked.emit()  # no annotation layer yet
    assert "no annotation layer" in widget.status.value
    widget.image.value = image
    widget.annotation.value = other
    assert "differs from image" in widget.counts.value
    widget.source.value = other
    widget.copy.clicked.emit()
    assert "⚠" in widget.status.value and "pick the annotation made for this image" in widget.status.value


def test_a_dock_opened_later_takes_up_the_images_annotation_but_no_other_labels(viewer):
    image = viewer.add_image(np.zeros((50, 50)), name="img")
    viewer.add_labels(np.zeros((50, 50), np.int32), name="ground truth")  # a user's own labels: left alone
    widget = docked(viewer, AnnotateWidget(viewer))
    assert widget.annotation.value is None and widget.counts.value == "no annotation layer"
    widget.image.value = image
    widget.create.clicked.emit()
    made = widget.annotation.value
    viewer.window.remove_dock_widget(widget.native)
    again = docked(viewer, AnnotateWidget(viewer))  # e.g. the dock closed and opened again
    assert again.annotation.value is made and again.counts.value.startswith("cells 0")
    assert ROLE not in viewer.layers["ground truth"].metadata  # never adopted as an annotation


def test_the_samples_annotation_is_taken_up_as_train_and_weight_map_take_it_up(viewer, qtbot):
    """The volume sample opens "nuclei volume annotation" beside "nuclei volume":
    Annotate said "no annotation layer" while Train and Weight map used it."""
    from napari_unet._sample_data import nuclei_volume

    for data, meta, kind in nuclei_volume():
        getattr(viewer, f"add_{kind}")(data, **meta)
    widget = docked(viewer, AnnotateWidget(viewer))
    assert widget.annotation.value is viewer.layers["nuclei volume annotation"]
    qtbot.waitUntil(lambda: widget.counts.value.startswith("cells "), timeout=10000)
    assert "planes annotated 28 of 28" in widget.counts.value


def test_a_fill_too_large_to_undo_never_lets_ctrl_z_take_an_earlier_cell(viewer, qtbot):
    image = viewer.add_image(np.zeros((1024, 1024), np.float32), name="big")
    widget = docked(viewer, AnnotateWidget(viewer))
    widget.image.value = image
    widget.create.clicked.emit()
    qtbot.waitUntil(lambda: widget.annotation.value is not None, timeout=10_000)
    layer = widget.annotation.value
    widget.new_cell.clicked.emit()
    layer.data_setitem(rect(100, 100, 20, 20), layer.selected_label)
    counted(qtbot)
    widget.rest_of_image.clicked.emit()
    qtbot.waitUntil(lambda: "background now" in widget.status.value, timeout=10_000)
    assert "too large to undo" in widget.status.value
    layer.undo()  # nothing to undo now: the cell painted before stays
    assert (layer.data[100:120, 100:120] == 1).all() and (layer.data == -1).sum() == 0


def test_a_refused_action_is_not_reported_after_the_next_stroke(annotating, qtbot):
    """'New annotation from segmentation' pressed without a segmentation left its
    warning in the status through painting, training and segmenting."""
    widget, layer = annotating
    widget.source.value = None
    widget.copy.clicked.emit()
    assert widget.status.value.startswith("⚠ choose the segmentation") and "segment the image first" in (
        widget.status.value
    )
    widget.new_cell.clicked.emit()
    layer.paint((40, 30), layer.selected_label)
    qtbot.waitUntil(lambda: widget.status.value == "", timeout=5000)


def test_deleting_an_annotation_takes_its_helper_layer_with_it(viewer, annotating, qtbot):
    """Deleting an annotation from the layer list left its touching-cells layer behind;
    a user's own labels layer of such a name stays."""
    widget, layer = annotating
    assert "img annotation touching" in viewer.layers  # added with the annotation, empty
    viewer.add_labels(np.zeros((80, 120), np.int32), name="mine touching")
    viewer.add_labels(np.zeros((80, 120), np.int32), name="mine")
    viewer.layers.remove("mine")
    viewer.layers.remove(layer)
    qtbot.waitUntil(lambda: "img annotation touching" not in viewer.layers, timeout=5000)
    assert "mine touching" in viewer.layers and widget.annotation.value is None
