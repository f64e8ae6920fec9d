"""Object sizes and shapes that a trained model takes from the annotation it learned from.

Three errors of networks trained for minutes on real microscopy (bench/bench_real.py)
depend on how large and how round the cells are. Tiny predicted objects (debris,
specks of noise, slivers where a cell leaves the image) were most of the false
objects; the split at probability dips (:mod:`.split`) cut large textured nuclei in
two where their probability dipped inside; and clumps of nuclei with faint
boundaries stayed merged (:mod:`.concave` parts them by their shape). A fixed
number of pixels cannot serve cells of 100 px and of 2000 px alike, nor one
roundness round nuclei and bent rods, so training reads these off the objects the
user annotated completely (those that touch the image border nowhere and
unannotated pixels little: :data:`MAX_UNANNOTATED_CONTACTS`; in a volume annotated on a
few planes, those complete within their plane, whose areas :func:`in_voxels` turns
into volumes):

- the minimum object size: 40% of the size below which 5% of them lie, never less
  than InstanceConfig's default, and for objects that touch the image's border 50%
  (``edge_size_factor``: the border cuts cells into pieces of any size, which the
  network outlines from a mirrored view; on the real-data benchmark such pieces
  mostly missed their cells, while whole small nuclei inside the image that 50% left
  out matched theirs);
- the smallest piece a split may leave: 30% of their median size;
- the ellipse fill below which an object is split by its shape: the fill below which
  5% of them lie, at most MAX_FILL (what a rectangle fills: predicted outlines are
  rougher than annotated ones, and only objects well below it ever split);
- the depth of the necks such a split cuts: NECK_FRACTION of the radius of a disc
  (ball) of their median size, at least MIN_NECK px (shallower bumps of a distance
  transform are the pixel grid's);
- their median size itself, against which segmenting checks the objects it finds
  (:mod:`.rescale`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .concave import ellipse_fill
from .config import IGNORE_LABEL, InstanceConfig

#: An object counts as completely annotated when at most this share of the face
#: neighbours around it are unannotated: painting background around a cell with a
#: brush leaves a few -1 pixels at its rim (2-6 of some 60 around a 20 px cell in a
#: new user's walk through the widgets, which left no cell complete when any -1
#: neighbour made a cell partial), while a cell cut in half by the edge of the
#: annotated region has about 40% of them unannotated.
MAX_UNANNOTATED_CONTACTS = 0.25
#: The minimum size is :data:`SIZE_FRACTION` of this percentile of the complete objects'
#: sizes, and :data:`EDGE_SIZE_FRACTION` of it for objects at the image's border.
SIZE_PERCENTILE = 5.0
SIZE_FRACTION = 0.4
EDGE_SIZE_FRACTION = 0.5
#: The smallest piece of a split is this fraction of the complete objects' median size.
PIECE_FRACTION = 0.3
#: The shape split's fill threshold: this percentile of the complete objects' fills,
#: at most :data:`MAX_FILL`.
FILL_PERCENTILE = 5.0
MAX_FILL = 0.95
#: The shape split's neck depth: this fraction of the median object's equivalent
#: radius, at least :data:`MIN_NECK` px.
NECK_FRACTION = 0.1
MIN_NECK = 1.0


@dataclass(frozen=True)
class CompleteObjects:
    """The completely annotated objects of one plane (``ndim`` 2) or volume (3), in id
    order: ``sizes`` (n,) int64 in pixels (voxels) and ``fills`` (n,) float64, how much
    of the ellipse of their second moments they fill (:func:`.concave.ellipse_fill`)."""

    sizes: np.ndarray
    fills: np.ndarray
    ndim: int = 2

    @classmethod
    def none(cls, ndim: int = 2) -> CompleteObjects:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.float64), ndim)


def complete_objects(labels: np.ndarray) -> CompleteObjects:
    """The objects of one annotated plane (H, W) or volume (Z, Y, X) that touch its
    border nowhere and unannotated pixels (``IGNORE_LABEL``) on at most
    :data:`MAX_UNANNOTATED_CONTACTS` of their face neighbours. 0 is background.

    A volume annotated on a few planes (the rest -1) has no complete object in 3D;
    then the objects complete within its planes stand for it (``ndim`` 2; their sizes
    are areas, see :func:`in_voxels`)."""
    labels = np.asarray(labels)
    found = _complete_objects(labels)
    if labels.ndim == 3 and found.sizes.size == 0:
        planes = [_complete_objects(plane) for plane in labels]
        return CompleteObjects(
            np.concatenate([found.sizes, *(plane.sizes for plane in planes)]),
            np.concatenate([found.fills, *(plane.fills for plane in planes)]),
            ndim=2,
        )
    return found


def _complete_objects(labels: np.ndarray) -> CompleteObjects:
    """The objects complete within ``labels`` itself (a plane, or a volume in 3D)."""
    highest = int(labels.max(initial=0))
    if highest <= 0:
        return CompleteObjects.none(labels.ndim)
    pixels = np.flatnonzero(labels > 0)
    ids = labels.ravel()[pixels]
    sizes, fills = ellipse_fill(labels.shape, pixels, ids, highest)
    at_border = [np.take(labels, end, axis=axis).ravel() for axis in range(labels.ndim) for end in (0, -1)]
    complete = sizes > 0
    complete[0] = False
    complete[np.concatenate(at_border).clip(min=0)] = False
    if (labels == IGNORE_LABEL).any():
        outside, unannotated = _outer_contacts(labels, highest)
        complete &= unannotated <= MAX_UNANNOTATED_CONTACTS * outside
    return CompleteObjects(sizes[complete].astype(np.int64), fills[complete], labels.ndim)


def _outer_contacts(labels: np.ndarray, highest: int) -> tuple[np.ndarray, np.ndarray]:
    """Per id 0..``highest``: how many face neighbours of its pixels hold another value,
    and how many of those are unannotated (``IGNORE_LABEL``)."""
    outside = np.zeros(highest + 1, np.int64)
    unannotated = np.zeros(highest + 1, np.int64)
    for axis in range(labels.ndim):
        before = labels[(slice(None),) * axis + (slice(None, -1),)]
        after = labels[(slice(None),) * axis + (slice(1, None),)]
        differ = before != after  # a face between two values, seen from both sides
        for own, other in ((before, after), (after, before)):
            edge = differ & (own > 0)
            outside += np.bincount(own[edge], minlength=highest + 1)
            unannotated += np.bincount(own[edge & (other == IGNORE_LABEL)], minlength=highest + 1)
    return outside, unannotated


def fitted_instances(
    instances: InstanceConfig,
    objects: Sequence[CompleteObjects],
    ndim: int = 2,
    spacing: tuple[float, float, float] | None = None,
) -> InstanceConfig:
    """``instances`` of a model of ``ndim`` (2 or 3) with ``min_size`` (and
    ``edge_size_factor``), ``min_piece``, ``min_fill`` and ``neck`` fitted to the
    complete objects (one record per annotated plane or volume, see
    :func:`complete_objects`) as the module docstring says; unchanged when no object
    is complete (then there is nothing to go by). Where some
    volumes have complete 3D objects, planes' objects (of other, sparsely annotated
    volumes) are not mixed in; a 3D model fitted to planes' objects gets their sizes
    as volumes of voxels of ``spacing`` (:func:`in_voxels`)."""
    objects = [o for o in objects if o.sizes.size]
    if not objects:
        return instances
    found = max(o.ndim for o in objects)
    objects = [o for o in objects if o.ndim == found]
    sizes = np.concatenate([o.sizes for o in objects])
    fills = np.concatenate([o.fills for o in objects])
    median = float(np.median(sizes))
    radius = (median / math.pi) ** 0.5 if found == 2 else (3 * median / (4 * math.pi)) ** (1 / 3)
    fitted = dataclasses.replace(
        instances,
        min_size=max(InstanceConfig().min_size, int(SIZE_FRACTION * np.percentile(sizes, SIZE_PERCENTILE))),
        edge_size_factor=EDGE_SIZE_FRACTION / SIZE_FRACTION,
        min_piece=int(PIECE_FRACTION * median),
        min_fill=round(min(MAX_FILL, float(np.percentile(fills, FILL_PERCENTILE))), 3),
        neck=round(max(MIN_NECK, NECK_FRACTION * radius), 2),
        object_size=int(median),
    )
    return in_voxels(fitted, spacing) if ndim == 3 and found == 2 else fitted


#: The median area of a ball's cross-sections, cut at heights spread evenly over it,
#: as a fraction of its largest: pi (R^2 - h^2) at the median |h| = R / 2.
CROSS_SECTION_MEDIAN = 0.75


def in_voxels(instances: InstanceConfig, spacing: tuple[float, float, float] | None = None) -> InstanceConfig:
    """``instances`` whose sizes are areas of objects in planes (pixels), for labelling
    volumes of voxels of ``spacing`` (z, y, x; ``None``: cubes): ``min_size``,
    ``min_piece`` and ``object_size`` become the voxel counts of balls whose
    cross-sections have those areas where planes cut them, as planes of a stack cut
    cells at any height: the largest cross-section is the area over
    :data:`CROSS_SECTION_MEDIAN` (taking the area for the largest cross-section made
    3D models fitted to a few annotated planes of the built-in volume expect nuclei of
    0.6-0.66 of their true median volume, and call them too large). An area A px
    becomes a disc of radius R = sqrt(A / CROSS_SECTION_MEDIAN * y * x / pi), and a
    ball of that radius holds 4/3 pi R^3 / (z * y * x) voxels. The shape split's fill
    and neck (in pixels of the planes) stay as they are. For a 2D model labelling a
    stack as a volume, and a 3D model fitted to the objects of annotated planes."""
    z, y, x = spacing or (1.0, 1.0, 1.0)

    def ball(area: int) -> int:
        radius = math.sqrt(area / CROSS_SECTION_MEDIAN * y * x / math.pi)
        return int(4 / 3 * math.pi * radius**3 / (z * y * x))

    return dataclasses.replace(
        instances,
        min_size=ball(instances.min_size),
        min_piece=ball(instances.min_piece),
        object_size=ball(instances.object_size),
    )
