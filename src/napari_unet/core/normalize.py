"""Per-image percentile normalisation (shared by training and prediction)."""

from __future__ import annotations

import numpy as np

from .config import NormalizationConfig


def normalize(plane: np.ndarray, config: NormalizationConfig) -> np.ndarray:
    """Map each channel of ``plane`` (C, H, W) so its low/high percentiles go to 0/1.

    Returns float32 (C, H, W). A constant channel becomes all zeros. Volumes
    (C, Z, Y, X) are normalised as a whole, per channel.
    """
    data = np.asarray(plane, dtype=np.float32)
    flat = data.reshape(data.shape[0], -1)
    low, high = np.percentile(flat, [config.low, config.high], axis=1).astype(np.float32)
    scale = np.where(high - low > 1e-12, high - low, 1.0).astype(np.float32)
    per_channel = (-1,) + (1,) * (data.ndim - 1)
    return (data - low.reshape(per_channel)) / scale.reshape(per_channel)
