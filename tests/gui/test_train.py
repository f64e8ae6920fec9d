import time

import numpy as np
import pytest
import torch
from qtpy.QtCore import QTimer

from napari_unet import UNet, load_model, save_model
from napari_unet._sample_data import nuclei_2d
from napari_unet._widgets import TrainWidget
from napari_unet._widgets import _training_inputs as training_inputs
from napari_unet._widgets import _warm_up as warm_up_module
from napari_unet._widgets._plot import MIN_LABEL_SPACING_PX, LossPlot
from napari_unet._widgets._warm_up import warm_up
from napari_unet.core.checkpoint import load_state
from napari_unet.core.config import IGNORE_LABEL
from napari_unet.core.synthetic import synthetic_nuclei
from napari_unet.core.train import NO_COMPLETE_CELL
from napari_unet.core.train_events import StepProgress

from .conftest import created_annotation, docked


def tiny_settings(widget, tmp_path, steps=6):
    widget.base_channels.value = 4
    widget.depth.value = 2
    widget.tile.value = 60
    widget.batch_size.value = 2
    widget.steps.value = steps
    widget.device.value = "cpu"
    widget.precision.value = "fp32"
    widget.save_path.value = tmp_path / "model.safetensors"


@pytest.fixture
def annotated(viewer, nuclei):
    image = viewer.add_image(nuclei[0], name="cells")
    labels = viewer.add_labels(nuclei[1], name="cells annotation")
    return image, labels


def test_training_runs_in_a_worker_and_lands_in_the_session(viewer, session, annotated, tmp_path, wait_idle):
    torch.manual_seed(0)
    widget = docked(viewer, TrainWidget(viewer, session))
    widget.image.value, widget.annotation.value = annotated
    widget.val_image.value, widget.val_labels.value = annotated
    widget.preview_image.value = annotated[0]
    widget.preview_every.value = 3
    widget.zoom.value = 0.25
    tiny_settings(widget, tmp_path)
    assert widget.plot.isHidden()  # an empty plot before the first run: the room goes to the settings
    widget.start_button.clicked.emit()
    assert widget.runner.busy and not widget.start_button.enabled
    wait_idle(widget)
    assert not widget.plot.isHidden()  # shown once the data were prepared
    assert session.model is widget.trainer.model and widget.trainer.step == 6
    assert widget.trainer.config.augment.zoom == 0.25
    assert widget.batch_norm.value and widget.trainer.model.config.batch_norm  # the CPU default
    assert widget.progress.value == 6 and widget.start_button.enabled
    assert len(widget.plot.network.steps) == 6
    low, high = widget.plot.getPlotItem().getViewBox().viewRange()[0]
    assert high - low >= 10  # 6 steps labelled in whole steps (it showed 1.2, 1.4, ...)
    assert "validation at step" in widget.validation_label.value
    assert not widget.validation_label.native.isHidden()  # shown (it was set but hidden)
    assert "cells preview" in viewer.layers and viewer.layers["cells preview"].data.shape == (128, 128)
    saved = load_model(tmp_path / "model.safetensors")
    assert saved.metadata["training"]["steps"] == 6
    assert "model saved" in widget.status.value and "Start trains it further" in widget.status.value

    # Start again trains the session's model further: a second run used to start a new
    # network and, once stopped early, replaced the better model in the session
    assert widget.model_source.value == "session model"
    assert widget.save_path.value == tmp_path / "model-2.safetensors"  # it replaced the chosen file, silently
    first = session.model
    before = {name: tensor.clone() for name, tensor in first.state_dict().items()}
    widget.start_button.clicked.emit()
    wait_idle(widget)
    assert session.model is first and widget.trainer.model is first  # the same network, trained further
    assert session.source == "trained here (6 steps, 12 in 2 runs)"  # it said 6 steps
    assert load_model(tmp_path / "model.safetensors").metadata["training"]["steps"] == 6  # the first file kept
    assert any(not torch.equal(before[name], tensor) for name, tensor in first.state_dict().items())


def test_adding_a_layer_keeps_the_chosen_network_settings(viewer, session, annotated, tmp_path):
    """napari resets every dock's choices when a layer comes or goes: that used to put
    back the default width, depth, normalisation and tile (a preview layer did it at Start)."""
    widget = docked(viewer, TrainWidget(viewer, session))
    tiny_settings(widget, tmp_path)
    widget.batch_norm.value = False
    chosen = (widget.base_channels.value, widget.depth.value, widget.batch_norm.value, widget.tile.value)
    viewer.add_points([[1, 1]], name="someone's points")
    viewer.layers.remove("someone's points")
    assert (widget.base_channels.value, widget.depth.value, widget.batch_norm.value, widget.tile.value) == chosen
    assert not widget.warm_start.enabled  # for a new 3D network only
    widget.network.value = "3D"  # a real change of network still brings its defaults
    assert widget.depth.value != 2 or widget.base_channels.value != 4
    assert widget.warm_start.enabled and widget.config().warm_start_steps == widget.warm_start.value > 0
    widget.model_source.value = "session model"  # trained further: its own weights are the start
    assert not widget.warm_start.enabled and widget.config().warm_start_steps == 0


def test_stop_keeps_a_checkpoint_and_the_model(viewer, session, annotated, tmp_path, wait_idle, qtbot):
    widget = docked(viewer, TrainWidget(viewer, session))
    widget.image.value, widget.annotation.value = annotated
    tiny_settings(widget, tmp_path, steps=100_000)
    widget.batch_norm.value = False  # the paper's network, without normalisation
    widget.start_button.clicked.emit()
    steps = []
    widget.runner.worker.yielded.connect(lambda event: isinstance(event, StepProgress) and steps.append(event))
    qtbot.waitUntil(lambda: widget.progress.value >= 2 and bool(steps), timeout=60_000)
    widget.stop_button.clicked.emit()
    widget._show_step_now(steps[-1])  # as when a step's progress, queued before Stop, is shown after it
    assert widget.status.value.startswith("stopping… step ")  # the step's line had hidden that Stop was heard
    wait_idle(widget)
    step = widget.trainer.step
    assert 2 <= step < 100_000
    assert load_state(tmp_path / "model.safetensors.ckpt")["step"] == step
    assert load_model(tmp_path / "model.safetensors").metadata["training"]["steps"] == step
    assert session.model is widget.trainer.model and "stopped" in widget.status.value
    assert not session.model.config.batch_norm


@pytest.mark.slow
def test_a_training_layer_removed_while_the_run_goes_on_is_noted(
    viewer, session, annotated, tmp_path, wait_idle, qtbot
):
    """Removing the annotation while Train ran went unnoticed (a new user's walk): the
    run goes on with the data it read, and the status says so to the end."""
    image, annotation = annotated
    widget = docked(viewer, TrainWidget(viewer, session))
    widget.image.value, widget.annotation.value = image, annotation
    tiny_settings(widget, tmp_path, steps=100_000)
    widget.start_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.progress.value >= 2, timeout=60_000)
    viewer.layers.remove(annotation)
    note = "the layer 'cells annotation' was removed: this run goes on with the data it read at Start"
    qtbot.waitUntil(lambda: note in widget.status.value, timeout=10_000)  # under the next steps' lines
    assert widget.runner.busy
    widget.stop_button.clicked.emit()
    wait_idle(widget)
    assert "stopped" in widget.status.value and note in widget.status.value
    assert widget.status.value.count(note) == 1


def test_napari_stays_responsive_while_training(viewer, session, annotated, tmp_path, wait_idle, qtbot):
    widget = docked(viewer, TrainWidget(viewer, session))
    widget.image.value, widget.annotation.value = annotated
    tiny_settings(widget, tmp_path, steps=100_000)
    widget.base_channels.value = 8
    widget.tile.value = 92
    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    widget.start_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.progress.value >= 1, timeout=60_000)
    timer.start()
    qtbot.wait(3000)
    timer.stop()
    widget.stop_button.clicked.emit()
    wait_idle(widget)
    gaps = np.diff(ticks)
    assert len(ticks) > 50 and widget.trainer.step > 3
    assert gaps.max() < 0.25, f"the event loop stalled for {gaps.max() * 1000:.0f} ms"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda w, img, lab: None, "choose an image layer"),
        (
            lambda w, img, lab: (setattr(w.image, "value", img), setattr(w.annotation, "value", None)),
            "choose a labels layer",
        ),
        (
            lambda w, img, lab: (setattr(w.image, "value", img), setattr(w.annotation, "value", lab)),
            "annotations are empty",
        ),
        (  # a validation image without its labels validated nothing, silently
            lambda w, img, lab: (setattr(w.image, "value", img), setattr(w.val_image, "value", img)),
            "validation needs an image and its labels",
        ),
    ],
)
def test_bad_input_is_reported_not_raised(viewer, session, tmp_path, setup, message, wait_idle):
    image = viewer.add_image(np.zeros((64, 64)), name="img")
    empty = viewer.add_labels(np.full((64, 64), -1, np.int32), name="empty")
    widget = docked(viewer, TrainWidget(viewer, session))
    widget.image.value = widget.annotation.value = None
    tiny_settings(widget, tmp_path)
    setup(widget, image, empty)
    widget.start_button.clicked.emit()
    wait_idle(widget)  # the training data are checked in the worker
    assert message in widget.status.value and widget.start_button.enabled
    assert widget.plot.isHidden()  # no run, no empty plot
    if message == "annotations are empty":  # painting answers it: the message does not stay beside the cells
        empty.data_setitem((np.arange(10, 20), np.arange(10, 20)), 1)
        widget._edits.timer.timeout.emit()
        assert message not in widget.status.value and "Start checks it again" in widget.status.value


@pytest.mark.parametrize("source", ["session model", "file"])
def test_an_rgb_image_and_a_one_channel_model_ask_for_a_new_model(viewer, session, tmp_path, wait_idle, source):
    """After a first run Train's model is "session model"; pressing Start on an RGB layer
    then advised to "train on the RGB layer", which the user was doing (a new user's
    walk), and so did a one-channel model file: the way out is a new network."""
    session.set_model(UNet(base_channels=2, depth=1), "trained")
    save_model(session.model, tmp_path / "grey.safetensors")
    annotation = np.full((64, 64), IGNORE_LABEL, np.int32)
    annotation[10:40, 10:40] = 0
    annotation[20:30, 20:30] = 1
    rgb = viewer.add_image(np.zeros((64, 64, 3), np.uint8), rgb=True, name="rgb")
    labels = viewer.add_labels(annotation, name="rgb annotation")
    widget = docked(viewer, TrainWidget(viewer, session))
    tiny_settings(widget, tmp_path)
    widget.image.value, widget.annotation.value = rgb, labels
    widget.model_source.value = source
    widget.model_file.value = tmp_path / "grey.safetensors"
    widget.start_button.clicked.emit()
    wait_idle(widget)
    assert "choose model: new" in widget.status.value and "train on the RGB layer" not in widget.status.value
    assert ("grey.safetensors takes" in widget.status.value) == (source == "file")
    assert widget.start_button.enabled and session.model.config.in_channels == 1


def test_a_refused_start_keeps_the_last_runs_loss_curve(viewer, session, annotated, tmp_path, wait_idle):
    widget = docked(viewer, TrainWidget(viewer, session))
    widget.image.value, widget.annotation.value = annotated
    tiny_settings(widget, tmp_path, steps=3)
    widget.start_button.clicked.emit()
    wait_idle(widget)
    assert widget.plot.network.steps == [1, 2, 3]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    widget.model_source.value, widget.model_file.value = "file", bad
    widget.start_button.clicked.emit()  # refused in the worker, where the file is read
    wait_idle(widget)
    assert "not a napari-unet model file" in widget.status.value
    assert widget.plot.network.steps == [1, 2, 3] and not widget.plot.isHidden()  # the curve it was cleared of


def test_corrupt_model_file_is_reported(viewer, session, annotated, tmp_path, wait_idle):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    widget = docked(viewer, TrainWidget(viewer, session))
    widget.image.value, widget.annotation.value = annotated
    tiny_settings(widget, tmp_path)
    widget.model_source.value = "file"
    assert not widget.network.enabled and not widget.depth.enabled  # a model file brings its own network
    widget.start_button.clicked.emit()  # no file chosen yet: asked for one, not "no model file at ."
    wait_idle(widget)
    assert widget.status.value.startswith("⚠ choose a model file") and widget.start_button.enabled
    widget.model_file.value = bad
    widget.start_button.clicked.emit()
    wait_idle(widget)
    assert "not a napari-unet model file" in widget.status.value


def sample_layers(viewer):
    for data, meta, kind in nuclei_2d():
        getattr(viewer, f"add_{kind}")(data, **meta)
    return viewer.layers["nuclei"], viewer.layers["nuclei annotation"]


def test_start_prepares_the_data_in_the_worker_and_the_viewer_never_stalls(viewer, session, tmp_path, qtbot):
    """Issue 18.7: from the Start click on, no event-loop stall reaches 250 ms (2048x2048,
    one annotated corner, a preview of the whole image)."""
    image, truth = synthetic_nuclei((512, 512), seed=3)
    big = np.tile(image, (4, 4))
    annotation = np.full(big.shape, -1, np.int16)
    annotation[:512, :512] = truth
    image_layer = viewer.add_image(big, name="big")
    labels_layer = viewer.add_labels(annotation, name="big annotation")
    widget = docked(viewer, TrainWidget(viewer, session))
    widget.image.value, widget.annotation.value = image_layer, labels_layer
    tiny_settings(widget, tmp_path, steps=100_000)
    widget.preview_image.value = image_layer  # adds the (hidden) preview layer now
    widget.preview_every.value = 2
    warm_up().join()  # the import the widget starts when it opens
    ticks = []
    probe = QTimer()
    probe.setInterval(10)
    probe.timeout.connect(lambda: ticks.append(time.perf_counter()))
    probe.start()
    qtbot.wait(100)
    widget.start_button.clicked.emit()
    qtbot.waitUntil(lambda: "big preview" in viewer.layers and widget.progress.value >= 4, timeout=120_000)
    qtbot.wait(300)
    probe.stop()
    widget.runner.stop()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=60_000)
    gaps = np.diff(ticks)
    assert gaps.max() < 0.25, f"the event loop stalled for {gaps.max() * 1000:.0f} ms"
    assert viewer.layers.selection.active is not viewer.layers["big preview"]  # issue 18.6


@pytest.mark.parametrize("close", ["viewer", "dock"])
def test_closing_napari_or_the_dock_during_training_saves_like_stop(
    make_napari_viewer, session, annotated_in, tmp_path, qtbot, caplog, close
):
    """Issue 18.8: closing stops between steps and writes the model and the checkpoint."""
    viewer = make_napari_viewer()
    widget = docked(viewer, TrainWidget(viewer, session))
    widget.image.value, widget.annotation.value = annotated_in(viewer)
    tiny_settings(widget, tmp_path, steps=100_000)
    widget.start_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.progress.value >= 3, timeout=60_000)
    if close == "viewer":
        viewer.close()
    else:
        viewer.window.remove_dock_widget(widget.native)
    assert not widget.runner.busy
    step = load_state(tmp_path / "model.safetensors.ckpt")["step"]
    assert step >= 3 and load_model(tmp_path / "model.safetensors").metadata["training"]["steps"] == step
    assert not [record for record in caplog.records if record.levelname == "ERROR"]
    # the model stays the session's, as after Stop: Segment offers it (it said "no model yet")
    assert session.path == tmp_path / "model.safetensors" and session.source == f"trained here ({step} steps)"


def test_a_warning_on_the_data_stays_in_view_while_training_runs(viewer, session, nuclei, tmp_path, qtbot):
    """The step line replaced Start's warning within a second, so a new user never
    read it; it stays under the step line until the run ends, and after it."""
    image, labels = nuclei
    cells_alone = np.where(labels > 0, labels, IGNORE_LABEL)  # no cell has background all around it
    cells_alone[:8] = 0  # background enough, away from the cells
    assert not labels[:8].any()
    widget = docked(viewer, TrainWidget(viewer, session))
    widget.image.value = viewer.add_image(image, name="cells")
    widget.annotation.value = viewer.add_labels(cells_alone, name="cells annotation")
    tiny_settings(widget, tmp_path, steps=100_000)
    widget.start_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.progress.value >= 3, timeout=60_000)
    qtbot.wait(700)  # the throttled step line has been redrawn since
    step_line, warning = widget.status.value.split("\n")
    assert step_line.startswith("step ") and warning == f"⚠ {NO_COMPLETE_CELL}"
    widget.stop_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=60_000)
    assert widget.status.value.startswith("stopped at step ") and widget.status.value.endswith(f"⚠ {NO_COMPLETE_CELL}")


@pytest.fixture
def annotated_in(nuclei):
    def add(viewer):
        return viewer.add_image(nuclei[0], name="cells"), viewer.add_labels(nuclei[1], name="cells annotation")

    return add


def test_an_annotation_made_for_the_image_later_is_the_one_trained(viewer, session):
    """A correction round: segment, make a new annotation from the segmentation,
    correct it, Start. Train kept the first annotation chosen, so the corrections
    were silently left out."""
    image, first = sample_layers(viewer)
    unrelated = viewer.add_labels(np.zeros((30, 30), np.int32), name="other grid")
    widget = docked(viewer, TrainWidget(viewer, session))
    assert widget.annotation.value is first
    corrected = created_annotation(viewer, image)
    assert corrected is not first and widget.annotation.value is corrected
    viewer.add_labels(np.zeros(image.data.shape, np.int32), name="plain labels")  # not an annotation: ignored
    widget.annotation.value = first  # the user's own choice afterwards stays
    viewer.layers.remove(unrelated)
    assert widget.annotation.value is first


def test_a_pair_whose_layer_is_deleted_is_no_longer_trained(viewer, session):
    image, annotation = sample_layers(viewer)
    other = viewer.add_image(np.zeros(image.data.shape, np.float32), name="other")
    other_annotation = viewer.add_labels(np.zeros(image.data.shape, np.int32), name="other annotation")
    widget = docked(viewer, TrainWidget(viewer, session))
    widget.image.value, widget.annotation.value = image, annotation
    widget.add_pair.clicked.emit()
    widget.image.value, widget.annotation.value = other, other_annotation
    widget.add_pair.clicked.emit()
    assert len(widget.pairs) == 2
    viewer.layers.remove(other)
    assert widget.pairs == [(image, annotation)] and "other" not in widget.pairs_label.value


def test_train_preselects_the_annotated_image_and_never_overwrites_a_model(
    viewer, session, tmp_path, wait_idle, monkeypatch
):
    """Issue 18.9: the obvious layers are chosen; each run gets a model file of its own."""
    monkeypatch.setattr(training_inputs, "DEFAULT_FOLDER", tmp_path)
    viewer.add_image(np.zeros((30, 30)), name="unrelated")
    image, truth = sample_layers(viewer)
    widget = docked(viewer, TrainWidget(viewer, session))
    assert widget.image.value is image and widget.annotation.value is truth
    first = widget.save_path.value
    assert first == tmp_path / "model.safetensors"
    tiny_settings(widget, tmp_path, steps=2)
    widget.save_path.value = first
    widget.start_button.clicked.emit()
    wait_idle(widget)
    assert first.exists() and widget.save_path.value == tmp_path / "model-2.safetensors"
    before = first.read_bytes()
    widget.start_button.clicked.emit()
    wait_idle(widget)
    assert first.read_bytes() == before and (tmp_path / "model-2.safetensors").exists()


def test_an_unsigned_annotation_whose_maximum_is_the_dtype_maximum_is_warned_about(
    viewer, session, nuclei, tmp_path, wait_idle
):
    """Issue 18.3 in the Train widget: 255 used as 'unannotated' in a uint8 file."""
    labels = np.where(nuclei[1] > 0, nuclei[1] % 200 + 1, 0).astype(np.uint8)
    labels[:, 64:] = 255
    widget = docked(viewer, TrainWidget(viewer, session))
    widget.image.value = viewer.add_image(nuclei[0], name="cells")
    widget.annotation.value = viewer.add_labels(labels, name="from disk")
    tiny_settings(widget, tmp_path, steps=2)
    widget.start_button.clicked.emit()
    assert "the largest uint8 value" in widget.status.value
    wait_idle(widget)
    assert "finished at step 2" in widget.status.value and "the largest uint8 value" in widget.status.value  # kept


def test_a_few_cells_painted_into_napari_s_new_labels_layer_are_warned_about(viewer, session, tmp_path, wait_idle):
    """napari's own "new labels" layer is 0 (background) everywhere: a user who paints
    a few cells into it and trains teaches the network that the other cells are
    background. The widget says so, from the start to the closing status."""
    image, truth = synthetic_nuclei((256, 256), seed=3)
    viewer.add_image(image, name="cells")
    viewer._new_labels()  # the layer list's "new labels" button
    painted = viewer.layers["cells - Labels"]
    chosen = np.isin(truth, np.unique(truth[truth > 0])[:2])
    painted.data[chosen] = truth[chosen]
    widget = docked(viewer, TrainWidget(viewer, session))
    widget.image.value, widget.annotation.value = viewer.layers["cells"], painted
    tiny_settings(widget, tmp_path, steps=2)
    widget.start_button.clicked.emit()
    wait_idle(widget)
    assert "finished at step 2" in widget.status.value
    assert "annotation 'cells - Labels': " in widget.status.value
    assert "as the 2 painted cells" in widget.status.value
    assert "napari's 'new labels' layer starts at 0 everywhere" in widget.status.value


def test_helper_layers_are_not_offered_as_annotations_and_threads_can_be_set(
    viewer, session, annotated, tmp_path, wait_idle
):
    """Issues 18.6 and 18.10: helper layers stay out of the choices; the CPU thread setting is used."""
    assert annotated  # the image and its annotation
    role = "napari_unet"  # where the plugin's layers say what they are
    viewer.add_labels(np.zeros((128, 128), np.uint8), name="cells annotation touching", metadata={role: "touching"})
    viewer.add_labels(np.zeros((128, 128), np.uint16), name="cells labels", metadata={role: "segmentation"})
    viewer.add_image(np.zeros((128, 128), np.float32), name="cells annotation weights", metadata={role: "weights"})
    widget = docked(viewer, TrainWidget(viewer, session))
    assert [layer.name for layer in widget.annotation.choices if layer] == ["cells annotation"]
    assert [layer.name for layer in widget.image.choices if layer] == ["cells"]
    tiny_settings(widget, tmp_path, steps=3)
    widget.threads.value = 1
    widget.start_button.clicked.emit()
    wait_idle(widget)
    assert widget.trainer.step == 3
    assert "with 1 CPU thread(s)" in widget._started_message


def test_on_a_laptop_screen_the_settings_scroll_and_start_stays_in_view(viewer, session, annotated, qtbot):
    """Issue 11: a 1366x768 screen leaves a right-hand dock about 630 px; all the
    settings (916 px folded, more with the advanced ones open) scroll above Start."""
    assert annotated
    widget = docked(viewer, TrainWidget(viewer, session))
    widget.show_advanced.value = True
    area = widget.settings_area
    assert widget.native.minimumSizeHint().height() < 450
    assert area.isAncestorOf(widget.advanced.native) and area.isAncestorOf(widget.image.native)
    for control in (widget.start_button, widget.stop_button, widget.progress, widget.status):
        assert not area.isAncestorOf(control.native)
    window = viewer.window._qt_window
    window.show()  # hidden widgets keep a default geometry: lay them out as on a screen
    window.resize(1366, 630)
    qtbot.waitUntil(lambda: area.verticalScrollBar().maximum() > 0)  # the settings scroll...
    start = widget.start_button.native
    bottom = start.mapTo(window, start.rect().bottomLeft()).y()
    assert 0 < bottom < window.height()  # ...and Start is inside the window


def test_the_warm_up_import_never_raises_in_its_thread(monkeypatch):
    """napari closed during the background import of torch._dynamo ended that thread
    with a traceback; the warm-up is only ahead-of-time work, so it keeps quiet."""

    def failing(name):
        raise RuntimeError(f"interpreter shutting down while importing {name}")

    monkeypatch.setattr(warm_up_module.importlib, "import_module", failing)
    assert warm_up_module._import_quietly("torch._dynamo") is None


def test_an_annotation_lying_elsewhere_than_its_image_is_warned_about(viewer, nuclei):
    """An image rescaled after its annotation was made trained without a word, though
    the annotation visibly lay beside the cells."""
    image = viewer.add_image(nuclei[0], name="cells", scale=(0.5, 0.5), translate=(10, 20))
    labels = viewer.add_labels(nuclei[1], name="cells annotation")
    (warning,) = training_inputs.training_inputs([(image, labels)], None, None).warnings
    assert "annotation 'cells annotation' lies elsewhere in the viewer than image 'cells'" in warning
    assert "scale and translate differ" in warning
    labels.scale, labels.translate = image.scale, image.translate
    assert training_inputs.training_inputs([(image, labels)], None, None).warnings == []


def test_a_run_that_fails_midway_says_where_its_model_went(
    viewer, session, annotated, tmp_path, wait_idle, monkeypatch
):
    """A loss that became NaN at step 3 was reported alone; the model of step 2 had
    been saved and the session's model had changed without a word."""
    from napari_unet.core import train_step

    calls, plain_loss = [], train_step.weighted_cross_entropy

    def nan_from_the_third_step(logits, *args):
        calls.append(1)
        loss = plain_loss(logits, *args)
        return loss * float("nan") if len(calls) >= 3 else loss

    monkeypatch.setattr(train_step, "weighted_cross_entropy", nan_from_the_third_step)
    widget = docked(viewer, TrainWidget(viewer, session))
    widget.image.value, widget.annotation.value = annotated
    tiny_settings(widget, tmp_path)
    widget.start_button.clicked.emit()
    wait_idle(widget)
    saved = tmp_path / "model.safetensors"
    assert widget.status.value == (
        f"⚠ {widget.status.value[2:].splitlines()[0]}\nthe model of step 2 was saved to {saved} and kept in the session"
    )
    assert widget.status.value.startswith("⚠ the loss became nan at step 3: lower the learning rate")
    assert session.model is widget.trainer.model and load_model(saved).metadata["training"]["steps"] == 2
    assert widget.save_path.value == tmp_path / "model-2.safetensors" and widget.start_button.enabled


def test_the_tile_sizes_stay_in_order_when_the_depth_changes(viewer, session):
    """After depth 3 -> 2 the list read auto, 100, 108, ..., 1276, 44, 48, ...: the
    smaller sizes hidden at the end."""
    widget = docked(viewer, TrainWidget(viewer, session))
    widget.depth.value = 2
    sizes = [size for size in widget.tile.choices if size is not None]
    assert sizes == sorted(sizes) and sizes[0] < 100 and widget.tile.value is None


def test_the_numbers_of_a_short_loss_axis_do_not_overlap(qtbot):
    """In a loss plot 70 px tall, the loss axis numbered 1.0, 0.8, 0.6, 0.4 and 0.2
    one over another (a new user's screenshot)."""
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(330, 70)
    plot.show()
    for step in range(1, 21):
        plot.record(step, 1.0 - 0.04 * step)
    plot.redraw()
    qtbot.wait(50)
    box = plot.getViewBox()
    low, high = box.viewRange()[1]
    ticks = [value for _, values in plot.getAxis("left").tickValues(low, high, box.height()) for value in values]
    assert len(ticks) >= 2
    pixels_apart = np.diff(sorted(ticks)) * box.height() / (high - low)
    assert pixels_apart.min() >= MIN_LABEL_SPACING_PX
