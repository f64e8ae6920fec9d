"""The U-Net's up-convolution on a CPU, with its weight gradient as one matrix product.

An up-convolution whose kernel equals its stride (the U-Net's: 2x2, stride 2) writes each
input pixel's ``K`` output pixels from that pixel alone: ``y[n, o, s * p + k] = sum_i x[n, i,
p] w[i, o, k] + b[o]``. Its weight gradient is therefore ``sum over n, p of x[n, i, p] g[n, o,
s * p + k]``: one product of the input's (pixels x in channels) matrix with the gradient's
(pixels x K * out channels) one. On a 2-core Xeon with AMX (bf16, the CPU default's three
up-convolutions, four tiles of 220 px) oneDNN's transposed-convolution weight gradient took
3.3-3.7 times as long as that product with the reordering of the gradient it needs, and the
three backward passes 4.5 ms of a 58 ms training step (bench/README.md, "What makes training
fast on a CPU"). The forward pass and the input's gradient are torch's own.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .fused_ops import cast_as_autocast


class _UpConvolution(torch.autograd.Function):
    """``conv_transpose(x, weight, bias, stride=kernel)`` with the weight gradient as a
    matrix product; ``x`` (N, I, *spatial), ``weight`` (I, O, *kernel)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        kernel, zero, unit = _arguments(weight)
        return torch.ops.aten.convolution(x, weight, bias, kernel, zero, unit, True, zero, 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        kernel, zero, unit = _arguments(weight)
        d_x = d_weight = d_bias = None
        if ctx.needs_input_grad[0]:
            d_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, kernel, zero, unit, True, zero, 1, [True, False, False]
            )[0]
        if ctx.needs_input_grad[1]:
            d_weight = weight_gradient(x, grad, kernel)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            d_bias = grad.sum(dim=[0, *range(2, grad.ndim)])
        return d_x, d_weight, d_bias


def _arguments(weight: torch.Tensor) -> tuple[list[int], list[int], list[int]]:
    """The stride (the kernel of ``weight``), padding and dilation of the up-convolution."""
    kernel = list(weight.shape[2:])
    return kernel, [0] * len(kernel), [1] * len(kernel)


def weight_gradient(x: torch.Tensor, grad: torch.Tensor, kernel: list[int]) -> torch.Tensor:
    """The weight gradient (I, O, *kernel) of an up-convolution with stride ``kernel``
    from its input ``x`` (N, I, *spatial) and the gradient of its output ``grad`` (N, O,
    *(spatial * kernel)): the input's channels-last matrix (N * pixels, I), transposed,
    times the gradient's (N * pixels, kernel pixels * O)."""
    n, channels_in, *spatial = x.shape
    channels_out = grad.shape[1]
    ndim = len(kernel)
    rows = x.permute(0, *range(2, 2 + ndim), 1).reshape(-1, channels_in)  # a view when x is channels-last
    split = [n] + [size for pair in zip(spatial, kernel) for size in pair] + [channels_out]
    blocks = grad.permute(0, *range(2, 2 + ndim), 1).reshape(split)  # (N, S1, k1, S2, k2, .., O)
    order = [0, *range(1, 2 * ndim, 2), *range(2, 2 * ndim + 1, 2), 2 * ndim + 1]  # (N, S.., k.., O)
    columns = blocks.permute(order).reshape(rows.shape[0], math.prod(kernel) * channels_out)
    product = rows.t() @ columns  # (I, k.. * O)
    return product.reshape(channels_in, *kernel, channels_out).permute(0, ndim + 1, *range(1, ndim + 1))


def _applies(up: nn.Module, x: torch.Tensor) -> bool:
    """Training on a CPU (a gradient to compute, nothing traced for export), and an
    up-convolution whose kernel is its stride."""
    return (
        x.device.type == "cpu"
        and torch.is_grad_enabled()
        and not torch.jit.is_tracing()
        and isinstance(up, (nn.ConvTranspose2d, nn.ConvTranspose3d))
        and up.groups == 1
        and tuple(up.stride) == tuple(up.kernel_size)
        and all(p == 0 for p in up.padding)
        and all(p == 0 for p in up.output_padding)
        and all(d == 1 for d in up.dilation)
    )


def up_convolution(up: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``up(x)`` for an up-convolution module ``up``; in training on a CPU, where its
    kernel equals its stride, with the weight gradient of :func:`weight_gradient`. Under
    autocast the input and weights are cast as autocast casts them for a convolution."""
    if not _applies(up, x):
        return up(x)
    x, weight, bias = cast_as_autocast(x, up.weight, up.bias)
    with torch.autocast("cpu", enabled=False):
        return _UpConvolution.apply(x, weight, bias)
