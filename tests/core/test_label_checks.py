import numpy as np
import tifffile
from scipy import ndimage

import napari_unet as nu
from napari_unet.cli import main
from napari_unet.core.label_checks import (
    ids_as_image_warning,
    image_like_reason,
    labels_warning,
    unsigned_max_warning,
)
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


def test_ids_given_as_the_image_are_warned_about():
    """A label image given as the image too trained without a word (the reverse is
    refused); microscope images, binary drawings and partial annotations pass."""
    image, labels = synthetic_nuclei((128, 128), seed=0)
    warning = ids_as_image_warning(labels[None].astype(np.uint16), labels, "'cells.tif'")
    cells = len(np.unique(labels)) - 1
    assert warning.startswith(f"the image of 'cells.tif' looks like a label image: each of its {cells} annotated cells")
    partial = np.where(np.arange(128)[:, None] < 64, labels, -1)  # half the image annotated, ids elsewhere too
    assert "looks like a label image" in ids_as_image_warning(labels[None].astype(np.int32), partial, "x")
    for picture in ((image * 4000).astype(np.uint16), (labels > 0).astype(np.uint8), labels * 0 + 7):
        assert ids_as_image_warning(picture[None], labels, "x") is None
    assert ids_as_image_warning(labels[None].astype(np.float32), labels, "x") is None  # a float image: a picture
    assert ids_as_image_warning(np.stack([labels, labels]), labels, "x") is None  # two channels
    two = np.where(np.isin(labels, (1, 2)), labels, 0)
    assert ids_as_image_warning(two[None], two, "x") is None  # too few cells to tell


def test_training_on_the_labels_file_as_image_warns_on_the_command_line(tmp_path, capsys):
    _, labels = synthetic_nuclei((96, 96), seed=0)
    tifffile.imwrite(tmp_path / "lab.tif", labels.astype(np.uint16))
    out = tmp_path / "m.safetensors"
    args = ["train", str(tmp_path / "lab.tif"), "--labels", str(tmp_path / "lab.tif"), "--out", str(out)]
    assert main([*args, "--steps", "1", "--tile", "92", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert f"warning: the image of {tmp_path / 'lab.tif'} (image " in err and "looks like a label image" in err
    assert nu.load_model(out).config.in_channels == 1  # a warning: the run goes on
