"""Synthetic fluorescence-like nuclei with exact ground truth.

The images feed the demo, the tests and napari's sample data. They are built to
exercise what the U-Net paper cares about (Ronneberger et al. 2015, section 3):
many nuclei touch, and the dim seam between two touching nuclei is weak, so a
network only learns to keep them apart with the separation weight map.

How an image is made (all randomness from one ``numpy.random.Generator``):

1. Shapes: ellipses with semi-axes in ``radius_range`` (6..16 px by default),
   random orientation and brightness.
2. Layout: a share ``touching`` of the cells is placed in clusters of 2..5 where
   each new cell overlaps a cluster member slightly; the other cells are placed
   apart from everything. Cells may be cut by the image border.
3. Labels: a pixel inside several ellipses goes to the cell whose centre is nearest
   in that cell's own elliptical metric (smallest normalised radius
   ``rho = sqrt((u/a)^2 + (v/b)^2)``), so an overlap is split between the two cells
   and they share a border: touching but distinct. Each cell keeps its largest
   4-connected piece, cells smaller than ``min_area`` are dropped and the rest are
   relabelled ``1..n``.
4. Intensity: per-cell brightness x a flat profile that dims slightly towards the
   rim (``1 - edge_dimming * rho^4``) x smooth texture, a faint out-of-focus glow,
   a Gaussian PSF blur, an uneven smooth background, then Poisson shot noise on the
   expected photon counts, a camera offset and Gaussian read noise.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy import ndimage

from .augment import bicubic_upsample

logger = logging.getLogger(__name__)

#: Cells per pixel when ``n_cells`` is not given: 130 cells on 512 x 512.
CELL_DENSITY = 130 / (512 * 512)

#: Minimum clearance (px) between a free-standing cell and any other cell.
ISOLATION_GAP = 3.0

#: Cluster cells sit at this fraction of the summed radii from their anchor: they
#: overlap by 5-20 % and are split along a shared border.
CLUSTER_DISTANCE = (0.80, 0.95)

#: A cluster cell may come no closer than this fraction of the summed radii to any
#: other member of its cluster (so no cell is mostly hidden by its neighbours).
CLUSTER_MIN_DISTANCE = 0.78

#: Attempts to place one cell before giving up on it.
PLACEMENT_TRIES = 40


def default_cell_count(shape: tuple[int, int]) -> int:
    """Number of cells for an image of ``shape`` (H, W): ``CELL_DENSITY`` x area, at least 1."""
    return max(1, round(CELL_DENSITY * shape[0] * shape[1]))


def ellipse_radius(semi_a: np.ndarray, semi_b: np.ndarray, angle: np.ndarray, direction: np.ndarray):
    """Distance from an ellipse's centre to its outline along ``direction`` (radians).

    ``semi_a`` is the semi-axis along ``angle`` (radians from the y axis towards x),
    ``semi_b`` the other one. All arguments broadcast; returns float64.
    """
    rel = np.asarray(direction) - np.asarray(angle)
    return semi_a * semi_b / np.hypot(semi_b * np.cos(rel), semi_a * np.sin(rel))


def _draw_shapes(rng: np.random.Generator, n: int, radius_range: tuple[float, float]) -> np.ndarray:
    """Random ellipses as an array (n, 3) of (semi-axis a, semi-axis b, angle), a >= b.

    ``a`` is uniform in the upper 80 % of ``radius_range``; the aspect ratio a/b is
    uniform in [1, 1.6] and ``b`` is clipped to ``radius_range[0]``.
    """
    low, high = radius_range
    semi_a = rng.uniform(low + 0.2 * (high - low), high, n)
    semi_b = np.clip(semi_a / rng.uniform(1.0, 1.6, n), low, semi_a)
    angle = rng.uniform(0.0, np.pi, n)
    return np.stack([semi_a, semi_b, angle], axis=1)


def _clearance_ok(
    centre: np.ndarray, shape: np.ndarray, centres: np.ndarray, shapes: np.ndarray, factor: np.ndarray, gap
) -> bool:
    """True if a cell at ``centre`` keeps ``dist >= factor * (r_new + r_k) + gap`` to every placed cell k.

    ``r`` are the ellipse radii along the line joining the two centres; ``factor`` and
    ``gap`` are per placed cell (arrays of length len(centres)) or scalars.
    """
    if len(centres) == 0:
        return True
    delta = centres - centre
    dist = np.hypot(delta[:, 0], delta[:, 1])
    direction = np.arctan2(delta[:, 1], delta[:, 0])
    r_new = ellipse_radius(shape[0], shape[1], shape[2], direction)
    r_old = ellipse_radius(shapes[:, 0], shapes[:, 1], shapes[:, 2], direction)
    return bool(np.all(dist >= factor * (r_new + r_old) + gap))


def _place_free(rng, hw: np.ndarray, shape: np.ndarray, centres: list, shapes: list) -> np.ndarray | None:
    """A centre for a free-standing cell (at least ``ISOLATION_GAP`` from all others), or None."""
    placed_c, placed_s = np.asarray(centres).reshape(-1, 2), np.asarray(shapes).reshape(-1, 3)
    for _ in range(PLACEMENT_TRIES):
        centre = rng.uniform(0.0, 1.0, 2) * hw
        if _clearance_ok(centre, shape, placed_c, placed_s, 1.0, ISOLATION_GAP):
            return centre
    return None


def _place_attached(
    rng, hw: np.ndarray, shape: np.ndarray, centres: list, shapes: list, members: list[int]
) -> np.ndarray | None:
    """A centre for a cell that overlaps a member of the current cluster slightly, or None.

    The new cell sits at ``CLUSTER_DISTANCE`` x (summed radii) from a random member,
    keeps ``CLUSTER_MIN_DISTANCE`` to the other members and ``ISOLATION_GAP`` to every
    cell outside the cluster, and its centre stays inside the image by its short radius.
    """
    placed_c, placed_s = np.asarray(centres), np.asarray(shapes)
    in_cluster = np.zeros(len(centres), bool)
    in_cluster[members] = True
    factor = np.where(in_cluster, CLUSTER_MIN_DISTANCE, 1.0)
    gap = np.where(in_cluster, 0.0, ISOLATION_GAP)
    margin = shape[1]
    for _ in range(PLACEMENT_TRIES):
        anchor = members[rng.integers(len(members))]
        direction = rng.uniform(0.0, 2 * np.pi)
        reach = ellipse_radius(*placed_s[anchor], direction) + ellipse_radius(*shape, direction)
        dist = rng.uniform(*CLUSTER_DISTANCE) * reach
        centre = placed_c[anchor] + dist * np.array([np.cos(direction), np.sin(direction)])
        if np.any(centre < margin) or np.any(centre > hw - 1 - margin):
            continue
        if _clearance_ok(centre, shape, placed_c, placed_s, factor, gap):
            return centre
    return None


def _cluster_sizes(rng: np.random.Generator, n_clustered: int) -> list[int]:
    """Split ``n_clustered`` cells into clusters of 2..5 (a leftover single joins the last)."""
    sizes: list[int] = []
    left = n_clustered
    while left >= 2:
        size = int(min(rng.integers(2, 6), left))
        sizes.append(size)
        left -= size
    if left and sizes:
        sizes[-1] += left
    return sizes


def place_cells(
    rng: np.random.Generator, hw: tuple[int, int], shapes: np.ndarray, touching: float
) -> tuple[np.ndarray, np.ndarray]:
    """Centres for the ellipses ``shapes`` (n, 3), a share ``touching`` of them in clusters.

    Returns (centres (m, 2) float64 in pixel coordinates (y, x), shapes (m, 3)) for
    the m <= n cells that found a place. Cells that cannot join a cluster are tried
    as free-standing cells; cells that find no room at all are left out.
    """
    size = np.asarray(hw, float)
    centres: list[np.ndarray] = []
    kept: list[np.ndarray] = []
    n_clustered = round(float(np.clip(touching, 0.0, 1.0)) * len(shapes))
    queue = list(range(len(shapes)))
    leftovers: list[int] = []
    for cluster_size in _cluster_sizes(rng, n_clustered):
        members: list[int] = []
        for _ in range(cluster_size):
            index = queue.pop(0)
            if members:
                centre = _place_attached(rng, size, shapes[index], centres, kept, members)
            else:
                centre = _place_free(rng, size, shapes[index], centres, kept)
            if centre is None:
                leftovers.append(index)
                continue
            members.append(len(centres))
            centres.append(centre)
            kept.append(shapes[index])
    for index in leftovers + queue:
        centre = _place_free(rng, size, shapes[index], centres, kept)
        if centre is not None:
            centres.append(centre)
            kept.append(shapes[index])
    return np.asarray(centres).reshape(-1, 2), np.asarray(kept).reshape(-1, 3)


def rasterise(hw: tuple[int, int], centres: np.ndarray, shapes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label image and normalised radius of ellipses (overlaps split by nearest centre).

    Returns ``labels`` int32 (H, W) with cell ``i`` as ``i + 1`` and 0 for background,
    and ``rho`` float32 (H, W): the pixel's normalised elliptical radius in its own
    cell (0 at the centre, 1 on the outline; ``inf`` on background). A pixel inside
    several ellipses goes to the one with the smallest ``rho``.
    """
    labels = np.zeros(hw, np.int32)
    rho2 = np.full(hw, np.inf, np.float32)
    for index, ((cy, cx), (semi_a, semi_b, angle)) in enumerate(zip(centres, shapes)):
        y0, y1 = max(int(cy - semi_a) - 1, 0), min(int(cy + semi_a) + 2, hw[0])
        x0, x1 = max(int(cx - semi_a) - 1, 0), min(int(cx + semi_a) + 2, hw[1])
        if y0 >= y1 or x0 >= x1:
            continue
        dy = np.arange(y0, y1)[:, None] - cy
        dx = np.arange(x0, x1)[None, :] - cx
        along = dy * np.cos(angle) + dx * np.sin(angle)
        across = -dy * np.sin(angle) + dx * np.cos(angle)
        r2 = ((along / semi_a) ** 2 + (across / semi_b) ** 2).astype(np.float32)
        box_rho2, box_labels = rho2[y0:y1, x0:x1], labels[y0:y1, x0:x1]
        win = (r2 <= 1.0) & (r2 < box_rho2)
        box_rho2[win] = r2[win]
        box_labels[win] = index + 1
    return labels, np.sqrt(rho2)


def clean_labels(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Keep each label's largest 4-connected piece, drop labels below ``min_area`` px, relabel 1..n.

    ``labels`` int (H, W), 0 = background. Returns a new int32 array whose ids are
    exactly ``1..n`` in the order of the original ids.
    """
    labels = labels.copy()
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        mask = labels[box] == index
        pieces, count = ndimage.label(mask)
        if count > 1:
            sizes = np.bincount(pieces.ravel())
            sizes[0] = 0
            labels[box][mask & (pieces != sizes.argmax())] = 0
    areas = np.bincount(labels.ravel())
    keep = areas >= min_area
    keep[0] = False
    lookup = np.zeros(len(areas), np.int32)
    lookup[keep] = np.arange(1, keep.sum() + 1, dtype=np.int32)
    return lookup[labels]


def _unit_noise(rng: np.random.Generator, hw: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise (H, W) float32 rescaled to zero mean and unit std."""
    noise = ndimage.gaussian_filter(rng.standard_normal(hw, dtype=np.float32), sigma)
    return (noise - noise.mean()) / max(float(noise.std()), 1e-6)


def smooth_background(rng: np.random.Generator, hw: tuple[int, int], level: float) -> np.ndarray:
    """Uneven background (H, W) float32: ``level`` x a bicubic 4 x 4 random field in [0.4, 1.6]."""
    coarse = rng.uniform(0.4, 1.6, (4, 4))
    return (level * bicubic_upsample(coarse, hw)).astype(np.float32)


def render_intensity(
    rng: np.random.Generator,
    labels: np.ndarray,
    rho: np.ndarray,
    brightness: np.ndarray,
    *,
    edge_dimming: float,
    psf_sigma: float,
    background: float,
) -> np.ndarray:
    """Noise-free fluorescence (H, W) float32, in units of the brightest cell's interior.

    ``labels`` (H, W) ids 1..n, ``rho`` (H, W) normalised radius from
    :func:`rasterise`, ``brightness`` (n + 1,) with entry 0 unused. The cell signal is
    ``brightness * (1 - edge_dimming * rho^4) * texture``; it gets a faint wide glow,
    a Gaussian PSF blur of ``psf_sigma`` px and an uneven background of mean about
    ``background``.
    """
    hw = labels.shape
    texture = 1.0 + 0.12 * _unit_noise(rng, hw, 2.0) + 0.06 * _unit_noise(rng, hw, 0.7)
    inside = labels > 0
    profile = np.where(inside, 1.0 - edge_dimming * np.minimum(rho, 1.0) ** 4, 0.0)
    signal = (brightness[labels] * profile * texture).astype(np.float32)
    glow = ndimage.gaussian_filter(signal, 6.0)
    blurred = ndimage.gaussian_filter(signal + 0.15 * glow, psf_sigma)
    return blurred + smooth_background(rng, hw, background)


def camera(
    rng: np.random.Generator, expected: np.ndarray, *, photons: float, offset: float, read_noise: float
) -> np.ndarray:
    """Counts uint16 (H, W): Poisson(``photons`` x expected) + ``offset`` + N(0, ``read_noise``).

    ``expected`` float (H, W) >= 0 in units of the brightest cell; the result is
    rounded and clipped to the uint16 range.
    """
    counts = rng.poisson(np.maximum(expected, 0.0) * photons).astype(np.float32)
    counts += offset + rng.normal(0.0, read_noise, expected.shape).astype(np.float32)
    return np.clip(np.rint(counts), 0, np.iinfo(np.uint16).max).astype(np.uint16)


def synthetic_nuclei(
    shape: tuple[int, int] = (512, 512),
    *,
    seed: int | np.random.SeedSequence | np.random.Generator = 0,
    n_cells: int | None = None,
    touching: float = 0.5,
    radius_range: tuple[float, float] = (6.0, 16.0),
    edge_dimming: float = 0.3,
    psf_sigma: float = 1.5,
    background: float = 0.12,
    photons: float = 200.0,
    offset: float = 100.0,
    read_noise: float = 3.0,
    min_area: int = 20,
) -> tuple[np.ndarray, np.ndarray]:
    """A fluorescence-like image of nuclei and its exact instance labels.

    Parameters
    ----------
    shape : (H, W) of the image.
    seed : anything ``numpy.random.default_rng`` accepts; the result is a pure
        function of it and the other arguments.
    n_cells : cells to try to place; default ``default_cell_count(shape)`` (about
        130 on 512 x 512, scaled with the area). Cells that find no room, are cut to
        less than ``min_area`` px by the border or by neighbours are dropped, so the
        final count is usually a little lower.
    touching : share of cells placed in clusters of 2-5 with slightly overlapping,
        border-sharing neighbours; 0 gives only free-standing cells.
    radius_range : smallest and largest ellipse semi-axis (px).
    edge_dimming : how much dimmer a cell's rim is than its centre (0..1). Small
        values make the seam between touching cells weak, which is what the paper's
        separation weights address (Ronneberger et al. 2015, section 3).
    psf_sigma : std (px) of the Gaussian point-spread function.
    background : mean background relative to the brightest cell interior.
    photons : expected photon count at brightness 1 (sets the shot noise).
    offset, read_noise : camera offset and Gaussian read noise std (counts).
    min_area : cells with fewer pixels are removed from image labels.

    Returns
    -------
    image : uint16 (H, W).
    labels : int32 (H, W); 0 = background, cells ``1..n``, each one 4-connected
        component; touching cells share a border.
    """
    rng = np.random.default_rng(seed)
    hw = (int(shape[0]), int(shape[1]))
    n = default_cell_count(hw) if n_cells is None else int(n_cells)
    shapes = _draw_shapes(rng, n, radius_range)
    centres, shapes = place_cells(rng, hw, shapes, touching)
    raw, rho = rasterise(hw, centres, shapes)
    labels = clean_labels(raw, min_area)
    n_final = int(labels.max())
    logger.debug("synthetic_nuclei: %d of %d cells placed, %d kept", len(centres), n, n_final)
    brightness = np.concatenate([[0.0], rng.uniform(0.45, 1.0, n_final)]).astype(np.float32)
    expected = render_intensity(
        rng,
        labels,
        rho,
        brightness,
        edge_dimming=edge_dimming,
        psf_sigma=psf_sigma,
        background=background,
    )
    image = camera(rng, expected, photons=photons, offset=offset, read_noise=read_noise)
    return image, labels


def _child_seeds(seed: int | np.random.SeedSequence, n: int) -> list[np.random.SeedSequence]:
    """``n`` independent seeds derived from ``seed``; child ``i`` does not depend on ``n``."""
    base = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    return base.spawn(n)


def synthetic_stack(
    n_planes: int = 3, shape: tuple[int, int] = (256, 256), *, seed: int = 0, **kwargs: Any
) -> tuple[np.ndarray, np.ndarray]:
    """A stack of independent synthetic planes (e.g. for stack tests and napari sample data).

    Each plane is :func:`synthetic_nuclei` with its own seed derived from ``seed``
    (``kwargs`` are passed on). Returns (image uint16 (Z, H, W), labels int32
    (Z, H, W)); labels are numbered ``1..n_z`` within each plane.
    """
    planes = [synthetic_nuclei(shape, seed=child, **kwargs) for child in _child_seeds(seed, n_planes)]
    images = np.stack([image for image, _ in planes]) if planes else np.zeros((0, *shape), np.uint16)
    labels = np.stack([label for _, label in planes]) if planes else np.zeros((0, *shape), np.int32)
    return images, labels


def synthetic_dataset(
    n_images: int, shape: tuple[int, int] = (256, 256), *, seed: int = 0, **kwargs: Any
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_images`` (image uint16 (H, W), labels int32 (H, W)) pairs with distinct derived seeds.

    Image ``i`` depends only on ``seed`` and ``i`` (not on ``n_images``), so a larger
    dataset extends a smaller one. ``kwargs`` go to :func:`synthetic_nuclei`.
    """
    return [synthetic_nuclei(shape, seed=child, **kwargs) for child in _child_seeds(seed, n_images)]
