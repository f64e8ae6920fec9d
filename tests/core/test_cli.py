import argparse
import json

import numpy as np
import pytest
import tifffile
import torch
import zarr

from napari_unet import UNet, load_model, predict, save_model
from napari_unet.cli import build_parser, main

from .lazy import joined_discs, threshold_model


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(UNet(base_channels=2, depth=2), path, note="cli test")
    return path


def test_segment_writes_labels_and_probabilities(tmp_path, model_file, capsys):
    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "a.tif", rng.integers(0, 4000, (70, 90)).astype(np.uint16))
    np.save(tmp_path / "b.npy", rng.random((2, 40, 30)).astype(np.float32))
    out = tmp_path / "out"
    code = main(
        [
            "segment",
            str(model_file),
            str(tmp_path / "a.tif"),
            str(tmp_path / "b.npy"),
            "--out-dir",
            str(out),
            "--probabilities",
            "--precision",
            "fp32",
        ]
    )
    assert code == 0
    labels = tifffile.imread(out / "a_labels.tif")
    assert labels.shape == (70, 90) and labels.dtype == np.int32
    assert tifffile.imread(out / "b_probabilities.tif").shape == (2, 2, 40, 30)
    assert "objects" in capsys.readouterr().out


def test_segment_with_test_time_augmentation(tmp_path, model_file):
    image = np.random.default_rng(0).random((36, 52)).astype(np.float32)
    np.save(tmp_path / "a.npy", image)
    assert main(["segment", str(model_file), str(tmp_path / "a.npy"), "--out-dir", str(tmp_path / "out"),
                 "--probabilities", "--tta", "--precision", "fp32"]) == 0  # fmt: skip
    expected = predict(load_model(model_file), image, precision="fp32", tta=True)
    np.testing.assert_allclose(tifffile.imread(tmp_path / "out" / "a_probabilities.tif"), expected, atol=1e-6)


def test_segment_split_option_overrides_the_model(tmp_path, capsys):
    """Two bright discs joined by a dimmer neck: split by the model's default, kept
    whole with --split 0; a depth outside [0, 1) is one clear line."""
    np.save(tmp_path / "a.npy", joined_discs())
    save_model(threshold_model(steepness=8.0), tmp_path / "m.safetensors")
    counts, model = [], str(tmp_path / "m.safetensors")
    for extra in ([], ["--split", "0"]):
        out = tmp_path / f"out{len(extra)}"
        assert main(["segment", model, str(tmp_path / "a.npy"), "--out-dir", str(out), *extra]) == 0
        counts.append(int(tifffile.imread(out / "a_labels.tif").max()))
    assert counts == [2, 1]
    capsys.readouterr()
    code = main(["segment", model, str(tmp_path / "a.npy"), "--out-dir", str(tmp_path / "x"), "--split", "1.5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "split must be in [0, 1)" in err[0]
    code = main(["segment", model, str(tmp_path / "a.npy"), "--out-dir", str(tmp_path / "x"), "--min-fill", "1.5"])
    err = capsys.readouterr().err.strip().splitlines()  # a fill is at most 1: 1.5 was taken and split every object
    assert code == 2 and len(err) == 1 and "segment --min-fill" in err[0] and "from 0 (never) to 1, got 1.5" in err[0]


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda tmp, model: [str(model), str(tmp / "missing.tif")], "no such image file"),
        (lambda tmp, model: [str(model), str(tmp)], "is a folder: give the image files in it (for example"),
        (lambda tmp, model: [str(model), str(tmp / "big.zarr")], "is a zarr store, not an image file"),
        (lambda tmp, model: [str(tmp / "nomodel"), str(tmp / "img.npy")], "cannot read model file"),
        (
            lambda tmp, model: [str(tmp / "img.npy"), str(model)],
            "not a napari-unet model file (corrupt, truncated or another format); ",
        ),
        (lambda tmp, model: [str(tmp / "img.npy"), str(model)], "model file comes first (napari-unet segment MODEL"),
        (lambda tmp, model: [str(model), str(tmp / "flat.npy")], "at least 2 dimensions"),
        (lambda tmp, model: [str(model), str(tmp / "img.npy"), "--tile", "50"], "nearest valid sizes"),
        (lambda tmp, model: [str(model), str(tmp / "img.npy"), "--channel-axis", "5"], "channel axis 5 does not exist"),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path, model_file, capsys, make_args, message):
    np.save(tmp_path / "img.npy", np.zeros((30, 30), np.float32))
    np.save(tmp_path / "flat.npy", np.zeros(30, np.float32))
    zarr.save_array(str(tmp_path / "big.zarr"), np.zeros((30, 30), np.float32))
    code = main(["segment", *make_args(tmp_path, model_file), "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1  # no empty progress bar before the error
    assert err[-1].startswith("napari-unet: error:") and message in err[-1]


def test_an_image_the_model_cannot_take_fails_before_any_output_is_written(tmp_path, model_file, capsys):
    np.save(tmp_path / "gray.npy", np.zeros((30, 30), np.float32))
    np.save(tmp_path / "rgb.npy", np.zeros((30, 30, 3), np.uint8))
    out = tmp_path / "out"
    assert (
        main(["segment", str(model_file), str(tmp_path / "gray.npy"), str(tmp_path / "rgb.npy"), "--out-dir", str(out)])
        == 2
    )
    assert f"{tmp_path / 'rgb.npy'}: the model expects 1 channel" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())  # the gray image's labels were not written first


def test_weights_check_every_label_file_before_writing_any(tmp_path, capsys):
    np.save(tmp_path / "good.npy", np.ones((30, 30), np.int32))
    np.save(tmp_path / "four_axes.npy", np.ones((2, 2, 30, 30), np.int32))
    out = tmp_path / "out"
    assert main(["weights", str(tmp_path / "good.npy"), str(tmp_path / "four_axes.npy"), "--out-dir", str(out)]) == 2
    assert f"{tmp_path / 'four_axes.npy'}: weight maps need 2D (H, W) or 3D" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    np.save(tmp_path / "minus5.npy", np.full((30, 30), -5, np.int32))  # three outputs were written before it failed
    assert main(["weights", str(tmp_path / "good.npy"), str(tmp_path / "minus5.npy"), "--out-dir", str(out)]) == 2
    assert f"{tmp_path / 'minus5.npy'}: the value -5 is not a label; labels are 0" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    mask = np.zeros((30, 30), np.uint8)
    mask[2:8, 2:8] = mask[20:28, 20:28] = 255  # a binary mask: train warns that it merges touching cells
    np.save(tmp_path / "mask.npy", mask)
    assert main(["weights", str(tmp_path / "mask.npy"), "--out-dir", str(out)]) == 0
    assert f"warning: the labels of {tmp_path / 'mask.npy'}" in capsys.readouterr().err


def test_info_prints_what_the_file_holds(model_file, capsys):
    assert main(["info", "--json", str(model_file)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["spec"]["model"]["depth"] == 2 and info["metadata"] == {"note": "cli test"}
    assert info["parameters"] > 0


@pytest.fixture
def annotated_files(tmp_path):
    from napari_unet.core.synthetic import synthetic_nuclei

    paths = []
    for i in range(2):
        image, labels = synthetic_nuclei((96, 96), seed=i)
        tifffile.imwrite(tmp_path / f"img{i}.tif", image)
        tifffile.imwrite(tmp_path / f"lab{i}.tif", labels)
        paths.append((tmp_path / f"img{i}.tif", tmp_path / f"lab{i}.tif"))
    return paths


TINY = ["--base-channels", "2", "--depth", "2", "--tile", "60", "--batch-size", "1", "--device", "cpu"]


def test_info_says_in_words_what_a_trained_model_is(tmp_path, annotated_files, capsys):
    (image, labels), _ = annotated_files
    model = tmp_path / "m.safetensors"
    assert main(["train", str(image), "--labels", str(labels), "--out", str(model), "--steps", "2", *TINY]) == 0
    capsys.readouterr()
    assert main(["info", str(model)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{model}: a 2D U-Net"
    assert lines[1].startswith("- network: 1 input channel(s), 2 classes (background, cell), 2 base channels, depth 2")
    assert "- input: the 1 and 99.8 percentiles" in lines[2]
    assert lines[3].startswith("- objects: threshold 0.5; smallest object ")
    assert any(line.startswith("- steps: 2 in ") for line in lines)  # from the training record
    assert any("w0 = 10.0, sigma = 5.0 px" in line for line in lines)
    assert lines[-1] == f"(everything the file records: napari-unet info --json {model})"


def test_train_says_when_the_model_holds_an_earlier_steps_weights(tmp_path, annotated_files, capsys, monkeypatch):
    """The best validated weights replace the last step's; only -v said so, and a
    user read "trained 30 steps" over a model of step 1."""
    from napari_unet.core.train import Trainer
    from napari_unet.core.train_events import ValidationResult

    scores = iter([0.9, 0.2, 0.1])
    monkeypatch.setattr(Trainer, "validate", lambda self: ValidationResult(self.step, next(scores), 0.5))
    (img0, lab0), (img1, lab1) = annotated_files
    out = tmp_path / "m.safetensors"
    args = ["train", str(img0), "--labels", str(lab0), "--out", str(out), "--steps", "3", "--validate-every", "1"]
    assert main([*args, "--val-images", str(img1), "--val-labels", str(lab1), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "trained 3 steps" in printed
    assert "the model holds the weights of step 1, whose validation scored best (AP@0.5 0.900)" in printed


@pytest.mark.slow
def test_train_resume_and_fine_tune(tmp_path, annotated_files, capsys):
    (img0, lab0), (img1, lab1) = annotated_files
    out = tmp_path / "m.safetensors"
    args = ["train", str(img0), str(img1), "--labels", str(lab0), str(lab1), "--out", str(out)]
    assert main([*args, "--steps", "3", "--val-images", str(img1), "--val-labels", str(lab1), *TINY]) == 0
    assert "trained 3 steps" in capsys.readouterr().out
    from napari_unet import load_model
    from napari_unet.core.checkpoint import load_state

    assert load_model(out).metadata["training"]["steps"] == 3
    checkpoint = out.with_name(out.name + ".ckpt")
    assert load_state(checkpoint)["step"] == 3
    state = load_state(checkpoint)
    state["config"]["steps"] = 5  # continue the same run further
    from napari_unet.core.checkpoint import save_state

    save_state(checkpoint, state)
    assert main([*args, "--resume", str(checkpoint)]) == 0
    assert load_model(out).metadata["training"]["steps"] == 5
    tuned = tmp_path / "tuned.safetensors"
    fine = ["train", str(img0), "--labels", str(lab0), "--out", str(tuned), "--init", str(out), "--steps", "2"]
    assert main([*fine, "--device", "cpu", "--tile", "60"]) == 0
    assert load_model(tuned).config == load_model(out).config


def test_train_with_mismatched_files_is_one_clear_line(tmp_path, annotated_files, capsys):
    (img0, lab0), (img1, _) = annotated_files
    code = main(["train", str(img0), str(img1), "--labels", str(lab0), "--out", str(tmp_path / "m"), *TINY])
    assert code == 2 and "2 training image(s) but 1 label file(s)" in capsys.readouterr().err


def test_an_image_that_is_not_finite_is_named_in_the_message(tmp_path, annotated_files, capsys):
    """ "the image of lab1.tif holds NaN" sent a user looking in the labels file (a new
    user's walk): a pair is named by its labels file and its image."""
    (img0, lab0), (img1, lab1) = annotated_files
    broken = tifffile.imread(img1).astype(np.float32)
    broken[5, 5] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", broken)
    nan = str(tmp_path / "nan.tif")
    code = main(["train", str(img0), nan, "--labels", str(lab0), str(lab1), "--out", str(tmp_path / "m"), *TINY])
    assert code == 2 and f"the image of {lab1} (image {nan}) holds NaN" in capsys.readouterr().err
    args = ["--val-images", nan, "--val-labels", str(lab1)]
    code = main(["train", str(img0), "--labels", str(lab0), "--out", str(tmp_path / "m"), *args, *TINY])
    assert code == 2 and f"{lab1} (image {nan}): the validation image holds NaN" in capsys.readouterr().err


def test_a_missing_checkpoint_is_said_before_any_advice_to_overwrite(tmp_path, annotated_files, capsys):
    """`--resume nosuch.ckpt` with an existing --out advised --overwrite, which would have
    thrown the model away, and only then said the checkpoint was missing (a new user's walk)."""
    (img0, lab0), _ = annotated_files
    out = tmp_path / "m.safetensors"
    assert main(["train", str(img0), "--labels", str(lab0), "--out", str(out), "--steps", "1", *TINY]) == 0
    capsys.readouterr()
    missing = tmp_path / "nosuch.ckpt"
    args = ["train", str(img0), "--labels", str(lab0), "--out", str(out), "--resume", str(missing), *TINY]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"no checkpoint file at {missing}" in err and "--overwrite" not in err
    assert main([*args[: -len(TINY)], "--resume", str(out), *TINY]) == 2  # a model file: fine-tune it with --init
    assert f"--init {out}" in capsys.readouterr().err


def test_evaluate_warns_of_truth_whose_background_is_255(tmp_path, capsys):
    """A uint8 truth file with 255 for its background (82% of the pixels) scored AP@0.5
    0.97 and pixel IoU 0.17 without a word; train and weights warn of such files."""
    truth = np.zeros((40, 40), np.uint8)
    truth[5:15, 5:15], truth[20:30, 20:30] = 1, 2
    np.save(tmp_path / "predicted.npy", truth.astype(np.int32))
    truth[truth == 0] = 255
    np.save(tmp_path / "truth255.npy", truth)
    assert main(["evaluate", str(tmp_path / "predicted.npy"), "--truth", str(tmp_path / "truth255.npy")]) == 0
    err = capsys.readouterr().err
    assert f"warning: the true labels of {tmp_path / 'truth255.npy'} are uint8" in err
    assert "it is scored as one giant cell" in err


@pytest.mark.parametrize(
    ("suffix", "exported"), [(".onnx", ".onnx"), (".pt", ".pt"), (".zip", ".zip"), (".pth", ".pt")]
)
def test_a_model_named_like_an_exported_file_is_refused_before_training(
    tmp_path, annotated_files, capsys, suffix, exported
):
    """train --out m.onnx wrote a safetensors file by that name, which onnx.load refused;
    the export offered writes a format export takes (it refuses .pth)."""
    image, labels = annotated_files[0]
    out = tmp_path / f"m{suffix}"
    assert main(["train", str(image), "--labels", str(labels), "--out", str(out), *TINY]) == 2
    error = capsys.readouterr().err
    model = tmp_path / "m.safetensors"
    assert f"not {suffix}: name it {model}, then napari-unet export {model} --out {tmp_path / 'm'}{exported}" in error
    assert not out.exists()


def test_a_model_named_like_an_image_is_refused_before_training(tmp_path, annotated_files, capsys):
    image, labels = annotated_files[0]
    code = main(["train", str(image), "--labels", str(labels), "--out", str(tmp_path / "model.tif"), *TINY])
    error = capsys.readouterr().err
    assert code == 2 and f"not an image: name it {tmp_path / 'model.safetensors'}" in error
    assert not (tmp_path / "model.tif").exists() and not (tmp_path / "model.tif.ckpt").exists()
    (tmp_path / "models").mkdir()  # a folder: "exists: pass --overwrite", then "cannot write: it is a folder"
    for overwrite in ([], ["--overwrite"]):
        code = main(
            ["train", str(image), "--labels", str(labels), "--out", str(tmp_path / "models"), *TINY, *overwrite]
        )
        assert (
            code == 2
            and f"is a folder: name the model's file, e.g. {tmp_path / 'models' / 'model.safetensors'}"
            in (capsys.readouterr().err)
        )


def test_a_new_run_never_replaces_a_model_or_checkpoint_unless_told(tmp_path, annotated_files, capsys):
    image, labels = annotated_files[0]
    out = tmp_path / "m.safetensors"
    args = ["train", str(image), "--labels", str(labels), *TINY, "--steps", "1"]
    assert main([*args, "--out", str(out)]) == 0
    capsys.readouterr()
    written = out.read_bytes()
    assert main([*args, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"{out} exists: pass --overwrite to replace it, or continue its run with --resume {out}.ckpt" in error
    assert out.read_bytes() == written
    out.with_name(out.name + ".ckpt").unlink()  # a finished run's checkpoint thrown away: the model still counts
    assert main([*args, "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"{out} exists: pass --overwrite to replace it")
    label_bytes = labels.read_bytes()
    assert main([*args, "--out", str(labels)]) == 2  # a slip of the keyboard that would lose the annotation
    assert labels.read_bytes() == label_bytes
    assert main([*args, "--out", str(out), "--overwrite", "--seed", "1"]) == 0
    assert out.read_bytes() != written


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            ["--depth", "3"],
            "--depth shapes a new model, but the --init model {init} has depth 2, which fine-tuning keeps",
        ),
        (["--no-batch-norm"], "--no-batch-norm shapes a new model, but the --init model {init} has batch norm"),
        (["--in-channels", "3"], "--in-channels shapes a new model, but the --init model {init} has in channels 1"),
        (["--spacing", "2", "1", "1"], "--spacing shapes a new model, but the --init model {init} has spacing none"),
    ],
)
def test_fine_tuning_refuses_options_that_would_change_the_architecture(
    tmp_path, annotated_files, capsys, option, message
):
    image, labels = annotated_files[0]
    init = tmp_path / "init.safetensors"
    save_model(UNet(base_channels=2, depth=2, batch_norm=True), init)
    args = ["train", str(image), "--labels", str(labels), "--init", str(init), "--steps", "1", "--tile", "60"]
    assert main([*args, "--out", str(tmp_path / "m.safetensors"), *option]) == 2
    assert message.format(init=init) in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "m.safetensors"), "--depth", "2", "--batch-norm"]) == 0  # agreeing


def test_export_never_replaces_a_file_unless_told(tmp_path, model_file, capsys):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"someone's file")
    assert main(["export", str(model_file), "--format", "onnx", "--out", str(out)]) == 2
    assert f"{out} exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert out.read_bytes() == b"someone's file"


def test_exporting_an_image_says_the_model_file_comes_first(tmp_path, capsys):
    np.save(tmp_path / "img.npy", np.zeros((30, 30), np.float32))
    assert main(["export", str(tmp_path / "img.npy"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "looks like an image, and the model file comes first (napari-unet export MODEL --out FILE)" in (
        capsys.readouterr().err
    )


def test_weights_of_an_image_given_for_labels_are_refused_before_any_output(tmp_path, annotated_files, capsys):
    (image, labels), _ = annotated_files
    assert main(["weights", str(labels), str(image), "--out-dir", str(tmp_path / "w")]) == 2
    error = capsys.readouterr().err
    assert f"{image}: labels must be integers with few distinct values; this looks like an image" in error
    assert not (tmp_path / "w").exists()


def test_weights_and_evaluate(tmp_path, annotated_files, capsys):
    (_, lab0), (_, lab1) = annotated_files
    assert main(["weights", str(lab0), "--out-dir", str(tmp_path / "w"), "--w0", "5"]) == 0
    from napari_unet.core.weights import weight_map

    written = tifffile.imread(tmp_path / "w" / "lab0_weights.tif")
    np.testing.assert_allclose(written, weight_map(tifffile.imread(lab0), 5.0, 5.0))
    assert tifffile.imread(tmp_path / "w" / "lab0_target.tif").max() == 1
    capsys.readouterr()
    assert main(["evaluate", str(lab0), str(lab0), "--truth", str(lab0), str(lab1)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["image", "AP@0.5"]
    perfect = table[2].split()
    assert perfect[0].endswith("lab0_tif_1") and perfect[1] == "1.000"  # the same file twice: numbered
    assert table[-1].startswith("overall")
    long_names = [tmp_path / f"a_long_file_name_of_an_experiment_on_plate_1_well_{well}.tif" for well in ("A01", "A02")]
    other = tmp_path / "other" / lab0.name
    other.parent.mkdir()
    for path in (*long_names, other):
        path.write_bytes(lab0.read_bytes())
    assert main(["evaluate", *map(str, long_names), str(lab0), str(other), "--truth", *[str(lab0)] * 4]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]]
    assert rows == [path.stem for path in long_names] + [f"{lab0.parent.name}_lab0", "other_lab0", "overall"]
    (tmp_path / "overall.tif").write_bytes(lab0.read_bytes())  # a file's row must not pass for the summary's
    assert main(["evaluate", str(tmp_path / "overall.tif"), "--truth", str(lab0)]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert rows[0].startswith("overall (file) ") and rows[1].startswith("overall ")


def test_evaluate_says_when_a_file_holds_no_object(tmp_path, annotated_files, capsys):
    (_, labels), _ = annotated_files
    empty = tmp_path / "empty.tif"
    tifffile.imwrite(empty, np.zeros_like(tifffile.imread(labels)))
    assert main(["evaluate", str(empty), str(labels), "--truth", str(labels), str(labels)]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"napari-unet: {empty} holds no object, so every true object counts as missed"]
    assert out.splitlines()[2].split()[1] == "0.000" and out.splitlines()[3].split()[1] == "1.000"
    assert main(["evaluate", str(labels), "--truth", str(empty)]) == 0
    assert f"{empty} holds no object, so every predicted one counts as false" in capsys.readouterr().err


def test_evaluate_names_the_file_that_is_an_image(annotated_files, capsys):
    (image, labels), _ = annotated_files
    assert main(["evaluate", str(labels), "--truth", str(image)]) == 2
    assert f"{image}: the truth: labels must be integers" in capsys.readouterr().err
    assert main(["evaluate", str(image), "--truth", str(labels)]) == 2
    assert f"{image}: the prediction: labels must be integers" in capsys.readouterr().err


def test_evaluate_refuses_label_values_it_cannot_score_naming_the_file(tmp_path, annotated_files, capsys):
    """Truth below -1 and a prediction holding -1 ended in a traceback from the metrics."""
    (_, labels), _ = annotated_files
    truth = tifffile.imread(labels)
    tifffile.imwrite(tmp_path / "minus5.tif", np.where(truth > 0, truth, -5).astype(np.int32))
    tifffile.imwrite(tmp_path / "unannotated.tif", np.where(truth > 0, truth, -1).astype(np.int32))
    assert main(["evaluate", str(labels), "--truth", str(tmp_path / "minus5.tif")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'minus5.tif'} (truth): the value -5 is not a label" in err and "-1 (unannotated)" in err
    assert main(["evaluate", str(tmp_path / "unannotated.tif"), "--truth", str(labels)]) == 2
    assert f"{tmp_path / 'unannotated.tif'} (prediction): the value -1 is not a label" in capsys.readouterr().err
    assert main(["evaluate", str(labels), "--truth", str(tmp_path / "unannotated.tif")]) == 0  # -1: not scored


@pytest.mark.slow
def test_demo_writes_everything(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out-dir", str(out), "--minutes", "0.05", "--device", "cpu"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "metrics.txt", "overlay.png", "test_0.tif", "test_0_labels.tif"} <= names
    printed = capsys.readouterr()
    assert "overall" in printed.out
    assert "training: 0step" in printed.err and "100000" not in printed.err  # steps unknown until the first ones
    assert main(["demo", "--out-dir", str(out), "--minutes", "0.02", "--device", "cpu"]) == 0  # again: its own output


def test_the_demo_never_writes_over_a_folder_of_the_user_s_files(tmp_path, capsys):
    """`demo --out-dir mydata` replaced the model.safetensors in a folder of the user's
    files without a word (a new user's walk); it is refused before any training."""
    mine = tmp_path / "mydata"
    mine.mkdir()
    (mine / "model.safetensors").write_bytes(b"the user's model")
    (mine / "notes.txt").write_text("notes")
    assert main(["demo", "--out-dir", str(mine), "--minutes", "0.02", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "not an earlier demo's output" in err and "choose another --out-dir" in err
    assert (mine / "model.safetensors").read_bytes() == b"the user's model"
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "model.safetensors").write_bytes(b"the user's model")  # a demo's name, but no demo wrote it
    assert main(["demo", "--out-dir", str(alone), "--minutes", "0.02", "--device", "cpu"]) == 2
    assert (alone / "model.safetensors").read_bytes() == b"the user's model"


def test_a_bug_surfaces_as_a_traceback_not_as_bad_input(tmp_path, model_file, monkeypatch):
    """Only the user's mistakes become one-line errors; a failure inside the core
    propagates (the console script then exits 1 with its traceback)."""
    import napari_unet.cli as cli

    np.save(tmp_path / "a.npy", np.zeros((40, 40), np.float32))

    def broken(*_args, **_kwargs):
        raise ValueError("an internal inconsistency")

    monkeypatch.setattr(cli, "iter_segment", broken)
    with pytest.raises(ValueError, match="internal inconsistency"):
        main(["segment", str(model_file), str(tmp_path / "a.npy"), "--out-dir", str(tmp_path / "o")])


def test_seed_makes_training_repeatable(tmp_path, annotated_files):
    """With the same thread count: some sums are split over the threads (README,
    "Guarantees"), and without --threads the count follows the machine's load."""
    image, labels = annotated_files[0]
    for name in ("first", "second"):
        args = ["train", str(image), "--labels", str(labels), "--out", str(tmp_path / f"{name}.safetensors")]
        assert main([*args, *TINY, "--steps", "2", "--seed", "7", "--threads", "1"]) == 0
    first, second = (load_model(tmp_path / f"{name}.safetensors") for name in ("first", "second"))
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), key


def test_segment_out_streams_into_an_ome_zarr_store(tmp_path, model_file, capsys):
    import zarr

    rng = np.random.default_rng(1)
    image = rng.integers(0, 4000, (150, 130)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "big.tif", image, tile=(64, 64), compression="zlib")
    code = main(["segment", str(model_file), str(tmp_path / "big.tif"), "--out-dir", str(tmp_path / "files")])
    assert code == 0
    out = tmp_path / "big.zarr"
    code = main(["segment", str(model_file), str(tmp_path / "big.tif"), "--out", str(out), "--chunk", "64",
                 "--probabilities"])  # fmt: skip
    assert code == 0
    assert f"labels at {out / '0'}" in capsys.readouterr().out
    labels = zarr.open_array(out / "0", mode="r")[:]
    np.testing.assert_array_equal(labels, tifffile.imread(tmp_path / "files" / "big_labels.tif"))
    assert zarr.open_array(out / "probabilities" / "0", mode="r").shape == (2, 150, 130)
    # an existing store is refused, untouched, unless resumed
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    code = main(["segment", str(model_file), str(tmp_path / "big.tif"), "--out", str(out), "--chunk", "64"])
    assert (
        code == 2 and "exists; choose another output, or resume it (command line: --resume" in capsys.readouterr().err
    )
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    code = main(["segment", str(model_file), str(tmp_path / "big.tif"), "--out", str(out), "--chunk", "64",
                 "--probabilities", "--resume"])  # fmt: skip
    assert code == 0
    (tmp_path / "empty.zarr").mkdir()  # not a store: resuming it would not help, so --resume is not offered
    code = main(["segment", str(model_file), str(tmp_path / "big.tif"), "--out", str(tmp_path / "empty.zarr")])
    err = capsys.readouterr().err
    assert (
        code == 2 and "empty.zarr exists and is not a napari-unet segmentation store" in err and "--resume" not in err
    )


def test_a_stack_streamed_is_counted_as_in_memory_and_ctrl_c_points_to_resume(
    tmp_path, model_file, capsys, monkeypatch
):
    from napari_unet import cli_stream

    stack = np.random.default_rng(1).integers(0, 4000, (3, 64, 64)).astype(np.uint16)
    np.save(tmp_path / "stack.npy", stack)
    command = ["segment", str(model_file), str(tmp_path / "stack.npy"), "--out", str(tmp_path / "s.zarr")]
    assert main(command) == 0
    said = capsys.readouterr().out  # one count per plane, "3, 4, 5 objects", against "12 objects in 3 planes"
    counts = zarr.open_group(tmp_path / "s.zarr", mode="r").attrs["napari_unet"]["objects"]
    assert f"{sum(counts)} objects in 3 planes -> " in said

    def interrupted(run, show):
        next(run)  # the store exists now
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_stream, "drive", interrupted)
    assert main([*command[:-1], str(tmp_path / "t.zarr")]) == 130
    assert f"{tmp_path / 't.zarr'} is unfinished: run the same command with --resume" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda tmp, model: [str(model), str(tmp / "bad.zarr"), "--out", str(tmp / "o.zarr")], "cannot open zarr"),
        (lambda tmp, model: [str(model), str(tmp / "flat.npy"), "--out", str(tmp / "o.zarr")], "at least 2 dim"),
        (
            lambda tmp, model: [str(model), str(tmp / "img.npy"), "--out", str(tmp / "o.zarr"), "--chunk", "30"],
            "multiple of 4",
        ),
        (
            lambda tmp, model: [str(model), str(tmp / "img.npy"), str(tmp / "img.npy"), "--out", str(tmp / "o.zarr")],
            "one image's store",
        ),
        (
            lambda tmp, model: [str(model), str(tmp / "img.npy"), "--out-dir", str(tmp / "o"), "--workers", "2"],
            "--workers only applies with --out",
        ),
        (lambda tmp, model: [str(model), str(tmp / "img.npy"), "--out", str(tmp / "taken")], "exists"),
        (
            lambda tmp, model: [str(model), str(tmp / "img.npy"), "--out", str(tmp / "o.tif")],
            "not a .tif file: name it",
        ),
        (
            lambda tmp, model: [str(model), str(tmp / "img.npy"), "--out", str(tmp / "o.zarr"), "--tta"],
            "--tta works on whole planes in memory, while --out streams them in chunks: use --out-dir",
        ),
        (  # --out-dir refuses a zarr store and points to --out: the advice went in a circle
            lambda tmp, model: [str(model), str(tmp / "in.zarr"), "--out", str(tmp / "o.zarr"), "--tta"],
            "drop them: a zarr store is segmented with --out only",
        ),
        (  # a split asked for was set aside with a warning that called it the model's
            lambda tmp, model: [str(model), str(tmp / "img.npy"), "--out", str(tmp / "o.zarr"), "--split", "0.2"],
            "--split works on whole planes",
        ),
        (
            lambda tmp, model: [str(model), str(tmp / "img.npy"), "--out", str(tmp / "o.zarr"), "--rescale", "2"],
            "--rescale works on whole planes",
        ),
        (  # silently unused
            lambda tmp, model: [str(model), str(tmp / "img.npy"), "--out-dir", str(tmp / "o"), "--chunk", "64"],
            "--chunk only applies with --out",
        ),
        (  # said that the store "exists", whose run --overwrite had been meant to replace
            lambda tmp, model: [str(model), str(tmp / "img.npy"), "--out", str(tmp / "taken"), "--overwrite"],
            "--overwrite replaces files, not zarr stores: remove",
        ),
        (  # "stopped: File exists (img.npy); once fixed, run again with resume" for a store never made
            lambda tmp, model: [str(model), str(tmp / "img.npy"), "--out", str(tmp / "img.npy" / "o.zarr")],
            "img.npy is a file, not a folder; choose another output",
        ),
    ],
)
def test_bad_streaming_input_gives_one_clear_line(tmp_path, model_file, capsys, make_args, message):
    np.save(tmp_path / "img.npy", np.zeros((30, 30), np.float32))
    np.save(tmp_path / "flat.npy", np.zeros(30, np.float32))
    (tmp_path / "bad.zarr").mkdir()
    (tmp_path / "bad.zarr" / "zarr.json").write_text("{not json")
    (tmp_path / "taken").mkdir()
    code = main(["segment", *make_args(tmp_path, model_file)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("napari-unet: error:") and message in err[0], err
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "o.tif").exists()


def test_a_full_disk_is_one_line_and_the_store_stays_resumable(tmp_path, model_file, capsys, monkeypatch):
    import errno

    from napari_unet.core import stream

    np.save(tmp_path / "img.npy", np.random.default_rng(0).random((70, 70)).astype(np.float32))
    original = stream.predict_chunk
    calls = []

    def full_disk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(*args, **kwargs)

    monkeypatch.setattr(stream, "predict_chunk", full_disk)
    args = ["segment", str(model_file), str(tmp_path / "img.npy"), "--out", str(tmp_path / "o.zarr"), "--chunk", "32"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("napari-unet: error:") and "No space left on device" in err[-1] and "--resume" in err[-1]
    assert main([*args, "--resume"]) == 0


def test_new_cpu_models_normalise_batches_unless_told_not_to(tmp_path, annotated_files):
    image, labels = annotated_files[0]
    for flags, expected in (([], True), (["--no-batch-norm"], False)):
        out = tmp_path / f"{expected}.safetensors"
        args = ["train", str(image), "--labels", str(labels), "--out", str(out), *TINY, "--steps", "1", *flags]
        assert main(args) == 0
        model = load_model(out)
        assert model.config.batch_norm is expected
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) is expected


@pytest.mark.parametrize("option", ["--threads", "--nproc"])
def test_counts_below_one_are_refused_by_the_parser(tmp_path, capsys, option):
    with pytest.raises(SystemExit) as stop:
        main(["train", "a.tif", "--labels", "b.tif", "--out", str(tmp_path / "m"), option, "0"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"argument {option}: must be 1 or more, got 0" in err
    assert err.strip().splitlines() == [  # one line, not the 15 lines of usage above it
        f"napari-unet train: error: argument {option}: must be 1 or more, got 0 (see napari-unet train --help)"
    ]


def test_options_must_be_spelled_out(tmp_path, capsys):
    """`weights --out w.tif` (a file, as `train --out` is) was taken for `--out-dir`
    and made a folder named w.tif."""
    labels = tmp_path / "labels.npy"
    np.save(labels, np.zeros((20, 20), np.int32))
    with pytest.raises(SystemExit) as exit_info:
        main(["weights", str(labels), "--out", str(tmp_path / "w.tif")])
    assert exit_info.value.code == 2 and "required: --out-dir" in capsys.readouterr().err
    assert not (tmp_path / "w.tif").exists()


def test_every_argument_of_every_command_says_what_it_is():
    parser = build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    silent = {
        f"{name} {action.option_strings[0] if action.option_strings else action.dest}"
        for name, command in commands.choices.items()
        for action in command._actions
        if not action.help
    }
    assert not silent  # 16 had no text in --help


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_goes_before_or_after_the_command(model_file, where):
    """`napari-unet info MODEL -v` was refused as an unrecognized argument."""
    from napari_unet.cli import build_parser

    argv = ["-v", "info", str(model_file)] if where == "before" else ["info", str(model_file), "-v"]
    assert build_parser().parse_args(argv).verbose is True
    assert build_parser().parse_args(["info", str(model_file)]).verbose is False


def test_output_cut_short_by_the_reader_ends_quietly(model_file):
    """`napari-unet info MODEL | head -3` ended in a BrokenPipeError traceback."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "napari_unet.cli", "info", "--json", str(model_file)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before the first line (the import takes a second)
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141 and "Traceback" not in err and "BrokenPipe" not in err
