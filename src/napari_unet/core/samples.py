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
from .augment import jitter_intensity, resample, resample_cubic, sampling_grid, tile_center
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
        rng = np.random.default_rng([self.seed, index])
        plane = self.planes[rng.choice(len(self.planes), p=self.plane_odds)]
        flat = plane.annotated[rng.integers(len(plane.annotated))]
        centre = np.array(np.unravel_index(flat, plane.target.shape))
        centre += rng.integers(-self.output // 4, self.output // 4 + 1, size=2)
        origin = centre - self.tile // 2  # integer, so unaugmented samples are exact crops
        tile_hw = (self.tile, self.tile)
        coords = sampling_grid(tile_hw, tile_center(tuple(origin), tile_hw), rng, self.augment)
        inner = coords[:, self.context : self.context + self.output, self.context : self.context + self.output]
        image = resample_cubic(plane.image, coords)
        image = jitter_intensity(image, rng, self.augment)
        target, weights = resample(plane.annotation, inner, order=0)  # nearest: ignore stays 0
        return image, target, weights, int(rng.integers(2**63))

    def _sample_volume(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """One volume sample: centred near a random annotated voxel (so every crop holds
        annotation), one 3D transform for image (trilinear), target and weights (nearest)."""
        rng = np.random.default_rng([self.seed, index])
        volume = self.planes[rng.choice(len(self.planes), p=self.plane_odds)]
        flat = volume.annotated[rng.integers(len(volume.annotated))]
        centre = np.array(np.unravel_index(flat, volume.target.shape))
        centre += np.array([rng.integers(-(o // 4), o // 4 + 1) for o in self.output])
        origin = centre - np.array(self.tile) // 2  # integer, so unaugmented samples are exact crops
        middle = [o + (t - 1) / 2 for o, t in zip(origin, self.tile)]
        coords = sampling_grid_3d(self.tile, middle, rng, self.augment, self.spacing)
        inner = coords[(slice(None), *(slice(c, c + o) for c, o in zip(self.context, self.output)))]
        image = resample_volume(volume.image, coords, order=1)
        image = jitter_intensity(image, rng, self.augment)
        target, weights = resample_volume(volume.annotation, inner, order=0)  # nearest: ignore stays 0
        return image, target, weights, int(rng.integers(2**63))

    def batch(self, indices: Sequence[int]) -> Batch:
        """The samples with these global indices, stacked."""
        samples = [self.sample(index) for index in indices]
        return Batch(
            image=np.stack([s[0] for s in samples]).astype(np.float32),
            target=np.stack([s[1] for s in samples]).astype(np.int64),
            weights=np.stack([s[2] for s in samples]).astype(np.float32),
            dropout_seeds=tuple(s[3] for s in samples),
        )


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
