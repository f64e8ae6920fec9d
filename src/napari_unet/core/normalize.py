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
    low, high = percentile_range(data.reshape(data.shape[0], -1), config)
    return normalize_with(data, low, high)


def percentile_range(values: np.ndarray, config: NormalizationConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel low/high percentiles (float32, shape (C,)) of ``values`` (C, N),
    over the finite values only (a warning counts the others); a channel without
    any finite value raises :class:`ImageValueError`."""
    finite = np.isfinite(values)
    if finite.all():
        return np.percentile(values, [config.low, config.high], axis=1).astype(np.float32)
    empty = np.flatnonzero(~finite.any(axis=1))
    if empty.size:
        raise ImageValueError(
            f"channel {int(empty[0])} of an image plane has no finite value (all NaN or infinite): nothing to segment"
        )
    log.warning(
        "%d pixel value(s) are NaN or infinite: normalising with the finite values and setting those to 0",
        int(values.size - finite.sum()),
    )
    masked = np.where(finite, values, np.nan)
    return np.nanpercentile(masked, [config.low, config.high], axis=1).astype(np.float32)


def normalize_with(data: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map channels (C, ...) of ``data`` so that ``low``/``high`` (shape (C,)) go to
    0/1, float32: the same arithmetic for a whole plane and for a tile of one whose
    percentiles are known (a constant channel maps to ``data - low``, i.e. zeros).
    NaN and infinite pixels become 0."""
    scale = np.where(high - low > 1e-12, high - low, 1.0).astype(np.float32)
    per_channel = (-1,) + (1,) * (data.ndim - 1)
    result = (np.asarray(data, np.float32) - low.reshape(per_channel)) / scale.reshape(per_channel)
    finite = np.isfinite(result)
    if not finite.all():
        result[~finite] = 0.0
    return result
