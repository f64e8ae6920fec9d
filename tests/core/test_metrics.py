"""Segmentation metrics against brute-force references and hand-built cases."""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from napari_unet.core.config import IGNORE_LABEL
from napari_unet.core.metrics import (
    DEFAULT_THRESHOLDS,
    MatchStats,
    combine,
    contingency,
    majority_prediction,
    match_instances,
    merged_pairs,
    optimal_matches,
    pixel_iou,
    split_and_merged_counts,
    touching_pairs,
)
from tests.reference import match_instances_reference


def random_truth(rng, shape=(64, 72), n_cells=14):
    """Labels int32 of random touching ellipses with one ignore box."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    labels = np.zeros(shape, np.int32)
    for index in range(1, n_cells + 1):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        ry, rx = rng.uniform(3, 9, 2)
        labels[(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1) & (labels == 0)] = index
    y, x = rng.integers(0, shape[0] - 12), rng.integers(0, shape[1] - 12)
    labels[y : y + 12, x : x + 12] = IGNORE_LABEL
    return labels


def perturbed(truth, rng):
    """A plausible prediction: dropped, merged, split, eroded, shifted and extra objects."""
    pred = np.maximum(truth, 0)
    ids = list(np.unique(pred[pred > 0]))
    next_id = max(ids, default=0) + 1
    for cell in rng.choice(ids, size=len(ids) // 2, replace=False):
        action = rng.integers(5)
        mask = pred == cell
        if action == 0:  # missed
            pred[mask] = 0
        elif action == 1:  # eroded
            pred[mask & ~ndimage.binary_erosion(mask)] = 0
        elif action == 2:  # split by a vertical cut
            cols = np.nonzero(mask)[1]
            pred[mask & (np.arange(pred.shape[1]) >= rng.integers(cols.min(), cols.max() + 1))] = next_id
            next_id += 1
        elif action == 3:  # merged into a touching neighbour
            neighbours = set(np.unique(pred[ndimage.binary_dilation(mask, np.ones((3, 3)))])) - {0, cell}
            if neighbours:
                pred[mask] = min(neighbours)
        else:  # dilated into background
            pred[ndimage.binary_dilation(mask) & (pred == 0)] = cell
    for _ in range(2):  # false positives
        y, x = rng.integers(0, pred.shape[0] - 5), rng.integers(0, pred.shape[1] - 5)
        box = pred[y : y + 5, x : x + 5]
        box[box == 0] = next_id
        next_id += 1
    if rng.random() < 0.5:
        pred = np.roll(pred, 1, axis=int(rng.integers(2)))
    permutation = rng.permutation(np.arange(1, next_id + 1)) * 3  # arbitrary, sparse ids
    return np.where(pred > 0, permutation[pred - 1], 0)


def assert_stats_equal(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        for field in dataclasses.fields(MatchStats):
            assert getattr(a, field.name) == pytest.approx(getattr(e, field.name), abs=1e-12), field.name


@pytest.mark.parametrize("seed", range(8))
def test_match_instances_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    truth = random_truth(rng)
    pred = perturbed(truth, rng)
    stats = match_instances(pred, truth)
    assert [s.threshold for s in stats] == list(DEFAULT_THRESHOLDS)
    assert_stats_equal(stats, match_instances_reference(pred, truth, DEFAULT_THRESHOLDS))
    assert stats[0].tp > 0 and stats[0].fp > 0  # a non-trivial case
    assert [s.tp for s in stats] == sorted((s.tp for s in stats), reverse=True)


def two_squares():
    truth = np.zeros((10, 12), np.int32)
    truth[1:5, 1:7] = 1  # 24 px
    truth[1:5, 7:10] = 2  # 12 px, touching 1
    truth[6:9, 1:4] = 3  # 9 px, isolated
    return truth


def test_identical_images_score_perfectly_whatever_the_ids():
    truth = two_squares()
    relabeled = np.choose(truth, [0, 7, 3, 12])
    for stats in match_instances(relabeled, truth):
        assert (stats.tp, stats.fp, stats.fn) == (3, 0, 0)
        assert stats.ap == stats.f1 == stats.precision == stats.recall == stats.mean_matched_iou == 1.0
    assert pixel_iou(relabeled, truth) == 1.0
    assert split_and_merged_counts(relabeled, truth) == (0, 0)
    assert merged_pairs(relabeled, truth) == 0


def test_empty_images():
    truth = two_squares()
    empty = np.zeros_like(truth)
    (stats,) = match_instances(empty, empty, thresholds=(0.5,))
    # two empty images agree entirely: evaluate printed AP@0.5 1.000 beside F1@0.5 0.000
    assert (stats.tp, stats.fp, stats.fn, stats.ap, stats.precision, stats.recall, stats.f1) == (0, 0, 0, 1, 1, 1, 1)
    assert pixel_iou(empty, empty) == 1.0
    (stats,) = match_instances(empty, truth, thresholds=(0.5,))
    assert (stats.fn, stats.ap, stats.recall, stats.precision, stats.mean_matched_iou) == (
        3,
        0.0,
        0.0,
        0.0,
        0.0,
    )


def test_one_missed_object():
    truth = two_squares()
    pred = np.where(truth == 3, 0, truth)
    (stats,) = match_instances(pred, truth, thresholds=(0.5,))
    assert (stats.tp, stats.fp, stats.fn, stats.n_pred, stats.n_true) == (2, 0, 1, 2, 3)
    assert (stats.precision, stats.recall, stats.ap) == (1.0, pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert stats.f1 == pytest.approx(0.8)
    assert pixel_iou(pred, truth) == pytest.approx(36 / 45)


def test_one_false_positive():
    truth = two_squares()
    pred = truth.copy()
    pred[7:9, 8:11] = 9
    (stats,) = match_instances(pred, truth, thresholds=(0.5,))
    assert (stats.tp, stats.fp, stats.fn) == (3, 1, 0)
    assert (stats.precision, stats.recall, stats.ap) == (0.75, 1.0, 0.75)


def test_one_merge():
    truth = two_squares()
    pred = np.where(truth == 2, 1, truth)
    high, low = match_instances(pred, truth, thresholds=(0.5, 0.7))
    # merged object vs cell 1: IoU 24/36; vs cell 2: 12/36
    assert (high.tp, high.fp, high.fn) == (2, 0, 1)
    assert high.mean_matched_iou == pytest.approx((24 / 36 + 1) / 2)
    assert (low.tp, low.fp, low.fn) == (1, 1, 2)
    assert merged_pairs(pred, truth) == 1
    assert split_and_merged_counts(pred, truth) == (0, 1)
    assert touching_pairs(truth) == {(1, 2)}


def test_one_split():
    truth = two_squares()
    pred = truth.copy()
    pred[1:5, 5:7] = 5  # the last 2 of cell 1's 6 columns: 8 of its 24 px
    (stats,) = match_instances(pred, truth, thresholds=(0.5,))
    assert (stats.tp, stats.fp, stats.fn) == (3, 1, 0)
    assert stats.mean_matched_iou == pytest.approx((16 / 24 + 1 + 1) / 3)
    assert split_and_merged_counts(pred, truth) == (1, 0)
    assert split_and_merged_counts(pred, truth, split_fraction=0.4) == (0, 0)
    assert merged_pairs(pred, truth) == 0


def test_ignore_pixels_are_removed_from_both_images():
    truth = two_squares()
    pred = truth.copy()
    pred[6:9, 6:11] = 4  # false positive that lies wholly in the ignore region below
    pred[1:5, 1] = 0  # cell 1 misses a column that the truth does not annotate
    truth_ignored = truth.copy()
    truth_ignored[6:9, 5:12] = IGNORE_LABEL
    truth_ignored[1:5, 1] = IGNORE_LABEL
    (with_ignore,) = match_instances(pred, truth_ignored, thresholds=(0.95,))
    assert (with_ignore.tp, with_ignore.fp, with_ignore.fn, with_ignore.mean_matched_iou) == (3, 0, 0, 1.0)
    assert pixel_iou(pred, truth_ignored) == 1.0
    (without,) = match_instances(pred, truth, thresholds=(0.95,))
    assert (without.tp, without.fp, without.fn) == (2, 2, 1)  # cell 1 (IoU 20/24) and object 4
    assert pixel_iou(pred, truth) < 1.0


def test_low_threshold_uses_an_optimal_not_greedy_matching():
    truth = np.zeros((2, 16), np.int32)
    truth[:, 0:10] = 1
    truth[:, 10:14] = 2
    pred = np.zeros_like(truth)
    pred[:, 0:3] = 1  # IoU with truth 1: 3/10
    pred[:, 3:14] = 2  # IoU with truth 1: 7/14 = 0.5, with truth 2: 4/11
    # greedy by IoU takes (1, 2) and strands truth 2; the optimum matches both
    (stats,) = match_instances(pred, truth, thresholds=(0.25,))
    assert (stats.tp, stats.fp, stats.fn) == (2, 0, 0)
    assert stats.mean_matched_iou == pytest.approx((3 / 10 + 4 / 11) / 2)
    (stats,) = match_instances(pred, truth, thresholds=(0.5,))
    assert (stats.tp, stats.mean_matched_iou) == (1, 0.5)
    with pytest.raises(ValueError):
        match_instances_reference(pred, truth, thresholds=(0.25,))


def test_optimal_matches_prefers_more_pairs_then_more_iou():
    iou = np.array([[0.9, 0.3], [0.3, 0.0]])
    rows, cols = optimal_matches(iou, 0.25)  # two pairs beat the single best pair
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 1), (1, 0)]
    iou = np.array([[0.6, 0.5], [0.5, 0.3]])
    rows, cols = optimal_matches(iou, 0.25)  # same count: the larger total IoU (1.0 > 0.9)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 1), (1, 0)]
    rows, cols = optimal_matches(np.array([[0.4, 0.2]]), 0.5)
    assert rows.size == cols.size == 0
    rows, cols = optimal_matches(np.zeros((0, 3)), 0.5)
    assert rows.size == 0


def test_contingency_counts_pixels():
    truth = two_squares()
    pred = np.zeros_like(truth)
    pred[0:3, 0:8] = 4
    table, true_ids, pred_ids = contingency(pred, truth)
    np.testing.assert_array_equal(true_ids, [1, 2, 3])
    np.testing.assert_array_equal(pred_ids, [4])
    # pred covers 24 px: 12 of cell 1, 2 of cell 2, 10 of background
    expected = np.array([[truth.size - 45 - 10, 10], [24 - 12, 12], [12 - 2, 2], [9, 0]])
    np.testing.assert_array_equal(table, expected)
    assert table.sum() == truth.size


def test_combine_sums_counts_over_images():
    rng = np.random.default_rng(11)
    truths = [random_truth(rng) for _ in range(3)]
    preds = [perturbed(t, rng) for t in truths]
    per_image = [match_instances(p, t) for p, t in zip(preds, truths)]
    combined = combine(per_image)
    for index, overall in enumerate(combined):
        column = [stats[index] for stats in per_image]
        assert overall.tp == sum(s.tp for s in column) and overall.fp == sum(s.fp for s in column)
        assert overall.fn == sum(s.fn for s in column) and overall.n_true == sum(s.n_true for s in column)
        assert overall.ap == pytest.approx(overall.tp / (overall.tp + overall.fp + overall.fn))
        weighted = sum(s.mean_matched_iou * s.tp for s in column) / overall.tp
        assert overall.mean_matched_iou == pytest.approx(weighted)
    # one image combined is itself, and side by side images combine like one image
    assert_stats_equal(combine(per_image[:1]), per_image[0])
    truths_joint = np.hstack([truths[0], np.where(truths[1] > 0, truths[1] + 1000, truths[1])])
    side_by_side = match_instances(np.hstack([preds[0], preds[1] + 1000 * (preds[1] > 0)]), truths_joint)
    assert_stats_equal(combine(per_image[:2]), side_by_side)


def test_combine_rejects_mismatched_or_no_images():
    truth = two_squares()
    with pytest.raises(ValueError):
        combine([match_instances(truth, truth, (0.5,)), match_instances(truth, truth, (0.6,))])
    with pytest.raises(ValueError):
        combine([])


def test_touching_pairs_against_brute_force():
    rng = np.random.default_rng(3)
    labels = random_truth(rng, n_cells=20)
    expected = set()
    h, w = labels.shape
    for y in range(h):
        for x in range(w):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    if 0 <= y + dy < h and 0 <= x + dx < w:
                        a, b = labels[y, x], labels[y + dy, x + dx]
                        if a > 0 and b > 0 and a != b:
                            expected.add((int(min(a, b)), int(max(a, b))))
    assert len(expected) >= 5
    assert touching_pairs(labels) == expected
    assert touching_pairs(np.zeros((3, 3), np.int32)) == set()


def test_touching_pairs_diagonal_and_ignore():
    labels = np.array([[1, 0, 0], [0, 2, -1], [0, -1, 3]])
    assert touching_pairs(labels) == {(1, 2), (2, 3)}


def test_majority_prediction_and_merged_pairs():
    truth = two_squares()
    pred = np.zeros_like(truth)
    pred[1:5, 1:4] = 8  # half of cell 1
    pred[1:5, 4:10] = 6  # other half of cell 1 plus all of cell 2 -> ties go to the smaller id
    assert majority_prediction(pred, truth) == {1: 6, 2: 6, 3: 0}
    assert merged_pairs(pred, truth) == 1
    assert merged_pairs(np.zeros_like(truth), truth) == 0  # unpredicted cells never merge


def split_and_merged_brute_force(pred, truth, split_fraction, merge_fraction):
    keep = truth != IGNORE_LABEL
    pred, truth = pred[keep], truth[keep]
    true_ids, pred_ids = np.unique(truth[truth > 0]), np.unique(pred[pred > 0])

    def covers(p, t, fraction):
        return np.sum((pred == p) & (truth == t)) >= fraction * np.sum(truth == t)

    split = sum(sum(covers(p, t, split_fraction) for p in pred_ids) >= 2 for t in true_ids)
    merged = sum(sum(covers(p, t, merge_fraction) for t in true_ids) >= 2 for p in pred_ids)
    return split, merged


@pytest.mark.parametrize("seed", range(4))
def test_split_and_merged_counts_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    truth = random_truth(rng, n_cells=18)
    pred = perturbed(truth, rng)
    for split_fraction, merge_fraction in ((0.2, 0.5), (0.3, 0.8)):
        counts = split_and_merged_counts(pred, truth, split_fraction=split_fraction, merge_fraction=merge_fraction)
        assert counts == split_and_merged_brute_force(pred, truth, split_fraction, merge_fraction)


def test_random_predictions_do_split_and_merge():
    rng = np.random.default_rng(5)
    truth = random_truth(rng, n_cells=18)
    split, merged = split_and_merged_counts(perturbed(truth, rng), truth)
    assert split > 0 and merged > 0


def test_invalid_inputs_raise():
    with pytest.raises(ValueError):
        match_instances(np.zeros((3, 3), np.int32), np.zeros((3, 4), np.int32))
    with pytest.raises(ValueError):
        pixel_iou(np.full((3, 3), -1), np.zeros((3, 3), np.int32))
    with pytest.raises(ValueError):
        match_instances(np.zeros((3, 3)), np.zeros((3, 3), np.int32))
