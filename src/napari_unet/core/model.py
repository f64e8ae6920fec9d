"""The U-Net of Ronneberger et al. 2015 with unpadded ("valid") convolutions.

The network is written down once, as a :func:`layer_plan`: the sequence of layers
in forward order. The torch module (:class:`UNet`), the fast CPU inference path
(:class:`CpuInference`), the shape walk (:func:`layer_input_shapes`) and the FLOP
count (:func:`forward_flops`) all follow that plan.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .config import ModelConfig, ModelSpec

CONV, POOL, DROPOUT, UP, CONCAT = "conv", "pool", "dropout", "up", "concat"


@dataclass(frozen=True)
class Layer:
    """One step of the forward pass.

    ``kind``: ``"conv"`` (unpadded ``kernel``-sized convolution, then ReLU if
    ``relu``), ``"pool"`` (keep the input as a skip connection, then 2x2 max
    pooling), ``"dropout"``, ``"up"`` (2x2 stride-2 up-convolution) or ``"concat"``
    (centre-crop the latest skip to the input's size and put it in front of the
    input's channels). ``module`` names the submodule holding the weights.
    """

    kind: str
    module: str = ""
    in_channels: int = 0
    out_channels: int = 0
    kernel: int = 0
    relu: bool = False


def layer_plan(config: ModelConfig) -> list[Layer]:
    """The layers of the paper's Fig. 1 for ``config``, in forward order.

    Per level two 3x3 convolutions + ReLU, then pooling (the contracting path); at
    the bottom two more and dropout; per level back up an up-convolution that
    halves the channels, concatenation with the cropped skip and two convolutions;
    finally a 1x1 convolution to the classes. Module names match :class:`UNet`'s.
    """
    widths = [config.base_channels * 2**level for level in range(config.depth + 1)]

    def double(prefix: str, c_in: int, c_out: int) -> list[Layer]:
        return [Layer(CONV, f"{prefix}.0", c_in, c_out, 3, True), Layer(CONV, f"{prefix}.2", c_out, c_out, 3, True)]

    plan: list[Layer] = []
    channels = config.in_channels
    for level in range(config.depth):
        plan += [*double(f"down.{level}", channels, widths[level]), Layer(POOL)]
        channels = widths[level]
    plan += [*double("bottom", channels, widths[-1]), Layer(DROPOUT, "dropout")]
    for step, level in enumerate(reversed(range(config.depth))):
        plan += [Layer(UP, f"up.{step}", widths[level + 1], widths[level], 2), Layer(CONCAT)]
        plan += double(f"up_conv.{step}", 2 * widths[level], widths[level])
    plan.append(Layer(CONV, "head", widths[0], config.n_classes, 1, False))
    return plan


def layer_input_shapes(plan: Sequence[Layer], input_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """The input shape ``(N, C, *spatial)`` of every layer of ``plan``, and at the end
    the output's shape. Raises ``ValueError`` where a pooling meets an odd size."""
    shape = tuple(input_shape)
    skips: list[tuple[int, ...]] = []
    shapes = []
    for layer in plan:
        shapes.append(shape)
        batch, channels, spatial = shape[0], shape[1], shape[2:]
        if layer.kind == CONV:
            shape = (batch, layer.out_channels, *(n - layer.kernel + 1 for n in spatial))
        elif layer.kind == POOL:
            if any(n % 2 for n in spatial):
                raise ValueError(f"2x2 pooling of an odd size {spatial}: {tuple(input_shape)} is not a valid input")
            skips.append(shape)
            shape = (batch, channels, *(n // 2 for n in spatial))
        elif layer.kind == UP:
            shape = (batch, layer.out_channels, *(2 * n for n in spatial))
        elif layer.kind == CONCAT:
            shape = (batch, skips.pop()[1] + channels, *spatial)
    shapes.append(shape)
    return shapes


def forward_flops(config: ModelConfig, input_shape: Sequence[int]) -> int:
    """Floating-point operations (2 per multiply-add) of one forward pass on an input
    of ``input_shape`` ``(N, C, *spatial)``. Counts the convolutions and the
    up-convolutions (each output pixel takes one tap per input channel); biases,
    activations, pooling and copies are not counted."""
    plan = layer_plan(config)
    total = 0
    for layer, shape_out in zip(plan, layer_input_shapes(plan, input_shape)[1:]):
        out_pixels = shape_out[0] * math.prod(shape_out[2:])
        if layer.kind == CONV:
            spatial_dims = len(shape_out) - 2
            total += 2 * layer.in_channels * layer.out_channels * layer.kernel**spatial_dims * out_pixels
        elif layer.kind == UP:
            total += 2 * layer.in_channels * layer.out_channels * out_pixels
    return total


def center_crop(features: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The central window of ``size`` (its last axes) of ``features`` (N, C, ...)."""
    window = [slice((have - want) // 2, (have - want) // 2 + want) for have, want in zip(features.shape[2:], size)]
    return features[(..., *window)]


def run_plan(plan: Sequence[Layer], x: torch.Tensor, apply: Callable[[int, Layer, torch.Tensor], torch.Tensor]):
    """Push ``x`` through ``plan``; ``apply(index, layer, x)`` computes the layers
    with weights (conv, up, dropout), the plan itself pooling and concatenation."""
    skips = []
    for index, layer in enumerate(plan):
        if layer.kind == POOL:
            skips.append(x)
            x = nn.functional.max_pool2d(x, 2)
        elif layer.kind == CONCAT:
            x = torch.cat([center_crop(skips.pop(), x.shape[2:]), x], dim=1)
        else:
            x = apply(index, layer, x)
    return x


class SampleDropout2d(nn.Module):
    """Channel dropout (as ``nn.Dropout2d``) whose masks can come from one seed per sample.

    With ``seeds`` (one int per sample of the batch), sample ``i``'s channel mask is
    drawn from a generator seeded with ``seeds[i]``, so it does not depend on the
    batch it travels in or on the process that computes it (data-parallel training).
    Without seeds it draws from torch's global generator. Identity in eval mode.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor, seeds: Sequence[int] | None = None) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if seeds is None:
            return nn.functional.dropout2d(x, self.p, training=True)
        keep = torch.stack(
            [torch.rand(x.shape[1], generator=torch.Generator().manual_seed(int(seed))) >= self.p for seed in seeds]
        )
        scale = keep.to(device=x.device, dtype=x.dtype) / (1.0 - self.p)
        return x * scale.view(*scale.shape, *([1] * (x.ndim - 2)))


class DoubleConv(nn.Sequential):
    """Two unpadded 3x3 convolutions, each followed by ReLU: H, W shrink by 4."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """U-Net with valid convolutions, crop-and-concat skips and He initialisation.

    Input ``(N, in_channels, H, W)`` with H and W valid input sizes for ``depth``
    (see :func:`napari_unet.core.geometry.output_size`); output logits
    ``(N, n_classes, H - m, W - m)`` with ``m = 12 * 2**depth - 8`` (184 for the
    paper's depth 4, so 572 -> 388).

    The defaults are the paper's network (Fig. 1): 23 convolution layers and about
    31.03 M parameters. Dropout sits at the end of the contracting path.

    ``spec`` holds what a model file records besides the weights (normalisation,
    instance post-processing, class names); prediction reads it from here.
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        base_channels: int = 64,
        depth: int = 4,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.config = config = ModelConfig(in_channels, n_classes, base_channels, depth, dropout)
        self.spec = ModelSpec(model=config)
        self.plan = layer_plan(config)
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList(
            DoubleConv(c_in, c_out) for c_in, c_out in zip([in_channels, *widths[:-2]], widths[:-1])
        )
        self.bottom = DoubleConv(widths[-2], widths[-1])
        self.dropout = SampleDropout2d(dropout)
        levels = list(reversed(range(depth)))
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in levels)
        self.up_conv = nn.ModuleList(DoubleConv(2 * widths[i], widths[i]) for i in levels)
        self.head = nn.Conv2d(widths[0], n_classes, kernel_size=1)
        self._layers = [self.get_submodule(layer.module) if layer.module else None for layer in self.plan]
        self.reset_parameters()

    @classmethod
    def from_config(cls, config: ModelConfig) -> UNet:
        return cls(config.in_channels, config.n_classes, config.base_channels, config.depth, config.dropout)

    def reset_parameters(self) -> None:
        """He initialisation: N(0, sqrt(2 / incoming connections)), zero biases."""
        for module in self.modules():
            if isinstance(module, nn.ConvTranspose2d):
                # stride == kernel: each output pixel sees one tap per input channel
                fan_in = module.in_channels
            elif isinstance(module, nn.Conv2d):
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            else:
                continue
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_in))
            nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor, dropout_seeds: Sequence[int] | None = None) -> torch.Tensor:
        """Logits of ``x``; ``dropout_seeds`` (one per sample) fix the dropout masks in
        training mode (see :class:`SampleDropout2d`)."""

        def apply(index: int, layer: Layer, x: torch.Tensor) -> torch.Tensor:
            if layer.kind == DROPOUT:
                return self.dropout(x, dropout_seeds)
            x = self._layers[index](x)
            return torch.relu_(x) if layer.relu else x

        return run_plan(self.plan, x, apply)


_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def weights_lock(model: nn.Module) -> threading.Lock:
    """The lock held while ``model``'s weights change (an optimiser step) or are
    copied (:func:`snapshot`), so a copy never mixes two steps."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(model, threading.Lock())


def snapshot(model: UNet, device: torch.device | str = "cpu") -> UNet:
    """A copy of ``model`` on ``device`` in eval mode, with a consistent copy of its
    weights. ``model`` itself is not touched: not moved, not switched to eval, and
    its random number generators are not drawn from (the copy is built on the meta
    device and then filled in)."""
    with torch.device("meta"):
        copy = UNet.from_config(model.config)
    copy = copy.to_empty(device=device)
    with weights_lock(model), torch.no_grad():
        copy.load_state_dict(model.state_dict())
    copy.spec = model.spec
    copy.metadata = dict(getattr(model, "metadata", {}))
    return copy.eval().requires_grad_(False)


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
        self.fused = fused and _fused_conv_op() is not None
        shapes = layer_input_shapes(self.plan, input_shape)
        with weights_lock(model), torch.no_grad():
            self.weights = [
                self._pack(model.get_submodule(layer.module), layer, shape) if layer.kind in (CONV, UP) else None
                for layer, shape in zip(self.plan, shapes)
            ]

    def _pack(self, module: nn.Module, layer: Layer, shape: tuple[int, ...]):
        weight = module.weight.detach().to(self.dtype, copy=True)
        bias = module.bias.detach().to(self.dtype, copy=True)
        if layer.kind == CONV and self.fused:
            try:
                weight = torch._C._nn.mkldnn_reorder_conv2d_weight(
                    weight.contiguous().to_mkldnn(), [0, 0], [1, 1], [1, 1], 1, list(shape)
                )
                return weight, bias
            except RuntimeError:  # pragma: no cover - depends on the torch build
                self.fused = False
        return weight.contiguous(memory_format=torch.channels_last), bias

    def _apply_layer(self, index: int, layer: Layer, x: torch.Tensor) -> torch.Tensor:
        if layer.kind == DROPOUT:
            return x
        weight, bias = self.weights[index]
        if layer.kind == UP:
            return nn.functional.conv_transpose2d(x, weight, bias, stride=2)
        if weight.is_mkldnn:
            attr = "relu" if layer.relu else "none"
            return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, [0, 0], [1, 1], [1, 1], 1, attr, [], "")
        x = nn.functional.conv2d(x, weight, bias)
        return torch.relu_(x) if layer.relu else x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        return run_plan(self.plan, x, self._apply_layer)
