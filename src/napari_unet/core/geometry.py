"""Tile geometry of a valid-convolution U-Net.

Per axis, a level of depth ``d`` loses 4 px to its two 3x3 convolutions and then
halves (2x2 pooling needs an even size); the expanding path doubles and loses 4 px
per level. Hence for ``s = 2**depth``:

- valid input sizes are ``n = s * k + 4 * (s - 1)`` (depth 4: ..., 556, 572, 588, ...),
- the output is ``n - margin`` with ``margin = 12 * s - 8`` (depth 4: 184, 572 -> 388),
- output pixel ``j`` of a tile sees input pixels ``j .. j + margin``.

Tiles must also start on multiples of ``s`` so that every tile pools on the same grid
as a single pass over the whole image; that is what makes tiling exact.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from .config import ModelConfig
from .errors import NapariUnetError
from .model import layer_input_shapes, layer_plan


class InvalidTileSize(NapariUnetError, ValueError):
    """A tile size that the network cannot process."""


@functools.cache
def margin(depth: int) -> int:
    """Pixels lost per axis between input and output (184 for depth 4), read off the
    network's layer plan (it equals ``12 * 2**depth - 8``)."""
    step = 2**depth
    size = 16 * step - 4  # a valid size for every depth: 4 (step - 1) + 12 step
    plan = layer_plan(ModelConfig(base_channels=1, depth=depth))
    return size - layer_input_shapes(plan, (1, 1, size))[-1][-1]


def context(depth: int) -> int:
    """Context pixels each side of a tile's output (92 for depth 4)."""
    return margin(depth) // 2


def smallest_input(depth: int) -> int:
    """The smallest valid input size (its output is at least 1 px)."""
    return input_size_for_output(1, depth)


def is_valid_size(size: int, depth: int) -> bool:
    """Whether ``size`` px passes through all poolings evenly and leaves output."""
    step = 2**depth
    return size - margin(depth) >= 1 and (size - 4 * (step - 1)) % step == 0


def _valid_at_least(size: int, depth: int) -> int:
    """The smallest size >= ``size`` that passes evenly through every pooling."""
    step = 2**depth
    offset = 4 * (step - 1)
    return offset + max(math.ceil((size - offset) / step), 0) * step


def input_size_for_output(n: int, depth: int) -> int:
    """The smallest valid input size whose output covers at least ``n`` px."""
    return _valid_at_least(max(n, 1) + margin(depth), depth)


def nearest_valid_sizes(size: int, depth: int) -> tuple[int, int]:
    """The valid sizes just below and at-or-above ``size`` (below is 0 if none)."""
    above = max(_valid_at_least(size, depth), smallest_input(depth))
    below = above - 2**depth
    return (below if below >= smallest_input(depth) else 0, above)


def output_size(size: int, depth: int) -> int:
    """Output size of a valid input ``size``; raises :class:`InvalidTileSize` else."""
    if not is_valid_size(size, depth):
        below, above = nearest_valid_sizes(size, depth)
        near = f"{below} or {above}" if below else f"{above}"
        raise InvalidTileSize(
            f"{size} px is not a valid tile size for a depth-{depth} U-Net "
            f"(valid sizes step by {2**depth} px from {smallest_input(depth)}); "
            f"nearest valid sizes: {near}"
        )
    return size - margin(depth)


def valid_sizes(depth: int, up_to: int) -> list[int]:
    """All valid input sizes up to and including ``up_to``."""
    return list(range(smallest_input(depth), up_to + 1, 2**depth))


def tile_stride(size: int, depth: int) -> int:
    """Distance between neighbouring tiles: the output size rounded down to 2**depth."""
    out = output_size(size, depth)
    stride = out - out % 2**depth
    if stride < 1:
        raise InvalidTileSize(
            f"{size} px tiles are too small to step across an image; use at least "
            f"{input_size_for_output(2**depth, depth)} px"
        )
    return stride


@dataclass(frozen=True)
class TilePlan:
    """How an ``H x W`` image is covered by tiles of one size.

    ``tile`` is the input size (h, w) of every tile; ``stride`` the step between
    tiles (h, w); ``grid`` the number of tiles (rows, columns).
    """

    image: tuple[int, int]
    tile: tuple[int, int]
    stride: tuple[int, int]
    grid: tuple[int, int]
    depth: int

    @property
    def n_tiles(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def computed_pixels(self) -> int:
        """Input pixels pushed through the network (proportional to FLOPs)."""
        return self.n_tiles * self.tile[0] * self.tile[1]

    @property
    def output_ratio(self) -> float:
        """Output pixels computed per useful (image) pixel; 1.0 is no waste."""
        out = [t - margin(self.depth) for t in self.tile]
        return self.n_tiles * out[0] * out[1] / (self.image[0] * self.image[1])

    @property
    def input_ratio(self) -> float:
        """Input pixels computed (context included) per image pixel."""
        return self.computed_pixels / (self.image[0] * self.image[1])


def plan_tiles(image: tuple[int, int], tile: int | tuple[int, int], depth: int) -> TilePlan:
    """Cover ``image`` (H, W) with tiles of the given valid input size."""
    tile_hw = (tile, tile) if isinstance(tile, int) else tuple(tile)
    stride = tuple(tile_stride(t, depth) for t in tile_hw)
    grid = tuple(math.ceil(n / s) for n, s in zip(image, stride))
    return TilePlan(tuple(image), tile_hw, stride, grid, depth)


def best_tile(image: tuple[int, int], depth: int, max_tile_pixels: int) -> TilePlan:
    """The tile size that covers ``image`` with the fewest computed pixels.

    Tiles may be rectangular; each holds at most ``max_tile_pixels`` input pixels
    (the memory budget). Ties go to fewer, larger tiles.
    """
    floor = input_size_for_output(2**depth, depth)
    if floor * floor > max_tile_pixels:
        raise InvalidTileSize(
            f"a memory budget of {max_tile_pixels} px per tile is below the smallest "
            f"usable depth-{depth} tile ({floor}x{floor}); allow more memory"
        )
    candidates = [[s for s in valid_sizes(depth, input_size_for_output(n, depth)) if s >= floor] for n in image]
    best: TilePlan | None = None
    for th in candidates[0]:
        for tw in candidates[1]:
            if th * tw > max_tile_pixels:
                break
            plan = plan_tiles(image, (th, tw), depth)
            key = (plan.computed_pixels, plan.n_tiles)
            if best is None or key < (best.computed_pixels, best.n_tiles):
                best = plan
    assert best is not None  # the floor tile always fits
    return best
