"""Helpers for the tests of lazy sources and streamed segmentation."""

from __future__ import annotations

import numpy as np
import torch

from napari_unet import UNet


class RecordingArray:
    """An array-like over a numpy array that records every region read from it
    (as (start, stop, step) per axis), to check that only windows are read."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.ndim = data.ndim
        self.reads: list[tuple] = []

    def __getitem__(self, index):
        index = index if isinstance(index, tuple) else (index,)
        region = []
        for axis, item in enumerate(index):
            if isinstance(item, slice):
                region.append(item.indices(self.shape[axis]))
            else:
                region.append((int(item), int(item) + 1, 1))
        self.reads.append(tuple(region))
        return self.data[index]

    def pixels_read(self, region) -> int:
        return int(np.prod([len(range(*axis)) for axis in region]))


def bright_is_foreground(depth: int = 2, base_channels: int = 2) -> UNet:
    """A tiny untrained model whose foreground probability rises with brightness, so
    that bright objects of a synthetic image come out as objects."""
    torch.manual_seed(0)
    model = UNet(base_channels=base_channels, depth=depth).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                module.weight.abs_()
        model.head.weight.zero_()
        model.head.weight[1] = 1.0
        model.head.bias.copy_(torch.tensor([2.0, 0.0]))
    return model


def small_model(in_channels: int = 1, depth: int = 2) -> UNet:
    torch.manual_seed(1)
    return UNet(in_channels=in_channels, n_classes=2, base_channels=4, depth=depth).eval()
