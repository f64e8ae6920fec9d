import json

import numpy as np
import pytest
import tifffile

from napari_unet import UNet, save_model
from napari_unet.cli import main


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


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda tmp, model: [str(model), str(tmp / "missing.tif")], "no such image file"),
        (lambda tmp, model: [str(tmp / "nomodel"), str(tmp / "img.npy")], "cannot read model file"),
        (lambda tmp, model: [str(tmp / "img.npy"), str(tmp / "img.npy")], "not a napari-unet model"),
        (lambda tmp, model: [str(model), str(tmp / "flat.npy")], "at least 2 dimensions"),
        (lambda tmp, model: [str(model), str(tmp / "img.npy"), "--tile", "50"], "nearest valid sizes"),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path, model_file, capsys, make_args, message):
    np.save(tmp_path / "img.npy", np.zeros((30, 30), np.float32))
    np.save(tmp_path / "flat.npy", np.zeros(30, np.float32))
    code = main(["segment", *make_args(tmp_path, model_file), "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("napari-unet: error:") and message in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_info_prints_what_the_file_holds(model_file, capsys):
    assert main(["info", str(model_file)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["spec"]["model"]["depth"] == 2 and info["metadata"] == {"note": "cli test"}
    assert info["parameters"] > 0
