"""Scoring predicted instance labels against ground truth, per image and pooled."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .metrics import MatchStats, combine, match_instances, merged_pairs, pixel_iou

#: One table row: name, stats at IoU 0.5..0.9, foreground pixel IoU, merged touching pairs.
Row = tuple[str, list[MatchStats], float, int]


def evaluate_pairs(pairs: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> list[Row]:
    """Rows for each (name, predicted labels, true labels) and a final "overall" row.

    The overall row pools matches over images; its pixel IoU is the mean over images.
    """
    rows: list[Row] = []
    for name, predicted, truth in pairs:
        predicted, truth = np.asarray(predicted), np.asarray(truth)
        if predicted.shape != truth.shape:
            raise ValueError(f"{name}: prediction shape {predicted.shape} differs from truth {truth.shape}")
        rows.append(
            (
                name,
                match_instances(predicted, truth),
                pixel_iou(predicted, truth),
                merged_pairs(predicted, truth),
            )
        )
    if not rows:
        raise ValueError("nothing to evaluate")
    overall_iou = float(np.mean([row[2] for row in rows]))
    rows.append(("overall", combine([row[1] for row in rows]), overall_iou, sum(row[3] for row in rows)))
    return rows
