import numpy as np
import pytest
import tifffile
import zarr

from napari_unet import predict, segment
from napari_unet.core import sources
from napari_unet.core.config import NormalizationConfig
from napari_unet.core.sources import LazyPlanes, SourceError, normalization_range, open_source, planes_of

from .lazy import RecordingArray, small_model


@pytest.fixture
def image(rng):
    return (rng.random((230, 270)) * 1000).astype(np.uint16)


def test_only_tile_windows_are_read(image, monkeypatch):
    monkeypatch.setattr(sources, "SAMPLE_PIXELS", 40 * 40)
    model = small_model()
    recording = RecordingArray(image)
    predict(model, recording, tile=76, precision="fp32")
    tile_pixels = 76 * 76
    sample_reads = [r for r in recording.reads if r[0][2] > 1]
    tile_reads = [r for r in recording.reads if r[0][2] == 1]
    assert sample_reads and tile_reads
    assert max(recording.pixels_read(r) for r in recording.reads) <= tile_pixels
    assert sum(recording.pixels_read(r) for r in sample_reads) <= 40 * 40
    # every read is a window of the image, never the whole image
    assert all(recording.pixels_read(r) < image.size for r in recording.reads)


def test_lazy_input_equals_in_memory_exactly(image):
    """Below SAMPLE_PIXELS the percentiles use every pixel, and a gathered tile is
    normalised with the same arithmetic, so the probabilities are identical."""
    model = small_model()
    expected = predict(model, image, tile=76, precision="fp32")
    np.testing.assert_array_equal(predict(model, RecordingArray(image), tile=76, precision="fp32"), expected)
    np.testing.assert_array_equal(segment(model, RecordingArray(image), tile=76), segment(model, image, tile=76))


def test_lazy_input_with_non_finite_pixels_equals_in_memory_exactly(image):
    """NaN and infinite pixels are left out of the percentiles and become 0 on the
    lazy path too (they used to make its percentiles NaN and blank every tile)."""
    model = small_model()
    dirty = image.astype(np.float32)
    dirty[5, 7], dirty[100, 30:33] = np.nan, np.inf
    expected = predict(model, dirty, tile=76, precision="fp32")
    assert np.isfinite(expected).all()
    np.testing.assert_array_equal(predict(model, RecordingArray(dirty), tile=76, precision="fp32"), expected)


def test_every_kind_of_source(image, tmp_path):
    import dask.array as da
    from ome_zarr.writer import write_image

    model = small_model()
    expected = predict(model, image, tile=76, precision="fp32")
    z = zarr.create_array(tmp_path / "plain.zarr", shape=image.shape, chunks=(64, 64), dtype=image.dtype)
    z[:] = image
    ome = zarr.open_group(tmp_path / "ome.zarr", mode="w")
    write_image(image, ome, axes="yx", scaler=None)
    tifffile.imwrite(tmp_path / "tiled.tif", image, tile=(64, 64), compression="zlib")
    tifffile.imwrite(tmp_path / "plain.tif", image)
    np.save(tmp_path / "image.npy", image)
    candidates = {
        "dask": da.from_array(image, chunks=(50, 60)),
        "zarr array": z,
        "zarr path": tmp_path / "plain.zarr",
        "OME-Zarr group": ome,
        "OME-Zarr path": str(tmp_path / "ome.zarr"),
        "tiled TIFF": tmp_path / "tiled.tif",
        "plain TIFF (memmap)": tmp_path / "plain.tif",
        "npy (memmap)": tmp_path / "image.npy",
        "memmap": np.load(tmp_path / "image.npy", mmap_mode="r"),
    }
    for name, source in candidates.items():
        np.testing.assert_array_equal(predict(model, source, tile=76, precision="fp32"), expected, err_msg=name)
    assert isinstance(open_source(tmp_path / "plain.tif"), np.memmap)
    assert isinstance(open_source(tmp_path / "tiled.tif"), zarr.Array)


def test_stacks_and_channels_last_are_laid_out_lazily(rng):
    stack = (rng.random((2, 90, 100, 3)) * 255).astype(np.uint8)
    model = small_model(in_channels=3)
    expected = predict(model, stack, tile=60, precision="fp32")
    recording = RecordingArray(stack)
    np.testing.assert_array_equal(predict(model, recording, tile=60, precision="fp32"), expected)
    planes = planes_of(recording, 3)
    assert isinstance(planes, LazyPlanes) and planes.shape == (2, 3, 90, 100)
    np.testing.assert_array_equal(planes.read((1,), slice(5, 9), slice(0, 3)), np.moveaxis(stack[1, 5:9, 0:3], -1, 0))


def test_large_planes_normalise_from_a_deterministic_grid_sample(rng):
    plane = rng.normal(size=(300, 500)).astype(np.float32)
    config = NormalizationConfig()
    planes = planes_of(RecordingArray(plane), 1)
    low, high = normalization_range(planes, (), config, max_pixels=100 * 100)
    step = sources.sample_step(300, 500, 100 * 100)
    assert step == 4
    expected = np.percentile(plane[::step, ::step].reshape(1, -1), [config.low, config.high], axis=1)
    np.testing.assert_allclose(np.stack([low, high]), expected.astype(np.float32))
    again = normalization_range(planes_of(RecordingArray(plane), 1), (), config, max_pixels=100 * 100)
    np.testing.assert_array_equal(np.stack(again), np.stack([low, high]))


def test_bad_sources_are_one_line(tmp_path):
    with pytest.raises(SourceError, match="no such image"):
        open_source(tmp_path / "missing.zarr")
    zarr.open_group(tmp_path / "group.zarr", mode="w").create_array("a", shape=(4, 4), dtype="u1")
    with pytest.raises(SourceError, match="not an OME-Zarr image.*holds arrays a"):
        open_source(tmp_path / "group.zarr")
    (tmp_path / "broken.tif").write_bytes(b"not a tiff")
    with pytest.raises(SourceError, match="cannot read TIFF"):
        open_source(tmp_path / "broken.tif")
