"""Training samples: augmented valid-size tiles with their targets and weights.

Each sample is one random coordinate transform (flip, rotation, elastic deformation)
applied to a prepared plane's image, separation target and weight map
(:mod:`.data`), so the three stay aligned; and the default training tile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import geometry
from .augment import (
    apply_jitter,
    draw_jitter,
    resample_cubic,
    resample_nearest,
    sampling_grid,
    tile_center,
    yx_coordinates,
)
from .augment3d import resample_volume, sampling_grid_3d
from .data import PreparedPlane
from .train_config import AugmentConfig


@dataclass(frozen=True)
class Batch:
    """Samples of one step: image (B, C, th, tw), target (B, oh, ow) int64, weights
    (B, oh, ow), and one dropout seed per sample."""

    image: np.ndarray
    target: np.ndarray
    weights: np.ndarray
    dropout_seeds: tuple[int, ...] = ()


class SampleStream:
    """Augmented training samples from prepared planes, each a pure function of the
    run's seed and the sample's global index.

    Sample ``i`` draws everything random about it — which plane (weighted by its
    annotated area), the tile centre (a random annotated pixel), the coordinate
    transform, the gray-value jitter and its dropout seed — from its own generator
    seeded with ``(seed, i)``. Image (bicubic), target and weights (nearest) are
    resampled through one transform; target and weights cover the tile's output (its
    centre). So a batch does not depend on which process draws it, or on what was
    drawn before: N processes that split a batch train like one, and resuming needs
    no random state.
    """

    def __init__(
        self,
        planes: list[PreparedPlane],
        tile: int | Sequence[int],
        depth: int | Sequence,
        augment: AugmentConfig,
        seed: int,
        spacing: Sequence[float] | None = None,
    ) -> None:
        self.planes = planes
        self.augment = augment
        self.seed = seed
        self.spacing = spacing
        areas = np.array([len(p.annotated) for p in planes], float)
        self.plane_odds = areas / areas.sum()
        if planes and planes[0].image.ndim == 4:  # volumes: per-axis tile and geometry
            axes = (depth,) * 3 if isinstance(depth, int) else tuple(depth)
            tiles = (tile,) * 3 if isinstance(tile, int) else tuple(tile)
            if len(tiles) != 3:  # zip below would pair two sizes with three axes
                raise geometry.InvalidTileSize(
                    f"tile {tiles} has {len(tiles)} sizes for a 3D network: give one size, or three (z, y, x)"
                )
            self.output = geometry.along_axes(geometry.output_size, tiles, axes)  # a clear error for invalid sizes
            self.tile = tiles
            self.context = tuple(geometry.context(axis) for axis in axes)
            return
        if not isinstance(tile, int):  # sizes per axis: a 2D network trains on square tiles
            sizes = tuple(tile)
            if len(sizes) != 2 or sizes[0] != sizes[1]:
                raise geometry.InvalidTileSize(
                    f"tile {sizes}: a 2D network trains on square tiles: give one size (e.g. --tile {sizes[-1]})"
                )
            tile = sizes[0]
        geometry.output_size(tile, depth)  # raises a clear error for invalid sizes
        self.tile = tile
        self.context = geometry.context(depth)
        self.output = geometry.output_size(tile, depth)

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Sample ``index``: image (C, th, tw), target (oh, ow), weights (oh, ow), dropout seed
        (for volumes (C, tz, ty, tx), (oz, oy, ox), (oz, oy, ox))."""
        if isinstance(self.tile, tuple):
            return self._sample_volume(index)
        batch = self.batch([index])
        return batch.image[0], batch.target[0], batch.weights[0], batch.dropout_seeds[0]

    def _draw(self, index: int, grid: np.ndarray) -> tuple[int, tuple[float, float, float], int]:
        """Everything random about 2D sample ``index``: its sampling grid, written into
        ``grid`` (th, tw, 2); returns its plane's index, gray-value jitter and dropout seed."""
        rng = np.random.default_rng([self.seed, index])
        plane_index = int(rng.choice(len(self.planes), p=self.plane_odds))
        plane = self.planes[plane_index]
        flat = plane.annotated[rng.integers(len(plane.annotated))]
        centre = np.array(np.unravel_index(flat, plane.target.shape))
        centre += rng.integers(-self.output // 4, self.output // 4 + 1, size=2)
        origin = centre - self.tile // 2  # integer, so unaugmented samples are exact crops
        tile_hw = (self.tile, self.tile)
        sampling_grid(tile_hw, tile_center(tuple(origin), tile_hw), rng, self.augment, out=grid)
        return plane_index, draw_jitter(rng, self.augment), int(rng.integers(2**63))

    def _sample_volume(self, index: int, threads: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """One volume sample: centred near a random annotated voxel (so every crop holds
        annotation), one 3D transform for image (trilinear, on ``threads``), target and
        weights (nearest)."""
        rng = np.random.default_rng([self.seed, index])
        volume = self.planes[rng.choice(len(self.planes), p=self.plane_odds)]
        flat = volume.annotated[rng.integers(len(volume.annotated))]
        centre = np.array(np.unravel_index(flat, volume.target.shape))
        centre += np.array([rng.integers(-(o // 4), o // 4 + 1) for o in self.output])
        origin = centre - np.array(self.tile) // 2  # integer, so unaugmented samples are exact crops
        middle = [o + (t - 1) / 2 for o, t in zip(origin, self.tile)]
        coords = sampling_grid_3d(self.tile, middle, rng, self.augment, self.spacing)
        inner = coords[(slice(None), *(slice(c, c + o) for c, o in zip(self.context, self.output)))]
        image = resample_volume(volume.image, coords, order=1, threads=threads)
        image = apply_jitter(image, *draw_jitter(rng, self.augment))  # in place: the sample is new
        target, weights = resample_volume(volume.annotation, inner, order=0)  # nearest: ignore stays 0
        return image, target, weights, int(rng.integers(2**63))

    def batch(self, indices: Sequence[int], threads: int | None = None) -> Batch:
        """The samples with these global indices, stacked. Planes: each sample's grid
        drawn alone, then the images of all samples of one plane in one call on
        ``threads`` threads (see :func:`~.augment.resample_cubic`), their targets and
        weights likewise (nearest pixel), then the gray-value jitter. Volumes: one
        sample after the other, each image on ``threads`` threads."""
        if isinstance(self.tile, tuple):
            samples = [self._sample_volume(index, threads) for index in indices]
            return Batch(
                image=np.stack([s[0] for s in samples]).astype(np.float32, copy=False),
                target=np.stack([s[1] for s in samples]).astype(np.int64),
                weights=np.stack([s[2] for s in samples]).astype(np.float32, copy=False),
                dropout_seeds=tuple(s[3] for s in samples),
            )
        count, tile, output = len(indices), self.tile, self.output
        grids = np.empty((count, tile, tile, 2), np.float32)
        drawn = [self._draw(index, grids[position]) for position, index in enumerate(indices)]
        image = np.empty((count, self.planes[0].image.shape[0], tile, tile), np.float32)
        target = np.empty((count, output, output), np.int64)
        weights = np.empty((count, output, output), np.float32)
        inner = slice(self.context, self.context + output)
        for plane_index in sorted({plane_index for plane_index, _, _ in drawn}):
            members = [position for position, (p, _, _) in enumerate(drawn) if p == plane_index]
            plane, member_grids = self.planes[plane_index], grids[members]
            image[members] = resample_cubic(plane.image, yx_coordinates(member_grids), threads)
            # target and weights over the output's window, nearest: ignore stays 0
            annotation = resample_nearest(plane.annotation, yx_coordinates(member_grids[:, inner, inner]), threads)
            target[members], weights[members] = annotation[:, 0], annotation[:, 1]
        for position, (_, jitter, _) in enumerate(drawn):
            apply_jitter(image[position], *jitter)
        return Batch(image, target, weights, tuple(seed for _, _, seed in drawn))


def default_tile(depth: int, output: int = 128) -> int:
    """A training tile whose output is at least ``output`` px, rounded to the pooling grid."""
    return geometry.input_size_for_output(output, depth)


#: Output voxels along y and x of a default 3D training tile.
DEFAULT_VOLUME_OUTPUT = 48


def default_tile_for(config, output: int | None = None) -> int | tuple[int, ...]:
    """The default training tile of a model: :func:`default_tile` for 2D networks; for
    3D ones a cuboid whose output is ``output`` (default :data:`DEFAULT_VOLUME_OUTPUT`)
    voxels along y and x and as long physically along z (fewer planes along a coarser
    z, never more than ``output``), rounded up to valid sizes."""
    if config.ndim == 2:
        return default_tile(config.depth) if output is None else default_tile(config.depth, output)
    output = DEFAULT_VOLUME_OUTPUT if output is None else output
    z, y, x = config.spacing or (1.0, 1.0, 1.0)
    wanted = (max(1, round(output * min(1.0, min(y, x) / z))), output, output)
    return tuple(geometry.input_size_for_output(n, axis) for n, axis in zip(wanted, geometry.model_axes(config)))
