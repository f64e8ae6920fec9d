"""The U-Net of Ronneberger et al. 2015 with unpadded ("valid") convolutions."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig, ModelSpec
from .geometry import smallest_input


class DoubleConv(nn.Sequential):
    """Two unpadded 3x3 convolutions, each followed by ReLU: H, W shrink by 4."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3),
            nn.ReLU(inplace=True),
        )


def center_crop(features: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The central ``height x width`` window of ``features`` (N, C, H, W)."""
    top = (features.shape[-2] - height) // 2
    left = (features.shape[-1] - width) // 2
    return features[..., top : top + height, left : left + width]


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
        self.config = ModelConfig(in_channels, n_classes, base_channels, depth, dropout)
        self.spec = ModelSpec(model=self.config)
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList()
        channels = in_channels
        for width in widths[:-1]:
            self.down.append(DoubleConv(channels, width))
            channels = width
        self.pool = nn.MaxPool2d(2)
        self.bottom = DoubleConv(widths[-2], widths[-1])
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for level in reversed(range(depth)):
            self.up.append(nn.ConvTranspose2d(widths[level + 1], widths[level], 2, stride=2))
            self.up_conv.append(DoubleConv(2 * widths[level], widths[level]))
        self.head = nn.Conv2d(widths[0], n_classes, kernel_size=1)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottom(x))
        for up, block, skip in zip(self.up, self.up_conv, reversed(skips)):
            x = up(x)
            x = block(torch.cat([center_crop(skip, x.shape[-2], x.shape[-1]), x], dim=1))
        return self.head(x)


def _fused_conv_op():
    """oneDNN's fused convolution + pointwise op, or ``None`` where this torch lacks it."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._convolution_pointwise
    except (AttributeError, RuntimeError):
        return None


def conv_input_shapes(config: ModelConfig, batch: int, height: int, width: int) -> list[tuple[int, ...]]:
    """Input shapes (N, C, H, W) of the 3x3 and head convolutions, in forward order."""
    widths = [config.base_channels * 2**level for level in range(config.depth + 1)]
    shapes = []
    channels, h, w = config.in_channels, height, width
    for level in range(config.depth + 1):
        shapes += [(batch, channels, h, w), (batch, widths[level], h - 2, w - 2)]
        channels, h, w = widths[level], h - 4, w - 4
        if level < config.depth:
            h, w = h // 2, w // 2
    for level in reversed(range(config.depth)):
        h, w = 2 * h, 2 * w
        shapes += [(batch, 2 * widths[level], h, w), (batch, widths[level], h - 2, w - 2)]
        h, w = h - 4, w - 4
    shapes.append((batch, widths[0], h, w))
    return shapes


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
    in). ``input_shape``: the (N, C, H, W) the weights are laid out for; other valid
    shapes work too. The instance holds a snapshot of the weights: build a new one
    after they change. Calls take ``(N, C, H, W)`` inputs of any layout and dtype and
    return logits ``(N, K, H - m, W - m)`` in ``dtype``, channels-last.
    """

    def __init__(
        self, model: UNet, dtype: torch.dtype = torch.float32, input_shape: tuple[int, ...] | None = None
    ) -> None:
        self.dtype = dtype
        self.fused = _fused_conv_op() is not None
        convs = [block[i] for block in (*model.down, model.bottom) for i in (0, 2)]
        convs += [block[i] for block in model.up_conv for i in (0, 2)]
        convs.append(model.head)
        if input_shape is None:
            size = smallest_input(model.config.depth)
            input_shape = (1, model.config.in_channels, size, size)
        shapes = conv_input_shapes(model.config, *input_shape[:1], *input_shape[2:])
        packed = [self._pack(conv, shape) for conv, shape in zip(convs, shapes)]
        iter_pairs = iter(packed)
        self._down = [(next(iter_pairs), next(iter_pairs)) for _ in model.down]
        self._bottom = (next(iter_pairs), next(iter_pairs))
        self._up_conv = [(next(iter_pairs), next(iter_pairs)) for _ in model.up_conv]
        self._head = next(iter_pairs)
        self._up = [
            (up.weight.detach().to(dtype).contiguous(memory_format=torch.channels_last), up.bias.detach().to(dtype))
            for up in model.up
        ]

    def _pack(self, conv: nn.Conv2d, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight = conv.weight.detach().to(self.dtype)
        bias = None if conv.bias is None else conv.bias.detach().to(self.dtype)
        if self.fused:
            try:
                weight = torch._C._nn.mkldnn_reorder_conv2d_weight(
                    weight.contiguous().to_mkldnn(), [0, 0], [1, 1], [1, 1], 1, list(shape)
                )
                return weight, bias
            except RuntimeError:  # pragma: no cover - depends on the torch build
                self.fused = False
        return weight.contiguous(memory_format=torch.channels_last), bias

    def _conv(self, x: torch.Tensor, weights: tuple, relu: bool = True) -> torch.Tensor:
        weight, bias = weights
        if weight.is_mkldnn:
            attr = "relu" if relu else "none"
            return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, [0, 0], [1, 1], [1, 1], 1, attr, [], "")
        x = nn.functional.conv2d(x, weight, bias)
        return torch.relu_(x) if relu else x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        skips = []
        for first, second in self._down:
            x = self._conv(self._conv(x, first), second)
            skips.append(x)
            x = nn.functional.max_pool2d(x, 2)
        x = self._conv(self._conv(x, self._bottom[0]), self._bottom[1])
        for (weight, bias), (first, second), skip in zip(self._up, self._up_conv, reversed(skips)):
            x = nn.functional.conv_transpose2d(x, weight, bias, stride=2)
            x = torch.cat([center_crop(skip, x.shape[-2], x.shape[-1]), x], dim=1)
            x = self._conv(self._conv(x, first), second)
        return self._conv(x, self._head, relu=False)
