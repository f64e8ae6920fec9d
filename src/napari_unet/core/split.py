"""Splitting touching objects at dips of the foreground probability.

A network trained for a few minutes often predicts two touching cells as one
connected region whose foreground probability still dips between them, if not
everywhere along the line where they meet: a bright bridge of a few pixels often
crosses it. So the dip between two pieces is measured along their whole meeting
line, not at its highest pass.

Each object's smoothed probability is cut into pieces by a watershed from its
peaks that rise at least :data:`SEED_DEPTH` above the level where they join a
higher one (the peaks' *dynamics*, as in h-maxima markers, told apart on levels
:data:`LEVEL_STEP` apart). Two neighbouring pieces meet along the face-neighbour
pixel pairs that lie one in each; their *dip* is the lower of their two peaks less
the mean along those pairs of the probability smoothed over the object's own pixels
(:func:`.meeting_lines.object_mean`: it does not fall at the rim, or across a thin
part, only because the object ends there). The neighbours with the shallowest dip
join, again and again, while it is under ``depth``; a piece smaller than
``min_piece`` joins the neighbour it dips least towards (:mod:`.meeting_lines`).
What is left apart becomes separate objects.

Only objects with two or more such peaks can split. Their bounding boxes are
packed, 1 px apart, into a small canvas; the levels are labelled there once each
(vectorised over all candidates); the few objects that get two or more seeds are
packed again on their own, where one watershed floods them all and the joins are
decided per object from the summed values along each meeting line. Objects that
do not split keep their pixels and id.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from .meeting_lines import join_shallow_pieces
from .regions import bounding_boxes, pack_boxes
from .smoothing import smooth_foreground

#: Distance between the probability levels at which peaks are told apart.
LEVEL_STEP = 0.05

#: How far a peak must rise above the level where it joins a higher one to seed a
#: piece. Low, so that a dip measured along the whole meeting line decides the split,
#: not the height of its highest pass; ripples under it (most of an untrained
#: network's plateaus) seed nothing, which keeps the joins few.
SEED_DEPTH = 0.03


def split_objects(
    labels: np.ndarray, foreground: np.ndarray, threshold: float, depth: float, min_piece: int = 0
) -> np.ndarray:
    """Split the objects of ``labels`` (int, 0 background; (H, W) or (Z, Y, X)) where
    the foreground probability ``foreground`` (same shape, values in [0, 1]) dips
    between peaks by at least ``depth`` on average along the line where their pieces
    meet (see the module docstring); ``threshold`` is the level the objects were cut
    at. A piece of fewer than ``min_piece`` pixels joins its neighbour (a dip inside
    one textured cell, not a gap between two).

    Returns new int32 labels: objects that do not split keep their id, pieces of a
    split object get ids after the largest one (callers renumber). Pixels stay in
    the object they belonged to. Deterministic.
    """
    out = labels.astype(np.int32, copy=True)
    split_in_place(out, np.flatnonzero(out), smooth_foreground(foreground), foreground, threshold, depth, min_piece)
    return out


def split_in_place(
    labels: np.ndarray,
    pixels: np.ndarray,
    smooth: np.ndarray,
    foreground: np.ndarray,
    threshold: float,
    depth: float,
    min_piece: int = 0,
    plateaus: tuple[np.ndarray, int] | None = None,
    helper: Executor | None = None,
) -> int:
    """:func:`split_objects` in place: ``labels`` int32, ``pixels`` the flat indices
    of its object pixels in increasing order (the work is done on those, not on the
    whole image), ``smooth`` what :func:`.smoothing.smooth_foreground` gives for the
    probability ``foreground``. ``plateaus``: what :func:`peak_plateaus` gives for
    them, when another thread has found it already. ``helper``: an executor with a
    free thread, which then finds the seeds of half the candidates
    (:func:`split_packed`). Returns the largest id afterwards."""
    ids = np.take(labels, pixels)
    largest = int(ids.max()) if ids.size else 0
    if plateaus is None:
        plateaus = peak_plateaus(labels.shape, pixels, smooth, threshold)
    candidates = _with_several_plateaus(*plateaus, pixels, ids)
    find_seeds, join = dip_rules(smooth, foreground, threshold, depth, min_piece)
    return split_at_seeds(labels, pixels, ids, candidates, largest, find_seeds, min_piece, join, helper)


def dip_rules(smooth: np.ndarray, foreground: np.ndarray, threshold: float, depth: float, min_piece: int) -> tuple:
    """The ``find_seeds`` and ``join`` of :func:`split_at_seeds` (and
    :func:`split_packed`) for the split at probability dips of ``foreground``
    (``smooth``: what :func:`.smoothing.smooth_foreground` gives for it; both of the shape the
    windows index), with the objects cut at ``threshold``."""
    levels = _levels(threshold, SEED_DEPTH)

    def find_seeds(canvas: np.ndarray, windows: list, places: list) -> tuple[np.ndarray, ...]:
        values = _packed(smooth, canvas.shape, windows, places)
        return (values, *_seeds(canvas, values, levels, SEED_DEPTH))

    def join(pieces: np.ndarray, values: np.ndarray, owners: np.ndarray, windows: list, places: list) -> np.ndarray:
        probability = _packed(foreground, pieces.shape, windows, places)
        return join_shallow_pieces(pieces, values, probability, owners, depth, min_piece)

    return find_seeds, join


def split_at_seeds(
    labels: np.ndarray,
    pixels: np.ndarray,
    ids: np.ndarray,
    candidates: np.ndarray,
    largest: int,
    find_seeds: Callable[[np.ndarray, list, list], tuple[np.ndarray, np.ndarray, np.ndarray]],
    min_piece: int,
    join: Callable[[np.ndarray, np.ndarray, np.ndarray, list, list], np.ndarray] | None = None,
    helper: Executor | None = None,
) -> int:
    """Split the objects ``candidates`` (ids, increasing) of ``labels`` (int32, ids up
    to ``largest``; ``pixels`` its object pixels, flat and increasing, ``ids`` theirs)
    in place where ``find_seeds`` puts two or more seeds in them.

    The candidates' bounding boxes are packed 1 px apart into a canvas
    (:func:`.regions.pack_boxes`) that holds each candidate's pixels (its id, the rest
    0); ``find_seeds(canvas, windows, places)`` (the boxes in ``labels`` and in the
    canvas) returns the values to flood from the seeds (the highest first, float
    canvas), the seeds (int32 canvas, numbered 1..n) and each seed's object (n,),
    only for objects with two or more seeds. One watershed grows the seeds to those
    objects. ``join(pieces, values, owners, windows, places)``, where given, returns
    for every seed number 0..n the seed whose piece its piece joins (itself where it
    stays apart; pieces join only pieces of their own object). An object left with
    two or more pieces that all have at least ``min_piece`` pixels splits: the piece
    of its first seed keeps its id, the others get ids after ``largest``. Returns the
    largest id afterwards."""
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
    return split_packed(labels, canvas, candidates, windows, places, largest, find_seeds, min_piece, join, helper)


def split_packed(
    labels: np.ndarray,
    canvas: np.ndarray,
    candidates: np.ndarray,
    windows: list,
    places: list,
    largest: int,
    find_seeds: Callable[[np.ndarray, list, list], tuple[np.ndarray, np.ndarray, np.ndarray]],
    min_piece: int,
    join: Callable[[np.ndarray, np.ndarray, np.ndarray, list, list], np.ndarray] | None = None,
    helper: Executor | None = None,
) -> int:
    """:func:`split_at_seeds` once its candidates are packed: ``canvas`` (int32) holds
    each of ``candidates`` (ids of ``labels``, increasing) at its place in ``places``
    (its pixels only), ``windows`` are their boxes in ``labels``, no two places closer
    than 1 px. ``labels`` may be the canvas itself (``windows`` then equal ``places``):
    a caller that packed its objects already splits them there. With ``helper`` (an
    executor with a free thread) a large canvas's seeds are found in two halves at
    once (:func:`_seeds_in_halves`)."""
    values, seeds, owners = _seeds_in_halves(find_seeds, canvas, windows, places, helper)
    if owners.size == 0:
        return largest
    seeded = _seeded_only(canvas, values, seeds, owners, candidates, windows, places)
    canvas, values, seeds, candidates, windows, places = seeded
    pieces = watershed(-values, seeds, mask=canvas > 0, connectivity=1)
    kept = np.arange(len(owners) + 1)
    if join is not None:
        kept = join(pieces, values, owners, windows, places)
        pieces = kept[pieces]
    next_id = largest + 1
    where = {int(object_id): (window, place) for object_id, window, place in zip(candidates, windows, places)}
    piece_sizes = np.bincount(pieces.ravel(), minlength=len(owners) + 1)
    new_ids = np.zeros(len(owners) + 1, np.int32)  # per seed: the id its piece takes (0: keeps the object's)
    stays_apart = kept[1:] == np.arange(1, len(owners) + 1)
    for object_id in np.unique(owners):
        numbers = np.flatnonzero((owners == object_id) & stays_apart) + 1  # this object's pieces, in seed order
        if numbers.size < 2 or piece_sizes[numbers].min() < min_piece:
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


def _packed(image: np.ndarray, shape: tuple[int, ...], windows: list, places: list) -> np.ndarray:
    """float32 canvas of ``shape`` holding ``image``'s boxes ``windows`` at ``places``
    (:func:`split_at_seeds`'s packing), 0 elsewhere."""
    canvas = np.zeros(shape, np.float32)
    for window, place in zip(windows, places):
        canvas[place] = image[window]
    return canvas


def _levels(threshold: float, depth: float) -> list[float]:
    """The probability levels (ascending) at which components are told apart:
    ``threshold + k * LEVEL_STEP`` for k >= 1 while a component there can still rise
    ``depth`` above it. (Compared with float32 probabilities, they act as float32.)"""
    levels = []
    while threshold + (len(levels) + 1) * LEVEL_STEP + depth <= 1.0 + 1e-9:
        levels.append(threshold + (len(levels) + 1) * LEVEL_STEP)
    return levels


def peak_plateaus(
    shape: tuple[int, ...], pixels: np.ndarray, smooth: np.ndarray, threshold: float
) -> tuple[np.ndarray, int]:
    """The plateaus of local maxima of the level count inside the objects, labelled
    (int32 of ``shape``, 0 elsewhere), and how many there are. The level count of a
    pixel is how many of the split's levels (:func:`_levels` of ``threshold`` and
    :data:`SEED_DEPTH`) its ``smooth`` value is above; ``pixels`` are the object pixels (flat
    indices, increasing). Needs the mask alone, not its labelling, so it can run on
    another thread while the objects are labelled.

    A significant component at level k is above k levels, its face neighbours inside
    objects are not; so its highest pixel is a local maximum of the count, and the
    face-connected plateau of equal maxima around it stays inside the component.
    Two significant components of one object therefore hold two plateaus.
    """
    values = np.take(smooth, pixels)
    above = np.zeros(pixels.size, np.int8)  # how many levels lie below the value
    for level in np.asarray(_levels(threshold, SEED_DEPTH), np.float32):
        above += values > level
    count = np.full(shape, -1, np.int8)  # -1 outside objects
    np.put(count, pixels, above)
    peaks = count >= 1
    for axis in range(len(shape)):
        for target, neighbour in ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None))):
            here = (slice(None),) * axis + (target,)
            there = (slice(None),) * axis + (neighbour,)
            peaks[here] &= count[here] >= count[there]
    return ndimage.label(peaks, structure=ndimage.generate_binary_structure(len(shape), 1))


def _with_several_plateaus(plateaus: np.ndarray, n_plateaus: int, pixels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Ids of the objects that can split: those holding two or more of the
    ``plateaus`` (:func:`peak_plateaus`). ``pixels`` are the object pixels (flat
    indices) and ``ids`` their objects."""
    if n_plateaus < 2:
        return np.zeros(0, np.int64)
    on_plateau = np.take(plateaus, pixels)  # every plateau lies on object pixels
    at_peak = on_plateau > 0
    owner = np.zeros(n_plateaus + 1, np.int64)
    owner[on_plateau[at_peak]] = ids[at_peak]
    per_object = np.bincount(owner[1:], minlength=int(ids.max()) + 1)
    per_object[0] = 0
    return np.flatnonzero(per_object >= 2)


def _seeds(labels: np.ndarray, smooth: np.ndarray, levels: list[float], depth: float):
    """The seeds of the pieces of every object that splits: an int32 image of seed
    numbers 1..n (0 elsewhere) and the object id of each seed (n,).

    ``levels`` (see :func:`_levels`) are labelled inside the objects, each as a whole
    image (vectorised; no list of pixels is carried from level to level); a
    component at level ``L`` is significant when it reaches ``L + depth``.
    Significance passes down the tree (a component's parent below it has the same
    maximum), so the significant components form a tree under each object. An object
    splits where that tree branches: the seeds are the significant components whose
    parent has two or more significant children and below which the tree no longer
    branches (a branch that branches again gives its own seeds).
    """
    faces = ndimage.generate_binary_structure(labels.ndim, 1)
    inside = labels > 0
    below = labels  # the components one level down: the objects at first
    n_objects = int(labels.max()) + 1
    parents = [np.zeros(n_objects, np.int64)]  # per level: each component's component one level down
    significant = [np.ones(n_objects, bool)]  # every object is a root
    at_level = []  # the components of every level, for painting the seeds
    for k, level in enumerate(levels):
        above = smooth > level
        above &= inside
        components, count = ndimage.label(above, structure=faces)
        if count == 0:
            break
        parent = np.zeros(count + 1, np.int64)
        parent[components] = below  # all pixels of a component lie in one component below
        parent[0] = 0
        if k:
            significant[-1][parent] = True  # the level below's components that hold one of these
        # the rest of this level's significant components: a pixel >= level + depth below the next level
        band = smooth >= level + depth
        if k + 1 < len(levels):
            band &= smooth <= levels[k + 1]
        marks = np.zeros(count + 1, bool)
        marks[components[band]] = True
        parents.append(parent)
        significant.append(marks)
        at_level.append(components)
        below = components
    for marks in significant:
        marks[0] = False  # (set above through the parent of the background)
    depth_count = len(parents)
    children = [np.bincount(parents[j][significant[j]], minlength=len(parents[j - 1])) for j in range(1, depth_count)]
    children.append(np.zeros(len(parents[-1]), np.int64))
    branches = [c >= 2 for c in children]  # the tree branches at or above this component
    for j in range(depth_count - 1, 0, -1):
        branches[j - 1][parents[j][significant[j] & branches[j]]] = True
    seeds = np.zeros(labels.shape, np.int32)
    owners: list[int] = []
    for j in range(1, depth_count):
        chosen = np.flatnonzero(significant[j] & ~branches[j] & (children[j - 1][parents[j]] >= 2))
        if chosen.size == 0:
            continue
        number = np.zeros(len(parents[j]), np.int32)  # component at level j -> seed number
        number[chosen] = np.arange(len(owners) + 1, len(owners) + 1 + chosen.size)
        painted = number[at_level[j - 1]]
        np.copyto(seeds, painted, where=painted > 0)
        roots = chosen
        for i in range(j, 0, -1):  # down the tree to the object
            roots = parents[i][roots]
        owners += roots.tolist()
    return seeds, np.asarray(owners, np.int64)
