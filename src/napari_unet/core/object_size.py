"""The smallest object a trained model keeps, read off the annotation it learned from.

Tiny predicted objects (debris, specks of noise, slivers where a cell leaves the image)
were most of the false objects of networks trained for minutes on real microscopy
(bench/bench_real.py). What is tiny depends on the cells: a fixed number of pixels
either keeps specks beside large bacteria or drops small nuclei. So training sets the
model's minimum object size from the objects the user annotated completely (those that
touch neither the image border nor an unannotated pixel): a fraction of the size below
which the smallest few percent of them lie, never less than InstanceConfig's default.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .config import IGNORE_LABEL, InstanceConfig

#: The minimum size is :data:`SIZE_FRACTION` of this percentile of the complete objects' sizes.
SIZE_PERCENTILE = 5.0
SIZE_FRACTION = 0.5


def complete_object_sizes(labels: np.ndarray) -> np.ndarray:
    """Sizes (pixels; voxels for a volume) of the objects of one annotated plane (H, W)
    or volume (Z, Y, X) that touch neither its border nor an unannotated pixel
    (``IGNORE_LABEL``, face neighbours): int64 (n,), in id order. 0 is background."""
    labels = np.asarray(labels)
    highest = int(labels.max(initial=0))
    if highest <= 0:
        return np.zeros(0, np.int64)
    sizes = np.bincount(labels.ravel().clip(min=0), minlength=highest + 1).astype(np.int64)
    sizes[0] = 0
    partial = [np.take(labels, end, axis=axis).ravel() for axis in range(labels.ndim) for end in (0, -1)]
    unannotated = labels == IGNORE_LABEL
    if unannotated.any():
        for axis in range(labels.ndim):
            after = (slice(None),) * axis + (slice(1, None),)
            before = (slice(None),) * axis + (slice(None, -1),)
            partial += [labels[after][unannotated[before]], labels[before][unannotated[after]]]
    sizes[np.concatenate(partial).clip(min=0)] = 0
    return sizes[sizes > 0]


def fitted_min_size(sizes: Sequence[np.ndarray]) -> int | None:
    """The minimum object size for the complete objects' ``sizes`` (one array per
    annotated plane or volume, see :func:`complete_object_sizes`): :data:`SIZE_FRACTION`
    of their :data:`SIZE_PERCENTILE` th percentile, at least ``InstanceConfig().min_size``;
    ``None`` when no object is complete (then there is nothing to go by)."""
    every = np.concatenate([np.asarray(s, np.int64) for s in sizes]) if sizes else np.zeros(0, np.int64)
    if every.size == 0:
        return None
    return max(InstanceConfig().min_size, int(SIZE_FRACTION * np.percentile(every, SIZE_PERCENTILE)))
