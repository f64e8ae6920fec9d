"""napari sample data: synthetic nuclei with their exact annotations."""

from __future__ import annotations

from .core.synthetic import synthetic_nuclei, synthetic_stack
from .core.synthetic_volume import SPACING, synthetic_volume


def nuclei_2d():
    """A 512x512 image of synthetic nuclei and its instance annotation."""
    image, labels = synthetic_nuclei((512, 512), seed=7)
    return [
        (image, {"name": "nuclei"}, "image"),
        (labels, {"name": "nuclei annotation"}, "labels"),
    ]


def nuclei_stack():
    """A small stack (3 x 256 x 256) of synthetic nuclei and its annotation."""
    image, labels = synthetic_stack(3, (256, 256), seed=11)
    return [
        (image, {"name": "nuclei stack"}, "image"),
        (labels, {"name": "nuclei stack annotation"}, "labels"),
    ]


def nuclei_volume():
    """A volume (28 x 128 x 128 voxels of 2 x 1 x 1 um) of synthetic nuclei, some
    touching, and its 3D annotation (one id per nucleus in every plane), shown at
    its voxel size: the data to try Volumes on."""
    image, labels = synthetic_volume(seed=3)
    return [
        (image, {"name": "nuclei volume", "scale": SPACING}, "image"),
        (labels, {"name": "nuclei volume annotation", "scale": SPACING}, "labels"),
    ]
