import numpy as np
import pytest
import torch

from napari_unet import UNet, save_model
from napari_unet._widgets import SegmentWidget

from .conftest import docked


def bright_is_foreground():
    """A tiny model whose foreground probability rises with brightness."""
    torch.manual_seed(0)
    model = UNet(base_channels=2, depth=2).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                module.weight.abs_()
        model.head.weight.zero_()
        model.head.weight[1] = 1.0
        model.head.bias.copy_(torch.tensor([2.0, 0.0]))  # background unless bright
    return model


@pytest.fixture
def model_session(session):
    session.set_model(bright_is_foreground(), "test model")
    return session


def test_segment_adds_labels_on_the_image_grid_and_replaces_on_rerun(viewer, model_session, nuclei, wait_idle):
    image = viewer.add_image(nuclei[0], name="cells", scale=(2, 2), translate=(5, 5))
    widget = docked(viewer, SegmentWidget(viewer, model_session))
    widget.image.value = image
    widget.probabilities.value = True
    widget.run_button.clicked.emit()
    wait_idle(widget)
    labels = viewer.layers["cells labels"]
    assert labels.data.shape == (128, 128) and labels.data.dtype == np.uint16  # drawn without conversion
    assert tuple(labels.scale) == (2, 2) and tuple(labels.translate) == (5, 5)
    assert "cells probability" in viewer.layers
    assert widget.progress.value == widget.progress.max > 0
    n_layers = len(viewer.layers)
    widget.run_button.clicked.emit()
    wait_idle(widget)
    assert len(viewer.layers) == n_layers  # replaced, not piled up


def test_current_plane_of_a_stack(viewer, model_session, wait_idle):
    stack = np.random.default_rng(0).random((3, 50, 60)).astype(np.float32)
    image = viewer.add_image(stack, name="stack")
    viewer.dims.set_current_step(0, 1)
    widget = docked(viewer, SegmentWidget(viewer, model_session))
    widget.image.value = image
    widget.planes.value = "current plane"
    widget.run_button.clicked.emit()
    wait_idle(widget)
    labels = viewer.layers["stack labels"].data
    assert labels.shape == (3, 50, 60)
    assert labels[0].max() == 0 and labels[2].max() == 0  # only plane 1 was segmented
    widget.planes.value = "all planes"
    widget.run_button.clicked.emit()
    wait_idle(widget)
    assert viewer.layers["stack labels"].data.shape == (3, 50, 60)


def test_model_from_file_and_cancel(viewer, session, tmp_path, wait_idle, qtbot):
    path = tmp_path / "m.safetensors"
    save_model(bright_is_foreground(), path)
    image = viewer.add_image(np.random.default_rng(0).random((8, 300, 300)).astype(np.float32), name="big")
    widget = docked(viewer, SegmentWidget(viewer, session))
    widget.image.value = image
    widget.model_source.value = "file"
    widget.model_file.value = path
    widget.tile.value = 60
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.progress.value >= 1, timeout=60_000)
    widget.cancel_button.clicked.emit()
    wait_idle(widget)
    assert widget.status.value == "cancelled" and "big labels" not in viewer.layers


def test_bad_input_is_reported(viewer, session, tmp_path):
    widget = docked(viewer, SegmentWidget(viewer, session))
    widget.run_button.clicked.emit()
    assert "choose an image layer" in widget.status.value
    widget.image.value = viewer.add_image(np.zeros((20, 20)), name="img")
    widget.run_button.clicked.emit()
    assert "no model in this session" in widget.status.value
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 100)
    widget.model_source.value = "file"
    widget.model_file.value = corrupt
    widget.run_button.clicked.emit()
    assert "corrupt.safetensors" in widget.status.value and not widget.runner.busy


def test_worker_errors_become_notifications(viewer, model_session, wait_idle):
    rgb = viewer.add_image(np.zeros((30, 30, 3), np.uint8), name="rgb", rgb=True)
    widget = docked(viewer, SegmentWidget(viewer, model_session))
    widget.image.value = rgb
    widget.run_button.clicked.emit()
    wait_idle(widget)
    assert "expects 1 channel" in widget.status.value
    assert widget.run_button.enabled
