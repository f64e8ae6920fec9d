"""Objects shaped like several cells are split at the necks of their mask."""

import math
from dataclasses import replace

import numpy as np
import pytest
import tifffile
from scipy import ndimage
from skimage.morphology import reconstruction

from napari_unet import save_model
from napari_unet.cli import main
from napari_unet.core import concave
from napari_unet.core.concave import ellipse_fill
from napari_unet.core.config import InstanceConfig
from napari_unet.core.instances import mask_to_labels, probabilities_to_labels
from napari_unet.core.large_objects import CLUMP_LIMIT

from .lazy import dented_and_touching_nuclei, drawn_image, threshold_model


def discs_mask(shape, centres, radius):
    grid = np.indices(shape)
    mask = np.zeros(shape, bool)
    for centre in centres:
        mask |= sum((axis - c) ** 2 for axis, c in zip(grid, centre)) <= radius**2
    return mask


def fills_of(labels):
    pixels = np.flatnonzero(labels)
    sizes, fills = ellipse_fill(labels.shape, pixels, labels.ravel()[pixels], int(labels.max()))
    assert np.array_equal(sizes, np.bincount(labels.ravel(), minlength=sizes.size).astype(float) * (sizes > 0))
    return fills


@pytest.mark.parametrize("shape", [(96, 96), (20, 40, 40)])
def test_the_fill_is_the_size_over_the_ellipse_of_the_same_covariance(shape):
    rng = np.random.default_rng(0)
    labels, count = ndimage.label(ndimage.gaussian_filter(rng.random(shape), 2) > 0.52)
    labels[(slice(None),) * (len(shape) - 2) + (slice(3, 6), slice(None))] = count + 1  # lines end to end
    labels[(0,) * (len(shape) - 1) + (slice(0, 9),)] = count + 2  # a single line of pixels
    fills = fills_of(labels)
    assert fills[0] == 1.0 and count > 5
    ndim = len(shape)
    unit_ball = {2: np.pi, 3: 4 * np.pi / 3}[ndim]
    for number in range(1, count + 3):
        coords = np.argwhere(labels == number).T.astype(float)
        covariance = np.atleast_2d(np.cov(coords, bias=True)) + np.eye(ndim) / 12
        expected = coords.shape[1] / (unit_ball * (ndim + 2) ** (ndim / 2) * np.sqrt(np.linalg.det(covariance)))
        assert fills[number] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("shape_name", "low", "high"),
    [("disc", 0.98, 1.02), ("ellipse", 0.98, 1.02), ("rectangle", 0.94, 0.97), ("two discs", 0.87, 0.91),
     ("ball", 0.97, 1.03)],
)  # fmt: skip
def test_one_round_cell_fills_its_ellipse_and_two_touching_cells_do_not(shape_name, low, high):
    grid = np.indices((64, 64))
    mask = {
        "disc": discs_mask((64, 64), [(32, 32)], 15),
        "ellipse": ((grid[0] - 32) / 10.0) ** 2 + ((grid[1] - 32) / 25.0) ** 2 <= 1,
        "rectangle": (abs(grid[0] - 32) < 5) & (abs(grid[1] - 32) < 25),
        "two discs": discs_mask((64, 64), [(32, 20), (32, 44)], 12),
        "ball": discs_mask((32, 32, 32), [(16, 16, 16)], 10),
    }[shape_name]
    assert low < fills_of(mask.astype(np.int32))[1] < high


def test_touching_cells_without_a_dip_between_them_become_two_objects_at_the_neck():
    mask = discs_mask((64, 80), [(32, 26), (32, 54)], 15)  # overlapping discs: a waist 11 px wide
    probability = np.where(mask, 0.9, 0.1).astype(np.float32)  # no dip to split at
    plain = InstanceConfig(min_fill=0.0)
    assert mask_to_labels(mask, plain, probability).max() == 1
    labels = mask_to_labels(mask, InstanceConfig(min_fill=0.95, neck=2.0, min_piece=200), probability)
    assert labels.max() == 2 and np.array_equal(labels > 0, mask)
    assert labels[32, 26] == 1 and labels[32, 54] == 2  # numbered by first pixel, as always
    assert {int(labels[32, x]) for x in range(20, 37)} == {1} and {int(labels[32, x]) for x in range(44, 60)} == {2}
    too_big = InstanceConfig(min_fill=0.95, neck=2.0, min_piece=mask.sum() // 2 + 1)
    assert mask_to_labels(mask, too_big, probability).max() == 1  # a piece would be too small
    shallow = InstanceConfig(min_fill=0.95, neck=11.0, min_piece=200)
    assert mask_to_labels(mask, shallow, probability).max() == 1  # the centres lie 15 px deep, the neck 5.4


def test_an_object_far_larger_than_the_learned_cells_is_not_split_by_shape():
    """Past CLUMP_LIMIT times the model's object size a region is no clump of a few cells
    (a barely trained network's foreground across the image): the split by shape leaves
    it, as the second look at large objects does; models without learned sizes split it."""
    mask = discs_mask((64, 80), [(32, 26), (32, 54)], 15)  # 1330 px, split at the neck above
    probability = np.where(mask, 0.9, 0.1).astype(np.float32)
    shape_split = InstanceConfig(min_fill=0.95, neck=2.0, min_piece=200)
    reach = math.ceil(mask.sum() / CLUMP_LIMIT)  # the smallest object size whose limit still covers it
    assert mask_to_labels(mask, replace(shape_split, object_size=reach), probability).max() == 2
    assert mask_to_labels(mask, replace(shape_split, object_size=reach - 1), probability).max() == 1
    assert mask_to_labels(mask, replace(shape_split, object_size=0), probability).max() == 2


def test_round_cells_and_rods_that_fill_their_ellipse_stay_whole():
    grid = np.indices((64, 96))
    rod = (abs(grid[0] - 20) < 5) & (abs(grid[1] - 40) < 30)
    ellipse = ((grid[0] - 48) / 9.0) ** 2 + ((grid[1] - 60) / 20.0) ** 2 <= 1
    mask = rod | ellipse
    labels = mask_to_labels(mask, InstanceConfig(min_fill=0.93, neck=1.0, min_piece=20), None)
    assert labels.max() == 2 and np.array_equal(labels > 0, mask)


def test_the_shape_split_works_on_probabilities_and_in_3d():
    mask = discs_mask((40, 40, 64), [(20, 20, 20), (20, 20, 42)], 12)
    probabilities = np.stack([np.where(mask, 0.1, 0.9), np.where(mask, 0.9, 0.1)]).astype(np.float32)
    config = InstanceConfig(min_fill=0.95, neck=2.0, min_piece=1000)
    labels = probabilities_to_labels(probabilities, config, ndim=3)
    assert labels.max() == 2 and labels[20, 20, 20] != labels[20, 20, 42] and np.array_equal(labels > 0, mask)
    assert probabilities_to_labels(probabilities, InstanceConfig(), ndim=3).max() == 1  # off unless asked


def test_with_a_spacing_distances_are_physical_so_a_dent_is_not_a_neck():
    """A round nucleus sampled in planes 4x closer than its pixels is 4x longer along
    z in voxels, and a 2-px dent around its middle cuts that long ridge of distances
    into two centres; measured physically it stays one nucleus, while two nuclei
    touching along z at a real neck still part."""
    dented, touching = dented_and_touching_nuclei()
    config = InstanceConfig(min_fill=0.999, neck=1.5, min_piece=50, split=0, min_size=1)
    assert mask_to_labels(dented, config).max() == 2  # voxel distances: split at the dent
    for spacing in ((0.25, 1.0, 1.0), (1.0, 4.0, 4.0)):  # in units of the last axis' voxel size
        assert mask_to_labels(dented, config, spacing=spacing).max() == 1
        two = mask_to_labels(touching, config, spacing=spacing)
        assert two.max() == 2 and two[20, 10, 10] == 1 and two[50, 10, 10] == 2


def test_a_shape_split_keeps_the_fill_order_deterministic_among_many_objects():
    rng = np.random.default_rng(3)
    centres = [(int(y), int(x)) for y, x in rng.integers(12, 116, size=(14, 2))]
    mask = discs_mask((128, 128), centres, 7)
    config = InstanceConfig(min_fill=0.93, neck=1.5, min_piece=40)
    first, second = mask_to_labels(mask, config, None), mask_to_labels(mask.copy(), config, None)
    assert np.array_equal(first, second) and np.array_equal(first > 0, mask)
    assert first.max() > ndimage.label(mask)[1]  # some clumps were parted
    ids = first[first > 0]
    _, first_seen = np.unique(ids, return_index=True)
    assert np.all(np.diff(first_seen) > 0)  # ids in the order of their first pixel


def test_segment_takes_the_models_shape_split_and_split_0_turns_it_off(tmp_path):
    mask = discs_mask((64, 80), [(32, 26), (32, 54)], 15)
    np.save(tmp_path / "a.npy", drawn_image(mask))
    model = threshold_model()
    model.spec = replace(model.spec, instances=InstanceConfig(min_fill=0.95, neck=2.0, min_piece=200))
    save_model(model, tmp_path / "m.safetensors")
    counts = {}
    for name, extra in {"model": [], "split 0": ["--split", "0"], "min-fill 0": ["--min-fill", "0"]}.items():
        out = tmp_path / name.replace(" ", "_")
        arguments = [str(tmp_path / "m.safetensors"), str(tmp_path / "a.npy"), "--out-dir", str(out), *extra]
        assert main(["segment", *arguments]) == 0
        counts[name] = int(tifffile.imread(out / "a_labels.tif").max())
    assert counts == {"model": 2, "split 0": 1, "min-fill 0": 1}


@pytest.mark.parametrize("shape", [(60, 70), (12, 30, 34)])
def test_the_reconstruction_equals_skimages(shape):
    rng = np.random.default_rng(4)
    mask = ndimage.gaussian_filter(rng.random(shape), 2) * 10
    mask[rng.random(shape) < 0.1] = -3.0  # background specks: a floor nothing crosses
    seed = np.minimum(mask - rng.uniform(0.5, 1.5), mask)
    np.testing.assert_array_equal(concave._reconstructed(seed, mask), reconstruction(seed, mask))
    corridor = np.full((5, 400), -1.0)  # a 400-px path: more dilations than the loop tries
    corridor[2] = 10.0
    start = np.where(corridor > 0, 0.0, -1.0)
    start[2, 0] = 10.0
    np.testing.assert_array_equal(concave._reconstructed(start, corridor), reconstruction(start, corridor))
