"""Segmenting an image taken at another magnification than the training images.

A network learns cells of the size it was shown: on the real-data benchmark, a model
trained on DSB 2018 nuclei segmented the same kind of image enlarged 2x with AP@0.5
0.39 instead of 0.90 (each nucleus cut in two), and shrunk 2x with 0.57. ``rescale``
resizes the image's planes by a factor before prediction (2: twice as many pixels
along y and x, for cells that look half as large as those the model learned) and the
probabilities back after it, so labels, probabilities and everything measured stay
on the image's own pixel grid; the model's object sizes are converted to that grid
(:func:`instances_at_scale`). After labelling, :func:`size_mismatch_note` compares
the objects found with the median size the model learned, where it knows it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage

from .concave import ellipse_fill
from .config import InstanceConfig
from .errors import ConfigError

#: A median object area this many times off the learned one (or its inverse) is noted
#: (1.32x along each axis).
MISMATCH = 1.75
#: The factors rescale takes.
SMALLEST, LARGEST = 0.125, 8.0
#: Fewer objects than this say nothing about their median size.
MIN_OBJECTS = 5
#: Planes (volumes) of this many pixels (voxels) are measured on every 2nd row and
#: column: the median of sizes that large moves by well under the note's margin, and a
#: 2048x2048 plane takes 3 ms instead of 11 after a segmentation of about 1.3 s.
SAMPLED_FROM = 1 << 20
#: Objects this many times the learned median send the check to the regions they form.
CUT_HINT = 1.15
#: A region of the foreground counts as one cell when it fills this much of its
#: ellipse, and the model's ``min_fill`` where that is more.
ROUND_FILL = 0.9


def check_rescale(factor) -> float:
    """``factor`` as a float in [:data:`SMALLEST`, :data:`LARGEST`] (a clear error otherwise)."""
    try:
        value = float(factor)
    except (TypeError, ValueError):
        value = math.nan
    if not SMALLEST <= value <= LARGEST:
        raise ConfigError(
            f"rescale must be a factor from {SMALLEST:g} to {LARGEST:g} (2: cells look half as large as those the "
            f"model learned), got {factor!r}"
        )
    return value


def resize_planes(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``array`` (..., H, W) float32 resampled to (..., *shape) by linear interpolation
    (Gaussian-smoothed first where it shrinks, so that no detail aliases)."""
    from skimage.transform import resize

    array = np.asarray(array, np.float32)
    shrinks = shape[0] < array.shape[-2] or shape[1] < array.shape[-1]
    flat = array.reshape(-1, *array.shape[-2:])
    out = np.empty((len(flat), *shape), np.float32)
    for index, plane in enumerate(flat):
        out[index] = resize(plane, shape, order=1, mode="reflect", anti_aliasing=shrinks, preserve_range=True)
    return out.reshape(*array.shape[:-2], *shape)


def scaled_shape(shape: tuple[int, ...], factor: float) -> tuple[int, int]:
    """The in-plane size (h, w) of planes of ``shape`` (..., H, W) rescaled by ``factor``."""
    return tuple(max(1, round(n * factor)) for n in shape[-2:])


def instances_at_scale(instances: InstanceConfig, factor: float) -> InstanceConfig:
    """``instances``, whose sizes are in the pixels the model sees, in the pixels of
    an image that is rescaled by ``factor`` before the model sees it: areas divide by
    ``factor`` squared, lengths by ``factor``."""
    if factor == 1.0:
        return instances
    area = factor * factor
    return dataclasses.replace(
        instances,
        min_size=round(instances.min_size / area),
        min_piece=round(instances.min_piece / area),
        neck=instances.neck / factor,
        object_size=round(instances.object_size / area),
    )


def size_mismatch_note(
    labels: np.ndarray, instances: InstanceConfig, ndim: int = 2, rescale: float = 1.0
) -> str | None:
    """A note when the objects in ``labels`` (each plane, or volume for ``ndim`` 3,
    numbered from 1) are :data:`MISMATCH` times larger or smaller than
    ``instances.object_size``, the median the model learned (0: not known, no note).
    ``instances`` are the settings on the labels' pixel grid, which were segmented
    with ``rescale``.

    Smaller: the median object. Larger: the median connected region of the
    foreground, where the median object is at least :data:`CUT_HINT` times the
    learned one too. Cells larger than a model knows come out cut in pieces, whose
    median stays near the learned size (DSB nuclei at 2x: pieces 1.2-1.9x, regions
    3.3-3.4x), while the regions keep the cells' size. Cells that touch make one
    region, a clump, so only round regions count (filling at least the model's
    ``min_fill``, and :data:`ROUND_FILL`, of the ellipse of their moments), and with
    fewer than :data:`MIN_OBJECTS` of them nothing is said: a volume of touching
    nuclei, each segmented right, was called 2.9x too large.
    """
    if instances.object_size <= 0:
        return None
    units = labels.reshape(-1, *labels.shape[labels.ndim - ndim :])
    step = 2 if units[0].size >= SAMPLED_FROM else 1  # every 2nd row and column: a quarter of the work
    units = units[..., ::step, ::step]
    sizes = _sizes(units) * step * step
    if sizes.size < MIN_OBJECTS:
        return None
    ratio = float(np.median(sizes)) / instances.object_size
    what = "size"
    if ratio >= CUT_HINT:
        regions = _round_region_sizes(units, max(instances.min_fill, ROUND_FILL)) * step * step
        if regions.size < MIN_OBJECTS:
            return None  # clumps of cells that touch: their size says nothing of the magnification
        ratio, what = float(np.median(regions)) / instances.object_size, "round connected region of the foreground"
    factor = rescale / math.sqrt(ratio)
    if 1 / MISMATCH < ratio < MISMATCH or not SMALLEST <= factor <= LARGEST:
        return None  # far outside rescale's range, the model is the problem, not the magnification
    unit = "px" if ndim == 2 else "voxels"
    bigger = "larger" if ratio > 1 else "smaller"
    return (
        f"the objects found are {max(ratio, 1 / ratio):.1f}x {bigger} than those the model learned (median "
        f"{what} {ratio * instances.object_size:.0f} against {instances.object_size} {unit}): if this image was "
        f"taken at another magnification, segment it again with rescale {factor:.2g} (a "
        f"first guess from the objects found; --rescale on the command line)"
    )


def _round_region_sizes(units, fill: float) -> np.ndarray:
    """The sizes of the connected regions of the foreground of ``units`` (label images)
    that fill at least ``fill`` of the ellipse of their moments: single cells, not the
    clumps that touching cells make (two touching discs fill 0.89 of theirs, balls
    0.82)."""
    found = []
    for unit in units:
        regions, count = ndimage.label(np.asarray(unit) > 0)
        pixels = np.flatnonzero(regions)
        sizes, fills = ellipse_fill(regions.shape, pixels, regions.ravel()[pixels], count)
        found.append(sizes[1:][(fills[1:] >= fill) & (sizes[1:] > 0)])
    return np.concatenate(found)


def _sizes(units) -> np.ndarray:
    """The sizes of the objects of label images numbered from 1, all in one array."""
    sizes = np.concatenate([np.bincount(np.asarray(unit).ravel())[1:] for unit in units])
    return sizes[sizes > 0]
