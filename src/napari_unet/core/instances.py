"""From per-class probabilities to instance labels.

Per plane (per volume for 3D models, with 6-connectivity and the same rules in
3D): threshold the foreground probability, label 4-connected components, split
objects at dips of the probability when ``split`` asks for it (:mod:`.split`),
give every hole the id of its nearest object pixel, drop small objects, grow the
objects by ``expand`` px into background without merging (none by default), and
number them 1..n in raster order. Each step works in one pass over the image or
locally around a hole: no whole-image distance transform runs for a 1-px grow. On
large images the holes (which depend on the mask alone) are looked for on a second
thread while the objects are labelled and split. The result equals the plain
library formulation (whole-image ``binary_fill_holes`` and ``expand_labels``) pixel
for pixel, ties included (tests/reference.py).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import segmentation

from .config import InstanceConfig
from .split import split_objects

#: Masks of at least this many pixels look for their holes on a second thread.
PARALLEL_PIXELS = 1 << 20

#: 4-connectivity in 2D (scipy's default structuring element).
_CROSS = ndimage.generate_binary_structure(2, 1)


def _faces(ndim: int) -> np.ndarray:
    """Face connectivity: 4 neighbours in 2D, 6 in 3D."""
    return _CROSS if ndim == 2 else ndimage.generate_binary_structure(ndim, 1)


def foreground(probabilities: np.ndarray, ndim: int = 2) -> np.ndarray:
    """Foreground probability (..., H, W) from probabilities (..., K, H, W): 1 - background.
    ``ndim=3``: (..., Z, Y, X) from (..., K, Z, Y, X)."""
    return 1.0 - np.take(probabilities, 0, axis=-ndim - 1)


def probabilities_to_labels(
    probabilities: np.ndarray, config: InstanceConfig | None = None, ndim: int = 2
) -> np.ndarray:
    """Instance labels int32 (..., H, W) from probabilities (..., K, H, W); see the module
    docstring for the steps (``config`` sets threshold, hole filling, minimum size and
    grow). ``ndim=3``: one labelling per volume (..., Z, Y, X), so an object keeps one
    id across planes. Deterministic."""
    config = config or InstanceConfig()
    probability = foreground(probabilities, ndim)
    labels = np.zeros(probability.shape, np.int32)
    for index in np.ndindex(*probability.shape[: probability.ndim - ndim]):
        plane = probability[index]
        labels[index] = mask_to_labels(plane > config.threshold, config, plane)
    return labels


def mask_to_labels(mask: np.ndarray, config: InstanceConfig, probability: np.ndarray | None = None) -> np.ndarray:
    """Instance labels int32 (H, W) of one boolean foreground ``mask`` (H, W); a mask
    (Z, Y, X) gives 3D objects (6-connected, holes are 6-connected background
    regions that do not reach the volume's border, sizes in voxels).

    ``probability``: the foreground probability the mask was thresholded from (same
    shape); with it, objects are split at its dips as ``config.split`` says, without
    it the mask's components are kept (``config.split`` is not used).
    """
    # the holes depend on the mask alone: on large images they are found on a second
    # core while this one labels and splits the objects
    parallel = config.fill_holes and mask.size >= PARALLEL_PIXELS
    with ThreadPoolExecutor(max_workers=1) if parallel else nullcontext() as helper:
        holes = helper.submit(find_holes, mask) if parallel else None
        labels, count = ndimage.label(mask, structure=_faces(mask.ndim))
        if count == 0:
            return labels.astype(np.int32)
        split = bool(config.split) and probability is not None
        if split:
            labels = split_objects(labels, probability, config.threshold, config.split, config.min_piece)
            count = int(labels.max())
        if config.fill_holes:
            fill_holes(labels, holes.result() if holes else find_holes(mask))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= config.min_size
    keep[0] = False
    if split:  # pieces of split objects have ids after all others: order by first pixel
        survivors = np.flatnonzero(keep)
        survivors = survivors[np.argsort(first_pixels(labels, count)[survivors], kind="stable")]
        renumber = np.zeros(count + 1, np.int32)
        renumber[survivors] = np.arange(1, len(survivors) + 1, dtype=np.int32)
    else:
        renumber = (np.cumsum(keep) * keep).astype(np.int32)  # surviving ids -> 1..n, raster order kept
    labels = renumber[labels]
    if config.expand == 1:
        _grow_one_pixel(labels)
    elif config.expand > 1:
        labels = segmentation.expand_labels(labels, distance=config.expand).astype(np.int32)
    return labels


def first_pixels(labels: np.ndarray, count: int) -> np.ndarray:
    """The flat index of every id's first pixel in raster order (ids 0..count; an id
    with no pixel, and 0, get ``labels.size``). Any numbering.

    Only pixels whose predecessor along every axis has another id can be first, so
    the minimum is taken over those (the objects' upper-left edges) alone."""
    can_be_first = labels != 0
    for axis in range(labels.ndim):
        here = (slice(None),) * axis + (slice(1, None),)
        before = (slice(None),) * axis + (slice(None, -1),)
        can_be_first[here] &= labels[here] != labels[before]
    where = np.flatnonzero(can_be_first)
    first = np.full(count + 1, labels.size, np.int64)
    np.minimum.at(first, labels.ravel()[where], where)
    return first


@dataclass(frozen=True)
class Holes:
    """The holes of a foreground mask (4-connected background regions that do not
    reach the image border; 6-connected in 3D): ``regions`` labels the background
    (int32, mask's shape), ``is_hole`` says which of its regions are holes (bool,
    regions + 1), ``ids`` are those regions (n,), and ``low`` / ``high`` per axis
    their bounding boxes (first and one-past-last index, (n,))."""

    regions: np.ndarray
    is_hole: np.ndarray
    ids: np.ndarray
    low: list[np.ndarray]
    high: list[np.ndarray]


def find_holes(mask: np.ndarray) -> Holes | None:
    """The holes of the boolean ``mask`` (H, W) or (Z, Y, X); None when it has none."""
    background, count = ndimage.label(~mask, structure=_faces(mask.ndim))
    if count == 0:
        return None
    faces = [np.take(background, end, axis=axis) for axis in range(mask.ndim) for end in (0, -1)]
    border = np.unique(np.concatenate([face.ravel() for face in faces]))
    is_hole = np.ones(count + 1, bool)
    is_hole[border] = False
    is_hole[0] = False
    if not is_hole.any():
        return None
    return Holes(background, is_hole, *_hole_boxes(background, is_hole))


def fill_holes(labels: np.ndarray, holes: Holes | None) -> None:
    """Give every pixel of ``holes`` (of the mask ``labels`` was made from) the id
    of its nearest object pixel in ``labels``, in place.

    The nearest object pixel of a hole pixel lies within the hole's bounding box
    grown by its diagonal, so a distance transform of that window alone finds it,
    with the same tie-breaking as one over the whole image. When those windows
    together would cover more than the image (many holes: the speckled foreground of
    a barely trained network), one transform of the whole image does it instead.
    """
    if holes is None:
        return
    low, high = holes.low, holes.high
    reach = np.ceil(np.sqrt(sum((h - lo + 2.0) ** 2 for lo, h in zip(low, high)))).astype(np.int64) + 1
    low = [np.maximum(lo - reach, 0) for lo in low]
    high = [np.minimum(h + reach, n) for h, n in zip(high, labels.shape)]
    objects = labels.copy()  # holes take ids of object pixels, never of holes filled before them
    if np.prod([h - lo for lo, h in zip(low, high)], axis=0).sum() > labels.size:
        everywhere = tuple(slice(0, n) for n in labels.shape)
        _take_nearest_objects(labels, objects, holes.is_hole[holes.regions], everywhere)
        return
    for index, region in enumerate(holes.ids):
        window = tuple(slice(int(lo[index]), int(h[index])) for lo, h in zip(low, high))
        _take_nearest_objects(labels, objects, holes.regions[window] == region, window)


def _hole_boxes(background: np.ndarray, is_hole: np.ndarray) -> tuple[np.ndarray, list, list]:
    """The ids of the holes among ``background``'s regions and their bounding boxes
    (per axis: first and one-past-last index), in id order."""
    coords = np.nonzero(is_hole[background])
    ids = background[coords]
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    low = [np.minimum.reduceat(axis[order], starts) for axis in coords]
    high = [np.maximum.reduceat(axis[order], starts) + 1 for axis in coords]
    return ids[starts], low, high


def _take_nearest_objects(labels: np.ndarray, objects: np.ndarray, hole: np.ndarray, window: tuple) -> None:
    """Give the ``hole`` pixels of ``window`` (a mask of the window's shape) the id of
    their nearest pixel of ``objects`` in that window, in ``labels``."""
    crop = objects[window]
    _, nearest = ndimage.distance_transform_edt(crop == 0, return_indices=True)
    labels[window][hole] = crop[tuple(axis[hole] for axis in nearest)]


#: Face neighbours in the order the 1-px grow applies them (the last applied wins),
#: per dimensionality: the choice a whole-image nearest-pixel distance transform makes.
_GROW_ORDER = {
    2: ((0, 1), (1, 0), (-1, 0), (0, -1)),
    3: ((0, 0, 1), (0, 1, 0), (1, 0, 0), (-1, 0, 0), (0, -1, 0), (0, 0, -1)),
}


def _grow_one_pixel(labels: np.ndarray) -> None:
    """Grow every object by 1 px into background without merging, in place.

    A background pixel takes the id of a labelled face neighbour (the pixels at
    distance 1); where several are labelled it prefers left, then up, then down, then
    right (in 3D: x-1, y-1, z-1, z+1, y+1, x+1) — the choice a whole-image
    nearest-pixel distance transform makes.
    """
    empty, labelled = labels == 0, labels > 0
    grown = labels.copy()
    shape = labels.shape
    for offset in _GROW_ORDER[labels.ndim]:  # the last applied wins
        target = tuple(slice(max(-d, 0), n - max(d, 0)) for d, n in zip(offset, shape))
        source = tuple(slice(max(d, 0), n + min(d, 0)) for d, n in zip(offset, shape))
        np.copyto(grown[target], labels[source], where=empty[target] & labelled[source])
    labels[...] = grown
