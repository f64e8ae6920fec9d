"""Issue 18.10 and 18.11 on the command line: one message per mistake, stacks, threads."""

import numpy as np
import pytest
import tifffile
import torch

from napari_unet import UNet, save_model
from napari_unet.cli import main
from napari_unet.core.synthetic import synthetic_nuclei


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_an_rgb_image_with_a_one_channel_model_names_both_remedies(tmp_path, capsys):
    model = tmp_path / "gray.safetensors"
    save_model(UNet(base_channels=2, depth=2), model)
    np.save(tmp_path / "rgb.npy", np.zeros((40, 50, 3), np.uint8))
    assert main(["segment", str(model), str(tmp_path / "rgb.npy"), "--out-dir", str(tmp_path / "out")]) == 2
    line = error_line(capsys)
    assert line.startswith("napari-unet: error: the model expects 1 channel but the image (shape (40, 50, 3)) is RGB")
    assert "--in-channels 3" in line and "Split RGB" in line


def test_an_image_given_as_labels_is_refused_with_one_message(tmp_path, capsys):
    image, _ = synthetic_nuclei((96, 96), seed=0)
    tifffile.imwrite(tmp_path / "img.tif", image)
    args = ["train", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "img.tif"), "--out", str(tmp_path / "m")]
    assert main([*args, "--steps", "1", "--base-channels", "2", "--depth", "2", "--device", "cpu"]) == 2
    line = error_line(capsys)
    assert "labels must be integers with few distinct values; this looks like an image" in line
    np.save(tmp_path / "probabilities.npy", np.random.default_rng(0).random((96, 96)).astype(np.float32))
    assert main(["evaluate", str(tmp_path / "probabilities.npy"), "--truth", str(tmp_path / "img.tif")]) == 2
    assert "this looks like an image (it holds fractional float32 values)" in error_line(capsys)


def test_evaluate_works_on_stacks(tmp_path, capsys):
    _, first = synthetic_nuclei((64, 64), seed=1)
    _, second = synthetic_nuclei((64, 64), seed=2)
    truth = np.stack([first, second]).astype(np.int32)
    predicted = truth.copy()
    predicted[1] = 0  # the second plane is missed entirely
    tifffile.imwrite(tmp_path / "pred.tif", predicted)
    tifffile.imwrite(tmp_path / "truth.tif", truth)
    assert main(["evaluate", str(tmp_path / "pred.tif"), "--truth", str(tmp_path / "truth.tif")]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("pred "))
    found = first.max() / (first.max() + second.max())  # AP = tp / (tp + fn), planes pooled
    assert float(row.split()[1]) == pytest.approx(found, abs=1e-3)


def test_evaluate_matches_3d_objects_with_volumes(tmp_path, capsys):
    """A volume's objects span planes: plane by plane one 3D nucleus is scored once
    per plane it crosses (and said so); --volumes matches it once, in 3D."""
    truth = np.zeros((6, 20, 20), np.int32)
    truth[1:5, 3:9, 3:9], truth[2:6, 10:17, 10:17] = 1, 2
    predicted = truth.copy()
    predicted[1, 3:9, 3:9] = 0  # nucleus 1 missed in one of its four planes
    tifffile.imwrite(tmp_path / "pred.tif", predicted)
    tifffile.imwrite(tmp_path / "truth.tif", truth)
    command = ["evaluate", str(tmp_path / "pred.tif"), "--truth", str(tmp_path / "truth.tif")]
    assert main(command) == 0
    said = capsys.readouterr()
    assert "scored plane by plane; --volumes matches 3D objects" in said.err
    per_plane = next(line for line in said.out.splitlines() if line.startswith("pred "))
    assert float(per_plane.split()[1]) == pytest.approx(7 / 8, abs=1e-3)  # 7 of 8 plane sections found
    assert main([*command, "--volumes"]) == 0
    in_3d = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("pred "))
    assert float(in_3d.split()[1]) == pytest.approx(1.0)  # both nuclei found (IoU 0.75 and 1)


def test_threads_follow_the_machine_and_the_command_line(tmp_path, monkeypatch):
    from napari_unet.core.threads import choose_threads, other_busy_cores

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert choose_threads(busy=0.0) >= 1
    cores = choose_threads(busy=0.0)
    assert choose_threads(busy=1.0) == max(cores - 1, 1)  # a busy core is left alone
    assert choose_threads(busy=0.2) == cores  # a little noise is not a busy core
    assert choose_threads(busy=0.0, leave_free=1) == max(cores - 1, 1)  # napari keeps one for the viewer
    assert choose_threads(busy=64.0) == 1
    assert choose_threads(3, busy=64.0) == 3  # asked for: as asked
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert choose_threads(busy=0.0) == 1  # the user's limit holds (before, it was overridden)
    assert choose_threads(2, busy=0.0) == 2  # asked for: as asked
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    assert choose_threads(busy=0.0) == cores  # not a count: not a limit
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert 0.0 <= other_busy_cores(0.05) <= 64
    image, labels = synthetic_nuclei((96, 96), seed=0)
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    before = torch.get_num_threads()
    try:
        args = ["train", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lab.tif"), "--out"]
        args += [str(tmp_path / "m.safetensors"), "--steps", "1", "--base-channels", "2", "--depth", "2"]
        assert main([*args, "--tile", "60", "--batch-size", "1", "--device", "cpu", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        segment = ["segment", str(tmp_path / "m.safetensors"), str(tmp_path / "img.tif"), "--out-dir", str(tmp_path)]
        assert main([*segment, "--threads", "1"]) == 0  # the README promised it; segment had no --threads
        assert torch.get_num_threads() == 1
        streamed = [*segment[:3], "--out", str(tmp_path / "o.zarr"), "--workers", "2", "--threads", "1"]
        assert main(streamed) != 0 and not (tmp_path / "o.zarr").exists()
    finally:
        torch.set_num_threads(before)
