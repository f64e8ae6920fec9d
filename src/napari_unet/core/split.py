"""Splitting touching objects at dips of the foreground probability.

A network trained for a few minutes often predicts two touching cells as one
connected region whose foreground probability still dips between them. Here each
object of a labelling is split where its smoothed foreground probability has more
than one peak that rises at least ``depth`` above the level at which the peaks
join (the peaks' *dynamics*, as in h-maxima markers), and the pieces are grown back
to the whole object by a watershed of the smoothed probability.

Levels are taken ``LEVEL_STEP`` apart from the object threshold up. Only objects
with two or more separate local maxima high enough can split; each of them is
labelled level by level inside its bounding box, and those that split are flooded
by one watershed. Objects with one peak keep their pixels and id.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

#: Distance between the probability levels at which peaks are told apart.
LEVEL_STEP = 0.05
#: Gaussian smoothing (px, every axis) of the foreground probability before the
#: peaks are found: single-pixel noise makes no peaks.
SMOOTHING = 1.0


def smooth_foreground(foreground: np.ndarray) -> np.ndarray:
    """The foreground probability (H, W) or (Z, Y, X) smoothed as the split sees it:
    the binomial filter [1, 4, 6, 4, 1] / 16 (variance 1 px^2, a Gaussian of sigma
    1 px to within 2%) along every axis, borders mirrored. float32."""
    smooth = np.asarray(foreground, np.float32)
    for axis in range(smooth.ndim):
        pad = [(2, 2) if a == axis else (0, 0) for a in range(smooth.ndim)]
        padded = np.pad(smooth, pad, mode="symmetric")
        n = smooth.shape[axis]

        def tap(offset: int) -> np.ndarray:
            return padded[(slice(None),) * axis + (slice(offset, offset + n),)]  # noqa: B023

        smooth = tap(1) + tap(3)
        smooth *= 4
        smooth += tap(0)
        smooth += tap(4)
        smooth += 6 * tap(2)
        smooth /= 16
    return smooth


def split_objects(labels: np.ndarray, foreground: np.ndarray, threshold: float, depth: float) -> np.ndarray:
    """Split the objects of ``labels`` (int, 0 background; (H, W) or (Z, Y, X)) at
    dips of at least ``depth`` in the foreground probability ``foreground`` (same
    shape, values in [0, 1]) above ``threshold`` (the level the objects were cut at).

    Returns new int32 labels: objects that do not split keep their id, pieces of a
    split object get ids after the largest one (callers renumber). Pixels stay in
    the object they belonged to. Deterministic.
    """
    smooth = smooth_foreground(foreground)
    seeds, owners = _seeds(labels, smooth, threshold, depth)
    out = labels.astype(np.int32, copy=True)
    if owners.size == 0:
        return out
    next_id = int(out.max()) + 1
    windows = ndimage.find_objects(labels)
    for object_id in np.unique(owners):
        window = windows[object_id - 1]
        region = labels[window] == object_id
        numbers = np.flatnonzero(owners == object_id) + 1  # this object's seeds, in seed order
        markers = np.where(np.isin(seeds[window], numbers), seeds[window], 0)
        pieces = watershed(-smooth[window], markers, mask=region, connectivity=1)
        crop = out[window]
        for number in numbers[1:]:
            crop[pieces == number] = next_id
            next_id += 1
    return out


def _seeds(labels: np.ndarray, smooth: np.ndarray, threshold: float, depth: float):
    """The seeds of the pieces of every object that splits: an int32 image of seed
    numbers 1..n (0 elsewhere) and the object id of each seed (n,).

    Levels ``threshold + k * LEVEL_STEP`` (k >= 1) are labelled inside the objects
    (only the pixels still above the level are visited again); a component at level
    ``L`` is significant when it reaches ``L + depth``. Significance passes down the
    tree (a component's parent below it has the same maximum), so the significant
    components form a tree under each object. An object splits where that tree
    branches: the seeds are the significant components whose parent has two or more
    significant children and below which the tree no longer branches (a branch that
    branches again gives its own seeds).
    """
    faces = ndimage.generate_binary_structure(labels.ndim, 1)
    flat = labels.ravel()
    pixels = np.flatnonzero(flat)  # the pixels still above the current level ...
    values = smooth.ravel()[pixels]
    component = flat[pixels].astype(np.int64)  # ... and their component one level down
    parents, significant = [np.zeros(int(labels.max()) + 1, np.int64)], []
    significant.append(np.ones(len(parents[0]), bool))
    at_level = []  # (pixels, component) of every level, for painting the seeds
    above = np.zeros(labels.size, bool)
    reaches = None  # which components of the level below reach this level + depth
    k = 1
    while threshold + k * LEVEL_STEP + depth <= 1.0 + 1e-9:
        level = threshold + k * LEVEL_STEP
        keep = values > level
        if reaches is not None:  # components that cannot be significant here hold no seed above
            keep &= reaches[component]
        pixels, values, below = pixels[keep], values[keep], component[keep]
        if pixels.size == 0:
            break
        above[:] = False
        above[pixels] = True
        components, count = ndimage.label(above.reshape(labels.shape), structure=faces)
        component = components.ravel()[pixels].astype(np.int64)
        parent = np.zeros(count + 1, np.int64)
        parent[component] = below
        parents.append(parent)
        significant.append(np.bincount(component[values >= level + depth], minlength=count + 1) > 0)
        reaches = np.bincount(component[values >= level + LEVEL_STEP + depth], minlength=count + 1) > 0
        at_level.append((pixels, component))
        k += 1
    depth_count = len(parents)
    children = [np.bincount(parents[j][significant[j]], minlength=len(parents[j - 1])) for j in range(1, depth_count)]
    children.append(np.zeros(len(parents[-1]), np.int64))
    branches = [c >= 2 for c in children]  # the tree branches at or above this component
    for j in range(depth_count - 1, 0, -1):
        branches[j - 1][parents[j][significant[j] & branches[j]]] = True
    seeds = np.zeros(labels.size, np.int32)
    owners: list[int] = []
    for j in range(1, depth_count):
        chosen = np.flatnonzero(significant[j] & ~branches[j] & (children[j - 1][parents[j]] >= 2))
        chosen = chosen[chosen > 0]
        if chosen.size == 0:
            continue
        number = np.zeros(len(parents[j]), np.int32)  # component at level j -> seed number
        number[chosen] = np.arange(len(owners) + 1, len(owners) + 1 + chosen.size)
        pixels, component = at_level[j - 1]
        hit = number[component] > 0
        seeds[pixels[hit]] = number[component[hit]]
        roots = chosen
        for i in range(j, 0, -1):  # down the tree to the object
            roots = parents[i][roots]
        owners += roots.tolist()
    return seeds.reshape(labels.shape), np.asarray(owners, np.int64)
