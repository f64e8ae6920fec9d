"""Object sizes that a trained model takes from the annotation it learned from.

Two errors of networks trained for minutes on real microscopy (bench/bench_real.py)
depend on how large the cells are. Tiny predicted objects (debris, specks of noise,
slivers where a cell leaves the image) were most of the false objects; and the split at
probability dips (:mod:`.split`) cut large textured nuclei in two where their
probability dipped inside. A fixed number of pixels cannot serve cells of 100 px and
of 2000 px alike, so training reads both sizes off the objects the user annotated
completely (those that touch neither the image border nor an unannotated pixel):

- the minimum object size: half the size below which 5% of them lie, never less than
  InstanceConfig's default;
- the smallest piece a split may leave: 30% of their median size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from .config import IGNORE_LABEL, InstanceConfig

#: The minimum size is :data:`SIZE_FRACTION` of this percentile of the complete objects' sizes.
SIZE_PERCENTILE = 5.0
SIZE_FRACTION = 0.5
#: The smallest piece of a split is this fraction of the complete objects' median size.
PIECE_FRACTION = 0.3


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


def fitted_instances(instances: InstanceConfig, sizes: Sequence[np.ndarray]) -> InstanceConfig:
    """``instances`` with ``min_size`` and ``min_piece`` fitted to the complete objects'
    ``sizes`` (one array per annotated plane or volume, see
    :func:`complete_object_sizes`) as the module docstring says; unchanged when no
    object is complete (then there is nothing to go by)."""
    every = np.concatenate([np.asarray(s, np.int64) for s in sizes]) if sizes else np.zeros(0, np.int64)
    if every.size == 0:
        return instances
    min_size = max(InstanceConfig().min_size, int(SIZE_FRACTION * np.percentile(every, SIZE_PERCENTILE)))
    return dataclasses.replace(instances, min_size=min_size, min_piece=int(PIECE_FRACTION * np.median(every)))
