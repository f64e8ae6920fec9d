"""Where the channels and the stack axes of an image are."""

from __future__ import annotations

import numpy as np

from .errors import NapariUnetError


class ImageShapeError(NapariUnetError, ValueError):
    """An image whose shape does not fit the model."""


def rgb_for_one_channel_message(shape: tuple[int, ...]) -> str:
    """The one message for an RGB image given to a 1-channel model (napari, command
    line and Python alike), with both remedies."""
    return (
        f"the model expects 1 channel but the image (shape {tuple(shape)}) is RGB: use a model trained on RGB "
        "images (napari: train on the RGB layer; command line: napari-unet train --in-channels 3), or convert "
        "the image to one channel first (napari: right-click the layer > Split RGB)"
    )


def _looks_rgb(shape: tuple[int, ...], axis: int) -> bool:
    return axis == len(shape) - 1 and shape[axis] in (3, 4) and len(shape) == 3 and shape[-2] > 4


def channels_at_minus3(image: np.ndarray, in_channels: int, channel_axis: int | None = None) -> np.ndarray:
    """A view of ``image`` as ``(*stack, C, H, W)`` with ``C == in_channels``.

    Accepted: ``(H, W)`` and ``(*stack, H, W)`` for one-channel models;
    ``(*stack, C, H, W)`` or ``(*stack, H, W, C)`` (RGB-style) for C-channel models.
    ``channel_axis`` overrides the guess. Stack axes (Z, T, ...) are processed plane
    by plane.
    """
    image = np.asarray(image)
    if image.ndim < 2:
        raise ImageShapeError(f"need an image with at least 2 dimensions (H, W), got shape {image.shape}")
    if channel_axis is not None:
        axis = channel_axis % image.ndim
        if axis >= image.ndim - 2 and axis != image.ndim - 1:
            raise ImageShapeError(f"channel_axis {channel_axis} is a spatial axis of shape {image.shape}")
        if in_channels == 1 and _looks_rgb(image.shape, axis):
            raise ImageShapeError(rgb_for_one_channel_message(image.shape))
        if image.shape[axis] != in_channels:
            raise ImageShapeError(
                f"the model expects {in_channels} channel(s) but axis {channel_axis} of the "
                f"image (shape {image.shape}) has {image.shape[axis]}"
            )
        return np.moveaxis(image, axis, -3) if image.ndim >= 3 else image[None]
    if in_channels == 1:
        if _looks_rgb(image.shape, image.ndim - 1):
            raise ImageShapeError(rgb_for_one_channel_message(image.shape))
        return image[..., None, :, :]
    if image.ndim >= 3 and image.shape[-1] == in_channels and image.shape[-3] != in_channels:
        return np.moveaxis(image, -1, -3)
    if image.ndim >= 3 and image.shape[-3] == in_channels:
        return image
    raise ImageShapeError(
        f"the model expects {in_channels} channels but the image has shape {image.shape}: "
        f"put the channels first (C, H, W) or last (H, W, C), or say which axis holds them "
        "(Python: channel_axis=..., command line: --channel-axis)"
    )
