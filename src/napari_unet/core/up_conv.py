"""The U-Net's up-convolution on a CPU, with its gradients as two matrix products.

An up-convolution whose kernel equals its stride (the U-Net's: 2x2, stride 2) writes each
input pixel's ``K`` output pixels from that pixel alone: ``y[n, o, s * p + k] = sum_i x[n, i,
p] w[i, o, k] + b[o]``. With the output's gradient gathered into a (pixels x K * out
channels) matrix ``G`` (a pixel's row: the gradients of the ``K`` output pixels it wrote),
the weight gradient is ``X^T G`` (``X``: the input's (pixels x in channels) matrix) and the
input's gradient ``G W^T`` (``W``: the weights as an (in channels x K * out channels)
matrix). On a 2-core Xeon with AMX (bf16, the CPU default's three up-convolutions, four
tiles of 220 px) oneDNN's transposed-convolution weight gradient took 3.3-3.7 times as long
as its product with the gathering, and the three backward passes 4.5 ms of a 58 ms
training step; the input's gradient from the same gathered matrix saved another 0.5 ms of
a 42 ms forward and backward pass (bench/README.md, "What makes training fast on a CPU").
The forward pass is torch's own.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .devices import layout_of
from .fused_ops import cast_as_autocast


class _UpConvolution(torch.autograd.Function):
    """``conv_transpose(x, weight, bias, stride=kernel)`` with the weight and input
    gradients as matrix products; ``x`` (N, I, *spatial), ``weight`` (I, O, *kernel)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        kernel, zero, unit = _arguments(weight)
        return torch.ops.aten.convolution(x, weight, bias, kernel, zero, unit, True, zero, 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        # the gradient arrives as the concatenation's channel slice: gathered and summed
        # over such strides it took twice as long as a copy and the same over contiguous rows
        grad = grad.contiguous(memory_format=layout_of(x))
        kernel = list(weight.shape[2:])
        gathered = gathered_gradient(grad, kernel)
        d_x = d_weight = d_bias = None
        if ctx.needs_input_grad[0]:
            rows = gathered @ weight.movedim(1, -1).reshape(x.shape[1], -1).t()  # G W^T: (N * pixels, I)
            d_x = rows.view(x.shape[0], *x.shape[2:], x.shape[1]).movedim(-1, 1)
            d_x = d_x.contiguous(memory_format=layout_of(x))
        if ctx.needs_input_grad[1]:
            d_weight = _weight_gradient(x, gathered, kernel)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            d_bias = grad.sum(dim=[0, *range(2, grad.ndim)])
        return d_x, d_weight, d_bias


def _arguments(weight: torch.Tensor) -> tuple[list[int], list[int], list[int]]:
    """The stride (the kernel of ``weight``), padding and dilation of the up-convolution."""
    kernel = list(weight.shape[2:])
    return kernel, [0] * len(kernel), [1] * len(kernel)


def gathered_gradient(grad: torch.Tensor, kernel: list[int]) -> torch.Tensor:
    """The gradient of an up-convolution's output ``grad`` (N, O, *(spatial * kernel)) as
    an (N * input pixels, kernel pixels * O) matrix: an input pixel's row holds the
    gradients of the output pixels it writes."""
    n, channels_out, *size = grad.shape
    ndim = len(kernel)
    split = [n] + [s for pair in zip([s // k for s, k in zip(size, kernel)], kernel) for s in pair] + [channels_out]
    blocks = grad.movedim(1, -1).reshape(split)  # (N, S1, k1, S2, k2, .., O)
    order = [0, *range(1, 2 * ndim, 2), *range(2, 2 * ndim + 1, 2), 2 * ndim + 1]  # (N, S.., k.., O)
    return blocks.permute(order).reshape(-1, math.prod(kernel) * channels_out)


def weight_gradient(x: torch.Tensor, grad: torch.Tensor, kernel: list[int]) -> torch.Tensor:
    """The weight gradient (I, O, *kernel) of an up-convolution with stride ``kernel``
    from its input ``x`` (N, I, *spatial) and the gradient of its output ``grad`` (N, O,
    *(spatial * kernel)): the input's channels-last matrix (N * pixels, I), transposed,
    times the gathered gradient (:func:`gathered_gradient`)."""
    return _weight_gradient(x, gathered_gradient(grad, kernel), kernel)


def _weight_gradient(x: torch.Tensor, gathered: torch.Tensor, kernel: list[int]) -> torch.Tensor:
    rows = x.movedim(1, -1).reshape(-1, x.shape[1])  # a view when x is channels-last
    product = rows.t() @ gathered  # (I, k.. * O)
    ndim = len(kernel)
    return product.reshape(x.shape[1], *kernel, -1).permute(0, ndim + 1, *range(1, ndim + 1))


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
