"""The U-Net of Ronneberger et al. 2015 with unpadded ("valid") convolutions."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig, ModelSpec


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
