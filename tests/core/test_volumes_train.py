"""Training on volumes: 3D augmentation keeps image, target and weights aligned,
crops hold annotation, unannotated planes add nothing to the loss."""

import numpy as np
import pytest
import torch

import napari_unet as nu
from napari_unet._sample_data import nuclei_volume
from napari_unet.core.augment import fold_coordinates
from napari_unet.core.augment3d import mirrored_grid, resample_volume, rigid_steps_3d, sampling_grid_3d
from napari_unet.core.config import IGNORE_LABEL, NormalizationConfig
from napari_unet.core.data import PreparedPlane, TrainingDataError, prepare
from napari_unet.core.geometry import model_axes
from napari_unet.core.label_checks import ids_changing_between_planes
from napari_unet.core.optimisation import weighted_cross_entropy
from napari_unet.core.samples import SampleStream, default_tile_for
from napari_unet.core.train_config import AugmentConfig, WeightMapConfig

NO_JITTER = dict(contrast=0.0, brightness=0.0, gamma=0.0)
RIGID = AugmentConfig(elastic=False, **NO_JITTER)


def ellipsoids(shape=(24, 48, 48), seed=0, n=4):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    labels = np.zeros(shape, np.int32)
    for index in range(1, n + 1):
        c = rng.uniform([4, 8, 8], np.array(shape) - [4, 8, 8])
        r = rng.uniform([3, 6, 6], [6, 11, 11])
        labels[(((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1)] = index
    image = (labels > 0) * 100.0 + rng.normal(0, 5, shape)
    return image.astype(np.float32), labels


def coded_volume(shape, code):
    """A prepared volume whose image and annotation hold ``code(z, y, x)`` (weights + 1)."""
    grid = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(np.float32)
    values = code(*grid).astype(np.float32)
    annotation = np.stack([values, values + 1])
    return PreparedPlane(image=values[None], annotation=annotation, annotated=np.arange(values.size))


def identity_grid_3d(tile, center):
    """Source coordinates (3, tz, ty, tx) of the unaugmented tile centred at ``center``."""
    grid = np.mgrid[: tile[0], : tile[1], : tile[2]].astype(np.float64)
    return grid + (np.asarray(center, dtype=np.float64) - (np.asarray(tile) - 1) / 2)[:, None, None, None]


def test_rigid_steps_are_flips_and_in_plane_quarter_turns(rng):
    volume = rng.normal(size=(9, 12, 12))
    tile, center = (5, 6, 6), (4.0, 5.5, 6.5)
    identity = identity_grid_3d(tile, center)
    crop = resample_volume(volume, identity, order=0)
    half = (np.asarray(tile) - 1) / 2
    for fz, fy, fx, k in [
        (True, False, False, 1),
        (False, True, True, 3),
        (True, True, False, 2),
        (False, False, True, 0),
    ]:
        expected = crop
        for axis, flip in enumerate((fz, fy, fx)):
            expected = np.flip(expected, axis) if flip else expected
        steps = rigid_steps_3d(fz, fy, fx, k)
        coords = np.asarray(center)[:, None, None, None] + np.tensordot(
            steps, identity_grid_3d(tile, half) - half[:, None, None, None], 1
        )
        np.testing.assert_array_equal(resample_volume(volume, coords, order=0), np.rot90(expected, k, axes=(1, 2)))


def test_rigid_3d_samples_keep_image_target_and_weights_exactly_aligned():
    shape = (30, 40, 40)
    volume = coded_volume(shape, lambda z, y, x: z * 10_000 + y * 100 + x)
    stream = SampleStream([volume], (28, 44, 44), 1, RIGID, seed=0)
    context, output = stream.context, stream.output
    inner = tuple(slice(c, c + o) for c, o in zip(context, output))
    seen = set()
    for index in range(40):
        image, target, weights, _ = stream.sample(index)
        assert image.shape == (1, 28, 44, 44) and target.shape == weights.shape == output
        np.testing.assert_allclose(image[0][inner], target, atol=0.05)  # nearest and trilinear agree on the grid
        np.testing.assert_array_equal(weights, target + 1)
        dz = np.diff(target, axis=0)[0, 0, 0]
        dy, dx = np.diff(target, axis=1)[0, 0, 0], np.diff(target, axis=2)[0, 0, 0]
        seen.add((dz, dy, dx))
    assert {abs(v) for v in seen.pop()} <= {1, 100, 10_000} and len(seen) >= 8  # flips and turns of every axis


def test_elastic_3d_samples_stay_aligned_within_rounding():
    """A linear image is interpolated exactly; the nearest target may be half a voxel off."""
    shape = (40, 64, 64)
    volume = coded_volume(shape, lambda z, y, x: 3.0 * z + 2.0 * y + x)
    config = AugmentConfig(elastic=True, elastic_std=2.0, **NO_JITTER)
    stream = SampleStream([volume], (28, 44, 44), 1, config, seed=1)
    inner = tuple(slice(c, c + o) for c, o in zip(stream.context, stream.output))
    moved = 0.0
    for index in range(6):
        image, target, weights, _ = stream.sample(index)
        assert np.abs(image[0][inner] - target).max() <= 0.5 * (3 + 2 + 1) + 1e-3
        np.testing.assert_array_equal(weights, target + 1)
        moved = max(moved, np.abs(np.diff(image[0], axis=1) ** 2 - 4).max())
    assert moved > 0.01  # the field did deform the grid


def test_elastic_field_is_smooth_and_physical_along_z():
    elastic = AugmentConfig(flips=False, rotations=False, grid=3, elastic_std=10.0)

    def field(tile, seed, spacing=None):
        center = (20.0, 20.0, 20.0)
        grid = sampling_grid_3d(tile, center, np.random.default_rng(seed), elastic, spacing)
        return grid - identity_grid_3d(tile, center)

    smooth = field((20, 30, 30), 0)
    # nodes 14.5 voxels apart: neighbouring voxels move by a fraction of the std (a field
    # drawn voxel by voxel would jump by about 14)
    assert smooth.shape == (3, 20, 30, 30) and np.abs(np.diff(smooth, axis=3)).max() < 5.0
    iso = [field((9, 9, 9), s)[:, ::4, ::4, ::4] for s in range(30)]
    aniso = [field((9, 9, 9), s, (2.5, 1.0, 1.0))[:, ::4, ::4, ::4] for s in range(30)]
    # fewer voxels along coarse z
    np.testing.assert_allclose(np.stack(aniso)[:, 0], np.stack(iso)[:, 0] / 2.5, atol=1e-5)
    np.testing.assert_allclose(np.stack(aniso)[:, 1:], np.stack(iso)[:, 1:], atol=1e-5)
    assert 7 < np.std(np.stack(iso)) < 13


def test_zoom_scales_a_volume_sample_alike_on_every_axis(rng):
    zz, yy, xx = np.mgrid[:41, :41, :41]
    ball = ((zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 <= 10**2).astype(np.int32)
    config = AugmentConfig(elastic=False, flips=False, rotations=False, zoom=0.3)
    radii = []
    for _ in range(20):
        sample = resample_volume(ball, sampling_grid_3d((41, 41, 41), (20, 20, 20), rng, config), order=0)
        extents = [np.ptp(np.flatnonzero(np.moveaxis(sample, axis, 0).any(axis=(1, 2)))) for axis in range(3)]
        assert max(extents) - min(extents) <= 1  # one factor for z, y and x
        radii.append(np.cbrt(sample.sum() * 3 / (4 * np.pi)))
    assert 10 * np.exp(-0.3) - 0.5 <= min(radii) < 9.5 and 10.5 < max(radii) <= 10 * np.exp(0.3) + 0.5


def test_the_image_grid_is_the_float64_mirror_fold_scaled_for_grid_sample(rng):
    """Far outside, on the edges and inside, along axes of 1 to 97 voxels: within a few
    float32 roundings of folding in float64 and scaling to [-1, 1], in (x, y, z) order."""
    spatial = (1, 9, 97)
    coords = np.stack(
        [rng.uniform(-300, 300, (6, 7, 8)), rng.integers(-40, 50, (6, 7, 8)), rng.uniform(-5, 101, (6, 7, 8))]
    ).astype(np.float32)
    coords[2, 0, 0, :3] = (0.0, 96.0, 192.0)  # the edges and a whole period out
    grid = mirrored_grid(coords, spatial)
    assert grid.shape == (6, 7, 8, 3) and grid.dtype == np.float32
    for axis, size in enumerate(spatial[1:], start=1):  # (grid_sample reads an axis of one voxel anywhere)
        expected = fold_coordinates(coords[axis], size) * (2.0 / (size - 1)) - 1.0
        np.testing.assert_allclose(grid[..., 2 - axis], expected, atol=3e-7)
    np.testing.assert_allclose(grid[0, 0, :3, 0], (-1.0, 1.0, -1.0), atol=1e-7)


def test_a_volume_sample_has_the_same_values_on_any_number_of_threads(rng):
    """The image's trilinear sampling splits the tile's planes into bands over the
    threads (a grid_sample call spreads a stack, not one volume); bands join seamlessly."""
    volume = rng.random((2, 12, 30, 26), dtype=np.float32)
    coords = sampling_grid_3d((12, 20, 20), (5.5, 14.0, 13.0), rng, AugmentConfig())
    alone = resample_volume(volume, coords, order=1, threads=1)
    assert alone.shape == (2, 12, 20, 20) and alone.dtype == np.float32
    for threads in (None, 2, 3, 5, 100):
        assert np.array_equal(resample_volume(volume, coords, order=1, threads=threads), alone), threads


def test_samples_are_seeded_by_index():
    _, labels = ellipsoids()
    volume = coded_volume(labels.shape, lambda z, y, x: z + y + x)
    stream = SampleStream([volume], (28, 44, 44), 1, AugmentConfig(), seed=3)
    a, b = stream.sample(5), stream.sample(5)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    again = sampling_grid_3d((8, 8, 8), (4, 4, 4), np.random.default_rng(1), AugmentConfig())
    np.testing.assert_array_equal(
        again, sampling_grid_3d((8, 8, 8), (4, 4, 4), np.random.default_rng(1), AugmentConfig())
    )


def prepare_volume(image, labels, spacing=None):
    return prepare(
        [image],
        [labels],
        in_channels=1,
        normalization=NormalizationConfig(),
        weights=WeightMapConfig(),
        ndim=3,
        spacing=spacing,
    )


def test_unannotated_planes_contribute_no_loss():
    image, labels = ellipsoids((30, 48, 48))
    sparse = labels.copy()
    annotated_planes = [5, 10, 15, 20]
    sparse[np.setdiff1d(np.arange(30), annotated_planes)] = IGNORE_LABEL
    (volume,) = prepare_volume(image, sparse, spacing=(1.5, 1.0, 1.0))
    assert volume.weights[annotated_planes].min() > 0
    assert (np.delete(volume.weights, annotated_planes, axis=0) == 0).all()
    # where did each voxel of a sample come from? the same stream over a z-coded volume says
    z_coded = PreparedPlane(
        image=np.broadcast_to(np.arange(30.0, dtype=np.float32)[:, None, None], (1, 30, 48, 48)).copy(),
        annotation=volume.annotation,
        annotated=volume.annotated,
    )
    config = AugmentConfig(elastic_std=4.0, **NO_JITTER)
    stream = SampleStream([z_coded], (28, 44, 44), 1, config, seed=2, spacing=(1.5, 1.0, 1.0))
    inner = tuple(slice(c, c + o) for c, o in zip(stream.context, stream.output))
    batch = stream.batch(range(4))
    source_plane = np.floor(batch.image[:, 0][(slice(None), *inner)] + 0.5).astype(int)
    from_ignored = ~np.isin(source_plane, annotated_planes)
    assert from_ignored.any() and (~from_ignored).any()
    assert (batch.weights[from_ignored] == 0).all() and (batch.weights > 0).any()  # crops hold annotation
    logits = torch.randn(4, 2, *batch.target.shape[1:], requires_grad=True)
    target, weights = torch.from_numpy(batch.target), torch.from_numpy(batch.weights)
    loss = weighted_cross_entropy(logits, target, weights)
    loss.backward()
    assert (logits.grad.permute(1, 0, 2, 3, 4)[:, torch.from_numpy(from_ignored)] == 0).all()
    flipped = torch.where(torch.from_numpy(from_ignored), 1 - target, target)
    assert weighted_cross_entropy(logits, flipped, weights).item() == pytest.approx(loss.item(), rel=1e-6)


def test_crops_are_drawn_where_annotated_voxels_are():
    image, labels = ellipsoids((40, 48, 48), seed=1)
    sparse = np.full_like(labels, IGNORE_LABEL)
    sparse[[12, 13]] = labels[[12, 13]]
    (volume,) = prepare_volume(image, sparse)
    stream = SampleStream([volume], (28, 44, 44), 1, AugmentConfig(), seed=0)
    assert all((stream.sample(i)[2] > 0).any() for i in range(12))


def test_a_cell_given_a_new_id_on_the_next_plane_is_warned_about(caplog):
    """A new user presses "new cell" on every plane: one nucleus, two ids on planes 12
    and 13. A 3D target cuts the whole face they share, so they are named, and a
    volume with no cell left says why."""
    image, labels = ellipsoids((40, 48, 48), seed=1)
    sparse = np.full_like(labels, IGNORE_LABEL)
    sparse[[12, 13]] = labels[[12, 13]]
    assert ids_changing_between_planes(sparse) == []
    (volume,) = prepare_volume(image, sparse)
    assert volume.warnings == ()
    renamed = sparse.copy()
    cell = np.unique(renamed[12][renamed[12] > 0])[0]
    renamed[13][renamed[13] == cell] = renamed.max() + 1
    assert ids_changing_between_planes(renamed) == [(12, cell, renamed.max())]
    (volume,) = prepare_volume(image, renamed)
    assert len(volume.warnings) == 1 and f"cell {cell} on plane 12" in volume.warnings[0]
    assert volume.warnings[0] in caplog.text
    alone = np.where(renamed == cell, cell, np.where(renamed == renamed.max(), renamed.max(), 0))
    alone[renamed == IGNORE_LABEL] = IGNORE_LABEL
    with pytest.raises(TrainingDataError, match="no cell is left once the gaps.*on plane 12"):
        prepare_volume(image, alone)


def test_a_cap_resting_on_another_cell_is_not_taken_for_one_cell():
    labels = np.zeros((2, 20, 20), np.int32)
    labels[0, 2:18, 2:18] = 1  # the body of one cell
    labels[1, 8:12, 8:12] = 2  # the cap of the next, on top of it
    assert ids_changing_between_planes(labels) == []
    labels[1, 3:17, 3:17] = 2  # most of the same place: one cell with two ids
    assert ids_changing_between_planes(labels) == [(0, 1, 2)]
    zz, yy, xx = np.indices((12, 30, 30))  # two balls stacked along z, their caps meeting
    stacked = np.zeros((12, 30, 30), np.int32)
    stacked[((zz - 2.5) / 3.5) ** 2 + ((yy - 15) / 10) ** 2 + ((xx - 15) / 10) ** 2 <= 1] = 1
    stacked[((zz - 9) / 3.5) ** 2 + ((yy - 15) / 10) ** 2 + ((xx - 15) / 10) ** 2 <= 1] = 2
    assert ids_changing_between_planes(stacked) == []
    (_, _, _), (sample, _, _) = nuclei_volume()  # the 3D sample: 40 nuclei, some stacked
    assert ids_changing_between_planes(sample) == []


def test_a_3d_model_trains_and_segments_a_volume_from_a_few_planes():
    image, labels = ellipsoids((20, 40, 40), seed=2, n=3)
    sparse = np.full_like(labels, IGNORE_LABEL)
    sparse[::5] = labels[::5]
    torch.manual_seed(0)
    model = nu.UNet(ndim=3, spacing=(2.0, 1.0, 1.0), base_channels=2, depth=2, batch_norm=True, dropout=0.0)
    tile = default_tile_for(model.config, output=12)
    assert tile == tuple(nu.input_size_for_output(n, a) for n, a in zip((6, 12, 12), model_axes(model.config)))
    summary = nu.train(model, [image], [sparse], steps=3, batch_size=2, tile=tile, device="cpu", seed=0)
    assert summary.steps == 3 and np.isfinite(summary.final_loss)
    segmented = nu.segment(model, image, device="cpu")
    assert segmented.shape == image.shape and segmented.dtype == np.int32
