"""Where the channels and the stack axes of an image are."""

from __future__ import annotations

import numpy as np

from .errors import NapariUnetError


class ImageShapeError(NapariUnetError, ValueError):
    """An image whose shape does not fit the model."""


def as_image(image) -> np.ndarray:
    """``image`` (an array, or nested lists of numbers) as an ndarray of real numbers
    with at least two axes and at least one pixel; :class:`ImageShapeError` otherwise."""
    try:
        image = np.asarray(image)
    except (TypeError, ValueError) as error:  # ragged lists, objects numpy cannot stack
        raise ImageShapeError(f"cannot use this as an image ({error})") from error
    if image.dtype == object or not (np.issubdtype(image.dtype, np.number) or image.dtype == bool):
        raise ImageShapeError(f"an image must hold numbers, got values of type {image.dtype}")
    if np.iscomplexobj(image):
        raise ImageShapeError("an image must hold real numbers, got complex values")
    if image.ndim < 2:
        raise ImageShapeError(f"need an image with at least 2 dimensions (H, W), got shape {image.shape}")
    if image.size == 0:
        raise ImageShapeError(f"the image is empty (shape {image.shape}): it has no pixels")
    return image


def channels_at_minus3(image: np.ndarray, in_channels: int, channel_axis: int | None = None) -> np.ndarray:
    """A view of ``image`` as ``(*stack, C, H, W)`` with ``C == in_channels``.

    Accepted: ``(H, W)`` and ``(*stack, H, W)`` for one-channel models;
    ``(*stack, C, H, W)`` or ``(*stack, H, W, C)`` (RGB-style) for C-channel models.
    ``channel_axis`` overrides the guess. Stack axes (Z, T, ...) are processed plane
    by plane.
    """
    image = as_image(image)
    if channel_axis is not None:
        axis = channel_axis % image.ndim
        if axis >= image.ndim - 2 and axis != image.ndim - 1:
            raise ImageShapeError(f"channel_axis {channel_axis} is a spatial axis of shape {image.shape}")
        if image.shape[axis] != in_channels:
            raise ImageShapeError(
                f"the model expects {in_channels} channel(s) but axis {channel_axis} of the "
                f"image (shape {image.shape}) has {image.shape[axis]}"
            )
        return np.moveaxis(image, axis, -3) if image.ndim >= 3 else image[None]
    if in_channels == 1:
        if image.ndim == 3 and image.shape[-1] in (3, 4) and image.shape[-2] > 4:
            raise ImageShapeError(
                f"the model expects 1 channel but the image (shape {image.shape}) looks RGB; "
                "convert it to grayscale, or use a model trained on RGB images"
            )
        return image[..., None, :, :]
    if image.ndim >= 3 and image.shape[-1] == in_channels and image.shape[-3] != in_channels:
        return np.moveaxis(image, -1, -3)
    if image.ndim >= 3 and image.shape[-3] == in_channels:
        return image
    raise ImageShapeError(
        f"the model expects {in_channels} channels but the image has shape {image.shape}: "
        f"put the channels first (C, H, W) or last (H, W, C), or pass channel_axis"
    )
