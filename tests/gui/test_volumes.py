"""Volumes in napari: annotate two planes of a stack, train a 3D U-Net, segment into one 3D labels layer."""

import dask.array as da
import numpy as np
import torch

from napari_unet import load_model
from napari_unet._widgets import SegmentWidget, TrainWidget
from napari_unet.core.checkpoint import load_state
from napari_unet.core.config import IGNORE_LABEL
from napari_unet.core.train_events import WarmStartProgress

from .conftest import docked


def ellipsoid_stack(shape=(16, 48, 48)):
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    labels = np.zeros(shape, np.int32)
    for index, (cz, cy, cx) in enumerate([(6, 14, 14), (9, 30, 32), (8, 14, 34)], start=1):
        labels[((zz - cz) / 4) ** 2 + ((yy - cy) / 9) ** 2 + ((xx - cx) / 9) ** 2 <= 1] = index
    image = (labels > 0) * 200.0 + np.random.default_rng(0).normal(20, 10, shape)
    return image.astype(np.float32), labels


def test_two_annotated_planes_train_a_3d_unet_that_segments_the_stack(viewer, session, tmp_path, wait_idle):
    torch.manual_seed(0)
    stack, truth = ellipsoid_stack()
    image = viewer.add_image(stack, name="stack", scale=(2.0, 1.0, 1.0))
    annotation = np.full(truth.shape, IGNORE_LABEL, np.int32)  # the layer starts unannotated
    for plane in (6, 9):  # paint two planes
        annotation[plane] = truth[plane]
    labels = viewer.add_labels(annotation, name="stack annotation", scale=(2.0, 1.0, 1.0))

    train = docked(viewer, TrainWidget(viewer, session))
    train.image.value, train.annotation.value = image, labels
    assert train.network.value == "3D"  # suggested for a volume (test_the_network_suggested_for_a_stack...)
    assert train.spacing() == (2.0, 1.0, 1.0)  # from the layer's scale
    train.base_channels.value, train.depth.value = 2, 2
    train.batch_size.value, train.steps.value = 1, 3
    train.warm_start.value = 2  # the 2D twin's steps before the 3D ones
    train.device.value, train.precision.value = "cpu", "fp32"
    train.save_path.value = tmp_path / "model3d.safetensors"
    train.start_button.clicked.emit()
    wait_idle(train)
    model = session.model
    assert model is not None and train.trainer.step == 3, train.status.value
    assert train.trainer.warm_seconds > 0  # the warm start ran
    assert "at step 3 (after 2 steps of its 2D twin)" in train.status.value
    plot = train.plot  # the twin's losses first, then the 3D steps after them on one axis
    assert plot.twin.steps == [1, 2] and plot.network.steps == [1, 2, 3]
    assert list(plot.network.raw.getData()[0]) == [3, 4, 5] and "2D twin" in plot.toolTip()
    assert model.config.ndim == 3 and model.config.spacing == (2.0, 1.0, 1.0)
    assert model.plan[0].kernel == (1, 3, 3)  # z twice as coarse: in-plane kernels at the first level
    assert not train.status.value.startswith("⚠")

    renamed = np.where(truth[7] > 0, truth[7] + 10, 0)  # plane 7 painted with "new cell" for each nucleus
    labels.data[7] = renamed
    labels.refresh()
    train.model_source.value = "new"
    train.save_path.value = tmp_path / "renamed.safetensors"
    train.start_button.clicked.emit()
    wait_idle(train)
    assert "on plane 6 and cell 11 on plane 7 cover the same place" in train.status.value

    segment = docked(viewer, SegmentWidget(viewer, session))
    assert "(3D U-Net, base 2, depth 2, 1 channel(s)" in segment.model_info.value
    assert segment.min_size.label == "smallest object (voxels)"  # a 3D model's sizes are voxel counts
    viewer.add_image(np.zeros((8, 8), np.float32), name="another layer")  # napari resets the choices
    assert segment.tile.choices == (None,)  # "auto" alone for a 3D model
    assert train.tile.choices == (None,)  # and for the 3D network chosen in Train
    segment.image.value = viewer.add_image(stack[6], name="plane 6")
    segment.run_button.clicked.emit()  # refused at once, before any layer or worker
    assert "3D U-Net and plane 6 is one plane: choose a stack or a 2D model" in segment.status.value
    assert not segment.runner.busy and "plane 6 labels" not in viewer.layers
    segment.image.value = image
    segment.device.value, segment.precision.value = "cpu", "fp32"
    segment.probabilities.value = True
    segment.run_button.clicked.emit()
    wait_idle(segment)
    result = viewer.layers["stack labels"]
    assert result.data.shape == stack.shape and np.issubdtype(result.data.dtype, np.integer), segment.status.value
    assert tuple(result.scale) == (2.0, 1.0, 1.0)
    assert viewer.layers["stack probability"].data.shape == stack.shape
    assert segment.progress.value == segment.progress.max > 0
    assert "stretched or squashed" not in segment.status.value  # the voxels the model was made for
    segment.probabilities.value = False
    segment.image.value = viewer.add_image(stack, name="unscaled")  # napari's default scale: nothing recorded
    segment.run_button.clicked.emit()
    wait_idle(segment)
    assert "stretched or squashed" not in segment.status.value  # (the file the model was trained on, maybe)
    segment.image.value = viewer.add_image(stack, name="cubes", scale=(0.5, 0.5, 0.5))  # voxels half as deep
    segment.run_button.clicked.emit()
    wait_idle(segment)
    note = "the scale of cubes gives voxels of (0.5, 0.5, 0.5) (z, y, x), the model was made for voxels shaped (2.0,"
    assert note in segment.status.value and "stretched or squashed along z" in segment.status.value


def test_stop_in_the_warm_start_keeps_the_twins_weights_and_a_checkpoint(viewer, session, tmp_path, wait_idle):
    """Stop pressed while the 2D twin trained closed the run's generator: the twin's
    weights were dropped, no checkpoint was written, and the model saved (and made the
    session's) was the 3D network as initialised."""
    torch.manual_seed(0)
    stack, truth = ellipsoid_stack()
    image = viewer.add_image(stack, name="stack")  # cubic voxels: 3x3x3 kernels from the first level on
    annotation = np.full(truth.shape, IGNORE_LABEL, np.int32)
    annotation[6], annotation[9] = truth[6], truth[9]
    labels = viewer.add_labels(annotation, name="stack annotation")
    train = docked(viewer, TrainWidget(viewer, session))
    train.image.value, train.annotation.value = image, labels
    train.network.value = "3D"
    train.base_channels.value, train.depth.value = 2, 2
    train.batch_size.value, train.steps.value, train.minutes.value = 1, 5, 0
    train.warm_start.value = 100_000  # until Stop
    train.device.value, train.precision.value = "cpu", "fp32"
    train.save_path.value = save = tmp_path / "stopped.safetensors"
    train.start_button.clicked.emit()
    twin_steps = []

    def stop_in_the_warm_start(event):
        if isinstance(event, WarmStartProgress):
            twin_steps.append(event.step)
            if len(twin_steps) == 3:
                train.stop()

    train.runner.worker.yielded.connect(stop_in_the_warm_start)
    wait_idle(train)
    assert "stopped at step 0 (after" in train.status.value, train.status.value
    assert 3 <= len(twin_steps) < 100_000
    first = session.model.get_submodule(session.model.plan[0].module).weight.detach()
    assert first.shape[2] == 3 and first[:, :, 1].abs().sum() > 0
    assert first[:, :, 0].abs().sum() == 0 and first[:, :, 2].abs().sum() == 0  # the inflated twin's kernels
    assert torch.equal(load_model(save).state_dict()[f"{session.model.plan[0].module}.weight"], first)
    state = load_state(save.with_name(save.name + ".ckpt"))
    assert state["step"] == 0 and state["warm_seconds"] == 0  # resumed, it does the stopped warm start again
    assert torch.equal(state["model"]["weights"][f"{session.model.plan[0].module}.weight"], first)  # the twin's, kept


def test_the_network_suggested_for_a_stack_follows_its_depth_and_the_device(viewer, session, monkeypatch):
    """The built-in stack sample (3 unrelated planes) is no volume; a deep stack is,
    and gets a 3D network, which on a CPU trains for a limited time, with a line
    saying so. The Segment widget labels a volume as a volume, other stacks plane by
    plane."""
    from napari_unet._sample_data import nuclei_stack
    from napari_unet._widgets import train_settings as settings_module
    from napari_unet._widgets.segment import ALL_PLANES, AS_VOLUME
    from napari_unet.core.train_config import CPU_3D_MINUTES

    (image, _, _), _ = nuclei_stack()
    short = viewer.add_image(image, name="short stack")
    deep = viewer.add_image(np.zeros((24, 64, 64), np.float32), name="deep stack")
    train = docked(viewer, TrainWidget(viewer, session))
    monkeypatch.setattr(settings_module, "resolve_device", lambda device: torch.device("cpu"))
    train.image.value = short
    assert train.network.value == "2D" and train.minutes.value == 0
    train.image.value = deep
    assert train.network.value == "3D" and "a 3D network suggested" in train.status.value
    assert train.minutes.value == CPU_3D_MINUTES and train.config().minutes == CPU_3D_MINUTES
    train.network.value = "2D"  # the user's answer to the suggestion
    assert "a 3D network suggested" not in train.status.value and train.minutes.value == 0
    monkeypatch.setattr(settings_module, "resolve_device", lambda device: torch.device("cuda"))
    train.image.value = short
    assert train.network.value == "2D"
    train.image.value = deep
    assert train.network.value == "3D" and train.minutes.value == 0  # a GPU trains until its steps
    train.model_source.value = "session model"  # the image changes while a model is trained further
    train.image.value = short
    train.model_source.value = "new"  # the suggestion follows the image chosen now
    assert train.network.value == "2D"

    segment = docked(viewer, SegmentWidget(viewer, session))
    segment.image.value = deep
    assert segment.planes.value == AS_VOLUME
    segment.image.value = short
    assert segment.planes.value == ALL_PLANES
    huge = viewer.add_image(da.zeros((30, 4096, 4096), np.uint16, chunks=(1, 1024, 1024)), name="huge stack")
    segment.image.value = huge  # a volume, but one that streams plane by plane into a zarr store
    assert segment.planes.value == ALL_PLANES and not segment.planes.native.isHidden()
    segment.image.value = viewer.add_image(np.zeros((64, 64, 3), np.uint8), rgb=True, name="rgb picture")
    assert segment.planes.native.isHidden()  # no stack: nothing to choose
    segment.image.value = short
    assert not segment.planes.native.isHidden()
