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

Speed: the border term is below ``BORDER_TOLERANCE`` once ``d1 + d2`` exceeds
:func:`border_cutoff`, so each cell's distance transform is only computed inside its
bounding box grown by that cutoff (see :func:`nearest_two_distances`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .config import IGNORE_LABEL, WeightMapConfig

#: The fast border term may differ from the exact one by at most this much.
BORDER_TOLERANCE = 1e-6

#: Half of the 8-neighbourhood: every unordered pair of 8-neighbours is one of these
#: offsets (dy, dx) away from its first pixel in raster order.
HALF_NEIGHBOURHOOD = ((0, 1), (1, -1), (1, 0), (1, 1))


def check_labels(labels: np.ndarray) -> np.ndarray:
    """``labels`` as an ndarray after checking it is a 2-D integer array >= IGNORE_LABEL.

    Raises ``ValueError`` otherwise.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D (H, W), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must have an integer dtype, got {labels.dtype}")
    if labels.size and labels.min() < IGNORE_LABEL:
        raise ValueError(f"labels must be >= {IGNORE_LABEL} (the ignore label), got {labels.min()}")
    return labels


def neighbour_views(labels: np.ndarray, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """Views ``(a, b)`` of ``labels`` (H, W) such that ``b[p]`` is the pixel at offset
    ``(dy, dx)`` from ``a[p]``; ``dy`` in {0, 1}, ``dx`` in {-1, 0, 1}.
    """
    h, w = labels.shape
    cols_a = slice(max(0, -dx), w - max(0, dx))
    cols_b = slice(max(0, dx), w - max(0, -dx))
    return labels[0 : h - dy, cols_a], labels[dy:h, cols_b]


def separation_gap(labels: np.ndarray) -> np.ndarray:
    """Cell pixels with a pixel of a *different* cell in their 3x3 neighbourhood.

    ``labels`` int (H, W) as in the module docstring; returns bool (H, W). Background
    and ignore pixels are never part of the gap.
    """
    labels = check_labels(labels)
    gap = np.zeros(labels.shape, bool)
    for dy, dx in HALF_NEIGHBOURHOOD:
        a, b = neighbour_views(labels, dy, dx)
        touching = (a > 0) & (b > 0) & (a != b)
        gap_a, gap_b = neighbour_views(gap, dy, dx)
        gap_a |= touching
        gap_b |= touching
    return gap


def separation_target(labels: np.ndarray) -> np.ndarray:
    """Two-class training target uint8 (H, W) from instance ``labels`` int (H, W).

    1 for cell pixels, 0 for background, ignore pixels and the separation gap (cell
    pixels that 8-touch a different cell), so touching cells are kept apart by a
    background line as in the paper's Fig. 3.
    """
    labels = check_labels(labels)
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


def _nearest_two_squared(labels: np.ndarray, pad: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Squared distances ``(q1, q2, far)`` int (H, W) to the nearest and second nearest cell.

    Integer and exact: squared distances between pixel centres are integers. Each
    cell's feature transform (the nearest cell pixel of every window pixel) is taken
    inside its bounding box grown by ``pad`` px; elsewhere, and where there are fewer
    cells, the value is the sentinel ``far``.
    """
    h, w = labels.shape
    dtype = np.int32 if 2 * (h * h + w * w) < np.iinfo(np.int32).max else np.int64
    far = int(np.iinfo(dtype).max)
    q1 = np.full(labels.shape, far, dtype)
    q2 = np.full(labels.shape, far, dtype)
    cells = np.maximum(labels, 0)
    if cells.size and cells.max() > cells.size:  # sparse huge ids: renumber so find_objects stays small
        cells = np.unique(cells, return_inverse=True)[1].reshape(cells.shape) + (0 if cells.min() == 0 else 1)
    for index, box in enumerate(ndimage.find_objects(cells)):
        if box is None:
            continue
        window = tuple(slice(max(0, s.start - pad), min(n, s.stop + pad)) for s, n in zip(box, labels.shape))
        nearest = ndimage.distance_transform_edt(
            cells[window] != index + 1, return_distances=False, return_indices=True
        ).astype(dtype, copy=False)
        rows, cols = (np.arange(s.stop - s.start, dtype=dtype) for s in window)
        dy = nearest[0] - rows[:, None]
        dx = nearest[1] - cols
        np.multiply(dy, dy, out=dy)
        dy += dx * dx
        near, second = q1[window], q2[window]
        np.minimum(second, np.maximum(near, dy), out=second)
        np.minimum(near, dy, out=near)
    return q1, q2, far


def _pad_for(max_distance: float, shape: tuple[int, ...]) -> int:
    """Window growth in px that covers every pixel within ``max_distance`` of a box."""
    return sum(shape) if math.isinf(max_distance) else math.ceil(max_distance)


def nearest_two_distances(labels: np.ndarray, max_distance: float = math.inf) -> tuple[np.ndarray, np.ndarray]:
    """Distances ``(d1, d2)`` float64 (H, W) to the nearest and second nearest cell.

    ``d_i(x)`` is the Euclidean distance from ``x`` to the nearest pixel of cell ``i``
    (each positive label value is one cell; ``distance_transform_edt`` semantics);
    ``d1 <= d2`` are the two smallest over all cells, ``inf`` where there are fewer
    cells.

    Each cell's distance transform is computed only inside its bounding box grown by
    ``ceil(max_distance)`` px (every pixel within ``max_distance`` of the cell lies
    there) and is ``inf`` outside. So the returned ``d1`` (``d2``) is exact wherever
    the true value is ``<= max_distance`` and is never smaller than the true value.
    """
    labels = check_labels(labels)
    q1, q2, far = _nearest_two_squared(labels, _pad_for(max_distance, labels.shape))
    return tuple(np.where(q == far, np.inf, np.sqrt(q)) for q in (q1, q2))


def _add_border_term(weights: np.ndarray, labels: np.ndarray, background: np.ndarray, w0: float, sigma: float) -> None:
    """Add the border term in place to ``weights`` float (H, W) at ``background`` pixels."""
    cutoff = border_cutoff(w0, sigma)
    if cutoff <= 0.0:
        return
    q1, q2, _ = _nearest_two_squared(labels, _pad_for(cutoff, labels.shape))
    candidates = background & (q2 <= cutoff * cutoff)  # q2 is `far` with fewer than two cells
    total = np.sqrt(q1[candidates]) + np.sqrt(q2[candidates])
    weights[candidates] += w0 * np.exp(-(total * total) / (2.0 * sigma * sigma))


def border_weights(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """Border term ``w0 * exp(-(d1 + d2)**2 / (2 sigma**2))`` float32 (H, W) (paper eq. 2).

    Nonzero only at annotated pixels that are background in :func:`separation_target`
    and only when ``labels`` has at least two cells. Within ``BORDER_TOLERANCE`` of
    the exact value: it is only evaluated where ``d1 + d2 <= border_cutoff(w0, sigma)``
    (wherever ``d2`` is within the cutoff, the computed ``d1``, ``d2`` are exact).
    """
    labels = check_labels(labels)
    term = np.zeros(labels.shape, np.float32)
    _add_border_term(term, labels, (labels == 0) | separation_gap(labels), w0, sigma)
    return term


def weight_map(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0, *, balance_classes: bool = True) -> np.ndarray:
    """Per-pixel loss weight ``w = w_c + border term`` float32 (H, W) (paper eq. 2).

    ``labels`` int (H, W): 0 background, > 0 cell ids, ``IGNORE_LABEL`` unannotated.
    ``w0 >= 0`` and ``sigma > 0`` in pixels (paper: 10 and 5). See the module
    docstring for the exact definitions; ignore pixels get exactly 0. Matches the
    exact definition to within ``BORDER_TOLERANCE`` plus float32 rounding.
    """
    labels = check_labels(labels)
    WeightMapConfig(w0=w0, sigma=sigma)  # ConfigError (a ValueError) for NaN, infinite or out-of-range values
    gap = separation_gap(labels)
    target = ((labels > 0) & ~gap).view(np.uint8)
    weights = class_weights(target, labels != IGNORE_LABEL, balance=balance_classes)
    _add_border_term(weights, labels, (labels == 0) | gap, w0, sigma)
    return weights


def weight_map_from_config(labels: np.ndarray, config: WeightMapConfig | None = None) -> np.ndarray:
    """:func:`weight_map` with the parameters of a :class:`WeightMapConfig` (default: the paper's)."""
    config = config or WeightMapConfig()
    return weight_map(labels, config.w0, config.sigma, balance_classes=config.balance_classes)
