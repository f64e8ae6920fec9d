import os
import tempfile

import dask.array as da
import numpy as np
import pytest
import zarr

from napari_unet import segment
from napari_unet._widgets import SegmentWidget, _stream
from tests.core.lazy import drawn_image, threshold_model
from tests.core.test_blocks import border_and_corner_objects

from .conftest import docked


def drawn(n=4):
    return drawn_image(border_and_corner_objects(chunk=32, n=n)[:124, :118])


def test_a_dask_layer_is_segmented_without_being_converted(viewer, session, wait_idle):
    image = drawn()
    session.set_model(threshold_model(), "threshold")
    layer = viewer.add_image(da.from_array(image, chunks=(40, 40)), name="lazy")
    widget = docked(viewer, SegmentWidget(viewer, session))
    widget.image.value = layer
    widget.run_button.clicked.emit()
    wait_idle(widget)
    assert isinstance(layer.data, da.Array)
    np.testing.assert_array_equal(viewer.layers["lazy labels"].data, segment(threshold_model(), image))


def test_a_multiscale_zarr_layer_uses_its_full_resolution(viewer, session, wait_idle, tmp_path):
    image = drawn()
    root = zarr.open_group(tmp_path / "image.zarr", mode="w")
    root.create_array("0", data=image, chunks=(50, 50))
    root.create_array("1", data=image[::2, ::2], chunks=(50, 50))
    session.set_model(threshold_model(), "threshold")
    layer = viewer.add_image([root["0"], root["1"]], multiscale=True, name="pyramid")
    widget = docked(viewer, SegmentWidget(viewer, session))
    widget.image.value = layer
    widget.run_button.clicked.emit()
    wait_idle(widget)
    np.testing.assert_array_equal(viewer.layers["pyramid labels"].data, segment(threshold_model(), image))


def test_large_images_fill_a_store_backed_layer(viewer, session, wait_idle, qtbot, tmp_path, monkeypatch):
    monkeypatch.setattr(_stream, "STORE_PIXELS", 100 * 100)  # this image counts as large
    monkeypatch.setattr(_stream, "REFRESH_S", 0.0)
    monkeypatch.setattr(_stream, "STORE_CHUNK", 32)
    stack = np.stack([drawn(), drawn()[::-1].copy()])
    session.set_model(threshold_model(), "threshold")
    layer = viewer.add_image(da.from_array(stack, chunks=(1, 64, 64)), name="big", scale=(1, 2, 2))
    annotation = viewer.add_labels(np.zeros(stack.shape, np.int32), name="my annotation")
    annotation.mode = "paint"
    widget = docked(viewer, SegmentWidget(viewer, session))
    widget.image.value = layer
    viewer.layers.selection.active = annotation
    # cancel after the first chunks: the store (a temporary one) is left for a resume
    widget.run_button.clicked.emit()
    assert widget.progress.label == "chunks"  # (in memory: tiles)
    qtbot.waitUntil(lambda: widget.progress.value >= 2, timeout=120_000)
    widget.cancel_button.clicked.emit()
    wait_idle(widget)
    assert "cancelled: Segment again to resume the store" in widget.status.value
    left = widget._store_view.out
    assert widget.store.value == left  # chosen for the next run
    labels = viewer.layers["big labels"]
    assert labels.multiscale and isinstance(labels.data[0], zarr.Array)
    assert viewer.layers.selection.active is annotation and annotation.mode == "paint"  # the user's, as they were
    # running again resumes the same store and completes it
    widget.run_button.clicked.emit()
    wait_idle(widget)
    labels = viewer.layers["big labels"]
    assert widget._store_view.out == left  # resumed, not begun again elsewhere
    assert isinstance(labels.data[0], zarr.Array) and tuple(labels.scale) == (1, 2, 2)
    np.testing.assert_array_equal(labels.data[0][:], segment(threshold_model(), stack))
    np.testing.assert_array_equal(labels.data[1][:], labels.data[0][:, ::2, ::2])
    assert "objects in" in widget.status.value
    # the split of touching cells, ticked, is said not to apply (too large for memory: no advice to untick the store)
    assert "touching cells are not split in a zarr store" in widget.status.value and "untick" not in widget.status.value
    # a second run (into a temporary store) replaces the layer
    widget.split.value = False  # the network's components: nothing to say
    n_layers = len(viewer.layers)
    widget.store.line_edit.value = ""  # cleared, as in the field (setting value "" chooses the current folder)
    getattr(viewer, "scene", viewer).camera.zoom = 0.05  # zoomed out: a coarse level is shown, and must fill in
    widget.run_button.clicked.emit()
    wait_idle(widget)
    qtbot.wait(100)
    assert len(viewer.layers) == n_layers
    assert not left.parent.exists()  # the replaced layer's temporary store is deleted with it
    assert "objects in" in widget.status.value and "not split" not in widget.status.value
    labels = viewer.layers["big labels"]
    np.testing.assert_array_equal(labels.data[0][:], segment(threshold_model(), stack))
    assert labels.data_level > 0
    level = np.asarray(labels.data[labels.data_level][0])  # the plane on show
    np.testing.assert_array_equal(np.asarray(labels._slice.image.raw), level)  # what is drawn: it stayed empty


def test_the_store_backed_labels_of_a_rotated_image_lie_on_it(viewer, session, wait_idle, tmp_path, monkeypatch):
    """The store's layer took the image's scale and translation only: on a rotated
    or sheared image its labels were drawn beside the cells."""
    monkeypatch.setattr(_stream, "STORE_PIXELS", 100 * 100)
    session.set_model(threshold_model(), "threshold")
    image = viewer.add_image(drawn(), name="big", rotate=30, shear=[0.2], translate=(40, 10))
    widget = docked(viewer, SegmentWidget(viewer, session))
    widget.image.value, widget.store.value = image, tmp_path / "big.zarr"
    widget.run_button.clicked.emit()
    wait_idle(widget)
    labels = viewer.layers["big labels"]
    assert isinstance(labels.data, zarr.Array) or isinstance(labels.data[0], zarr.Array)
    np.testing.assert_allclose(labels.data_to_world((30, 40)), image.data_to_world((30, 40)), atol=1e-9)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("cells", "cells.zarr"), ("day1/ctrl: a*b?", "day1_ctrl_ a_b_.zarr"), ("L" * 300, "L" * 120 + ".zarr")],
)
def test_a_temporary_store_is_named_after_the_layer_as_a_file_can_be(viewer, name, expected):
    """A layer name with a '/' made a nested folder, and a 300-character one failed with 'File name too long'."""
    layer = viewer.add_image(np.zeros((8, 8), np.float32), name=name)
    path, resume = _stream.store_for(layer, None)
    assert path.name == expected and not resume and path.parent.is_dir()
    path.parent.rmdir()


def test_temporary_stores_are_deleted_when_python_ends():
    """The last run's temporary store (or a cancelled one's) stayed in the temporary
    folder after napari closed: 1-1.2 MB each after a new user's walks, a large image's
    hundreds of MB."""
    import subprocess
    import sys

    script = (
        "import sys, types; from napari_unet._widgets import _stream\n"
        "out, _ = _stream.store_for(types.SimpleNamespace(name='big'), None)\n"
        "out.mkdir(); (out / 'chunk').write_bytes(b'0' * 1000); print(out.parent)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    folder = done.stdout.strip().splitlines()[-1]
    assert folder.startswith(tempfile.gettempdir()) and "napari-unet-" in folder
    assert not os.path.exists(folder)
