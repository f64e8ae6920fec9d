"""Where the channels and the stack axes of an image are."""

from __future__ import annotations

import numpy as np

from .errors import NapariUnetError


class ImageShapeError(NapariUnetError, ValueError):
    """An image whose shape does not fit the model."""


def channels_at_minus3(image: np.ndarray, in_channels: int, channel_axis: int | None = None) -> np.ndarray:
    """A view of ``image`` as ``(*stack, C, H, W)`` with ``C == in_channels``.

    Accepted: ``(H, W)`` and ``(*stack, H, W)`` for one-channel models;
    ``(*stack, C, H, W)`` or ``(*stack, H, W, C)`` (RGB-style) for C-channel models.
    ``channel_axis`` overrides the guess. Stack axes (Z, T, ...) are processed plane
    by plane.
    """
    return channels_before_spatial(image, in_channels, channel_axis, spatial_dims=2)


def channels_before_spatial(
    image: np.ndarray, in_channels: int, channel_axis: int | None = None, spatial_dims: int = 2
) -> np.ndarray:
    """A view of ``image`` as ``(*stack, C, *spatial)`` with ``C == in_channels`` and
    ``spatial_dims`` spatial axes last: :func:`channels_at_minus3` for images (2) and
    for volumes (3: ``(Z, Y, X)``, ``(C, Z, Y, X)``, ``(Z, Y, X, C)``, stacks of them).
    """
    image = np.asarray(image)
    names = "(Z, Y, X)" if spatial_dims == 3 else "(H, W)"
    if image.ndim < spatial_dims:
        raise ImageShapeError(f"need an image with at least {spatial_dims} dimensions {names}, got shape {image.shape}")
    first_spatial = image.ndim - spatial_dims
    if channel_axis is not None:
        axis = channel_axis % image.ndim
        if axis >= first_spatial and axis != image.ndim - 1:
            raise ImageShapeError(f"channel_axis {channel_axis} is a spatial axis of shape {image.shape}")
        if image.shape[axis] != in_channels:
            raise ImageShapeError(
                f"the model expects {in_channels} channel(s) but axis {channel_axis} of the "
                f"image (shape {image.shape}) has {image.shape[axis]}"
            )
        if image.ndim > spatial_dims:
            return np.moveaxis(image, axis, -spatial_dims - 1)
        return image[None]
    if in_channels == 1:
        if image.ndim == spatial_dims + 1 and image.shape[-1] in (3, 4) and image.shape[-2] > 4:
            raise ImageShapeError(
                f"the model expects 1 channel but the image (shape {image.shape}) looks RGB; "
                "convert it to grayscale, or use a model trained on RGB images"
            )
        return np.expand_dims(image, -spatial_dims - 1)
    at = -spatial_dims - 1
    if image.ndim > spatial_dims and image.shape[-1] == in_channels and image.shape[at] != in_channels:
        return np.moveaxis(image, -1, at)
    if image.ndim > spatial_dims and image.shape[at] == in_channels:
        return image
    channels_first = "(C, Z, Y, X)" if spatial_dims == 3 else "(C, H, W)"
    channels_last = "(Z, Y, X, C)" if spatial_dims == 3 else "(H, W, C)"
    raise ImageShapeError(
        f"the model expects {in_channels} channels but the image has shape {image.shape}: "
        f"put the channels first {channels_first} or last {channels_last}, or pass channel_axis"
    )
