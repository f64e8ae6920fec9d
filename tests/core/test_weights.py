"""The separation weight map (paper section 3) against brute-force references."""

import math

import numpy as np
import pytest
from scipy import ndimage

from napari_unet import NapariUnetError
from napari_unet.core.config import IGNORE_LABEL
from napari_unet.core.train_config import WeightMapConfig
from napari_unet.core.weights import (
    border_cutoff,
    border_weights,
    nearest_two_distances,
    separation_gap,
    separation_target,
    weight_map,
    weight_map_from_config,
)
from tests.reference import separation_target_reference, weight_map_reference


def random_cells(seed, shape=(64, 72), n_cells=10, *, overwrite=False, ignore_boxes=1, id_step=1):
    """Seeded labels int32 of random ellipses, many touching, some cut by the image border.

    ``overwrite``: later ellipses paint over earlier ones (ragged, possibly split
    cells) instead of only filling free pixels. ``id_step`` spaces the ids apart.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    labels = np.zeros(shape, np.int32)
    for index in range(1, n_cells + 1):
        cy, cx = rng.uniform(-3, shape[0] + 3), rng.uniform(-3, shape[1] + 3)
        ry, rx = rng.uniform(3, 10, 2)
        angle = rng.uniform(0, np.pi)
        u = (yy - cy) * np.cos(angle) + (xx - cx) * np.sin(angle)
        v = -(yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle)
        inside = (u / ry) ** 2 + (v / rx) ** 2 <= 1
        labels[inside if overwrite else inside & (labels == 0)] = index * id_step
    for _ in range(ignore_boxes):
        y, x = rng.integers(0, shape[0] - 8), rng.integers(0, shape[1] - 8)
        labels[y : y + rng.integers(4, 16), x : x + rng.integers(4, 16)] = IGNORE_LABEL
    return labels


LAYOUTS = {
    "touching": lambda: random_cells(0, n_cells=14),
    "sparse": lambda: random_cells(1, shape=(80, 80), n_cells=5, ignore_boxes=0),
    "ragged-overwrite": lambda: random_cells(2, n_cells=16, overwrite=True, ignore_boxes=2),
    "sparse-ids": lambda: random_cells(3, n_cells=9, id_step=7),
    "crowded": lambda: random_cells(4, shape=(48, 40), n_cells=25, ignore_boxes=3),
    "one-cell": lambda: random_cells(5, n_cells=1),
    "no-cell": lambda: random_cells(6, n_cells=0, ignore_boxes=2),
    "wide": lambda: random_cells(7, shape=(20, 150), n_cells=12),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@pytest.mark.parametrize(("w0", "sigma"), [(10.0, 5.0), (3.0, 2.0), (25.0, 12.0)])
def test_weight_map_matches_brute_force(name, w0, sigma):
    labels = LAYOUTS[name]()
    fast = weight_map(labels, w0, sigma)
    reference = weight_map_reference(labels, w0, sigma)
    assert fast.dtype == np.float32 and fast.shape == labels.shape
    assert np.abs(fast - reference).max() <= 1e-4
    n_cells = len(np.unique(labels[labels > 0]))
    has_border_term = (reference > weight_map_reference(labels, 0.0, sigma) + 1e-3).any()
    assert has_border_term == (n_cells >= 2)


def test_layouts_cover_touching_border_and_ignore_cases():
    labels = LAYOUTS["touching"]()
    assert separation_gap(labels).any()
    assert (labels == IGNORE_LABEL).any()
    edges = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    assert (edges > 0).any()


def test_unbalanced_matches_brute_force():
    labels = LAYOUTS["crowded"]()
    fast = weight_map(labels, balance_classes=False)
    assert np.abs(fast - weight_map_reference(labels, balance_classes=False)).max() <= 1e-4


def test_known_value_between_two_cells():
    labels = np.array([[1, 0, 2]])
    # w_c: 3 annotated px, 2 cell px -> 3/4 for cells, 3/2 for background; d1 = d2 = 1
    expected = np.array([[0.75, 1.5 + 10 * math.exp(-4 / 50), 0.75]], np.float32)
    np.testing.assert_allclose(weight_map(labels), expected, rtol=1e-6)


def test_gap_pixels_get_border_term_with_zero_own_distance():
    labels = np.zeros((5, 6), np.int32)
    labels[:, :3] = 1
    labels[:, 3:] = 2
    weights = weight_map(labels, balance_classes=False)
    # gap columns 2 and 3: d1 = 0 (own cell), d2 = 1 (the neighbour)
    np.testing.assert_allclose(weights[:, 2:4], 1 + 10 * math.exp(-1 / 50), rtol=1e-6)
    np.testing.assert_allclose(weights[:, [0, 1, 4, 5]], 1.0)


def test_nearest_two_distances_exact_against_full_transforms():
    labels = LAYOUTS["ragged-overwrite"]()
    cells = np.unique(labels[labels > 0])
    stacked = np.sort([ndimage.distance_transform_edt(labels != c) for c in cells], axis=0)
    d1, d2 = nearest_two_distances(labels)
    np.testing.assert_array_equal(d1, stacked[0])
    np.testing.assert_array_equal(d2, stacked[1])
    # windowed: exact up to max_distance, never an underestimate beyond it
    w1, w2 = nearest_two_distances(labels, max_distance=6.5)
    for windowed, exact in ((w1, stacked[0]), (w2, stacked[1])):
        near = exact <= 6.5
        np.testing.assert_array_equal(windowed[near], exact[near])
        assert (windowed[~near] >= exact[~near]).all()
        assert np.isinf(windowed[~near]).any()


def test_nearest_two_distances_with_fewer_than_two_cells():
    d1, d2 = nearest_two_distances(LAYOUTS["one-cell"]())
    assert np.isfinite(d1).all() and np.isinf(d2).all()
    d1, d2 = nearest_two_distances(LAYOUTS["no-cell"]())
    assert np.isinf(d1).all() and np.isinf(d2).all()


def test_border_cutoff_bounds_the_term():
    cutoff = border_cutoff(10.0, 5.0, tol=1e-6)
    assert 10 * math.exp(-(cutoff**2) / 50) == pytest.approx(1e-6)
    assert border_cutoff(0.0, 5.0) == 0.0


def test_separation_target_separates_touching_cells():
    labels = np.zeros((8, 12), np.int32)
    labels[1:5, 1:5] = 1
    labels[1:5, 5:8] = 2  # shares the boundary between columns 4 and 5 with cell 1
    labels[5:7, 8:10] = 3  # touches cell 2 only diagonally, at (4, 7) / (5, 8)
    labels[6:8, 0:3] = 4  # isolated (a background row away from cell 1)
    target = separation_target(labels)
    assert target.dtype == np.uint8
    assert (target[1:5, 4] == 0).all() and (target[1:5, 5] == 0).all()
    assert target[4, 7] == 0 and target[5, 8] == 0
    assert (target[1:5, 1:4] == 1).all() and (target[1:4, 6:8] == 1).all()
    np.testing.assert_array_equal(target[6:8, 0:3], 1)
    assert target[labels == 0].max() == 0
    # every pixel of a different cell is now at least one background px away
    for a in range(1, 5):
        grown = ndimage.binary_dilation(target.astype(bool) & (labels == a), np.ones((3, 3)))
        assert not (grown & target.astype(bool) & (labels != a)).any()


def test_separation_target_ignores_the_ignore_label():
    labels = np.zeros((5, 7), np.int32)
    labels[1:4, 1:3] = 1
    labels[1:4, 3:5] = IGNORE_LABEL  # unannotated next to the cell: no gap
    labels[1:4, 5:7] = 2
    target = separation_target(labels)
    np.testing.assert_array_equal(target, (labels > 0).astype(np.uint8))
    assert not separation_gap(labels).any()


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_separation_target_matches_brute_force(name):
    labels = LAYOUTS[name]()
    np.testing.assert_array_equal(separation_target(labels), separation_target_reference(labels))


@pytest.mark.parametrize("name", ["touching", "crowded", "ragged-overwrite"])
def test_ignore_pixels_weigh_exactly_zero(name):
    labels = LAYOUTS[name]()
    ignore = labels == IGNORE_LABEL
    weights = weight_map(labels)
    assert ignore.any()
    assert (weights[ignore] == 0).all()
    assert (weights[~ignore] > 0).all()


def test_ignoring_a_gap_removes_only_its_weight():
    labels = LAYOUTS["touching"]()
    near_gap = ndimage.binary_dilation(separation_gap(labels)) & (labels == 0)
    masked = np.where(near_gap, IGNORE_LABEL, labels)
    assert near_gap.any() and weight_map(labels)[near_gap].min() > 5
    assert (weight_map(masked)[near_gap] == 0).all()
    # the border term elsewhere is unchanged (only w_c changes with the pixel counts)
    elsewhere = ~near_gap & (labels != IGNORE_LABEL)
    np.testing.assert_allclose(border_weights(masked)[elsewhere], border_weights(labels)[elsewhere])


@pytest.mark.parametrize("name", ["touching", "sparse", "crowded", "sparse-ids"])
def test_class_weights_balance_the_two_classes(name):
    labels = LAYOUTS[name]()
    target = separation_target(labels)
    w_c = weight_map(labels, w0=0.0).astype(np.float64)
    annotated = labels != IGNORE_LABEL
    foreground, background = annotated & (target == 1), annotated & (target == 0)
    assert foreground.sum() != background.sum()  # so balancing has work to do
    assert w_c[foreground].sum() == pytest.approx(w_c[background].sum(), rel=1e-5)
    assert w_c[foreground].sum() == pytest.approx(annotated.sum() / 2, rel=1e-5)
    assert len(np.unique(w_c[foreground])) == 1 and len(np.unique(w_c[background])) == 1


def test_w0_zero_gives_only_class_weights():
    labels = LAYOUTS["touching"]()
    annotated = labels != IGNORE_LABEL
    np.testing.assert_array_equal(weight_map(labels, w0=0.0, balance_classes=False), annotated)
    assert not border_weights(labels, w0=0.0).any()
    assert border_weights(labels).max() > 5  # the default w0 does add a border term


@pytest.mark.parametrize("name", ["one-cell", "no-cell"])
def test_fewer_than_two_cells_have_no_border_term(name):
    labels = LAYOUTS[name]()
    np.testing.assert_array_equal(weight_map(labels), weight_map(labels, w0=0.0))
    assert not border_weights(labels).any()


def test_absent_class_gives_unit_class_weights():
    all_background = np.zeros((6, 6), np.int32)
    all_background[0] = IGNORE_LABEL
    np.testing.assert_array_equal(weight_map(all_background), all_background == 0)
    one_cell_everywhere = np.ones((6, 6), np.int32)
    np.testing.assert_array_equal(weight_map(one_cell_everywhere), 1.0)
    np.testing.assert_array_equal(weight_map(np.full((4, 4), IGNORE_LABEL)), 0.0)


def test_huge_sparse_ids_give_the_same_weights():
    labels = LAYOUTS["touching"]()
    huge = np.where(labels > 0, labels.astype(np.int64) * 10**12, labels)
    np.testing.assert_array_equal(weight_map(huge), weight_map(labels))
    every_pixel_a_cell = np.arange(1, 26, dtype=np.int64).reshape(5, 5) * 10**9
    np.testing.assert_allclose(weight_map(every_pixel_a_cell), weight_map_reference(every_pixel_a_cell), atol=1e-4)


def test_from_config_and_unsigned_labels():
    labels = LAYOUTS["sparse-ids"]()
    config = WeightMapConfig(w0=4.0, sigma=3.0, balance_classes=False)
    np.testing.assert_array_equal(
        weight_map_from_config(labels, config), weight_map(labels, 4.0, 3.0, balance_classes=False)
    )
    unannotated_free = np.maximum(labels, 0)
    np.testing.assert_array_equal(weight_map(unannotated_free.astype(np.uint16)), weight_map(unannotated_free))


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.full((4, 4), 0.5, np.float32), "whole numbers"),
        (np.full((4, 4), np.nan), "whole numbers"),
        (np.full((4, 4), -2), ">= -1"),
        (np.zeros((2, 2, 4, 4), np.int32), "2-D"),
    ],
    ids=["fractional", "nan", "below-ignore", "4d"],
)
def test_invalid_labels_raise_a_clear_error(labels, message):
    with pytest.raises(NapariUnetError, match=message):
        weight_map(labels)


def test_whole_numbers_stored_as_floats_are_labels():
    labels = random_cells(0, n_cells=14)
    np.testing.assert_array_equal(weight_map(labels.astype(np.float64)), weight_map(labels))


def test_invalid_parameters_raise():
    with pytest.raises(ValueError):
        weight_map(np.zeros((4, 4), np.int32), w0=-1.0)
    with pytest.raises(ValueError):
        weight_map(np.zeros((4, 4), np.int32), sigma=0.0)
