import numpy as np
from scipy import ndimage

from napari_unet.core.label_checks import image_like_reason, labels_warning, unsigned_max_warning
from napari_unet.core.synthetic import synthetic_nuclei


def test_a_binary_mask_given_as_labels_is_warned_about():
    mask = np.zeros((40, 40), np.uint8)
    mask[2:10, 2:10] = mask[20:30, 5:15] = mask[12:18, 25:35] = 1
    warning = labels_warning(mask, "labels 'mask'")
    assert warning.startswith("labels 'mask' give all 3 separate regions the same id 1: this looks like a binary mask")
    assert "255" in labels_warning(mask * 255)  # 0/255 too, the binary warning first
    assert "the same id 1:" in labels_warning(mask.astype(bool))  # not "True"
    assert "binary mask" in labels_warning(mask * 255)
    labelled = ndimage.label(mask)[0]
    assert labels_warning(labelled) is None  # one id per cell
    assert labels_warning(np.where(mask > 0, 1, -1) * (np.arange(40) < 12)[:, None]) is None  # one cell, -1 elsewhere
    assert labels_warning(np.full((5, 5), -1)) is None


def test_the_largest_value_of_an_unsigned_type_is_warned_about():
    labels = np.full((10, 10), 255, np.uint8)
    labels[:5] = 1
    warning = unsigned_max_warning(labels, "labels 'cells.png'")
    assert "uint8" in warning and "50% of their pixels hold 255" in warning and "-1" in warning
    assert unsigned_max_warning(np.ones((4, 4), np.uint16)) is None
    assert unsigned_max_warning(np.full((4, 4), 255, np.int16)) is None


def test_images_given_as_labels_are_recognised():
    image, labels = synthetic_nuclei((64, 64), seed=0)
    assert image_like_reason(labels) is None
    assert "neighbouring pixels" in image_like_reason(image)
    assert "fractional" in image_like_reason(image.astype(np.float32) / 7)
    assert image_like_reason(labels.astype(np.float32)) is None
