"""Bounding boxes of regions given as lists of pixels, and a canvas to pack such boxes in."""

from __future__ import annotations

import math

import numpy as np


def bounding_boxes(
    pixels: np.ndarray, ids: np.ndarray, shape: tuple[int, ...]
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """The boxes of the regions whose pixels are ``pixels`` (flat indices into an
    array of ``shape``, C order, (n,)) with region ids ``ids`` (n,): the distinct ids
    in increasing order (m,) and, per axis, each one's first and one-past-last index
    ((m,) each). One pass over the given pixels only, not over the array."""
    keys = ids.astype(np.uint16) if ids.size and ids.min() >= 0 and ids.max() <= np.iinfo(np.uint16).max else ids
    order = np.argsort(keys, kind="stable")  # the same order; 16-bit keys sort by radix, several times faster
    ids = ids[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    coords = np.unravel_index(pixels[order], shape)
    low = [np.minimum.reduceat(axis, starts) for axis in coords]
    high = [np.maximum.reduceat(axis, starts) + 1 for axis in coords]
    return ids[starts], low, high


def run_starts(pixels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Where the runs of ``pixels`` (flat indices, increasing, (n,)) with region ids
    ``ids`` (n,) start: the positions (into both, increasing) of the pixels whose
    predecessor in flat order is not the pixel before them in the list or has another
    id. A region's first pixel in raster order always starts a run."""
    if pixels.size == 0:
        return np.zeros(0, np.intp)
    breaks = (np.diff(pixels) != 1) | (ids[1:] != ids[:-1])
    return np.flatnonzero(np.r_[True, breaks])


def pack_boxes(shapes: list[tuple[int, ...]]) -> tuple[list[tuple[slice, ...]], tuple[int, ...]]:
    """Places for boxes of ``shapes`` in one canvas, no two closer than 1 px, and the
    canvas's shape. The boxes, the tallest (first axis) first, go in rows along the
    last axis; rows stack along the axis before (in 3D into layers, which stack along
    the first axis). A row, and a layer along its middle axis, ends near the side of
    a square (cube) of twice the boxes' total size."""
    ndim = len(shapes[0])
    side = int((2 * sum(math.prod(shape) for shape in shapes)) ** (1 / ndim))
    limit = [max(side, *(shape[axis] for shape in shapes)) for axis in range(ndim)]
    corner = [0] * ndim  # where the next box goes
    reach = [0] * ndim  # per axis: the largest extent of the boxes in the current row (layer)
    places: list = [None] * len(shapes)
    for i in sorted(range(len(shapes)), key=lambda i: shapes[i], reverse=True):
        shape = shapes[i]
        axis = ndim - 1
        while axis > 0 and corner[axis] and corner[axis] + shape[axis] > limit[axis]:
            corner[axis] = 0  # full: the next row (layer) starts past the boxes of this one
            corner[axis - 1] += reach[axis - 1] + 1
            reach[axis - 1] = 0
            axis -= 1
        places[i] = tuple(slice(c, c + n) for c, n in zip(corner, shape))
        corner[-1] += shape[-1] + 1
        reach = [max(r, n) for r, n in zip(reach, shape)]
    extent = [max(place[axis].stop for place in places) for axis in range(ndim)]
    return places, tuple(extent)
