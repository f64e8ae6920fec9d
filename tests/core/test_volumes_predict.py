"""Overlap-tile prediction of volumes with 3D (also anisotropic) U-Nets, and stacks
labelled as volumes after a 2D model."""

import itertools

import numpy as np
import pytest
import torch

from napari_unet import UNet, iter_segment, predict, segment
from napari_unet.core import geometry
from napari_unet.core.config import InstanceConfig
from napari_unet.core.errors import ConfigError
from napari_unet.core.instances import probabilities_to_labels
from napari_unet.core.layout import ImageShapeError
from napari_unet.core.normalize import normalize
from napari_unet.core.object_size import in_voxels
from napari_unet.core.predict import PredictOptions, volume_labels
from napari_unet.core.tile_budget import plan_for
from napari_unet.core.tiling import extract_tile

from .lazy import dented_and_touching_nuclei


def small_3d(spacing=None, in_channels=1, batch_norm=False, depth=2):
    torch.manual_seed(4)
    model = UNet(ndim=3, spacing=spacing, in_channels=in_channels, base_channels=3, depth=depth, batch_norm=batch_norm)
    if batch_norm:  # running statistics that are not the identity
        model.train()
        with torch.no_grad():
            model(torch.randn(2, in_channels, 28, 60, 60) * 2 + 0.5)
    return model.eval()


def whole_volume_pass(model, volume):
    """One forward pass over the whole mirror-padded volume (the reference)."""
    data = normalize(volume[None] if volume.ndim == 3 else volume, model.spec.normalization)
    axes = geometry.model_axes(model.config)
    spatial = data.shape[1:]
    one_tile = geometry.plan_tiles(spatial, [geometry.input_size_for_output(n, a) for n, a in zip(spatial, axes)], axes)
    padded = torch.from_numpy(extract_tile(data, (0, 0, 0), one_tile)[None])
    with torch.no_grad():
        logits = model(padded)
    z, y, x = spatial
    return torch.softmax(logits, 1)[0, :, :z, :y, :x].numpy()


@pytest.mark.parametrize(
    ("spacing", "shape", "tile"),
    [
        (None, (23, 37, 30), 52),  # isotropic, cubes
        (None, (30, 21, 45), (44, 52, 60)),  # per-axis tile
        ((2.0, 1.0, 1.0), (19, 41, 33), (28, 52, 60)),  # z not pooled at the first level
        ((3.0, 1.0, 1.0), (9, 30, 50), (22, 56, 52)),  # z never pooled in depth 2: margin 8 along z
    ],
)
def test_tiled_volume_equals_a_whole_volume_pass(rng, spacing, shape, tile):
    model = small_3d(spacing)
    volume = rng.normal(size=shape).astype(np.float32)
    tiled = predict(model, volume, tile=tile, precision="fp32", device="cpu")
    plan = geometry.plan_tiles(shape, tile, geometry.model_axes(model.config))
    assert plan.n_tiles > 1 and all(g > 1 for g in plan.grid)  # tiles along every axis, mirrored at every border
    assert tiled.shape == (2, *shape)
    assert np.abs(tiled - whole_volume_pass(model, volume)).max() <= 1e-5


def test_batch_norm_network_tiles_exactly_and_batches_tiles(rng):
    model = small_3d((2.0, 1.0, 1.0), in_channels=2, batch_norm=True)
    volume = rng.normal(size=(2, 17, 40, 35)).astype(np.float32)  # (C, Z, Y, X)
    one_by_one = predict(model, volume, tile=(28, 52, 52), batch_size=1, precision="fp32")
    batched = predict(model, volume, tile=(28, 52, 52), batch_size=5, precision="fp32")
    assert np.abs(one_by_one - whole_volume_pass(model, volume)).max() <= 1e-5
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    channels_last = predict(model, np.moveaxis(volume, 0, -1), tile=(28, 52, 52), precision="fp32")
    np.testing.assert_allclose(channels_last, one_by_one, atol=1e-6)


def test_valid_sizes_per_axis_are_what_the_network_accepts():
    model = small_3d((2.0, 1.0, 1.0), depth=3)
    axes = geometry.model_axes(model.config)
    z_axis, y_axis = axes[0], axes[1]
    assert y_axis == 3 and not isinstance(z_axis, int)  # y, x are standard depth-3 axes, z is not
    assert geometry.step(z_axis) == 4 and geometry.margin(z_axis) == geometry.margin(2) == 40  # a depth-2 axis
    for z in range(geometry.smallest_input(z_axis) - 3, geometry.smallest_input(z_axis) + 10):
        ok = geometry.is_valid_size(z, z_axis)
        x = torch.zeros(1, 1, z, 92, 92)
        if ok:
            with torch.no_grad():
                out = model(x)
            assert out.shape[2] == geometry.output_size(z, z_axis) and out.shape[3:] == (4, 4)
        else:
            with pytest.raises(geometry.InvalidTileSize, match="this axis"):
                geometry.output_size(z, z_axis)


def test_an_invalid_tile_size_names_its_axis():
    model = small_3d((2.0, 1.0, 1.0))
    with pytest.raises(geometry.InvalidTileSize, match=r"^tile along z: 41 px is not a valid tile size"):
        predict(model, np.zeros((20, 64, 64), np.float32), tile=(41, 92, 92), device="cpu")
    with pytest.raises(geometry.InvalidTileSize, match=r"^tile along x: 93 px"):
        geometry.plan_tiles((20, 64, 64), (40, 92, 93), geometry.model_axes(model.config))
    with pytest.raises(geometry.InvalidTileSize, match=r"^93 px is not a valid tile size for a depth-3"):
        geometry.plan_tiles((64, 64), 93, 3)  # one size for both axes of a plane: nothing to name


def test_volume_tile_is_chosen_within_the_memory_budget():
    model = small_3d((2.0, 1.0, 1.0))
    options = PredictOptions(memory_bytes=20_000_000)
    plan, batch = plan_for(model, (60, 256, 256), torch.device("cpu"), options)
    per_voxel = 32 * model.config.base_channels
    assert np.prod(plan.tile) * batch * per_voxel <= 20_000_000
    assert plan.n_tiles > 1 and plan == geometry.best_tile((60, 256, 256), plan.axes, 20_000_000 // per_voxel)


def test_segment_gives_one_3d_labels_volume_and_stacks_of_volumes(rng):
    model = small_3d()
    volume = rng.normal(size=(12, 20, 18)).astype(np.float32)
    labels, probabilities = segment(model, volume, return_probabilities=True, precision="fp32")
    assert labels.shape == volume.shape and labels.dtype == np.int32 and probabilities.shape == (2, 12, 20, 18)
    stack = segment(model, np.stack([volume, volume[::-1]]), precision="fp32")
    assert stack.shape == (2, 12, 20, 18)
    np.testing.assert_array_equal(stack[0], labels)


def _two_blobs_across_planes() -> np.ndarray:
    """Probabilities (Z=6, K=2, 24, 24) of a 2D model for a stack: a ball over planes
    1-4 and a smaller blob over planes 0-1, apart from each other."""
    zz, yy, xx = np.mgrid[:6, :24, :24]
    foreground = np.zeros((6, 24, 24), np.float32)
    foreground[((zz - 2.5) / 2.2) ** 2 + ((yy - 7) / 5) ** 2 + ((xx - 7) / 5) ** 2 <= 1] = 0.9
    foreground[(zz <= 1) & ((yy - 17) ** 2 + (xx - 17) ** 2 <= 9)] = 0.9
    return np.stack([1 - foreground, foreground], axis=1)


def test_a_2d_model_labels_a_stack_as_one_volume(monkeypatch):
    probabilities = _two_blobs_across_planes()

    def fixed_prediction(model, image, **options):
        return np.broadcast_to(probabilities, (*image.shape[:-3], *probabilities.shape)).copy()
        yield  # a generator, like iter_predict

    monkeypatch.setattr("napari_unet.core.predict.iter_predict", fixed_prediction)
    model = UNet(base_channels=2, depth=2)
    instances = InstanceConfig(min_size=1)
    stack = np.zeros((6, 24, 24), np.float32)
    plane_by_plane = segment(model, stack, instances=instances)
    assert plane_by_plane[1].max() == 2 and plane_by_plane[3].max() == 1  # every plane numbered from 1
    assert plane_by_plane[1, 7, 7] == 1 and plane_by_plane[1, 17, 17] == 2 and plane_by_plane[0, 17, 17] == 1
    labels = segment(model, stack, instances=instances, as_volume=True)
    assert labels.shape == (6, 24, 24) and labels.dtype == np.int32 and labels.max() == 2
    ball = labels[1:5, 7, 7]
    assert (ball == ball[0]).all() and ball[0] > 0 and (labels[:2, 17, 17] == labels[0, 17, 17]).all()
    assert ball[0] != labels[0, 17, 17]
    volume = probabilities.transpose(1, 0, 2, 3)  # (K, Z, Y, X)
    np.testing.assert_array_equal(labels, probabilities_to_labels(volume, in_voxels(instances), 3))
    volumes = segment(model, np.zeros((2, 6, 24, 24), np.float32), instances=instances, as_volume=True)
    assert volumes.shape == (2, 6, 24, 24)  # a stack of volumes: each labelled on its own
    np.testing.assert_array_equal(volumes[1], labels)
    for one_plane in (np.zeros((24, 24), np.float32), np.zeros((1, 24, 24), np.float32)):  # (1, Y, X) got 0 objects
        with pytest.raises(ConfigError, match=r"needs a stack of planes .* is one plane"):
            segment(model, one_plane, instances=instances, as_volume=True)
    with pytest.raises(ConfigError, match=r"holds volumes of one plane each \(z, axis 1\)"):
        segment(model, np.zeros((3, 1, 24, 24), np.float32), instances=instances, as_volume=True)


def test_labelling_as_a_volume_wires_the_real_prediction_through(rng):
    torch.manual_seed(0)
    model = UNet(base_channels=2, depth=2).eval()
    stack = rng.normal(size=(5, 30, 30)).astype(np.float32)
    foreground = predict(model, stack, precision="fp32")[:, 1]
    instances = InstanceConfig(threshold=float(np.median(foreground)), min_size=1)
    labels, probabilities = segment(
        model, stack, instances=instances, as_volume=True, return_probabilities=True, precision="fp32"
    )
    assert probabilities.shape == (5, 2, 30, 30)
    np.testing.assert_array_equal(labels, volume_labels(probabilities, instances))
    ids_per_plane = [set(np.unique(plane)) - {0} for plane in labels]
    assert labels.max() > 1 and any(a & b for a, b in itertools.pairwise(ids_per_plane))


def test_the_split_by_shape_measures_a_stacks_or_a_3d_models_spacing(monkeypatch):
    dented, _ = dented_and_touching_nuclei()
    planes = np.stack([~dented, dented], axis=1).astype(np.float32)  # (Z, K, Y, X), as a 2D model gives them

    def fixed_prediction(model, image, **options):
        return planes if model.config.ndim == 2 else np.ascontiguousarray(planes.transpose(1, 0, 2, 3))
        yield  # a generator, like iter_predict

    monkeypatch.setattr("napari_unet.core.predict.iter_predict", fixed_prediction)
    instances = InstanceConfig(min_fill=0.999, neck=1.5, min_piece=50, split=0, min_size=1)
    stack = np.zeros(dented.shape, np.float32)
    flat = UNet(base_channels=2, depth=2)
    assert segment(flat, stack, instances=instances, as_volume=True).max() == 2  # voxels taken as cubes
    assert segment(flat, stack, instances=instances, as_volume=True, spacing=(0.25, 1, 1)).max() == 1
    assert segment(small_3d(), stack, instances=instances).max() == 2
    assert segment(small_3d((1.0, 4.0, 4.0)), stack, instances=instances).max() == 1  # the model's spacing
    with pytest.raises(ConfigError, match="three positive voxel sizes"):
        segment(flat, stack, as_volume=True, spacing=(0.25, 1))
    with pytest.raises(ConfigError, match="applies with as_volume"):
        segment(flat, stack, spacing=(0.25, 1, 1))


@pytest.mark.parametrize(
    ("model", "image", "message"),
    [
        (small_3d(), np.zeros((8, 20, 20), np.float32), "2D models"),
        (UNet(base_channels=2, depth=2), np.zeros((30, 30), np.float32), "one plane"),
        (UNet(in_channels=2, base_channels=2, depth=2), np.zeros((2, 30, 30), np.float32), "one plane"),
    ],
)
def test_labelling_as_a_volume_is_refused_before_any_work(model, image, message):
    run = iter_segment(model, image, as_volume=True)
    with pytest.raises(ConfigError, match=message):
        next(run)


def test_an_rgb_volume_for_a_one_channel_3d_model_gets_the_rgb_message():
    with pytest.raises(ImageShapeError, match="is RGB: use a model trained on RGB images"):
        predict(small_3d(), np.zeros((8, 20, 20, 3), np.uint8))


def test_a_single_plane_for_a_3d_model_is_refused_with_what_to_use_instead():
    with pytest.raises(ImageShapeError, match=r"a 3D U-Net needs a volume \(Z, Y, X\).*use a 2D network"):
        segment(small_3d(), np.zeros((20, 20), np.float32))


def test_unrelated_planes_are_told_apart_from_a_volume():
    from napari_unet.core.instances import unrelated_planes_note
    from napari_unet.core.synthetic import synthetic_nuclei
    from napari_unet.core.synthetic_volume import synthetic_volume

    separate_images = np.stack([synthetic_nuclei((128, 128), seed=seed)[1] for seed in range(4)])
    assert "do not look like one volume" in unrelated_planes_note(separate_images)
    volume = synthetic_volume(seed=0)[1]
    assert unrelated_planes_note(volume) is None
    assert unrelated_planes_note(volume[::3]) is None  # planes 6 voxels apart still share their objects
    assert unrelated_planes_note(np.ones((3, 8, 8), np.int32)) is None  # all foreground: no judgement


def test_labelling_unrelated_planes_as_a_volume_says_so_not_what_to_rescale(monkeypatch, caplog):
    """Separate images labelled as a volume made objects that the size check took for
    cells at another magnification, and it advised a rescale."""
    from napari_unet.core.synthetic import synthetic_nuclei

    separate_images = np.stack([synthetic_nuclei((64, 64), seed=seed)[1] for seed in range(4)])
    monkeypatch.setattr("napari_unet.core.predict.volume_labels", lambda *args: separate_images)
    with caplog.at_level("WARNING", logger="napari_unet"):
        segment(UNet(base_channels=2, depth=2), np.zeros((4, 64, 64), np.float32), as_volume=True)
    assert "do not look like one volume" in caplog.text and "rescale" not in caplog.text
