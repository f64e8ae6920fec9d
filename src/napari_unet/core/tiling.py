"""Mirror padding by index arithmetic, tile extraction and stitching.

No padded copy of the image is ever made: a tile's pixels are gathered through
mirrored indices, so memory stays bounded by the tiles in flight.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .geometry import TilePlan, context


def reflect_index(index: np.ndarray, size: int) -> np.ndarray:
    """Map any integer positions onto ``0 .. size-1`` by mirroring at the borders.

    Mirroring excludes the edge pixel (like ``numpy.pad(mode="reflect")``) and is
    repeated as often as needed, so images smaller than the context still work.
    """
    index = np.asarray(index)
    if size == 1:
        return np.zeros_like(index)
    period = 2 * (size - 1)
    folded = np.mod(index, period)
    return np.where(folded >= size, period - folded, folded)


def tile_origins(plan: TilePlan) -> list[tuple[int, int]]:
    """Image coordinates (y, x) of the first output pixel of every tile, row-major."""
    return [(row * plan.stride[0], col * plan.stride[1]) for row in range(plan.grid[0]) for col in range(plan.grid[1])]


def extract_tile(plane: np.ndarray, origin: tuple[int, int], plan: TilePlan) -> np.ndarray:
    """The input window (C, th, tw) of the tile whose output starts at ``origin``."""
    ctx = context(plan.depth)
    rows = reflect_index(np.arange(plan.tile[0]) + origin[0] - ctx, plane.shape[-2])
    cols = reflect_index(np.arange(plan.tile[1]) + origin[1] - ctx, plane.shape[-1])
    return plane[:, rows[:, None], cols[None, :]]


def tile_batches(plan: TilePlan, batch_size: int) -> Iterator[list[tuple[int, int]]]:
    """Tile origins in groups of at most ``batch_size``."""
    origins = tile_origins(plan)
    for start in range(0, len(origins), batch_size):
        yield origins[start : start + batch_size]


def paste_tile(output: np.ndarray, tile_output: np.ndarray, origin: tuple[int, int], plan: TilePlan) -> None:
    """Write the useful part of one tile's output (K, oh, ow) into ``output`` (K, H, W)."""
    y0, x0 = origin
    height = min(plan.stride[0], plan.image[0] - y0)
    width = min(plan.stride[1], plan.image[1] - x0)
    output[:, y0 : y0 + height, x0 : x0 + width] = tile_output[:, :height, :width]
