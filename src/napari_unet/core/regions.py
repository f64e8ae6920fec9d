"""Bounding boxes of regions given as lists of pixels."""

from __future__ import annotations

import numpy as np


def bounding_boxes(
    pixels: np.ndarray, ids: np.ndarray, shape: tuple[int, ...]
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """The boxes of the regions whose pixels are ``pixels`` (flat indices into an
    array of ``shape``, C order, (n,)) with region ids ``ids`` (n,): the distinct ids
    in increasing order (m,) and, per axis, each one's first and one-past-last index
    ((m,) each). One pass over the given pixels only, not over the array."""
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    coords = np.unravel_index(pixels[order], shape)
    low = [np.minimum.reduceat(axis, starts) for axis in coords]
    high = [np.maximum.reduceat(axis, starts) + 1 for axis in coords]
    return ids[starts], low, high
