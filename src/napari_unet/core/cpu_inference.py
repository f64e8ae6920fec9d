"""The CPU's inference path of a :class:`~napari_unet.core.model.UNet`: the same layer
plan run with channels-last oneDNN convolutions, fused ReLUs, folded batch
normalisation and weights packed once (see :class:`CpuInference`)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

from .devices import channels_last
from .fused_ops import fused_conv_op
from .layer_plan import CONCAT, CONV, DROPOUT, UP, Layer, center_window, layer_input_shapes, max_pool, run_plan
from .model import UNet, folded_weights, weights_lock


class _Conv:
    """One convolution of a :class:`CpuInference`, its weight laid out once for its
    input shape: with ``fused``, computed with its ReLU (and a tensor to add before
    it) in one oneDNN call, a 2D one's weight reordered into oneDNN's blocked layout;
    otherwise as a channels-last convolution followed by the addition and the ReLU.
    A 3D convolution of a one-channel input runs as a 2D convolution of every window
    of ``kz`` planes, the planes as its channels (oneDNN's 3D kernels are about 4x
    slower for one input channel here)."""

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, input_shape: Sequence[int], fused: bool
    ) -> None:
        self.planes = weight.ndim == 5 and weight.shape[1] == 1
        if self.planes:
            batch, _, z, y, x = input_shape
            self.kz = weight.shape[2]
            weight = weight[:, 0]
            input_shape = (batch * (z - self.kz + 1), self.kz, y, x)
        self.bias, self.fused = bias, fused
        self.weight = weight.contiguous(memory_format=channels_last(weight.ndim))
        self.unit = [1] * (weight.ndim - 2)
        if fused and weight.ndim == 4:
            with contextlib.suppress(RuntimeError):  # keeps the plain layout where this torch cannot reorder
                self.weight = torch._C._nn.mkldnn_reorder_conv2d_weight(
                    weight.contiguous().to_mkldnn(), [0, 0], self.unit, self.unit, 1, list(input_shape)
                )

    def __call__(self, x: torch.Tensor, relu: bool, add: torch.Tensor | None = None) -> torch.Tensor:
        if self.planes:
            n, _, z, y, x_size = x.shape
            windows = x.contiguous().as_strided(
                (n, z - self.kz + 1, self.kz, y, x_size), (z * y * x_size, y * x_size, y * x_size, x_size, 1)
            )
            x = windows.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        if self.fused:
            zeros, ones, attr = [0] * len(self.unit), self.unit, "relu" if relu else "none"
            if add is None:
                y = torch.ops.mkldnn._convolution_pointwise(
                    x, self.weight, self.bias, zeros, ones, ones, 1, attr, [], ""
                )
            else:
                y = torch.ops.mkldnn._convolution_pointwise.binary(
                    x, add, self.weight, self.bias, zeros, ones, ones, 1, "add", None, attr, [], ""
                )
        else:
            y = (nn.functional.conv2d if x.ndim == 4 else nn.functional.conv3d)(x, self.weight, self.bias)
            # torch's own kernel (its choice for a 1x1x1 convolution on one thread) answers in NCDHW
            y = y.contiguous(memory_format=channels_last(y.ndim))
            if add is not None:
                y.add_(add)
            if relu:
                y.relu_()
        if self.planes:
            y = y.unflatten(0, (n, -1)).transpose(1, 2)  # (N, C, Z', Y', X'), channels-last-3d in memory
        return y


def _pooled(x: torch.Tensor, factor: Sequence[int]) -> torch.Tensor:
    """Max pooling of a channels-last ``x`` as maxima of strided views, axis by axis:
    the same values as oneDNN's pooling, faster here (the 3D default's first pooling:
    17-37 ms against 46-48 ms)."""
    if not x.is_contiguous(memory_format=channels_last(x.ndim)) or any(n % f for n, f in zip(x.shape[2:], factor)):
        return max_pool(x, factor)
    pixels = x.movedim(1, -1)  # (N, *spatial, C), a view
    for axis, f in enumerate(factor, start=1):
        if f == 1:
            continue
        split = pixels.unflatten(axis, (-1, f))
        pixels = split.select(axis + 1, 0)
        for offset in range(1, f):
            pixels = torch.maximum(pixels, split.select(axis + 1, offset))
    return pixels.movedim(-1, 1)


class CpuInference:
    """Inference-only forward pass of a :class:`UNet` on the CPU, equal to
    ``model.eval()(x)`` (under autocast for bf16) up to floating-point rounding.

    What makes it faster than calling the modules (each measured in ``bench/``):

    - activations and weights in channels-last layout, which oneDNN's convolutions
      run much faster than NCHW (about 1.3x in fp32 and 1.6x in bf16 for the paper
      network on an AVX512-BF16 CPU);
    - every convolution and its ReLU in one oneDNN call (no extra pass over the
      activations);
    - weights cast to ``dtype`` and reordered into oneDNN's blocked layout once, here,
      instead of at every call;
    - no concatenation of a skip connection with the up-convolution's output: the
      convolution after it is split into one over each part, summed (the second adds
      the first in its own call where fused);
    - max pooling as maxima of strided views, and a 3D network's first convolution
      of a one-channel volume as a 2D convolution over windows of planes.

    ``dtype``: torch.float32, or torch.bfloat16 (what autocast computes convolutions
    in). ``input_shape``: the valid (N, C, H, W) or (N, C, Z, Y, X) the weights are
    laid out for; other valid shapes work too. ``fused=False`` uses plain channels-last
    convolutions (what runs where oneDNN's fused op is missing). The instance holds its
    own copy of the weights: build a new one after they change. Calls take inputs of any
    layout and dtype and return logits ``(N, K, *(spatial - m))`` in ``dtype``,
    channels-last. Batch normalisation (eval mode) is folded into the convolution
    before it, once, here.
    """

    def __init__(
        self,
        model: UNet,
        dtype: torch.dtype,
        input_shape: Sequence[int],
        *,
        fused: bool = True,
    ) -> None:
        self.dtype = dtype
        self.plan = model.plan
        self.fused = fused and fused_conv_op() is not None
        shapes = layer_input_shapes(self.plan, input_shape)
        self.convs: list = [None] * len(self.plan)
        with weights_lock(model), torch.no_grad():
            for index, (layer, shape) in enumerate(zip(self.plan, shapes)):
                if layer.kind in (CONV, UP):
                    # on the CPU whichever device the model trains on (a model left on a GPU, say)
                    weight, bias = (t.to("cpu", dtype) for t in folded_weights(model, layer))
                    self.convs[index] = self._pack(index, layer, weight, bias, shape)

    def _pack(self, index: int, layer: Layer, weight: torch.Tensor, bias: torch.Tensor, shape: tuple[int, ...]):
        if layer.kind == UP:
            return weight.contiguous(memory_format=channels_last(weight.ndim)), bias
        if index >= 2 and self.plan[index - 1].kind == CONCAT:  # input: (skip, up-convolution's output)
            skip_channels = shape[1] - self.plan[index - 2].out_channels
            skip_shape, up_shape = (
                (shape[0], skip_channels, *shape[2:]),
                (shape[0], shape[1] - skip_channels, *shape[2:]),
            )
            return (
                _Conv(weight[:, :skip_channels], None, skip_shape, self.fused),
                _Conv(weight[:, skip_channels:], bias, up_shape, self.fused),
            )
        return _Conv(weight, bias, shape, self.fused)

    def _apply_layer(self, index: int, layer: Layer, x) -> torch.Tensor:
        if layer.kind == DROPOUT:
            return x
        conv = self.convs[index]
        if layer.kind == UP:
            weight, bias = conv
            up = nn.functional.conv_transpose2d if x.ndim == 4 else nn.functional.conv_transpose3d
            return up(x, weight, bias, stride=layer.factor)
        if isinstance(conv, tuple):
            (skip, up), (skip_conv, up_conv) = x, conv
            return up_conv(up, layer.relu, add=skip_conv(skip, relu=False))
        return conv(x, layer.relu)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype).contiguous(memory_format=channels_last(x.ndim))
        return run_plan(
            self.plan,
            x,
            self._apply_layer,
            pool=lambda x, factor, size: (_pooled(x, factor), center_window(x, size)),
            join=lambda window, up: (window, up),
        )
