"""Model exchange: the standalone network, TorchScript, ONNX, bioimage.io packages.

The bioimage.io tests write one package of a tiny model (base 4, depth 2) per test
run and check it with bioimageio.core's own tools.
"""

import ast
import hashlib
import json
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import napari_unet as nu
from napari_unet.cli import main
from napari_unet.core import exchange, standalone_unet
from napari_unet.core.bioimageio_package import ARCHITECTURE_NAME, example_size, scale_range
from napari_unet.core.geometry import context, margin
from napari_unet.core.layer_plan import layer_plan
from napari_unet.core.model import without_batch_norm
from napari_unet.core.normalize import normalize
from napari_unet.core.package_reader import RECORD_NAME, STATE_DICT_NAME, read_package


def tiny_model(seed: int = 0, **kwargs) -> nu.UNet:
    """A small model in eval mode; with ``batch_norm=True`` (the CPU default's form) its
    normalisations hold running statistics far from the identity."""
    torch.manual_seed(seed)
    model = nu.UNet(base_channels=4, depth=2, **kwargs)
    if model.config.batch_norm:
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(2, 1, 60, 60) * 3 + 1)
    model.spec = nu.ModelSpec(
        model=model.config,
        normalization=nu.NormalizationConfig(low=2.0, high=99.5),
        instances=nu.InstanceConfig(threshold=0.4, min_size=5),
        class_names=("background", "nucleus"),
    )
    model.metadata = {"training": {"steps": 3, "config": {"batch_size": 2}}, "weight_map": {"w0": 10.0, "sigma": 5.0}}
    return model.eval()


def foreground(model: nu.UNet, image: np.ndarray) -> np.ndarray:
    """napari-unet's foreground probability (H, W) of a 2D image."""
    return 1.0 - nu.predict(model, image, precision="fp32")[0]


def normalized_batch(model: nu.UNet, images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack([normalize(image[None], model.spec.normalization) for image in images]))


@pytest.mark.parametrize(
    "config",
    [nu.ModelConfig(), nu.ModelConfig(in_channels=3, n_classes=4, base_channels=8, depth=1), nu.ModelConfig(depth=6)],
)
def test_standalone_network_follows_the_core_layer_plan(config):
    kwargs = {k: getattr(config, k) for k in ("in_channels", "n_classes", "base_channels", "depth")}
    core_plan = [
        (
            layer.kind,
            layer.module,
            layer.in_channels,
            layer.out_channels,
            exchange.kernel_side(layer.kernel),
            layer.relu,
        )
        for layer in layer_plan(config)
    ]
    assert [tuple(layer) for layer in standalone_unet.layer_plan(**kwargs)] == core_plan
    assert exchange.plan_signature(tiny_model()) == [tuple(layer) for layer in standalone_unet.layer_plan(1, 2, 4, 2)]


def test_standalone_network_has_the_core_weights_and_no_napari_unet_import():
    model = nu.UNet(in_channels=2, n_classes=3, base_channels=4, depth=3)
    network = standalone_unet.SameSizeUNet(in_channels=2, n_classes=3, base_channels=4, depth=3)
    assert {k: v.shape for k, v in network.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    tree = ast.parse(Path(standalone_unet.__file__).read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    } | {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"__future__", "typing", "torch"}


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_halo_covers_the_context_on_the_pooling_grid(depth):
    step = 2**depth
    assert standalone_unet.context(depth) == context(depth) == margin(depth) // 2
    assert exchange.halo(depth) >= context(depth) and exchange.halo(depth) % step == 0
    assert exchange.min_size(depth) == 2 * exchange.halo(depth) + step
    assert example_size(depth) % step == 0 and example_size(depth) >= exchange.min_size(depth)
    assert (exchange.halo(3), exchange.min_size(3)) == (48, 104)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_same_size_network_equals_predict_on_any_size(rng, batch_norm):
    model = tiny_model(batch_norm=batch_norm)
    network = exchange.same_size_network(model)
    for shape in [(64, 80), (77, 93)]:  # a declared size and an undeclared one
        image = rng.random(shape).astype(np.float32) * 1000
        with torch.no_grad():
            out = network(normalized_batch(model, [image]))[0, 0].numpy()
        assert out.shape == shape
        np.testing.assert_allclose(out, foreground(model, image), atol=1e-5)


def _two_sizes(model: nu.UNet, rng) -> list[torch.Tensor]:
    small = exchange.min_size(model.config.depth)
    return [
        normalized_batch(model, [rng.random((small, small)).astype(np.float32)]),
        normalized_batch(model, list(rng.random((2, small + 12, small + 40)).astype(np.float32))),
    ]


def test_torchscript_equals_torch_on_two_sizes(tmp_path, rng):
    model = tiny_model(batch_norm=True)
    path = exchange.export_model(model, tmp_path / "m.pt", "torchscript")
    scripted = torch.jit.load(str(path))
    network = exchange.same_size_network(model)
    for inputs in _two_sizes(model, rng):
        with torch.no_grad():
            expected, actual = network(inputs), scripted(inputs)
        assert actual.shape == (inputs.shape[0], 1, *inputs.shape[2:])
        assert (actual - expected).abs().max().item() <= 1e-4


def test_onnx_runtime_equals_torch_on_two_sizes(tmp_path, rng):
    onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX Runtime comes with napari-unet[export]")
    model = tiny_model()
    path = exchange.export_model(model, tmp_path / "m.onnx", "onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    network = exchange.same_size_network(model)
    for inputs in _two_sizes(model, rng):
        actual = session.run(None, {exchange.INPUT_NAME: inputs.numpy()})[0]
        with torch.no_grad():
            expected = network(inputs).numpy()
        assert actual.shape == expected.shape
        assert np.abs(actual - expected).max() <= 1e-4


def test_export_refuses_unknown_formats_and_misplaced_options(tmp_path):
    with pytest.raises(exchange.ExportError, match="unknown export format"):
        exchange.export_model(tiny_model(), tmp_path / "m.x", "keras")
    with pytest.raises(exchange.ExportError, match="only apply to bioimage.io"):
        exchange.export_model(tiny_model(), tmp_path / "m.pt", "torchscript", authors=["A"])
    with pytest.raises(nu.OutputFileError, match="is a folder"):
        exchange.export_model(tiny_model(), tmp_path, "torchscript")
    pytest.importorskip("bioimageio.spec", reason="bioimage.io export needs napari-unet[export]")
    with pytest.raises(nu.NapariUnetError, match="'NAME' is too short: bioimage.io needs 5 characters"):
        exchange.export_model(tiny_model(), tmp_path / "m.zip", "bioimageio", name="NAME")  # said "4 items"
    with pytest.raises(nu.ConfigError, match="license 'MIT-typo' is not an SPDX license id"):
        exchange.export_model(tiny_model(), tmp_path / "m.zip", "bioimageio", license="MIT-typo")  # was pydantic's


def test_cli_export_torchscript(tmp_path, capsys):
    nu.save_model(tiny_model(), tmp_path / "m.safetensors")
    out = tmp_path / "new folder" / "m.pt"  # created, as train and segment create theirs
    code = main(["export", str(tmp_path / "m.safetensors"), "--format", "torchscript", "--out", str(out)])
    assert code == 0
    assert out.is_file() and "torchscript" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["m.pt"]  # written atomically: no temporary left
    code = main(
        [
            "export",
            str(tmp_path / "m.safetensors"),
            "--format",
            "onnx",
            "--out",
            str(tmp_path / "x.onnx"),
            "--author",
            "A",
        ]
    )
    assert code == 2 and "bioimageio only" in capsys.readouterr().err
    code = main(
        ["export", str(tmp_path / "m.safetensors"), "--out", str(tmp_path / "x.onnx"), "--license", "MIT"]
    )  # went unused
    assert code == 2 and "--license" in capsys.readouterr().err


def test_the_export_format_follows_the_file_name_and_never_contradicts_it(tmp_path, capsys):
    """--out model.onnx wrote a bioimage.io zip (the default format) under that name."""
    nu.save_model(tiny_model(), tmp_path / "m.safetensors")
    assert main(["export", str(tmp_path / "m.safetensors"), "--out", str(tmp_path / "m.onnx")]) == 0
    assert "(onnx," in capsys.readouterr().out and not zipfile.is_zipfile(tmp_path / "m.onnx")
    export = ["export", str(tmp_path / "m.safetensors"), "--out"]
    assert main([*export, str(tmp_path / "m2.onnx"), "--format", "bioimageio"]) == 2
    assert "is named for onnx, but --format is bioimageio: name it m2.zip" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "m.safetensors"), "--out", str(tmp_path / "m.model")]) == 2
    assert "name it .zip (bioimage.io), .onnx or .pt" in capsys.readouterr().err
    assert not (tmp_path / "m2.onnx").exists() and not (tmp_path / "m.model").exists()


def test_cli_export_of_a_3d_model_prints_its_sizes_per_axis(tmp_path, capsys):
    """3D models were refused by every export."""
    nu.save_model(nu.UNet(ndim=3, base_channels=2, depth=1), tmp_path / "v.safetensors")
    assert main(["export", str(tmp_path / "v.safetensors"), "--out", str(tmp_path / "v.pt")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "input (N, 1, Z, Y, X) normalised per image and channel; output (N, 1, ...) the foreground probability. "
        "Tile sizes: z 18 + k*2, y 18 + k*2, x 18 + k*2; halo to drop at tile borders: z 8, y 8, x 8 px"
    )
    assert torch.jit.load(str(tmp_path / "v.pt"))(torch.zeros(1, 1, 28, 28, 28)).shape == (1, 1, 28, 28, 28)


def volume_model(spacing=None, **kwargs) -> nu.UNet:
    """A small 3D model in eval mode, its batch normalisation (the 3D U-Net's) holding
    running statistics far from the identity."""
    torch.manual_seed(0)
    config = replace(nu.ModelConfig.paper_3d(in_channels=1, n_classes=2, spacing=spacing), base_channels=2, depth=2)
    model = nu.UNet.from_config(replace(config, **kwargs))
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(1, 1, 44, 92, 92) * 3 + 1)
    return model.eval()


THREE_D = [
    pytest.param({}, id="3D U-Net"),
    pytest.param({"spacing": (3.0, 1.0, 1.0)}, id="anisotropic"),
    pytest.param({"double_before_pool": False, "up_bias": True, "batch_norm": False}, id="2D design in 3D"),
]


@pytest.mark.parametrize("settings", THREE_D)
def test_a_3d_model_exports_as_torchscript_and_onnx_equal_to_predict(tmp_path, rng, settings):
    """3D models were refused by every export; the standalone network now holds them,
    anisotropic kernels and poolings included, and equals napari-unet's overlap-tile
    prediction on a volume of declared and of other sizes."""
    onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX Runtime comes with napari-unet[export]")
    model = volume_model(**settings)
    network = exchange.same_size_network(model)
    plain = without_batch_norm(model)
    assert exchange.plan_signature(plain) == [
        tuple(layer)
        for layer in standalone_unet.layer_plan(**exchange._plan_kwargs(exchange.architecture_kwargs(plain)))
    ]
    sizes = exchange.axis_sizes(model)
    declared = tuple(axis.smallest + axis.step for axis in sizes)
    scripted = torch.jit.load(str(exchange.export_model(model, tmp_path / "m.pt", "torchscript")))
    session = onnxruntime.InferenceSession(
        str(exchange.export_model(model, tmp_path / "m.onnx", "onnx")), providers=["CPUExecutionProvider"]
    )
    for shape in [declared, tuple(n + 5 for n in declared)]:
        volume = rng.random(shape).astype(np.float32) * 1000
        inputs = torch.from_numpy(normalize(volume[None], model.spec.normalization)[None])
        with torch.no_grad():
            out = network(inputs)
        assert out.shape == (1, 1, *shape)
        expected = 1.0 - nu.predict(model, volume, precision="fp32")[0]
        np.testing.assert_allclose(out[0, 0].numpy(), expected, atol=1e-5)
        with torch.no_grad():
            assert (scripted(inputs) - out).abs().max().item() <= 1e-4
        assert np.abs(session.run(None, {exchange.INPUT_NAME: inputs.numpy()})[0] - out.numpy()).max() <= 1e-4


def test_a_foreign_package_is_refused_with_what_is_supported(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("rdf.yaml", "type: model\nname: someone else's\n")
    with pytest.raises(nu.ModelFileError, match="did not write") as error:
        nu.load_model(path)
    assert ".safetensors" in str(error.value) and "bioimageio" in str(error.value)
    not_a_package = tmp_path / "data.zip"
    with zipfile.ZipFile(not_a_package, "w") as archive:
        archive.writestr("image.tif", b"")
    with pytest.raises(nu.ModelFileError):
        nu.load_model(not_a_package)


# --------------------------------------------------------------------------- bioimage.io


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    pytest.importorskip("bioimageio.spec", reason="bioimage.io export needs napari-unet[export]")
    model = tiny_model(seed=1, batch_norm=True)
    path = tmp_path_factory.mktemp("package") / "tiny.zip"
    image = nu.synthetic_nuclei((150, 140), seed=3)[0]
    nu_path = exchange.export_model(model, path, "bioimageio", authors=["Ada Lovelace"], image=image)
    return model, nu_path


def test_package_describes_sizes_halo_normalisation_and_citation(package):
    _, path = package
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        rdf = archive.read("rdf.yaml").decode()
        record = json.loads(archive.read(RECORD_NAME))
        readme = archive.read("README.md").decode()
        architecture = archive.read(ARCHITECTURE_NAME)
    assert {"weights.pt", "weights_torchscript.pt", "weights.onnx", "cover.png", "README.md"} <= names
    assert {"test_input.npy", "test_output.npy", "sample_input.tif", "sample_output.tif", ARCHITECTURE_NAME} <= names
    assert architecture == Path(standalone_unet.__file__).read_bytes()
    for fragment in ["min: 44", "step: 4", "halo: 20", "mode: reflect", "scale_range", "min_percentile: 2.0"]:
        assert fragment in rdf
    assert "max_percentile: 99.5" in rdf and "10.1007/978-3-319-24574-4_28" in rdf and "Ada Lovelace" in rdf
    assert "parent: pytorch_state_dict" in rdf and "license: CC-BY-4.0" in rdf
    assert record["spec"]["class_names"] == ["background", "nucleus"]
    assert "## Validation" in readme and "w0 = 10.0" in readme


def test_package_round_trip_gives_identical_predictions(package, tmp_path, rng):
    model, path = package
    image = rng.random((90, 70)).astype(np.float32)
    expected = nu.predict(model, image)
    folder = tmp_path / "unpacked"
    shutil.unpack_archive(path, folder)
    for source in (path, folder, folder / "rdf.yaml"):
        loaded = nu.load_model(source)  # the normalisations folded into the convolutions
        assert loaded.spec == replace(model.spec, model=replace(model.config, batch_norm=False))
        assert loaded.metadata == model.metadata
        assert np.array_equal(nu.predict(loaded, image), expected)


def test_a_package_member_that_unpacks_to_far_more_than_it_packs_is_refused_unread(package, tmp_path, monkeypatch):
    """A 6 MB package whose weights unpacked to 2 GiB of zeros took 4.4 GB of memory
    before its hash was found wrong."""
    from napari_unet.core import package_reader

    monkeypatch.setattr(package_reader, "BOMB_MIN_BYTES", 1 << 20)  # the same check, on a smaller file
    _, path = package
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as target:
        for member in source.namelist():
            data = b"\0" * (8 << 20) if member == STATE_DICT_NAME else source.read(member)
            target.writestr(member, data)
    with pytest.raises(nu.ModelFileError, match=r"would unpack from 0\.0 MB to 8 MB"):
        nu.load_model(bomb)
    assert nu.load_model(path).config.depth == 2  # real weights pack to about their size


def rewrite_record(folder: Path, record: dict) -> None:
    """Replace an unpacked package's record, and the SHA-256 rdf.yaml lists for it, as a
    hostile package would."""
    old = hashlib.sha256((folder / RECORD_NAME).read_bytes()).hexdigest()
    (folder / RECORD_NAME).write_text(json.dumps(record))
    rdf = folder / "rdf.yaml"
    rdf.write_text(rdf.read_text().replace(old, hashlib.sha256((folder / RECORD_NAME).read_bytes()).hexdigest()))


def test_a_record_edited_after_export_is_refused(package, tmp_path):
    """Percentiles edited into napari_unet.json changed every prediction without a word
    (67 objects instead of 32), where bioimage.io's tools refuse the package."""
    _, path = package
    folder = tmp_path / "unpacked"
    shutil.unpack_archive(path, folder)
    record = json.loads((folder / RECORD_NAME).read_text())
    record["spec"]["normalization"]["low"] = 40.0
    (folder / RECORD_NAME).write_text(json.dumps(record))
    with pytest.raises(nu.ModelFileError, match="napari_unet.json does not match the SHA-256 that rdf.yaml lists"):
        nu.load_model(folder)


def _scale_range(description: dict) -> dict:
    return next(step for step in description["inputs"][0]["preprocessing"] if step["id"] == "scale_range")


@pytest.mark.parametrize(
    "edit",
    [
        lambda rdf: _scale_range(rdf)["kwargs"].update(min_percentile=5.0),  # what deepImageJ would then use
        lambda rdf: _scale_range(rdf)["kwargs"].update(axes=["x"]),
        lambda rdf: rdf["outputs"][0].update(postprocessing=[{"id": "binarize", "kwargs": {"threshold": 0.5}}]),
    ],
    ids=["percentile", "axes", "postprocessing"],
)
def test_a_description_edited_after_export_is_refused(package, tmp_path, edit):
    """rdf.yaml's own processing edited (the record untouched): napari-unet reads its
    normalisation from the record, bioimage.io's tools from rdf.yaml, so the two would
    compute different things."""
    _, path = package
    folder = tmp_path / "unpacked"
    shutil.unpack_archive(path, folder)
    rdf = folder / "rdf.yaml"
    exported = rdf.read_text()
    description = yaml.safe_load(exported)
    edit(description)
    rdf.write_text(yaml.safe_dump(description))
    with pytest.raises(nu.ModelFileError, match="the pre- or postprocessing in rdf.yaml is not what napari-unet wrote"):
        nu.load_model(folder)
    rdf.write_text(yaml.safe_dump(yaml.safe_load(exported)))  # the same description, written anew
    nu.load_model(folder)


def test_package_import_never_runs_the_architecture_and_checks_the_hash(package, tmp_path):
    _, path = package
    folder = tmp_path / "unpacked"
    shutil.unpack_archive(path, folder)
    sentinel = tmp_path / "ran"
    (folder / ARCHITECTURE_NAME).write_text(f"open({str(sentinel)!r}, 'w').write('x')\n")
    read_package(folder)
    assert not sentinel.exists()
    weights = folder / STATE_DICT_NAME
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(nu.ModelFileError, match="hash"):
        nu.load_model(folder)


class Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_package_whose_weights_carry_code_is_refused_in_one_line(package, tmp_path):
    """torch's refusal came through whole: several lines, one of them advising to load
    the file with weights_only=False."""
    _, path = package
    folder = tmp_path / "unpacked"
    shutil.unpack_archive(path, folder)
    marker = tmp_path / "pwned"
    torch.save({"weights": Payload(marker)}, folder / STATE_DICT_NAME)
    record = json.loads((folder / RECORD_NAME).read_text())
    record["weights"]["sha256"] = hashlib.sha256((folder / STATE_DICT_NAME).read_bytes()).hexdigest()
    rewrite_record(folder, record)
    with pytest.raises(nu.ModelFileError) as refused:
        nu.load_model(folder)
    message = str(refused.value)
    assert "holds more than tensors" in message and "\n" not in message and "weights_only" not in message
    assert not marker.exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [("version", "x"), ("weights", ["a"]), ("spec", [1]), ("metadata", "m"), ("version", 99)],
)
def test_a_tampered_package_record_is_refused_in_one_line(package, tmp_path, field, value):
    """A version that is not a number and weights that are not a mapping ended in a
    TypeError and an AttributeError with their tracebacks."""
    _, path = package
    folder = tmp_path / "unpacked"
    shutil.unpack_archive(path, folder)
    record = json.loads((folder / RECORD_NAME).read_text())
    record[field] = value
    rewrite_record(folder, record)
    with pytest.raises(nu.ModelFileError, match="newer napari-unet" if value == 99 else "is not as napari-unet writes"):
        nu.load_model(folder)


def test_package_test_tensors_follow_the_spec_preprocessing(package):
    model, path = package
    with zipfile.ZipFile(path) as archive:
        raw = np.load(archive.open("test_input.npy"))
        out = np.load(archive.open("test_output.npy"))
    assert raw.shape == out.shape == (1, 1, 128, 128)
    np.testing.assert_allclose(
        scale_range(raw[0], model.spec.normalization), normalize(raw[0], model.spec.normalization), atol=1e-6
    )
    np.testing.assert_allclose(out[0, 0], foreground(model, raw[0, 0]), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("packaged", ["package", "volume_package"])
def test_bioimageio_test_passes_for_every_weight_format(packaged, request):
    core = pytest.importorskip("bioimageio.core", reason="bioimage.io checks need napari-unet[export]")
    _, path = request.getfixturevalue(packaged)
    for weight_format in ("pytorch_state_dict", "torchscript", "onnx"):
        summary = core.test_model(path, weight_format=weight_format, devices=["cpu"])
        failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status != "passed"]
        assert summary.status == "passed", failed


@pytest.mark.slow
def test_bioimageio_tiled_prediction_is_seamless_and_equals_predict(package):
    core = pytest.importorskip("bioimageio.core", reason="bioimage.io checks need napari-unet[export]")
    from bioimageio.core.digest_spec import create_sample_for_model

    model, path = package
    descr = core.load_model_description(path)
    image = nu.synthetic_nuclei((196, 172), seed=4)[0].astype(np.float32)  # declared sizes: 44 + 4 n
    tiled = core.predict(model=descr, inputs={"raw": image[None, None]}, blocksize_parameter=8)
    result = tiled.members["foreground"].data.values[0, 0]
    assert np.abs(result - foreground(model, image)).max() <= 1e-3

    # block artifacts: with the same normalisation, tiles == one pass over the whole image
    with core.create_prediction_pipeline(descr, devices=["cpu"]) as pipeline:
        sample = create_sample_for_model(descr, inputs={"raw": image[None, None]}, sample_id="s")
        pipeline.apply_preprocessing(sample)
        whole = pipeline.predict_sample_without_blocking(sample, skip_preprocessing=True)
        blocks = pipeline.predict_sample_with_blocking(sample, skip_preprocessing=True, ns=8)
    difference = whole.members["foreground"].data.values - blocks.members["foreground"].data.values
    assert np.abs(difference).max() <= 1e-5


@pytest.fixture(scope="module")
def volume_package(tmp_path_factory):
    pytest.importorskip("bioimageio.spec", reason="bioimage.io export needs napari-unet[export]")
    model = volume_model(spacing=(2.0, 1.0, 1.0))
    path = tmp_path_factory.mktemp("package") / "volume.zip"
    return model, exchange.export_model(model, path, "bioimageio", authors=["Ada Lovelace"])


def test_a_3d_package_describes_each_axis_and_reads_back_with_identical_predictions(volume_package, rng):
    """bioimage.io packages held 2D models only."""
    model, path = volume_package
    with zipfile.ZipFile(path) as archive:
        rdf = archive.read("rdf.yaml").decode()
        readme = archive.read("README.md").decode()
        raw = np.load(archive.open("test_input.npy"))
    sizes = exchange.axis_sizes(model)
    assert [(axis.step, axis.halo) for axis in sizes] == [(2, 8), (4, 20), (4, 20)]  # z is coarse at level 0
    assert raw.shape == (1, 1, sizes[0].smallest + 2, 128, 128)
    assert "id: z" in rdf and "halo: 8" in rdf and "3d" in rdf
    assert "input sizes: z 18 + n * 2, y 44 + n * 4, x 44 + n * 4 px" in readme
    back = nu.load_model(path)
    assert back.config.ndim == 3 and back.config.spacing == (2.0, 1.0, 1.0)
    volume = rng.random((20, 48, 52)).astype(np.float32)
    np.testing.assert_allclose(
        nu.predict(back, volume, precision="fp32"), nu.predict(model, volume, precision="fp32"), atol=1e-5
    )


def test_a_package_readme_says_which_runs_a_fine_tuned_model_started_from():
    from napari_unet.core.model_card import describe_training

    record = {"steps": 40, "seconds": 3.0, "config": {}}
    alone = "\n".join(describe_training({"training": record}))
    tuned = "\n".join(describe_training({"training": record, "earlier_training": [{"steps": 300}, {"steps": 25}]}))
    assert "fine-tuned" not in alone
    assert "- fine-tuned from a model trained before, in 2 run(s) of 300 + 25 steps" in tuned


@pytest.mark.parametrize("shape", [(40, 40), (2, 3, 20, 40, 40)])
def test_an_example_image_that_is_no_volume_of_the_3d_model_s_channels_is_one_line(shape):
    """A 2D example image for a 3D model raised IndexError from deep inside the export
    (a new user's walk); it is the export's own error now, as for a wrong channel count."""
    from napari_unet.core.bioimageio_package import example_image

    model = nu.UNet(ndim=3, base_channels=2, depth=1)
    with pytest.raises(exchange.ExportError, match=r"is no volume of 1 channel\(s\) for this 3D model"):
        example_image(model, np.zeros(shape, np.float32), channel_axis=0 if len(shape) == 5 else None)
