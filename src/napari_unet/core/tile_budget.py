"""Which tiles and how many at once overlap-tile prediction runs.

Left to itself (no tile given), prediction takes the tile that covers the image with
the fewest computed pixels within an activation-memory budget
(:data:`CPU_TILE_BUDGET_BYTES` on a CPU, half the free memory of a GPU, or the
caller's ``memory_bytes``) and batches as many tiles as the budget holds. A tile or
batch the caller chose is refused before anything is allocated when it cannot fit the
machine's memory; for a 2D model the message names the largest tile that would.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import torch

from . import geometry

if TYPE_CHECKING:
    from .model import UNet
    from .predict import PredictOptions

#: Rough bytes of activations per input pixel per base channel during inference, by
#: compute dtype (``None`` is fp32), with some headroom: the measured peak of the paper
#: network is about 25 B (fp32, NCHW), 21 B (fp32, channels-last) and 11 B (bf16,
#: channels-last) per pixel per base channel.
_BYTES_PER_PIXEL_PER_CHANNEL = {None: 32, torch.bfloat16: 16, torch.float16: 16}
#: Default activation-memory budget for tiles on a CPU.
CPU_TILE_BUDGET_BYTES = 1 << 30


def _memory_budget(device: torch.device, options: PredictOptions) -> int:
    """What the automatic tile choice may use for activations."""
    if options.memory_bytes is not None:
        return options.memory_bytes
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return CPU_TILE_BUDGET_BYTES


def _memory_limit(device: torch.device, options: PredictOptions) -> tuple[int, str]:
    """What tiles chosen by the caller may use, and what it is: ``memory_bytes`` when
    given, else the GPU's free memory or the machine's physical memory."""
    if options.memory_bytes is not None:
        return options.memory_bytes, "memory_bytes"
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0], f"the free memory of {device}"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"
    except (AttributeError, ValueError, OSError):  # no sysconf here: do not guess
        return 1 << 62, "this machine's memory"


def _size(count: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift:
            return f"{count / (1 << shift):.1f} {unit}"
    return f"{count} B"


def _check_chosen_tile(plan, batch: int, per_pixel: int, config, device, options: PredictOptions) -> None:
    """Refuse a tile (or batch) the caller chose when it cannot fit, before allocating."""
    need = batch * math.prod(plan.tile) * per_pixel
    limit, what = _memory_limit(device, options)
    if need <= limit:
        return
    hint = "a smaller tile"
    if config.ndim == 2:
        largest = math.isqrt(max(limit // per_pixel, 0))
        below, above = geometry.nearest_valid_sizes(largest, config.depth)
        fitting = above if above == largest else below
        hint = f"a tile of at most {fitting} px" if fitting else "a smaller model"
    raise geometry.InvalidTileSize(
        f"{batch} tile(s) of {'x'.join(map(str, plan.tile))} px need about {_size(need)} for activations, "
        f"more than {what} ({_size(limit)}): use {hint}, a smaller batch, "
        "or leave the tile unset to get the best one within the budget"
    )


def plan_for(
    model: UNet,
    image_hw: tuple[int, ...],
    device: torch.device,
    options: PredictOptions,
    dtype: torch.dtype | None = None,
):
    """The tile plan and batch size for one plane of ``image_hw`` (H, W), or one
    volume (Z, Y, X) for a 3D model.

    ``dtype`` is the compute precision (``None``: fp32); half-precision activations
    take half the memory, so the same budget allows larger tiles.
    """
    axes = geometry.model_axes(model.config)
    budget_pixels = max(_memory_budget(device, options) // bytes_per_input_pixel(model.config, dtype), 1)
    if options.tile is None:
        plan = geometry.best_tile(image_hw, axes, budget_pixels)
    else:
        plan = geometry.plan_tiles(image_hw, options.tile, axes)
    tile_pixels = math.prod(plan.tile)
    batch = max(1, min(options.batch_size or max(1, budget_pixels // tile_pixels), plan.n_tiles))
    if options.tile is not None or options.batch_size is not None:
        _check_chosen_tile(plan, batch, bytes_per_input_pixel(model.config, dtype), model.config, device, options)
    return plan, batch


def bytes_per_input_pixel(config, dtype: torch.dtype | None = None) -> int:
    """Activation memory per input pixel (voxel) of a tile, for the memory budget.

    2D: the measured per-base-channel figures above. 3D networks (measured in
    bench/bench_volumes.py) keep twice as many channels at full resolution when they
    double before pooling, and their batch normalisation is folded away at inference.
    """
    per_channel = _BYTES_PER_PIXEL_PER_CHANNEL.get(dtype, 32)
    widest_first_level = 2 if config.double_before_pool else 1
    return per_channel * config.base_channels * widest_first_level
