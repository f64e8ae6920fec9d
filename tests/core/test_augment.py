import itertools

import numpy as np
import pytest
from scipy import ndimage

from napari_unet.core.augment import (
    apply_jitter,
    bicubic_upsample,
    draw_jitter,
    fold_coordinates,
    resample_cubic,
    resample_nearest,
    rigid_steps,
    sampling_grid,
    tile_center,
    zoom_factor,
)
from napari_unet.core.config import IGNORE_LABEL
from napari_unet.core.tiling import reflect_index
from napari_unet.core.train_config import AugmentConfig

STILL = AugmentConfig(elastic=False, flips=False, rotations=False, contrast=0.0, brightness=0.0, gamma=0.0)
RIGID = AugmentConfig(elastic=False)


def smooth_image(rng, shape, sigma=2.0):
    return ndimage.gaussian_filter(rng.standard_normal(shape), sigma)


def identity_grid(tile_hw, center_yx):
    """Source coordinates (2, th, tw) of the unaugmented tile centred at ``center_yx``."""
    rows, cols = np.mgrid[: tile_hw[0], : tile_hw[1]].astype(np.float64)
    return np.stack([rows + center_yx[0] - (tile_hw[0] - 1) / 2, cols + center_yx[1] - (tile_hw[1] - 1) / 2])


def rigid_grid(tile_hw, center_yx, flip_y, flip_x, k):
    """The grid of :func:`rigid_steps` about the tile centre."""
    half = np.array([(tile_hw[0] - 1) / 2, (tile_hw[1] - 1) / 2])
    return np.asarray(center_yx)[:, None, None] + np.tensordot(
        rigid_steps(flip_y, flip_x, k), identity_grid(tile_hw, half) - half[:, None, None], 1
    )


def nearest(array, coords):
    """``array`` (H, W) or (C, H, W) read at its pixels nearest to ``coords`` (2, th, tw),
    through the training sampler's :func:`resample_nearest` (float32)."""
    planes = np.asarray(array, np.float32).reshape(-1, *np.shape(array)[-2:])
    out = resample_nearest(planes, coords)
    return out if np.ndim(array) == 3 else out[0]


def jitter_intensity(image, rng, config):
    """One sample's gray-value jitter as the sampler draws and applies it, on a copy."""
    return apply_jitter(np.array(image, dtype=np.float32), *draw_jitter(rng, config))


def coarse_nodes(size, grid):
    """The tile rows (or columns) on which the coarse displacement nodes sit."""
    return np.linspace(0, size - 1, grid).round().astype(int)


def dihedral_set(tile):
    """The 8 flips/rotations of a square tile (4 when it is not square)."""
    rotations = (0, 1, 2, 3) if tile.shape[0] == tile.shape[1] else (0, 2)
    return [np.rot90(tile, k) for k in rotations] + [np.rot90(np.flip(tile, 0), k) for k in rotations]


def matching_transform(tile, candidates):
    matches = [i for i, c in enumerate(candidates) if c.shape == tile.shape and np.array_equal(c, tile)]
    assert len(matches) == 1
    return matches[0]


# --- identity ---------------------------------------------------------------------


def test_no_augmentation_is_identity_resampling(rng):
    image = smooth_image(rng, (40, 50)).astype(np.float32)
    labels = rng.integers(-1, 6, (40, 50)).astype(np.int32)
    center = tile_center((5, 7), (24, 31))
    coords = sampling_grid((24, 31), center, rng, STILL)
    assert coords.dtype == np.float32 and coords.shape == (2, 24, 31)
    assert np.array_equal(nearest(labels, coords), labels[5:29, 7:38])
    np.testing.assert_allclose(resample_cubic(image[None], coords)[0], image[5:29, 7:38], atol=1e-5)


def test_coordinates_are_y_then_x():
    ramp = np.add.outer(0.5 * np.arange(30.0), 0.25 * np.arange(40.0)).astype(np.float32)[None]
    coords = np.stack([np.full((3, 3), 10.3), np.full((3, 3), 20.6)]).astype(np.float32)
    # cubic convolution with a = -0.75 bends a ramp by a few hundredths; x then y would give 12.875
    np.testing.assert_allclose(resample_cubic(ramp, coords), 0.5 * 10.3 + 0.25 * 20.6, atol=0.05)


# --- labels, shapes, dtypes, seeds ---------------------------------------------------


def test_labels_get_no_new_ids(rng):
    labels = ndimage.zoom(rng.integers(IGNORE_LABEL, 9, (8, 8)), 6, order=0)
    coords = sampling_grid((45, 45), (20.0, 25.0), rng, AugmentConfig(elastic_std=15.0))
    out = nearest(labels, coords)
    assert out.shape == (45, 45)
    assert set(np.unique(out)) <= set(np.unique(labels))
    assert len(np.unique(out)) > 3


def test_shapes_and_dtypes(rng):
    coords = sampling_grid((20, 28), (30.0, 30.0), rng, AugmentConfig())
    assert coords.shape == (2, 20, 28)
    stack = rng.random((3, 60, 60), dtype=np.float32)
    for resampled in (resample_cubic(stack, coords), resample_nearest(stack, coords)):
        assert resampled.shape == (3, 20, 28) and resampled.dtype == np.float32
    assert resample_cubic((stack * 1000).astype(np.uint16), coords).dtype == np.float32


def test_channels_are_resampled_alike(rng):
    plane = smooth_image(rng, (50, 50)).astype(np.float32)
    coords = sampling_grid((30, 30), (25.0, 25.0), rng, AugmentConfig())
    stacked = resample_cubic(np.stack([plane, 2 * plane]), coords)
    np.testing.assert_array_equal(stacked[0], resample_cubic(plane[None], coords)[0])
    np.testing.assert_allclose(stacked[1], 2 * stacked[0], rtol=1e-6)


def test_seeded_runs_repeat_exactly():
    config = AugmentConfig()
    grids = [sampling_grid((33, 33), (40.0, 40.0), np.random.default_rng(11), config) for _ in range(2)]
    assert np.array_equal(grids[0], grids[1])
    other = sampling_grid((33, 33), (40.0, 40.0), np.random.default_rng(12), config)
    assert not np.array_equal(grids[0], other)
    image = np.random.default_rng(0).random((2, 10, 10), dtype=np.float32)
    jitter = [jitter_intensity(image, np.random.default_rng(5), config) for _ in range(2)]
    assert np.array_equal(jitter[0], jitter[1])


# --- flips and rotations ---------------------------------------------------------------


@pytest.mark.parametrize(("flip_y", "flip_x", "k"), list(itertools.product((False, True), (False, True), range(4))))
def test_rigid_steps_match_numpy_flip_and_rot90(flip_y, flip_x, k, rng):
    image = rng.random((30, 30))
    center = tile_center((4, 6), (16, 16))
    tile = nearest(image, identity_grid((16, 16), center))
    expected = tile
    if flip_y:
        expected = np.flip(expected, 0)
    if flip_x:
        expected = np.flip(expected, 1)
    expected = np.rot90(expected, k)
    got = nearest(image, rigid_grid((16, 16), center, flip_y, flip_x, k))
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("config", [AugmentConfig(), AugmentConfig(elastic=False, zoom=0.2), RIGID])
def test_the_grid_is_written_into_a_grid_sample_layout_and_viewed_as_y_then_x(config, rng):
    """What the sampler relies on: one (th, tw, 2) array of (x, y) per pixel, which
    ``resample_cubic`` and ``resample_nearest`` read as (2, th, tw) of (y, x) without a copy."""
    state = rng.bit_generator.state
    out = np.full((21, 21, 2), np.nan, np.float32)
    coords = sampling_grid((21, 21), (30.0, 40.0), rng, config, out=out)
    assert coords.shape == (2, 21, 21) and np.shares_memory(coords, out)
    assert np.array_equal(coords[0], out[..., 1]) and np.array_equal(coords[1], out[..., 0])
    rng.bit_generator.state = state
    assert np.array_equal(sampling_grid((21, 21), (30.0, 40.0), rng, config), coords)  # with or without ``out``
    image = rng.random((1, 70, 80), dtype=np.float32)
    alone = resample_cubic(image, coords)
    stacked = resample_cubic(image, np.stack([coords, coords[:, ::-1]]))
    assert np.array_equal(stacked[0], alone) and not np.array_equal(stacked[1], alone)


def test_random_rigid_tiles_are_flips_and_rotations_of_the_tile(rng):
    image = rng.random((40, 40))
    center = tile_center((3, 9), (12, 12))
    candidates = dihedral_set(nearest(image, identity_grid((12, 12), center)))
    seen = {
        matching_transform(nearest(image, sampling_grid((12, 12), center, rng, RIGID)), candidates) for _ in range(80)
    }
    assert seen == set(range(8))


def test_zoom_rescales_objects_about_the_tile_centre_within_its_range(rng):
    """A disk at the tile centre comes out exp(u) times smaller or larger, |u| <= zoom,
    still centred; both smaller and larger occur; zoom 0 leaves the grid and the
    random stream as they were."""
    yy, xx = np.mgrid[:101, :101]
    disk = ((yy - 50) ** 2 + (xx - 50) ** 2 <= 20**2).astype(np.int32)
    center = tile_center((0, 0), (101, 101))
    zoom = 0.3
    config = AugmentConfig(elastic=False, flips=False, rotations=False, zoom=zoom)
    radii = []
    for _ in range(40):
        tile = nearest(disk, sampling_grid((101, 101), center, rng, config))
        radii.append(np.sqrt(tile.sum() / np.pi))
        y, x = ndimage.center_of_mass(tile)
        assert abs(y - 50) < 0.5 and abs(x - 50) < 0.5
    assert 20 * np.exp(-zoom) - 0.5 <= min(radii) < 19 and 21 < max(radii) <= 20 * np.exp(zoom) + 0.5
    before = np.random.default_rng(3)
    assert zoom_factor(before, 0.0) == 1.0
    assert before.random() == np.random.default_rng(3).random()


def test_zoom_must_be_between_0_and_1():
    with pytest.raises(ValueError, match="zoom"):
        AugmentConfig(zoom=-0.1)
    with pytest.raises(ValueError, match="zoom"):
        AugmentConfig(zoom=1.5)


def test_non_square_tiles_are_only_flipped_or_half_turned(rng):
    image = rng.random((40, 40))
    center = tile_center((2, 5), (10, 14))
    candidates = dihedral_set(nearest(image, identity_grid((10, 14), center)))
    assert len(candidates) == 4
    seen = {
        matching_transform(nearest(image, sampling_grid((10, 14), center, rng, RIGID)), candidates) for _ in range(40)
    }
    assert seen == set(range(4))


def test_rotations_without_flips(rng):
    image = rng.random((30, 30))
    center = tile_center((0, 0), (20, 20))
    tile = nearest(image, identity_grid((20, 20), center))
    rotations = [np.rot90(tile, k) for k in range(4)]
    config = AugmentConfig(elastic=False, flips=False)
    seen = {
        matching_transform(nearest(image, sampling_grid((20, 20), center, rng, config)), rotations) for _ in range(30)
    }
    assert seen == set(range(4))


# --- elastic deformation -------------------------------------------------------------


ELASTIC_ONLY = AugmentConfig(flips=False, rotations=False, grid=3, elastic_std=10.0)


def test_displacement_std_matches_config_on_coarse_nodes():
    rng = np.random.default_rng(1)
    nodes = np.ix_(coarse_nodes(65, 3), coarse_nodes(65, 3))
    center = (40.0, 40.0)
    displacements = [
        sampling_grid((65, 65), center, rng, ELASTIC_ONLY) - identity_grid((65, 65), center) for _ in range(300)
    ]
    samples = np.concatenate([d[:, nodes[0], nodes[1]].ravel() for d in displacements])
    assert samples.size == 300 * 18
    assert abs(samples.std() - 10.0) < 0.5
    assert abs(samples.mean()) < 0.5


def test_displacement_is_smooth_between_nodes():
    center = (40.0, 40.0)
    field = sampling_grid((65, 65), center, np.random.default_rng(2), ELASTIC_ONLY) - identity_grid((65, 65), center)
    step = np.abs(np.diff(field, axis=1)).max()
    # A 3x3 grid over 64 px: neighbouring pixels move by a small fraction of the std.
    assert 0 < step < 2.0


def test_the_displacement_is_the_bicubic_interpolation_of_the_coarse_vectors():
    center = (40.0, 40.0)
    field = sampling_grid((65, 65), center, np.random.default_rng(3), ELASTIC_ONLY) - identity_grid((65, 65), center)
    rng = np.random.default_rng(3)
    rng.random(2), rng.integers(4)  # what the flips and turns draw, used or not
    coarse = rng.normal(0.0, 10.0, (2, 3, 3))
    np.testing.assert_allclose(field, bicubic_upsample(coarse, (65, 65)), atol=1e-4)


def test_bicubic_upsample_equals_2d_cubic_spline(rng):
    coarse = rng.normal(size=(2, 3, 4))
    out = bicubic_upsample(coarse, (17, 22))
    rows = np.linspace(0, 2, 17)[:, None] * np.ones((1, 22))
    cols = np.ones((17, 1)) * np.linspace(0, 3, 22)[None, :]
    for channel in range(2):
        ref = ndimage.map_coordinates(coarse[channel], [rows, cols], order=3, mode="mirror")
        np.testing.assert_allclose(out[channel], ref, atol=1e-12)
    np.testing.assert_allclose(out[:, ::8, ::7], coarse, atol=1e-12)  # nodes span the tile


def test_elastic_grid_deforms_by_about_the_std(rng):
    center = (100.0, 100.0)
    coords = sampling_grid((65, 65), center, rng, AugmentConfig(flips=False, rotations=False))
    offset = coords - identity_grid((65, 65), center)
    assert 2.0 < np.abs(offset).mean() < 30.0


# --- borders ------------------------------------------------------------------------


def test_mirroring_matches_numpy_reflect_far_outside_a_tiny_image():
    tiny = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    pad = 40
    padded = np.pad(tiny[0], pad, mode="reflect")
    rows, cols = np.mgrid[-33:36, -31:38]
    coords = np.stack([rows, cols]).astype(np.float32)
    assert np.array_equal(resample_nearest(tiny, coords)[0], padded[rows + pad, cols + pad])
    np.testing.assert_allclose(resample_cubic(tiny, coords)[0], padded[rows + pad, cols + pad], atol=1e-4)


def test_folding_gives_the_values_of_the_mod_formula_bit_for_bit(rng):
    """The mirror fold, written as fmod and its sign correction for speed, equals
    ``last - |mod(c, 2 last) - last|`` exactly, far outside too and on the multiples
    of the period, for float32 (the sampling grids) and float64 coordinates."""
    for size in (2, 5, 40, 4097):
        last = size - 1
        far = rng.normal(0.0, 10.0 * size, 20_000)
        coords = np.concatenate([far, np.arange(-5 * size, 5 * size, 0.25), -2.0 * last * np.arange(4), [-0.0]])
        for dtype in (np.float32, np.float64):
            values = coords.astype(dtype)
            expected = last - np.abs(np.mod(values.astype(np.float64), 2 * last) - last)
            folded = fold_coordinates(values, size)
            assert np.array_equal(folded, expected) and np.array_equal(np.signbit(folded), np.signbit(expected))


def test_fractional_mirroring_matches_interpolation_of_the_padded_image(rng):
    """Between pixels too, and however far out: the image's mirror is the padded image."""
    tiny = rng.random((1, 3, 4), dtype=np.float32)
    pad = 36  # a multiple of both mirror half-periods (H - 1 = 2, W - 1 = 3)
    padded = np.pad(tiny, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    coords = rng.uniform(-30, 33, (2, 25, 25)).astype(np.float32)
    inside = coords + np.float32(pad)  # the same points of the padded image, all away from its border
    np.testing.assert_allclose(resample_cubic(tiny, coords), resample_cubic(padded, inside), atol=1e-5)
    off_ties = (np.abs(coords % 1 - 0.5) > 1e-3).all(0)
    got, expected = resample_nearest(tiny, coords), resample_nearest(padded, inside)
    assert np.array_equal(got[:, off_ties], expected[:, off_ties])


def test_an_axis_of_one_pixel_reads_that_pixel():
    column = np.arange(5, dtype=np.float32)[None, :, None]
    coords = np.stack(np.meshgrid(np.arange(-7, 12.0), np.arange(-3, 4.0), indexing="ij")).astype(np.float32)
    expected = np.pad(column[0], ((7, 7), (0, 0)), "reflect")[:, [0] * 7]
    assert np.array_equal(resample_nearest(column, coords)[0], expected)
    np.testing.assert_allclose(resample_cubic(column, coords)[0], expected, atol=1e-4)


# --- gray values ----------------------------------------------------------------------


def test_jitter_with_zero_ranges_is_identity(rng):
    image = rng.normal(0.5, 0.5, (2, 16, 16)).astype(np.float32)
    out = jitter_intensity(image, rng, STILL)
    assert out.dtype == np.float32 and out.shape == image.shape
    np.testing.assert_allclose(out, image, atol=1e-6)


def test_jitter_is_monotonic_and_varies(rng):
    image = rng.normal(0.5, 0.6, (1, 32, 32)).astype(np.float32)
    order = np.argsort(image.ravel(), kind="stable")
    outputs = []
    for _ in range(10):
        out = jitter_intensity(image, rng, AugmentConfig()).ravel()
        assert np.all(np.diff(out[order]) >= 0)
        outputs.append(out)
    assert np.std([o.mean() for o in outputs]) > 1e-3


def test_gamma_acts_on_unit_range_only(rng):
    config = AugmentConfig(contrast=0.0, brightness=0.0, gamma=0.5)
    image = np.array([[[-0.5, 0.0, 0.25, 0.5, 1.0, 1.7]]], np.float32)
    outs = [jitter_intensity(image, rng, config) for _ in range(5)]
    for out in outs:
        np.testing.assert_allclose(out[..., [0, 1, 4, 5]], image[..., [0, 1, 4, 5]], atol=1e-6)
        gamma = np.log(out[0, 0, 3]) / np.log(0.5)
        np.testing.assert_allclose(out[0, 0, 2], 0.25**gamma, rtol=1e-5)
        assert np.exp(-0.5) - 1e-6 <= gamma <= np.exp(0.5) + 1e-6
    assert len({float(o[0, 0, 3]) for o in outs}) > 1


def test_cubic_convolution_resampling_is_exact_on_the_grid_and_mirrors_like_numpy():
    rng = np.random.default_rng(4)
    image = rng.random((2, 9, 13)).astype(np.float32)
    rows, cols = np.meshgrid(np.arange(-20, 30), np.arange(-25, 40), indexing="ij")
    coords = np.stack([rows, cols]).astype(np.float32)
    expected = image[:, reflect_index(rows, 9), reflect_index(cols, 13)]
    np.testing.assert_allclose(resample_cubic(image, coords), expected, atol=1e-5)


def test_cubic_convolution_gives_the_same_values_on_any_number_of_threads():
    """Tiles are split into bands of rows to keep the threads busy; bands join seamlessly."""
    rng = np.random.default_rng(5)
    image = rng.random((2, 40, 50)).astype(np.float32)
    coords = sampling_grid((21, 21), (20.0, 25.0), rng, AugmentConfig())
    stack = np.stack([coords, coords[:, ::-1]])
    alone, stacked = resample_cubic(image, coords, threads=1), resample_cubic(image, stack, threads=1)
    assert np.array_equal(stacked[0], alone) and not np.array_equal(stacked[1], alone)
    for threads in (None, 2, 3, 6, 100):
        assert np.array_equal(resample_cubic(image, coords, threads), alone)
        assert np.array_equal(resample_cubic(image, stack, threads), stacked)


def test_nearest_resampling_keeps_values_and_mirrors_like_numpy():
    """Targets and weights of training samples: values kept (labels, ignore, weights), the
    pixel nearest the mirrored coordinate, on non-square images; stacks and threads alike."""
    rng = np.random.default_rng(6)
    annotation = np.stack([rng.integers(-1, 3, (9, 13)), rng.random((9, 13)) * 10]).astype(np.float32)
    rows, cols = np.meshgrid(np.arange(-20, 30), np.arange(-25, 40), indexing="ij")
    on_pixels = np.stack([rows, cols]).astype(np.float32)
    expected = annotation[:, reflect_index(rows, 9), reflect_index(cols, 13)]
    assert np.array_equal(resample_nearest(annotation, on_pixels), expected)
    # off the pixel centres: the pixel the folded coordinate rounds to, away from half-pixel ties
    coords = (rng.random((2, 40, 40)) * 60 - 20).astype(np.float32)
    folded = [np.floor(fold_coordinates(c, n) + 0.5).astype(int) for c, n in zip(coords, (9, 13))]
    off_ties = (np.abs(coords % 1 - 0.5) > 1e-3).all(0)
    got = resample_nearest(annotation, coords)
    assert np.array_equal(got[:, off_ties], annotation[:, folded[0], folded[1]][:, off_ties])
    stack = np.stack([coords, on_pixels[:, :40, :40]])
    for threads in (1, 2, 3):
        assert np.array_equal(resample_nearest(annotation, stack, threads)[0], got)


def test_cubic_convolution_stays_close_to_the_spline_on_smooth_images():
    yy, xx = np.mgrid[:64, :64]
    smooth = (np.sin(yy / 7.0) * np.cos(xx / 5.0)).astype(np.float32)[None]
    coords = (np.random.default_rng(0).random((2, 30, 30)) * 60 + 1).astype(np.float32)
    spline = ndimage.map_coordinates(smooth[0], coords, order=3, mode="mirror")
    np.testing.assert_allclose(resample_cubic(smooth, coords)[0], spline, atol=1e-2)
