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

Only objects with two or more such peaks can split. They are packed into a small
canvas and split there (:mod:`.seeded_split`); the levels are labelled once each
over the whole canvas (vectorised over all candidates), and the joins are decided
per object from the summed values along each meeting line.
"""

from __future__ import annotations

from concurrent.futures import Executor

import numpy as np
from scipy import ndimage

from .meeting_lines import join_shallow_pieces
from .seeded_split import SplitRules, split_at_seeds
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
    (:func:`.seeded_split.split_packed`). Returns the largest id afterwards."""
    ids = np.take(labels, pixels)
    largest = int(ids.max()) if ids.size else 0
    if plateaus is None:
        plateaus = peak_plateaus(labels.shape, pixels, smooth, threshold)
    candidates = _with_several_plateaus(*plateaus, pixels, ids)
    rules = dip_rules(smooth, foreground, threshold, depth, min_piece)
    return split_at_seeds(labels, pixels, ids, candidates, largest, rules, helper)


def dip_rules(smooth: np.ndarray, foreground: np.ndarray, threshold: float, depth: float, min_piece: int) -> SplitRules:
    """The rules of :func:`.seeded_split.split_at_seeds` (and
    :func:`.seeded_split.split_packed`) for the split at probability dips of ``foreground``
    (``smooth``: what :func:`.smoothing.smooth_foreground` gives for it; both of the shape the
    windows index), with the objects cut at ``threshold``."""
    levels = _levels(threshold, SEED_DEPTH)

    def find_seeds(canvas: np.ndarray, windows: list, places: list) -> tuple[np.ndarray, ...]:
        values = _packed(smooth, canvas.shape, windows, places)
        return (values, *_seeds(canvas, values, levels, SEED_DEPTH))

    def join(pieces: np.ndarray, values: np.ndarray, owners: np.ndarray, windows: list, places: list) -> np.ndarray:
        probability = _packed(foreground, pieces.shape, windows, places)
        return join_shallow_pieces(pieces, values, probability, owners, depth, min_piece)

    return SplitRules(find_seeds, min_piece, join)


def _packed(image: np.ndarray, shape: tuple[int, ...], windows: list, places: list) -> np.ndarray:
    """float32 canvas of ``shape`` holding ``image``'s boxes ``windows`` at ``places``
    (:func:`.seeded_split.split_at_seeds`'s packing), 0 elsewhere."""
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
