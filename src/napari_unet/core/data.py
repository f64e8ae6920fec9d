"""Training samples: augmented valid-size tiles with their targets and weights.

Every annotated plane is prepared once (normalised image, separation target,
weight map; paper section 3); each sample is then one random coordinate transform
(flip, rotation, elastic deformation) applied to all three, so they stay aligned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import geometry
from .annotation import image_like_reason, looks_like_image_message
from .augment import jitter_intensity, resample, resample_cubic, sampling_grid, tile_center
from .config import IGNORE_LABEL, AugmentConfig, NormalizationConfig, WeightMapConfig
from .errors import NapariUnetError
from .layout import channels_at_minus3
from .normalize import normalize
from .weights import separation_target, weight_map


class TrainingDataError(NapariUnetError, ValueError):
    """Training images and annotations that cannot be used as they are."""


@dataclass(frozen=True)
class PreparedPlane:
    """One annotated plane: image (C, H, W) float32; ``annotation`` (2, H, W) float32
    holds the separation target (0/1) and the weight map, sampled together."""

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


@dataclass(frozen=True)
class Batch:
    """Samples of one step: image (B, C, th, tw), target (B, oh, ow) int64, weights (B, oh, ow)."""

    image: np.ndarray
    target: np.ndarray
    weights: np.ndarray


def _pair_planes(image: np.ndarray, labels: np.ndarray, in_channels: int, channel_axis: int | None, name: str):
    data = channels_at_minus3(image, in_channels, channel_axis)
    labels = np.asarray(labels)
    reason = image_like_reason(labels)
    if reason:
        raise TrainingDataError(looks_like_image_message(f"{name}: the labels", reason))
    if not np.issubdtype(labels.dtype, np.integer):
        labels = labels.astype(np.int64)
    if labels.shape != data.shape[:-3] + data.shape[-2:]:
        raise TrainingDataError(
            f"{name}: labels of shape {labels.shape} do not match the image "
            f"(expected {data.shape[:-3] + data.shape[-2:]} for image shape {np.shape(image)})"
        )
    if labels.size and labels.min() < IGNORE_LABEL:
        raise TrainingDataError(f"{name}: label values below {IGNORE_LABEL} are not allowed")
    for index in np.ndindex(*data.shape[:-3]):
        yield data[index], labels[index]


def prepare(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    in_channels: int,
    normalization: NormalizationConfig,
    weights: WeightMapConfig,
    channel_axis: int | None = None,
) -> list[PreparedPlane]:
    """Prepare every annotated plane of ``images`` with ``labels``.

    ``images[i]`` is any layout accepted by prediction (stacks count plane by plane)
    and ``labels[i]`` has the same spatial shape (and stack axes): 0 background,
    1.. cells, -1 unannotated. ``channel_axis`` says where the channels of every
    image are (default: guessed, see :func:`~napari_unet.core.layout.channels_at_minus3`).
    Planes without any annotated pixel are skipped.
    """
    if len(images) != len(labels):
        raise TrainingDataError(f"{len(images)} image(s) but {len(labels)} label image(s): give one per image")
    if not images:
        raise TrainingDataError("no training images given")
    planes = []
    for number, (image, label_image) in enumerate(zip(images, labels), start=1):
        for plane, plane_labels in _pair_planes(
            image, label_image, in_channels, channel_axis, f"training pair {number}"
        ):
            if not (plane_labels != IGNORE_LABEL).any():
                continue
            if not np.isfinite(plane).all():
                raise TrainingDataError(f"training pair {number}: the image holds NaN or infinite values (not finite)")
            w = weight_map(plane_labels, weights.w0, weights.sigma, balance_classes=weights.balance_classes)
            planes.append(
                PreparedPlane(
                    image=normalize(plane, normalization),
                    annotation=np.stack([separation_target(plane_labels).astype(np.float32), w]),
                    annotated=np.flatnonzero(w > 0),
                )
            )
    if not planes:
        raise TrainingDataError("the annotations are empty: paint some cells (and background) first")
    if not any(plane.target.any() for plane in planes):
        raise TrainingDataError("the annotations hold no cells: paint at least one cell")
    return planes


class SampleStream:
    """Random augmented training batches from prepared planes.

    Each sample: pick a plane (weighted by its annotated area), centre a tile of
    input size ``tile`` on a random annotated pixel, draw one coordinate transform,
    and resample image (bicubic), target and weights (nearest) through it.
    Target and weights cover only the tile's output (its centre).
    """

    def __init__(
        self,
        planes: list[PreparedPlane],
        tile: int,
        depth: int,
        augment: AugmentConfig,
        rng: np.random.Generator,
    ) -> None:
        geometry.output_size(tile, depth)  # raises a clear error for invalid sizes
        self.planes = planes
        self.tile = tile
        self.context = geometry.context(depth)
        self.output = geometry.output_size(tile, depth)
        self.augment = augment
        self.rng = rng
        areas = np.array([len(p.annotated) for p in planes], float)
        self.plane_odds = areas / areas.sum()

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        plane = self.planes[self.rng.choice(len(self.planes), p=self.plane_odds)]
        flat = plane.annotated[self.rng.integers(len(plane.annotated))]
        centre = np.array(np.unravel_index(flat, plane.target.shape))
        centre += self.rng.integers(-self.output // 4, self.output // 4 + 1, size=2)
        origin = centre - self.tile // 2  # integer, so unaugmented samples are exact crops
        tile_hw = (self.tile, self.tile)
        coords = sampling_grid(tile_hw, tile_center(tuple(origin), tile_hw), self.rng, self.augment)
        inner = coords[:, self.context : self.context + self.output, self.context : self.context + self.output]
        image = resample_cubic(plane.image, coords)
        image = jitter_intensity(image, self.rng, self.augment)
        target, weights = resample(plane.annotation, inner, order=0)  # nearest: ignore stays 0
        return image, target, weights

    def batch(self, size: int) -> Batch:
        samples = [self.sample() for _ in range(size)]
        return Batch(
            image=np.stack([s[0] for s in samples]).astype(np.float32),
            target=np.stack([s[1] for s in samples]).astype(np.int64),
            weights=np.stack([s[2] for s in samples]).astype(np.float32),
        )


def default_tile(depth: int, output: int = 128) -> int:
    """A training tile whose output is at least ``output`` px, rounded to the pooling grid."""
    return geometry.input_size_for_output(output, depth)
