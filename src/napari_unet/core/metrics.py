"""Segmentation quality: pixel IoU, instance matching, merges and splits.

Label images are integer arrays (H, W): 0 = background, > 0 = object ids (any
positive ids, not necessarily consecutive). In the ground truth, ``IGNORE_LABEL``
(-1) marks unannotated pixels; they are removed from *both* images before anything
is counted, so predictions there are neither rewarded nor punished.

Instance matching follows the usual practice for the paper's cell-tracking
evaluation (IoU between a predicted and a true object, a pair matching when its IoU
reaches a threshold). For thresholds >= 0.5 a true object can match at most one
predicted object (and vice versa), so the matching is unique; below 0.5 an optimal
one-to-one matching is chosen (most matches first, then the largest total IoU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from .config import IGNORE_LABEL
from .weights import half_neighbourhood, neighbour_views

#: IoU thresholds 0.5, 0.55, ..., 0.9.
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(9))

#: Half of the 8-neighbourhood (dy, dx): each unordered neighbour pair once.
_HALF_NEIGHBOURHOOD = ((0, 1), (1, -1), (1, 0), (1, 1))


@dataclass(frozen=True)
class MatchStats:
    """Instance matching counts and scores at one IoU threshold.

    ``precision = tp / (tp + fp)``, ``recall = tp / (tp + fn)``,
    ``f1 = 2 tp / (2 tp + fp + fn)``, each 0 when its denominator is 0;
    ``ap = tp / (tp + fp + fn)`` (the "average precision" of the cell-tracking and
    DSB benchmarks); all four are 1 when both images are empty. ``mean_matched_iou`` is the mean
    IoU of the matched pairs (0 when there are none).
    """

    threshold: float
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    ap: float
    mean_matched_iou: float
    n_pred: int
    n_true: int


def _ratio(numerator: float, denominator: float, empty: float = 0.0) -> float:
    return float(numerator) / denominator if denominator > 0 else empty


def make_stats(threshold: float, tp: int, n_pred: int, n_true: int, matched_iou_sum: float) -> MatchStats:
    """:class:`MatchStats` from the number of matches and objects and the summed matched IoU."""
    fp, fn = n_pred - tp, n_true - tp
    agree = 1.0 if n_pred == n_true == 0 else 0.0  # two empty images agree entirely (F1 0 beside AP 1 before)
    return MatchStats(
        threshold=float(threshold),
        tp=int(tp),
        fp=int(fp),
        fn=int(fn),
        precision=_ratio(tp, tp + fp, empty=agree),
        recall=_ratio(tp, tp + fn, empty=agree),
        f1=_ratio(2 * tp, 2 * tp + fp + fn, empty=agree),
        ap=_ratio(tp, tp + fp + fn, empty=1.0),
        mean_matched_iou=_ratio(matched_iou_sum, tp),
        n_pred=int(n_pred),
        n_true=int(n_true),
    )


def _check_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"pred and truth shapes differ: {pred.shape} vs {truth.shape}")
    for name, image in (("pred", pred), ("truth", truth)):
        if not np.issubdtype(image.dtype, np.integer):
            raise ValueError(f"{name} must have an integer dtype, got {image.dtype}")
    if pred.size and pred.min() < 0:
        raise ValueError("pred labels must be >= 0")
    if truth.size and truth.min() < IGNORE_LABEL:
        raise ValueError(f"truth labels must be >= {IGNORE_LABEL} (the ignore label)")
    return pred, truth


def annotated_pixels(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-D ``(pred, truth)`` label values at pixels where ``truth != IGNORE_LABEL``.

    Both arrays must have the same shape and integer dtypes; pred >= 0, truth >= -1.
    """
    pred, truth = _check_pair(pred, truth)
    keep = truth != IGNORE_LABEL
    return pred[keep], truth[keep]


def pixel_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Foreground IoU ``|P & T| / |P | T|`` of ``pred > 0`` and ``truth > 0``.

    ``pred``, ``truth`` int (H, W). Pixels where ``truth == IGNORE_LABEL`` are left
    out. 1.0 when both foregrounds are empty.
    """
    pred, truth = annotated_pixels(pred, truth)
    p, t = pred > 0, truth > 0
    return _ratio(np.count_nonzero(p & t), np.count_nonzero(p | t), empty=1.0)


class Contingency(NamedTuple):
    """Overlap counts of two label images.

    ``table[i, j]`` int64 (n_true + 1, n_pred + 1) is the number of pixels with the
    ``i``-th true and ``j``-th predicted id, row/column 0 being background;
    ``true_ids`` (n_true,) and ``pred_ids`` (n_pred,) are the original ids of rows and
    columns 1.. in increasing order.
    """

    table: np.ndarray
    true_ids: np.ndarray
    pred_ids: np.ndarray


def contingency(pred: np.ndarray, truth: np.ndarray) -> Contingency:
    """:class:`Contingency` of ``pred`` and ``truth`` (same shape) over annotated pixels.

    One ``np.bincount`` over paired, densely renumbered labels.
    """
    pred, truth = annotated_pixels(pred, truth)
    true_ids, true_index = np.unique(truth, return_inverse=True)
    pred_ids, pred_index = np.unique(pred, return_inverse=True)
    # make room for background at index 0 even when an image has no background pixel
    true_index = true_index.ravel() + (0 if true_ids.size and true_ids[0] == 0 else 1)
    pred_index = pred_index.ravel() + (0 if pred_ids.size and pred_ids[0] == 0 else 1)
    true_ids, pred_ids = true_ids[true_ids > 0], pred_ids[pred_ids > 0]
    shape = (true_ids.size + 1, pred_ids.size + 1)
    table = np.bincount(true_index * shape[1] + pred_index, minlength=shape[0] * shape[1])
    return Contingency(table.reshape(shape).astype(np.int64), true_ids, pred_ids)


def iou_matrix(table: np.ndarray) -> np.ndarray:
    """IoU float64 (n_true, n_pred) of every object pair from a contingency ``table``."""
    intersection = table[1:, 1:].astype(np.float64)
    true_area = table[1:, :].sum(axis=1)
    pred_area = table[:, 1:].sum(axis=0)
    union = true_area[:, None] + pred_area[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def optimal_matches(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of a one-to-one matching of pairs with ``iou >= threshold``.

    ``iou`` float (n_true, n_pred). Maximises the number of matched pairs and, among
    those, the total IoU (``scipy.optimize.linear_sum_assignment`` on a score that
    counts 1 per valid pair plus a tie-breaking IoU share too small to trade a pair).
    """
    valid = iou >= threshold
    rows = np.flatnonzero(valid.any(axis=1))
    cols = np.flatnonzero(valid.any(axis=0))
    if rows.size == 0:
        return rows, cols
    sub_valid = valid[np.ix_(rows, cols)]
    sub_iou = iou[np.ix_(rows, cols)]
    # the summed IoU of any matching is < min(n) + 1, so the tie-break never beats a pair
    score = np.where(sub_valid, 1.0 + sub_iou / (min(sub_iou.shape) + 1.0), 0.0)
    row_index, col_index = linear_sum_assignment(score, maximize=True)
    keep = sub_valid[row_index, col_index]
    return rows[row_index[keep]], cols[col_index[keep]]


def match_instances(
    pred: np.ndarray, truth: np.ndarray, thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
) -> list[MatchStats]:
    """Instance matching statistics of ``pred`` against ``truth`` at each IoU threshold.

    ``pred`` int (H, W) >= 0, ``truth`` int (H, W) >= -1. Ignore pixels are removed
    from both images first (an object that lies wholly in them does not count). A
    predicted and a true object match when their IoU >= threshold; the matching is
    one-to-one (:func:`optimal_matches`). Returns one :class:`MatchStats` per
    threshold, in the given order.
    """
    table, true_ids, pred_ids = contingency(pred, truth)
    iou = iou_matrix(table)
    stats = []
    for threshold in thresholds:
        rows, cols = optimal_matches(iou, threshold)
        stats.append(make_stats(threshold, rows.size, pred_ids.size, true_ids.size, iou[rows, cols].sum()))
    return stats


def combine(stats_per_image: list[list[MatchStats]]) -> list[MatchStats]:
    """Dataset statistics from per-image :func:`match_instances` results.

    Sums tp, fp, fn and object counts over images per threshold and recomputes the
    ratios from the sums; ``mean_matched_iou`` is the tp-weighted mean. All images
    must use the same thresholds; raises ``ValueError`` otherwise or when empty.
    """
    if not stats_per_image:
        raise ValueError("need statistics of at least one image")
    thresholds = [s.threshold for s in stats_per_image[0]]
    if any([s.threshold for s in image] != thresholds for image in stats_per_image):
        raise ValueError("all images must be matched at the same thresholds")
    combined = []
    for per_threshold in zip(*stats_per_image):
        tp = sum(s.tp for s in per_threshold)
        combined.append(
            make_stats(
                per_threshold[0].threshold,
                tp,
                sum(s.n_pred for s in per_threshold),
                sum(s.n_true for s in per_threshold),
                sum(s.mean_matched_iou * s.tp for s in per_threshold),
            )
        )
    return combined


def touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs ``(a, b)``, ``a < b``, of objects in ``labels`` int (H, W) that are 8-neighbours
    (26-neighbours in a volume (Z, Y, X)).

    Only positive ids count (background and ignore pixels never touch anything).
    """
    labels = np.asarray(labels)
    firsts, seconds = [], []
    offsets = _HALF_NEIGHBOURHOOD if labels.ndim == 2 else half_neighbourhood(labels.ndim)
    for offset in offsets:
        a, b = neighbour_views(labels, *offset)
        touching = (a > 0) & (b > 0) & (a != b)
        firsts.append(a[touching])
        seconds.append(b[touching])
    first, second = np.concatenate(firsts), np.concatenate(seconds)
    pairs = np.unique(np.stack([np.minimum(first, second), np.maximum(first, second)], axis=1), axis=0)
    return {(int(a), int(b)) for a, b in pairs}


def majority_prediction(pred: np.ndarray, truth: np.ndarray) -> dict[int, int]:
    """For each true object, the predicted id covering most of its pixels.

    Only nonzero predicted ids vote (ties go to the smaller id); 0 when no predicted
    object overlaps it. Ignore pixels are left out. Returns ``{true_id: pred_id}``.
    """
    table, true_ids, pred_ids = contingency(pred, truth)
    overlap = table[1:, 1:]
    if pred_ids.size == 0:
        return {int(t): 0 for t in true_ids}
    best = overlap.argmax(axis=1)
    chosen = np.where(overlap[np.arange(true_ids.size), best] > 0, pred_ids[best], 0)
    return {int(t): int(p) for t, p in zip(true_ids, chosen)}


def merged_pairs(pred: np.ndarray, truth: np.ndarray) -> int:
    """Number of touching true pairs (:func:`touching_pairs` of ``truth``) predicted as one object.

    A pair counts when both cells get the same nonzero :func:`majority_prediction`:
    the failure the separation weight map (paper section 3) is meant to prevent.
    """
    majority = majority_prediction(pred, truth)
    return sum(
        1 for a, b in touching_pairs(truth) if majority.get(a, 0) != 0 and majority.get(a, 0) == majority.get(b, 0)
    )


class SplitMerge(NamedTuple):
    """Counts of split true objects and merged predicted objects."""

    split: int
    merged: int


def split_and_merged_counts(
    pred: np.ndarray, truth: np.ndarray, *, split_fraction: float = 0.2, merge_fraction: float = 0.5
) -> SplitMerge:
    """How many true objects are split and how many predicted objects are merges.

    Over annotated pixels: a true object is *split* when two or more predicted objects
    each cover at least ``split_fraction`` of its area; a predicted object is
    *merged* when it covers at least ``merge_fraction`` of the area of each of two or
    more true objects.
    """
    if not (0 < split_fraction <= 1 and 0 < merge_fraction <= 1):
        raise ValueError(f"fractions must be in (0, 1], got {split_fraction}, {merge_fraction}")
    table = contingency(pred, truth).table
    overlap = table[1:, 1:]
    coverage = overlap / np.maximum(table[1:, :].sum(axis=1, keepdims=True), 1)
    split = int(np.count_nonzero((coverage >= split_fraction).sum(axis=1) >= 2))
    merged = int(np.count_nonzero((coverage >= merge_fraction).sum(axis=0) >= 2))
    return SplitMerge(split, merged)
