"""Splitting touching objects at dips of the foreground probability.

A network trained for a few minutes often predicts two touching cells as one
connected region whose foreground probability still dips between them. Here each
object of a labelling is split where its smoothed foreground probability has more
than one peak that rises at least ``depth`` above the level at which the peaks
join (the peaks' *dynamics*, as in h-maxima markers), and the pieces are grown back
to the whole object by a watershed of the smoothed probability.

Levels are taken ``LEVEL_STEP`` apart from the object threshold up, so the work is
one labelling per level over the image (vectorised over all objects) and one
watershed per object that splits; objects with one peak keep their pixels and id.
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
    """The foreground probability (H, W) or (Z, Y, X) smoothed as the split sees it."""
    return ndimage.gaussian_filter(np.asarray(foreground, np.float32), SMOOTHING, mode="reflect")


def split_objects(labels: np.ndarray, foreground: np.ndarray, threshold: float, depth: float) -> np.ndarray:
    """Split the objects of ``labels`` (int, 0 background; (H, W) or (Z, Y, X)) at
    dips of at least ``depth`` in the foreground probability ``foreground`` (same
    shape, values in [0, 1]) above ``threshold`` (the level the objects were cut at).

    Returns new int32 labels: objects that do not split keep their id, pieces of a
    split object get ids after the largest one (callers renumber). Pixels stay in
    the object they belonged to. Deterministic.
    """
    smooth = smooth_foreground(foreground)
    structure = ndimage.generate_binary_structure(labels.ndim, 1)
    level_labels, markers_at = _peak_tree(labels, smooth, threshold, depth, structure)
    out = labels.astype(np.int32, copy=True)
    next_id = int(out.max()) + 1
    for object_id, window in enumerate(ndimage.find_objects(labels), start=1):
        if window is None or object_id not in markers_at:
            continue
        region = labels[window] == object_id
        markers = np.zeros(region.shape, np.int32)
        for number, (level, component) in enumerate(markers_at[object_id], start=1):
            markers[level_labels[level][window] == component] = number
        pieces = watershed(-smooth[window], markers, mask=region, connectivity=1)
        crop = out[window]
        for number in range(2, len(markers_at[object_id]) + 1):
            crop[pieces == number] = next_id
            next_id += 1
    return out


def _peak_tree(labels, smooth, threshold, depth, structure):
    """The components of ``smooth`` above each level inside the objects, and for
    every object with more than one significant peak the (level, component) pairs
    that seed its pieces.

    A component at level ``L`` is significant when its maximum is at least ``depth``
    above ``L``. Significance passes down the tree (a component's parent below it has
    the same maximum), so the significant components form a tree under each object.
    An object splits where that tree branches: the seeds are the significant
    components whose parent has two or more significant children and below which the
    tree no longer branches (a branch that branches again gives its own seeds).
    """
    levels, parents, significant = [labels], [np.zeros(int(labels.max()) + 1, np.int64)], []
    significant.append(np.ones(len(parents[0]), bool))  # every object is a root
    k = 1
    while threshold + k * LEVEL_STEP + depth <= 1.0 + 1e-9:
        level = threshold + k * LEVEL_STEP
        above, count = ndimage.label((smooth > level) & (labels > 0), structure=structure)
        if count == 0:
            break
        inside = np.flatnonzero(above)
        parent = np.zeros(count + 1, np.int64)
        parent[above.flat[inside]] = levels[-1].flat[inside]
        peaks = above[smooth >= level + depth]  # a component is significant if it reaches this high
        levels.append(above)
        parents.append(parent)
        significant.append(np.bincount(peaks, minlength=count + 1) > 0)
        k += 1
    children = [np.zeros(len(p), np.int64) for p in parents]
    for k in range(1, len(levels)):
        children[k - 1] = np.bincount(parents[k][significant[k]], minlength=len(parents[k - 1]))
    branches = [c >= 2 for c in children]  # the tree branches at or above this component
    for k in range(len(levels) - 1, 0, -1):
        branches[k - 1][parents[k][significant[k] & branches[k]]] = True
    markers_at: dict[int, list[tuple[int, int]]] = {}
    for k in range(1, len(levels)):
        seeds = significant[k] & ~branches[k] & (children[k - 1][parents[k]] >= 2)
        seeds[0] = False
        for component in np.flatnonzero(seeds):
            root = component
            for j in range(k, 0, -1):
                root = parents[j][root]
            markers_at.setdefault(int(root), []).append((k, int(component)))
    return levels, markers_at
