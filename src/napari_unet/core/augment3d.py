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
import torch
import torch.nn.functional as F

from .augment import _cubic_weights, draw_flips_and_turns, fold_coordinates, zoom_about
from .train_config import AugmentConfig


def identity_grid_3d(tile: Sequence[int], center: Sequence[float]) -> np.ndarray:
    """Source coordinates (3, tz, ty, tx) float64 of an unaugmented tile centred at ``center``."""
    axes = [np.arange(n) + (c - (n - 1) / 2) for n, c in zip(tile, center)]
    return np.stack(np.meshgrid(*axes, indexing="ij"))


def draw_rigid(rng: np.random.Generator, tile: Sequence[int], config: AugmentConfig) -> tuple[bool, bool, bool, int]:
    """Random (flip_z, flip_y, flip_x, k) allowed by ``config``; ``k`` quarter turns in
    the plane, odd only where the tile's y and x sizes are equal (see
    :func:`~napari_unet.core.augment.draw_flips_and_turns`)."""
    (flip_z, flip_y, flip_x), k = draw_flips_and_turns(rng, 3, tile[1:], config)
    return flip_z, flip_y, flip_x, k


def rigid(coords: np.ndarray, flip_z: bool, flip_y: bool, flip_x: bool, k: int) -> np.ndarray:
    """``coords`` (3, tz, ty, tx) flipped along z, y, x and then turned ``k`` quarter
    turns in the (y, x) plane: sampling through the result gives
    ``np.rot90(np.flip(tile, axes), k, axes=(1, 2))`` of the tile sampled through ``coords``."""
    if k % 2 and coords.shape[2] != coords.shape[3]:
        raise ValueError(f"90/270 degree rotations need equal y and x sizes, got {coords.shape[1:]}")
    for axis, flip in zip((1, 2, 3), (flip_z, flip_y, flip_x)):
        if flip:
            coords = np.flip(coords, axis)
    return np.rot90(coords, k, axes=(2, 3))


def tricubic_upsample(coarse: np.ndarray, out_shape: Sequence[int]) -> np.ndarray:
    """Interpolate ``coarse`` (..., gz, gy, gx) with cubic splines to (..., Z, Y, X), the
    nodes spanning the output (separable, as the 2D ``bicubic_upsample``). float64."""
    coarse = np.asarray(coarse, dtype=np.float64)
    wz, wy, wx = (_cubic_weights(g, n) for g, n in zip(coarse.shape[-3:], out_shape))
    return np.einsum("...abc,za,yb,xc->...zyx", coarse, wz, wy, wx, optimize=True)


def elastic_displacement_3d(
    tile: Sequence[int],
    rng: np.random.Generator,
    grid: int = 3,
    std: float = 10.0,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Elastic displacement field (3, tz, ty, tx) float64 in voxels.

    Vectors on a coarse ``grid``^3 lattice are drawn from N(0, ``std``) in units of
    the finest spacing (in-plane pixels) and interpolated with cubic splines; along
    an axis with a coarser ``spacing`` the displacement in voxels is smaller by that
    ratio.
    """
    coarse = rng.normal(0.0, std, (3, grid, grid, grid))
    if spacing is not None:
        finest = min(spacing)
        coarse *= np.array([finest / s for s in spacing])[:, None, None, None]
    return tricubic_upsample(coarse, tile)


def sampling_grid_3d(
    tile: Sequence[int],
    center: Sequence[float],
    rng: np.random.Generator,
    config: AugmentConfig,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Source coordinates (3, tz, ty, tx) float32 for one augmented tile of input size ``tile``."""
    flip_z, flip_y, flip_x, k = draw_rigid(rng, tile, config)
    coords = rigid(identity_grid_3d(tile, center), flip_z, flip_y, flip_x, k)
    coords = zoom_about(coords, center, rng, config.zoom)
    if config.elastic and config.elastic_std > 0:
        coords = coords + elastic_displacement_3d(tile, rng, config.grid, config.elastic_std, spacing)
    return np.ascontiguousarray(coords, dtype=np.float32)


def resample_volume(array: np.ndarray, coords: np.ndarray, order: int) -> np.ndarray:
    """Sample ``array`` (Z, Y, X) or (C, Z, Y, X) at ``coords`` (3, tz, ty, tx).

    ``order=0``: nearest voxel by indexing (dtype and values kept: labels, targets,
    weights). ``order=1``: trilinear, float32 (images). Outside the array the
    coordinates are mirrored without repeating the edge voxel, as often as needed.
    """
    array = np.asarray(array)
    if array.ndim not in (3, 4) or coords.ndim != 4 or coords.shape[0] != 3:
        raise ValueError(f"need an array (Z, Y, X) or (C, Z, Y, X) and coords (3, tz, ty, tx), got {array.shape}")
    volumes = array if array.ndim == 4 else array[None]
    spatial = volumes.shape[1:]
    folded = [fold_coordinates(c, n) for c, n in zip(coords, spatial)]
    if order == 0:
        index = tuple(np.clip(np.floor(f + 0.5).astype(np.intp), 0, n - 1) for f, n in zip(folded, spatial))
        out = volumes[(slice(None), *index)]
    elif order == 1:
        # grid_sample wants (x, y, z) in [-1, 1]; the coordinates are already inside
        grid = np.empty((*coords.shape[1:], 3), np.float32)
        for axis, (f, n) in enumerate(zip(folded, spatial)):
            grid[..., 2 - axis] = f * (2.0 / max(n - 1, 1)) - 1.0  # rounded to float32 once, as a cast would
        source = torch.from_numpy(np.ascontiguousarray(volumes, dtype=np.float32))[None]
        out = F.grid_sample(source, torch.from_numpy(grid)[None], mode="bilinear", align_corners=True)[0].numpy()
    else:
        raise ValueError(f"order must be 0 or 1 for volumes, got {order}")
    return out if array.ndim == 4 else out[0]
