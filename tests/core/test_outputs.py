"""What gets written where: no silent overwrites, failed checkpoints, permissions, stale temporaries."""

import logging
import os
import time

import numpy as np
import pytest
import tifffile
import torch

import napari_unet as nu
from napari_unet import OutputFileError, UNet, save_model
from napari_unet.cli import main
from napari_unet.cli_args import output_names
from napari_unet.core import atomic_files, io, train
from napari_unet.core.checkpoint import load_state
from napari_unet.core.synthetic import synthetic_nuclei
from napari_unet.core.train_config import TrainConfig

FAST = TrainConfig(steps=6, tile=60, batch_size=1, device="cpu", precision="fp32", warmup_steps=2, seed=3)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(UNet(base_channels=2, depth=1), path)
    return path


@pytest.fixture
def two_images_with_one_name(tmp_path):
    paths = []
    for folder, value in (("a", 0.0), ("b", 1.0)):
        (tmp_path / folder).mkdir()
        image = np.full((40, 40), value, np.float32)
        image[10:20, 10:20] += 5
        tifffile.imwrite(tmp_path / folder / "img.tif", image)
        paths.append(tmp_path / folder / "img.tif")
    return paths


def test_inputs_with_one_name_get_distinct_outputs(tmp_path, model_file, two_images_with_one_name, capsys):
    out = tmp_path / "o"
    argv = ["segment", str(model_file), *map(str, two_images_with_one_name), "--out-dir", str(out)]
    assert main([*argv, "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_img_labels.tif", "b_img_labels.tif"]


def test_output_names_stay_distinct_in_every_case(tmp_path):
    from pathlib import Path

    names = output_names([Path("x/img.tif"), Path("y/img.tif"), Path("x/img.npy"), Path("x/img.tif"), Path("z.tif")])
    assert len(set(names)) == 5 and names[-1] == "z"
    assert names[:3] == ["x_img_tif_1", "y_img", "x_img_npy"]
    assert output_names([Path("coins.ome.tif"), Path("cells.OME.tiff"), Path(".ome.tif")]) == ["coins", "cells", ".ome"]


@pytest.mark.parametrize("command", ["segment", "weights"])
def test_existing_outputs_are_refused_before_anything_is_written(tmp_path, model_file, command, capsys):
    image, labels = synthetic_nuclei((48, 48), seed=0)
    for name in ("one", "two"):
        tifffile.imwrite(tmp_path / f"{name}.tif", labels if command == "weights" else image)
    out = tmp_path / "o"
    out.mkdir()
    kept = out / ("two_labels.tif" if command == "segment" else "two_target.tif")
    kept.write_bytes(b"precious")
    files = [str(tmp_path / "one.tif"), str(tmp_path / "two.tif")]
    argv = [command, str(model_file), *files] if command == "segment" else [command, *files]
    code = main([*argv, "--out-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(kept) in err[0] and "--overwrite" in err[0]
    assert kept.read_bytes() == b"precious" and sorted(p.name for p in out.iterdir()) == [kept.name]
    assert main([*argv, "--out-dir", str(out), "--overwrite"]) == 0
    assert kept.read_bytes() != b"precious"


def test_an_unwritable_output_folder_is_refused_before_the_work(tmp_path, model_file, capsys):
    np.save(tmp_path / "img.npy", np.zeros((30, 30), np.float32))
    (tmp_path / "file").write_text("not a folder")
    code = main(["segment", str(model_file), str(tmp_path / "img.npy"), "--out-dir", str(tmp_path / "file" / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot write" in err[0] and "file" in err[0]


# --- training outputs -----------------------------------------------------------------------------------------


def nuclei():
    image, labels = synthetic_nuclei((96, 96), seed=2)
    return [image], [labels]


def test_an_unwritable_checkpoint_is_refused_before_training(tmp_path):
    (tmp_path / "file").write_text("x")
    images, labels = nuclei()
    with pytest.raises(OutputFileError, match=r"cannot write .*file/run.ckpt"):
        train.Trainer(
            UNet(base_channels=2, depth=2), images, labels, FAST, checkpoint_path=tmp_path / "file" / "run.ckpt"
        )
    with pytest.raises(OutputFileError, match="it is a folder"):
        train.Trainer(UNet(base_channels=2, depth=2), images, labels, FAST, checkpoint_path=tmp_path)


def test_too_little_disk_space_is_refused_before_training(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100, 100, 10))
    images, labels = nuclei()
    with pytest.raises(OutputFileError, match="MiB free on its disk"):
        train.Trainer(UNet(base_channels=2, depth=2), images, labels, FAST, checkpoint_path=tmp_path / "run.ckpt")


def failing_checkpoints(monkeypatch, fail_from_call=1):
    """Make the checkpoint writes fail (as on a full disk) from the n-th one on."""
    calls = []
    original = train.save_state

    def save_state(path, state):
        calls.append(path)
        if len(calls) >= fail_from_call:
            raise OutputFileError(f"cannot write {path}: No space left on device; any earlier file there is unchanged")
        original(path, state)

    monkeypatch.setattr(train, "save_state", save_state)
    return calls


def test_a_failing_checkpoint_warns_once_and_training_goes_on(tmp_path, monkeypatch, caplog):
    images, labels = nuclei()
    model = UNet(base_channels=2, depth=2)
    checkpoint = tmp_path / "run.ckpt"
    config = TrainConfig(**{**FAST.to_dict(), "checkpoint_every": 2, "weights": FAST.weights, "augment": FAST.augment})
    calls = failing_checkpoints(monkeypatch, fail_from_call=2)
    with caplog.at_level(logging.INFO, logger="napari_unet"):
        events = list(nu.iter_train(model, images, labels, config, checkpoint_path=checkpoint))
    failed = [e for e in events if isinstance(e, nu.CheckpointFailed)]
    saved = [e for e in events if isinstance(e, nu.CheckpointSaved)]
    assert [e.step for e in saved] == [2] and len(failed) == 1 and failed[0].step == 4
    assert "run.ckpt" in failed[0].message and "unchanged" in failed[0].message and "goes on" in failed[0].message
    assert sum(1 for r in caplog.records if r.levelno == logging.WARNING and "checkpoint" in r.message) == 1
    assert [e.step for e in events if isinstance(e, nu.StepProgress)][-1] == 6  # all steps ran
    assert len(calls) == 3 and load_state(checkpoint)["step"] == 2  # the last good checkpoint is intact


def test_a_failing_checkpoint_still_gives_the_model_on_the_command_line(tmp_path, monkeypatch, capsys):
    image, labels = synthetic_nuclei((96, 96), seed=2)
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    failing_checkpoints(monkeypatch)
    out = tmp_path / "m.safetensors"
    argv = ["train", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lab.tif"), "--out", str(out)]
    tiny = ["--steps", "4", "--checkpoint-every", "2", "--base-channels", "2", "--depth", "2", "--tile", "60"]
    assert main([*argv, *tiny, "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert nu.load_model(out).metadata["training"]["steps"] == 4
    assert "napari-unet: warning: checkpoint at step 2 failed: cannot write" in captured.err
    assert str(out) + ".ckpt" in captured.err and "no checkpoint for --resume" in captured.err


def test_an_unwritable_model_path_is_refused_before_training(tmp_path, capsys):
    image, labels = synthetic_nuclei((96, 96), seed=2)
    np.save(tmp_path / "img.npy", image)
    np.save(tmp_path / "lab.npy", labels)
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "m.safetensors"
    started = time.perf_counter()
    code = main(["train", str(tmp_path / "img.npy"), "--labels", str(tmp_path / "lab.npy"), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(out) in err[0] and time.perf_counter() - started < 5


# --- permissions and stale temporaries ------------------------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, model_file, umask, mode):
    np.save(tmp_path / "img.npy", np.zeros((30, 30), np.float32))
    previous = os.umask(umask)
    try:
        save_model(UNet(base_channels=2, depth=1), tmp_path / "m.safetensors")
        nu.write_image(tmp_path / "labels.tif", np.zeros((4, 4), np.int32))
        assert main(["segment", str(model_file), str(tmp_path / "img.npy"), "--out-dir", str(tmp_path / "o")]) == 0
    finally:
        os.umask(previous)
    for path in (tmp_path / "m.safetensors", tmp_path / "labels.tif", tmp_path / "o" / "img_labels.tif"):
        assert os.stat(path).st_mode & 0o777 == mode, path


def test_stale_temporaries_of_a_killed_write_are_removed_when_training_starts(tmp_path):
    checkpoint = tmp_path / "run.ckpt"
    stale = [tmp_path / ".run.ckpt.abcd1234.tmp", tmp_path / ".run.ckpt.zz_99xyz.tmp"]
    kept = [
        tmp_path / ".run.ckpt.fresh123.tmp",  # written after this process started: maybe someone's live write
        tmp_path / ".run.ckpt.old.tmp",  # not a name write_atomic makes
        tmp_path / ".other.ckpt.abcd1234.tmp",  # another file's
        tmp_path / "run.ckpt.abcd1234.tmp",
    ]
    long_ago = atomic_files.PROCESS_STARTED - 3600
    for path in stale + kept:
        path.write_bytes(b"partial")
        os.utime(path, (long_ago, long_ago))
    os.utime(kept[0])  # now
    images, labels = nuclei()
    trainer = train.Trainer(UNet(base_channels=2, depth=2), images, labels, FAST, checkpoint_path=checkpoint)
    assert all(path.exists() for path in stale)  # nothing is removed before training starts
    nu.core.progress.drive(trainer.run())
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept) and checkpoint.exists()


def test_a_model_written_after_a_kill_keeps_no_temporary_behind(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_model(UNet(base_channels=2, depth=1), path)
    before = path.read_bytes()

    def killed(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(OutputFileError, match=r"cannot write .*m.safetensors: No space left on device; any earlier"):
        save_model(UNet(base_channels=3, depth=1), path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    torch.manual_seed(0)


def test_outputs_keep_the_pixel_size_of_their_input(tmp_path, model_file, capsys):
    """Segmented labels and weight maps line up with their image in Fiji or napari:
    an ImageJ volume keeps its z spacing, x/y resolution and unit, and its planes stay
    planes (written without axis names, they were read back as channels); a plain
    TIFF keeps its resolution tags."""
    volume = np.random.default_rng(0).random((6, 40, 40), np.float32)
    volume_path = tmp_path / "vol.tif"
    calibration = {"spacing": 0.5, "unit": "micron", "axes": "ZYX"}
    tifffile.imwrite(volume_path, volume, imagej=True, resolution=(4.0, 4.0), metadata=calibration)
    plane_path = tmp_path / "plane.tif"
    tifffile.imwrite(plane_path, volume[0], resolution=(2.0, 3.0), resolutionunit="CENTIMETER")
    labels_path = tmp_path / "cells.tif"
    labels = np.zeros((6, 40, 40), np.uint16)
    labels[2:4, 10:20, 10:20] = 1
    tifffile.imwrite(labels_path, labels, imagej=True, resolution=(4.0, 4.0), metadata=calibration)
    segment = ["segment", str(model_file), str(volume_path), str(plane_path), "--out-dir", str(tmp_path)]
    assert main([*segment, "--probabilities"]) == 0
    assert main(["weights", str(labels_path), "--out-dir", str(tmp_path)]) == 0
    for name in ("vol_labels.tif", "vol_probabilities.tif", "cells_weights.tif", "cells_target.tif"):
        assert io.read_spacing(tmp_path / name) == pytest.approx((0.5, 0.25, 0.25)), name
        with tifffile.TiffFile(tmp_path / name) as written:
            assert written.imagej_metadata["unit"] == "micron"
            assert written.imagej_metadata["slices"] == 6, name
            assert written.series[0].axes == ("ZCYX" if "probabilities" in name else "ZYX"), name
    assert io.read_image(tmp_path / "vol_labels.tif").shape == volume.shape
    with tifffile.TiffFile(tmp_path / "plane_labels.tif") as written:
        tags = written.pages[0].tags
        assert (tags["XResolution"].value, tags["YResolution"].value) == ((2, 1), (3, 1))
        assert tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER


def test_arrays_whose_axes_imagej_cannot_hold_keep_the_x_y_resolution_alone(tmp_path):
    """A 3D model's probabilities (C, Z, Y, X): ImageJ holds channels after z, so
    they are written without ImageJ's names, not with z read back as channels."""
    source = tmp_path / "source.tif"
    tifffile.imwrite(source, np.zeros((3, 8, 8), np.uint8), imagej=True, resolution=(2.0, 2.0),
                     metadata={"spacing": 2.0, "axes": "ZYX"})  # fmt: skip
    assert io.output_axes(source, (2, 3, 8, 8), classes_before=3) == "CZYX"
    io.write_image(tmp_path / "p.tif", np.zeros((2, 3, 8, 8), np.float32), pixel_size_of=source, axes="CZYX")
    with tifffile.TiffFile(tmp_path / "p.tif") as written:
        assert written.imagej_metadata is None and written.series[0].shape == (2, 3, 8, 8)
        assert written.pages[0].tags["XResolution"].value == (2, 1)
        assert written.series[0].axes == "CZYX"  # tifffile's own description keeps the names (they were "QSYX")


def test_a_stack_of_three_or_four_planes_is_written_as_planes_not_as_an_rgb_picture(tmp_path):
    """tifffile stores (..., 3, H, W) as RGB unless told otherwise: the labels of a
    stack of 3 planes opened in Fiji as one colour picture, and those of a T, Z stack
    of 2 x 3 planes were read back with axes "QSYX"."""
    source = tmp_path / "tzyx.ome.tif"
    tifffile.imwrite(source, np.zeros((2, 3, 8, 8), np.uint8), metadata={"axes": "TZYX"}, photometric="minisblack")
    for shape, axes in (((3, 8, 8), None), ((4, 8, 8), None), ((2, 3, 8, 8), io.output_axes(source, (2, 3, 8, 8)))):
        io.write_image(tmp_path / "labels.tif", np.ones(shape, np.uint16), axes=axes)
        with tifffile.TiffFile(tmp_path / "labels.tif") as written:
            assert written.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK and "S" not in written.series[0].axes
            assert written.series[0].shape == shape and (axes is None or written.series[0].axes == axes)


def test_a_stack_of_unnamed_planes_and_the_python_call_without_axes_keep_the_z_spacing(tmp_path):
    """ImageJ's plain stacks ("images=5", no "slices") read as axes "IYX"; their outputs,
    and those of nu.write_image given no axes, lost the z spacing."""
    source = tmp_path / "plain.tif"
    with tifffile.TiffWriter(source) as writer:
        for plane in np.zeros((5, 8, 8), np.uint8):
            writer.write(plane, contiguous=True, resolution=(4.0, 4.0), metadata=None,
                         description="ImageJ=1.11a\nimages=5\nspacing=2.0\nunit=um\n")  # fmt: skip
    with tifffile.TiffFile(source) as read:
        assert read.series[0].axes == "IYX"
    assert io.output_axes(source, (5, 8, 8)) == "ZYX"
    io.write_image(tmp_path / "out.tif", np.ones((5, 8, 8), np.int32), pixel_size_of=source)
    assert io.read_spacing(tmp_path / "out.tif") == (2.0, 0.25, 0.25)


def test_a_given_spacing_replaces_the_file_s_and_keeps_its_unit(tmp_path):
    """``--spacing`` corrects what a file records (or adds what it lacks): the outputs
    record what the segmentation or weight map was computed with."""
    source = tmp_path / "vol.tif"
    tifffile.imwrite(source, np.zeros((3, 8, 8), np.uint8), imagej=True, resolution=(4.0, 4.0),
                     metadata={"spacing": 2.0, "unit": "micron", "axes": "ZYX"})  # fmt: skip
    io.write_image(tmp_path / "out.tif", np.ones((3, 8, 8), np.int32), pixel_size_of=source, spacing=(1.0, 0.5, 0.2))
    assert io.read_spacing(tmp_path / "out.tif") == pytest.approx((1.0, 0.5, 0.2))
    with tifffile.TiffFile(tmp_path / "out.tif") as written:
        assert written.imagej_metadata["unit"] == "micron" and written.series[0].axes == "ZYX"


def test_labels_keep_their_ids_when_written_in_imagej_s_format(tmp_path):
    source = tmp_path / "source.tif"
    tifffile.imwrite(source, np.zeros((3, 8, 8), np.uint8), imagej=True, metadata={"spacing": 2.0, "axes": "ZYX"})
    labels = np.arange(3 * 8 * 8, dtype=np.int32).reshape(3, 8, 8) * 300  # ids past 65535: stays int32, no z spacing
    io.write_image(tmp_path / "many.tif", labels, pixel_size_of=source, axes="ZYX")
    np.testing.assert_array_equal(io.read_image(tmp_path / "many.tif"), labels)
    io.write_image(tmp_path / "few.tif", labels // 300, pixel_size_of=source, axes="ZYX")  # fit uint16: ImageJ's
    np.testing.assert_array_equal(io.read_image(tmp_path / "few.tif"), labels // 300)
    assert io.read_spacing(tmp_path / "few.tif") == (2.0, 1.0, 1.0)


def test_outputs_of_a_png_plane_name_their_axes_as_those_of_a_tiff_plane(tmp_path, model_file, capsys):
    """The probabilities of a PNG read back as "QYX" (a stack of unnamed planes),
    those of a TIFF as "CYX"."""
    import imageio.v3 as iio

    image = np.random.default_rng(0).integers(0, 255, (40, 50)).astype(np.uint8)
    iio.imwrite(tmp_path / "plane.png", image)
    tifffile.imwrite(tmp_path / "other.tif", image)
    command = ["segment", str(model_file), str(tmp_path / "plane.png"), str(tmp_path / "other.tif")]
    assert main([*command, "--probabilities", "--out-dir", str(tmp_path / "out")]) == 0
    for name in ("plane", "other"):
        for kind, axes in (("labels", "YX"), ("probabilities", "CYX")):
            with tifffile.TiffFile(tmp_path / "out" / f"{name}_{kind}.tif") as written:
                assert written.series[0].axes == axes, (name, kind)
