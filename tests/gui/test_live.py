import gc
import time

import numpy as np
import pytest
from napari.utils.key_bindings import KeyBinding

from napari_unet import UNet
from napari_unet._widgets import LiveTrainWidget
from napari_unet._widgets._layers import ANNOTATION, ROLE, LayerError
from napari_unet._widgets.live import ACCEPT_KEY
from napari_unet.core.config import IGNORE_LABEL
from napari_unet.core.synthetic import synthetic_nuclei

from ..core.test_live import partial_annotation
from .conftest import docked


def live_on_two_cells(viewer, session, shape, save_path):
    """A Live widget docked for a synthetic image with two of its cells annotated:
    (widget, annotation layer, true labels, their cell ids)."""
    image, labels = synthetic_nuclei(shape, seed=5)
    cells = [i for i in np.unique(labels) if i > 0]
    image_layer = viewer.add_image(image, name="cells")
    annotation = viewer.add_labels(partial_annotation(labels, cells[:2]), name="cells annotation")
    widget = docked(viewer, LiveTrainWidget(viewer, session))
    widget.image.value, widget.annotation.value = image_layer, annotation
    widget.save_path.value = save_path
    return widget, annotation, labels, cells


def test_live_training_follows_edits_accepts_objects_and_keeps_the_model(viewer, session, qtbot, tmp_path):
    from qtpy.QtCore import QTimer

    widget, annotation, labels, cells = live_on_two_cells(viewer, session, (128, 128), tmp_path / "live.safetensors")
    widget.preview_seconds.value = 0.5
    viewer.layers.selection.active = annotation
    annotation.mode = "paint"

    gaps, last = [], [time.perf_counter()]

    def probe():
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.timeout.connect(probe)
    timer.start(10)
    assert not widget.accept_button.enabled  # nothing to accept before a preview
    widget.start_button.clicked.emit()
    assert widget.status.value == "starting live training with a new network…"  # which model, said
    qtbot.waitUntil(lambda: widget.preview is not None, timeout=120_000)
    assert widget.accept_button.enabled
    assert gc.get_freeze_count() > 0  # full collections leave the viewer's heap alone while it runs
    assert "cells live" in viewer.layers
    assert viewer.layers.selection.active is annotation and annotation.mode == "paint"  # the user's place kept

    gaps.clear()  # from here on: live training in its steady state (the first preview added the layer)
    last[0] = time.perf_counter()
    # a newly painted cell reaches the running trainer's samples
    new_cell = labels == cells[2]
    annotation.data = partial_annotation(labels, cells[:3])
    qtbot.waitUntil(lambda: widget.live.edits_applied >= 1, timeout=60_000)
    qtbot.waitUntil(lambda: widget.live.trainer.stream.planes[0].weights[new_cell].all(), timeout=60_000)
    previews = widget.preview.step
    qtbot.waitUntil(lambda: widget.preview.step > previews, timeout=60_000)  # the preview refreshes

    # accepting a predicted object under the cursor copies exactly it, onto unannotated pixels
    preview = np.asarray(viewer.layers["cells live"].data)
    data = np.asarray(annotation.data)
    candidates = [i for i in np.unique(preview) if i > 0 and (data[preview == i] == IGNORE_LABEL).all()]
    if candidates:
        target = candidates[0]
        y, x = np.argwhere(preview == target)[0]
        viewer.cursor.position = (float(y), float(x))
        before = data.copy()
        widget.accept_under_cursor()
        after = np.asarray(annotation.data)
        changed = after != before
        np.testing.assert_array_equal(changed, preview == target)
        assert len(np.unique(after[changed])) == 1 and after[changed][0] == before.max() + 1
        with pytest.raises(LayerError, match="annotated already"):  # the same object again: said, not silent
            widget.accept_under_cursor()
        annotation.undo()  # Ctrl+Z takes the accepted object back, not an earlier edit
        np.testing.assert_array_equal(np.asarray(annotation.data), before)
        annotation.redo()

    # probe the event loop for a while during training, however fast the steps above went
    qtbot.waitUntil(lambda: len(gaps) > 50, timeout=60_000)
    widget.stop_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=120_000)
    timer.stop()
    assert session.model is widget.live.model and (tmp_path / "live.safetensors").exists()
    model, which = widget._model(1)  # a second Start goes on from it, and says so
    assert model is session.model and which == f"the session's model, live training ({widget.live.trainer.step} steps)"
    assert not session.model.config.batch_norm  # live runs train the plain network (core.live.live_model)
    assert gc.get_freeze_count() == 0  # handed back to the collector
    assert widget.save_path.value == tmp_path / "live-2.safetensors"  # the next run gets a new name, as in Train
    assert widget.step_label.value.startswith(f"step {widget.live.trainer.step},")  # the last step is shown
    assert len(gaps) > 50 and max(gaps) < 0.25, f"the event loop stalled for {max(gaps):.2f} s"


def test_a_3d_session_model_is_passed_over_for_a_new_network(viewer, session, qtbot, tmp_path):
    """After a 3D U-Net was trained in the session, Live refused every image ("a 3D
    U-Net needs a volume") and offered no other model."""
    three_d = UNet(ndim=3, base_channels=2, depth=1)
    session.set_model(three_d, "trained here")
    widget, _, _, _ = live_on_two_cells(viewer, session, (96, 96), tmp_path / "live.safetensors")
    widget.start_button.clicked.emit()
    assert "with a new network (the session's model is a 3D U-Net)" in widget.status.value
    qtbot.waitUntil(lambda: widget.live is not None and widget.live.trainer.step > 0, timeout=60_000)
    assert "; a new network (the session's model is a 3D U-Net)" in widget.status.value  # while it runs too
    widget.stop_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=60_000)
    assert session.model is widget.live.model and session.model.config.ndim == 2
    assert widget.status.value.startswith("stopped at step")


def test_the_image_and_its_annotation_are_chosen_as_in_train(viewer, session):
    """Opened with an image and its annotation in the viewer, Live starts with both
    chosen (it used to start empty and ask for an image that was open)."""
    image = viewer.add_image(np.zeros((64, 64), np.float32), name="cells")
    viewer.add_image(np.zeros((32, 32), np.float32), name="other")
    annotation = viewer.add_labels(np.full((64, 64), IGNORE_LABEL, np.int16), name="cells annotation")
    annotation.metadata[ROLE] = ANNOTATION
    widget = docked(viewer, LiveTrainWidget(viewer, session))
    assert widget.image.value is image and widget.annotation.value is annotation


def test_a_stack_is_refused_with_a_way_to_get_one_plane(viewer, session):
    image = viewer.add_image(np.zeros((3, 64, 64), np.float32), name="stack")
    annotation = viewer.add_labels(np.full((3, 64, 64), IGNORE_LABEL, np.int16), name="stack annotation")
    widget = docked(viewer, LiveTrainWidget(viewer, session))
    widget.image.value, widget.annotation.value = image, annotation
    widget.start_button.clicked.emit()
    assert "stack is a stack of 3 planes" in widget.status.value and "Split Stack" in widget.status.value
    assert "--in-channels" in widget.status.value  # what to do if its planes are channels
    assert not widget.runner.busy


def test_a_preview_window_that_moves_leaves_nothing_behind(viewer, session):
    """On a large plane the preview covers a window around the camera; the next
    preview is written into the same layer in place, and the previous window's
    labels are cleared there, while the selected layer stays selected."""
    from napari_unet.core.live import LivePreview

    image_layer = viewer.add_image(np.zeros((300, 400), np.float32), name="big")
    annotation = viewer.add_labels(np.full((300, 400), IGNORE_LABEL, np.int32), name="big annotation")
    widget = docked(viewer, LiveTrainWidget(viewer, session))
    widget.image.value, widget.annotation.value = image_layer, annotation
    widget._image_layer = image_layer  # as a run started on it sets it
    viewer.layers.selection.active = annotation
    first = (slice(0, 100), slice(0, 100))
    second = (slice(150, 250), slice(200, 300))
    widget._show(LivePreview(1, 0.0, first, np.full((100, 100), 3, np.int32)))
    layer = viewer.layers["big live"]
    widget._show(LivePreview(2, 1.0, second, np.full((100, 100), 7, np.int32)))
    assert viewer.layers["big live"] is layer  # the same layer, written in place
    expected = np.zeros((300, 400), np.int32)
    expected[second] = 7
    np.testing.assert_array_equal(np.asarray(layer.data), expected)
    assert viewer.layers.selection.active is annotation


def test_steps_are_shown_at_a_readable_pace_and_an_annotation_problem_stays_until_the_next_edit(viewer, session, qtbot):
    """Per-step progress goes to its own line, throttled (every widget change redraws
    the whole window on a display without a GPU); a problem with the latest edit
    stays in the status line while training goes on, until the user edits again."""
    from napari_unet.core.live import AnnotationProblem
    from napari_unet.core.train_events import StepProgress

    widget = docked(viewer, LiveTrainWidget(viewer, session))
    viewer.window._qt_window.show()
    assert not widget.step_label.native.isVisible()  # no empty line above the status before training
    widget._on_event(AnnotationProblem("the annotation holds no cell"))
    for step in range(1, 41):
        widget._on_event(StepProgress(step, 10**9, 0.5, 1e-3, step * 0.01, 4.0, 0.0, 0.0))
    assert widget.step_label.value.startswith("step 1,")  # the first at once, the rest wait (test_throttle)
    qtbot.waitUntil(lambda: widget.step_label.value.startswith("step 40,"), timeout=5000)  # the latest
    assert widget.step_label.native.isVisible()
    assert "the annotation holds no cell" in widget.status.value
    widget._send_edit()
    assert "the annotation holds no cell" not in widget.status.value
    widget._on_event(AnnotationProblem("12 regions … are painted 0", trained=True))  # a warning: it trains
    assert widget.status.value == "⚠ 12 regions … are painted 0"


@pytest.mark.parametrize("close", ["viewer", "dock"])
def test_closing_napari_or_the_dock_during_live_training_saves_the_model(
    make_napari_viewer, session, qtbot, tmp_path, caplog, close
):
    """Closing stops live training and writes its model, as Stop does (the model was lost)."""
    from napari_unet import load_model

    viewer = make_napari_viewer()
    path = tmp_path / "live.safetensors"
    widget, annotation, *_ = live_on_two_cells(viewer, session, (96, 96), path)
    widget.start_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.live is not None and widget.live.trainer.step >= 2, timeout=120_000)
    accept_key = KeyBinding.from_str(ACCEPT_KEY)
    assert accept_key in annotation.keymap
    if close == "viewer":
        viewer.close()
    else:
        viewer.window.remove_dock_widget(widget.native)
    assert not widget.runner.busy
    assert load_model(path).config.in_channels == 1
    assert not [record for record in caplog.records if record.levelname == "ERROR"]
    assert session.path == path and session.model is widget.live.model  # still the session's, with its file
    if close == "dock":
        assert accept_key not in annotation.keymap  # no closed dock answers the key any more


@pytest.mark.parametrize("kind", ["image", "annotation"])
def test_removing_the_image_or_annotation_stops_live_training_and_says_why(
    viewer, session, qtbot, tmp_path, caplog, kind
):
    """Removing the image raised AttributeError at every preview and brush stroke
    while training went on; the annotation's removal went unnoticed."""
    path = tmp_path / "live.safetensors"
    widget, annotation, *_ = live_on_two_cells(viewer, session, (96, 96), path)
    widget.preview_seconds.value = 0.5
    widget.start_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.preview is not None, timeout=120_000)
    viewer.layers.remove("cells" if kind == "image" else annotation)
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=60_000)
    name = "cells" if kind == "image" else "cells annotation"
    assert widget.status.value.startswith(f"the {kind} layer '{name}' was removed: stopped at step ")
    assert session.path == path and path.is_file()
    assert not [record for record in caplog.records if record.levelname == "ERROR"]
    if kind == "annotation":  # accepting into the removed layer "accepted 0 objects" and changed nothing seen
        widget.accept_button.clicked.emit()
        assert "the annotation 'cells annotation' the previews were made for was removed" in widget.status.value


def test_accepting_objects_is_one_undo_step_each(viewer, session, qtbot):
    """Accepting wrote the annotation's data behind napari's undo history, so Ctrl+Z
    then undid the user's stroke before it and left the accepted objects."""
    from napari_unet.core.live import LivePreview

    image = viewer.add_image(np.zeros((40, 40), np.float32), name="cells")
    annotation = viewer.add_labels(np.full((40, 40), IGNORE_LABEL, np.int16), name="cells annotation")
    predicted = np.zeros((40, 40), np.int32)
    predicted[5:12, 5:12], predicted[20:30, 20:30] = 1, 2
    widget = docked(viewer, LiveTrainWidget(viewer, session))
    widget.image.value, widget.annotation.value = image, annotation
    widget._image_layer, widget._annotation_layer = image, annotation  # as a run started on them sets them
    viewer.add_labels(predicted, name="cells live", metadata={ROLE: "preview"})  # as a preview shows it
    widget.preview = LivePreview(step=1, seconds=1.0, window=(slice(0, 40), slice(0, 40)), labels=predicted)
    annotation.data_setitem((np.array([35, 35]), np.array([1, 2])), 0)  # the user's stroke
    stroked = np.array(annotation.data)
    viewer.cursor.position = (8.0, 8.0)
    widget.accept_under_cursor()
    assert (annotation.data[5:12, 5:12] == 1).all()
    widget.accept_in_view()
    assert (annotation.data[20:30, 20:30] == 2).all() and "accepted 1 predicted object" in widget.status.value
    annotation.undo()
    assert (annotation.data[20:30, 20:30] == IGNORE_LABEL).all() and (annotation.data[5:12, 5:12] == 1).all()
    annotation.undo()
    np.testing.assert_array_equal(annotation.data, stroked)  # the stroke is still there


@pytest.mark.parametrize(("painted", "message"), [(IGNORE_LABEL, "is empty: paint some cells"), (0, "holds no cells")])
def test_an_annotation_without_cells_is_refused_before_the_start(viewer, session, painted, message):
    """Live training started on an empty or background-only annotation said "starting
    live training…" and then, from the worker, that it could not."""
    image = viewer.add_image(np.zeros((40, 40), np.float32), name="cells")
    annotation = viewer.add_labels(np.full((40, 40), painted, np.int32), name="cells annotation")
    widget = docked(viewer, LiveTrainWidget(viewer, session))
    widget.image.value, widget.annotation.value = image, annotation
    widget.start_button.clicked.emit()
    assert f"the annotation 'cells annotation' {message}" in widget.status.value
    assert not widget.runner.busy and widget.start_button.enabled
