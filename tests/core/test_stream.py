import json
from dataclasses import replace

import numpy as np
import pytest
import tifffile
import zarr

from napari_unet import ConfigError, UNet, predict, segment
from napari_unet.core.layout import ImageShapeError
from napari_unet.core.store import OutputExistsError
from napari_unet.core.stream import iter_segment_to, segment_to

from .lazy import RecordingArray, drawn_image, joined_discs, same_partition, threshold_model
from .test_blocks import border_and_corner_objects


@pytest.fixture(scope="module")
def drawn():
    """4 x 4 chunks of 32 px (the last row and column cut short) with objects across
    every chunk face and corner and on every image border and corner."""
    mask = border_and_corner_objects(chunk=32, n=4)[:124, :118]
    return drawn_image(mask)


def test_streamed_labels_equal_the_in_memory_segmentation(drawn, tmp_path):
    model = threshold_model()
    expected, probabilities = segment(model, drawn, return_probabilities=True)
    assert expected.max() > 30
    result = segment_to(model, drawn, tmp_path / "out.zarr", chunk=32, probabilities=True)
    store = zarr.open_group(tmp_path / "out.zarr", mode="r")
    labels = store["0"][:]
    assert labels.dtype == np.int32 and labels.shape == drawn.shape
    assert same_partition(labels, expected)
    np.testing.assert_array_equal(labels, expected)  # numbering included: raster order of first pixels
    np.testing.assert_array_equal(store["probabilities/0"][:], probabilities)
    assert result.n_objects == (int(expected.max()),) and result.resumed == 0
    assert not (tmp_path / "out.zarr" / "work").exists()


def test_streaming_keeps_objects_the_network_joined_and_says_so(tmp_path, caplog):
    """In memory the default splits two bright discs joined by a dimmer neck; the
    chunked labelling keeps them one object (as segment with split 0) and warns."""
    image = joined_discs()
    model = threshold_model(steepness=8.0)
    assert segment(model, image).max() == 2
    with caplog.at_level("WARNING", logger="napari_unet.core.stream"):
        segment_to(model, image, tmp_path / "out.zarr", chunk=32)
    model.spec = replace(model.spec, instances=replace(model.spec.instances, split=0.0))
    unsplit = segment(model, image)
    assert unsplit.max() == 1
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "out.zarr", mode="r")["0"][:], unsplit)
    assert "split 0" in caplog.text


def test_small_chunks_are_warned_about(drawn, tmp_path, caplog):
    """--chunk 8 took a 1024x1024 image 6 minutes instead of 5 s without a word."""
    with caplog.at_level("WARNING", logger="napari_unet.core.stream"):
        segment_to(threshold_model(), drawn, tmp_path / "small.zarr", chunk=32, instances={"split": 0})
        assert "chunk (32, 32) is below 64 px: every chunk is predicted with margins of its own" in caplog.text
        caplog.clear()
        segment_to(threshold_model(), drawn, tmp_path / "large.zarr", chunk=64, instances={"split": 0})
    assert not caplog.records


def test_instance_settings_other_than_the_models_apply_chunk_by_chunk(drawn, tmp_path):
    model = threshold_model()
    instances = replace(model.spec.instances, min_size=150, split=0.0)
    expected = segment(model, drawn, instances=instances)
    assert 0 < expected.max() < segment(model, drawn).max()  # some objects are smaller
    segment_to(model, drawn, tmp_path / "out.zarr", chunk=32, instances=instances)
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "out.zarr", mode="r")["0"][:], expected)
    segment_to(model, drawn, tmp_path / "dict.zarr", chunk=32, instances={"min_size": 150})  # as segment takes it
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "dict.zarr", mode="r")["0"][:], expected)


def test_the_store_is_an_ome_zarr_image_with_a_pyramid(drawn, tmp_path):
    segment_to(threshold_model(), drawn, tmp_path / "out.zarr", chunk=32)
    store = zarr.open_group(tmp_path / "out.zarr", mode="r")
    ome = store.attrs["ome"]
    datasets = ome["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["0", "1", "2"]
    assert [d["coordinateTransformations"][0]["scale"] for d in datasets] == [[1, 1], [2, 2], [4, 4]]
    assert [a["name"] for a in ome["multiscales"][0]["axes"]] == ["y", "x"]
    assert "image-label" in ome
    np.testing.assert_array_equal(store["1"][:], store["0"][::2, ::2])
    np.testing.assert_array_equal(store["2"][:], store["0"][::4, ::4])
    assert store["0"].chunks == (32, 32)
    assert store.attrs["napari_unet"]["complete"] is True


def test_stacks_stream_plane_by_plane(drawn, tmp_path):
    stack = np.stack([drawn, drawn[::-1, ::-1].copy()])
    model = threshold_model()
    progress = []
    generator = iter_segment_to(model, stack, tmp_path / "stack.zarr", chunk=64)
    try:
        while True:
            progress.append(next(generator))
    except StopIteration as stop:
        result = stop.value
    labels = zarr.open_array(tmp_path / "stack.zarr" / "0", mode="r")[:]
    np.testing.assert_array_equal(labels, segment(model, stack))
    assert [p.plane for p in progress] == [(0,)] * 8 + [(1,)] * 8
    assert progress[-1].done == progress[-1].total == 16
    assert result.shape == stack.shape and len(result.n_objects) == 2
    axes = zarr.open_group(tmp_path / "stack.zarr", mode="r").attrs["ome"]["multiscales"][0]["axes"]
    assert [a["name"] for a in axes] == ["z", "y", "x"]


def test_only_windows_of_the_source_are_read(drawn, tmp_path):
    recording = RecordingArray(drawn)
    segment_to(threshold_model(), recording, tmp_path / "out.zarr", chunk=32, tile=60)
    sizes = [recording.pixels_read(region) for region in recording.reads]
    assert sizes.count(drawn.size) == 1  # the percentile sample (every pixel of this small plane)...
    others = [size for size in sizes if size != drawn.size]
    assert max(others[:5]) <= 64 * 64 and max(others[5:]) <= 60 * 60  # ...the fingerprint's 5 windows, tiles


def test_an_untrained_network_agrees_with_the_in_memory_path(rng, tmp_path):
    from .lazy import small_model

    model = small_model()
    image = (rng.random((150, 170)) * 255).astype(np.uint8)
    segment_to(model, image, tmp_path / "out.zarr", chunk=48, probabilities=True, precision="fp32")
    store = zarr.open_group(tmp_path / "out.zarr", mode="r")
    probabilities = predict(model, image, precision="fp32")
    assert np.abs(store["probabilities/0"][:] - probabilities).max() < 1e-5
    assert same_partition(store["0"][:], segment(model, image, precision="fp32"))


def test_an_existing_output_is_never_touched(drawn, tmp_path):
    out = tmp_path / "out.zarr"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    for resume in (False, True):  # not a store: resuming it is not offered, as it would not help
        with pytest.raises(OutputExistsError, match="exists and is not a napari-unet segmentation store; it was left"):
            segment_to(threshold_model(), drawn, out, chunk=32, resume=resume)
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    segment_to(threshold_model(), drawn, tmp_path / "done.zarr", chunk=32)
    with pytest.raises(OutputExistsError, match=r"exists; choose another output, or resume it \(command line"):
        segment_to(threshold_model(), drawn, tmp_path / "done.zarr", chunk=32)
    with pytest.raises(OutputExistsError, match=r"written with other chunk \(chunk \[32, 32\]\); resume it"):
        segment_to(threshold_model(), drawn, tmp_path / "done.zarr", chunk=64, resume=True)
    other = drawn.copy()
    other[-1, -1] += 1  # one pixel, in the last window the store's fingerprint samples
    with pytest.raises(OutputExistsError, match="written from another image; resume it"):
        segment_to(threshold_model(), other, tmp_path / "done.zarr", chunk=32, resume=True)
    before = json.loads((tmp_path / "done.zarr" / "zarr.json").read_text())
    again = segment_to(threshold_model(), drawn, tmp_path / "done.zarr", chunk=32, resume=True)
    assert again.computed == 0 and json.loads((tmp_path / "done.zarr" / "zarr.json").read_text()) == before
    older = zarr.open_group(tmp_path / "done.zarr", mode="r+")
    older.attrs["napari_unet"] = {**dict(older.attrs["napari_unet"]), "version": 1}  # a store of the last release
    with pytest.raises(OutputExistsError, match="written by another version of napari-unet"):  # not "another image"
        segment_to(threshold_model(), drawn, tmp_path / "done.zarr", chunk=32, resume=True)


def test_chunks_must_keep_tiles_on_the_pooling_grid(drawn, tmp_path):
    with pytest.raises(ConfigError, match="multiple of 4"):
        segment_to(threshold_model(), drawn, tmp_path / "out.zarr", chunk=30)
    assert not (tmp_path / "out.zarr").exists()


def test_a_3d_model_is_refused_with_a_message_and_nothing_is_written(tmp_path):
    from napari_unet import UNet

    volume = np.zeros((8, 32, 32), np.float32)
    with pytest.raises(ConfigError, match="takes 2D models"):
        segment_to(UNet(ndim=3, base_channels=2, depth=1), volume, tmp_path / "out.zarr", chunk=32)
    assert not (tmp_path / "out.zarr").exists()


def test_labels_keep_the_pixel_size_and_unit_of_their_image(drawn, tmp_path):
    """Labels streamed from an image of 0.5 um pixels were written with a scale of 1 and
    no unit, so napari drew them at twice the image's size."""
    axes = [{"name": name, "type": "space", "unit": "micrometer"} for name in ("y", "x")]
    image = zarr.open_group(tmp_path / "image.zarr", mode="w")
    image.create_array("0", data=drawn, chunks=(32, 32))
    half_micron = {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.5, 0.5]}]}
    image.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": [half_micron]}]}
    out = tmp_path / "image.zarr" / "labels" / "cells"
    segment_to(threshold_model(), tmp_path / "image.zarr", out, chunk=32, probabilities=True)
    labels = zarr.open_group(out, mode="r").attrs["ome"]["multiscales"][0]
    scales = [dataset["coordinateTransformations"][0]["scale"] for dataset in labels["datasets"]]
    assert scales[0] == [0.5, 0.5] and scales[1] == [1.0, 1.0]  # each level halves the resolution
    assert [axis.get("unit") for axis in labels["axes"]] == ["micrometer", "micrometer"]
    classes = zarr.open_group(out / "probabilities", mode="r").attrs["ome"]["multiscales"][0]
    assert classes["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.5, 0.5]

    series = zarr.open_group(tmp_path / "series.zarr", mode="w")  # a time series keeps its t axis
    series.create_array("0", data=np.stack([drawn, drawn]), chunks=(1, 32, 32))
    in_time = [{"name": "t", "type": "time", "unit": "second"}, *axes]
    every_30_s = {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [30.0, 0.5, 0.5]}]}
    series.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": in_time, "datasets": [every_30_s]}]}
    segment_to(threshold_model(), tmp_path / "series.zarr", tmp_path / "series_labels.zarr", chunk=32)
    labels = zarr.open_group(tmp_path / "series_labels.zarr", mode="r").attrs["ome"]["multiscales"][0]
    assert labels["axes"][0] == {"name": "t", "type": "time", "unit": "second"}
    assert labels["datasets"][0]["coordinateTransformations"][0]["scale"] == [30.0, 0.5, 0.5]

    calibrated = {"imagej": True, "resolution": (4.0, 4.0), "metadata": {"spacing": 2.0, "unit": "um"}}
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([drawn, drawn]), **calibrated)
    segment_to(threshold_model(), tmp_path / "stack.tif", tmp_path / "stack.zarr", chunk=32)
    labels = zarr.open_group(tmp_path / "stack.zarr", mode="r").attrs["ome"]["multiscales"][0]
    assert labels["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 1.0]  # as napari shows TIFFs


def test_a_plane_without_objects_gives_empty_labels(drawn, tmp_path):
    """A plane where nothing is found (an empty frame of a stack) raised IndexError
    in the merge of the chunks' tables."""
    stack = np.stack([np.zeros_like(drawn), drawn])
    result = segment_to(threshold_model(), stack, tmp_path / "out.zarr", chunk=32, instances={"split": 0})
    expected = segment(threshold_model(), stack, instances={"split": 0})
    assert result.n_objects[0] == 0 and result.n_objects[1] > 0
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "out.zarr" / "0", mode="r")[:], expected)


def test_an_ome_zarr_image_s_named_channels_are_its_channels(drawn, tmp_path):
    """An OME-Zarr image of axes c, y, x went to a one-channel model as 2 planes, its
    labels' axes written as z, y, x: it is refused, and a model of 2 channels reads
    the named axis as its channels."""
    axes = [{"name": "c", "type": "channel"}, *({"name": name, "type": "space"} for name in ("y", "x"))]
    image = zarr.open_group(tmp_path / "cyx.zarr", mode="w")
    image.create_array("0", data=np.stack([drawn, drawn]), chunks=(1, 32, 32))
    unit = {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]}
    image.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": [unit]}]}
    with pytest.raises(ImageShapeError, match="names its axis c with 2 channels"):
        segment_to(threshold_model(), tmp_path / "cyx.zarr", tmp_path / "one.zarr", chunk=32)
    two = UNet(in_channels=2, base_channels=2, depth=2)
    segment_to(two, tmp_path / "cyx.zarr", tmp_path / "two.zarr", chunk=32, instances={"split": 0})
    assert zarr.open_array(tmp_path / "two.zarr" / "0", mode="r").shape == drawn.shape  # one image of 2 channels


def test_a_stack_without_planes_gives_an_empty_store(tmp_path):
    """The store's fingerprint sampled plane -1 of an empty stack: a raw ValueError."""
    result = segment_to(threshold_model(), np.zeros((0, 64, 64), np.uint8), tmp_path / "none.zarr", chunk=32)
    assert list(result.n_objects) == [] and zarr.open_array(tmp_path / "none.zarr" / "0", mode="r").shape == (0, 64, 64)


def test_labels_can_go_into_the_input_images_labels_group(drawn, tmp_path):
    from ome_zarr.writer import write_image

    from napari_unet import open_source

    image = zarr.open_group(tmp_path / "image.zarr", mode="w")
    write_image(drawn, image, axes="yx", scaler=None)
    out = tmp_path / "image.zarr" / "labels" / "cells"
    segment_to(threshold_model(), tmp_path / "image.zarr", out, chunk=32)
    labels = zarr.open_group(tmp_path / "image.zarr" / "labels", mode="r")
    assert labels.attrs["ome"]["labels"] == ["cells"]
    assert zarr.open_group(out, mode="r").attrs["ome"]["image-label"]["source"] == {"image": "../../"}
    np.testing.assert_array_equal(zarr.open_array(out / "0", mode="r")[:], segment(threshold_model(), drawn))
    np.testing.assert_array_equal(np.asarray(open_source(tmp_path / "image.zarr")), drawn)  # the image is intact


def test_the_labels_of_a_store_are_evaluated_from_the_command_line(drawn, tmp_path, capsys):
    """evaluate refused the store that segment --out wrote ("a zarr store, which is
    segmented chunk by chunk"), so large labels could not be scored."""
    from napari_unet.cli import main

    segment_to(threshold_model(), drawn, tmp_path / "out.zarr", chunk=32, instances={"split": 0})
    np.save(tmp_path / "truth.npy", zarr.open_array(tmp_path / "out.zarr" / "0", mode="r")[...])
    assert main(["evaluate", str(tmp_path / "out.zarr"), "--truth", str(tmp_path / "truth.npy")]) == 0
    assert "1.000" in capsys.readouterr().out
    (tmp_path / "empty.zarr").mkdir()
    assert main(["evaluate", str(tmp_path / "empty.zarr"), "--truth", str(tmp_path / "truth.npy")]) == 2
    assert "empty.zarr holds no labels at" in capsys.readouterr().err
