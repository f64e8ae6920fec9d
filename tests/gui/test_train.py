import time

import numpy as np
import pytest
import torch
from qtpy.QtCore import QTimer

from napari_unet import load_model
from napari_unet._widgets import TrainWidget
from napari_unet.core.checkpoint import load_state

from .conftest import docked


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
    widget.image.value, widget.labels.value = annotated
    widget.val_image.value, widget.val_labels.value = annotated
    widget.preview_image.value = annotated[0]
    widget.preview_every.value = 3
    tiny_settings(widget, tmp_path)
    widget.start_button.clicked.emit()
    assert widget.runner.busy and not widget.start_button.enabled
    wait_idle(widget)
    assert session.model is widget.trainer.model and widget.trainer.step == 6
    assert widget.progress.value == 6 and widget.start_button.enabled
    assert len(widget.plot.steps) == 6
    assert "validation at step" in widget.validation_label.value
    assert "cells preview" in viewer.layers and viewer.layers["cells preview"].data.shape == (128, 128)
    saved = load_model(tmp_path / "model.safetensors")
    assert saved.metadata["training"]["steps"] == 6
    assert "model saved" in widget.status.value


def test_stop_keeps_a_checkpoint_and_the_model(viewer, session, annotated, tmp_path, wait_idle, qtbot):
    widget = docked(viewer, TrainWidget(viewer, session))
    widget.image.value, widget.labels.value = annotated
    tiny_settings(widget, tmp_path, steps=100_000)
    widget.start_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.progress.value >= 2, timeout=60_000)
    widget.stop_button.clicked.emit()
    wait_idle(widget)
    step = widget.trainer.step
    assert 2 <= step < 100_000
    assert load_state(tmp_path / "model.safetensors.ckpt")["step"] == step
    assert load_model(tmp_path / "model.safetensors").metadata["training"]["steps"] == step
    assert session.model is widget.trainer.model and "stopped" in widget.status.value


@pytest.mark.slow
def test_napari_stays_responsive_while_training(viewer, session, annotated, tmp_path, wait_idle, qtbot):
    widget = docked(viewer, TrainWidget(viewer, session))
    widget.image.value, widget.labels.value = annotated
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
        (lambda w, img, lab: setattr(w.image, "value", img), "choose a labels layer"),
        (
            lambda w, img, lab: (setattr(w.image, "value", img), setattr(w.labels, "value", lab)),
            "annotations are empty",
        ),
    ],
)
def test_bad_input_is_reported_not_raised(viewer, session, tmp_path, setup, message):
    image = viewer.add_image(np.zeros((64, 64)), name="img")
    empty = viewer.add_labels(np.full((64, 64), -1, np.int32), name="empty")
    widget = docked(viewer, TrainWidget(viewer, session))
    widget.image.value = widget.labels.value = None
    tiny_settings(widget, tmp_path)
    setup(widget, image, empty)
    widget.start_button.clicked.emit()
    assert not widget.runner.busy
    assert message in widget.status.value


def test_corrupt_model_file_is_reported(viewer, session, annotated, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    widget = docked(viewer, TrainWidget(viewer, session))
    widget.image.value, widget.labels.value = annotated
    tiny_settings(widget, tmp_path)
    widget.model_source.value = "file"
    widget.model_file.value = bad
    widget.start_button.clicked.emit()
    assert not widget.runner.busy and "not a napari-unet model file" in widget.status.value
