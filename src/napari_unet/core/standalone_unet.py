"""A self-contained U-Net (Ronneberger et al. 2015) for running an exported model.

napari-unet copies this file verbatim into the bioimage.io packages it writes, as
the architecture of their ``pytorch_state_dict`` weights. It needs nothing but
PyTorch: it must not import napari_unet, so that any bioimage.io consumer can run it.

The network is napari-unet's: unpadded 3x3 convolutions, 2x2 max pooling,
crop-and-concatenate skips, 2x2 up-convolutions and a 1x1 head, with the same
submodule names (so napari-unet's state dicts load into it unchanged). Its
:func:`layer_plan` lists the layers in the format of napari-unet's
``napari_unet.core.layer_plan.layer_plan``; napari-unet's tests check that the two agree.

What differs is the interface. :class:`SameSizeUNet` takes an image ``(N, C, H,
W)`` (or a volume ``(N, C, Z, Y, X)`` with ``ndim=3``), mirrors it by the network's
context inside the module and returns an output of the input's size: the
foreground probability (1 minus the softmax probability of class 0), ``(N, 1,
...)``. Declared sizes are ``min_size`` plus multiples of the pooling step on each
axis (others work too, down to one more than the context). Output pixels closer
than the halo to an edge of the input saw mirrored rather than real context; a
tiled consumer discards them (the bioimage.io description declares that halo), and
then every tile equals one pass over the whole image.

A 3D network may pool and convolve some axes at some levels only (kernel 1 and
pooling factor 1 there: anisotropic voxels); ``kernels`` and ``pools`` give the
sizes per level and axis, and each axis then has a context, step and halo of its own.
"""

# typing.List/Tuple: TorchScript reads these annotations on every torch version.
# ruff: noqa: UP006, UP035

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

#: One layer per entry: (kind, submodule, in channels, out channels, kernel, relu).
#: Kinds: "conv", "pool", "dropout", "up" (up-convolution), "concat". The kernel is
#: its side where all sides agree (0 for layers without one), else one size per axis.
Layer = Tuple[str, str, int, int, object, bool]


def _side(kernel: List[int]) -> object:
    return kernel[0] if len(set(kernel)) == 1 else tuple(kernel)


def _sizes(depth: int, ndim: int, kernels: List[List[int]] | None, pools: List[List[int]] | None):
    """Kernel sizes per level (``depth + 1``) and pooling factors per pooling
    (``depth``), one per axis: 3 and 2 everywhere unless given."""
    kernels = [[3] * ndim for _ in range(depth + 1)] if kernels is None else [list(k) for k in kernels]
    pools = [[2] * ndim for _ in range(depth)] if pools is None else [list(p) for p in pools]
    return kernels, pools


def layer_plan(
    in_channels: int,
    n_classes: int,
    base_channels: int,
    depth: int,
    ndim: int = 2,
    kernels: List[List[int]] | None = None,
    pools: List[List[int]] | None = None,
    double_before_pool: bool = False,
) -> List[Layer]:
    """The layers of the network in forward order."""
    kernels, pools = _sizes(depth, ndim, kernels, pools)
    widths = [base_channels * 2**level for level in range(depth + 1)]
    widths2 = [2 * w if double_before_pool else w for w in widths]
    plan: List[Layer] = []

    def double(prefix: str, c_in: int, c_mid: int, c_out: int, kernel: List[int]) -> None:
        plan.append(("conv", prefix + ".0", c_in, c_mid, _side(kernel), True))
        plan.append(("conv", prefix + ".2", c_mid, c_out, _side(kernel), True))

    channels = in_channels
    for level in range(depth):
        double(f"down.{level}", channels, widths[level], widths2[level], kernels[level])
        plan.append(("pool", "", 0, 0, 0, False))
        channels = widths2[level]
    double("bottom", channels, widths[depth], widths2[depth], kernels[depth])
    plan.append(("dropout", "dropout", 0, 0, 0, False))
    channels = widths2[depth]
    for step in range(depth):
        level = depth - 1 - step
        up_out = channels if double_before_pool else widths2[level]
        plan.append(("up", f"up.{step}", channels, up_out, _side(pools[level]), False))
        plan.append(("concat", "", 0, 0, 0, False))
        double(f"up_conv.{step}", up_out + widths2[level], widths2[level], widths2[level], kernels[level])
        channels = widths2[level]
    plan.append(("conv", "head", channels, n_classes, 1, False))
    return plan


def axis_context(kernels: List[int], pools: List[int]) -> int:
    """Input pixels each side that one output pixel depends on along an axis with these
    kernel sizes per level and pooling factors per pooling: four convolutions per
    level (two down, two up) and two at the bottom, each at its level's scale."""
    lost, scale = 0, 1
    for level in range(len(pools)):
        lost += 4 * (kernels[level] - 1) * scale
        scale *= pools[level]
    lost += 2 * (kernels[len(pools)] - 1) * scale
    return lost // 2


def axis_halo(context: int, step: int) -> int:
    """The context rounded up to a multiple of the pooling step: the border each tile drops."""
    return -(-context // step) * step


def context(depth: int) -> int:
    """Input pixels each side that one output pixel of the unpadded 2D network (3x3
    kernels, 2x2 pooling) depends on."""
    return 6 * 2**depth - 4


def halo(depth: int) -> int:
    """The context rounded up to a multiple of ``2**depth``: the border each tile drops."""
    return axis_halo(context(depth), 2**depth)


def min_size(depth: int) -> int:
    """The smallest tile of the declared sizes: both halos plus one pooling step."""
    return 2 * halo(depth) + 2**depth


def _double_conv(c_in: int, c_mid: int, c_out: int, kernel: List[int], conv) -> nn.Sequential:
    return nn.Sequential(
        conv(c_in, c_mid, kernel_size=kernel),
        nn.ReLU(inplace=True),
        conv(c_mid, c_out, kernel_size=kernel),
        nn.ReLU(inplace=True),
    )


def _crop_to(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The central window of ``features`` with the spatial size of ``reference``."""
    for axis in range(2, features.dim()):
        features = features.narrow(axis, (features.shape[axis] - reference.shape[axis]) // 2, reference.shape[axis])
    return features


class SameSizeUNet(nn.Module):
    """Image ``(N, in_channels, H, W)`` -> foreground probability ``(N, 1, H, W)``;
    with ``ndim=3``, ``(N, in_channels, Z, Y, X)`` -> ``(N, 1, Z, Y, X)``.

    Each axis is mirrored (reflect mode, edge pixel not repeated) by its context at
    the start and by its halo plus whatever brings the size to the pooling grid at the
    end; the unpadded U-Net then sees every pooling on the grid anchored ``context``
    pixels before the image, as napari-unet's overlap-tile prediction does.
    ``kernels``/``pools``: sizes per level and axis (default 3 and 2);
    ``double_before_pool``: the 3D U-Net's doubled second convolutions;
    ``up_bias``: whether the up-convolutions have a bias.
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        base_channels: int = 64,
        depth: int = 4,
        ndim: int = 2,
        kernels: List[List[int]] | None = None,
        pools: List[List[int]] | None = None,
        double_before_pool: bool = False,
        up_bias: bool = True,
    ) -> None:
        super().__init__()
        kernels, pools = _sizes(depth, ndim, kernels, pools)
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        up_conv = nn.ConvTranspose2d if ndim == 2 else nn.ConvTranspose3d
        widths = [base_channels * 2**level for level in range(depth + 1)]
        widths2 = [2 * w if double_before_pool else w for w in widths]
        self.ndim = ndim
        self.pools = pools
        self.steps = [1] * ndim
        for factors in pools:
            self.steps = [s * f for s, f in zip(self.steps, factors)]
        self.contexts = [axis_context([k[a] for k in kernels], [p[a] for p in pools]) for a in range(ndim)]
        self.halos = [axis_halo(c, s) for c, s in zip(self.contexts, self.steps)]
        inputs = [in_channels, *widths2[: depth - 1]]
        self.down = nn.ModuleList(
            [_double_conv(inputs[i], widths[i], widths2[i], kernels[i], conv) for i in range(depth)]
        )
        self.bottom = _double_conv(widths2[depth - 1], widths[depth], widths2[depth], kernels[depth], conv)
        up, convs, channels = [], [], widths2[depth]
        for level in reversed(range(depth)):
            up_out = channels if double_before_pool else widths2[level]
            up.append(up_conv(channels, up_out, pools[level], stride=pools[level], bias=up_bias))
            convs.append(_double_conv(up_out + widths2[level], widths2[level], widths2[level], kernels[level], conv))
            channels = widths2[level]
        self.up = nn.ModuleList(up)
        self.up_conv = nn.ModuleList(convs)
        self.head = conv(channels, n_classes, kernel_size=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The unpadded network: valid sizes -> class logits, smaller."""
        skips: List[torch.Tensor] = []
        for level, block in enumerate(self.down):
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, self.pools[level]) if self.ndim == 2 else F.max_pool3d(x, self.pools[level])
        x = self.bottom(x)  # dropout is the identity at inference
        for index, (up, conv) in enumerate(zip(self.up, self.up_conv)):
            x = up(x)
            x = conv(torch.cat([_crop_to(skips[len(skips) - 1 - index], x), x], dim=1))
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad: List[int] = []
        for axis in range(self.ndim - 1, -1, -1):  # F.pad takes the last axis first
            size, step = x.shape[2 + axis], self.steps[axis]
            pad.append(self.contexts[axis])
            pad.append(self.halos[axis] + (step - size % step) % step)
        logits = self.logits(F.pad(x, pad, mode="reflect"))
        for axis in range(2, x.dim()):  # output pixel i is the image's pixel i
            logits = logits.narrow(axis, 0, x.shape[axis])
        probabilities = torch.softmax(logits, dim=1)
        return probabilities[:, 1:].sum(dim=1, keepdim=True)
