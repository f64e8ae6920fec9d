"""Splitting packed objects at the seeds a rule finds in them: the machinery the three
splits of touching objects share (at probability dips, :mod:`.split`; by shape,
:mod:`.concave`; large objects once more, :mod:`.large_objects`).

The objects that may split are packed, 1 px apart, into a small canvas
(:func:`.regions.pack_boxes`); a rule finds seeds there (with a free second thread,
in two halves of a large canvas at once); the few objects that get two or more
seeds are packed again on their own, where one watershed floods them all from their
seeds and an optional rule joins pieces. Pieces that stay apart become new objects;
objects that do not split keep their pixels and id.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from skimage.segmentation import watershed

from .regions import bounding_boxes, pack_boxes


@dataclass(frozen=True)
class SplitRules:
    """What makes one kind of split: where its seeds lie and which pieces stay apart.

    ``find_seeds(canvas, windows, places)``: for a canvas (int32) that holds packed
    objects (their ids, 0 elsewhere), with their boxes in the image (``windows``) and
    in the canvas (``places``), the values to flood from the seeds (the highest first,
    float canvas), the seeds (int32 canvas, numbered 1..n) and each seed's object
    (n,), only for objects with two or more seeds. ``join(pieces, values, owners,
    windows, places)``, where given: for every seed number 0..n, the seed whose piece
    its piece joins (itself where it stays apart; pieces join only pieces of their own
    object). An object left with two or more pieces splits only when each has at
    least ``min_piece`` pixels."""

    find_seeds: Callable[[np.ndarray, list, list], tuple[np.ndarray, np.ndarray, np.ndarray]]
    min_piece: int
    join: Callable[[np.ndarray, np.ndarray, np.ndarray, list, list], np.ndarray] | None = None


def split_at_seeds(
    labels: np.ndarray,
    pixels: np.ndarray,
    ids: np.ndarray,
    candidates: np.ndarray,
    largest: int,
    rules: SplitRules,
    helper: Executor | None = None,
) -> int:
    """Split the objects ``candidates`` (ids, increasing) of ``labels`` (int32, ids up
    to ``largest``; ``pixels`` its object pixels, flat and increasing, ``ids`` theirs)
    in place where ``rules`` find two or more seeds in them.

    The candidates' bounding boxes are packed 1 px apart into a canvas
    (:func:`.regions.pack_boxes`) that holds each candidate's pixels (its id, the rest
    0), where ``rules.find_seeds`` looks for seeds. One watershed grows the seeds to
    their objects; ``rules.join`` joins pieces. An object left with two or more pieces
    splits as ``rules`` allow: the piece of its first seed keeps its id, the others get
    ids after ``largest``. Returns the largest id afterwards."""
    if candidates.size == 0:
        return largest
    is_candidate = np.zeros(largest + 1, bool)
    is_candidate[candidates] = True
    chosen = is_candidate[ids]
    _, low, high = bounding_boxes(pixels[chosen], ids[chosen], labels.shape)  # in id order, as candidates
    windows = [tuple(slice(int(lo[i]), int(hi[i])) for lo, hi in zip(low, high)) for i in range(candidates.size)]
    places, shape = pack_boxes([tuple(s.stop - s.start for s in window) for window in windows])
    canvas = np.zeros(shape, np.int32)
    for object_id, window, place in zip(candidates, windows, places):
        canvas[place][labels[window] == object_id] = object_id
    return split_packed(labels, canvas, candidates, windows, places, largest, rules, helper)


def split_packed(
    labels: np.ndarray,
    canvas: np.ndarray,
    candidates: np.ndarray,
    windows: list,
    places: list,
    largest: int,
    rules: SplitRules,
    helper: Executor | None = None,
) -> int:
    """:func:`split_at_seeds` once its candidates are packed: ``canvas`` (int32) holds
    each of ``candidates`` (ids of ``labels``, increasing) at its place in ``places``
    (its pixels only), ``windows`` are their boxes in ``labels``, no two places closer
    than 1 px. ``labels`` may be the canvas itself (``windows`` then equal ``places``):
    a caller that packed its objects already splits them there. With ``helper`` (an
    executor with a free thread) a large canvas's seeds are found in two halves at
    once (:func:`_seeds_in_halves`)."""
    values, seeds, owners = _seeds_in_halves(rules.find_seeds, canvas, windows, places, helper)
    if owners.size == 0:
        return largest
    seeded = _seeded_only(canvas, values, seeds, owners, candidates, windows, places)
    canvas, values, seeds, candidates, windows, places = seeded
    pieces = watershed(-values, seeds, mask=canvas > 0, connectivity=1)
    kept = np.arange(len(owners) + 1)
    if rules.join is not None:
        kept = rules.join(pieces, values, owners, windows, places)
        pieces = kept[pieces]
    next_id = largest + 1
    where = {int(object_id): (window, place) for object_id, window, place in zip(candidates, windows, places)}
    piece_sizes = np.bincount(pieces.ravel(), minlength=len(owners) + 1)
    new_ids = np.zeros(len(owners) + 1, np.int32)  # per seed: the id its piece takes (0: keeps the object's)
    stays_apart = kept[1:] == np.arange(1, len(owners) + 1)
    for object_id in np.unique(owners):
        numbers = np.flatnonzero((owners == object_id) & stays_apart) + 1  # this object's pieces, in seed order
        if numbers.size < 2 or piece_sizes[numbers].min() < rules.min_piece:
            continue
        new_ids[numbers[1:]] = np.arange(next_id, next_id + len(numbers) - 1)
        next_id += len(numbers) - 1
        window, place = where[int(object_id)]
        renamed = new_ids[pieces[place]]
        np.copyto(labels[window], renamed, where=renamed > 0)
    return next_id - 1


#: Canvases of at least this many pixels have their seeds found in two halves at once.
PARALLEL_CANVAS = 1 << 16


def _seeds_in_halves(find_seeds: Callable, canvas: np.ndarray, windows: list, places: list, helper: Executor | None):
    """``find_seeds(canvas, windows, places)``, on a canvas of :data:`PARALLEL_CANVAS`
    pixels or more with ``helper`` as two calls at once: the canvas is cut along its
    first axis between two rows of boxes, near the middle of their area, and the
    helper's thread finds the seeds of the upper part while this one finds those of
    the lower part. Seeds are found object by object, so the halves find what the
    whole finds; the lower part's seed numbers follow the upper part's, which keeps
    every object's seeds in the order the whole canvas numbers them (by level, then
    by first pixel: all that the watershed and the joins depend on)."""
    cut = _middle_cut(places) if helper is not None and canvas.size >= PARALLEL_CANVAS else None
    if cut is None:
        return find_seeds(canvas, windows, places)
    upper = [i for i, place in enumerate(places) if place[0].stop <= cut]
    lower = [i for i, place in enumerate(places) if place[0].start >= cut]
    shifted = [(slice(places[i][0].start - cut, places[i][0].stop - cut), *places[i][1:]) for i in lower]
    first = helper.submit(find_seeds, canvas[:cut], [windows[i] for i in upper], [places[i] for i in upper])
    values_low, seeds_low, owners_low = find_seeds(canvas[cut:], [windows[i] for i in lower], shifted)
    values_up, seeds_up, owners_up = first.result()
    seeds_low[seeds_low > 0] += len(owners_up)
    return (
        np.concatenate([values_up, values_low]),
        np.concatenate([seeds_up, seeds_low]),
        np.concatenate([owners_up, owners_low]),
    )


def _middle_cut(places: list) -> int | None:
    """A place along the first axis that no box of ``places`` spans (a row of boxes
    ends there), splitting their area most evenly; ``None`` where there is none."""
    starts = np.array([place[0].start for place in places])
    stops = np.array([place[0].stop for place in places])
    areas = np.array([math.prod(s.stop - s.start for s in place) for place in places], float)
    cuts = np.unique(starts[starts > 0])
    valid = [c for c in cuts if not np.any((starts < c) & (stops > c))]
    if not valid:
        return None
    above = [areas[stops <= c].sum() for c in valid]
    return int(valid[int(np.argmin(np.abs(np.array(above) - areas.sum() / 2)))])


def _seeded_only(
    canvas: np.ndarray,
    values: np.ndarray,
    seeds: np.ndarray,
    owners: np.ndarray,
    candidates: np.ndarray,
    windows: list,
    places: list,
) -> tuple:
    """The boxes of :func:`split_at_seeds`'s objects that hold seeds (``owners``), packed
    anew into a canvas of their own: (canvas, values, seeds, their ids, windows, places).

    Most candidates get one seed or none; the watershed and the joins then work on
    the few that split, not on every candidate's box. Each box keeps its content
    (other objects' pixels left out), and the seed numbers stay, so the pieces are
    those the whole canvas gives (the flood's ties break in raster order within a
    box either way)."""
    seeded = np.isin(candidates, owners)
    if seeded.all():
        return canvas, values, seeds, candidates, windows, places
    kept = np.flatnonzero(seeded)
    new_places, shape = pack_boxes([tuple(s.stop - s.start for s in windows[i]) for i in kept])
    objects = np.zeros(shape, canvas.dtype)
    new_values = np.zeros(shape, values.dtype)
    new_seeds = np.zeros(shape, seeds.dtype)
    for i, place in zip(kept, new_places):
        own = canvas[places[i]] == candidates[i]
        objects[place][own] = candidates[i]
        new_values[place] = values[places[i]]
        new_seeds[place][own] = seeds[places[i]][own]
    return objects, new_values, new_seeds, candidates[kept], [windows[i] for i in kept], new_places
