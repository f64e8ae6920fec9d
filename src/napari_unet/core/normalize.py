"""Per-image percentile normalisation (shared by training and prediction)."""

from __future__ import annotations

import logging

import numpy as np

from .config import NormalizationConfig
from .errors import NapariUnetError

log = logging.getLogger(__name__)


class ImageValueError(NapariUnetError, ValueError):
    """An image whose values cannot be used (e.g. no finite value at all)."""


def normalize(plane: np.ndarray, config: NormalizationConfig) -> np.ndarray:
    """Map each channel of ``plane`` (C, H, W) so its low/high percentiles go to 0/1.

    Returns float32 (C, H, W). A constant channel becomes all zeros. Volumes
    (C, Z, Y, X) are normalised as a whole, per channel. The percentiles
    are taken over the finite values only; NaN and infinite pixels (a dead pixel, a
    failed division upstream) become 0 after normalisation, with a logged warning, so
    they cannot blank the whole result. A channel without any finite value raises
    :class:`ImageValueError`.
    """
    data = np.asarray(plane, dtype=np.float32)
    flat = data.reshape(data.shape[0], -1)
    finite = np.isfinite(flat)
    every_value_finite = bool(finite.all())
    if every_value_finite:
        low, high = np.percentile(flat, [config.low, config.high], axis=1).astype(np.float32)
    else:
        empty = np.flatnonzero(~finite.any(axis=1))
        if empty.size:
            raise ImageValueError(
                f"channel {int(empty[0])} of an image plane has no finite value (all NaN or infinite): "
                "nothing to segment"
            )
        log.warning(
            "%d pixel value(s) are NaN or infinite: normalising with the finite values and setting those to 0",
            int(flat.size - finite.sum()),
        )
        masked = np.where(finite, flat, np.nan)
        low, high = np.nanpercentile(masked, [config.low, config.high], axis=1).astype(np.float32)
    scale = np.where(high - low > 1e-12, high - low, 1.0).astype(np.float32)
    per_channel = (-1,) + (1,) * (data.ndim - 1)
    result = (data - low.reshape(per_channel)) / scale.reshape(per_channel)
    if not every_value_finite:
        result[~finite.reshape(data.shape)] = 0.0
    return result
