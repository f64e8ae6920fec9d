"""The command line with volumes: train --ndim 3 [--spacing], segment (also --as-volume
with a 2D model), weights, info."""

import json
from dataclasses import replace

import numpy as np
import pytest
import tifffile
import torch

from napari_unet import UNet, load_model, predict, save_model
from napari_unet.cli import main
from napari_unet.core.config import IGNORE_LABEL, InstanceConfig
from napari_unet.core.io import read_spacing
from napari_unet.core.predict import volume_labels
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


def test_training_a_2d_network_on_a_volume_suggests_the_3d_one(tmp_path, volume_files, capsys):
    """Without --ndim a volume trained a 2D network without a word (the Train widget
    suggests 3D for it, and segment suggests --as-volume)."""
    image, labels, _ = volume_files
    train = ["train", str(image), "--labels", str(labels), "--base-channels", "2", "--depth", "2"]
    train += ["--steps", "1", "--batch-size", "1", "--device", "cpu", "--tile", "44"]
    assert main([*train, "--out", str(tmp_path / "2d.safetensors")]) == 0
    note = f"{image} is a volume of 16 planes, which a 2D network learns one plane at a time; add --ndim 3"
    assert note in capsys.readouterr().err
    assert main([*train, "--out", str(tmp_path / "2d-asked.safetensors"), "--ndim", "2"]) == 0
    assert "add --ndim 3" not in capsys.readouterr().err  # a 2D network asked for: nothing to suggest
    assert main([*train, "--out", str(tmp_path / "3d.safetensors"), "--ndim", "3", "--warm-start", "0"]) == 0
    assert "add --ndim 3" not in capsys.readouterr().err


def test_a_3d_network_given_two_tile_sizes_is_one_line_and_leaves_no_checkpoint(tmp_path, volume_files, capsys):
    """--tile 40 88 for a 3D network raised a numpy broadcasting error and left a
    step-0 checkpoint that refused the corrected command (a new user's walk)."""
    image, labels, _ = volume_files
    out = tmp_path / "m.safetensors"
    train = ["train", str(image), "--labels", str(labels), "--ndim", "3", "--base-channels", "2", "--depth", "1"]
    train += ["--steps", "1", "--warm-start", "0", "--device", "cpu", "--out", str(out)]
    assert main([*train, "--tile", "40", "88"]) == 2
    err = capsys.readouterr().err
    assert "error: tile (40, 88) has 2 sizes for a 3D network: give one size, or three (z, y, x)" in err
    assert not list(tmp_path.glob("m.safetensors*"))
    assert main([*train, "--tile", "20", "28", "28"]) == 0


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
    assert main(["info", "--json", str(model)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["spec"]["model"]["ndim"] == 3 and info["spec"]["model"]["spacing"] == [0.5, 0.25, 0.25]
    out = tmp_path / "out"
    assert main(["segment", str(model), str(image), "--out-dir", str(out), "--device", "cpu"]) == 0
    segmented = tifffile.imread(out / "vol_labels.tif")
    assert segmented.shape == (16, 40, 40) and segmented.dtype == np.uint16  # ImageJ's type, for its z spacing
    assert read_spacing(out / "vol_labels.tif") == pytest.approx((0.5, 0.25, 0.25))
    assert "records voxels of" not in capsys.readouterr().err  # the spacing the model learned


@pytest.mark.slow
def test_spacing_flag_overrides_the_file_and_needs_volumes(tmp_path, volume_files, capsys):
    image, labels, _ = volume_files
    model = tmp_path / "m.safetensors"
    train = ["train", str(image), "--labels", str(labels), "--out", str(model), "--base-channels", "2"]
    train += ["--steps", "1", "--batch-size", "1", "--device", "cpu", "--spacing", "1", "1", "1"]
    assert main([*train, "--ndim", "3", "--tile", "44"]) == 0
    assert load_model(model).config.spacing == (1.0, 1.0, 1.0)
    capsys.readouterr()
    assert main(["segment", str(model), str(image), "--out-dir", str(tmp_path / "o"), "--device", "cpu"]) == 0
    note = "records voxels of (0.5, 0.25, 0.25) (z, y, x), the model was made for voxels shaped (1.0, 1.0, 1.0)"
    assert note in capsys.readouterr().err  # segmented as if its voxels were the model's, without a word
    # a 3D model takes --spacing for the volume's voxels, as the outputs record them (it was refused)
    given = ["--spacing", "1", "1", "1", "--overwrite"]
    assert main(["segment", str(model), str(image), "--out-dir", str(tmp_path / "o"), "--device", "cpu", *given]) == 0
    assert "records voxels of" not in capsys.readouterr().err
    assert read_spacing(tmp_path / "o" / "vol_labels.tif") == (1.0, 1.0, 1.0)
    assert main([*train, "--overwrite"]) == 2
    assert "--spacing Z Y X applies to 3D models: add --ndim 3, or drop --spacing" in capsys.readouterr().err
    assert main(["segment", str(model), str(image), "--as-volume", "--out-dir", str(tmp_path / "v")]) == 2
    assert "--as-volume is for 2D models: a 3D model labels whole volumes already" in capsys.readouterr().err


def test_a_plane_segmented_as_a_volume_gets_the_error_alone(tmp_path, capsys):
    """ "records no voxel size: cubic voxels assumed" came before the error that the
    plane is no stack, which made it moot."""
    save_model(UNet(base_channels=2, depth=1), tmp_path / "m.safetensors")
    tifffile.imwrite(tmp_path / "plane.tif", np.zeros((40, 40), np.float32))
    command = ["segment", str(tmp_path / "m.safetensors"), str(tmp_path / "plane.tif"), "--as-volume"]
    assert main([*command, "--out-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a stack of planes (Z, Y, X)" in err[0]


def test_training_on_volumes_of_other_voxel_shapes_says_so(tmp_path, volume_files, capsys):
    """Volumes of 2:1:1 and 1:1:1 voxels trained one 3D model on the first's voxel
    shape without a word (segment notes the same mismatch)."""
    image, labels, _ = volume_files  # its voxels: 0.5 x 0.25 x 0.25
    cubic = tmp_path / "cubic.tif"
    tifffile.imwrite(cubic, tifffile.imread(image), imagej=True, resolution=(4.0, 4.0), metadata={"spacing": 0.25})
    train = ["train", str(image), str(cubic), "--labels", str(labels), str(labels), "--ndim", "3", "--warm-start", "0"]
    train += ["--base-channels", "2", "--depth", "1", "--steps", "1", "--device", "cpu", "--out"]
    assert main([*train, str(tmp_path / "m.safetensors")]) == 0
    err = capsys.readouterr().err
    assert f"{cubic} records voxels of (0.25, 0.25, 0.25) (z, y, x), {image} of (0.5, 0.25, 0.25)" in err
    assert main([*train, str(tmp_path / "m2.safetensors"), "--spacing", "0.5", "0.25", "0.25"]) == 0
    assert "records voxels of" not in capsys.readouterr().err  # the user's spacing: for all of them


def test_weights_follow_the_labels_dimensionality(tmp_path, volume_files, capsys):
    _, _, labels = volume_files
    tifffile.imwrite(tmp_path / "dense.tif", labels)
    out = tmp_path / "w"
    assert main(["weights", str(tmp_path / "dense.tif"), "--out-dir", str(out), "--spacing", "2", "1", "1"]) == 0
    written = tifffile.imread(out / "dense_weights.tif")
    np.testing.assert_array_equal(written, weight_map(labels, spacing=(2.0, 1.0, 1.0)))
    for name in ("dense_weights.tif", "dense_target.tif"):  # written with the voxel size they were made for
        assert read_spacing(out / name) == pytest.approx((2.0, 1.0, 1.0)), name
    assert tifffile.imread(out / "dense_target.tif").shape == labels.shape
    tifffile.imwrite(tmp_path / "plane.tif", labels[6])
    assert main(["weights", str(tmp_path / "plane.tif"), "--out-dir", str(out), "--spacing", "2", "1", "1"]) == 2
    said = capsys.readouterr().err
    assert f"applies to volumes (3D labels), and {tmp_path / 'plane.tif'} holds 2D labels: drop --spacing" in said


def test_a_plane_trained_as_a_volume_gets_the_error_alone(tmp_path, volume_files, capsys):
    """The note that no voxel size is recorded came first, before the real problem."""
    *_, truth = volume_files
    tifffile.imwrite(tmp_path / "plane.tif", truth[6].astype(np.float32))
    tifffile.imwrite(tmp_path / "plane_labels.tif", truth[6])
    train = ["train", str(tmp_path / "plane.tif"), "--labels", str(tmp_path / "plane_labels.tif"), "--ndim", "3"]
    assert main([*train, "--out", str(tmp_path / "m.safetensors"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    error = "napari-unet: error: a 3D U-Net needs a volume (Z, Y, X), got an image of shape (40, 40)"
    assert err.strip().splitlines() == [f"{error}: use a 2D network for it"]  # and no note on voxels or minutes


def test_segment_as_volume_labels_a_2d_models_stack_in_3d(tmp_path, volume_files, capsys):
    image, _, _ = volume_files
    torch.manual_seed(0)
    model = UNet(base_channels=2, depth=2).eval()
    foreground = predict(model, tifffile.imread(image), precision="fp32")[:, 1]
    model.spec = replace(model.spec, instances=InstanceConfig(threshold=float(np.median(foreground)), min_size=1))
    save_model(model, tmp_path / "m2d.safetensors")
    out = tmp_path / "out"
    command = ["segment", str(tmp_path / "m2d.safetensors"), str(image), "--as-volume", "--device", "cpu"]
    assert main([*command, "--out-dir", str(out), "--probabilities", "--precision", "fp32"]) == 0
    labels = tifffile.imread(out / "vol_labels.tif")
    probabilities = tifffile.imread(out / "vol_probabilities.tif")
    assert labels.shape == (16, 40, 40) and probabilities.shape == (16, 2, 40, 40)
    np.testing.assert_array_equal(labels, volume_labels(probabilities, model.spec.instances, read_spacing(image)))
    assert f"{labels.max()} objects" in capsys.readouterr().out and labels.max() > 1
    assert main([*command, "--out", str(tmp_path / "s.zarr")]) == 2
    assert "--as-volume labels a whole stack at once" in capsys.readouterr().err
    plain = [arg for arg in command if arg != "--as-volume"]
    assert main([*plain, "--out-dir", str(out), "--overwrite", "--spacing", "0.5", "0.25", "0.25"]) == 2
    assert "--spacing Z Y X applies to volumes: add --as-volume, or use a 3D model" in capsys.readouterr().err
    assert main([*plain, "--out-dir", str(out), "--overwrite", "--precision", "fp32"]) == 0  # plane by plane
    said = capsys.readouterr()
    assert "is a volume of 16 planes" in said.err and "add --as-volume" in said.err
    assert "records no voxel size" not in said.err  # this file has one
    bare = tmp_path / "bare.tif"
    tifffile.imwrite(bare, tifffile.imread(image))  # no voxel size in it: said, with what to do
    assert main(["segment", str(tmp_path / "m2d.safetensors"), str(bare), "--as-volume", "--out-dir", str(out)]) == 0
    assert "bare.tif records no voxel size: cubic voxels assumed" in capsys.readouterr().err
    given = ["--spacing", "0.5", "0.25", "0.25", "--probabilities", "--overwrite"]  # what the file lacks
    bare_volume = ["segment", str(tmp_path / "m2d.safetensors"), str(bare), "--as-volume", "--out-dir", str(out)]
    assert main([*bare_volume, *given]) == 0
    for name in ("bare_labels.tif", "bare_probabilities.tif"):  # the outputs carry it, for Fiji and napari
        assert read_spacing(out / name) == pytest.approx((0.5, 0.25, 0.25)), name
    per_plane = tifffile.imread(out / "vol_labels.tif")
    total = sum(int(plane.max()) for plane in per_plane)  # each plane numbers its objects from 1
    assert f"{total} objects in 16 planes" in said.out and total > per_plane.max()


def test_no_volume_note_for_an_rgb_picture(tmp_path, capsys):
    """An RGB picture (H, W, 3) given to a 1-channel model gets prediction's error
    alone, not a note calling it a volume of H planes first."""
    torch.manual_seed(0)
    save_model(UNet(base_channels=2, depth=2), tmp_path / "m.safetensors")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((200, 64, 3), np.uint8), photometric="rgb")
    command = ["segment", str(tmp_path / "m.safetensors"), str(tmp_path / "rgb.tif"), "--out-dir", str(tmp_path)]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "is RGB" in err and "is a volume" not in err
