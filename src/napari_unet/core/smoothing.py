"""The smoothing the split at probability dips sees: a binomial filter by cache-sized blocks.

The filter [1, 4, 6, 4, 1] / 16 along every axis (variance 1 px^2, a Gaussian of
sigma 1 px to within 2%), borders mirrored, summed in one fixed order whatever the
block size, so blocks and threads change no value (``tests/reference.py`` keeps the
whole-array formulation).
"""

from __future__ import annotations

import math
from concurrent.futures import Executor

import numpy as np

#: Pixels per block of :func:`smooth_foreground` (512 KiB of float32).
BLOCK_PIXELS = 1 << 17


def smooth_foreground(foreground: np.ndarray, helper: Executor | None = None) -> np.ndarray:
    """The foreground probability (H, W) or (Z, Y, X) smoothed as the split sees it:
    the binomial filter [1, 4, 6, 4, 1] / 16 (variance 1 px^2, a Gaussian of sigma
    1 px to within 2%) along every axis, borders mirrored. float32.

    Works through blocks of about :data:`BLOCK_PIXELS` along the first axis, so each
    block's intermediate sums stay in the CPU cache; the arithmetic per pixel is the
    same whatever the block size. With ``helper`` (an executor with a free thread)
    that thread smooths the first half of the blocks while the caller smooths the
    rest; the result is the same."""
    foreground = np.asarray(foreground, np.float32)
    smooth = np.empty_like(foreground)
    shape = foreground.shape
    rows = min(shape[0], max(1, BLOCK_PIXELS // max(1, math.prod(shape[1:]))))
    starts = list(range(0, shape[0], rows))
    half = len(starts) // 2 if helper is not None else 0
    first_half = helper.submit(_smooth_blocks, foreground, smooth, starts[:half], rows) if half else None
    _smooth_blocks(foreground, smooth, starts[half:], rows)
    if first_half is not None:
        first_half.result()
    return smooth


def _smooth_blocks(foreground: np.ndarray, smooth: np.ndarray, starts: list[int], rows: int) -> None:
    """Write the blocks of ``rows`` rows (first axis) starting at ``starts`` of
    :func:`smooth_foreground` into ``smooth``."""
    shape = foreground.shape
    mirrored_rows = np.pad(np.arange(shape[0]), 2, mode="symmetric")  # the row at each position of the padded axis
    scratch = np.empty((rows, *shape[1:]), np.float32)
    mirrored = {axis: np.empty((rows, *_widened(shape, axis)[1:]), np.float32) for axis in range(1, len(shape))}
    for start in starts:
        n = min(rows, shape[0] - start)
        if start >= 2 and start + n + 2 <= shape[0]:  # the rows around the block are in the array
            source, offset = foreground, start - 2
        else:
            source, offset = foreground.take(mirrored_rows[start : start + n + 4], axis=0), 0
        block = smooth[start : start + n]
        _binomial([source[offset + o : offset + o + n] for o in range(5)], block, scratch[:n])
        for axis, wide in mirrored.items():
            _mirror_into(block, wide[:n], axis)
            along = (slice(None),) * axis
            _binomial([wide[:n][(*along, slice(o, o + shape[axis]))] for o in range(5)], block, scratch[:n])


def _widened(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return tuple(n + 4 if a == axis else n for a, n in enumerate(shape))


def _mirror_into(block: np.ndarray, wide: np.ndarray, axis: int) -> None:
    """``block`` padded by 2 along ``axis`` into ``wide``, mirrored with the edge
    pixel repeated (numpy's "symmetric": x1 x0 | x0 x1 ... x(n-1) | x(n-1) x(n-2))."""
    n = block.shape[axis]
    along = (slice(None),) * axis
    wide[(*along, slice(2, n + 2))] = block
    for target, source in ((0, min(1, n - 1)), (1, 0), (n + 2, n - 1), (n + 3, max(n - 2, 0))):
        wide[(*along, slice(target, target + 1))] = block[(*along, slice(source, source + 1))]


def _binomial(taps: list[np.ndarray], out: np.ndarray, scratch: np.ndarray) -> None:
    """``out`` = (taps[0] + 4 taps[1] + 6 taps[2] + 4 taps[3] + taps[4]) / 16 in
    float32, summed in one fixed order (``scratch``: same shape, overwritten)."""
    np.add(taps[1], taps[3], out=out)
    out *= 4
    out += taps[0]
    out += taps[4]
    np.multiply(taps[2], 6, out=scratch)
    out += scratch
    out /= 16
