"""Scoring predicted instance labels against ground truth, per image and pooled.

Images may be stacks (..., H, W): every plane is matched on its own and the
matches are pooled, so ids may repeat between planes (as segmentation writes them)
or be unique across the stack (as the Annotate widget makes them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from .config import IGNORE_LABEL
from .errors import NapariUnetError
from .label_checks import image_like_reason, looks_like_image_message, out_of_range_message
from .metrics import MatchStats, combine, match_instances, merged_pairs, pixel_iou

#: One table row: name, stats at IoU 0.5..0.9, foreground pixel IoU, merged touching pairs.
Row = tuple[str, list[MatchStats], float, int]


class EvaluationError(NapariUnetError, ValueError):
    """Predictions and truths that cannot be compared."""


def _checked_labels(name: str, what: str, labels: np.ndarray) -> np.ndarray:
    """``labels`` as an integer label image, or an :class:`EvaluationError` that
    names ``name`` (the file or row) and ``what`` it is ("prediction", "truth")."""
    labels = np.asarray(labels)
    if labels.ndim < 2:
        raise EvaluationError(f"{name}: {what} must be a label image (H, W) or a stack of them, got {labels.shape}")
    reason = image_like_reason(labels)
    if reason:
        raise EvaluationError(looks_like_image_message(f"{name}: the {what}", reason))
    message = out_of_range_message(labels, f"{name} ({what})", IGNORE_LABEL if what == "truth" else 0)
    if message:  # -1 in the truth: not annotated, not scored
        raise EvaluationError(message)
    return labels.astype(np.int64, copy=False) if not np.issubdtype(labels.dtype, np.integer) else labels


def evaluate_stack(
    predicted: np.ndarray, truth: np.ndarray, spatial_ndim: int = 2
) -> tuple[list[MatchStats], float, int]:
    """Matches pooled over the planes of (..., H, W) label images (``spatial_ndim`` 3:
    over the volumes (..., Z, Y, X), objects matched in 3D), the foreground pixel IoU
    over all of them, and the merged touching pairs summed over planes (volumes)."""
    planes = list(np.ndindex(*truth.shape[: truth.ndim - spatial_ndim]))
    matches = combine([match_instances(predicted[index], truth[index]) for index in planes])
    merged = sum(merged_pairs(predicted[index], truth[index]) for index in planes)
    return matches, pixel_iou(predicted, truth), merged


def evaluate_pairs(
    pairs: Iterable[tuple[str, np.ndarray, np.ndarray]],
    spatial_ndim: int = 2,
    sources: Sequence[tuple[str, str]] | None = None,
) -> list[Row]:
    """Rows for each (name, predicted labels, true labels) and a final "overall" row;
    ``spatial_ndim`` 3 matches 3D objects (:func:`evaluate_stack`). ``sources``: the
    files of each pair (prediction, truth), named in errors instead of the row name.

    The overall row pools matches over images; its pixel IoU is the mean over images.
    """
    rows: list[Row] = []
    for index, (name, predicted, truth) in enumerate(pairs):
        predicted_name, truth_name = sources[index] if sources else (name, name)
        predicted = _checked_labels(predicted_name, "prediction", predicted)
        truth = _checked_labels(truth_name, "truth", truth)
        if predicted.shape != truth.shape:
            raise EvaluationError(f"{name}: prediction shape {predicted.shape} differs from truth {truth.shape}")
        if predicted.ndim < spatial_ndim:
            raise EvaluationError(f"{name}: --volumes needs volumes (Z, Y, X), got shape {predicted.shape}")
        rows.append((name, *evaluate_stack(predicted, truth, spatial_ndim)))
    if not rows:
        raise EvaluationError("nothing to evaluate")
    overall_iou = float(np.mean([row[2] for row in rows]))
    rows.append(("overall", combine([row[1] for row in rows]), overall_iou, sum(row[3] for row in rows)))
    return rows
