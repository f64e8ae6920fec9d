"""Joint data augmentation of image, target and weights (Ronneberger et al. 2015, section 3.1).

One random coordinate transform is drawn per training sample and every array of
the sample is resampled through it, so image, target and weight map stay aligned:

1. :func:`sampling_grid` gives, for each pixel of the tile, the source coordinates
   (y, x) to read: the identity grid around ``center_yx``, randomly flipped and
   rotated by a multiple of 90 degrees about the tile centre, plus the paper's
   elastic deformation ("random displacement vectors on a coarse 3 by 3 grid ...
   sampled from a Gaussian distribution with 10 pixels standard deviation. Per-pixel
   displacements are then computed using bicubic interpolation"); when
   ``AugmentConfig.zoom`` > 0, a random zoom about the tile centre comes before the
   elastic displacement (:func:`zoom_about`).
2. :func:`resample` reads an array at those coordinates: order 3 (cubic spline) for
   images, order 0 (nearest, dtype kept, no new label ids) for labels and targets,
   order 1 for weight maps. Coordinates outside the array are mirrored like
   ``numpy.pad(mode="reflect")``, however far out they go.
3. :func:`jitter_intensity` varies the gray values of the image only.

Shifts (the paper's other augmentation) come from the caller's choice of
``center_yx``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .train_config import AugmentConfig

#: Extra source pixels kept around the sampled region before cubic interpolation.
#: The cubic spline prefilter is a recursive filter whose influence decays like
#: (2 - sqrt(3))**k = 0.268**k over k pixels, so cropping this far from the
#: sampled region changes results by a relative ~1e-9 at most.
SPLINE_MARGIN = 16


def tile_center(origin_yx: tuple[float, float], tile_hw: tuple[int, int]) -> tuple[float, float]:
    """The ``center_yx`` whose unaugmented tile is the crop starting at ``origin_yx``.

    Tile pixel ``i`` samples source row ``center_y + i - (th - 1) / 2``.
    """
    return (origin_yx[0] + (tile_hw[0] - 1) / 2, origin_yx[1] + (tile_hw[1] - 1) / 2)


def identity_grid(tile_hw: tuple[int, int], center_yx: tuple[float, float]) -> np.ndarray:
    """Source coordinates (2, th, tw) float64 of an unaugmented tile centred at ``center_yx``."""
    th, tw = tile_hw
    rows = np.arange(th) + (center_yx[0] - (th - 1) / 2)
    cols = np.arange(tw) + (center_yx[1] - (tw - 1) / 2)
    return np.stack(np.meshgrid(rows, cols, indexing="ij"))


def dihedral(coords: np.ndarray, flip_y: bool, flip_x: bool, k: int) -> np.ndarray:
    """``coords`` (2, th, tw) flipped (rows, then columns) then rotated by ``k`` x 90 degrees.

    The grid itself is flipped/rotated, so sampling through the result gives exactly
    ``np.rot90(np.flip(tile, axes), k)`` of the tile sampled through ``coords``. Odd
    ``k`` needs a square tile.
    """
    if k % 2 and coords.shape[1] != coords.shape[2]:
        raise ValueError(f"90/270 degree rotations need a square tile, got {coords.shape[1:]}")
    if flip_y:
        coords = coords[:, ::-1, :]
    if flip_x:
        coords = coords[:, :, ::-1]
    return np.rot90(coords, k, axes=(1, 2))


def draw_flips_and_turns(
    rng: np.random.Generator, n_axes: int, plane_hw: Sequence[int], config: AugmentConfig
) -> tuple[tuple[bool, ...], int]:
    """Random flips of ``n_axes`` axes and ``k`` quarter turns in the (y, x) plane, as
    ``config`` allows them; odd ``k`` only where the plane ``plane_hw`` is square.

    Always consumes the same random numbers, so the stream does not depend on the
    config.
    """
    flips = rng.random(n_axes) < 0.5
    turn = int(rng.integers(4))
    chosen = tuple(bool(flip) for flip in flips) if config.flips else (False,) * n_axes
    if not config.rotations:
        k = 0
    elif plane_hw[0] == plane_hw[1]:
        k = turn
    else:
        k = 2 * (turn % 2)
    return chosen, k


def draw_dihedral(rng: np.random.Generator, tile_hw: tuple[int, int], config: AugmentConfig):
    """Random (flip_y, flip_x, k) allowed by ``config`` (see :func:`draw_flips_and_turns`)."""
    (flip_y, flip_x), k = draw_flips_and_turns(rng, 2, tile_hw, config)
    return flip_y, flip_x, k


def zoom_about(coords: np.ndarray, center: Sequence[float], rng: np.random.Generator, zoom: float) -> np.ndarray:
    """``coords`` (D, ...) scaled about ``center`` (D floats) by ``exp(u)``, ``u`` drawn
    from U[-``zoom``, ``zoom``]: a factor above 1 reads a larger region, so objects
    appear smaller. Draws one number; ``zoom`` 0 draws none and returns ``coords``."""
    if zoom <= 0:
        return coords
    factor = float(np.exp(rng.uniform(-zoom, zoom)))
    middle = np.asarray(center, dtype=np.float64).reshape(-1, *([1] * (coords.ndim - 1)))
    return middle + (coords - middle) * factor


@functools.lru_cache(maxsize=64)
def _cubic_weights(n_nodes: int, n_out: int) -> np.ndarray:
    """Matrix (n_out, n_nodes): cubic-spline interpolation from nodes to ``n_out`` samples.

    Node 0 lands on sample 0 and the last node on the last sample (the field spans
    the output). Computed with ``scipy.ndimage.map_coordinates(order=3, mode="mirror")``
    on unit vectors, so ``W @ values`` equals that interpolation. Cached; read-only.
    """
    positions = np.linspace(0.0, n_nodes - 1.0, n_out)[None, :]
    eye = np.eye(n_nodes)
    weights = np.stack(
        [ndimage.map_coordinates(eye[k], positions, order=3, mode="mirror") for k in range(n_nodes)], axis=1
    )
    weights.flags.writeable = False
    return weights


def bicubic_upsample(coarse: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Interpolate ``coarse`` (..., gh, gw) bicubically to (..., H, W), nodes spanning the output.

    Equal to ``scipy.ndimage.map_coordinates(coarse, ..., order=3, mode="mirror")`` at
    the coordinates ``linspace(0, g - 1, H)`` per axis, computed separably, which is
    exact because the spline is a tensor product. Returns float64.
    """
    coarse = np.asarray(coarse, dtype=np.float64)
    rows = _cubic_weights(coarse.shape[-2], out_hw[0])
    cols = _cubic_weights(coarse.shape[-1], out_hw[1])
    along_x = coarse @ cols.T  # (..., gh, W): small
    # One broadcast multiply-add per coarse row instead of a large matrix product,
    # whose multi-threaded BLAS call is slow on a busy machine with few cores.
    out = np.zeros((*coarse.shape[:-2], out_hw[0], out_hw[1]))
    for node in range(coarse.shape[-2]):
        out += rows[:, node, None] * along_x[..., node, None, :]
    return out


def elastic_displacement(
    tile_hw: tuple[int, int], rng: np.random.Generator, grid: int = 3, std: float = 10.0
) -> np.ndarray:
    """Elastic displacement field (2, th, tw) float64 in px (paper section 3.1).

    Displacement vectors on a coarse ``grid`` x ``grid`` grid are drawn from
    N(0, ``std``) px per component and interpolated bicubically to every pixel; the
    coarse nodes sit on the tile's first/last rows and columns and evenly between.
    """
    coarse = rng.normal(0.0, std, (2, grid, grid))
    return bicubic_upsample(coarse, tile_hw)


def sampling_grid(
    tile_hw: tuple[int, int], center_yx: tuple[float, float], rng: np.random.Generator, config: AugmentConfig
) -> np.ndarray:
    """Source coordinates (2, th, tw) float32 for one augmented tile of input size ``tile_hw``.

    Start from the identity grid centred at ``center_yx`` (float source coordinates;
    see :func:`tile_center`), flip along each axis with probability 1/2 if
    ``config.flips``, rotate by a random multiple of 90 degrees about the tile centre
    if ``config.rotations`` (only 0/180 degrees when th != tw), zoom about the centre
    if ``config.zoom`` (:func:`zoom_about`), then add the elastic displacement of
    :func:`elastic_displacement` if ``config.elastic``. Feed the result to
    :func:`resample` for every array of the sample.
    """
    flip_y, flip_x, k = draw_dihedral(rng, tile_hw, config)
    coords = dihedral(identity_grid(tile_hw, center_yx), flip_y, flip_x, k)
    coords = zoom_about(coords, center_yx, rng, config.zoom)
    if config.elastic and config.elastic_std > 0:
        coords = coords + elastic_displacement(tile_hw, rng, config.grid, config.elastic_std)
    return np.ascontiguousarray(coords, dtype=np.float32)


def fold_coordinates(coords: np.ndarray, size: int, mode: str = "mirror") -> np.ndarray:
    """Map float coordinates along one axis of length ``size`` into ``[0, size - 1]``.

    ``mode="mirror"`` reflects about the first and last pixel centres without
    repeating them (``numpy.pad(mode="reflect")``, scipy's ``"mirror"``), repeated
    with period ``2 * (size - 1)`` so any distance works; ``mode="nearest"`` clamps.
    """
    if mode not in ("mirror", "nearest"):
        raise ValueError(f"mode must be 'mirror' or 'nearest', got {mode!r}")
    coords = np.asarray(coords, dtype=np.float64)
    last = size - 1
    if last == 0:
        return np.zeros_like(coords)
    if coords.size == 0 or (coords.min() >= 0 and coords.max() <= last):
        return coords  # the common case of a tile inside the image: nothing to fold
    if mode == "nearest":
        return np.clip(coords, 0.0, last)
    # numpy's mod of floats is fmod plus the period where the two differ in sign, and
    # several times slower than the two steps written out (the same values)
    period = 2.0 * last
    folded = np.fmod(coords, period)
    folded += period * (folded < 0)
    folded -= last
    np.abs(folded, out=folded)
    return np.subtract(last, folded, out=folded)


def _bounding_box(folded_y: np.ndarray, folded_x: np.ndarray, hw: tuple[int, int], margin: int):
    """Slices (rows, cols) covering the folded coordinates plus ``margin`` px, inside the image."""
    y0 = max(int(np.floor(folded_y.min())) - margin, 0)
    y1 = min(int(np.ceil(folded_y.max())) + margin + 1, hw[0])
    x0 = max(int(np.floor(folded_x.min())) - margin, 0)
    x1 = min(int(np.ceil(folded_x.max())) + margin + 1, hw[1])
    return slice(y0, y1), slice(x0, x1)


def _output_dtype(dtype: np.dtype) -> np.dtype:
    """float64 stays float64; everything else interpolates to float32."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def resample(array: np.ndarray, coords: np.ndarray, order: int, *, mode: str = "mirror") -> np.ndarray:
    """Sample ``array`` (H, W) or (C, H, W) at ``coords`` (2, th, tw) -> (th, tw) or (C, th, tw).

    ``order=0``: nearest pixel, by direct indexing; the dtype and the set of values
    are kept (use it for labels and targets, including ``IGNORE_LABEL``).
    ``order=1``: bilinear (weight maps). ``order=3``: cubic spline (images; may
    overshoot slightly). Orders >= 1 return float32 (float64 for float64 input).

    Outside the array, ``mode="mirror"`` reflects without repeating the edge pixel
    (``numpy.pad(mode="reflect")``), as often as needed; ``mode="nearest"`` clamps
    coordinates to the edge pixel (splines near the edge still use mirror boundary
    conditions). Coordinates are folded into the array first and the source is
    cropped to their bounding box (plus ``SPLINE_MARGIN`` px for order >= 2) before
    interpolating, so the cost scales with the tile, not the image; the crop changes
    cubic results only by a relative ~1e-9.
    """
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise ValueError(f"array must be (H, W) or (C, H, W), got shape {array.shape}")
    if coords.ndim != 3 or coords.shape[0] != 2:
        raise ValueError(f"coords must be (2, th, tw), got shape {coords.shape}")
    planes = array if array.ndim == 3 else array[None]
    hw = planes.shape[1:]
    folded_y = fold_coordinates(coords[0], hw[0], mode)
    folded_x = fold_coordinates(coords[1], hw[1], mode)
    if order == 0:
        rows = np.clip(np.floor(folded_y + 0.5).astype(np.intp), 0, hw[0] - 1)
        cols = np.clip(np.floor(folded_x + 0.5).astype(np.intp), 0, hw[1] - 1)
        out = planes[:, rows, cols]
    else:
        out = _interpolate(planes, folded_y, folded_x, order)
    return out if array.ndim == 3 else out[0]


def _interpolate(planes: np.ndarray, folded_y: np.ndarray, folded_x: np.ndarray, order: int) -> np.ndarray:
    """Spline interpolation of ``planes`` (C, H, W) at in-range coordinates, on a cropped source."""
    margin = SPLINE_MARGIN if order >= 2 else 1
    rows, cols = _bounding_box(folded_y, folded_x, planes.shape[1:], margin)
    dtype = _output_dtype(planes.dtype)
    local = np.stack([folded_y - rows.start, folded_x - cols.start])
    out = np.empty((planes.shape[0], *folded_y.shape), dtype)
    for channel, plane in enumerate(planes):
        source = np.asarray(plane[rows, cols], dtype=dtype)
        ndimage.map_coordinates(source, local, output=out[channel], order=order, mode="mirror")
    return out


def resample_cubic(image: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Bicubic samples of ``image`` (C, H, W) at ``coords`` (2, th, tw) -> float32 (C, th, tw).

    Cubic convolution (Keys, a = -0.75) through ``torch.nn.functional.grid_sample``,
    with the same mirrored borders as :func:`resample` (reflection about the edge
    pixel centres, repeated as far as needed). It interpolates exactly at integer
    coordinates and runs several times faster than the spline of :func:`resample`
    (which holds the GIL); the training sampler uses it for images.
    """
    image = np.ascontiguousarray(image, dtype=np.float32)
    height, width = image.shape[-2:]
    grid = np.stack(
        [coords[1] * (2.0 / max(width - 1, 1)) - 1.0, coords[0] * (2.0 / max(height - 1, 1)) - 1.0], axis=-1
    )
    sampled = F.grid_sample(
        torch.from_numpy(image)[None],
        torch.from_numpy(grid.astype(np.float32))[None],
        mode="bicubic",
        padding_mode="reflection",
        align_corners=True,
    )
    return sampled[0].numpy()


def jitter_intensity(image: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """Random gray-value variation of a normalised image (C, H, W) -> float32, same shape.

    One draw per call, shared by all channels: ``scale`` ~ U[1 - contrast, 1 + contrast],
    ``shift`` ~ U[-brightness, brightness], ``log(gamma)`` ~ U[-gamma, gamma]. Then

        y = x * scale + shift
        z = clip(y, 0, 1)
        out = y - z + z ** gamma

    i.e. the gamma curve acts on the [0, 1] part of the normalised range and values
    below 0 or above 1 pass through unchanged; the map is continuous and monotonic
    non-decreasing (strictly increasing where ``scale > 0``), so the gray-value order
    of pixels is kept. With all three config values 0 it is the identity.
    """
    scale = rng.uniform(1.0 - config.contrast, 1.0 + config.contrast)
    shift = rng.uniform(-config.brightness, config.brightness)
    gamma = float(np.exp(rng.uniform(-config.gamma, config.gamma)))
    out = np.asarray(image, dtype=np.float32) * np.float32(scale) + np.float32(shift)
    clipped = np.clip(out, 0.0, 1.0)
    return (out - clipped + clipped ** np.float32(gamma)).astype(np.float32, copy=False)
