"""The command line with volumes: train --ndim 3 [--spacing], segment, weights, info."""

import json

import numpy as np
import pytest
import tifffile

from napari_unet import load_model
from napari_unet.cli import main
from napari_unet.core.config import IGNORE_LABEL
from napari_unet.core.io import read_spacing
from napari_unet.core.weights import weight_map


def stack(shape=(16, 40, 40), seed=0):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    labels = np.zeros(shape, np.int32)
    for index, (cz, cy, cx) in enumerate([(6, 12, 12), (8, 26, 28), (10, 12, 30)], start=1):
        labels[((zz - cz) / 4) ** 2 + ((yy - cy) / 8) ** 2 + ((xx - cx) / 8) ** 2 <= 1] = index
    image = ((labels > 0) * 2000 + rng.normal(500, 100, shape)).astype(np.uint16)
    return image, labels


@pytest.fixture
def volume_files(tmp_path):
    image, labels = stack()
    sparse = np.full_like(labels, IGNORE_LABEL)
    sparse[::4] = labels[::4]  # every 4th plane annotated
    tifffile.imwrite(
        tmp_path / "vol.tif", image, imagej=True, resolution=(1 / 0.25, 1 / 0.25), metadata={"spacing": 0.5}
    )
    tifffile.imwrite(tmp_path / "vol_labels.tif", sparse)
    return tmp_path / "vol.tif", tmp_path / "vol_labels.tif", labels


@pytest.mark.slow
def test_train_3d_segment_and_info(tmp_path, volume_files, capsys):
    image, labels, _ = volume_files
    assert read_spacing(image) == pytest.approx((0.5, 0.25, 0.25))
    model = tmp_path / "m.safetensors"
    train = ["train", str(image), "--labels", str(labels), "--out", str(model), "--ndim", "3"]
    train += [
        "--base-channels",
        "2",
        "--steps",
        "2",
        "--batch-size",
        "1",
        "--device",
        "cpu",
        "--tile",
        "20",
        "44",
        "44",
    ]
    assert main(train) == 0
    assert "voxel spacing (z, y, x): 0.5, 0.25, 0.25" in capsys.readouterr().out  # read from the TIFF
    loaded = load_model(model)
    assert loaded.config.ndim == 3 and loaded.config.spacing == (0.5, 0.25, 0.25)
    assert loaded.plan[0].kernel == (1, 3, 3)  # z not convolved at the first level: it is twice as coarse
    assert main(["info", str(model)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["spec"]["model"]["ndim"] == 3 and info["spec"]["model"]["spacing"] == [0.5, 0.25, 0.25]
    out = tmp_path / "out"
    assert main(["segment", str(model), str(image), "--out-dir", str(out), "--device", "cpu"]) == 0
    segmented = tifffile.imread(out / "vol_labels.tif")
    assert segmented.shape == (16, 40, 40) and segmented.dtype == np.int32


@pytest.mark.slow
def test_spacing_flag_overrides_the_file_and_needs_volumes(tmp_path, volume_files, capsys):
    image, labels, _ = volume_files
    model = tmp_path / "m.safetensors"
    train = ["train", str(image), "--labels", str(labels), "--out", str(model), "--base-channels", "2"]
    train += ["--steps", "1", "--batch-size", "1", "--device", "cpu", "--spacing", "1", "1", "1"]
    assert main([*train, "--ndim", "3", "--tile", "44"]) == 0
    assert load_model(model).config.spacing == (1.0, 1.0, 1.0)
    capsys.readouterr()
    assert main(train) == 2
    assert "--spacing Z Y X applies to volumes" in capsys.readouterr().err


def test_weights_follow_the_labels_dimensionality(tmp_path, volume_files, capsys):
    _, _, labels = volume_files
    tifffile.imwrite(tmp_path / "dense.tif", labels)
    out = tmp_path / "w"
    assert main(["weights", str(tmp_path / "dense.tif"), "--out-dir", str(out), "--spacing", "2", "1", "1"]) == 0
    written = tifffile.imread(out / "dense_weights.tif")
    np.testing.assert_array_equal(written, weight_map(labels, spacing=(2.0, 1.0, 1.0)))
    assert tifffile.imread(out / "dense_target.tif").shape == labels.shape
