"""Error taxonomy on small hand-made label images with known answers."""

import math

import numpy as np
import pytest

from napari_unet.core.config import IGNORE_LABEL
from napari_unet.core.taxonomy import (
    ErrorTaxonomy,
    combine_taxonomies,
    drop_unannotated,
    error_taxonomy,
    perimeters,
)


def disc(shape, center, radius):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def boxes(shape, *rects):
    """Labels int32: rectangle k (y0, y1, x0, x1) gets id k + 1."""
    labels = np.zeros(shape, np.int32)
    for index, (y0, y1, x0, x1) in enumerate(rects, start=1):
        labels[y0:y1, x0:x1] = index
    return labels


def counts(result: ErrorTaxonomy) -> tuple[int, int, int, int]:
    return result.merged, result.split, result.missed, result.false_positives


def test_identical_labels_have_no_errors_and_zero_offset():
    truth = boxes((40, 60), (2, 12, 2, 14), (20, 35, 30, 50), (5, 15, 40, 55))
    result = error_taxonomy(truth.copy(), truth)
    assert counts(result) == (0, 0, 0, 0)
    assert (result.n_true, result.n_pred, result.matched) == (3, 3, 3)
    assert result.mean_offset == 0.0


def test_one_prediction_over_two_touching_objects_merges_both():
    # true objects 1 and 2 touch; 3 stands alone; the prediction joins 1 and 2
    truth = boxes((30, 60), (5, 15, 5, 15), (5, 15, 15, 30), (20, 28, 40, 50))
    pred = boxes((30, 60), (5, 15, 5, 30), (20, 28, 40, 50))
    assert counts(error_taxonomy(pred, truth)) == (2, 0, 0, 0)


def test_merge_needs_half_of_each_object():
    truth = boxes((30, 60), (5, 15, 5, 15), (5, 15, 15, 35))
    # covers all of object 1 but only 3/20 of object 2: a boundary error, not a merge
    pred = boxes((30, 60), (5, 15, 5, 18))
    result = error_taxonomy(pred, truth)
    assert result.merged == 0
    assert result.missed == 1  # object 2 is 85% uncovered


def test_two_predictions_inside_one_object_split_it():
    truth = boxes((30, 40), (5, 25, 5, 35))
    pred = boxes((30, 40), (5, 25, 5, 20), (5, 25, 20, 35))
    assert counts(error_taxonomy(pred, truth)) == (0, 1, 0, 0)


def test_a_small_speck_inside_an_object_is_not_a_split():
    truth = boxes((30, 40), (5, 25, 5, 35))
    pred = boxes((30, 40), (5, 25, 5, 35), (10, 12, 10, 12))  # a 4 px piece: under 10% of 600 px
    assert counts(error_taxonomy(pred, truth)) == (0, 0, 0, 0)


def test_missed_objects_and_false_positives_are_counted():
    truth = boxes((40, 80), (2, 12, 2, 12), (2, 12, 20, 30), (2, 12, 40, 50), (25, 35, 2, 12))
    pred = np.zeros_like(truth)
    pred[truth == 1] = 1
    pred[2:12, 20:24] = 2  # covers 40% of object 2: still missed
    pred[25:35, 60:70] = 3  # on background
    pred[30:38, 20:30] = 4  # on background
    pred[25:35, 2:12] = 5  # object 4, found
    result = error_taxonomy(pred, truth)
    assert counts(result) == (0, 0, 2, 2)  # object 2 is 40% covered, 3 not at all; predictions 3 and 4 are false
    assert (result.n_true, result.n_pred, result.matched) == (4, 5, 2)


def test_unannotated_pixels_count_for_nothing():
    truth = boxes((30, 60), (5, 15, 5, 15))
    truth[:, 30:] = IGNORE_LABEL
    pred = boxes((30, 60), (5, 15, 5, 15), (5, 20, 35, 55))  # object 2 lies wholly in the ignore area
    result = error_taxonomy(pred, truth)
    assert counts(result) == (0, 0, 0, 0)
    assert (result.n_pred, result.matched) == (1, 1)


def test_objects_mostly_on_unannotated_pixels_are_dropped():
    truth = boxes((30, 60), (5, 15, 5, 15))
    truth[:, 30:] = IGNORE_LABEL
    pred = boxes((30, 60), (5, 15, 5, 15), (5, 15, 26, 40), (20, 25, 20, 36))
    # object 2: 40 of 140 px annotated, all on background: a false object unless dropped
    assert error_taxonomy(pred, truth).false_positives == 2
    kept = drop_unannotated(pred, truth)
    assert sorted(np.unique(kept)) == [0, 1, 3]  # object 3 has 50 of 80 px annotated: kept
    assert error_taxonomy(kept, truth).false_positives == 1
    assert np.array_equal(drop_unannotated(pred, truth, fraction=0.3), np.where(pred == 1, 1, 0))


def test_all_categories_in_one_image():
    shape = (60, 100)
    truth = boxes(
        shape,
        (2, 12, 2, 13),  # 1, 2: merged into one prediction (IoU 0.48 with each)
        (2, 12, 13, 24),
        (20, 40, 2, 30),  # 3: split in two
        (45, 55, 2, 12),  # 4: missed
        (45, 55, 40, 52),  # 5: found, one pixel too large all round
    )
    pred = np.zeros(shape, np.int32)
    pred[2:12, 2:25] = 1
    pred[20:40, 2:15] = 2  # two pieces of 46% each (IoU below 0.5: neither matches)
    pred[20:40, 17:30] = 3
    pred[44:56, 39:53] = 4
    pred[5:15, 70:80] = 5  # false positive
    pred[30:40, 85:95] = 6  # false positive
    result = error_taxonomy(pred, truth)
    assert counts(result) == (2, 1, 1, 2)
    assert result.matched == 1
    # a 10x12 box grown by one pixel: area 120 -> 168, Crofton perimeters about 41.7 and 49.3
    assert result.mean_offset == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize(("true_radius", "pred_radius"), [(10, 12), (12, 10), (20, 17), (15, 16), (8, 8)])
def test_offset_of_concentric_discs_is_the_radius_difference(true_radius, pred_radius):
    shape = (64, 64)
    truth = disc(shape, (31.3, 32.6), true_radius).astype(np.int32)
    pred = disc(shape, (31.3, 32.6), pred_radius).astype(np.int32)
    result = error_taxonomy(pred, truth)
    assert result.matched == 1
    assert result.mean_offset == pytest.approx(pred_radius - true_radius, abs=0.2)


def test_offsets_average_over_matched_pairs_and_combine_over_images():
    shape = (64, 128)
    truth = np.zeros(shape, np.int32)
    pred = np.zeros(shape, np.int32)
    truth[disc(shape, (32, 32), 14)] = 1
    pred[disc(shape, (32, 32), 16)] = 1  # +2
    truth[disc(shape, (32, 96), 14)] = 2
    pred[disc(shape, (32, 96), 14)] = 7  # 0
    first = error_taxonomy(pred, truth)
    assert first.mean_offset == pytest.approx(1.0, abs=0.1)
    second = error_taxonomy(np.zeros_like(truth), truth)
    assert math.isnan(second.mean_offset)
    assert second.missed == 2
    total = combine_taxonomies([first, second])
    assert (total.n_true, total.n_pred, total.matched, total.missed) == (4, 2, 2, 2)
    assert total.mean_offset == pytest.approx(first.mean_offset)


@pytest.mark.parametrize("angle", [0, 10, 22.5, 45])
def test_crofton_perimeters_of_discs_and_turned_squares(angle):
    yy, xx = np.mgrid[0:120, 0:120]
    turn = math.radians(angle)
    u = (yy - 60) * math.cos(turn) + (xx - 60) * math.sin(turn)
    v = (xx - 60) * math.cos(turn) - (yy - 60) * math.sin(turn)
    labels = np.zeros(yy.shape, np.int32)
    labels[(np.abs(u) <= 15) & (np.abs(v) <= 15)] = 1
    labels[disc(labels.shape, (20.2, 19.7), 12)] = 2
    estimate = perimeters(labels)
    assert estimate[1] == pytest.approx(4 * 30, rel=0.06)
    assert estimate[2] == pytest.approx(2 * math.pi * 12, rel=0.02)


def test_bad_arguments_are_refused():
    truth = boxes((10, 10), (2, 5, 2, 5))
    with pytest.raises(ValueError):
        error_taxonomy(truth, truth, merge_fraction=1.0)
    with pytest.raises(ValueError):
        error_taxonomy(truth.astype(float), truth)
    with pytest.raises(ValueError):
        combine_taxonomies([])
