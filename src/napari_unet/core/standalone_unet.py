"""A self-contained U-Net (Ronneberger et al. 2015) for running an exported model.

napari-unet copies this file verbatim into the bioimage.io packages it writes, as
the architecture of their ``pytorch_state_dict`` weights. It needs nothing but
PyTorch: it must not import napari_unet, so that any bioimage.io consumer can run it.

The network is napari-unet's: unpadded 3x3 convolutions, 2x2 max pooling,
crop-and-concatenate skips, 2x2 up-convolutions and a 1x1 head, with the same
submodule names (so napari-unet's state dicts load into it unchanged). Its
:func:`layer_plan` lists the layers in the format of napari-unet's
``napari_unet.core.model.layer_plan``; napari-unet's tests check that the two agree.

What differs is the interface. :class:`SameSizeUNet` takes an image whose height
and width are multiples of ``2**depth`` (any size from ``min_size(depth)`` works,
others too), mirrors it by the network's context inside the module and returns an
output of the input's size: the foreground probability (1 minus the softmax
probability of class 0), shape ``(N, 1, H, W)``. Output pixels closer than
``halo(depth)`` to an edge of the input saw mirrored rather than real context; a
tiled consumer discards them (the bioimage.io description declares that halo), and
then every tile equals one pass over the whole image.
"""

# typing.List/Tuple: TorchScript reads these annotations on every torch version.
# ruff: noqa: UP006, UP035

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

#: One layer per entry: (kind, submodule, in channels, out channels, kernel, relu).
#: Kinds: "conv", "pool", "dropout", "up" (2x2 up-convolution), "concat".
Layer = Tuple[str, str, int, int, int, bool]


def layer_plan(in_channels: int, n_classes: int, base_channels: int, depth: int) -> List[Layer]:
    """The layers of the network in forward order."""
    widths = [base_channels * 2**level for level in range(depth + 1)]
    plan: List[Layer] = []

    def double(prefix: str, c_in: int, c_out: int) -> None:
        plan.append(("conv", prefix + ".0", c_in, c_out, 3, True))
        plan.append(("conv", prefix + ".2", c_out, c_out, 3, True))

    channels = in_channels
    for level in range(depth):
        double(f"down.{level}", channels, widths[level])
        plan.append(("pool", "", 0, 0, 0, False))
        channels = widths[level]
    double("bottom", channels, widths[depth])
    plan.append(("dropout", "dropout", 0, 0, 0, False))
    for step in range(depth):
        level = depth - 1 - step
        plan.append(("up", f"up.{step}", widths[level + 1], widths[level], 2, False))
        plan.append(("concat", "", 0, 0, 0, False))
        double(f"up_conv.{step}", 2 * widths[level], widths[level])
    plan.append(("conv", "head", widths[0], n_classes, 1, False))
    return plan


def context(depth: int) -> int:
    """Input pixels each side that one output pixel of the unpadded network depends on."""
    return 6 * 2**depth - 4


def halo(depth: int) -> int:
    """The context rounded up to a multiple of ``2**depth``: the border each tile drops."""
    step = 2**depth
    return -(-context(depth) // step) * step


def min_size(depth: int) -> int:
    """The smallest tile of the declared sizes: both halos plus one pooling step."""
    return 2 * halo(depth) + 2**depth


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, kernel_size=3),
        nn.ReLU(inplace=True),
    )


def _crop_to(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The central window of ``features`` with the height and width of ``reference``."""
    height, width = reference.shape[2], reference.shape[3]
    top = (features.shape[2] - height) // 2
    left = (features.shape[3] - width) // 2
    return features[:, :, top : top + height, left : left + width]


class SameSizeUNet(nn.Module):
    """Image ``(N, in_channels, H, W)`` -> foreground probability ``(N, 1, H, W)``.

    The image is mirrored (reflect mode, edge pixel not repeated) by the context on
    the top and left and by the halo plus whatever brings the size to the pooling
    grid on the bottom and right; the unpadded U-Net then sees every pooling on the
    grid anchored ``context`` pixels before the image, as napari-unet's overlap-tile
    prediction does.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 2, base_channels: int = 64, depth: int = 4) -> None:
        super().__init__()
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.depth = depth
        self.step = 2**depth
        self.context = context(depth)
        self.halo = halo(depth)
        self.down = nn.ModuleList(
            [_double_conv(c_in, c_out) for c_in, c_out in zip([in_channels, *widths[:-2]], widths[:-1])]
        )
        self.bottom = _double_conv(widths[-2], widths[-1])
        levels = list(reversed(range(depth)))
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in levels])
        self.up_conv = nn.ModuleList([_double_conv(2 * widths[i], widths[i]) for i in levels])
        self.head = nn.Conv2d(widths[0], n_classes, kernel_size=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The unpadded network: ``(N, C, n, m)`` valid sizes -> class logits, smaller."""
        skips: List[torch.Tensor] = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)  # dropout is the identity at inference
        for index, (up, conv) in enumerate(zip(self.up, self.up_conv)):
            x = up(x)
            x = conv(torch.cat([_crop_to(skips[len(skips) - 1 - index], x), x], dim=1))
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2], x.shape[3]
        bottom = self.halo + (self.step - height % self.step) % self.step
        right = self.halo + (self.step - width % self.step) % self.step
        padded = F.pad(x, [self.context, right, self.context, bottom], mode="reflect")
        logits = self.logits(padded)[:, :, :height, :width]
        probabilities = torch.softmax(logits, dim=1)
        return probabilities[:, 1:].sum(dim=1, keepdim=True)
