"""A synthetic volume of nuclei with exact 3D instance labels, to try the 3D
workflow on (napari sample data, tests).

Nuclei are ellipsoids with random radii and orientations, placed in physical space
(the voxels are ``spacing`` apart, z coarser than y and x as on most microscopes),
about a third of them pressed against a neighbour so that touching nuclei have to
be told apart. The image is what a widefield fluorescence stack of them looks like:
textured nuclei of varying brightness, blurred more along z than in the plane, on
an uneven background, with photon and read noise.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .synthetic import camera

#: Voxel size (z, y, x) of the sample volume, in um: z twice as coarse.
SPACING = (2.0, 1.0, 1.0)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q *= np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _place(
    rng: np.random.Generator, extent: np.ndarray, n: int, touching: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Centres (physical, z y x) and semi-axes of ``n`` nuclei inside ``extent``;
    a share ``touching`` of them is put against an earlier one."""
    placed: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(50 * n):
        if len(placed) == n:
            break
        semi = rng.uniform(5.5, 9.0, 3) * rng.uniform(0.85, 1.15)
        if placed and rng.random() < touching:
            centre0, semi0 = placed[rng.integers(len(placed))]
            direction = rng.standard_normal(3)
            direction /= np.linalg.norm(direction)
            centre = centre0 + direction * (semi0.mean() + semi.mean()) * 0.92
        else:
            centre = rng.uniform(0, extent)
        if np.any(centre < semi.min()) or np.any(centre > extent - semi.min()):
            continue
        clear = all(np.linalg.norm(centre - c) > 0.85 * (s.mean() + semi.mean()) for c, s in placed)
        if clear:
            placed.append((centre, semi))
    return placed


def synthetic_volume(
    shape: tuple[int, int, int] = (28, 128, 128),
    *,
    spacing: tuple[float, float, float] = SPACING,
    n_nuclei: int = 40,
    touching: float = 0.35,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(image uint16 (Z, Y, X), labels int32 (Z, Y, X)): nuclei numbered 1..n, each
    one connected object with one id in every plane it crosses, 0 between them.

    ``spacing``: voxel size (z, y, x) in the units of the radii (about 5.5-9 along
    each semi-axis, i.e. nuclei 11-18 wide). Deterministic for a ``seed``.
    """
    rng = np.random.default_rng(seed)
    step = np.asarray(spacing, float)
    extent = np.asarray(shape) * step
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, step)], indexing="ij"), axis=-1)
    labels = np.zeros(shape, np.int32)
    depth = np.zeros(shape, np.float32)  # 0 at a nucleus' centre, 1 at its surface
    for index, (centre, semi) in enumerate(_place(rng, extent, n_nuclei, touching), start=1):
        rotation = _random_rotation(rng)
        reach = semi.max()
        low = np.maximum(np.floor((centre - reach) / step).astype(int), 0)
        high = np.minimum(np.ceil((centre + reach) / step).astype(int) + 1, shape)
        box = tuple(slice(a, b) for a, b in zip(low, high))
        local = (grid[box] - centre) @ rotation / semi
        rho = np.sqrt((local**2).sum(axis=-1))
        free = (rho <= 1.0) & (labels[box] == 0)  # an earlier nucleus keeps its voxels: they touch
        labels[box][free] = index
        depth[box][free] = rho[free]
    labels = _largest_pieces(labels)
    return _render(rng, labels, depth, step), labels


def _largest_pieces(labels: np.ndarray) -> np.ndarray:
    """Each id reduced to its largest 6-connected piece (a nucleus pressed into
    another can be cut in two by it), ids renumbered 1..n."""
    out = np.zeros_like(labels)
    count = 0
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        pieces, n = ndimage.label(labels[box] == index)
        if n == 0:
            continue
        largest = np.argmax(np.bincount(pieces.ravel())[1:]) + 1
        count += 1
        out[box][pieces == largest] = count
    return out


def _render(rng: np.random.Generator, labels: np.ndarray, depth: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Camera counts uint16 of the nuclei in ``labels``: textured and dimmer at their
    rims, blurred by a point spread function 2.5x longer along z than across."""
    brightness = np.concatenate([[0.0], rng.uniform(0.45, 1.0, int(labels.max()))]).astype(np.float32)
    texture = ndimage.gaussian_filter(rng.standard_normal(labels.shape).astype(np.float32), 1.5)
    texture = 1.0 + 0.12 * texture / max(float(texture.std()), 1e-6)
    inside = labels > 0
    signal = np.where(inside, brightness[labels] * (1.0 - 0.3 * depth**4) * texture, 0.0).astype(np.float32)
    psf = (2.5 * 0.8 / step[0], 0.8 / step[1], 0.8 / step[2])
    blurred = ndimage.gaussian_filter(signal, psf)
    background = 0.08 * (1.0 + 0.5 * np.linspace(-1, 1, labels.shape[2], dtype=np.float32))
    return camera(rng, blurred + background, photons=300.0, offset=100.0, read_noise=3.0)
