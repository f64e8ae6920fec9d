"""Splitting objects whose shape is that of several cells, at the necks of their mask.

Where touching cells meet without any dip of foreground probability between them
(faint boundaries inside a clump of nuclei), neither the network's gap nor the split
at probability dips (:mod:`.split`) can part them, but their outline still shows
it: two or three round cells side by side fill the ellipse of their second moments
far less than one cell does. An object is split here when

- it fills less than ``min_fill`` of that ellipse (:func:`ellipse_fill`; 1 for an
  ellipse, about 0.95 for a rectangle, 0.89 for two touching equal discs), and
- its distance transform has more than one maximum that rises at least ``neck`` px
  above the saddle where it meets the others (h-maxima: the centres of the cells,
  deeper inside than the neck between them), and
- every piece that a watershed of the distance transform from those maxima leaves
  has at least ``min_piece`` pixels (voxels), and
- it is at most ``largest`` pixels: a model that learned its cells' size passes
  :data:`~.large_objects.CLUMP_LIMIT` times that, past which a region is no clump of a
  few cells but a barely trained network's foreground across the image (a 2048x2048
  preview after 4 training steps took 6.4 s to label with such regions split by shape,
  3.9 s without; bench/bench_untrained_labels.py).

Training reads ``min_fill`` and ``neck`` off the completely annotated objects
(:mod:`.object_size`), so bent rods or lobed cells that the user annotated as one
object set a threshold below their own fill. Works in 2D and 3D; distances count
pixels, or with a voxel ``spacing`` physical lengths in units of the last axis'
voxel size (a nucleus elongated along z in voxels because its planes lie closer
than its pixels has one centre, not a ridge of them). The fill needs no spacing: it
does not change when an axis is stretched.
"""

from __future__ import annotations

import math
from concurrent.futures import Executor

import numpy as np
from scipy import ndimage
from skimage.morphology import local_maxima, reconstruction

from .regions import run_starts
from .seeded_split import SplitRules, split_at_seeds


def ellipse_fill(
    shape: tuple[int, ...], pixels: np.ndarray, ids: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each object's size and how completely it fills the ellipse (ellipsoid in 3D) of
    its second moments: its size divided by the size of the uniformly filled ellipse
    with the same covariance, each pixel counted as a unit square (variance 1/12 per
    axis).

    ``pixels``: the objects' flat indices into an array of ``shape`` in increasing
    order (n,); ``ids`` their ids (n,), 1..``count``. Returns sizes and fills, float64
    (count + 1,) each; ids without pixels, and 0, have size 0 and fill 1 (nothing to
    split). The moments are summed over the objects' runs along the last axis in
    closed form, not pixel by pixel."""
    ndim = len(shape)
    run_ids, first, last = _runs(shape, pixels, ids)
    width = shape[-1]
    lines = np.unravel_index(first // width, shape[:-1])  # the run's index along every axis but the last
    low, high = (first % width).astype(np.float64), (last % width).astype(np.float64)
    length = high - low + 1
    # per run: sums of 1, of each coordinate and of each product of two coordinates
    sum_x = length * (low + high) / 2
    sum_xx = (_cubes(high) - _cubes(low - 1)) / 6
    coordinates = [axis.astype(np.float64) for axis in lines]
    sums = [sum_x if axis == ndim - 1 else coordinates[axis] * length for axis in range(ndim)]
    sizes = np.bincount(run_ids, length, count + 1)
    per_pixel = np.maximum(sizes, 1.0)
    means = [np.bincount(run_ids, total, count + 1) / per_pixel for total in sums]
    covariance = np.empty((count + 1, ndim, ndim))
    for i in range(ndim):
        for j in range(i, ndim):
            if i == j == ndim - 1:
                products = sum_xx
            elif j == ndim - 1:
                products = coordinates[i] * sum_x
            else:
                products = coordinates[i] * coordinates[j] * length
            moment = np.bincount(run_ids, products, count + 1) / per_pixel - means[i] * means[j]
            covariance[:, i, j] = covariance[:, j, i] = moment + (1.0 / 12.0 if i == j else 0.0)
    # a filled ellipse with semi-axes a_k has variances a_k^2 / (ndim + 2)
    unit_ball = math.pi ** (ndim / 2) / math.gamma(ndim / 2 + 1)
    ellipse = unit_ball * (ndim + 2) ** (ndim / 2) * np.sqrt(np.maximum(np.linalg.det(covariance), 1e-12))
    return sizes, np.where(sizes > 0, sizes / ellipse, 1.0)


def _cubes(n: np.ndarray) -> np.ndarray:
    """``6 * (0^2 + 1^2 + ... + n^2)`` for float arrays ``n`` >= -1."""
    return n * (n + 1) * (2 * n + 1)


def _runs(shape: tuple[int, ...], pixels: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, ...]:
    """The runs of consecutive pixels of one id along the last axis: their ids and the
    flat indices of their first and last pixels ((m,) each). ``pixels`` increasing."""
    if pixels.size == 0:
        return ids[:0], pixels[:0], pixels[:0]
    starts = run_starts(pixels, ids)
    ends = np.r_[starts[1:], pixels.size] - 1
    first, last = pixels[starts], pixels[ends]
    width = shape[-1]
    wrapped = np.flatnonzero(first // width != last // width)  # one id at a line's end and the next one's start
    if wrapped.size:
        cuts = [np.arange((a // width + 1) * width, b + 1, width) for a, b in zip(first[wrapped], last[wrapped])]
        cuts = np.concatenate(cuts)
        first = np.sort(np.r_[first, cuts])
        last = np.sort(np.r_[last, cuts - 1])
        return np.take(ids, np.searchsorted(pixels, first)), first, last
    return ids[starts], first, last


def split_concave_in_place(
    labels: np.ndarray,
    pixels: np.ndarray,
    count: int,
    min_fill: float,
    neck: float,
    min_piece: int,
    spacing: tuple[float, ...] | None = None,
    helper: Executor | None = None,
    largest: float = math.inf,
) -> int:
    """Split the objects of ``labels`` (ids 1..``count``, int32, (H, W) or (Z, Y, X))
    that the module docstring describes, in place; ``pixels`` are the flat indices of
    all object pixels, increasing. Pieces after the first get ids ``count + 1``, ...
    Returns the new highest id. ``spacing``: the voxel size per axis (``None``: cubes).
    ``largest``: objects of more pixels are left whole.
    ``helper``: an executor with a free thread, to share the work (:func:`.seeded_split.split_packed`).

    The objects under ``min_fill`` are packed into one canvas (as the split at
    probability dips packs its candidates, :func:`.seeded_split.split_at_seeds`), where one
    distance transform, one reconstruction and one search for maxima serve them all."""
    ids = np.take(labels, pixels)
    sizes, fills = ellipse_fill(labels.shape, pixels, ids, count)
    concave = (fills < min_fill) & (sizes >= 2 * max(min_piece, 1)) & (sizes <= largest)
    concave[0] = False

    sampling = None if spacing is None else tuple(size / spacing[-1] for size in spacing)

    def neck_seeds(canvas: np.ndarray, windows: list, places: list) -> tuple[np.ndarray, ...]:
        return _centres(canvas, neck, sampling)

    return split_at_seeds(
        labels, pixels, ids, np.flatnonzero(concave), count, SplitRules(neck_seeds, min_piece), helper
    )


#: Geodesic dilations :func:`_reconstructed` tries before it hands over to skimage's
#: reconstruction (the objects' widths in px bound how many it needs: 10-30 for nuclei).
DILATIONS = 64


def _reconstructed(seed: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The grey reconstruction by dilation of ``seed`` under ``mask`` (all neighbours
    connected), as ``skimage.morphology.reconstruction`` gives it: geodesic dilations
    until nothing changes, which on the canvases of a few dozen nuclei is 5x faster
    than skimage's sort of every value (7 ms against 36 ms at 2048x2048). Past
    :data:`DILATIONS` skimage finishes from there (the same result: any image between
    the seed and the reconstruction reconstructs to it)."""
    footprint = np.ones((3,) * seed.ndim, bool)
    current = np.minimum(seed, mask)
    for _ in range(DILATIONS):
        grown = np.minimum(ndimage.grey_dilation(current, footprint=footprint), mask)
        if np.array_equal(grown, current):
            return grown
        current = grown
    return reconstruction(current, mask)


def _centres(
    canvas: np.ndarray, neck: float, sampling: tuple[float, ...] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distance transform of every object of ``canvas`` (int32 ids, objects at
    least 1 px apart), and the seeds of those with two or more centres that rise at
    least ``neck`` above the saddles between them: an int32 canvas of seed numbers
    1..n (h-maxima of the distance, all neighbours connected) and each seed's object.

    Objects 1 px apart in a canvas framed by background each see only their own
    background as the nearest: their distances are those of each one alone.
    ``sampling``: the length of a step along each axis (``None``: 1 px each)."""
    inside = canvas > 0
    distance = ndimage.distance_transform_edt(np.pad(inside, 1), sampling=sampling)[(slice(1, -1),) * canvas.ndim]
    floor = -(neck + 1.0)  # below every object's reconstruction: no value crosses the background
    raised = _reconstructed(np.where(inside, distance - neck, floor), np.where(inside, distance, floor))
    every_neighbour = ndimage.generate_binary_structure(canvas.ndim, canvas.ndim)
    centres, found = ndimage.label(local_maxima(raised, connectivity=canvas.ndim) & inside, structure=every_neighbour)
    owners = np.zeros(found + 1, np.int64)
    owners[centres[centres > 0]] = canvas[centres > 0]
    several = np.bincount(owners[1:], minlength=int(canvas.max()) + 1) >= 2
    keep = several[owners]
    keep[0] = False
    number = np.zeros(found + 1, np.int32)
    number[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return distance, number[centres], owners[keep]
