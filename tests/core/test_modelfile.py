"""Hostile model files: refused with ModelFileError before anything is allocated."""

import json
import os
import threading
import zipfile

import pytest
import torch

from napari_unet import ModelFileError, UNet, load_model, save_model
from napari_unet.core import checkpoint, modelfile
from napari_unet.core import model as model_module
from napari_unet.core.config import ModelConfig, ModelSpec


def small_file(tmp_path, name="m.safetensors"):
    path = tmp_path / name
    save_model(UNet(base_channels=2, depth=1), path)
    return path


def split(path):
    """(header dict, tensor bytes) of a safetensors file."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]), data[8 + size :]


def join(path, header, tensors=b""):
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + tensors)


def edit_document(path, change):
    """Rewrite the napari-unet document of ``path`` with ``change(document)``."""
    header, tensors = split(path)
    document = json.loads(header["__metadata__"]["napari_unet"])
    change(document)
    header["__metadata__"]["napari_unet"] = json.dumps(document)
    join(path, header, tensors)


@pytest.fixture
def forbid_building(monkeypatch):
    """Call it to make building a UNet (and so allocating its weights) fail the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a network was built from an unchecked file")

    return lambda: monkeypatch.setattr(model_module.UNet, "__init__", refuse)


def test_expected_weights_match_the_network_for_many_architectures():
    for config in [ModelConfig(), ModelConfig(3, 5, 4, 1), ModelConfig(2, 2, 3, 6, 0.0)]:
        with torch.device("meta"):
            network = UNet.from_config(config)
        shapes = {name: tuple(t.shape) for name, t in network.state_dict().items()}
        assert modelfile.expected_weights(ModelSpec(model=config)) == shapes


def test_a_small_file_claiming_a_huge_network_is_refused_before_building_it(tmp_path, forbid_building):
    """34 KB of weights with base_channels 2000 in the header: the old loader built a
    7 GB network before comparing shapes."""
    path = tmp_path / "huge.safetensors"
    weights = {"head.weight": torch.zeros(2, 2, 1, 1), "head.bias": torch.zeros(2)}
    spec = ModelSpec(model=ModelConfig(base_channels=500, depth=4)).to_dict()
    spec["model"]["base_channels"] = 2000  # above the limit
    forbid_building()
    checkpoint.save_state(path, {"kind": "model", "spec": spec, "metadata": {}, "weights": weights})
    with pytest.raises(ModelFileError, match="base_channels = 2000, above the limit"):
        load_model(path)
    spec["model"]["base_channels"] = 500  # within the limit, but the weights do not fit it
    checkpoint.save_state(path, {"kind": "model", "spec": spec, "metadata": {}, "weights": weights})
    with pytest.raises(ModelFileError, match="does not hold the weights of the U-Net it describes"):
        load_model(path)


@pytest.mark.parametrize(
    ("field", "value"), [("in_channels", 5000), ("n_classes", 2000), ("base_channels", 513), ("depth", 9)]
)
def test_architectures_out_of_bounds_are_refused(tmp_path, forbid_building, field, value):
    path = small_file(tmp_path)
    edit_document(path, lambda d: _set_model_field(d, field, value))
    forbid_building()
    with pytest.raises(ModelFileError, match=field):
        load_model(path)


def _set_model_field(document, field, value):
    spec = next(v for k, v in document["state"]["__items__"] if k == "spec")
    model = next(v for k, v in spec["__items__"] if k == "model")
    for entry in model["__items__"]:
        if entry[0] == field:
            entry[1] = value


def _set_state_entry(document, key, value):
    for entry in document["state"]["__items__"]:
        if entry[0] == key:
            entry[1] = value


HOSTILE_DOCUMENTS = {
    "base_channels as a string": lambda d: _set_model_field(d, "base_channels", "64"),
    "base_channels as a list": lambda d: _set_model_field(d, "base_channels", [2]),
    "base_channels as null": lambda d: _set_model_field(d, "base_channels", None),
    "depth as true": lambda d: _set_model_field(d, "depth", True),
    "depth as a float": lambda d: _set_model_field(d, "depth", 1.0),
    "dropout as a string": lambda d: _set_model_field(d, "dropout", "NaN"),
    "spec as a list": lambda d: _set_state_entry(d, "spec", [1, 2]),
    "spec as a number": lambda d: _set_state_entry(d, "spec", 3),
    "class names as a number": lambda d: _set_state_entry(d, "spec", {"__items__": [["class_names", 5]]}),
    "weights as a list": lambda d: _set_state_entry(d, "weights", []),
    "metadata as a list": lambda d: _set_state_entry(d, "metadata", [1]),
    "kind unknown": lambda d: _set_state_entry(d, "kind", {"a": 1}),
    "state as a number": lambda d: d.update(state=5),
    "state missing": lambda d: d.pop("state"),
    "version as a string": lambda d: d.update(version="1"),
    "version from the future": lambda d: d.update(version=99),
    "format as a list": lambda d: d.update(format=["napari-unet"]),
    "items as a number": lambda d: d.update(state={"__items__": 5}),
    "item of three": lambda d: d.update(state={"__items__": [["a", 1, 2]]}),
    "missing tensor": lambda d: d.update(state={"__items__": [["kind", "model"], ["w", {"__tensor__": "nope"}]]}),
    "tensor name a number": lambda d: d.update(state={"__tensor__": 7}),
    "deep nesting": lambda d: d.update(state=_nested(500)),
}


def _nested(depth):
    node = 0
    for _ in range(depth):
        node = [node]
    return node


@pytest.mark.parametrize("change", HOSTILE_DOCUMENTS.values(), ids=HOSTILE_DOCUMENTS.keys())
def test_hostile_json_types_in_the_document_are_one_clear_error(tmp_path, change):
    path = small_file(tmp_path)
    edit_document(path, change)
    with pytest.raises(ModelFileError, match="m.safetensors"):
        load_model(path)


def _entry(header):
    return next(k for k in header if k != "__metadata__")


HOSTILE_HEADERS = {
    "header a list": lambda h: [1, 2],
    "metadata a list": lambda h: {**h, "__metadata__": [1]},
    "metadata values not strings": lambda h: {**h, "__metadata__": {"napari_unet": 5}},
    "no napari-unet document": lambda h: {**h, "__metadata__": {}},
    "document not JSON": lambda h: {**h, "__metadata__": {"napari_unet": "{"}},
    "dtype unknown": lambda h: {**h, _entry(h): {**h[_entry(h)], "dtype": "F128"}},
    "shape a string": lambda h: {**h, _entry(h): {**h[_entry(h)], "shape": "2x2"}},
    "shape negative": lambda h: {**h, _entry(h): {**h[_entry(h)], "shape": [-1, 4]}},
    "shape huge": lambda h: {**h, _entry(h): {**h[_entry(h)], "shape": [1 << 40, 1 << 40]}},
    "offsets floats": lambda h: {**h, _entry(h): {**h[_entry(h)], "data_offsets": [0.0, 8.5]}},
    "offsets beyond the file": lambda h: {**h, _entry(h): {**h[_entry(h)], "data_offsets": [0, 1 << 50]}},
    "entry a string": lambda h: {**h, _entry(h): "x"},
    "extra key in entry": lambda h: {**h, _entry(h): {**h[_entry(h)], "x": 1}},
}


@pytest.mark.parametrize("change", HOSTILE_HEADERS.values(), ids=HOSTILE_HEADERS.keys())
def test_hostile_safetensors_headers_are_one_clear_error(tmp_path, change):
    path = small_file(tmp_path)
    header, tensors = split(path)
    join(path, change(header), tensors)
    with pytest.raises(ModelFileError, match="m.safetensors"):
        load_model(path)


@pytest.mark.parametrize("length", [0, 1, 1 << 62, (1 << 64) - 1])
def test_a_header_length_beyond_the_file_is_refused_without_reading(tmp_path, length):
    path = tmp_path / "m.safetensors"
    path.write_bytes(length.to_bytes(8, "little") + b"{}" * 10)
    with pytest.raises(ModelFileError, match="not a napari-unet model"):
        load_model(path)


def test_tensors_that_leave_gaps_or_miss_bytes_are_refused(tmp_path):
    path = small_file(tmp_path)
    header, tensors = split(path)
    join(path, header, tensors + b"\0" * 64)  # trailing bytes no tensor accounts for
    with pytest.raises(ModelFileError, match="size"):
        load_model(path)
    join(path, header, tensors[:-4])  # truncated
    with pytest.raises(ModelFileError):
        load_model(path)


def test_a_weight_with_an_integer_dtype_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    model = UNet(base_channels=2, depth=1)
    weights = {k: v.to(torch.int32) if k == "head.weight" else v for k, v in model.state_dict().items()}
    checkpoint.save_state(path, {"kind": "model", "spec": model.spec.to_dict(), "metadata": {}, "weights": weights})
    with pytest.raises(ModelFileError, match="head.weight has dtype I32"):
        load_model(path)


def test_a_checkpoint_whose_model_does_not_fit_is_refused(tmp_path, forbid_building):
    path = tmp_path / "c.ckpt"
    spec = ModelSpec(model=ModelConfig(base_channels=300)).to_dict()
    forbid_building()
    checkpoint.save_state(
        path,
        {
            "kind": "checkpoint",
            "model": {"kind": "model", "spec": spec, "metadata": {}, "weights": {"x": torch.zeros(1)}},
            "optimizer": {"state": {}},
        },
    )
    with pytest.raises(ModelFileError, match="does not hold the weights"):
        load_model(path)


def test_a_directory_and_a_device_are_refused(tmp_path):
    (tmp_path / "folder.safetensors").mkdir()
    with pytest.raises(ModelFileError, match="it is a folder"):
        load_model(tmp_path / "folder.safetensors")
    if os.path.exists("/dev/zero"):
        link = tmp_path / "zero.safetensors"
        link.symlink_to("/dev/zero")
        with pytest.raises(ModelFileError, match="not a regular file"):
            load_model(link)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_without_blocking(tmp_path):
    """The old loader read a FIFO and waited forever for a writer."""
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    outcome = []

    def load():
        try:
            load_model(fifo)
        except ModelFileError as error:
            outcome.append(str(error))

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(timeout=10)
    if thread.is_alive():  # unblock the reader so the test process can end
        with open(fifo, "wb"):
            pass
        thread.join(timeout=10)
        pytest.fail("loading a FIFO blocked")
    assert outcome and "not a regular file" in outcome[0]


def test_a_file_above_the_size_limit_is_refused(tmp_path, monkeypatch):
    path = small_file(tmp_path)
    monkeypatch.setattr(modelfile, "MAX_FILE_BYTES", path.stat().st_size - 1)
    with pytest.raises(ModelFileError, match="larger than any napari-unet model"):
        load_model(path)


def test_a_hostile_checkpoint_resumes_with_one_clear_error(tmp_path):
    from napari_unet.core.synthetic import synthetic_nuclei
    from napari_unet.core.train import Trainer

    model = UNet(base_channels=2, depth=1)
    path = tmp_path / "c.ckpt"
    state = {
        "kind": "checkpoint",
        "model": checkpoint.model_state(model, {}),
        "optimizer": {"state": "x"},
        "config": {"steps": "many"},
        "step": [1],
        "rng": 5,
    }
    checkpoint.save_state(path, state)
    image, labels = synthetic_nuclei((64, 64), seed=0)
    with pytest.raises(ModelFileError, match="c.ckpt"):
        Trainer.resume(path, [image], [labels])


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("model.onnx", "is an ONNX model (napari-unet exports them for other software"),
        ("model.pt", "is a TorchScript or pickled PyTorch file, which napari-unet never loads"),
        ("weights.pth", "is a pickled PyTorch file, which napari-unet never loads"),
        ("model.bin", "is a TorchScript or pickled PyTorch file"),  # by its zip's first bytes
        ("model.safetensors", "is a TorchScript or pickled PyTorch file"),  # said "not a napari-unet model file"
        ("pickle.safetensors", "is a pickled PyTorch file, which napari-unet never loads"),
        ("random.bin", "is not a napari-unet model file (corrupt, truncated or another format)"),
        ("images.dat", "is not a napari-unet model file"),  # a zip without pickles: said to run code
    ],
)
def test_files_of_other_formats_are_refused_with_what_they_are(tmp_path, name, says):
    head = {"pickle": b"\x80\x04", "random": b"\x01\x02"}.get(name.split(".")[0], b"PK\x03\x04")
    (tmp_path / name).write_bytes(head + bytes(range(256)) * 4)  # neither safetensors nor a package
    if name in ("model.bin", "model.safetensors"):
        torch.save({"weights": torch.zeros(3)}, tmp_path / name)  # a zip of pickles
    if name == "images.dat":
        with zipfile.ZipFile(tmp_path / name, "w") as archive:
            archive.writestr("a.tif", b"")
    with pytest.raises(ModelFileError) as refused:
        load_model(tmp_path / name)
    assert f"{tmp_path / name} {says}" in str(refused.value)


def test_class_names_follow_the_number_of_classes(tmp_path):
    """Each output class has one name: the paper's 3D network's third class is named,
    a file from before (two default names for three classes) still loads, and names
    that do not fit the classes are refused."""
    model = UNet.paper_3d(in_channels=1)
    assert model.spec.classes == ("background", "cell", "class 2")
    assert UNet(base_channels=2, depth=1).spec.classes == ("background", "cell")
    network = UNet(base_channels=2, depth=1, n_classes=3)
    path = tmp_path / "three.safetensors"
    save_model(network, path)
    assert load_model(path).spec.classes == ("background", "cell", "class 2")

    def saved_with(names):
        spec = network.spec.to_dict() | {"class_names": names}
        checkpoint.save_state(path, {"kind": "model", "spec": spec, "metadata": {}, "weights": network.state_dict()})
        return path

    assert load_model(saved_with(["background", "cell"])).spec.classes == ("background", "cell", "class 2")
    with pytest.raises(ModelFileError, match="must name each of the model's 3 classes, got 2"):
        load_model(saved_with(["a", "b"]))
    named = ModelSpec(model=ModelConfig(n_classes=3), class_names=("background", "nucleus", "border"))
    assert ModelSpec.from_dict(named.to_dict()) == named and named.classes == ("background", "nucleus", "border")
    assert ModelSpec.from_dict(network.spec.to_dict()) == network.spec  # default names: the same spec read back


def test_the_model_card_rounds_the_validation_scores():
    """`info` printed "pixel IoU 0.94828666945257"."""
    from napari_unet.core.model_card import model_card

    model = UNet(base_channels=2, depth=1)
    model.metadata = {"training": {"steps": 3, "validation": {"step": 3, "ap50": 0.9, "pixel_iou": 0.94828666945257}}}
    card = model_card(model, "m.safetensors")
    assert "validation at step 3: AP@0.5 0.900, pixel IoU 0.948" in card
