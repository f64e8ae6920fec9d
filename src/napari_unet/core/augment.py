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
   elastic displacement (:func:`zoom_factor`).
2. :func:`resample_cubic` reads the image at those coordinates (cubic convolution)
   and :func:`resample_nearest` the target and the weight map (nearest pixel, values
   kept, no new label ids), several tiles of one image in one call each. Coordinates
   outside the array are mirrored like ``numpy.pad(mode="reflect")``, however far out
   they go.
3. :func:`apply_jitter` varies the gray values of the image only.

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


def tile_center(origin_yx: tuple[float, float], tile_hw: tuple[int, int]) -> tuple[float, float]:
    """The ``center_yx`` whose unaugmented tile is the crop starting at ``origin_yx``.

    Tile pixel ``i`` samples source row ``center_y + i - (th - 1) / 2``.
    """
    return (origin_yx[0] + (tile_hw[0] - 1) / 2, origin_yx[1] + (tile_hw[1] - 1) / 2)


def rigid_steps(flip_y: bool, flip_x: bool, k: int) -> np.ndarray:
    """How the source coordinates (y, x) change per tile row and per tile column (2, 2)
    for a tile flipped (rows, then columns) and then turned by ``k`` x 90 degrees about
    its centre, as ``np.rot90(np.flip(tile, axes), k)``: ``steps[:, 0]`` per row,
    ``steps[:, 1]`` per column. Odd ``k`` needs a square tile."""
    steps = np.eye(2)
    if flip_y:
        steps[:, 0] *= -1
    if flip_x:
        steps[:, 1] *= -1
    for _ in range(k % 4):  # a quarter turn reads row i from what was column -i
        steps = np.stack([-steps[:, 1], steps[:, 0]], axis=1)
    return steps


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


def zoom_factor(rng: np.random.Generator, zoom: float) -> float:
    """``exp(u)``, ``u`` drawn from U[-``zoom``, ``zoom``]: a factor above 1 reads a
    larger region, so objects appear smaller. Draws one number; ``zoom`` 0 draws none
    and returns 1."""
    return float(np.exp(rng.uniform(-zoom, zoom))) if zoom > 0 else 1.0


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


def sampling_grid(
    tile_hw: tuple[int, int],
    center_yx: tuple[float, float],
    rng: np.random.Generator,
    config: AugmentConfig,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Source coordinates (2, th, tw) float32, (y, x), for one augmented tile of input
    size ``tile_hw``.

    The tile centred at ``center_yx`` (float source coordinates; see :func:`tile_center`),
    flipped along each axis with probability 1/2 if ``config.flips``, turned by a random
    multiple of 90 degrees about its centre if ``config.rotations`` (only 0/180 degrees
    when th != tw), zoomed about its centre if ``config.zoom`` (:func:`zoom_factor`);
    then, if ``config.elastic``, displaced elastically (paper section 3.1): vectors on a
    coarse ``config.grid`` x ``config.grid`` grid whose nodes sit on the tile's
    first/last rows and columns and evenly between, drawn from N(0, ``config.elastic_std``)
    px per component, interpolated bicubically to every pixel (:func:`bicubic_upsample`).

    The rigid part is affine in the tile's row and column and the displacement a tensor
    product of row and column weights, so the grid is one small matrix product (rank 2
    plus the coarse grid's rows), written into a (th, tw, 2) array of (x, y) per pixel:
    ``out`` where given, the layout ``torch.nn.functional.grid_sample`` reads. The result
    is a (y, x) view of it; without deformation and zoom its values are exact.
    """
    th, tw = tile_hw
    flip_y, flip_x, k = draw_dihedral(rng, tile_hw, config)
    steps = rigid_steps(flip_y, flip_x, k) * zoom_factor(rng, config.zoom)
    # grid[:, i, j] = sum over m of per_row[m][i] * per_column[m][:, j] (see grid_product)
    per_row, per_column = rigid_factors(tile_hw, center_yx, steps)
    if config.elastic and config.elastic_std > 0:
        coarse = rng.normal(0.0, config.elastic_std, (2, config.grid, config.grid))
        per_row.extend(_cubic_weights(config.grid, th).T)
        per_column.extend(np.moveaxis(coarse @ _cubic_weights(config.grid, tw).T, 1, 0))
    return yx_coordinates(grid_product(per_row, per_column, out))


def rigid_factors(tile: Sequence[int], center: Sequence[float], steps: np.ndarray) -> tuple[list, list]:
    """The rigid grid ``center + steps @ (index - (tile - 1) / 2)`` over a tile (2D or
    3D; ``steps`` (D, D) from :func:`rigid_steps`, scaled by the zoom) as the factors of
    :func:`grid_product`: along the first axis 1 and the index, over the other axes the
    offset plus their steps, and the first axis' step."""
    dims = len(tile)
    column = (dims, *[1] * (dims - 1))  # a (D, 1, ..) array broadcast over the other axes
    across = (np.asarray(center, dtype=np.float64) - steps @ [(n - 1) / 2 for n in tile]).reshape(column)
    for axis, index in enumerate(np.ix_(*[np.arange(n) for n in tile[1:]]), start=1):
        across = across + steps[:, axis].reshape(column) * index
    first_step = np.broadcast_to(steps[:, 0].reshape(column), (dims, *tile[1:]))
    return [np.ones(tile[0]), np.arange(tile[0], dtype=np.float64)], [across, first_step]


def grid_product(first: list[np.ndarray], rest: list[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
    """The sampling grid ``sum over m of first[m][i] * rest[m][:, ...]`` (``first``: arrays
    (n,) along the tile's first axis; ``rest``: arrays (D, ...) of the D coordinates over
    its other axes) as one float32 matrix product, written into ``out`` (n, ..., D) with
    the coordinates in reverse order (x first), the layout ``grid_sample`` reads."""
    along_first = np.stack(first, axis=1).astype(np.float32)  # (n, m)
    across = np.ascontiguousarray(np.moveaxis(np.stack(rest)[:, ::-1], 1, -1), dtype=np.float32)  # (m, ..., D)
    grid = np.empty((len(along_first), *across.shape[1:]), np.float32) if out is None else out
    torch.mm(
        torch.from_numpy(along_first),
        torch.from_numpy(across).view(len(rest), -1),
        out=torch.from_numpy(grid).view(len(grid), -1),
    )
    return grid


def yx_coordinates(grid: np.ndarray) -> np.ndarray:
    """The (..., 2, th, tw) (y, x) view of a grid (..., th, tw, 2) of (x, y) per pixel."""
    return np.moveaxis(grid[..., ::-1], -1, -3)


def fold_coordinates(coords: np.ndarray, size: int) -> np.ndarray:
    """Map float coordinates along one axis of length ``size`` into ``[0, size - 1]``
    (float64), reflected about the first and last pixel centres without repeating them
    (``numpy.pad(mode="reflect")``, scipy's ``"mirror"``), repeated with period
    ``2 * (size - 1)`` so any distance works.
    """
    coords = np.asarray(coords, dtype=np.float64)
    last = size - 1
    if last == 0:
        return np.zeros_like(coords)
    if coords.size == 0 or (coords.min() >= 0 and coords.max() <= last):
        return coords  # the common case of a tile inside the image: nothing to fold
    # numpy's mod of floats is fmod plus the period where the two differ in sign, and
    # several times slower than the two steps written out (the same values)
    period = 2.0 * last
    folded = np.fmod(coords, period)
    folded += period * (folded < 0)
    folded -= last
    np.abs(folded, out=folded)
    return np.subtract(last, folded, out=folded)


def resample_cubic(image: np.ndarray, coords: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Bicubic samples of ``image`` (C, H, W) at ``coords`` (2, th, tw) -> float32 (C, th, tw),
    or at a stack of grids (n, 2, th, tw) -> (n, C, th, tw), in one call.

    Cubic convolution (Keys, a = -0.75) through ``torch.nn.functional.grid_sample``,
    mirrored at the borders (reflection about the edge pixel centres, repeated as far
    as needed, :func:`fold_coordinates`). It interpolates exactly at integer
    coordinates and runs several times faster than scipy's cubic spline (which holds
    the GIL); the training sampler uses it for images. grid_sample spreads
    the tiles of its stack over ``threads`` (default: torch's thread count; pass 1 from
    threads that already run side by side), so fewer tiles than threads are split into
    bands of rows; a tile's values are the same alone, in a stack or in bands.
    Coordinates that are :func:`yx_coordinates` views of a contiguous grid are read
    without a copy.
    """
    return _grid_sample(image, coords, "bicubic", threads)


def resample_nearest(image: np.ndarray, coords: np.ndarray, threads: int | None = None) -> np.ndarray:
    """The nearest pixels of ``image`` (C, H, W) at ``coords`` as :func:`resample_cubic`
    takes them -> float32, values kept (targets and weight maps), borders mirrored.

    The pixel is that of the coordinate rounded after the mirror fold, half-pixels to
    even (as grid_sample rounds, in float32).
    """
    return _grid_sample(image, coords, "nearest", threads)


def _grid_sample(image: np.ndarray, coords: np.ndarray, mode: str, threads: int | None) -> np.ndarray:
    """``grid_sample`` of ``image`` at pixel ``coords`` (2, th, tw) or (n, 2, th, tw), mirrored,
    the tiles of a stack (or bands of a lone tile's rows) spread over ``threads``."""
    height, width = image.shape[-2:]
    pixels = np.moveaxis(coords, -3, -1)[..., ::-1]  # (x, y) last, as grid_sample reads them
    grids = np.empty(pixels.shape, np.float32)
    # x and y each times a scalar: numpy multiplies by a broadcast pair 20x slower
    for axis, size in enumerate((width, height)):
        np.multiply(pixels[..., axis], np.float32(2.0 / max(size - 1, 1)), out=grids[..., axis], dtype=np.float32)
    grids = grids.reshape(-1, *grids.shape[-3:])
    grids -= 1.0
    sampled = sample_in_bands(image, grids, mode, "reflection", threads)
    return sampled if coords.ndim == 4 else sampled[0]


def sample_in_bands(source: np.ndarray, grids: np.ndarray, mode: str, padding: str, threads: int | None) -> np.ndarray:
    """``grid_sample`` (align_corners) of ``source`` (C, *spatial) at each of ``grids``
    (n, rows, *rest, D), float32 in [-1, 1] as grid_sample reads them -> (n, C, rows,
    *rest) float32. grid_sample spreads the tiles of a stack over its threads, not the
    rows of one, so each tile is split into as many bands of rows (a divisor of
    ``rows``) as keep ``threads`` threads (default: torch's count) busy; a band is a
    tile to it, and the values are the same on any number of threads."""
    count, rows, *rest = grids.shape[:-1]
    bands = min(-(-(threads or torch.get_num_threads()) // count), rows)
    while rows % bands:
        bands -= 1
    image = torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32))
    sampled = F.grid_sample(
        image[None].expand(count * bands, *[-1] * image.ndim),
        torch.from_numpy(grids).view(count * bands, rows // bands, *rest, grids.shape[-1]),
        mode=mode,
        padding_mode=padding,
        align_corners=True,
    )
    channels = image.shape[0]
    return (
        sampled.view(count, bands, channels, rows // bands, *rest)
        .transpose(1, 2)
        .reshape(count, channels, rows, *rest)
        .numpy()
    )


def draw_jitter(rng: np.random.Generator, config: AugmentConfig) -> tuple[float, float, float]:
    """The (scale, shift, gamma) of one :func:`apply_jitter`: ``scale`` ~ U[1 -
    contrast, 1 + contrast], ``shift`` ~ U[-brightness, brightness], ``log(gamma)`` ~
    U[-gamma, gamma]; three draws, whatever the config."""
    scale = rng.uniform(1.0 - config.contrast, 1.0 + config.contrast)
    shift = rng.uniform(-config.brightness, config.brightness)
    return scale, shift, float(np.exp(rng.uniform(-config.gamma, config.gamma)))


def apply_jitter(image: np.ndarray, scale: float, shift: float, gamma: float) -> np.ndarray:
    """``image`` (float32, any shape) varied in gray value, in place, and returned:

        y = x * scale + shift
        z = clip(y, 0, 1)
        out = y - z + z ** gamma

    i.e. the gamma curve acts on the [0, 1] part of the normalised range and values
    below 0 or above 1 pass through unchanged; the map is continuous and monotonic
    non-decreasing (strictly increasing where ``scale > 0``), so the gray-value order
    of pixels is kept. With scale 1, shift 0 and gamma 1 it is the identity.
    """
    image *= np.float32(scale)
    image += np.float32(shift)
    clipped = np.clip(image, 0.0, 1.0)
    image -= clipped
    image += np.power(clipped, np.float32(gamma), out=clipped)
    return image
