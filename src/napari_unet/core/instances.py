"""From per-class probabilities to instance labels."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import measure, segmentation

from .config import InstanceConfig


def foreground(probabilities: np.ndarray) -> np.ndarray:
    """Foreground probability (..., H, W) from probabilities (..., K, H, W): 1 - background."""
    return 1.0 - probabilities[..., 0, :, :]


def probabilities_to_labels(probabilities: np.ndarray, config: InstanceConfig | None = None) -> np.ndarray:
    """Instance labels int32 (..., H, W) from probabilities (..., K, H, W).

    Per plane: threshold the foreground probability, label 4-connected components,
    fill holes, drop objects below ``min_size`` px, grow objects by ``expand`` px
    without merging, and number objects 1..n in raster order. Deterministic.
    """
    config = config or InstanceConfig()
    mask = foreground(probabilities) > config.threshold
    labels = np.zeros(mask.shape, np.int32)
    for index in np.ndindex(*mask.shape[:-2]):
        labels[index] = _plane_labels(mask[index], config)
    return labels


def _plane_labels(mask: np.ndarray, config: InstanceConfig) -> np.ndarray:
    labels = measure.label(mask, connectivity=1)
    if config.fill_holes and labels.max() > 0:
        filled = ndimage.binary_fill_holes(labels > 0)
        holes = filled & (labels == 0)
        if holes.any():
            # a hole takes the id of the object that surrounds it
            labels = np.where(holes, segmentation.expand_labels(labels, distance=max(mask.shape)), labels)
    if config.min_size > 0:
        too_small = np.bincount(labels.ravel()) < config.min_size
        too_small[0] = False
        labels = np.where(too_small[labels], 0, labels)
    if config.expand > 0:
        labels = segmentation.expand_labels(labels, distance=config.expand)
    relabeled, _, _ = segmentation.relabel_sequential(labels)
    return relabeled.astype(np.int32)
