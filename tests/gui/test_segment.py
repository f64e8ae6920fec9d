import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from napari_unet import UNet, save_model, segment
from napari_unet._widgets import SegmentWidget
from napari_unet._widgets._jobs import PlaneOfStack
from napari_unet._widgets.export import ModelExport
from napari_unet.cli import main
from napari_unet.core.config import InstanceConfig

from ..core.lazy import bright_is_foreground, drawn_image, joined_discs, same_partition, threshold_model
from .conftest import docked, paint_discs


@pytest.fixture
def model_session(session):
    session.set_model(bright_is_foreground(), "test model")
    return session


def wait_read(widget, qtbot):
    """Wait until the widget has read its chosen model file (in a worker)."""
    qtbot.waitUntil(lambda: not widget.model_info.value.startswith("reading"), timeout=30_000)


def segment_planes(widget, planes, wait_idle):
    """Segment the widget's image with the "stacks" choice ``planes`` and wait."""
    widget.planes.value = planes
    widget.run_button.clicked.emit()
    wait_idle(widget)


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


def test_the_labels_of_a_rotated_image_lie_on_it(viewer, model_session, nuclei, wait_idle):
    image = viewer.add_image(nuclei[0], name="cells", rotate=30, translate=(40, 10))
    widget = docked(viewer, SegmentWidget(viewer, model_session))
    widget.image.value = image
    widget.run_button.clicked.emit()
    wait_idle(widget)
    labels = viewer.layers["cells labels"]
    np.testing.assert_allclose(labels.data_to_world((30, 40)), image.data_to_world((30, 40)), atol=1e-9)


def test_labels_follow_the_image_when_its_scale_is_corrected_and_it_is_segmented_again(
    viewer, model_session, nuclei, wait_idle
):
    """The labels layer was reused with its old scale and translation: after a user
    corrected the image's pixel size and segmented again, the labels lay beside it."""
    image = viewer.add_image(np.stack([nuclei[0]] * 2), name="cells")
    widget = docked(viewer, SegmentWidget(viewer, model_session))
    widget.image.value = image
    for planes in ("all planes", "current plane"):
        widget.planes.value = planes
        widget.run_button.clicked.emit()
        wait_idle(widget)
        image.scale, image.translate = (3, 0.5, 0.5), (0, 10, 20)
        widget.run_button.clicked.emit()
        wait_idle(widget)
        labels = viewer.layers["cells labels"]
        np.testing.assert_allclose(labels.data_to_world((1, 30, 40)), image.data_to_world((1, 30, 40)), atol=1e-9)
        image.scale, image.translate = (1, 1, 1), (0, 0, 0)


def test_an_image_removed_while_it_is_segmented_gets_no_labels(viewer, model_session, nuclei, wait_idle):
    """Its labels were added all the same, over nothing, as if nothing had happened."""
    image = viewer.add_image(nuclei[0], name="cells")
    widget = docked(viewer, SegmentWidget(viewer, model_session))
    widget.image.value = image
    widget.run_button.clicked.emit()
    viewer.layers.remove(image)
    wait_idle(widget)
    assert [layer.name for layer in viewer.layers] == []
    assert widget.status.value.startswith("'cells' was removed while it was segmented: its labels (")


def test_test_time_augmentation_runs_the_eight_symmetries(viewer, model_session, nuclei, wait_idle):
    image = viewer.add_image(nuclei[0][:60, :90], name="cells")
    widget = docked(viewer, SegmentWidget(viewer, model_session))
    widget.image.value = image
    widget.run_button.clicked.emit()
    wait_idle(widget)
    plain_tiles = widget.progress.max
    widget.tta.value = True
    widget.run_button.clicked.emit()
    wait_idle(widget)
    assert widget.progress.value == widget.progress.max == 8 * plain_tiles


def evenly_bright_clump():
    """Two overlapping discs drawn evenly bright (no dip between them) and a model
    that splits them by shape."""
    grid = np.indices((64, 80))
    mask = ((grid[0] - 32) ** 2 + (grid[1] - 26) ** 2 <= 225) | ((grid[0] - 32) ** 2 + (grid[1] - 54) ** 2 <= 225)
    model = threshold_model()
    model.spec = replace(model.spec, instances=InstanceConfig(min_fill=0.95, neck=2.0, min_piece=200))
    return drawn_image(mask), model


@pytest.mark.parametrize("parted_by", ["probability dip", "shape"])
def test_split_touching_cells_can_be_turned_off(viewer, session, wait_idle, parted_by):
    """Two touching discs, parted by the dip of probability between them or by the
    model's split by shape while the box is ticked, and only then."""
    data, model = (joined_discs(), threshold_model(steepness=8.0)) if parted_by != "shape" else evenly_bright_clump()
    session.set_model(model, "threshold model")
    image = viewer.add_image(data, name="discs")
    widget = docked(viewer, SegmentWidget(viewer, session))
    widget.image.value = image
    counts = []
    for split in (True, False):
        widget.split.value = split
        widget.run_button.clicked.emit()
        wait_idle(widget)
        counts.append(int(viewer.layers["discs labels"].data.max()))
    assert counts == [2, 1]
    assert viewer.layers.selection.active is image  # the user's selection stays


def test_cells_at_another_magnification_are_noted_and_rescale_fits_them(viewer, session, wait_idle):
    """A model that learned cells of about 1000 px meets cells of 253 px: the status
    says so with the factor to try, and segmenting with it gives labels on the
    layer's own grid, without the note."""
    model = threshold_model()
    model.spec = replace(model.spec, instances=replace(model.spec.instances, object_size=1000, split=0.0))
    session.set_model(model, "learned 1000 px cells")
    truth = paint_discs((96, 96), [(24, 24), (24, 70), (70, 24), (70, 70), (48, 48)], 9)
    widget = docked(viewer, SegmentWidget(viewer, session))
    widget.image.value = viewer.add_image(drawn_image(truth > 0), name="cells")
    widget.run_button.clicked.emit()
    wait_idle(widget)
    assert "\n⚠ the objects found are 4.0x smaller than those the model learned" in widget.status.value
    assert "segment it again with rescale 2 " in widget.status.value
    widget.rescale.value = 2.0
    widget.run_button.clicked.emit()
    wait_idle(widget)
    assert widget.status.value == "cells labels: 5 objects"
    labels = viewer.layers["cells labels"].data
    assert labels.shape == truth.shape and np.mean((labels > 0) == (truth > 0)) > 0.99


def test_the_smallest_object_follows_the_model_and_can_be_changed(viewer, session, wait_idle):
    """A disc of 709 px and one of 49 px: the spin box shows the chosen model's
    minimum size, and what it says is what segmenting drops."""
    grid = np.indices((64, 96))
    mask = ((grid[0] - 32) ** 2 + (grid[1] - 30) ** 2 <= 225) | ((grid[0] - 32) ** 2 + (grid[1] - 70) ** 2 <= 16)
    image = viewer.add_image(drawn_image(mask), name="discs")
    widget = docked(viewer, SegmentWidget(viewer, session))
    model = threshold_model()
    model.spec = replace(model.spec, instances=replace(model.spec.instances, min_size=60))
    session.set_model(model, "fitted model")
    assert widget.min_size.value == 60
    widget.image.value = image
    counts = []
    for min_size in (60, 40):
        widget.min_size.value = min_size
        widget.run_button.clicked.emit()
        wait_idle(widget)
        counts.append(int(viewer.layers["discs labels"].data.max()))
    assert counts == [1, 2]
    assert model.spec.instances.min_size == 60  # the model itself is left as it was


def test_current_plane_of_a_stack(viewer, model_session, wait_idle):
    stack = np.random.default_rng(0).random((3, 50, 60)).astype(np.float32)
    image = viewer.add_image(stack, name="stack")
    viewer.dims.set_current_step(0, 1)
    widget = docked(viewer, SegmentWidget(viewer, model_session))
    widget.image.value = image
    segment_planes(widget, "current plane", wait_idle)
    labels = viewer.layers["stack labels"].data
    assert labels.shape == (3, 50, 60)
    assert labels[0].max() == 0 and labels[2].max() == 0  # only plane 1 was segmented
    assert "⚠" not in widget.status.value  # no other plane held labels
    alone = np.array(labels[1])
    segment_planes(widget, "all planes", wait_idle)
    assert viewer.layers["stack labels"].data.shape == (3, 50, 60)
    shown = viewer.layers["stack labels"].data
    other_planes = shown[[0, 2]].copy()
    segment_planes(widget, "current plane", wait_idle)  # into a layer whose other planes hold objects
    labels = viewer.layers["stack labels"].data
    assert labels is shown  # written in place: the stack is neither copied nor sent to napari again
    assert np.array_equal(labels[[0, 2]], other_planes)
    others = set(np.unique(other_planes)) - {0}
    assert others and not others & set(np.unique(labels[1]))  # an id never names two objects
    assert same_partition(labels[1], alone)
    found, note = widget.status.value.split("\n⚠ ")
    count = len(set(np.unique(alone)) - {0})
    assert found == f"stack labels: {count} object{'' if count == 1 else 's'}"  # of the plane
    kept = sum(bool(plane.any()) for plane in other_planes)
    assert note.startswith(f"only plane 1 was segmented: {kept} other plane")  # the user hears of the mix


def test_a_plane_whose_ids_outgrow_the_stacks_type_comes_back_as_the_whole_stack():
    stack = np.zeros((3, 4, 5), np.uint16)
    stack[0, 0, 0], stack[1, 1, 1], stack[2, 2, 2] = 65530, 9, 7  # plane 1 is segmented again
    plane = np.zeros((4, 5), np.int32)
    plane[0, :2], plane[3, 4] = 1, 6
    fits = PlaneOfStack(stack, (1,)).numbered_after_the_others(np.where(plane > 1, 0, plane))
    assert fits.dtype == np.uint16 and fits.shape == (4, 5) and set(np.unique(fits)) == {0, 65531}
    whole = PlaneOfStack(stack, (1,)).numbered_after_the_others(plane)
    assert whole.dtype == np.int32 and whole.shape == (3, 4, 5)
    assert np.array_equal(whole[[0, 2]], stack[[0, 2]]) and set(np.unique(whole[1])) == {0, 65531, 65536}


def test_a_two_channel_layer_is_one_image_to_a_two_channel_model(viewer, model_session, wait_idle):
    two_channels = viewer.add_image(np.random.default_rng(0).random((2, 40, 50)).astype(np.float32), name="2ch")
    widget = docked(viewer, SegmentWidget(viewer, model_session))
    widget.image.value = two_channels
    assert not widget.planes.native.isHidden()  # to a 1-channel model it is a stack of two planes
    model_session.set_model(UNet(in_channels=2, base_channels=2, depth=2).eval(), "2-channel model")
    assert widget.planes.native.isHidden()  # no stack: nothing to choose
    segment_planes(widget, "current plane", wait_idle)  # a choice left from before does not slice the channels
    assert viewer.layers["2ch labels"].data.shape == (40, 50), widget.status.value


def test_a_layer_with_a_trailing_axis_of_one_gets_labels_of_its_own_shape(viewer, model_session, nuclei, wait_idle):
    """(H, W, 1): one channel to the core, and labels (H, W, 1) that napari lines up with the layer."""
    layer = viewer.add_image(nuclei[0][..., None], name="one channel last")
    widget = docked(viewer, SegmentWidget(viewer, model_session))
    widget.image.value = layer
    assert widget.planes.native.isHidden()  # no stack of 128 planes one pixel wide
    widget.probabilities.value = True
    widget.run_button.clicked.emit()
    wait_idle(widget)
    labels = viewer.layers["one channel last labels"].data
    assert labels.shape == (*nuclei[0].shape, 1), widget.status.value
    assert viewer.layers["one channel last probability"].data.shape == labels.shape
    np.testing.assert_array_equal(labels[..., 0] > 0, segment(model_session.model, nuclei[0]) > 0)


def test_nan_pixels_are_reported_beside_the_result(viewer, model_session, nuclei, wait_idle):
    """The core sets NaN pixels to 0 and logs it: the widget says it too."""
    image = nuclei[0].astype(np.float32)
    image[:4, :4] = np.nan
    widget = docked(viewer, SegmentWidget(viewer, model_session))
    widget.image.value = viewer.add_image(image, name="dead pixels")
    widget.run_button.clicked.emit()
    wait_idle(widget)
    assert widget.status.value.startswith("dead pixels labels: ")
    assert "\n⚠ 16 pixel value(s) are NaN or infinite" in widget.status.value


def test_the_users_smallest_object_and_tile_hold_on_the_first_run(viewer, model_session, nuclei, wait_idle):
    """Segment adds its result layers at the click; napari then resets the docks'
    choices, which used to put back the model's smallest object and tile before they were read."""
    layer = viewer.add_image(nuclei[0], name="cells")
    widget = docked(viewer, SegmentWidget(viewer, model_session))
    widget.image.value = layer
    widget.min_size.value = widget.min_size.max  # larger than any nucleus: nothing is kept
    widget.tile.value = widget.tile.choices[-1]
    chosen = (widget.min_size.value, widget.tile.value)
    widget.run_button.clicked.emit()
    wait_idle(widget)
    assert (widget.min_size.value, widget.tile.value) == chosen
    assert viewer.layers["cells labels"].data.max() == 0, widget.status.value


def test_layers_of_the_users_with_the_result_names_are_left_alone(viewer, model_session, nuclei, wait_idle):
    """The user's ground truth called "cells labels" was overwritten by the prediction,
    and a layer called "cells probability" deleted."""
    layer = viewer.add_image(nuclei[0], name="cells")
    truth = viewer.add_labels(nuclei[1].astype(np.uint16), name="cells labels")
    kept = truth.data.copy()
    theirs = viewer.add_labels(np.ones(nuclei[1].shape, np.uint8), name="cells probability")
    widget = docked(viewer, SegmentWidget(viewer, model_session))
    widget.image.value = layer
    widget.probabilities.value = True
    for _ in range(2):  # the second run finds its own result layers again
        widget.run_button.clicked.emit()
        wait_idle(widget)
    assert viewer.layers["cells labels"] is truth and np.array_equal(truth.data, kept)
    assert viewer.layers["cells probability"] is theirs and theirs.data.min() == 1
    assert viewer.layers["cells labels 2"].data.max() > 0 and "cells probability 2" in viewer.layers
    assert len(viewer.layers) == 5 and widget.status.value.startswith("cells labels 2:")


def test_all_planes_as_a_volume_give_a_cell_one_id_across_planes(viewer, session, wait_idle):
    zz, yy, xx = np.indices((6, 40, 50))
    # a cell in all six planes, another above it in planes 3-5 only (so that per plane it comes first there)
    balls = [
        ((zz - z) / c) ** 2 + ((yy - y) / 8) ** 2 + ((xx - x) / 8) ** 2 <= 1
        for z, c, y, x in ((2.5, 4, 26, 14), (4, 1.6, 12, 36))
    ]
    session.set_model(threshold_model(), "draws what is bright")
    stack = np.stack([drawn_image(plane, seed=z) for z, plane in enumerate(balls[0] | balls[1])])
    image = viewer.add_image(stack, name="stack")
    widget = docked(viewer, SegmentWidget(viewer, session))
    widget.image.value = image
    segment_planes(widget, "all planes as a volume", wait_idle)
    labels = viewer.layers["stack labels"].data
    assert same_partition(labels, balls[0] * 1 + balls[1] * 2)  # one id per ball over all six planes
    assert widget.status.value == "stack labels: 2 objects"
    segment_planes(widget, "all planes", wait_idle)
    per_plane = viewer.layers["stack labels"].data
    assert not same_partition(per_plane, labels)  # plane by plane: ids restart per plane
    total = sum(len(np.unique(plane)) - 1 for plane in per_plane)
    assert total > per_plane.max()  # the largest id counted one plane's objects: "2 objects"
    assert widget.status.value == f"stack labels: {total} objects in 6 planes"
    segment_planes(widget, "all planes as a volume", wait_idle)
    widget.image.value = viewer.add_image(stack[4], name="one plane")  # the choice, hidden, applies to stacks alone
    assert not widget.planes.visible
    widget.run_button.clicked.emit()
    wait_idle(widget)
    assert widget.status.value == "one plane labels: 2 objects"
    assert same_partition(viewer.layers["one plane labels"].data, balls[0][4] * 1 + balls[1][4] * 2)


def test_model_from_file_and_cancel(viewer, session, tmp_path, wait_idle, qtbot):
    path = tmp_path / "m.safetensors"
    save_model(bright_is_foreground(), path)
    image = viewer.add_image(np.random.default_rng(0).random((8, 300, 300)).astype(np.float32), name="big")
    widget = docked(viewer, SegmentWidget(viewer, session))
    widget.image.value = image
    widget.model_source.value = "file"
    widget.model_file.value = path
    wait_read(widget, qtbot)
    widget.tile.value = 60
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.progress.value >= 1, timeout=60_000)
    widget.cancel_button.clicked.emit()
    assert widget.status.value == "cancelling…" and not widget.cancel_button.enabled  # said at once
    wait_idle(widget)
    assert widget.status.value == "cancelled" and "big labels" not in viewer.layers


def test_a_chosen_model_file_is_read_off_the_gui_thread_and_the_latest_choice_wins(
    viewer, session, tmp_path, qtbot, monkeypatch
):
    from napari_unet._widgets import _jobs

    slow, quick = tmp_path / "slow.safetensors", tmp_path / "quick.safetensors"
    save_model(bright_is_foreground(depth=2), slow)
    save_model(bright_is_foreground(depth=3), quick)
    load_model, release, threads = _jobs.load_model, threading.Event(), []

    def slow_for_the_first(file):
        threads.append(threading.current_thread())
        if Path(file) == slow:
            release.wait(20)  # still reading when the user chooses the other file
        return load_model(file)

    monkeypatch.setattr(_jobs, "load_model", slow_for_the_first)
    widget = docked(viewer, SegmentWidget(viewer, session))
    widget.image.value = viewer.add_image(np.zeros((20, 20)), name="img")
    widget.model_source.value = "file"
    widget.model_file.value = slow
    assert widget.model_info.value == "reading slow.safetensors…"
    widget.run_button.clicked.emit()
    assert "still reading slow.safetensors" in widget.status.value and not widget.runner.busy
    widget.model_file.value = quick
    release.set()
    wait_read(widget, qtbot)
    qtbot.waitUntil(lambda: not widget.file_runner.busy, timeout=20_000)
    qtbot.wait(50)
    assert widget.model_info.value == "file quick.safetensors (2D U-Net, base 2, depth 3, 1 channel(s))"
    assert widget.model().config.depth == 3 and 100 in widget.tile.choices and 44 not in widget.tile.choices
    assert 92 not in widget.tile.choices  # valid for depth 3, but its output is too small to step across an image
    assert threads and threading.main_thread() not in threads


def test_bad_input_is_reported(viewer, session, tmp_path, qtbot):
    widget = docked(viewer, SegmentWidget(viewer, session))
    widget.run_button.clicked.emit()
    assert "choose an image layer" in widget.status.value
    widget.image.value = viewer.add_image(np.zeros((20, 20)), name="img")
    widget.run_button.clicked.emit()
    assert "no model in this session" in widget.status.value
    session.set_model(UNet(base_channels=2, depth=2), "trained")  # the Train widget's run ends
    assert widget.status.value == ""  # the warning had stayed beside the new model's description
    widget.model_source.value = "file"  # before any file is chosen: asked for, not "'.' is a folder"
    assert widget.model_info.value.startswith("choose a model file")
    widget.run_button.clicked.emit()
    assert "choose a model file" in widget.status.value and not widget.runner.busy
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 100)
    widget.model_file.value = corrupt
    assert widget.status.value == ""  # the message about no file is gone with the choice
    wait_read(widget, qtbot)
    assert widget.model_info.value.startswith("⚠") and "corrupt.safetensors" in widget.model_info.value
    widget.run_button.clicked.emit()
    assert "corrupt.safetensors" in widget.status.value and not widget.runner.busy


def test_an_rgb_layer_with_a_one_channel_model_gives_the_command_lines_message(
    viewer, model_session, wait_idle, caplog, capsys, tmp_path
):
    """Issue 18.11: the same one message as the command line, no traceback."""
    data = np.zeros((30, 40, 3), np.uint8)
    np.save(tmp_path / "rgb.npy", data)
    save_model(model_session.model, tmp_path / "gray.safetensors")
    assert main(["segment", str(tmp_path / "gray.safetensors"), str(tmp_path / "rgb.npy"), "--out-dir", str(tmp_path)])
    cli_message = capsys.readouterr().err.strip().splitlines()[-1].removeprefix("napari-unet: error: ")
    assert "convert" in cli_message and "RGB" in cli_message
    rgb = viewer.add_image(data, name="rgb", rgb=True)
    widget = docked(viewer, SegmentWidget(viewer, model_session))
    widget.image.value = rgb
    widget.run_button.clicked.emit()
    wait_idle(widget)
    assert widget.status.value == f"⚠ {cli_message}"
    assert widget.run_button.enabled

    assert not [record for record in caplog.records if record.exc_info], "a user error printed a traceback"


def test_segment_preselects_the_image_resets_its_progress_and_keeps_the_selection(
    viewer, model_session, wait_idle, qtbot
):
    """Issues 18.9 and 18.6: the image is chosen, a new run starts from 0, the result
    layer leaves the selection (and the brush) alone."""
    small = viewer.add_image(np.random.default_rng(0).random((64, 64)).astype(np.float32), name="small")
    annotation = viewer.add_labels(np.full((64, 64), -1, np.int16), name="small annotation")
    viewer.layers.selection.active = annotation
    annotation.mode = "paint"
    widget = docked(viewer, SegmentWidget(viewer, model_session))
    assert widget.image.value is small
    widget.run_button.clicked.emit()
    wait_idle(widget)
    assert widget.progress.value == widget.progress.max > 0
    assert viewer.layers.selection.active is annotation and annotation.mode == "paint"
    big = viewer.add_image(np.random.default_rng(1).random((4, 300, 300)).astype(np.float32), name="big")
    widget.image.value = big
    widget.tile.value = 60
    assert widget.progress.value == 0  # the last run's 100% is gone
    widget.run_button.clicked.emit()
    assert widget.progress.value == 0
    widget.cancel_button.clicked.emit()
    wait_idle(widget)


def export_through_the_dialog(widget, target, format, qtbot, monkeypatch):
    """Press Export model…, answer the save dialog with ``target`` as ``format``, wait."""
    from .conftest import WORKER_TIMEOUT

    monkeypatch.setattr(ModelExport, "ask_path", lambda self: (target, format))
    widget.exporter.button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.exporter.runner.busy, timeout=WORKER_TIMEOUT)
    qtbot.wait(10)
    return target


def test_export_button_writes_the_chosen_model_in_a_worker(viewer, model_session, tmp_path, qtbot, monkeypatch):

    widget = docked(viewer, SegmentWidget(viewer, model_session))
    target = export_through_the_dialog(widget, tmp_path / "exported.onnx", "onnx", qtbot, monkeypatch)
    assert target.is_file() and f"exported {target} (" in widget.status.value  # where it went
    assert widget.exporter.button.enabled
    monkeypatch.setattr(ModelExport, "ask_path", lambda self: None)  # cancelled: nothing happens
    widget.exporter.button.clicked.emit()
    assert not widget.exporter.runner.busy


def test_a_name_typed_with_a_formats_suffix_exports_that_format(viewer, model_session, tmp_path, monkeypatch):
    """Typed as model.onnx with the package filter chosen, the export was refused in the
    command line's words ("--out ... is named for onnx, but --format is bioimageio")."""
    from qtpy.QtWidgets import QFileDialog

    from napari_unet._widgets.export import EXPORT_FILTERS

    widget = docked(viewer, SegmentWidget(viewer, model_session))
    package_filter = next(text for text, (kind, _) in EXPORT_FILTERS.items() if kind == "bioimageio")
    for typed, expected in (("model.onnx", "onnx"), ("model.PT", "torchscript"), ("model", "bioimageio")):
        answer = (str(tmp_path / typed), package_filter)
        monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *args, answer=answer: answer))
        path, format = widget.exporter.ask_path()
        assert format == expected and path.name == (typed if "." in typed else "model.zip")


def test_a_failed_export_says_why_and_frees_the_button(viewer, model_session, tmp_path, qtbot, monkeypatch):
    """The export runs in a process of its own (so that its libraries' loading cannot
    stall the viewer); its one-line refusal reaches the status line."""
    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("a file, chosen as if it were a folder")
    widget = docked(viewer, SegmentWidget(viewer, model_session))
    export_through_the_dialog(widget, not_a_folder / "exported.onnx", "onnx", qtbot, monkeypatch)
    target = not_a_folder / "exported.onnx"
    said = f"⚠ the export to exported.onnx failed: cannot write {target}: {not_a_folder} is not a folder"
    assert widget.status.value == said
    assert widget.exporter.button.enabled


def test_a_3d_model_exports_as_a_package_with_the_chosen_volume_as_its_example(
    viewer, session, tmp_path, qtbot, monkeypatch
):
    """The button refused 3D models before asking where to."""
    pytest.importorskip("bioimageio.spec", reason="bioimage.io export needs napari-unet[export]")
    import zipfile

    from napari_unet import UNet

    session.set_model(UNet(ndim=3, base_channels=2, depth=1), "a 3D model")
    viewer.add_image(np.random.default_rng(0).random((24, 40, 40)).astype(np.float32), name="volume")
    widget = docked(viewer, SegmentWidget(viewer, session))
    target = export_through_the_dialog(widget, tmp_path / "v.zip", "bioimageio", qtbot, monkeypatch)
    assert f"exported {target} (" in widget.status.value
    with zipfile.ZipFile(target) as archive:
        assert np.load(archive.open("test_input.npy")).shape == (1, 1, 20, 40, 40)  # the volume's centre


def test_a_long_status_keeps_all_its_lines_in_view(viewer, model_session, qtbot):
    """The dock's layout gave the word-wrapped status the height of one line: at
    1366x768 a failed export's three lines showed one and a half under Segment."""
    from qtpy.QtCore import QSize
    from qtpy.QtGui import QResizeEvent
    from qtpy.QtWidgets import QApplication

    widget = docked(viewer, SegmentWidget(viewer, model_session))
    label = widget.status.native
    label.resize(300, label.height())
    widget.status.value = "⚠ the export to model.zip failed: " + "a reason that takes many words " * 8
    wide = label.heightForWidth(300)
    assert wide // label.fontMetrics().lineSpacing() >= 4 and label.minimumHeight() == wide  # room for every line
    label.resize(200, label.height())  # a narrower dock: more lines (a hidden widget hears of it when shown)
    QApplication.sendEvent(label, QResizeEvent(QSize(200, label.height()), QSize(300, label.height())))
    assert label.minimumHeight() == label.heightForWidth(200) > wide
    widget.status.value = ""
    assert label.minimumHeight() < wide  # and the room goes back to the settings


def test_the_settings_scroll_above_segment_so_it_shares_a_laptop_dock_with_train(viewer, model_session):
    """Issue 11: docked under the Train widget on a 1366x768 screen (about 630 px for
    both), the 13 settings (520 px) scroll and Segment, Cancel and progress stay in view."""
    widget = docked(viewer, SegmentWidget(viewer, model_session))
    assert widget.native.minimumSizeHint().height() < 300
    assert widget.settings_area.isAncestorOf(widget.tile.native)
    for control in (widget.run_button, widget.cancel_button, widget.exporter.button, widget.progress, widget.status):
        assert not widget.settings_area.isAncestorOf(control.native)
