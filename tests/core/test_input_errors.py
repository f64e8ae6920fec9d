"""Bad input ends in one clear NapariUnetError, never in a traceback."""

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

import napari_unet as nu
from napari_unet import ConfigError, TrainConfig, WeightMapConfig
from napari_unet.core.config import InstanceConfig, ModelConfig, ModelSpec, NormalizationConfig
from napari_unet.core.weights import weight_map


@pytest.mark.parametrize("w0", [math.nan, math.inf, -1.0])
def test_weight_map_settings_refuse_nan_and_infinity(w0):
    with pytest.raises(ConfigError, match="w0"):
        WeightMapConfig(w0=w0)
    with pytest.raises(ConfigError):
        weight_map(np.zeros((8, 8), np.int32), w0=w0)
    with pytest.raises(ConfigError, match="sigma"):
        WeightMapConfig(sigma=math.nan)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: ModelConfig(base_channels="64"), "base_channels"),
        (lambda: ModelConfig(depth=2.0), "depth"),
        (lambda: ModelConfig(in_channels=True), "in_channels"),
        (lambda: ModelConfig(dropout=math.nan), "dropout"),
        (lambda: NormalizationConfig(low=math.nan), "low"),
        (lambda: InstanceConfig(fill_holes="yes"), "fill_holes"),
        (lambda: InstanceConfig(edge_size_factor=0.5), "edge_size_factor must be >= 1"),
        (lambda: TrainConfig(tile=100.5), "tile"),
        (lambda: TrainConfig(steps=[3]), "steps"),
        (lambda: TrainConfig(lr=math.inf), "lr"),
        (lambda: TrainConfig(weights={"w0": 1}), "weights"),
    ],
)
def test_config_records_refuse_values_of_the_wrong_type(make, field):
    with pytest.raises(ConfigError, match=field):
        make()


def test_numpy_numbers_are_accepted():
    config = ModelConfig(base_channels=np.int64(4), depth=np.int32(2), dropout=np.float32(0.25))
    assert config.base_channels == 4
    assert type(config.base_channels) is int and type(config.dropout) is float  # JSON-able


# --- images, tiles and devices -------------------------------------------------------------------------------

import torch  # noqa: E402

from napari_unet import ImageShapeError, InvalidTileSize, UNet, predict, save_model, segment, train  # noqa: E402
from napari_unet.cli import main  # noqa: E402
from napari_unet.core.layout import channels_before_spatial  # noqa: E402
from napari_unet.core.synthetic import synthetic_nuclei  # noqa: E402


@pytest.fixture
def small():
    return UNet(base_channels=2, depth=1)


@pytest.mark.parametrize("shape", [(0, 10), (10, 0), (0, 0), (3, 0, 20), (0, 20, 20)])
def test_empty_images_are_refused_by_name(small, shape):
    with pytest.raises(ImageShapeError, match="empty"):
        segment(small, np.zeros(shape, np.float32))


def test_a_python_list_is_accepted_as_an_image(small, rng):
    image = rng.random((30, 34)).astype(np.float32)
    expected = predict(small, image, device="cpu", precision="fp32")
    np.testing.assert_array_equal(predict(small, image.tolist(), device="cpu", precision="fp32"), expected)


@pytest.mark.parametrize(
    ("image", "message"),
    [([[1, 2], [3]], "cannot use this as an image"), ([["a", "b"], ["c", "d"]], "must hold numbers")],
)
def test_lists_that_are_no_image_are_refused(small, image, message):
    with pytest.raises(ImageShapeError, match=message):
        segment(small, image)


@pytest.mark.parametrize("tile", [60.0, 60.5, "60", (60, 60.0), (60,) * 4, 0, -60, True])
def test_a_tile_that_is_not_a_whole_number_of_pixels_is_refused(small, tile):
    with pytest.raises(InvalidTileSize, match="whole number of pixels"):
        segment(small, np.zeros((30, 30), np.float32), tile=tile)


def test_numpy_integer_tiles_are_accepted(small):
    labels = segment(small, np.zeros((30, 30), np.float32), tile=np.int64(60), device="cpu")
    assert labels.shape == (30, 30)


def test_a_tile_beyond_the_memory_budget_is_refused_before_allocating(small, monkeypatch):
    import napari_unet.core.tiling as tiling

    def never(*args, **kwargs):
        raise AssertionError("a tile was extracted")

    monkeypatch.setattr(tiling, "extract_tile", never)
    message = r"about 20.0 MiB .* more than memory_bytes \(1.0 MiB\): use a tile of at most 128 px"
    with pytest.raises(InvalidTileSize, match=message):  # fp32: bf16 (auto on some CPUs) needs half
        segment(small, np.zeros((30, 30), np.float32), tile=572, memory_bytes=1 << 20, precision="fp32")
    with pytest.raises(InvalidTileSize, match="more than this machine's memory"):
        segment(small, np.zeros((30, 30), np.float32), tile=4_000_000)


def test_a_huge_tile_on_the_command_line_is_one_line(tmp_path, small, capsys):
    save_model(small, tmp_path / "m.safetensors")
    np.save(tmp_path / "img.npy", np.zeros((30, 30), np.float32))
    files = [str(tmp_path / "m.safetensors"), str(tmp_path / "img.npy")]
    code = main(["segment", *files, "--out-dir", str(tmp_path / "o"), "--tile", "4000000"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("napari-unet: error:") and "for activations" in err[-1]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("device", ["meta", "xpu", "xpu:0", "cuda:banana", "hpu"])
def test_unsupported_devices_are_refused_and_leave_the_weights_alone(small, device):
    before = {k: v.clone() for k, v in small.state_dict().items()}
    image, labels = synthetic_nuclei((64, 64), seed=1)
    with pytest.raises(ConfigError, match="device"):
        predict(small, image, device=device)
    with pytest.raises(ConfigError, match="device"):
        train(small, [image], [labels], steps=1, device=device)
    for name, tensor in small.state_dict().items():
        assert tensor.device.type == "cpu" and torch.equal(tensor, before[name]), name
    assert small.training  # not switched to eval either


@pytest.mark.parametrize(
    ("option", "message"), [("--depth", "depth must be between 1 and 6"), ("--base-channels", "base_channels")]
)
def test_a_zero_sized_network_is_one_line(tmp_path, capsys, option, message):
    image, labels = synthetic_nuclei((64, 64), seed=1)
    np.save(tmp_path / "img.npy", image)
    np.save(tmp_path / "lab.npy", labels)
    argv = ["train", str(tmp_path / "img.npy"), "--labels", str(tmp_path / "lab.npy"), "--out", str(tmp_path / "m")]
    code = main([*argv, option, "0", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]


def test_nan_w0_on_the_command_line_is_one_line(tmp_path, capsys):
    np.save(tmp_path / "lab.npy", np.zeros((8, 8), np.int32))
    code = main(["weights", str(tmp_path / "lab.npy"), "--out-dir", str(tmp_path / "o"), "--w0", "nan"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "w0 must be a finite number" in err[0]


def test_a_hostile_model_header_on_the_command_line_is_one_line(tmp_path, small, capsys):
    import json

    path = tmp_path / "m.safetensors"
    save_model(small, path)
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header["__metadata__"]["napari_unet"] = json.dumps({"format": "napari-unet", "version": 1, "state": {"x": 1}})
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + size :])
    code = main(["info", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "m.safetensors" in err[0]


@pytest.mark.parametrize("shape", [(2, 2), (300, 1), (1, 40)])
def test_images_smaller_than_one_pooling_grid_are_segmented(shape, rng):
    model = UNet(base_channels=2, depth=3)  # a grid of 8 px: the tile reaches beyond the image, mirrored
    labels = segment(model, rng.random(shape).astype(np.float32))
    assert labels.shape == shape


def test_a_trailing_axis_of_one_is_the_channel_not_planes_one_pixel_wide(small, rng):
    image = rng.random((30, 34)).astype(np.float32)
    np.testing.assert_array_equal(segment(small, image[..., None]), segment(small, image))
    assert channels_before_spatial(np.zeros((4, 30, 34, 1)), 1, None, 3).shape == (1, 4, 30, 34)
    assert channels_before_spatial(np.zeros((5, 30, 34, 1)), 1).shape == (5, 1, 30, 34)


@pytest.mark.parametrize("shape", [(30, 34, 2), (3, 30, 34, 4)])
def test_a_few_channels_last_for_a_one_channel_model_are_refused_not_segmented_as_thin_planes(small, rng, shape):
    """(H, W, 2) was segmented as H planes 2 px wide, without a word."""
    with pytest.raises(ImageShapeError, match=rf"looks like {shape[-1]} channels last .* image\[\.\.\., 0\]"):
        segment(small, rng.random(shape).astype(np.float32))


def test_segment_takes_a_model_path_a_tensor_and_instance_settings_as_a_dict(tmp_path, small, rng):
    image = rng.random((30, 34)).astype(np.float32)
    save_model(small, tmp_path / "m.safetensors")
    expected = segment(small, image)
    np.testing.assert_array_equal(segment(str(tmp_path / "m.safetensors"), image), expected)
    np.testing.assert_array_equal(segment(small, torch.from_numpy(image)), expected)
    np.testing.assert_array_equal(predict(small, torch.from_numpy(image)), predict(small, image))
    by_dict = segment(small, image, instances={"split": 0.0, "min_size": 3})
    settings = dataclasses.replace(small.spec.instances, split=0.0, min_size=3)
    np.testing.assert_array_equal(by_dict, segment(small, image, instances=settings))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda small, image: segment(small, image, instances={"splitt": 0.5}), "unknown InstanceConfig setting"),
        (lambda small, image: segment(small, image, instances=0.5), "instances must be an InstanceConfig or a dict"),
        (lambda small, image: segment("missing.safetensors", image), "cannot read model file missing.safetensors"),
        (lambda small, image: predict(small.state_dict(), image), "model must be a napari_unet.UNet or the path"),
        (lambda small, image: save_model(torch.nn.Linear(2, 2), "x.safetensors"), "model must be a napari_unet.UNet"),
        (lambda small, image: train(small, image, image > 0.5, tile=(60, 60, 60)), "2D network trains on square"),
        (lambda small, image: train(small, image, image > 0.5, seed=-1), "seed must be >= 0"),
        (lambda small, image: train(small, image, image > 0.5, tile=0), "tile sizes must be >= 1"),
        (lambda small, image: weight_map(image > 0.5, spacing=(1.0, 1.0, 1.0)), "needs 2 positive values"),
        (lambda small, image: nu.write_image("x.tif", image, spacing=(0, 1)), "needs 3 positive values"),
        (lambda small, image: nu.write_image("x.tif", image, pixel_size_of="none.tif"), "no file at none.tif"),
    ],
)
def test_wrong_model_and_instance_arguments_are_one_clear_error(small, rng, call, message):
    with pytest.raises(nu.NapariUnetError, match=message):
        call(small, rng.random((30, 34)).astype(np.float32))


def test_train_takes_image_and_label_paths_as_segment_does(tmp_path):
    image, labels = synthetic_nuclei((96, 96), seed=2)
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "labels.npy", labels)
    models = []
    for images, annotations in [([image], [labels]), (str(tmp_path / "image.npy"), tmp_path / "labels.npy")]:
        torch.manual_seed(0)
        models.append(UNet(base_channels=2, depth=2))
        train(models[-1], images, annotations, steps=1, tile=60, device="cpu", seed=0)
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ModelConfig(depth=10), "depth must be between 1 and 6, got 10"),
        (lambda: WeightMapConfig(sigma=0.0), "sigma (the width of the border weight in px) must be > 0, got 0"),
        (lambda: WeightMapConfig(w0=-1.0), "w0 (the weight of the borders between cells) must be >= 0, got -1"),
        (lambda: NormalizationConfig(low=50.0, high=10.0), "low < high <= 100, got low 50.0, high 10.0"),
    ],
)
def test_setting_errors_name_the_value_not_the_whole_record(make, message):
    with pytest.raises(ConfigError) as error:
        make()
    assert message in str(error.value) and "Config(" not in str(error.value)


def test_an_image_and_labels_with_a_trailing_axis_of_one_train_as_the_plane(tmp_path):
    image, labels = synthetic_nuclei((96, 96), seed=2)
    models = []
    for pair in [(image, labels), (image[..., None], labels[..., None])]:
        torch.manual_seed(0)
        models.append(UNet(base_channels=2, depth=2))
        train(models[-1], *pair, steps=1, tile=60, device="cpu", seed=0)
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.equal(a, b), name


def test_training_without_labels_is_an_input_error_not_a_type_error():
    """``nu.train(model, image, None)`` ended in "'NoneType' object is not iterable"."""
    image, labels = nu.synthetic_nuclei((64, 64), seed=0)
    with pytest.raises(nu.NapariUnetError, match="a list of them, got NoneType"):
        nu.train(nu.UNet(base_channels=2, depth=2), image, None, steps=1)
    with pytest.raises(nu.NapariUnetError, match="got int"):
        nu.train(nu.UNet(base_channels=2, depth=2), 3, labels, steps=1)


def test_nested_settings_of_the_wrong_kind_are_refused_by_name():
    """Records find the classes of their nested records in their own module."""
    with pytest.raises(ConfigError, match="ModelSpec.model must be ModelConfig settings, got 'x'"):
        ModelSpec(model="x")
    with pytest.raises(ConfigError, match="TrainConfig.augment must be AugmentConfig settings, got 3"):
        TrainConfig(augment=3)


def colour_label_files(folder, labels: np.ndarray) -> list:
    """The same labels saved as an RGB TIFF, a planar RGB TIFF and a palette PNG."""
    import tifffile
    from PIL import Image

    grey = labels.astype(np.uint8)
    rgb = np.stack([grey] * 3, axis=-1)
    tifffile.imwrite(folder / "rgb.tif", rgb, photometric="rgb")
    tifffile.imwrite(folder / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    Image.fromarray(grey, mode="L").convert("P").save(folder / "palette.png")
    return [(folder / "rgb.tif", "RGB"), (folder / "planar.tif", "RGB"), (folder / "palette.png", "indexed")]


def test_label_files_that_store_colours_are_refused_as_such(tmp_path, capsys):
    """An RGB annotation made a 3-pixel-wide volume of weights; a palette PNG (what
    annotation tools export) was refused as "an image"."""
    image, labels = synthetic_nuclei((64, 64), seed=1)
    np.save(tmp_path / "image.npy", image)
    for path, kind in colour_label_files(tmp_path, labels):
        message = f"stores colours \\({kind}.*\\), not label ids"
        with pytest.raises(nu.NapariUnetError, match=message):
            train(UNet(base_channels=2, depth=1), str(tmp_path / "image.npy"), path, steps=1, device="cpu")
        assert main(["weights", str(path), "--out-dir", str(tmp_path / "w")]) != 0
        error = capsys.readouterr().err
        assert f"stores colours ({kind}" in error and "Traceback" not in error
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())


def test_segment_reads_channels_where_the_tiff_names_them(tmp_path, capsys):
    """A 3-channel model took the Z axis of an ImageJ stack of 3 planes for colours,
    and a 1-channel model segmented a planar RGB TIFF as 3 planes."""
    import tifffile

    rng = np.random.default_rng(0)
    planes = (rng.random((3, 40, 48)) * 1000).astype(np.float32)
    tifffile.imwrite(tmp_path / "zyx.tif", planes, imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "planar.tif", planes.astype(np.uint8), photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "unnamed.tif", planes, photometric="minisblack")  # no names: the shape decides
    for channels in (1, 3):
        save_model(UNet(in_channels=channels, base_channels=2, depth=1), tmp_path / f"m{channels}.safetensors")

    def segment_file(model, name):
        out = tmp_path / f"out_{model}_{name}"
        code = main(["segment", str(tmp_path / f"{model}.safetensors"), str(tmp_path / name), "--out-dir", str(out)])
        return code, capsys.readouterr().err, out / f"{Path(name).stem}_labels.tif"

    code, error, _ = segment_file("m3", "zyx.tif")
    assert code != 0 and "names its axes ZYX and none of them holds channels" in error
    code, error, _ = segment_file("m1", "planar.tif")
    assert code != 0 and "is RGB" in error
    for name in ("planar.tif", "unnamed.tif"):  # one 2D image of 3 channels
        code, error, labels = segment_file("m3", name)
        assert code == 0, error
        assert tifffile.imread(labels).shape == (40, 48)


def test_a_one_channel_model_refuses_a_tiff_that_names_several_channels(tmp_path, capsys):
    """A ZCYX stack of 2 channels went to a one-channel 3D model as 8 volumes of 2
    planes ("173 objects in 32 volumes"), and to a 2D model as planes, without a word."""
    import tifffile

    stack = np.random.default_rng(0).random((8, 2, 40, 40)).astype(np.float32)
    tifffile.imwrite(tmp_path / "zcyx.tif", stack, imagej=True, metadata={"axes": "ZCYX"})
    tifffile.imwrite(tmp_path / "zyx.tif", stack[:, 0], imagej=True, metadata={"axes": "ZYX"})
    for ndim in (2, 3):
        save_model(UNet(ndim=ndim, base_channels=2, depth=1), tmp_path / "m.safetensors")
        command = ["segment", str(tmp_path / "m.safetensors"), "--out-dir", str(tmp_path / f"out{ndim}")]
        assert main([*command[:2], str(tmp_path / "zcyx.tif"), *command[2:]]) == 2
        error = capsys.readouterr().err
        assert "the model takes images of 1 channel, and the file names its axes ZCYX with 2 channels (C)" in error
        assert main([*command[:2], str(tmp_path / "zyx.tif"), *command[2:]]) == 0  # one channel: as before
    both = ["segment", str(tmp_path / "m.safetensors"), str(tmp_path / "zyx.tif"), str(tmp_path / "zcyx.tif")]
    assert main([*both, "--out-dir", str(tmp_path / "both")]) == 2  # (a 3D model) before any output, by name
    assert f"{tmp_path / 'zcyx.tif'}: the model takes images of 1 channel" in capsys.readouterr().err
    assert not (tmp_path / "both").exists()
