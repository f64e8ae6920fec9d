"""napari sample data: synthetic nuclei with their exact annotations."""

from __future__ import annotations

from .core.synthetic import synthetic_nuclei, synthetic_stack


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
