"""The U-Net written down once, as a plan: the sequence of its layers in forward order
(:func:`layer_plan`), the shapes they see (:func:`layer_input_shapes`), their FLOPs
(:func:`forward_flops`) and a forward pass that follows them (:func:`run_plan`). The
torch module (:class:`~napari_unet.core.model.UNet`) and the fast CPU inference path
(:class:`~napari_unet.core.cpu_inference.CpuInference`) both run the plan.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .config import ModelConfig
from .devices import layout_of
from .spacing import level_kernels_and_pools

CONV, POOL, DROPOUT, UP, CONCAT = "conv", "pool", "dropout", "up", "concat"


@dataclass(frozen=True)
class Layer:
    """One step of the forward pass.

    ``kind``: ``"conv"`` (unpadded convolution of ``kernel`` size per spatial axis,
    then batch normalisation if ``norm`` names one, then ReLU if ``relu``),
    ``"pool"`` (keep the input as a skip connection, then max pooling by ``factor``
    per axis), ``"dropout"``, ``"up"`` (up-convolution whose kernel and stride are
    ``factor``) or ``"concat"`` (centre-crop the latest skip to the input's size and
    put it in front of the input's channels). ``module`` names the submodule holding
    the weights. In the 2D paper network every kernel is (3, 3) (1x1 for the head)
    and every factor (2, 2).
    """

    kind: str
    module: str = ""
    in_channels: int = 0
    out_channels: int = 0
    kernel: tuple[int, ...] = ()
    relu: bool = False
    factor: tuple[int, ...] = ()
    norm: str = ""


def level_widths(config: ModelConfig) -> list[tuple[int, int]]:
    """(first, second) convolution widths of every level, the bottom last.

    The 2015 paper: both ``base * 2**level``. With ``double_before_pool`` (the 3D
    U-Net): ``base * 2**level`` then ``base * 2**(level + 1)``.
    """
    first = [config.base_channels * 2**level for level in range(config.depth + 1)]
    return [(c, 2 * c if config.double_before_pool else c) for c in first]


def layer_plan(config: ModelConfig) -> list[Layer]:
    """The layers of the paper's Fig. 1 for ``config``, in forward order.

    Per level two unpadded convolutions + ReLU, then pooling (the contracting path);
    at the bottom two more and dropout; per level back up an up-convolution,
    concatenation with the cropped skip and two convolutions; finally a 1x1
    convolution to the classes. The 2D paper network halves the channels in the
    up-convolution; the 3D U-Net (``double_before_pool``) keeps them. Kernel sizes
    and pooling factors per axis follow ``config.spacing`` (see
    :mod:`napari_unet.core.spacing`). Module names match :class:`UNet`'s.
    """
    kernels, pools = level_kernels_and_pools(config.spacing, config.depth, config.ndim)
    widths = level_widths(config)
    norm = config.batch_norm

    def double(prefix: str, c_in: int, c_mid: int, c_out: int, kernel: tuple[int, ...]) -> list[Layer]:
        # inside the block: conv, [norm], relu, conv, [norm], relu
        step = 3 if norm else 2
        return [
            Layer(CONV, f"{prefix}.0", c_in, c_mid, kernel, True, norm=f"{prefix}.1" if norm else ""),
            Layer(CONV, f"{prefix}.{step}", c_mid, c_out, kernel, True, norm=f"{prefix}.{step + 1}" if norm else ""),
        ]

    plan: list[Layer] = []
    channels = config.in_channels
    for level in range(config.depth):
        plan += [*double(f"down.{level}", channels, *widths[level], kernels[level]), Layer(POOL, factor=pools[level])]
        channels = widths[level][1]
    plan += [*double("bottom", channels, *widths[-1], kernels[-1]), Layer(DROPOUT, "dropout")]
    channels = widths[-1][1]
    for step, level in enumerate(reversed(range(config.depth))):
        skip = widths[level][1]
        up_out = channels if config.double_before_pool else skip
        plan += [Layer(UP, f"up.{step}", channels, up_out, pools[level], factor=pools[level]), Layer(CONCAT)]
        plan += double(f"up_conv.{step}", up_out + skip, skip, skip, kernels[level])
        channels = skip
    plan.append(Layer(CONV, "head", channels, config.n_classes, (1,) * config.ndim, False))
    return plan


def layer_input_shapes(plan: Sequence[Layer], input_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """The input shape ``(N, C, *spatial)`` of every layer of ``plan``, and at the end
    the output's shape. Raises ``ValueError`` where a pooling meets a size it does
    not divide (an odd size for 2x pooling)."""
    shape = tuple(input_shape)
    skips: list[tuple[int, ...]] = []
    shapes = []
    for layer in plan:
        shapes.append(shape)
        batch, channels, spatial = shape[0], shape[1], shape[2:]
        if layer.kind == CONV:
            shape = (batch, layer.out_channels, *(n - k + 1 for n, k in zip(spatial, layer.kernel)))
        elif layer.kind == POOL:
            if any(n % f for n, f in zip(spatial, layer.factor)):
                raise ValueError(
                    f"pooling by {layer.factor} of an odd size {spatial}: {tuple(input_shape)} is not a valid input"
                )
            skips.append(shape)
            shape = (batch, channels, *(n // f for n, f in zip(spatial, layer.factor)))
        elif layer.kind == UP:
            shape = (batch, layer.out_channels, *(n * f for n, f in zip(spatial, layer.factor)))
        elif layer.kind == CONCAT:
            shape = (batch, skips.pop()[1] + channels, *spatial)
    shapes.append(shape)
    return shapes


def forward_flops(config: ModelConfig, input_shape: Sequence[int]) -> int:
    """Floating-point operations (2 per multiply-add) of one forward pass on an input
    of ``input_shape`` ``(N, C, *spatial)``. Counts the convolutions and the
    up-convolutions (each output pixel takes one tap per input channel); biases,
    normalisation, activations, pooling and copies are not counted."""
    plan = layer_plan(config)
    total = 0
    for layer, shape_out in zip(plan, layer_input_shapes(plan, input_shape)[1:]):
        out_pixels = shape_out[0] * math.prod(shape_out[2:])
        if layer.kind == CONV:
            total += 2 * layer.in_channels * layer.out_channels * math.prod(layer.kernel) * out_pixels
        elif layer.kind == UP:
            total += 2 * layer.in_channels * layer.out_channels * out_pixels
    return total


def center_window(features: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The central window of ``size`` (its last axes) of ``features`` (N, C, ...), a view."""
    return features[_window(features.shape[2:], size)]


def _window(have: Sequence[int], want: Sequence[int]) -> tuple[slice, ...]:
    """The index of the central window of ``want`` in a tensor (N, C, *``have``)."""
    margins = (((h - w) // 2, h - w - (h - w) // 2) for h, w in zip(have, want))
    return (slice(None), slice(None), *(slice(before, h - after) for (before, after), h in zip(margins, have)))


def max_pool(x: torch.Tensor, factor: Sequence[int], return_indices: bool = False):
    """Max pooling of ``x`` (N, C, *spatial) by ``factor`` per axis (kernel = stride);
    with ``return_indices`` also where each maximum was (what its gradient needs)."""
    pool = nn.functional.max_pool2d if x.ndim == 4 else nn.functional.max_pool3d
    return pool(x, tuple(factor), return_indices=return_indices)


def pool_and_window(x: torch.Tensor, factor: Sequence[int], size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`max_pool` of ``x`` (N, C, *spatial) by ``factor``, and its central window
    of ``size`` (what the skip connection passes on): while gradients are recorded a
    copy in ``x``'s memory format, else a view.

    One autograd node for both, so that its backward adds the window's gradient into
    the pooling's over the window alone. As two nodes, the crop's gradient was a copy
    of ``x``'s size, zero outside the window, which autograd then added to the
    pooling's pixel by pixel (a training step of the CPU default spent 5.7 ms of
    its 65 ms on the zeros, the sums and the copies of the three skips; 3.0 ms this way).
    """
    if not (x.requires_grad and torch.is_grad_enabled()):
        return max_pool(x, factor), center_window(x, size)  # no gradient to care for: the window as a view
    return _PoolAndWindow.apply(x, tuple(factor), tuple(size))


class _PoolAndWindow(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: tuple[int, ...], size: tuple[int, ...]):
        pooled, indices = max_pool(x, factor, return_indices=True)
        ctx.save_for_backward(x, indices)
        ctx.factor, ctx.window = factor, _window(x.shape[2:], size)
        return pooled, x[ctx.window].contiguous(memory_format=layout_of(x))

    @staticmethod
    def backward(ctx, pooled_grad: torch.Tensor, window_grad: torch.Tensor):
        x, indices = ctx.saved_tensors
        factor, axes = ctx.factor, len(ctx.factor)
        unpool = torch.ops.aten.max_pool2d_with_indices_backward
        if axes == 3:
            unpool = torch.ops.aten.max_pool3d_with_indices_backward
        grad = unpool(pooled_grad, x, factor, factor, [0] * axes, [1] * axes, False, indices)
        # the window's gradient is a slice of the concatenation's along the channels:
        # in channels-last its pixels are not contiguous, and a sum over such strides is
        # several times slower than a copy followed by a sum over contiguous rows
        grad[ctx.window] += window_grad.contiguous(memory_format=layout_of(grad))
        return grad, None, None


def concatenate(kept: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The skip connection's window put before ``x`` along the channels."""
    return torch.cat([kept, x], dim=1)


def run_plan(
    plan: Sequence[Layer],
    x: torch.Tensor,
    apply: Callable[[int, Layer, object], torch.Tensor],
    *,
    pool: Callable[[torch.Tensor, Sequence[int], Sequence[int]], tuple[torch.Tensor, object]] = pool_and_window,
    join: Callable[[object, torch.Tensor], object] = concatenate,
):
    """Push ``x`` through ``plan``; ``apply(index, layer, x)`` computes the layers
    with weights (conv, up, dropout), the plan itself pooling and the skip
    connections: ``pool(x, factor, size)`` gives the pooled ``x`` and what the skip
    keeps of it (by default a copy of its central window of ``size``, the size at
    which it joins the expanding path), ``join(kept, x)`` what the layer after the
    join receives (by default the window concatenated before ``x``)."""
    shapes = layer_input_shapes(plan, x.shape)
    joins_at = _skip_sizes(plan, shapes)
    skips = []
    for index, layer in enumerate(plan):
        if layer.kind == POOL:
            x, kept = pool(x, layer.factor, joins_at[index])
            skips.append(kept)
        elif layer.kind == CONCAT:
            x = join(skips.pop(), x)
        else:
            x = apply(index, layer, x)
    return x


def _skip_sizes(plan: Sequence[Layer], shapes: list[tuple[int, ...]]) -> dict[int, tuple[int, ...]]:
    """For the index of every pooling in ``plan``, the spatial size at which the skip
    connection kept there joins the expanding path (``shapes``: :func:`layer_input_shapes`)."""
    open_pools, sizes = [], {}
    for index, layer in enumerate(plan):
        if layer.kind == POOL:
            open_pools.append(index)
        elif layer.kind == CONCAT:
            sizes[open_pools.pop()] = shapes[index][2:]
    return sizes
