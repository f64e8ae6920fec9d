"""Joining the pieces of a split object where the line they meet along dips too little.

:mod:`.split` cuts an object into pieces from its peaks; here two neighbouring pieces'
*dip* is the lower of their peaks less the mean probability along the pixel pairs where
they meet, measured in the probability smoothed over the object's own pixels
(:func:`object_mean`). The shallowest neighbours join while their dip is under the
split depth, and pieces under the smallest piece join the neighbour they dip least
towards; a heap keeps each join's cost to what it changes.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
from scipy import ndimage


def join_shallow_pieces(
    pieces: np.ndarray, values: np.ndarray, probability: np.ndarray, owners: np.ndarray, depth: float, min_piece: int
) -> np.ndarray:
    """Which piece each piece of ``pieces`` (int, 1..n, 0 background) joins: for every
    number 0..n the number of the piece it becomes part of (the smallest number of
    the joined pieces; itself where it stays apart).

    Two pieces meet along the face-neighbour pixel pairs that lie one in each; their
    *dip* is the lower of the two pieces' highest ``values`` (the smoothed
    probability) less the mean, over those pairs, of the pair's mean
    :func:`object_mean` of ``probability`` (the probability itself, same shape).
    Within each object (``owners``: the object of piece 1..n), repeatedly: the two
    neighbours with the shallowest dip join while it is under ``depth``; then, while
    a piece has fewer than ``min_piece`` pixels, the smallest such piece joins the
    neighbour with which it has the shallowest dip, and the pieces are looked at
    again. Ties go to the lower numbers. Dips of joined pieces are exact: their sums
    and counts add up."""
    n = len(owners)
    joined = np.arange(n + 1)
    first, second, sums, counts = _meeting_lines(pieces, probability, owners)
    if first.size == 0:
        return joined
    peaks = ndimage.maximum(values, pieces, np.arange(n + 1)).tolist()
    sizes = np.bincount(pieces.ravel(), minlength=n + 1).tolist()
    lines_of_object: dict[int, dict[int, dict[int, list[float]]]] = {}
    for a, b, total, count in zip(first.tolist(), second.tolist(), sums.tolist(), counts.tolist()):
        line = [total, count]  # shared by both ends
        lines = lines_of_object.setdefault(int(owners[a - 1]), {})
        lines.setdefault(a, {})[b] = line
        lines.setdefault(b, {})[a] = line
    for lines in lines_of_object.values():
        for gone, into in _joins(lines, peaks, sizes, depth, min_piece):
            joined[gone] = into
    while True:  # follow every chain of joins to its end
        ends = joined[joined]
        if np.array_equal(ends, joined):
            return joined
        joined = ends


def _joins(lines: dict, peaks: list, sizes: list, depth: float, min_piece: int) -> list[tuple[int, int]]:
    """The joins (absorbed piece, piece it joins) of one object's pieces, in order, as
    :func:`join_shallow_pieces` describes; ``lines`` (piece -> neighbour -> [sum,
    count] of its meeting line), ``peaks`` and ``sizes`` are updated.

    The dips wait in a heap, the small pieces in another, each entry with the value
    it had when pushed; an entry whose pieces no longer meet, or whose value has
    changed since, is skipped when it comes up. A join pushes the dips that it
    changed: the grown piece's lines to the absorbed piece's neighbours, and, when
    its peak rose, those to neighbours whose peak is above its old one. So a piece
    that absorbs lower ones one after another does not measure all its lines again
    each time."""

    def dip(a: int, b: int) -> float:
        total, count = lines[a][b]
        return min(peaks[a], peaks[b]) - total / count

    def entry(a: int, b: int) -> tuple[float, int, int]:
        a, b = min(a, b), max(a, b)
        return dip(a, b), a, b

    def holds(item: tuple[float, int, int]) -> bool:
        value, a, b = item
        return a in lines and b in lines[a] and dip(a, b) == value

    dips = [entry(a, b) for a in lines for b in lines[a] if a < b]
    heapq.heapify(dips)
    small = [(sizes[p], p) for p in lines if sizes[p] < min_piece]
    heapq.heapify(small)
    joins = []
    while True:
        while dips and not holds(dips[0]):
            heapq.heappop(dips)
        if not dips:
            break
        if dips[0][0] < depth:
            _, a, b = heapq.heappop(dips)
        else:
            while small and (small[0][1] not in lines or sizes[small[0][1]] != small[0][0]):
                heapq.heappop(small)
            if not small:
                break
            piece = small[0][1]
            _, neighbour = min((dip(piece, n), n) for n in lines[piece])
            a, b = min(piece, neighbour), max(piece, neighbour)
        changed = set()
        for neighbour, line in lines.pop(b).items():
            del lines[neighbour][b]
            if neighbour == a:
                continue
            changed.add(neighbour)
            if neighbour in lines[a]:
                lines[a][neighbour][0] += line[0]
                lines[a][neighbour][1] += line[1]
            else:
                lines[a][neighbour] = lines[neighbour][a] = line
        if peaks[b] > peaks[a]:  # the dips towards neighbours above the old peak deepen
            changed.update(n for n in lines[a] if peaks[n] > peaks[a])
            peaks[a] = peaks[b]
        sizes[a] += sizes[b]
        for neighbour in changed:
            heapq.heappush(dips, entry(a, neighbour))
        if sizes[a] < min_piece:
            heapq.heappush(small, (sizes[a], a))
        joins.append((b, a))
    return joins


def _meeting_lines(pieces: np.ndarray, probability: np.ndarray, owners: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every pair of pieces (first < second) of ``pieces`` that are face neighbours
    somewhere, with the sum over those neighbouring pixel pairs of the pair's mean
    :func:`object_mean` of ``probability`` (float64), and how many pairs there are.
    ``owners``: the object of each piece 1..n."""
    n = int(pieces.max()) + 1
    keys, ends = [], []
    flat = np.arange(pieces.size).reshape(pieces.shape)
    for axis in range(pieces.ndim):
        low = (slice(None),) * axis + (slice(None, -1),)
        high = (slice(None),) * axis + (slice(1, None),)
        a, b = pieces[low], pieces[high]
        across = (a != b) & (a > 0) & (b > 0)
        ends.append(np.stack([flat[low][across], flat[high][across]]))
        a, b = a[across].astype(np.int64), b[across].astype(np.int64)
        keys.append(np.minimum(a, b) * n + np.maximum(a, b))
    ends = np.concatenate(ends, axis=1)
    on_line, where = np.unique(ends, return_inverse=True)
    objects = np.concatenate([[0], owners])[pieces]
    means = object_mean(probability, objects, on_line)[where.reshape(ends.shape)].mean(axis=0)
    pairs, which = np.unique(np.concatenate(keys), return_inverse=True)
    return pairs // n, pairs % n, np.bincount(which, means), np.bincount(which).astype(np.float64)


#: The binomial filter of :func:`.smoothing.smooth_foreground` along one axis.
BINOMIAL = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)


def object_mean(probability: np.ndarray, objects: np.ndarray, at: np.ndarray) -> np.ndarray:
    """At the flat indices ``at`` of ``objects`` (int, 0 background, the shape of
    ``probability``), the mean of ``probability`` weighted by :data:`BINOMIAL` along
    every axis over the pixels at most 2 px away along each axis (inside the array)
    that belong to the same object: the smoothed probability with the object's own
    pixels only, so that it does not fall at the object's rim, or across a thin part,
    because the object ends there (float64, in the offsets' fixed order)."""
    padded = tuple(n + 4 for n in objects.shape)  # 2 px of background around: no neighbour falls outside
    around = np.zeros(padded, objects.dtype)
    around[(slice(2, -2),) * objects.ndim] = objects
    values = np.zeros(padded, np.float64)
    values[(slice(2, -2),) * objects.ndim] = probability
    here = np.ravel_multi_index([c + 2 for c in np.unravel_index(at, objects.shape)], padded)
    own = objects.ravel()[at]
    strides = [math.prod(padded[axis + 1 :]) for axis in range(objects.ndim)]
    around, values = around.ravel(), values.ravel()
    total = np.zeros(at.size)
    weight = np.zeros(at.size)
    for offset in np.ndindex(*(5,) * objects.ndim):
        there = here + sum((o - 2) * stride for o, stride in zip(offset, strides))
        same = around[there] == own
        w = math.prod(BINOMIAL[o] for o in offset)
        total += np.where(same, w * values[there], 0.0)
        weight += np.where(same, w, 0.0)
    return total / weight
