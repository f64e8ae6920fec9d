"""Per-level kernels and pooling factors of a U-Net on anisotropic voxels.

Microscopy stacks are usually sampled more coarsely along z than in the plane. A
3x3x3 kernel and a 2x2x2 pooling on such a stack look at very different physical
extents along z and in the plane. The rule used here is the one nnU-Net made
common: at every resolution level, an axis whose current spacing is at least twice
the finest current spacing is neither pooled nor convolved across (kernel 1 along
it, pooling factor 1); the other axes get 3-wide kernels and are pooled by 2. Each
pooling doubles the spacing of the pooled axes, so the in-plane spacing catches up
with z after a level or two, and from then on the network is isotropic.

With equal spacing (or none given) every level has 3-wide kernels and 2x pooling on
every axis: the network of the U-Net papers.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import ConfigError

#: An axis is left out of kernels and pooling while its spacing is this many times
#: the finest spacing or more.
ANISOTROPY_RATIO = 2.0


def level_kernels_and_pools(
    spacing: Sequence[float] | None, depth: int, ndim: int
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Kernel sizes for each of the ``depth + 1`` levels (the bottom last) and pooling
    factors for each of the ``depth`` poolings, one entry per spatial axis.

    ``spacing``: the physical size of a voxel along each axis (e.g. (z, y, x) in um),
    or ``None`` for isotropic voxels.
    """
    current = [1.0] * ndim if spacing is None else [float(s) for s in spacing]
    if len(current) != ndim:
        raise ConfigError(f"spacing {tuple(spacing)} needs one value per spatial axis ({ndim})")
    kernels, pools = [], []
    for level in range(depth + 1):
        finest = min(current)
        spans = [s / finest < ANISOTROPY_RATIO * (1 - 1e-9) for s in current]
        kernels.append(tuple(3 if span else 1 for span in spans))
        if level < depth:
            factors = tuple(2 if span else 1 for span in spans)
            pools.append(factors)
            current = [s * f for s, f in zip(current, factors)]
    return kernels, pools


#: Voxel shapes (z:y:x ratios) within this fraction of each other count as the same.
VOXEL_SHAPE_TOLERANCE = 0.1


def voxel_shape_note(spacing: Sequence[float] | None, model_spacing: Sequence[float] | None, source: str) -> str | None:
    """A note when a 3D model made for voxels of ``model_spacing`` (z, y, x) is about
    to segment a volume whose voxels (``spacing``, as ``source`` gives them: "FILE
    records", "the scale of LAYER gives") have another shape: the model then sees its
    objects stretched or squashed along an axis. Shapes, not sizes, are compared, since
    the units may differ (objects of another size get a note of their own, see
    :mod:`.rescale`). ``None`` when either spacing is unknown or the shapes agree."""
    if spacing is None or model_spacing is None or len(spacing) != len(model_spacing):
        return None
    ratios = [(s / spacing[-1]) / (m / model_spacing[-1]) for s, m in zip(spacing, model_spacing)]
    if all(abs(ratio - 1) <= VOXEL_SHAPE_TOLERANCE for ratio in ratios):
        return None
    shown = lambda values: tuple(round(float(v), 4) for v in values)  # noqa: E731
    axis = "zyx"[max(range(len(ratios)), key=lambda i: abs(ratios[i] - 1))]  # the one most out of shape
    return (
        f"{source} voxels of {shown(spacing)} (z, y, x), the model was made for voxels shaped "
        f"{shown(model_spacing)}: if both are right, the model sees this volume's objects stretched or squashed "
        f"along {axis}; resample it to the model's voxel shape, or train on volumes like it"
    )
