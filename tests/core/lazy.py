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


def threshold_model(depth: int = 2, steepness: float = 20.0) -> UNet:
    """A model that passes the normalised image straight through the top level (centre
    taps of 1, everything deeper zero) and calls a pixel foreground where it is
    brighter than 0.5: objects come out exactly as they were drawn."""
    model = UNet(base_channels=2, depth=depth).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        top = [model.down[0][0], model.down[0][2], model.up_conv[-1][0], model.up_conv[-1][2]]
        for conv in top:
            conv.weight[0, 0, 1, 1] = 1.0
        model.up_conv[-1][0].weight[0, 2, 1, 1] = 1.0  # the skip, whichever half of the concatenation it is
        model.head.weight[1, 0] = steepness
        model.head.bias[1] = -steepness / 2
    return model


def drawn_image(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """A uint8 image of a mask: objects bright, background dark, a little noise."""
    rng = np.random.default_rng(seed)
    return (np.where(mask, 200, 30) + rng.integers(0, 20, mask.shape)).astype(np.uint8)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label images hold the same objects up to a renumbering (and the
    same background)."""
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return pairs.shape[1] == len(np.unique(a)) == len(np.unique(b))


def joined_discs() -> np.ndarray:
    """A uint8 image (64, 96) of two bright discs joined by a dimmer neck: with
    :func:`threshold_model` ``(steepness=8)`` one object whose probability dips
    between two peaks (split by the default, one object with split 0)."""
    grid = np.indices((64, 96))
    mask = ((grid[0] - 32) ** 2 + (grid[1] - 30) ** 2 <= 225) | ((grid[0] - 32) ** 2 + (grid[1] - 58) ** 2 <= 225)
    image = drawn_image(mask)
    image[:, 42:46] = np.where(image[:, 42:46] > 100, 140, image[:, 42:46])
    return image


def dented_and_touching_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """Two masks (71, 21, 21) of a stack whose planes lie 4x closer than its pixels
    (spacing (0.25, 1, 1)): a round nucleus (radius 8 px) with a 2-px dent around its
    middle, and two nuclei (radius 6 px) touching along z at a real neck."""
    z, y, x = np.indices((71, 21, 21)).astype(float)
    z, rings = (z - 35) * 0.25, (y - 10) ** 2 + (x - 10) ** 2
    dented = (z**2 + rings <= 64) & ~((np.abs(z) <= 0.3) & (rings > 36))
    touching = ((z - 5.5) ** 2 + rings <= 36) | ((z + 5.5) ** 2 + rings <= 36)
    return dented, touching
