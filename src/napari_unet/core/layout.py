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


def rgb_for_one_channel_message(shape: tuple[int, ...]) -> str:
    """The one message for an RGB image given to a 1-channel model (napari, command
    line and Python alike), with both remedies."""
    channels = tuple(shape)[-1]
    kind = "RGB" if channels == 3 else f"RGBA ({channels} channels)"
    return (
        f"the model expects 1 channel but the image (shape {tuple(shape)}) is {kind}: use a model trained on "
        f"{kind.split()[0]} images (napari: train on the RGB layer; command line: napari-unet train --in-channels "
        f"{channels}), or convert the image to one channel first (napari: right-click the layer > Split RGB)"
    )


def _looks_rgb(shape: tuple[int, ...], axis: int) -> bool:
    return axis == len(shape) - 1 and shape[axis] in (3, 4) and len(shape) == 3 and shape[-2] > 4


def _looks_channels_last(shape: tuple[int, ...]) -> bool:
    """Whether ``shape`` (3 or more axes) ends in a few channels rather than in planes a
    few pixels wide: 2-4 along the last axis, at least 4x as many along the one before."""
    return len(shape) >= 3 and 2 <= shape[-1] <= 4 and shape[-2] >= 4 * shape[-1]


def channels_at_minus3(image: np.ndarray, in_channels: int, channel_axis: int | None = None) -> np.ndarray:
    """A view of ``image`` as ``(*stack, C, H, W)`` with ``C == in_channels``.

    Accepted: ``(H, W)`` and ``(*stack, H, W)`` for one-channel models;
    ``(*stack, C, H, W)`` or ``(*stack, H, W, C)`` (RGB-style) for C-channel models.
    ``channel_axis`` overrides the guess. Stack axes (Z, T, ...) are processed plane
    by plane. The rules are those of :func:`axes_at_minus3`.
    """
    image = as_image(image)
    axes = axes_at_minus3(image.shape, in_channels, channel_axis)
    view = image.transpose([axis for axis in axes if axis is not None])
    return np.expand_dims(view, tuple(i for i, axis in enumerate(axes) if axis is None))


def axes_at_minus3(shape: tuple[int, ...], in_channels: int, channel_axis: int | None = None) -> tuple[int | None, ...]:
    """Where each axis of the ``(*stack, C, H, W)`` view of an image of ``shape`` comes
    from: an axis of the image, or ``None`` for a new length-1 channel axis.

    Decided from the shape alone, so lazy arrays (zarr, dask) are laid out without
    being read; :func:`channels_at_minus3` applies it to in-memory arrays.
    """
    shape = tuple(shape)
    ndim = len(shape)
    if ndim < 2:
        raise ImageShapeError(f"need an image with at least 2 dimensions (H, W), got shape {shape}")
    if channel_axis is not None:
        axis = _axis_index(channel_axis, shape)
        if axis >= ndim - 2 and axis != ndim - 1:
            raise ImageShapeError(f"channel_axis {channel_axis} is a spatial axis of shape {shape}")
        if in_channels == 1 and _looks_rgb(shape, axis):
            raise ImageShapeError(rgb_for_one_channel_message(shape))
        if shape[axis] != in_channels:
            raise ImageShapeError(
                f"the model expects {in_channels} channel(s) but axis {channel_axis} of the "
                f"image (shape {shape}) has {shape[axis]}"
            )
        return _moved_to_minus3(ndim, axis) if ndim >= 3 else (None, 0, 1)
    if in_channels == 1:
        if _looks_rgb(shape, ndim - 1):
            raise ImageShapeError(rgb_for_one_channel_message(shape))
        if ndim >= 3 and shape[-1] == 1:  # (..., H, W, 1): one channel, last, not planes one pixel wide
            return _moved_to_minus3(ndim, ndim - 1)
        if _looks_channels_last(shape):  # planes of (W, 2), say, would be segmented as images 2 px wide
            raise ImageShapeError(
                f"the model expects 1 channel but the image (shape {shape}) looks like {shape[-1]} channels last "
                f"(..., H, W, C): segment one channel of it (e.g. image[..., 0]), or use a model trained on "
                f"{shape[-1]} channels (napari-unet train --in-channels {shape[-1]})"
            )
        return (*range(ndim - 2), None, ndim - 2, ndim - 1)
    if ndim >= 3 and shape[-1] == in_channels and shape[-3] != in_channels:
        return _moved_to_minus3(ndim, ndim - 1)
    if ndim >= 3 and shape[-3] == in_channels:
        return tuple(range(ndim))
    trained = f"the model was trained on images of {in_channels} channels{' (RGB)' if in_channels == 3 else ''}"
    candidates = [axis for axis in range(ndim - 2) if shape[axis] == in_channels]
    if candidates:  # e.g. (C, Z, Y, X): the channels are there, not where they are looked for
        axis = candidates[0]
        raise ImageShapeError(
            f"{trained}; in the image (shape {shape}) they are not next to the planes: if axis {axis} holds them, "
            f"say so (command line: --channel-axis {axis}; Python: channel_axis={axis}; napari: move that axis "
            "to the front or the end of the layer, e.g. with the layer's Transpose)"
        )
    example = ", e.g. an RGB layer" if in_channels == 3 else ""
    if in_channels == 3 and ndim == 3 and shape[-1] == 4:
        raise ImageShapeError(
            f"{trained} but the image (shape {shape}) is RGBA: drop its alpha channel (Python: image[..., :3]; "
            "napari: right-click the layer > Split RGB and keep three), or use a model trained on 4 channels"
        )
    raise ImageShapeError(
        f"{trained} but the image (shape {shape}) has no axis of length {in_channels}: give it an image with its "
        f"{in_channels} channels first (C, H, W) or last (H, W, C) (napari: a layer of that shape{example}), or use "
        "a model trained on images like this one"
    )


def _axis_index(channel_axis: int, shape: tuple[int, ...]) -> int:
    """``channel_axis`` as an index into ``shape`` (negative counts from the end)."""
    if not -len(shape) <= channel_axis < len(shape):
        raise ImageShapeError(
            f"channel axis {channel_axis} does not exist in an image of {len(shape)} axes (shape {tuple(shape)})"
        )
    return channel_axis % len(shape)


def _moved_to_minus3(ndim: int, axis: int) -> tuple[int, ...]:
    """The axis order of ``np.moveaxis(image, axis, -3)``."""
    order = [a for a in range(ndim) if a != axis]
    order.insert(ndim - 3, axis)
    return tuple(order)


def channels_before_spatial(
    image: np.ndarray, in_channels: int, channel_axis: int | None = None, spatial_dims: int = 2
) -> np.ndarray:
    """A view of ``image`` as ``(*stack, C, *spatial)`` with ``C == in_channels`` and
    ``spatial_dims`` spatial axes last: :func:`channels_at_minus3` for images (2) and
    for volumes (3: ``(Z, Y, X)``, ``(C, Z, Y, X)``, ``(Z, Y, X, C)``, stacks of them).
    """
    if spatial_dims == 2:
        return channels_at_minus3(image, in_channels, channel_axis)
    image = as_image(image)
    if image.ndim < spatial_dims:
        raise ImageShapeError(
            f"a 3D U-Net needs a volume (Z, Y, X), got an image of shape {image.shape}: use a 2D network for it"
        )
    first_spatial = image.ndim - spatial_dims
    if channel_axis is not None:
        axis = _axis_index(channel_axis, image.shape)
        if axis >= first_spatial and axis != image.ndim - 1:
            raise ImageShapeError(f"channel_axis {channel_axis} is a spatial axis of shape {image.shape}")
        if in_channels == 1 and _looks_rgb(image.shape, axis):
            raise ImageShapeError(rgb_for_one_channel_message(image.shape))
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
            raise ImageShapeError(rgb_for_one_channel_message(image.shape))
        if image.ndim > spatial_dims and image.shape[-1] == 1:  # (..., Z, Y, X, 1): the channel, last
            return np.moveaxis(image, -1, -spatial_dims - 1)
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
        f"put the channels first {channels_first} or last {channels_last}, or say which axis holds them "
        "(Python: channel_axis=..., command line: --channel-axis)"
    )
