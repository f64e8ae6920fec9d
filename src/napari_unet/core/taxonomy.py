"""What kind of mistakes a segmentation makes: merges, splits, misses, false objects, boundaries.

Counts are taken per image over annotated pixels only (pixels where the truth is
``IGNORE_LABEL`` are dropped from both images first, as in :mod:`.metrics`). With
``T`` a true object, ``P`` a predicted object and ``|T & P|`` their overlap:

- **missed** true object: predicted objects cover less than ``miss_fraction`` (half)
  of it;
- **false positive** predicted object: more than ``1 - miss_fraction`` of it lies on
  true background (label 0);
- **merged** true object: some ``P`` covers at least ``merge_fraction`` (half) of it
  *and* at least that share of another true object;
- **split** true object: two or more predicted objects lie mostly inside it (more
  than ``merge_fraction`` of each ``P``), each covering at least ``piece_fraction``
  (a tenth) of it.

A missed object cannot be merged. Merged and split are not exclusive (a true object
can be both), and neither depends on an IoU threshold.

The **boundary offset** of a matched pair (IoU >= ``iou_threshold``, one-to-one as in
:func:`.metrics.optimal_matches`) is ``(area(P) - area(T)) / mean(perimeter(P),
perimeter(T))`` in pixels: positive when the prediction is larger. For a convex
object grown or shrunk evenly by ``d`` pixels it equals ``d`` exactly (Steiner's
formula: the area grows by ``perimeter * d + pi * d**2`` and the perimeter by
``2 * pi * d``), so it reads as how far the predicted boundary lies outside the true
one on average. Perimeters are Cauchy-Crofton estimates from the object/non-object
transitions along rows, columns and both diagonals (within about 5% for any
orientation; exact on average for discs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import IGNORE_LABEL
from .metrics import annotated_pixels, contingency, iou_matrix, optimal_matches


@dataclass(frozen=True)
class ErrorTaxonomy:
    """Error counts of one image (or the sums over several, see :func:`combine_taxonomies`).

    ``offset_sum`` is the summed boundary offset (px) of the ``matched`` pairs;
    :attr:`mean_offset` is their mean (NaN without matches).
    """

    n_true: int
    n_pred: int
    matched: int
    merged: int
    split: int
    missed: int
    false_positives: int
    offset_sum: float

    @property
    def mean_offset(self) -> float:
        return self.offset_sum / self.matched if self.matched else float("nan")


def perimeters(labels: np.ndarray) -> np.ndarray:
    """Estimated perimeter (px) of every id ``0..labels.max()`` of a label image (H, W).

    Cauchy-Crofton with four directions: ``pi / 8 * (n_0 + n_90 + (n_45 + n_135) / sqrt 2)``
    where ``n_d`` counts the places where a line in direction ``d`` enters or leaves
    the object. The image is padded with background, so the image border counts as
    boundary. Entry 0 (background) is meaningless.
    """
    labels = np.pad(np.asarray(labels), 1)
    if labels.min() < 0:
        raise ValueError("labels must be >= 0")
    size = int(labels.max()) + 1
    crossings = np.zeros(size, np.float64)
    pairs = (
        (labels[:, 1:], labels[:, :-1], 1.0),  # along rows
        (labels[1:, :], labels[:-1, :], 1.0),  # along columns
        (labels[1:, 1:], labels[:-1, :-1], 1 / math.sqrt(2)),  # diagonal
        (labels[1:, :-1], labels[:-1, 1:], 1 / math.sqrt(2)),  # anti-diagonal
    )
    for a, b, weight in pairs:
        change = a != b
        # a change between two objects is a boundary crossing of both
        crossings += weight * np.bincount(a[change], minlength=size)
        crossings += weight * np.bincount(b[change], minlength=size)
    return math.pi / 8 * crossings


def error_taxonomy(
    pred: np.ndarray,
    truth: np.ndarray,
    *,
    iou_threshold: float = 0.5,
    miss_fraction: float = 0.5,
    merge_fraction: float = 0.5,
    piece_fraction: float = 0.1,
) -> ErrorTaxonomy:
    """:class:`ErrorTaxonomy` of ``pred`` int (H, W) >= 0 against ``truth`` int (H, W) >= -1.

    See the module docstring for the definitions.
    """
    for name, value in (("miss_fraction", miss_fraction), ("merge_fraction", merge_fraction)):
        if not 0 < value < 1:
            raise ValueError(f"{name} must be in (0, 1), got {value}")
    if not 0 < piece_fraction <= 1:
        raise ValueError(f"piece_fraction must be in (0, 1], got {piece_fraction}")
    table, true_ids, pred_ids = contingency(pred, truth)
    overlap = table[1:, 1:].astype(np.float64)  # (n_true, n_pred)
    true_area = table[1:, :].sum(axis=1).astype(np.float64)
    pred_area = table[:, 1:].sum(axis=0).astype(np.float64)
    covered = overlap.sum(axis=1) / np.maximum(true_area, 1)  # share of each true object under predictions
    on_background = table[0, 1:] / np.maximum(pred_area, 1)

    missed = covered < miss_fraction
    false_positives = on_background > 1 - miss_fraction
    # covers[i, j]: predicted j covers at least merge_fraction of true i
    covers = overlap >= merge_fraction * true_area[:, None]
    mergers = covers.sum(axis=0) >= 2
    merged = covers[:, mergers].any(axis=1)
    # pieces[i, j]: predicted j lies mostly inside true i and is a sizeable part of it
    pieces = (overlap > merge_fraction * pred_area[None, :]) & (overlap >= piece_fraction * true_area[:, None])
    split = pieces.sum(axis=1) >= 2

    rows, cols = optimal_matches(iou_matrix(table), iou_threshold)
    offset_sum = 0.0
    if rows.size:
        kept_pred, kept_truth = _annotated_images(pred, truth)
        true_perimeter = perimeters(_dense(kept_truth, true_ids))[1:]
        pred_perimeter = perimeters(_dense(kept_pred, pred_ids))[1:]
        area_change = pred_area[cols] - true_area[rows]
        mean_perimeter = 0.5 * (pred_perimeter[cols] + true_perimeter[rows])
        offset_sum = float(np.sum(area_change / np.maximum(mean_perimeter, 1e-9)))
    return ErrorTaxonomy(
        n_true=int(true_ids.size),
        n_pred=int(pred_ids.size),
        matched=int(rows.size),
        merged=int(merged.sum()),
        split=int(split.sum()),
        missed=int(missed.sum()),
        false_positives=int(false_positives.sum()),
        offset_sum=offset_sum,
    )


def combine_taxonomies(parts: list[ErrorTaxonomy]) -> ErrorTaxonomy:
    """The sums of the counts (and of the offsets) of several images."""
    if not parts:
        raise ValueError("no taxonomies to combine")
    fields = ErrorTaxonomy.__dataclass_fields__
    return ErrorTaxonomy(**{name: sum(getattr(part, name) for part in parts) for name in fields})


def drop_unannotated(pred: np.ndarray, truth: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """``pred`` with the objects that lie mostly on unannotated pixels set to background.

    An object with at least ``fraction`` of its pixels where ``truth == IGNORE_LABEL``
    predicts something nobody annotated; scored as it is, the thin rest of it that
    sticks out onto annotated background would count as a false object. ``pred`` int
    (H, W) >= 0, ``truth`` int (H, W) >= -1; returns a new array.
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    annotated_pixels(pred, truth)  # the same checks as everywhere else
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    size = int(pred.max(initial=0)) + 1
    area = np.bincount(pred.ravel(), minlength=size)
    unannotated = np.bincount(pred[truth == IGNORE_LABEL], minlength=size)
    drop = unannotated >= fraction * np.maximum(area, 1)
    drop[0] = False
    return np.where(drop[pred], 0, pred)


def _annotated_images(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both images as 2D arrays with unannotated pixels set to background (0)."""
    annotated_pixels(pred, truth)  # the same checks as everywhere else
    pred, truth = np.asarray(pred), np.asarray(truth)
    keep = truth != IGNORE_LABEL
    return np.where(keep, pred, 0), np.where(keep, truth, 0)


def _dense(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``labels`` renumbered so that ``ids[k]`` becomes ``k + 1`` (other ids become 0)."""
    if ids.size == 0:
        return np.zeros(labels.shape, np.int64)
    index = np.minimum(np.searchsorted(ids, labels), ids.size - 1)
    return np.where((labels > 0) & (ids[index] == labels), index + 1, 0)
