"""Training data: annotated images checked and prepared once per plane (normalised
image, separation target, weight map; paper section 3), for :mod:`.samples` to draw
augmented tiles from."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .annotation import compact_ids
from .config import IGNORE_LABEL, NormalizationConfig
from .errors import NapariUnetError
from .io import read_image, read_labels
from .label_checks import (
    ids_as_image_warning,
    ids_changing_between_planes_warning,
    image_like_reason,
    labels_warning,
    looks_like_image_message,
    out_of_range_message,
)
from .layout import channels_before_spatial
from .normalize import normalize
from .object_size import CompleteObjects, complete_objects
from .train_config import WeightMapConfig
from .unpainted import Unpainted, cell_look, unpainted_cells, unpainted_cells_warning
from .weights import separation_target, weight_map

log = logging.getLogger(__name__)


class TrainingDataError(NapariUnetError, ValueError):
    """Training images and annotations that cannot be used as they are."""


@dataclass(frozen=True)
class PreparedPlane:
    """One annotated plane: image (C, H, W) float32; ``annotation`` (2, H, W) float32
    holds the separation target (0/1) and the weight map, sampled together;
    ``objects`` the sizes and shapes of its completely annotated objects
    (:func:`~napari_unet.core.object_size.complete_objects`); ``warnings`` what
    the user should hear about its annotation (also logged)."""

    image: np.ndarray
    annotation: np.ndarray

    @property
    def target(self) -> np.ndarray:
        return self.annotation[0]

    @property
    def weights(self) -> np.ndarray:
        return self.annotation[1]

    #: Flat indices of annotated pixels (weight > 0): where sample centres are drawn.
    annotated: np.ndarray
    objects: CompleteObjects = field(default_factory=CompleteObjects.none)
    warnings: tuple[str, ...] = ()


def data_digest(images: Sequence, labels: Sequence) -> str:
    """A fingerprint of training images and labels (their shapes, dtypes and values),
    to tell whether a resumed run has the data it was started with."""
    digest = hashlib.blake2b(digest_size=16)
    for array in (*images, *labels):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.shape} {array.dtype.str};".encode())
        digest.update(array.view(np.uint8).reshape(-1) if array.size else b"")
    return digest.hexdigest()


def as_image_list(images, read=read_image) -> list:
    """``images`` as a list of images: a single array (anything with a shape: numpy,
    dask, zarr) or path is one image, and stays one (a stack is one image of several
    planes, not a list of planes); a list or tuple is kept as it is. Paths (str or
    PathLike) are read with ``read`` (label images: :func:`~napari_unet.core.io.read_labels`)."""
    if hasattr(images, "shape") or isinstance(images, (str, os.PathLike)):
        images = [images]
    if not isinstance(images, (list, tuple)):
        raise TrainingDataError(
            f"expected an image (an array or a file path) or a list of them, got {type(images).__name__}"
        )
    return [read(image) if isinstance(image, (str, os.PathLike)) else image for image in images]


def _channels_hint(image_shape: tuple[int, ...], labels_shape: tuple[int, ...], in_channels: int) -> str:
    """What to say when the labels match the image without one of its axes, of a
    length other than the model's channel count: that axis may hold channels."""
    for axis, length in enumerate(image_shape):
        if length != in_channels and image_shape[:axis] + image_shape[axis + 1 :] == tuple(labels_shape):
            return (
                f". If axis {axis} of the image holds {length} channels, train a model for them "
                f"(command line: --in-channels {length} --channel-axis {axis})"
            )
    return ""


def checked_pair(
    image: np.ndarray, labels: np.ndarray, in_channels: int, channel_axis: int | None, name: str, ndim: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """``image`` as (*stack, C, *spatial) and its ``labels`` as integers of shape
    (*stack, *spatial), or an error that names ``name``: an image the model cannot
    take, labels that look like an image, of another shape, or below -1."""
    data = channels_before_spatial(image, in_channels, channel_axis, ndim)
    labels = np.asarray(labels)
    reason = image_like_reason(labels)
    if reason:
        raise TrainingDataError(looks_like_image_message(f"{name}: the labels", reason))
    if not np.issubdtype(labels.dtype, np.integer):
        labels = labels.astype(np.int64)
    expected = data.shape[: -ndim - 1] + data.shape[-ndim:]
    if labels.shape == (*expected, 1):  # labels shaped like an (..., H, W, 1) image, its last axis the channel
        labels = labels[..., 0]
    if labels.shape != expected:
        raise TrainingDataError(
            f"{name}: labels of shape {labels.shape} do not match the image "
            f"(expected {expected} for image shape {np.shape(image)})"
            + _channels_hint(np.shape(image), labels.shape, in_channels)
        )
    message = out_of_range_message(labels, name)
    if message:
        raise TrainingDataError(message)
    return data, labels


def validation_pairs(
    images, labels, *, in_channels: int, channel_axis: int | None = None, ndim: int = 2, names=None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, labels) pairs to validate on, checked before training starts as the
    training pairs are (:func:`checked_pair`: found at the first validation, a bad pair
    ended the run there with a traceback and no model written). Labels become
    integers of the image's (*stack, *spatial) shape; labels without an annotated
    pixel or without a cell are refused (a prediction of nothing would score AP 1
    against them), as are images that are constant or not finite. ``names``:
    what messages call the pairs (default "validation pair N")."""
    images, labels = as_image_list(images), as_image_list(labels, read_labels)
    if len(images) != len(labels):
        raise TrainingDataError("give one validation label image per validation image")
    if names is not None and len(names) != len(images):
        raise TrainingDataError(f"{len(images)} validation image(s) but {len(names)} name(s)")
    pairs = []
    for number, (image, label_image) in enumerate(zip(images, labels), start=1):
        name = names[number - 1] if names is not None else f"validation pair {number}"
        data, checked = checked_pair(image, label_image, in_channels, channel_axis, name, ndim)
        if not (checked != IGNORE_LABEL).any():
            raise TrainingDataError(
                f"{name}: the validation labels are unannotated (-1) everywhere, so there is nothing to score "
                "against: give labels with the cells (and background) of the validation image"
            )
        if not (checked > 0).any():
            raise TrainingDataError(
                f"{name}: the validation labels hold no cell, so an untrained network, finding nothing, would score "
                "best and its weights be kept: give labels with the cells of the validation image"
            )
        _refuse_unusable_values(data, f"{name}: the validation image", "its labels were made on")
        warning = labels_warning(checked, f"the validation labels of {name}")
        if warning:
            log.warning(warning)
        pairs.append((image, checked))
    return pairs


def _refuse_unusable_values(image: np.ndarray, what: str, painted_on: str, constant: bool = True) -> None:
    """Refuse ``image`` (``what``: how messages call it) if any value is NaN or
    infinite, or (``constant``) if every pixel is the same: nothing to learn or score
    (``painted_on``: the image that would have done instead)."""
    if not np.isfinite(image).all():
        raise TrainingDataError(f"{what} holds NaN or infinite values (not finite): replace them (e.g. with 0) first")
    if constant and image.min() == image.max():
        raise TrainingDataError(
            f"{what} is constant (every pixel {image.flat[0]:g}), so there is nothing to learn or score: "
            f"choose the image {painted_on}"
        )


def _pair_planes(
    image: np.ndarray, labels: np.ndarray, in_channels: int, channel_axis: int | None, name: str, ndim: int = 2
):
    data, labels = checked_pair(image, labels, in_channels, channel_axis, name, ndim)
    warning = labels_warning(labels, f"the labels of {name}")
    if warning:
        log.warning(warning)
    labels = compact_ids(labels)
    for index in np.ndindex(*data.shape[: -ndim - 1]):
        yield data[index], labels[index]


def _unpainted_in_planes(image: np.ndarray, labels: np.ndarray, ndim: int) -> tuple[list[Unpainted], int]:
    """:func:`~.unpainted.unpainted_cells` of a plane (H, W), or of each annotated plane
    of a volume (Z, Y, X): a volume annotated on a few planes, the rest -1, is never
    annotated nearly everywhere, while each of its planes may hold cells left 0.
    Returns the results (where there was something to compare) and how many
    annotated planes were looked at."""
    pairs = [(image, labels)] if ndim == 2 else [pair for pair in zip(image, labels) if (pair[1] != IGNORE_LABEL).any()]
    with_cells = [index for index, (_, plane_labels) in enumerate(pairs) if (plane_labels > 0).any()]
    # a plane painted 0 all over between planes with cells is compared with their cells; one beyond
    # them (a volume's end, out-of-focus light of the cells) is left alone, as 0 is right there
    inside = range(with_cells[0], with_cells[-1] + 1) if ndim == 3 and with_cells else range(0)
    look = cell_look(pairs) if len(inside) > len(with_cells) else None  # (only where such a plane is)
    found = [
        unpainted_cells(plane, plane_labels, look if index in inside else None)
        for index, (plane, plane_labels) in enumerate(pairs)
    ]
    return [result for result in found if result is not None], len(pairs)


#: Why cells without any painted background cannot be trained on: the network would
#: learn from the cells alone (and the gaps cut between touching ones) that nearly
#: everything is a cell; a new user's 8 such cells trained a model whose
#: segmentation scored AP@0.5 0.02, its loss looking excellent all along.
NO_BACKGROUND = (
    "the annotations hold cells but no background (0): paint background around and between some cells "
    "(Annotate: Paint background), or the network learns that everything is a cell"
)


#: Below this share of the annotated pixels, painted background is warned about as too
#: little to learn from (cells with a few strokes of background; a complete annotation
#: of crowded cells still paints the gaps between them).
LITTLE_BACKGROUND = 0.02


def prepare(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    in_channels: int,
    normalization: NormalizationConfig,
    weights: WeightMapConfig,
    channel_axis: int | None = None,
    names: Sequence[str] | None = None,
    ndim: int = 2,
    spacing: Sequence[float] | None = None,
) -> list[PreparedPlane]:
    """Prepare every annotated plane of ``images`` with ``labels`` (lists, or one
    array each: :func:`as_image_list`).

    ``images[i]`` is any layout accepted by prediction (stacks count plane by plane)
    and ``labels[i]`` has the same spatial shape (and stack axes): 0 background,
    1.. cells, -1 unannotated. ``channel_axis`` says where the channels of every
    image are (default: guessed, see :func:`~napari_unet.core.layout.channels_at_minus3`).
    Planes without any annotated pixel are skipped. Messages call the pairs by their
    ``names`` (e.g. the label files) or "training pair N".

    ``ndim=3`` (3D models): each volume (Z, Y, X) is prepared as a whole, with the
    3D weight map (physical distances for ``spacing``); unannotated planes (-1)
    simply weigh 0.
    """
    images, labels = as_image_list(images), as_image_list(labels, read_labels)
    if len(images) != len(labels):
        raise TrainingDataError(f"{len(images)} image(s) but {len(labels)} label image(s): give one per image")
    if not images:
        raise TrainingDataError("no training images given")
    planes, background, cells = [], 0, 0  # painted pixels of each kind
    if names is not None and len(names) != len(images):
        raise TrainingDataError(f"{len(images)} image(s) but {len(names)} name(s)")
    for number, (image, label_image) in enumerate(zip(images, labels), start=1):
        name = names[number - 1] if names is not None else f"training pair {number}"
        first, unpainted, checked = len(planes), [], 0
        for plane, plane_labels in _pair_planes(image, label_image, in_channels, channel_axis, name, ndim):
            if not (plane_labels != IGNORE_LABEL).any():
                continue
            painted_cells = int(np.count_nonzero(plane_labels > 0))
            background += int(np.count_nonzero(plane_labels == 0))
            cells += painted_cells
            # a constant plane annotated as background alone (an empty frame) is fine
            _refuse_unusable_values(
                plane, f"the image of {name}", "the cells were painted on", constant=painted_cells > 0
            )
            plane_warnings = [
                ids_changing_between_planes_warning(plane_labels, name) if ndim == 3 else None,
                # a label image given as the image shows in its first annotated plane
                ids_as_image_warning(plane, plane_labels, name) if len(planes) == first else None,
            ]
            plane_warnings = tuple(warning for warning in plane_warnings if warning)
            for warning in plane_warnings:
                log.warning(warning)
            normalized = normalize(plane, normalization)
            found, looked_at = _unpainted_in_planes(normalized.mean(axis=0), plane_labels, ndim)
            unpainted += found
            checked += looked_at
            w = weight_map(
                plane_labels,
                weights.w0,
                weights.sigma,
                balance_classes=weights.balance_classes,
                spacing=spacing if ndim == 3 else None,
            )
            planes.append(
                PreparedPlane(
                    image=normalized,
                    annotation=np.stack([separation_target(plane_labels).astype(np.float32), w]),
                    annotated=np.flatnonzero(w > 0),
                    objects=complete_objects(plane_labels),
                    warnings=plane_warnings,
                )
            )
        warning = unpainted_cells_warning(unpainted, checked, name)
        if warning:
            log.warning(warning)
            planes[first] = replace(planes[first], warnings=(*planes[first].warnings, warning))
    if not planes:
        raise TrainingDataError("the annotations are empty: paint some cells (and background) first")
    if not any(plane.target.any() for plane in planes):
        warnings = [warning for plane in planes for warning in plane.warnings]
        if warnings:
            raise TrainingDataError(f"no cell is left once the gaps between touching cells are cut. {warnings[0]}")
        raise TrainingDataError("the annotations hold no cells: paint at least one cell")
    if not background:
        raise TrainingDataError(NO_BACKGROUND)
    if background < LITTLE_BACKGROUND * (background + cells):
        warning = (
            f"only {background} background (0) pixels are painted, {background / (background + cells):.1%} of the "
            "annotated ones: the network sees almost no background and learns that nearly everything is a cell; "
            "paint background around and between some cells"
        )
        log.warning(warning)
        planes[0] = replace(planes[0], warnings=(*planes[0].warnings, warning))
    return planes
