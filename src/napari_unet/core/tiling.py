"""Mirror padding by index arithmetic, tile extraction and stitching.

No padded copy of the image is ever made: a tile's pixels are gathered through
mirrored indices, so memory stays bounded by the tiles in flight.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

from .geometry import TilePlan


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


def tile_origins(plan: TilePlan) -> list[tuple[int, ...]]:
    """Image coordinates (y, x), or (z, y, x), of the first output pixel of every tile,
    row-major."""
    return [
        tuple(i * s for i, s in zip(position, plan.stride)) for position in itertools.product(*map(range, plan.grid))
    ]


def extract_tile(plane: np.ndarray, origin: tuple[int, ...], plan: TilePlan) -> np.ndarray:
    """The input window (C, th, tw), or (C, tz, ty, tx), of the tile whose output
    starts at ``origin``."""
    spatial = plane.shape[1:]
    index = [reflect_index(np.arange(t) + o - c, n) for t, o, c, n in zip(plan.tile, origin, plan.contexts, spatial)]
    return plane[(slice(None), *np.ix_(*index))]


def tile_batches(plan: TilePlan, batch_size: int) -> Iterator[list[tuple[int, ...]]]:
    """Tile origins in groups of at most ``batch_size``."""
    origins = tile_origins(plan)
    for start in range(0, len(origins), batch_size):
        yield origins[start : start + batch_size]


def paste_tile(output: np.ndarray, tile_output: np.ndarray, origin: tuple[int, ...], plan: TilePlan) -> None:
    """Write the useful part of one tile's output (K, oh, ow) into ``output`` (K, H, W)
    (and likewise for volumes)."""
    extent = [min(s, n - o) for s, n, o in zip(plan.stride, plan.image, origin)]
    output[(slice(None), *(slice(o, o + e) for o, e in zip(origin, extent)))] = tile_output[
        (slice(None), *(slice(0, e) for e in extent))
    ]
