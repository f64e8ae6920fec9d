"""Tile geometry of a valid-convolution U-Net.

Per axis, a level of depth ``d`` loses 4 px to its two 3x3 convolutions and then
halves (2x2 pooling needs an even size); the expanding path doubles and loses 4 px
per level. Hence for ``s = 2**depth``:

- valid input sizes are ``n = s * k + 4 * (s - 1)`` (depth 4: ..., 556, 572, 588, ...),
- the output is ``n - margin`` with ``margin = 12 * s - 8`` (depth 4: 184, 572 -> 388),
- output pixel ``j`` of a tile sees input pixels ``j .. j + margin``.

Tiles must also start on multiples of ``s`` so that every tile pools on the same grid
as a single pass over the whole image; that is what makes tiling exact.

Every function taking ``depth`` also takes one axis of a network's layer plan
(:func:`axis_plans`) instead: an axis of an anisotropic 3D U-Net whose kernels and
poolings skip some levels has its own step (the product of its pooling factors),
valid sizes and margin, all read off the plan the same way.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .config import ModelConfig, default_model_config
from .errors import NapariUnetError
from .layer_plan import POOL, Layer, layer_input_shapes, layer_plan

#: One spatial axis of a layer plan: its layers with one-element kernels and factors.
Axis = tuple[Layer, ...]
#: What the functions below take as ``depth``: the depth of a standard (3x3, 2x2) U-Net
#: or one :data:`Axis` of any network.
Depth = int | Axis


class InvalidTileSize(NapariUnetError, ValueError):
    """A tile size that the network cannot process."""


def axis_plans(config: ModelConfig) -> tuple[Axis, ...]:
    """The layer plan of ``config`` seen along each spatial axis (what the geometry
    of that axis depends on: kernel sizes and pooling factors)."""
    plan = layer_plan(config)
    return tuple(
        tuple(Layer(layer.kind, kernel=layer.kernel[a : a + 1], factor=layer.factor[a : a + 1]) for layer in plan)
        for a in range(config.ndim)
    )


def model_axes(config: ModelConfig) -> tuple[Depth, ...]:
    """Per spatial axis what the geometry functions take: the depth itself where the
    axis is a standard one (3-wide kernels, 2x pooling at every level), so plans and
    messages stay as they always were, else the axis of the layer plan."""
    return tuple(config.depth if axis == _axis(config.depth) else axis for axis in axis_plans(config))


@functools.cache
def _axis(depth: Depth) -> Axis:
    if isinstance(depth, int):
        return axis_plans(ModelConfig(base_channels=1, depth=depth, ndim=2))[0]
    return depth


def step(depth: Depth) -> int:
    """The pooling grid of an axis: the product of its pooling factors (2**depth)."""
    return math.prod(layer.factor[0] for layer in _axis(depth) if layer.kind == POOL)


def _output_of(axis: Axis, size: int) -> int | None:
    """Output size of ``size`` px along ``axis``, or ``None`` where a pooling does not
    divide or a convolution has nothing left."""
    try:
        shapes = layer_input_shapes(axis, (1, 1, size))
    except ValueError:
        return None
    return shapes[-1][-1] if min(shape[-1] for shape in shapes) >= 1 else None


@functools.cache
def _grid(depth: Depth) -> tuple[int, int]:
    """(offset, margin): valid sizes are ``offset + k * step`` (large enough to leave
    output) and lose ``margin`` px."""
    axis, grid = _axis(depth), step(depth)
    start = 64 * grid + 1024  # every axis of depth <= 6 has valid sizes this large
    for size in range(start, start + grid):
        out = _output_of(axis, size)
        if out is not None:
            return size % grid, size - out
    raise AssertionError(f"no valid size found for {axis}")  # pragma: no cover


def _name(depth: Depth) -> str:
    return f"a depth-{depth} U-Net" if isinstance(depth, int) else "this axis of the U-Net"


@functools.cache
def margin(depth: Depth) -> int:
    """Pixels lost per axis between input and output (184 for depth 4), read off the
    network's layer plan (it equals ``12 * 2**depth - 8``)."""
    return _grid(depth)[1]


def context(depth: Depth) -> int:
    """Context pixels each side of a tile's output (92 for depth 4)."""
    return margin(depth) // 2


def is_volume(spatial_shape: Sequence[int], spacing: Sequence[float] | None = None) -> bool:
    """Whether an image of shape (..., Z, Y, X) is deep enough to be segmented as a
    volume: more planes than the CPU default 3D U-Net sees on each side of a voxel
    along z at ``spacing`` (its context: 20 planes for cubic voxels, 8 where z is twice
    as coarse). With fewer planes most of what a 3D network sees along z would be
    mirrored planes, and a short stack is as often a series of unrelated images."""
    if len(spatial_shape) < 3:
        return False
    config = default_model_config("cpu", ndim=3, spacing=tuple(spacing) if spacing is not None else None)
    return spatial_shape[-3] > context(model_axes(config)[0])


def smallest_input(depth: Depth) -> int:
    """The smallest valid input size (its output is at least 1 px)."""
    return input_size_for_output(1, depth)


def is_valid_size(size: int, depth: Depth) -> bool:
    """Whether ``size`` px passes through all poolings evenly and leaves output."""
    return size - margin(depth) >= 1 and (size - _grid(depth)[0]) % step(depth) == 0


def _valid_at_least(size: int, depth: Depth) -> int:
    """The smallest size >= ``size`` that passes evenly through every pooling."""
    grid, offset = step(depth), _grid(depth)[0]
    return offset + max(math.ceil((size - offset) / grid), 0) * grid


def input_size_for_output(n: int, depth: Depth) -> int:
    """The smallest valid input size whose output covers at least ``n`` px."""
    return _valid_at_least(max(n, 1) + margin(depth), depth)


def nearest_valid_sizes(size: int, depth: Depth) -> tuple[int, int]:
    """The valid sizes just below and at-or-above ``size`` (below is 0 if none)."""
    above = max(_valid_at_least(size, depth), smallest_input(depth))
    below = above - step(depth)
    return (below if below >= smallest_input(depth) else 0, above)


def output_size(size: int, depth: Depth) -> int:
    """Output size of a valid input ``size``; raises :class:`InvalidTileSize` else."""
    if not is_valid_size(size, depth):
        below, above = nearest_valid_sizes(size, depth)
        near = f"{below} or {above}" if below else f"{above}"
        raise InvalidTileSize(
            f"{size} px is not a valid tile size for {_name(depth)} "
            f"(valid sizes step by {step(depth)} px from {smallest_input(depth)}); "
            f"nearest valid sizes: {near}"
        )
    return size - margin(depth)


def valid_sizes(depth: Depth, up_to: int) -> list[int]:
    """All valid input sizes up to and including ``up_to``."""
    return list(range(smallest_input(depth), up_to + 1, step(depth)))


def tile_stride(size: int, depth: Depth) -> int:
    """Distance between neighbouring tiles: the output size rounded down to the
    pooling grid (2**depth)."""
    out = output_size(size, depth)
    stride = out - out % step(depth)
    if stride < 1:
        raise InvalidTileSize(
            f"{size} px tiles are too small to step across an image; use at least "
            f"{input_size_for_output(step(depth), depth)} px"
        )
    return stride


@dataclass(frozen=True)
class TilePlan:
    """How an ``H x W`` image (or a ``Z x Y x X`` volume) is covered by tiles of one size.

    ``tile`` is the input size (h, w) of every tile; ``stride`` the step between
    tiles (h, w); ``grid`` the number of tiles (rows, columns). ``axes``: per axis
    what the geometry functions take, where it is not ``depth`` for every axis
    (anisotropic or 3D networks).
    """

    image: tuple[int, ...]
    tile: tuple[int, ...]
    stride: tuple[int, ...]
    grid: tuple[int, ...]
    depth: int
    axes: tuple[Depth, ...] | None = None

    @property
    def per_axis(self) -> tuple[Depth, ...]:
        """What the geometry functions take, for each axis."""
        return self.axes if self.axes is not None else (self.depth,) * len(self.image)

    @property
    def contexts(self) -> tuple[int, ...]:
        """Context pixels each side of a tile's output, per axis."""
        return tuple(context(axis) for axis in self.per_axis)

    @property
    def n_tiles(self) -> int:
        return math.prod(self.grid)

    @property
    def computed_pixels(self) -> int:
        """Input pixels pushed through the network (proportional to FLOPs)."""
        return self.n_tiles * math.prod(self.tile)

    @property
    def output_ratio(self) -> float:
        """Output pixels computed per useful (image) pixel; 1.0 is no waste."""
        out = [t - margin(axis) for t, axis in zip(self.tile, self.per_axis)]
        return self.n_tiles * math.prod(out) / math.prod(self.image)

    @property
    def input_ratio(self) -> float:
        """Input pixels computed (context included) per image pixel."""
        return self.computed_pixels / math.prod(self.image)


def _per_axis(depth: Depth | Sequence[Depth], n: int) -> tuple[tuple[Depth, ...], int, tuple[Depth, ...] | None]:
    """(per-axis depths, the plan's depth, the plan's ``axes``) for ``n`` axes."""
    one = isinstance(depth, int) or (len(depth) > 0 and isinstance(depth[0], Layer))
    axes = (depth,) * n if one else tuple(depth)
    if len(axes) != n:
        raise InvalidTileSize(f"{len(axes)} axes given for a {n}-dimensional image")
    if all(isinstance(axis, int) for axis in axes) and len(set(axes)) == 1:
        return axes, axes[0], None
    return axes, max(_levels(axis) for axis in axes), axes


def _levels(depth: Depth) -> int:
    return depth if isinstance(depth, int) else sum(layer.kind == POOL for layer in depth)


def along_axes(function: Callable[[int, Depth], int], tiles: Sequence[int], axes: Sequence[Depth]) -> tuple[int, ...]:
    """``function(tile, axis)`` for each axis's tile size (:func:`output_size`,
    :func:`tile_stride`); an invalid size's error names its axis (y, x or z, y, x)
    unless every axis has the same size and geometry."""
    names = ("z", "y", "x")[-len(tiles) :]
    alike = len(set(zip(tiles, axes))) == 1
    results = []
    for size, axis, name in zip(tiles, axes, names):
        try:
            results.append(function(size, axis))
        except InvalidTileSize as error:
            if alike:
                raise
            raise InvalidTileSize(f"tile along {name}: {error}") from error
    return tuple(results)


def plan_tiles(image: Sequence[int], tile: int | Sequence[int], depth: Depth | Sequence[Depth]) -> TilePlan:
    """Cover ``image`` (H, W), or (Z, Y, X), with tiles of the given valid input size
    (one int for every axis, or one per axis). ``depth``: an int, one axis for all,
    or one per axis (:func:`model_axes`)."""
    axes, levels, recorded = _per_axis(depth, len(image))
    tiles = (tile,) * len(image) if isinstance(tile, int) else tuple(tile)
    if len(tiles) != len(image):
        raise InvalidTileSize(f"tile {tuple(tiles)} has {len(tiles)} sizes for a {len(image)}-dimensional image")
    stride = along_axes(tile_stride, tiles, axes)
    grid = tuple(math.ceil(n / s) for n, s in zip(image, stride))
    return TilePlan(tuple(image), tiles, stride, grid, levels, recorded)


def best_tile(image: Sequence[int], depth: Depth | Sequence[Depth], max_tile_pixels: int) -> TilePlan:
    """The tile size that covers ``image`` with the fewest computed pixels.

    Tiles may be rectangular (cuboid); each holds at most ``max_tile_pixels`` input
    pixels (the memory budget). Ties go to fewer, larger tiles.
    """
    axes, _, _ = _per_axis(depth, len(image))
    floors = [input_size_for_output(step(axis), axis) for axis in axes]
    if math.prod(floors) > max_tile_pixels:
        shape = "x".join(str(f) for f in floors)
        raise InvalidTileSize(
            f"a memory budget of {max_tile_pixels} px per tile is below the smallest "
            f"usable {f'depth-{axes[0]}' if isinstance(axes[0], int) and len(set(axes)) == 1 else 'U-Net'} tile "
            f"({shape}); allow more memory"
        )
    # per axis: (tile, computed length = tiles * tile, tiles); the computed pixels of a
    # plan are the product over axes, so a larger tile that is not cheaper on its axis
    # never helps and is left out
    options = []
    for n, axis, floor in zip(image, axes, floors):
        kept: list[tuple[int, int, int]] = []
        # an axis shorter than one pooling grid of output gets the floor tile, mirrored beyond the image
        for size in valid_sizes(axis, max(floor, input_size_for_output(n, axis))):
            if size < floor:
                continue
            tiles = math.ceil(n / tile_stride(size, axis))
            if not kept or (tiles * size, tiles) < kept[-1][1:]:
                kept.append((size, tiles * size, tiles))
        options.append(kept)
    best: tuple[tuple[int, int], tuple[int, ...]] | None = None

    def search(axis: int, chosen: tuple[int, ...], budget: int, computed: int, tiles: int) -> None:
        nonlocal best
        if axis == len(options):
            if best is None or (computed, tiles) < best[0]:
                best = ((computed, tiles), chosen)
            return
        rest = math.prod(floors[axis + 1 :])
        for size, cost, count in options[axis]:
            if size * rest > budget:
                break
            search(axis + 1, (*chosen, size), budget // size, computed * cost, tiles * count)

    search(0, (), max_tile_pixels, 1, 1)
    assert best is not None  # the floor tile always fits
    return plan_tiles(image, best[1], depth)
