"""From per-class probabilities to instance labels.

Per plane (per volume for 3D models, with 6-connectivity and the same rules in
3D): threshold the foreground probability, label 4-connected components, split
objects at dips of the probability when ``split`` asks for it (:mod:`.split`),
give every hole the id of its nearest object pixel, split objects shaped like
several cells at their necks when ``min_fill`` asks for it (:mod:`.concave`; with a
known ``object_size`` none over ``CLUMP_LIMIT`` times it),
split objects far larger than the model's cells once more where their log-odds
dip (:mod:`.large_objects`, with ``split`` and a known ``object_size``), drop
small objects (with a larger minimum at the image's border where
``edge_size_factor`` asks for one), grow the objects by ``expand`` px into
background without merging (none by default), and number them 1..n in raster
order of their first pixels. After the labelling, each step works on the list of
object pixels (a fraction of the image) or locally around a hole: no whole-image
distance transform runs for a 1-px grow. On large images a second thread, when the
process may use two cores, smooths half of the probability for the split, then
finds the plateaus of its peaks and the holes (both depend on the mask alone) while
this one labels and splits the objects; then it finds the seeds of half of the
candidates of the split by shape and of the large objects' split. Without the
split by shape, the result equals the plain library formulation (whole-image
``binary_fill_holes`` and ``expand_labels``, and the recursive split) pixel for
pixel, ties included (tests/reference.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from skimage import segmentation

from .concave import split_concave_in_place
from .config import InstanceConfig
from .large_objects import CLUMP_LIMIT, split_large_in_place
from .regions import bounding_boxes, run_starts
from .smoothing import smooth_foreground
from .split import peak_plateaus, split_in_place

#: Masks of at least this many pixels share the work with a second thread.
PARALLEL_PIXELS = 1 << 17

#: 4-connectivity in 2D (scipy's default structuring element).
_CROSS = ndimage.generate_binary_structure(2, 1)


def _faces(ndim: int) -> np.ndarray:
    """Face connectivity: 4 neighbours in 2D, 6 in 3D."""
    return _CROSS if ndim == 2 else ndimage.generate_binary_structure(ndim, 1)


def foreground(probabilities: np.ndarray, ndim: int = 2) -> np.ndarray:
    """Foreground probability (..., H, W) from probabilities (..., K, H, W): 1 - background.
    ``ndim=3``: (..., Z, Y, X) from (..., K, Z, Y, X)."""
    return 1.0 - probabilities[(..., 0) + (slice(None),) * ndim]


def probabilities_to_labels(
    probabilities: np.ndarray,
    config: InstanceConfig | None = None,
    ndim: int = 2,
    spacing: tuple[float, ...] | None = None,
) -> np.ndarray:
    """Instance labels int32 (..., H, W) from probabilities (..., K, H, W); see the module
    docstring for the steps (``config`` sets threshold, hole filling, minimum size and
    grow). ``ndim=3``: one labelling per volume (..., Z, Y, X), so an object keeps one
    id across planes; ``spacing`` (z, y, x): the voxel size, for the distances of the
    split by shape (``None``: cubes). Deterministic."""
    config = config or InstanceConfig()
    probability = foreground(probabilities, ndim)
    if probability.ndim == ndim:  # one plane (volume): its labels are the result, no copy
        return mask_to_labels(probability > config.threshold, config, probability, spacing)
    labels = np.zeros(probability.shape, np.int32)
    for index in np.ndindex(*probability.shape[: probability.ndim - ndim]):
        plane = probability[index]
        labels[index] = mask_to_labels(plane > config.threshold, config, plane, spacing)
    return labels


def objects_found(labels: np.ndarray, unit_ndim: int) -> str:
    """How many objects instance ``labels`` (*stack, *spatial) hold, each plane
    (``unit_ndim`` 2) or volume (3) numbered from 1 as :func:`probabilities_to_labels`
    numbers them: "290 objects in 28 planes" (the largest id counts one plane's)."""
    units = labels.reshape(-1, *labels.shape[labels.ndim - unit_ndim :])
    return objects_counted([int(unit.max(initial=0)) for unit in units], unit_ndim)


def objects_counted(counts: Sequence[int], unit_ndim: int = 2) -> str:
    """:func:`objects_found`'s words for the object counts of each plane (``unit_ndim``
    2) or volume (3)."""
    where = f" in {len(counts)} {'planes' if unit_ndim == 2 else 'volumes'}" if len(counts) > 1 else ""
    total = sum(counts)
    return f"{total} object{'' if total == 1 else 's'}{where}"


def no_objects_note(labels: np.ndarray, probabilities: np.ndarray, config: InstanceConfig, ndim: int = 2) -> str | None:
    """What to change when ``labels`` (from ``probabilities`` (..., K, *spatial) of a
    model of ``ndim``, labelled with ``config``) hold no object, or ``None``: either no
    pixel passed the threshold (the highest foreground probability is given), or every
    region that did was smaller than the smallest object kept."""
    if labels.any():
        return None
    highest = float(foreground(probabilities, ndim).max(initial=0.0))
    if highest <= config.threshold:
        return (
            f"no objects: no pixel's foreground probability passed the threshold {config.threshold:g} (the highest "
            f"is {highest:.2f}). A model trained for a short time may need more training; a model trained on other "
            "images needs images like them (the same kind of staining, and cells of the same size: see rescale)"
        )
    return (
        f"no objects: every region above the threshold is smaller than the smallest object kept ({config.min_size} "
        "px, voxels in 3D): lower it (segment --min-size, 'smallest object' in the Segment widget)"
    )


#: Neighbouring planes of a volume share far more foreground than chance would give
#: (objects span several planes); below this many times chance they look unrelated.
RELATED_PLANES = 1.5


def unrelated_planes_note(labels: np.ndarray) -> str | None:
    """What to say when the planes of ``labels`` (*stack, Z, Y, X), a 2D model's stack
    labelled as volumes, do not look like the planes of one volume, or ``None``.

    In a volume, a pixel in an object is most often in an object in the next plane
    too. Per pair of neighbouring planes the foreground they share is compared with
    what two unrelated planes of the same foreground fractions would share by chance
    (the product of the fractions); the median over the pairs decides. Pairs with
    almost no or almost all foreground say nothing and are left out."""
    masks = np.asarray(labels).reshape(-1, *labels.shape[-3:]) > 0
    ratios = []
    for volume in masks:
        fractions = volume.reshape(len(volume), -1).mean(axis=1)
        for z in range(len(volume) - 1):
            pair = fractions[z : z + 2]
            if pair.min() >= 0.005 and pair.max() <= 0.5:
                ratios.append(np.mean(volume[z] & volume[z + 1]) / (pair[0] * pair[1]))
    shared = float(np.median(ratios)) if ratios else RELATED_PLANES
    if shared >= RELATED_PLANES:
        return None
    return (
        f"the planes do not look like one volume: neighbouring planes share objects about as often as unrelated "
        f"images would ({shared:.1f}x chance), so linking objects across them makes no sense; segment "
        "'all planes' (plane by plane; without --as-volume) for a time series or a stack of separate images"
    )


def mask_to_labels(
    mask: np.ndarray,
    config: InstanceConfig,
    probability: np.ndarray | None = None,
    spacing: tuple[float, ...] | None = None,
) -> np.ndarray:
    """Instance labels int32 (H, W) of one boolean foreground ``mask`` (H, W); a mask
    (Z, Y, X) gives 3D objects (6-connected, holes are 6-connected background
    regions that do not reach the volume's border, sizes in voxels).

    ``probability``: the foreground probability the mask was thresholded from (same
    shape); with it, objects are split at its dips as ``config.split`` says, without
    it the mask's components are kept (``config.split`` is not used). ``spacing``:
    the voxel size per axis, for the split by shape (:mod:`.concave`).

    How the work is shared between the object pixels and a second thread: see the
    module docstring.
    """
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    split = bool(config.split) and probability is not None
    parallel = mask.size >= PARALLEL_PIXELS and torch.get_num_threads() > 1  # the process may use two cores
    with ThreadPoolExecutor(max_workers=1) if parallel else nullcontext() as helper:
        holes = plateaus = None
        if parallel and config.fill_holes and not split:  # the helper has nothing else to do: holes at once
            holes = helper.submit(find_holes, mask)
        smooth = smooth_foreground(probability, helper) if split else None
        pixels = np.flatnonzero(mask)  # the object pixels, in raster order
        if parallel and split:  # the helper's next jobs, in the order they are needed
            plateaus = helper.submit(peak_plateaus, mask.shape, pixels, smooth, config.threshold)
            holes = helper.submit(find_holes, mask) if config.fill_holes else None
        labels, components = ndimage.label(mask, structure=_faces(mask.ndim))
        count = components
        if split:
            count = split_in_place(
                labels,
                pixels,
                smooth,
                probability,
                config.threshold,
                config.split,
                config.min_piece,
                plateaus.result() if plateaus is not None else None,
            )
        if config.fill_holes:
            found = holes.result() if holes else find_holes(mask)
            if found is not None:
                fill_holes(labels, found)
                pixels = np.insert(pixels, np.searchsorted(pixels, found.pixels), found.pixels)  # still increasing
        # the helper is free again: it finds the seeds of half of each split's candidates
        if config.min_fill > 0:
            largest = CLUMP_LIMIT * config.object_size if config.object_size > 0 else math.inf
            count = split_concave_in_place(
                labels, pixels, count, config.min_fill, config.neck, config.min_piece, spacing, helper, largest
            )
        if split:
            count = split_large_in_place(
                labels, pixels, probability, config.threshold, config.split, config.min_piece, config.object_size,
                count, helper,
            )  # fmt: skip
    ids = np.take(labels, pixels)
    at_border = None
    if config.edge_size_factor > 1.0:
        at_border = np.zeros(count + 1, bool)
        at_border[border_ids(labels)] = True
    keep = kept_by_size(np.bincount(ids, minlength=count + 1), at_border, config)
    if count > components:  # pieces of split objects have ids after all others: order by first pixel
        survivors = np.flatnonzero(keep)
        survivors = survivors[np.argsort(_first_pixels_of(labels.size, pixels, ids, count)[survivors], kind="stable")]
        renumber = np.zeros(count + 1, np.int32)
        renumber[survivors] = np.arange(1, len(survivors) + 1, dtype=np.int32)
    else:
        renumber = (np.cumsum(keep) * keep).astype(np.int32)  # surviving ids -> 1..n, raster order kept
    np.put(labels, pixels, renumber[ids])  # every non-zero pixel is one of ``pixels``: renumbered in place
    if config.expand == 1:
        _grow_one_pixel(labels)
    elif config.expand > 1:
        labels = segmentation.expand_labels(labels, distance=config.expand).astype(np.int32)
    return labels


def border_ids(labels: np.ndarray) -> np.ndarray:
    """The ids (with 0, where present) of ``labels`` (any number of axes) on its border."""
    faces = [np.take(labels, index, axis=axis).ravel() for axis in range(labels.ndim) for index in (0, -1)]
    return np.unique(np.concatenate(faces))


def kept_by_size(sizes: np.ndarray, at_border: np.ndarray | None, config: InstanceConfig) -> np.ndarray:
    """Which objects stay (n + 1,) bool, from their ``sizes`` (n + 1,) in pixels (voxels;
    index 0 is the background, never kept) and whether they touch the image's border
    (``at_border`` (n + 1,) bool, ``None``: none does): ``config.min_size``, and
    ``config.edge_size_factor`` times that at the border."""
    keep = sizes >= config.min_size
    if at_border is not None:
        keep &= ~at_border | (sizes >= config.edge_size_factor * config.min_size)
    keep[0] = False
    return keep


def first_pixels(labels: np.ndarray, count: int) -> np.ndarray:
    """The flat index of every id's first pixel in raster order (ids 0..count; an id
    with no pixel, and 0, get ``labels.size``). Any numbering."""
    pixels = np.flatnonzero(labels)
    return _first_pixels_of(labels.size, pixels, np.take(labels, pixels), count)


def _first_pixels_of(size: int, pixels: np.ndarray, ids: np.ndarray, count: int) -> np.ndarray:
    """:func:`first_pixels` from the non-zero pixels' flat indices ``pixels``
    (increasing) and their ids ``ids``, in an array of ``size`` pixels. An id's first
    pixel starts a run of its pixels (:func:`.regions.run_starts`), so the minimum is
    taken over the run starts alone: a few per object and row."""
    starts = run_starts(pixels, ids)
    first = np.full(count + 1, size, np.int64)
    np.minimum.at(first, ids[starts], pixels[starts])
    return first


@dataclass(frozen=True)
class Holes:
    """The holes of a foreground mask (4-connected background regions that do not
    reach the image border; 6-connected in 3D): ``pixels`` are their pixels (flat
    indices, increasing), ``regions`` labels the background (int32, mask's shape;
    1: what reaches the border), ``ids`` are the holes' regions (n,), and ``low`` / ``high`` per axis their
    bounding boxes (first and one-past-last index, (n,))."""

    pixels: np.ndarray
    regions: np.ndarray
    ids: np.ndarray
    low: list[np.ndarray]
    high: list[np.ndarray]


def find_holes(mask: np.ndarray) -> Holes | None:
    """The holes of the boolean ``mask`` (H, W) or (Z, Y, X); None when it has none.

    The background is labelled inside a 1-px frame of background, so everything
    that reaches the border is one region, numbered 1 (the frame's first pixel
    comes first): the holes are the regions numbered from 2."""
    framed = np.ones(tuple(n + 2 for n in mask.shape), bool)
    inside = tuple(slice(1, -1) for _ in mask.shape)
    np.logical_not(mask, out=framed[inside])
    background, count = ndimage.label(framed, structure=_faces(mask.ndim))
    if count < 2:
        return None
    regions = background[inside]
    pixels = np.flatnonzero(regions > 1)
    ids = regions[np.unravel_index(pixels, mask.shape)]
    return Holes(pixels, regions, *bounding_boxes(pixels, ids, mask.shape))


def fill_holes(labels: np.ndarray, holes: Holes | None) -> None:
    """Give every pixel of ``holes`` (of the mask ``labels`` was made from) the id
    of its nearest object pixel in ``labels``, in place.

    The nearest object pixel of a hole pixel lies within the hole's bounding box
    grown by its diagonal, so a distance transform of that window alone finds it,
    with the same tie-breaking as one over the whole image. When those windows
    together would cover more than the image (many holes: the speckled foreground of
    a barely trained network), one transform of the whole image does it instead.
    Every hole's ids are found before any is written: holes take ids of object
    pixels, never of holes filled before them.
    """
    if holes is None:
        return
    low, high = holes.low, holes.high
    reach = np.ceil(np.sqrt(sum((h - lo + 2.0) ** 2 for lo, h in zip(low, high)))).astype(np.int64) + 1
    low = [np.maximum(lo - reach, 0) for lo in low]
    high = [np.minimum(h + reach, n) for h, n in zip(high, labels.shape)]
    if np.prod([h - lo for lo, h in zip(low, high)], axis=0).sum() > labels.size:
        everywhere = tuple(slice(0, n) for n in labels.shape)
        every_hole = np.zeros(labels.shape, bool)
        np.put(every_hole, holes.pixels, True)
        fills = [(everywhere, every_hole)]
    else:
        windows = [tuple(slice(int(lo[i]), int(h[i])) for lo, h in zip(low, high)) for i in range(len(holes.ids))]
        fills = [(window, holes.regions[window] == region) for window, region in zip(windows, holes.ids)]
    nearest = [_nearest_objects(labels, hole, window) for window, hole in fills]
    for (window, hole), ids in zip(fills, nearest):
        labels[window][hole] = ids


def _nearest_objects(labels: np.ndarray, hole: np.ndarray, window: tuple) -> np.ndarray:
    """The id of the nearest object pixel of ``labels`` within ``window`` for every
    ``hole`` pixel of the window (``hole``: a mask of the window's shape)."""
    crop = labels[window]
    _, nearest = ndimage.distance_transform_edt(crop == 0, return_indices=True)
    return crop[tuple(axis[hole] for axis in nearest)]


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
