"""Joint augmentation of volumes: image, target and weights through one 3D transform.

The volume counterpart of :mod:`napari_unet.core.augment` (Cicek et al. 2016 train
the 3D U-Net with on-the-fly elastic deformations). One random coordinate
transform is drawn per sample:

1. :func:`sampling_grid_3d` gives, for each voxel of the tile, the source
   coordinates (z, y, x): the identity grid around the tile centre, flipped along z,
   y and x (each with probability 1/2), rotated in the plane by a multiple of 90
   degrees (odd multiples only for tiles with equal y and x sizes), zoomed about
   the centre by one factor on every axis when ``AugmentConfig.zoom`` > 0, plus a smooth
   elastic displacement: vectors drawn on a coarse ``grid x grid x grid`` lattice
   spanning the tile and interpolated with cubic splines to every voxel. On
   anisotropic stacks the z component is scaled by the spacing, so the deformation
   has the same physical size along every axis. Rotations stay in the plane, where
   the sampling is the same along both axes.
2. :func:`resample_volume` reads an array at those coordinates: nearest voxel for
   labels, targets and weights (values and dtype kept, unannotated voxels stay
   weight 0), trilinear for images. Coordinates outside the volume are mirrored
   like ``numpy.pad(mode="reflect")``, however far out they go.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .augment import (
    _cubic_weights,
    draw_flips_and_turns,
    fold_coordinates,
    grid_product,
    rigid_factors,
    rigid_steps,
    sample_in_bands,
    zoom_factor,
)
from .train_config import AugmentConfig


def draw_rigid(rng: np.random.Generator, tile: Sequence[int], config: AugmentConfig) -> tuple[bool, bool, bool, int]:
    """Random (flip_z, flip_y, flip_x, k) allowed by ``config``; ``k`` quarter turns in
    the plane, odd only where the tile's y and x sizes are equal (see
    :func:`~napari_unet.core.augment.draw_flips_and_turns`)."""
    (flip_z, flip_y, flip_x), k = draw_flips_and_turns(rng, 3, tile[1:], config)
    return flip_z, flip_y, flip_x, k


def rigid_steps_3d(flip_z: bool, flip_y: bool, flip_x: bool, k: int) -> np.ndarray:
    """How the source coordinates (z, y, x) change per tile step along z, y and x
    (the columns of a 3 x 3 array) for a tile flipped along z, y and x and then turned
    by ``k`` quarter turns in the (y, x) plane, as ``np.rot90(np.flip(tile, axes), k,
    axes=(1, 2))``. Odd ``k`` needs equal y and x sizes."""
    steps = np.zeros((3, 3))
    steps[0, 0] = -1.0 if flip_z else 1.0
    steps[1:, 1:] = rigid_steps(flip_y, flip_x, k)
    return steps


def sampling_grid_3d(
    tile: Sequence[int],
    center: Sequence[float],
    rng: np.random.Generator,
    config: AugmentConfig,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Source coordinates (3, tz, ty, tx) float32, (z, y, x), for one augmented tile of
    input size ``tile`` centred at ``center``.

    Flips and turns of :func:`rigid_steps_3d` as ``config`` allows them (see
    :func:`draw_rigid`), the zoom of :func:`~.augment.zoom_factor` about the centre, and
    the elastic displacement: vectors on a coarse ``config.grid``^3 lattice spanning the
    tile, drawn from N(0, ``config.elastic_std``) in units of the finest spacing (so
    along an axis with a coarser ``spacing`` the displacement in voxels is smaller by
    that ratio), interpolated with cubic splines. As in 2D (:func:`~.augment.sampling_grid`)
    the grid is one small matrix product, (tile planes x 2 + grid) times (2 + grid x
    the plane's voxels and coordinates); the result is a (z, y, x) view of a
    (tz, ty, tx, 3) array of (x, y, z) per voxel, exact without deformation and zoom.
    """
    flip_z, flip_y, flip_x, k = draw_rigid(rng, tile, config)
    steps = rigid_steps_3d(flip_z, flip_y, flip_x, k) * zoom_factor(rng, config.zoom)
    # grid[:, z, y, x] = sum over m of per_plane[m][z] * in_plane[m][:, y, x] (see grid_product)
    per_plane, in_plane = rigid_factors(tile, center, steps)
    if config.elastic and config.elastic_std > 0:
        coarse = rng.normal(0.0, config.elastic_std, (3, config.grid, config.grid, config.grid))
        if spacing is not None:
            coarse *= np.array([min(spacing) / s for s in spacing])[:, None, None, None]
        along_z, along_y, along_x = (_cubic_weights(config.grid, n) for n in tile)
        per_plane.extend(along_z.T)
        in_plane.extend(np.einsum("cabd,yb,xd->acyx", coarse, along_y, along_x))
    grid = grid_product(per_plane, in_plane)  # (depth, height, width, 3) of (x, y, z)
    return np.moveaxis(grid[..., ::-1], -1, 0)


def resample_volume(array: np.ndarray, coords: np.ndarray, order: int, threads: int | None = None) -> np.ndarray:
    """Sample ``array`` (Z, Y, X) or (C, Z, Y, X) at ``coords`` (3, tz, ty, tx).

    ``order=0``: nearest voxel by indexing (dtype and values kept: labels, targets,
    weights). ``order=1``: trilinear, float32 (images), the tile's planes split into
    bands over ``threads`` (default: torch's thread count; grid_sample spreads a stack
    over threads, not one volume); the values are the same on any number. Outside the
    array the coordinates are mirrored without repeating the edge voxel, as often as
    needed.
    """
    array = np.asarray(array)
    if array.ndim not in (3, 4) or coords.ndim != 4 or coords.shape[0] != 3:
        raise ValueError(f"need an array (Z, Y, X) or (C, Z, Y, X) and coords (3, tz, ty, tx), got {array.shape}")
    volumes = array if array.ndim == 4 else array[None]
    spatial = volumes.shape[1:]
    if order == 0:
        folded = [fold_coordinates(c, n) for c, n in zip(coords, spatial)]
        index = tuple(np.clip(np.floor(f + 0.5).astype(np.intp), 0, n - 1) for f, n in zip(folded, spatial))
        out = volumes[(slice(None), *index)]
    elif order == 1:
        out = sample_in_bands(volumes, mirrored_grid(coords, spatial)[None], "bilinear", "zeros", threads)[0]
    else:
        raise ValueError(f"order must be 0 or 1 for volumes, got {order}")
    return out if array.ndim == 4 else out[0]


def mirrored_grid(coords: np.ndarray, spatial: Sequence[int]) -> np.ndarray:
    """``coords`` (3, tz, ty, tx) of a volume of ``spatial`` (Z, Y, X) size, mirrored into
    it (as :func:`~.augment.fold_coordinates`) and scaled to the (x, y, z) in [-1, 1]
    that ``grid_sample`` reads (align_corners): (tz, ty, tx, 3) float32.

    In float32, a few passes per axis: a coordinate ``c`` along an axis of last index
    ``L`` lands at ``L - | |fmod(c, 2L)| - L |`` (the mirror is symmetric about 0 and
    repeats every 2L), i.e. at ``1 - | |fmod(c, 2L)| - L | * 2 / L`` in grid_sample's
    units; within 3e-7 of folding in float64 and scaling (3.5x faster for an 88^3 tile).
    """
    grid = np.empty((*coords.shape[1:], 3), np.float32)
    for axis, size in enumerate(spatial):
        last = np.float32(max(size - 1, 1))  # an axis of one voxel reads it whatever the grid says
        distance = np.fmod(coords[axis], 2 * last, dtype=np.float32)
        np.abs(distance, out=distance)
        distance -= last
        np.abs(distance, out=distance)
        distance *= np.float32(-2.0) / last
        np.add(distance, np.float32(1.0), out=grid[..., 2 - axis])
    return grid
