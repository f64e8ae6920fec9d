"""The CPU's inference path of a :class:`~napari_unet.core.model.UNet`: the same layer
plan run with channels-last oneDNN convolutions, fused ReLUs, folded batch
normalisation and weights packed once (see :class:`CpuInference`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .devices import channels_last
from .model import CONV, DROPOUT, UP, Layer, UNet, folded_weights, layer_input_shapes, run_plan, weights_lock


def _fused_conv_op():
    """oneDNN's fused convolution + pointwise op, or ``None`` where this torch lacks it."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._convolution_pointwise
    except (AttributeError, RuntimeError):
        return None


class CpuInference:
    """Inference-only forward pass of a :class:`UNet` on the CPU, equal to
    ``model.eval()(x)`` (under autocast for bf16) up to floating-point rounding.

    What makes it faster than calling the modules (each measured in ``bench/``):

    - activations and weights in channels-last layout, which oneDNN's convolutions
      run much faster than NCHW (about 1.3x in fp32 and 1.6x in bf16 for the paper
      network on an AVX512-BF16 CPU);
    - every 3x3 convolution and its ReLU in one oneDNN call (no extra pass over the
      activations);
    - weights cast to ``dtype`` and reordered into oneDNN's blocked layout once, here,
      instead of at every call.

    ``dtype``: torch.float32, or torch.bfloat16 (what autocast computes convolutions
    in). ``input_shape``: the valid (N, C, H, W) the weights are laid out for; other
    valid shapes work too. ``fused=False`` uses plain channels-last convolutions (what runs
    where oneDNN's fused op is missing). The instance holds its own copy of the
    weights: build a new one after they change. Calls take ``(N, C, H, W)`` inputs of
    any layout and dtype and return logits ``(N, K, H - m, W - m)`` in ``dtype``,
    channels-last.

    3D models take ``(N, C, Z, Y, X)`` and run plain channels-last-3d convolutions
    (the fused op is used for 2D only). Batch normalisation (eval mode) is folded into
    the convolution before it, once, here.
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
        self.fused = fused and _fused_conv_op() is not None and len(input_shape) == 4
        shapes = layer_input_shapes(self.plan, input_shape)
        with weights_lock(model), torch.no_grad():
            self.weights = [
                self._pack(model, layer, shape) if layer.kind in (CONV, UP) else None
                for layer, shape in zip(self.plan, shapes)
            ]

    def _pack(self, model: nn.Module, layer: Layer, shape: tuple[int, ...]):
        weight, bias = folded_weights(model, layer)
        weight, bias = weight.to(self.dtype), bias.to(self.dtype)
        if layer.kind == CONV and self.fused and len(shape) == 4:
            try:
                weight = torch._C._nn.mkldnn_reorder_conv2d_weight(
                    weight.contiguous().to_mkldnn(), [0, 0], [1, 1], [1, 1], 1, list(shape)
                )
                return weight, bias
            except RuntimeError:  # pragma: no cover - depends on the torch build
                self.fused = False
        return weight.contiguous(memory_format=channels_last(weight.ndim)), bias

    def _apply_layer(self, index: int, layer: Layer, x: torch.Tensor) -> torch.Tensor:
        if layer.kind == DROPOUT:
            return x
        weight, bias = self.weights[index]
        if layer.kind == UP:
            up = nn.functional.conv_transpose2d if x.ndim == 4 else nn.functional.conv_transpose3d
            return up(x, weight, bias, stride=layer.factor)
        if weight.is_mkldnn:
            attr = "relu" if layer.relu else "none"
            return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, [0, 0], [1, 1], [1, 1], 1, attr, [], "")
        x = (nn.functional.conv2d if x.ndim == 4 else nn.functional.conv3d)(x, weight, bias)
        return torch.relu_(x) if layer.relu else x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype).contiguous(memory_format=channels_last(x.ndim))
        return run_plan(self.plan, x, self._apply_layer)
