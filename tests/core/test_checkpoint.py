import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from napari_unet import InstanceConfig, ModelFileError, UNet, load_model, predict, save_model
from napari_unet.core import checkpoint


def test_round_trip_keeps_weights_spec_and_metadata(tmp_path):
    model = UNet(in_channels=2, n_classes=3, base_channels=4, depth=2, dropout=0.1)
    model.spec = model.spec.__class__(
        model=model.config, instances=InstanceConfig(threshold=0.3), class_names=("bg", "a", "b")
    )
    path = tmp_path / "m.safetensors"
    save_model(model, path, note="hello", history={"steps": 3, "loss": [0.5, 0.4]})
    loaded = load_model(path)
    assert loaded.config == model.config and loaded.spec == model.spec
    assert loaded.metadata == {"note": "hello", "history": {"steps": 3, "loss": [0.5, 0.4]}}
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    image = np.random.default_rng(0).random((2, 30, 30)).astype(np.float32)
    np.testing.assert_array_equal(
        predict(model.eval(), image, precision="fp32"), predict(loaded, image, precision="fp32")
    )


def test_nested_state_with_int_keys_round_trips(tmp_path):
    state = {
        "optimizer": {
            "state": {0: {"momentum_buffer": torch.ones(3)}},
            "param_groups": [{"lr": 0.1, "params": [0]}],
        },
        "rng": torch.arange(5, dtype=torch.uint8),
        "none": None,
        "flag": True,
    }
    checkpoint.save_state(tmp_path / "s", state)
    loaded = checkpoint.load_state(tmp_path / "s")
    assert list(loaded["optimizer"]["state"]) == [0]
    assert torch.equal(loaded["optimizer"]["state"][0]["momentum_buffer"], torch.ones(3))
    assert loaded["optimizer"]["param_groups"] == [{"lr": 0.1, "params": [0]}]
    assert loaded["none"] is None and loaded["flag"] is True


class Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps({"weights": Payload(marker)}))
    torch_file = tmp_path / "torch.pt"
    torch.save({"weights": Payload(marker)}, torch_file)
    assert zipfile.is_zipfile(torch_file)
    for path in (plain, torch_file):
        with pytest.raises(ModelFileError, match=str(path.name)):
            load_model(path)
    assert not marker.exists()


def test_a_model_with_nan_weights_is_refused_when_loaded(tmp_path):
    """It loaded, and segmenting with it advised lowering the minimum object size."""
    model = UNet(base_channels=2, depth=1)
    with torch.no_grad():
        model.get_submodule(model.plan[0].module).weight[0, 0, 0, 0] = float("nan")
    save_model(model, tmp_path / "nan.safetensors")
    with pytest.raises(ModelFileError, match=r"holds NaN or infinite weights \(.*\): it cannot segment anything"):
        load_model(tmp_path / "nan.safetensors")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "foreign"])
def test_damaged_or_foreign_files_name_the_file(tmp_path, damage):
    path = tmp_path / "model.safetensors"
    save_model(UNet(base_channels=2, depth=1), path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(1000))
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(ModelFileError, match="model.safetensors"):
        load_model(path)


@pytest.mark.parametrize("where", ["first weight", "last byte"])
def test_weight_bytes_changed_on_disk_are_found(tmp_path, where):
    """200 weight bytes flipped in place (the file's size and header intact) loaded
    without a word and segmented 64 objects instead of 32 (a new user's walk)."""
    path = tmp_path / "model.safetensors"
    save_model(UNet(base_channels=2, depth=1), path)
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # the tensors follow the header
    at = start if where == "first weight" else len(data) - 1
    data[at] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(
        ModelFileError, match=r"model.safetensors is damaged: its weights are not the ones it was saved"
    ):
        load_model(path)


def test_a_file_without_a_digest_loads_as_before(tmp_path, monkeypatch):
    """Model files written before the digest was recorded have none: they load."""
    monkeypatch.setattr(checkpoint, "tensors_digest", lambda tensors: None)  # what save_state wrote then: no key
    path = tmp_path / "old.safetensors"
    model = UNet(base_channels=2, depth=1)
    save_model(model, path)
    monkeypatch.undo()
    from napari_unet.core.modelfile import read_checked

    assert read_checked(path)[0].get("sha256") is None
    loaded = load_model(path)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelFileError, match="cannot read"):
        load_model(tmp_path / "nope.safetensors")


def test_a_crash_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    old = UNet(base_channels=2, depth=1)
    save_model(old, path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_model(UNet(base_channels=3, depth=1), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left behind


def test_metadata_that_cannot_be_stored_fails_before_writing(tmp_path):
    with pytest.raises(TypeError):
        save_model(UNet(base_channels=2, depth=1), tmp_path / "m", bad=object())
    assert not (tmp_path / "m").exists()
