"""The separation weight map of the U-Net loss (Ronneberger et al. 2015, section 3).

Every pixel's cross-entropy term is multiplied by

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))          (paper eq. 2)

Conventions used here (the paper leaves some of them open):

- Labels are an integer array (H, W): 0 = annotated background, 1..n = cell
  instances (any positive ids, not necessarily consecutive), ``IGNORE_LABEL`` (-1) =
  unannotated pixels.
- The training target is :func:`separation_target`: cells are foreground except
  where they touch another cell, which leaves a background gap between touching
  cells ("the separating border pixels between two touching instances are
  background", paper section 3).
- ``d_i(x)`` is the Euclidean distance from pixel centre ``x`` to the nearest pixel
  centre of cell ``i`` (``scipy.ndimage.distance_transform_edt`` semantics; 0 on the
  cell itself). ``d1``/``d2`` are the smallest/second smallest ``d_i`` over all
  cells. The border term is added only at pixels that are background in the target
  (``labels == 0`` plus the gap pixels) and only when there are at least two cells.
- ``w_c`` balances the two target classes over annotated pixels:
  ``w_c = N / (2 * N_k)`` for a pixel of class ``k`` (``N`` annotated pixels,
  ``N_k`` of them in class ``k``), so both classes carry the same total weight. If a
  class is absent, or balancing is off, ``w_c = 1``.
- Unannotated pixels get weight exactly 0, so they never enter the loss.

Volumes: labels (Z, Y, X) give the 3D weight map: the gap is cut between cells
that touch in the 26-neighbourhood, and with ``spacing`` (the voxel size per axis)
``d1`` and ``d2`` are physical distances, measured in units of the finest spacing
(so ``sigma`` stays in in-plane pixels). Whole unannotated planes (-1) simply weigh 0.

Speed: the border term is below ``BORDER_TOLERANCE`` once ``d1 + d2`` exceeds
:func:`border_cutoff`, so each cell's distance transform is only computed inside its
bounding box grown by that cutoff (see :func:`nearest_two_distances`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .config import IGNORE_LABEL
from .errors import ConfigError, NapariUnetError
from .train_config import WeightMapConfig


class LabelError(NapariUnetError, ValueError):
    """Labels that are no annotation (wrong shape, fractional values, ids below -1)."""


#: The fast border term may differ from the exact one by at most this much.
BORDER_TOLERANCE = 1e-6

#: Half of the 8-neighbourhood: every unordered pair of 8-neighbours is one of these
#: offsets (dy, dx) away from its first pixel in raster order.
HALF_NEIGHBOURHOOD = ((0, 1), (1, -1), (1, 0), (1, 1))


def half_neighbourhood(ndim: int) -> tuple[tuple[int, ...], ...]:
    """Offsets that reach every unordered pair of neighbours (8 in 2D, 26 in 3D) once:
    those after the origin in raster order (:data:`HALF_NEIGHBOURHOOD` in 2D)."""
    if ndim == 2:
        return HALF_NEIGHBOURHOOD
    offsets = itertools.product((-1, 0, 1), repeat=ndim)
    return tuple(o for o in offsets if o > (0,) * ndim)


def check_labels(labels: np.ndarray, ndims: tuple[int, ...] = (2,)) -> np.ndarray:
    """``labels`` as a 2-D integer ndarray >= IGNORE_LABEL (``ndims=(2, 3)`` also
    accepts volumes); whole numbers stored as floats or booleans become int64.

    Raises :class:`LabelError` otherwise.
    """
    labels = np.asarray(labels)
    if labels.ndim not in ndims:
        shapes = " or ".join({2: "2-D (H, W)", 3: "3-D (Z, Y, X)"}[n] for n in ndims)
        raise LabelError(f"labels must be {shapes}, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        whole = labels.dtype == bool or (
            np.issubdtype(labels.dtype, np.floating)
            and np.isfinite(labels).all()
            and (labels == np.round(labels)).all()
        )
        if not whole:
            raise LabelError(
                f"labels must be whole numbers (0 background, 1, 2, ... one id per cell, -1 unannotated), "
                f"got {labels.dtype} values that are not: give the annotation, not an image or a probability map"
            )
        labels = labels.astype(np.int64)
    if labels.size and labels.min() < IGNORE_LABEL:
        raise LabelError(f"labels must be >= {IGNORE_LABEL} (the ignore label), got {labels.min()}")
    return labels


def neighbour_views(labels: np.ndarray, *offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Views ``(a, b)`` of ``labels`` such that ``b[p]`` is the pixel at ``offset``
    (dy, dx), or (dz, dy, dx), from ``a[p]``; each offset in {-1, 0, 1}.
    """
    view_a = tuple(slice(max(0, -d), n - max(0, d)) for d, n in zip(offset, labels.shape))
    view_b = tuple(slice(max(0, d), n - max(0, -d)) for d, n in zip(offset, labels.shape))
    return labels[view_a], labels[view_b]


def separation_gap(labels: np.ndarray) -> np.ndarray:
    """Cell pixels with a pixel of a *different* cell in their 3x3 neighbourhood
    (3x3x3 for volumes).

    ``labels`` int (H, W) or (Z, Y, X) as in the module docstring; returns bool of
    the same shape. Background and ignore pixels are never part of the gap.
    """
    labels = check_labels(labels, (2, 3))
    gap = np.zeros(labels.shape, bool)
    for offset in half_neighbourhood(labels.ndim):
        a, b = neighbour_views(labels, *offset)
        touching = (a > 0) & (b > 0) & (a != b)
        gap_a, gap_b = neighbour_views(gap, *offset)
        gap_a |= touching
        gap_b |= touching
    return gap


def separation_target(labels: np.ndarray) -> np.ndarray:
    """Two-class training target uint8 (H, W) from instance ``labels`` int (H, W).

    1 for cell pixels, 0 for background, ignore pixels and the separation gap (cell
    pixels that 8-touch a different cell), so touching cells are kept apart by a
    background line as in the paper's Fig. 3. Volumes (Z, Y, X): the same with
    26-neighbours, a background surface between touching cells.
    """
    labels = check_labels(labels, (2, 3))
    return ((labels > 0) & ~separation_gap(labels)).astype(np.uint8)


def class_weights(target: np.ndarray, annotated: np.ndarray, *, balance: bool = True) -> np.ndarray:
    """Class-balancing weight w_c float32 (H, W) (paper eq. 2, first term).

    ``target`` uint8 (H, W) in {0, 1}; ``annotated`` bool (H, W). Over annotated
    pixels ``w_c = N / (2 * N_k)`` for class ``k``, so that classes 0 and 1 carry the
    same total weight ``N / 2``; ``w_c = 1`` if either class is absent or ``balance``
    is False. Unannotated pixels get 0.
    """
    foreground = target > 0
    n_total = int(np.count_nonzero(annotated))
    n_fg = int(np.count_nonzero(annotated & foreground))
    n_bg = n_total - n_fg
    if balance and n_fg > 0 and n_bg > 0:
        per_class = np.array([n_total / (2.0 * n_bg), n_total / (2.0 * n_fg)], np.float32)
        weights = per_class[foreground.view(np.uint8)]
    else:
        weights = np.ones(target.shape, np.float32)
    weights[~annotated] = 0.0
    return weights


def border_cutoff(w0: float, sigma: float, tol: float = BORDER_TOLERANCE) -> float:
    """Distance sum beyond which ``w0 * exp(-(d1 + d2)**2 / (2 sigma**2)) < tol``.

    ``sigma * sqrt(2 * ln(w0 / tol))``; 0 when ``w0 <= tol`` (the term never matters).
    With the paper's w0 = 10, sigma = 5 and tol = 1e-6 it is about 28.4 px.
    """
    if w0 <= tol:
        return 0.0
    return sigma * math.sqrt(2.0 * math.log(w0 / tol))


def _nearest_two_squared(
    labels: np.ndarray, pad: Sequence[int], spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray, int | float]:
    """Squared distances ``(q1, q2, far)`` (H, W) to the nearest and second nearest cell.

    Without ``spacing``: integers and exact (squared distances between pixel centres
    are integers). With ``spacing`` (per axis, any shape): float64 physical squared
    distances. Each cell's feature transform (the nearest cell pixel of every window
    pixel) is taken inside its bounding box grown by ``pad[axis]`` px; elsewhere,
    and where there are fewer cells, the value is the sentinel ``far``.
    """
    if spacing is None:
        bound = 2 * sum(n * n for n in labels.shape)
        dtype = np.dtype(np.int32 if bound < np.iinfo(np.int32).max else np.int64)
        far = int(np.iinfo(dtype).max)
    else:
        dtype, far = np.dtype(np.float64), math.inf
    q1 = np.full(labels.shape, far, dtype)
    q2 = np.full(labels.shape, far, dtype)
    cells = np.maximum(labels, 0)
    if cells.size and cells.max() > cells.size:  # sparse huge ids: renumber so find_objects stays small
        cells = np.unique(cells, return_inverse=True)[1].reshape(cells.shape) + (0 if cells.min() == 0 else 1)
    index_dtype = dtype if spacing is None else np.dtype(np.int64)
    for index, box in enumerate(ndimage.find_objects(cells)):
        if box is None:
            continue
        window = tuple(slice(max(0, s.start - p), min(n, s.stop + p)) for s, n, p in zip(box, labels.shape, pad))
        nearest = ndimage.distance_transform_edt(
            cells[window] != index + 1, sampling=spacing, return_distances=False, return_indices=True
        ).astype(index_dtype, copy=False)
        squared = np.zeros(nearest.shape[1:], dtype)
        for axis, s in enumerate(window):
            position = np.arange(s.stop - s.start, dtype=index_dtype).reshape((-1,) + (1,) * (labels.ndim - axis - 1))
            delta = nearest[axis] - position
            if spacing is not None:
                delta = delta * float(spacing[axis])
            squared += delta * delta
        near, second = q1[window], q2[window]
        np.minimum(second, np.maximum(near, squared), out=second)
        np.minimum(near, squared, out=near)
    return q1, q2, far


def _pad_for(max_distance: float, shape: tuple[int, ...], spacing: Sequence[float] | None = None) -> list[int]:
    """Window growth in px per axis that covers every pixel within ``max_distance``
    (physical with ``spacing``) of a box."""
    if math.isinf(max_distance):
        return [sum(shape)] * len(shape)
    steps = spacing if spacing is not None else (1.0,) * len(shape)
    return [math.ceil(max_distance / s) for s in steps]


def _relative_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
    """``spacing`` in units of its finest value (``None`` stays ``None``: unit pixels)."""
    if spacing is None:
        return None
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or min(spacing) <= 0:
        raise ConfigError(f"spacing {spacing} needs {ndim} positive values, one per axis")
    finest = min(spacing)
    relative = tuple(s / finest for s in spacing)
    return None if all(s == 1.0 for s in relative) else relative


def nearest_two_distances(
    labels: np.ndarray, max_distance: float = math.inf, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances ``(d1, d2)`` float64 (H, W) to the nearest and second nearest cell.

    ``d_i(x)`` is the Euclidean distance from ``x`` to the nearest pixel of cell ``i``
    (each positive label value is one cell; ``distance_transform_edt`` semantics);
    ``d1 <= d2`` are the two smallest over all cells, ``inf`` where there are fewer
    cells. Volumes (Z, Y, X) too; with ``spacing`` the distances are physical, in
    units of the finest spacing.

    Each cell's distance transform is computed only inside its bounding box grown by
    ``ceil(max_distance)`` px (every pixel within ``max_distance`` of the cell lies
    there) and is ``inf`` outside. So the returned ``d1`` (``d2``) is exact wherever
    the true value is ``<= max_distance`` and is never smaller than the true value.
    """
    labels = check_labels(labels, (2, 3))
    spacing = _relative_spacing(spacing, labels.ndim)
    q1, q2, far = _nearest_two_squared(labels, _pad_for(max_distance, labels.shape, spacing), spacing)
    return tuple(np.where(q == far, np.inf, np.sqrt(q)) for q in (q1, q2))


def _add_border_term(
    weights: np.ndarray,
    labels: np.ndarray,
    background: np.ndarray,
    w0: float,
    sigma: float,
    spacing: tuple[float, ...] | None = None,
) -> None:
    """Add the border term in place to ``weights`` float (H, W) at ``background`` pixels."""
    cutoff = border_cutoff(w0, sigma)
    if cutoff <= 0.0:
        return
    q1, q2, _ = _nearest_two_squared(labels, _pad_for(cutoff, labels.shape, spacing), spacing)
    candidates = background & (q2 <= cutoff * cutoff)  # q2 is `far` with fewer than two cells
    total = np.sqrt(q1[candidates]) + np.sqrt(q2[candidates])
    weights[candidates] += w0 * np.exp(-(total * total) / (2.0 * sigma * sigma))


def border_weights(
    labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0, *, spacing: Sequence[float] | None = None
) -> np.ndarray:
    """Border term ``w0 * exp(-(d1 + d2)**2 / (2 sigma**2))`` float32 (H, W) (paper eq. 2).

    Nonzero only at annotated pixels that are background in :func:`separation_target`
    and only when ``labels`` has at least two cells. Within ``BORDER_TOLERANCE`` of
    the exact value: it is only evaluated where ``d1 + d2 <= border_cutoff(w0, sigma)``
    (wherever ``d2`` is within the cutoff, the computed ``d1``, ``d2`` are exact).
    Volumes and ``spacing`` as for :func:`weight_map`.
    """
    labels = check_labels(labels, (2, 3))
    term = np.zeros(labels.shape, np.float32)
    spacing = _relative_spacing(spacing, labels.ndim)
    _add_border_term(term, labels, (labels == 0) | separation_gap(labels), w0, sigma, spacing)
    return term


def weight_map(
    labels: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    *,
    balance_classes: bool = True,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Per-pixel loss weight ``w = w_c + border term`` float32 (H, W) (paper eq. 2).

    ``labels`` int (H, W): 0 background, > 0 cell ids, ``IGNORE_LABEL`` unannotated.
    ``w0 >= 0`` and ``sigma > 0`` in pixels (paper: 10 and 5). See the module
    docstring for the exact definitions; ignore pixels get exactly 0. Matches the
    exact definition to within ``BORDER_TOLERANCE`` plus float32 rounding.

    ``labels`` (Z, Y, X) give the 3D map; ``spacing`` (one voxel size per axis, e.g.
    (z, y, x) in um) makes the distances physical, in units of the finest spacing.
    """
    labels = check_labels(labels, (2, 3))
    WeightMapConfig(w0=w0, sigma=sigma)  # ConfigError (a ValueError) for NaN, infinite or out-of-range values
    spacing = _relative_spacing(spacing, labels.ndim)
    gap = separation_gap(labels)
    target = ((labels > 0) & ~gap).view(np.uint8)
    weights = class_weights(target, labels != IGNORE_LABEL, balance=balance_classes)
    _add_border_term(weights, labels, (labels == 0) | gap, w0, sigma, spacing)
    return weights


def weight_map_from_config(
    labels: np.ndarray, config: WeightMapConfig | None = None, spacing: Sequence[float] | None = None
) -> np.ndarray:
    """:func:`weight_map` with the parameters of a :class:`WeightMapConfig` (default: the paper's)."""
    config = config or WeightMapConfig()
    return weight_map(labels, config.w0, config.sigma, balance_classes=config.balance_classes, spacing=spacing)
