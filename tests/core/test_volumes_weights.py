"""The 3D weight map with physical distances, against the brute-force reference."""

import numpy as np
import pytest

from napari_unet.core.config import IGNORE_LABEL
from napari_unet.core.weights import nearest_two_distances, separation_target, weight_map
from tests.reference import separation_target_reference, weight_map_reference


def random_cells_3d(seed, shape=(14, 30, 34), n_cells=9, spacing=(1.0, 1.0, 1.0), ignore_planes=()):
    """Seeded labels int32 of random ellipsoids (radii in physical units), many touching,
    some cut by the border; ``ignore_planes`` are set to -1 (unannotated)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing)), indexing="ij"), -1)
    extent = np.array(shape) * np.array(spacing)
    labels = np.zeros(shape, np.int32)
    for index in range(1, n_cells + 1):
        centre = rng.uniform(-2, extent + 2)
        radii = rng.uniform(3, 9, 3)
        rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        local = (grid - centre) @ rotation
        inside = ((local / radii) ** 2).sum(-1) <= 1
        labels[inside & (labels == 0)] = index
    for plane in ignore_planes:
        labels[plane] = IGNORE_LABEL
    return labels


CASES = {
    "isotropic": ({}, None),
    "anisotropic z2": ({"spacing": (2.0, 1.0, 1.0), "shape": (9, 30, 34)}, (2.0, 1.0, 1.0)),
    "anisotropic um": ({"spacing": (0.75, 0.26, 0.26), "shape": (10, 28, 30)}, (0.75, 0.26, 0.26)),
    "crowded, -1 planes": ({"n_cells": 20, "ignore_planes": (0, 3, 4, 9)}, (1.5, 1.0, 1.0)),
    "one cell": ({"n_cells": 1}, (2.0, 1.0, 1.0)),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize(("w0", "sigma"), [(10.0, 5.0), (4.0, 2.0)])
def test_3d_weight_map_matches_brute_force(name, w0, sigma):
    make, spacing = CASES[name]
    labels = random_cells_3d(sorted(CASES).index(name), **make)
    expected = weight_map_reference(labels, w0, sigma, spacing=spacing)
    np.testing.assert_allclose(weight_map(labels, w0, sigma, spacing=spacing), expected, rtol=1e-5, atol=2e-6)


def test_3d_cases_touch_and_have_unannotated_planes():
    labels = random_cells_3d(3, n_cells=20, ignore_planes=(0, 3, 4, 9))
    target = separation_target(labels)
    np.testing.assert_array_equal(target, separation_target_reference(labels))
    assert ((labels > 0) & (target == 0)).any()  # some cells touch: a gap is cut
    weights = weight_map(labels, spacing=(1.5, 1.0, 1.0))
    assert (weights[[0, 3, 4, 9]] == 0).all() and (weights[1] > 0).all()


def test_gap_is_cut_between_cells_touching_only_across_planes():
    labels = np.zeros((4, 6, 6), np.int32)
    labels[:2, 1:5, 1:5] = 1
    labels[2:, 1:5, 1:5] = 2  # stacked on top of each other
    target = separation_target(labels)
    assert not target[1:3, 1:5, 1:5].any() and target[0, 2, 2] == 1 and target[3, 2, 2] == 1


def test_distances_are_physical():
    labels = np.zeros((9, 1, 9), np.int32)
    labels[0, 0, 0] = 1
    labels[8, 0, 8] = 2
    d1, d2 = nearest_two_distances(labels, spacing=(2.0, 1.0, 1.0))
    assert d1[4, 0, 0] == pytest.approx(8.0) and d2[4, 0, 0] == pytest.approx(np.hypot(8.0, 8.0))
    plain = nearest_two_distances(labels)[0]
    assert plain[4, 0, 0] == pytest.approx(4.0)
    # spacing only matters relative to the finest axis
    np.testing.assert_allclose(nearest_two_distances(labels, spacing=(0.5, 0.25, 0.25))[0], d1)
