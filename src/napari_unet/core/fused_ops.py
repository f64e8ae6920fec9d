"""A convolution and its ReLU in one pass over memory on a CPU, with its gradient.

A training step of the small CPU networks spends about a third of its time in the
passes between the convolutions (ReLU, pooling, concatenation and their gradients).
:func:`conv_relu` computes a convolution and its ReLU in one oneDNN call (the ReLU
applied to each output block while it is in cache); its backward is the eager one's
(``threshold_backward`` of the output, then ``convolution_backward``), so values and
gradients equal those of ``relu(conv(x))``. It falls back to torch's own ops off the
CPU or where oneDNN is missing.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import conv_flop_count, register_flop_formula


def fused_conv_op():
    """oneDNN's fused convolution + pointwise op, or ``None`` where this torch lacks it."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._convolution_pointwise
    except (AttributeError, RuntimeError):
        return None


_FUSED = fused_conv_op()

if _FUSED is not None:

    @register_flop_formula(_FUSED)
    def _fused_conv_flops(x_shape, *args, out_shape, **_) -> int:
        """What torch's FlopCounterMode counts for the fused op: its convolution's FLOPs
        (the weight is the second argument of the unary form, the third of the binary
        one, which adds a tensor before the ReLU and takes 13 arguments)."""
        weight_shape = args[1] if len(args) == 12 else args[0]
        return conv_flop_count(x_shape, weight_shape, out_shape)


class _ConvReLU(torch.autograd.Function):
    """``relu(conv(x, weight, bias))`` for an unpadded, unstrided convolution, its ReLU
    applied inside oneDNN's call; the output is saved for the ReLU's gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        unit, zero = [1] * (x.ndim - 2), [0] * (x.ndim - 2)
        y = _FUSED(x, weight, bias, zero, unit, unit, 1, "relu", [], "")
        ctx.save_for_backward(x, weight, y)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, y = ctx.saved_tensors
        unit, zero = [1] * (x.ndim - 2), [0] * (x.ndim - 2)
        grad = torch.ops.aten.threshold_backward(grad, y, 0)
        wanted = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        d_x, d_weight, d_bias = torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[0]], unit, zero, unit, False, zero, 1, wanted
        )
        return d_x, d_weight, d_bias


def _fusable(conv: nn.Module, x: torch.Tensor) -> bool:
    return (
        _FUSED is not None
        and x.device.type == "cpu"
        and isinstance(conv, (nn.Conv2d, nn.Conv3d))
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and all(p == 0 for p in conv.padding)
        and all(s == 1 for s in conv.stride)
        and all(d == 1 for d in conv.dilation)
    )


def cast_as_autocast(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple:
    """``(x, weight, bias)`` cast as CPU autocast casts a convolution's arguments, as they
    are where it is off: for a custom operation that then runs with autocast off (the
    casts' gradients flow back to the fp32 weights as they would)."""
    if not torch.is_autocast_enabled("cpu"):
        return x, weight, bias
    dtype = torch.get_autocast_dtype("cpu")
    return x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)


def conv_relu(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``relu(conv(x))``, fused where :func:`_fusable`; under autocast the input and
    weights are cast as autocast casts them for a convolution (the casts' gradients
    flow back to the fp32 weights as they would)."""
    if not _fusable(conv, x):
        return torch.relu_(conv(x))
    x, weight, bias = cast_as_autocast(x, conv.weight, conv.bias)
    if not (x.dtype == weight.dtype and x.dtype in (torch.float32, torch.bfloat16)):
        return torch.relu_(conv(x))
    with torch.autocast("cpu", enabled=False):
        return _ConvReLU.apply(x, weight, bias)
