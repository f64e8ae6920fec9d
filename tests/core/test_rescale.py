"""Images taken at another magnification than the training images (core/rescale.py)."""

import logging
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from napari_unet import ConfigError, predict, segment
from napari_unet.cli import main
from napari_unet.core.config import InstanceConfig
from napari_unet.core.rescale import instances_at_scale, resize_planes, size_mismatch_note

from .lazy import drawn_image, threshold_model


def discs(shape=(96, 96), centres=((24, 24), (24, 70), (70, 24), (70, 70), (48, 48)), radius=9.0) -> np.ndarray:
    grid = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    for number, (row, col) in enumerate(centres, start=1):
        labels[(grid[0] - row) ** 2 + (grid[1] - col) ** 2 <= radius**2] = number
    return labels


def test_probabilities_are_the_rescaled_image_s_resized_back():
    model, image = threshold_model(), drawn_image(discs() > 0)
    probabilities = predict(model, image, rescale=2.0, device="cpu")
    assert probabilities.shape == (2, 96, 96)
    enlarged = predict(model, resize_planes(image, (192, 192)), device="cpu")
    np.testing.assert_allclose(probabilities, resize_planes(enlarged, (96, 96)), atol=1e-6)


def test_labels_stay_on_the_image_s_grid_and_sizes_are_the_model_s():
    """The model's sizes are in the pixels it sees: a disc of 254 px seen at 2x has
    1017 px there, so a model minimum of 600 px keeps it at rescale 2 and drops it at 1."""
    truth = discs()
    model, image = threshold_model(), drawn_image(truth > 0)
    big_minimum = InstanceConfig(min_size=600, split=0.0)
    enlarged = segment(model, image, rescale=2.0, instances=big_minimum, device="cpu")
    assert enlarged.shape == truth.shape and enlarged.max() == 5
    assert np.mean((enlarged > 0) == (truth > 0)) > 0.99
    assert segment(model, image, instances=big_minimum, device="cpu").max() == 0


def test_rescale_converts_areas_and_lengths():
    fitted = InstanceConfig(min_size=400, min_piece=120, neck=2.0, object_size=800)
    assert instances_at_scale(fitted, 2.0) == replace(fitted, min_size=100, min_piece=30, neck=1.0, object_size=200)
    assert instances_at_scale(fitted, 1.0) is fitted


def test_objects_far_from_the_learned_size_are_noted_with_the_factor_to_try():
    labels = discs()  # 5 discs of 253 px
    assert size_mismatch_note(labels, InstanceConfig(object_size=0)) is None  # size not known
    assert size_mismatch_note(labels, InstanceConfig(object_size=300)) is None  # close enough
    note = size_mismatch_note(labels, InstanceConfig(object_size=1012))
    assert note.startswith(
        "the objects found are 4.0x smaller than those the model learned (median size 253 against 1012"
    )
    assert "segment it again with rescale 2 " in note
    assert "with rescale 1 " in size_mismatch_note(labels, InstanceConfig(object_size=1012), rescale=0.5)
    assert size_mismatch_note(labels[:40, :40], InstanceConfig(object_size=1012)) is None  # too few objects


def test_cells_cut_in_pieces_are_still_found_too_large():
    """Cells larger than the model knows come out in pieces near the learned size:
    the regions the pieces form tell their size."""
    cells = discs(radius=14.0)  # 5 cells of 621 px, each cut in half below
    pieces = np.where(np.indices(cells.shape)[1] % 48 < 24, cells, cells + 5 * (cells > 0))
    assert np.median(np.bincount(pieces.ravel())[1:][np.bincount(pieces.ravel())[1:] > 0]) < 400
    note = size_mismatch_note(pieces, InstanceConfig(object_size=250))
    expected = "2.5x larger than those the model learned (median round connected region of the foreground 613 against"
    assert expected in note and "rescale 0.64 " in note


def test_clumps_of_touching_cells_of_the_learned_size_get_no_note():
    """Touching cells of the learned size, segmented right, make clumps twice or three
    times that size: a volume of touching nuclei was called 2.9x too large, with the
    advice to shrink it. Clumps are not round, so they are not taken for cells."""
    centres = [(30 + 60 * i, 20 + 18 * k) for i in range(3) for k in range(3)]  # 3 rows of 3 touching discs
    centres += [(30 + 60 * i, 110 + 18 * k) for i in range(3) for k in range(2)]  # and 3 pairs
    clumps = discs((200, 160), centres, radius=9.0)
    regions = np.bincount(ndimage.label(clumps > 0)[0].ravel())[1:]
    learned = 200  # the objects (253 px) at 1.27 times it send the check to the regions (506-759 px)
    assert len(regions) == 6 and np.median(regions) > 1.75 * learned  # what the regions alone call too large
    assert size_mismatch_note(clumps, InstanceConfig(object_size=learned)) is None
    single = discs((200, 160), [(30 + 60 * i, 20 + 50 * k) for i in range(3) for k in range(3)], radius=18.0)
    assert "larger" in size_mismatch_note(single, InstanceConfig(object_size=learned))  # round regions: said


def test_touching_cells_of_the_learned_size_get_no_note():
    """Touching pairs form regions twice the learned size, but their objects are not."""
    pairs = discs(centres=((24, 24), (24, 42), (70, 24), (70, 42), (48, 75)), radius=9.0)
    regions = np.bincount(ndimage.label(pairs > 0)[0].ravel())[1:]
    assert np.median(regions) > 1.75 * 253
    assert size_mismatch_note(pairs, InstanceConfig(object_size=253)) is None


def test_large_planes_are_measured_on_every_second_pixel_as_well():
    jitter = np.random.default_rng(0).integers(0, 8, (25, 25, 2))
    centres = [(20 + 40 * i + jitter[i, j, 0], 20 + 40 * j + jitter[i, j, 1]) for i in range(25) for j in range(25)]
    labels = discs((1024, 1024), centres, radius=9.0)  # 625 discs of 253 px
    note = size_mismatch_note(labels, InstanceConfig(object_size=1012))
    sampled = float(note.split("(median size ")[1].split()[0])
    assert note.startswith("the objects found are 4.") and abs(sampled - 253) <= 8  # 253 counted in full


def test_sizes_beyond_any_magnification_get_no_note():
    """An untrained model that calls the whole image one object is not a question of
    magnification: a factor beyond rescale's range is never suggested."""
    assert size_mismatch_note(discs(), InstanceConfig(object_size=3)) is None  # would be rescale 0.11
    assert size_mismatch_note(discs(), InstanceConfig(object_size=5)) is not None  # rescale 0.14


def test_previews_and_validations_of_a_model_in_training_make_no_note(caplog):
    """A model in training says nothing yet about the image: neither that its
    objects are far from the learned size nor that there are none."""
    from napari_unet.core import live

    model = threshold_model()
    learned = InstanceConfig(object_size=1012)  # 4x the drawn discs
    image, labels = drawn_image(discs() > 0), discs()
    session = live.LiveTraining(model, image, labels, live.TrainConfig(steps=1, tile=60, batch_size=1, device="cpu"))
    session.trainer.validation = [(image, labels), (np.zeros_like(image), np.zeros_like(labels))]
    with caplog.at_level(logging.WARNING, logger="napari_unet"):
        model.spec = replace(model.spec, instances=learned)
        session.preview(0, 0.0)
        model.spec = replace(model.spec, instances=learned)
        session.trainer.validate()
        assert caplog.text == ""
        segment(model, image, device="cpu")  # what a segmentation outside training says
        segment(model, np.zeros_like(image), device="cpu")
    assert "smaller than those the model learned" in caplog.text and "no objects" in caplog.text


def test_segmenting_logs_the_note(caplog):
    model, image = threshold_model(), drawn_image(discs() > 0)
    with caplog.at_level(logging.WARNING, logger="napari_unet"):
        segment(model, image, instances=InstanceConfig(object_size=1012), device="cpu")
    assert "4.0x smaller than those the model learned" in caplog.text


@pytest.mark.parametrize("factor", [0, -1, 100, "big", None])
def test_bad_factors_are_refused(factor):
    with pytest.raises(ConfigError, match="rescale must be a factor from 0.125 to 8"):
        segment(threshold_model(), np.zeros((32, 32), np.float32), rescale=factor)


def test_the_command_line_rescales(tmp_path, capsys):
    from napari_unet import save_model

    model_path, image_path = tmp_path / "model.safetensors", tmp_path / "cells.npy"
    save_model(threshold_model(), model_path)
    np.save(image_path, drawn_image(discs() > 0))
    assert main(["segment", str(model_path), str(image_path), "--out-dir", str(tmp_path), "--rescale", "2"]) == 0
    assert "5 objects" in capsys.readouterr().out
    assert main(["segment", str(model_path), str(image_path), "--out", str(tmp_path / "o.zarr"), "--rescale", "2"])
    assert "--rescale works on whole planes in memory" in capsys.readouterr().err
