"""Writing bioimage.io model packages (model description spec 0.5).

Writing uses ``bioimageio.spec``'s own description classes and packaging (the
``export`` extra). A package holds:

- ``rdf.yaml``, the description: one input ``raw`` (batch, channel, y, x; a 3D
  model's batch, channel, z, y, x) whose preprocessing is napari-unet's
  normalisation as ``scale_range`` (same percentiles, per image and channel, not
  clipped), mirrored when padded; one output ``foreground`` of the input's size with
  a ``halo`` on every spatial axis; sizes ``min + n * step`` per axis
  (:func:`napari_unet.core.exchange.axis_sizes`);
- weights as ``pytorch_state_dict`` (the parent; architecture: the standalone
  ``unet_architecture.py``, which does not import napari_unet), ``torchscript`` and
  ``onnx``, all computing the same network (see :mod:`napari_unet.core.exchange`);
- test input and output tensors, a cover made from them, a README with the training
  record (:mod:`.package_readme`), the license, the authors and the citation of the
  U-Net paper;
- ``napari_unet.json``: what napari-unet needs to read the package back (the model
  spec, the training record, the weights file and its SHA-256).

:mod:`napari_unet.core.package_reader` reads them back without ``bioimageio.spec``
and without running the packaged architecture file.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import exchange, standalone_unet
from .atomic_files import check_writable
from .config import NormalizationConfig
from .errors import ConfigError, OutputFileError
from .layout import channels_at_minus3
from .model import UNet, without_batch_norm
from .package_reader import PACKAGE_FORMAT, PACKAGE_VERSION, RECORD_NAME, SCALE_RANGE_EPS, STATE_DICT_NAME, sha256
from .package_readme import PAPER_DOI, PAPER_TEXT, package_readme

ARCHITECTURE_NAME = "unet_architecture.py"
ARCHITECTURE_CALLABLE = "SameSizeUNet"
TORCHSCRIPT_NAME = "weights_torchscript.pt"
ONNX_NAME = "weights.onnx"
DEFAULT_LICENSE = "CC-BY-4.0"
DEFAULT_AUTHOR = "Unknown"


def _require_spec():
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError as error:
        raise exchange.ExportError(
            "writing bioimage.io packages needs bioimageio.spec: pip install -e '.[export]' in the napari-unet "
            "source folder"
        ) from error


def scale_range(image: np.ndarray, normalization: NormalizationConfig, eps: float = SCALE_RANGE_EPS) -> np.ndarray:
    """The spec's ``scale_range`` per channel of ``image`` (C, H, W) or (C, Z, Y, X),
    float32: ``(x - p_low) / (p_high - p_low + eps)`` with linearly interpolated
    percentiles."""
    data = np.asarray(image, np.float32)
    flat = data.reshape(data.shape[0], -1)
    low, high = np.percentile(flat, [normalization.low, normalization.high], axis=1).astype(np.float32)
    per_channel = (-1,) + (1,) * (data.ndim - 1)
    return ((data - low.reshape(per_channel)) / (high - low + np.float32(eps)).reshape(per_channel)).astype(np.float32)


#: In-plane side the test tensors aim at (px); along z a volume's test tensor is one
#: pooling step above the smallest declared size.
EXAMPLE_SIDE = 128


def example_size(depth: int) -> int:
    """Side of a 2D model's square test tensors: at least 128 px and one declared size."""
    step = 2**depth
    return max(exchange.min_size(depth), -(-EXAMPLE_SIDE // step) * step)


def example_shape(model: UNet) -> tuple[int, ...]:
    """The spatial shape of the test tensors: (S, S) for a 2D model (:func:`example_size`),
    (z, y, x) declared sizes for a 3D one."""
    sizes = exchange.axis_sizes(model)
    if model.config.ndim == 2:
        return (example_size(model.config.depth),) * 2
    in_plane = [max(axis.smallest, -(-EXAMPLE_SIDE // axis.step) * axis.step) for axis in sizes[1:]]
    return (sizes[0].smallest + sizes[0].step, *in_plane)


def _channels_first(model: UNet, image: np.ndarray, channel_axis: int | None) -> np.ndarray:
    """``image`` as (C, *spatial) for ``model``: its first plane (a 2D model) or volume
    (a 3D one) if it holds more."""
    ndim, channels = model.config.ndim, model.config.in_channels
    if ndim == 2:
        planes = channels_at_minus3(image, channels, channel_axis)
        return planes.reshape(-1, *planes.shape[-3:])[0]
    data = np.asarray(image)
    if channel_axis is not None and data.ndim >= 4:
        data = np.moveaxis(data, channel_axis, -4)
    elif channel_axis is None and channels == 1 and data.ndim >= 3:
        data = data[..., None, :, :, :]
    if data.ndim < 4 or data.shape[-4] != channels:
        raise exchange.ExportError(
            f"the example image (shape {np.shape(image)}) is no volume of {channels} channel(s) for this 3D model"
        )
    return data.reshape(-1, *data.shape[-4:])[0]


def example_image(model: UNet, image: np.ndarray | None = None, channel_axis: int | None = None) -> np.ndarray:
    """The raw test input ``(C, *spatial)`` float32: the centre of ``image`` (its first
    plane or volume if it holds more) or, by default, synthetic nuclei in every channel."""
    channels, shape = model.config.in_channels, example_shape(model)
    if image is None:
        if model.config.ndim == 2:
            from .synthetic import synthetic_nuclei

            nuclei = synthetic_nuclei(shape, seed=0)[0]
        else:
            from .synthetic_volume import synthetic_volume

            nuclei = synthetic_volume(shape, seed=0)[0]
        return np.repeat(nuclei.astype(np.float32)[None], channels, axis=0)
    data = _channels_first(model, image, channel_axis)
    names = "zyx"[-model.config.ndim :]
    sides = []
    for n, wanted, axis, name in zip(data.shape[1:], shape, exchange.axis_sizes(model), names):
        if n < axis.smallest:
            smallest = " x ".join(str(a.smallest) for a in exchange.axis_sizes(model))
            raise exchange.ExportError(
                f"the example image (shape {np.shape(image)}) is too small for test tensors along {name}: "
                f"this model needs at least {smallest} px"
            )
        sides.append(min(wanted, axis.smallest + (n - axis.smallest) // axis.step * axis.step))
    window = tuple(slice((n - side) // 2, (n - side) // 2 + side) for n, side in zip(data.shape[1:], sides))
    return np.ascontiguousarray(data[(slice(None), *window)], dtype=np.float32)


def _cover(raw: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """A 2:1 RGB picture: the normalised first channel beside the foreground probability
    (of a volume: its middle plane)."""
    if foreground.ndim == 3:
        raw, foreground = raw[:, raw.shape[1] // 2], foreground[foreground.shape[0] // 2]
    low, high = np.percentile(raw[0], [1.0, 99.8])
    left = np.clip((raw[0] - low) / max(high - low, 1e-12), 0, 1)
    right = np.clip(foreground, 0, 1)
    tint = np.stack([right, right * 0.35, right * 0.8], axis=-1)  # magenta probability
    picture = np.concatenate([np.repeat(left[..., None], 3, axis=-1), tint], axis=1)
    return (picture * 255).round().astype(np.uint8)


#: Shortest model name bioimage.io accepts.
MIN_NAME_LENGTH = 5


def _record(model: UNet, weights_sha256: str, architecture_sha256: str) -> dict[str, Any]:
    from .. import __version__

    return {
        "format": PACKAGE_FORMAT,
        "version": PACKAGE_VERSION,
        "napari_unet_version": __version__,
        "spec": model.spec.to_dict(),
        "metadata": dict(getattr(model, "metadata", {}) or {}),
        "weights": {"source": STATE_DICT_NAME, "sha256": weights_sha256},
        "architecture": {
            "source": ARCHITECTURE_NAME,
            "sha256": architecture_sha256,
            "callable": ARCHITECTURE_CALLABLE,
            "kwargs": exchange.architecture_kwargs(model),
        },
    }


def _weights_files(model: UNet, folder: Path) -> dict[str, bytes]:
    """Write the three weight formats and the architecture file; returns their bytes."""
    network = exchange.same_size_network(model)
    buffer = io.BytesIO()
    torch.save(network.state_dict(), buffer)
    (folder / STATE_DICT_NAME).write_bytes(buffer.getvalue())
    (folder / ARCHITECTURE_NAME).write_bytes(Path(standalone_unet.__file__).read_bytes())
    exchange.export_torchscript(model, folder / TORCHSCRIPT_NAME)
    exchange.export_onnx(model, folder / ONNX_NAME)
    return {name: (folder / name).read_bytes() for name in (STATE_DICT_NAME, ARCHITECTURE_NAME)}


def _run_formats(model: UNet, folder: Path, normalized: np.ndarray) -> dict[str, np.ndarray]:
    """The foreground of ``normalized`` (1, C, H, W) by each written weight format."""
    inputs = torch.from_numpy(normalized)
    with torch.no_grad():
        outputs = {"pytorch_state_dict": exchange.same_size_network(model)(inputs).numpy()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what bioimage.io runs
            outputs["torchscript"] = torch.jit.load(str(folder / TORCHSCRIPT_NAME))(inputs).numpy()
    try:
        import onnxruntime
    except ImportError:
        return outputs
    session = onnxruntime.InferenceSession(str(folder / ONNX_NAME), providers=["CPUExecutionProvider"])
    outputs["onnx"] = session.run(None, {exchange.INPUT_NAME: normalized})[0]
    return outputs


def _describe(**fields):
    """``ModelDescr(**fields)``; a field the spec rejects (a name with a comma, an
    unknown license) becomes an :class:`~napari_unet.core.exchange.ExportError`."""
    from bioimageio.spec.model import v0_5
    from pydantic import ValidationError

    try:
        return v0_5.ModelDescr(**fields)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:3])
        raise exchange.ExportError(f"bioimage.io rejects this description: {problems}") from error


def _license_id(license: str):
    """``license`` as the spec's license id; an id it does not know is a :class:`ConfigError`."""
    from bioimageio.spec.model import v0_5
    from pydantic import ValidationError

    try:
        return v0_5.LicenseId(license)
    except ValidationError as error:
        raise ConfigError(
            f"license {license!r} is not an SPDX license id that bioimage.io accepts: give one such as "
            "CC-BY-4.0, CC0-1.0, MIT, Apache-2.0 or BSD-3-Clause (the list: https://spdx.org/licenses)"
        ) from error


def write_package(
    model: UNet,
    path: str | os.PathLike,
    *,
    authors: Sequence[str] = (),
    name: str | None = None,
    license: str = DEFAULT_LICENSE,
    trained_on: str | None = None,
    image: np.ndarray | None = None,
    channel_axis: int | None = None,
) -> Path:
    """Write ``model`` as a bioimage.io model package (a zip) to ``path``, atomically.

    ``authors``: names (default: "Unknown"); ``name``: the model's name (letters,
    digits, spaces, ``_+-()``); ``license``: an SPDX id for the weights;
    ``trained_on``: a sentence about the training data for the documentation;
    ``image``: an example image for the test tensors and cover (default: synthetic
    nuclei). Returns ``path``.
    """
    _require_spec()
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5

    license_id = _license_id(license)  # before any work
    path = Path(path)
    if path.is_dir():
        raise OutputFileError(f"{path} is a folder; give a .zip file name to export to")
    check_writable(path)  # its folder is created if need be, as for every other output
    trained, model = model, without_batch_norm(model)  # what every weight format holds; the spec says so
    config, spec = model.config, model.spec
    depth, sizes, kind = config.depth, exchange.axis_sizes(model), f"{config.ndim}D"
    name = name or f"napari-unet {'3D ' if config.ndim == 3 else ''}U-Net base{config.base_channels} depth{depth}"
    if len(name.strip()) < MIN_NAME_LENGTH:  # the spec's own message said "at least 5 items"
        raise ConfigError(
            f"the model name {name!r} is too short: bioimage.io needs {MIN_NAME_LENGTH} characters or more"
        )
    raw = example_image(model, image, channel_axis)
    normalized = scale_range(raw, spec.normalization)[None]

    with tempfile.TemporaryDirectory(prefix="napari-unet-export-") as tmp:
        folder = Path(tmp)
        files = _weights_files(model, folder)
        outputs = _run_formats(model, folder, normalized)
        expected = outputs["pytorch_state_dict"]
        checks = {
            f"{fmt} vs pytorch_state_dict": float(np.abs(out - expected).max())
            for fmt, out in outputs.items()
            if fmt != "pytorch_state_dict"
        }
        from .predict import predict

        own = 1.0 - predict(trained, raw, precision="fp32", channel_axis=0)[0]  # before any folding
        checks["pytorch_state_dict vs napari-unet's own prediction"] = float(np.abs(expected[0, 0] - own).max())
        np.save(folder / "test_input.npy", raw[None])
        np.save(folder / "test_output.npy", expected.astype(np.float32))
        import imageio.v3 as iio

        iio.imwrite(folder / "cover.png", _cover(raw, expected[0, 0]))
        iio.imwrite(folder / "sample_input.tif", raw.squeeze())  # for people: (C,) H, W
        iio.imwrite(folder / "sample_output.tif", expected[0, 0].astype(np.float32))
        trained_on = trained_on or "Not recorded at export (pass `--trained-on` to `napari-unet export`)."
        readme = package_readme(model, name, trained_on, checks, raw.shape[1:])
        (folder / "README.md").write_text(readme, encoding="utf-8")
        record = _record(model, sha256(files[STATE_DICT_NAME]), sha256(files[ARCHITECTURE_NAME]))
        (folder / RECORD_NAME).write_text(json.dumps(record, indent=2), encoding="utf-8")

        space = [v0_5.AxisId(axis) for axis in "zyx"[-config.ndim :]]
        input_id, output_id = v0_5.TensorId(exchange.INPUT_NAME), v0_5.TensorId(exchange.OUTPUT_NAME)
        channel_names = [f"channel{i}" for i in range(config.in_channels)]
        torch_version = v0_5.Version(torch.__version__.split("+")[0])
        descr = _describe(
            name=name,
            description=(
                f"{'3D U-Net (Cicek et al. 2016, after' if config.ndim == 3 else 'U-Net ('}Ronneberger et al. "
                f"2015) from napari-unet: foreground probability of {config.in_channels}-channel {kind} "
                f"{'volumes' if config.ndim == 3 else 'images'}. Unpadded convolutions with internal mirroring; "
                f"tiles drop a halo of {' x '.join(str(axis.halo) for axis in sizes)} px."
            ),
            authors=[v0_5.Author(name=author) for author in (authors or [DEFAULT_AUTHOR])],
            cite=[v0_5.CiteEntry(text=PAPER_TEXT, doi=v0_5.Doi(PAPER_DOI))],
            license=license_id,
            documentation=v0_5.FileDescr(source=folder / "README.md"),
            covers=[v0_5.FileDescr(source=folder / "cover.png")],
            attachments=[v0_5.FileDescr(source=folder / RECORD_NAME)],
            tags=[kind.lower(), "unet", "pytorch", "semantic-segmentation", "napari-unet"],
            inputs=[
                v0_5.InputTensorDescr(
                    id=input_id,
                    description="image, any intensity range (normalised by the preprocessing)",
                    axes=[
                        v0_5.BatchAxis(),
                        v0_5.ChannelAxis(channel_names=[v0_5.Identifier(c) for c in channel_names]),
                        *(
                            v0_5.SpaceInputAxis(
                                id=axis, size=v0_5.ParameterizedSize(min=sized.smallest, step=sized.step)
                            )
                            for axis, sized in zip(space, sizes)
                        ),
                    ],
                    test_tensor=v0_5.FileDescr(source=folder / "test_input.npy"),
                    sample_tensor=v0_5.FileDescr(source=folder / "sample_input.tif"),
                    data=v0_5.IntervalOrRatioDataDescr(type="float32"),
                    pad=v0_5.ReflectPadding(mode="reflect"),  # explicit, or the YAML drops it
                    preprocessing=[
                        v0_5.ScaleRangeDescr(
                            kwargs=v0_5.ScaleRangeKwargs(
                                axes=space,
                                min_percentile=spec.normalization.low,
                                max_percentile=spec.normalization.high,
                                eps=SCALE_RANGE_EPS,
                            )
                        )
                    ],
                )
            ],
            outputs=[
                v0_5.OutputTensorDescr(
                    id=output_id,
                    description="foreground probability (1 - softmax probability of the background class)",
                    axes=[
                        v0_5.BatchAxis(),
                        v0_5.ChannelAxis(channel_names=[v0_5.Identifier("foreground")]),
                        *(
                            v0_5.SpaceOutputAxisWithHalo(
                                id=axis,
                                size=v0_5.SizeReference(tensor_id=input_id, axis_id=axis),
                                halo=sized.halo,
                            )
                            for axis, sized in zip(space, sizes)
                        ),
                    ],
                    test_tensor=v0_5.FileDescr(source=folder / "test_output.npy"),
                    sample_tensor=v0_5.FileDescr(source=folder / "sample_output.tif"),
                    data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
                )
            ],
            weights=v0_5.WeightsDescr(
                pytorch_state_dict=v0_5.PytorchStateDictWeightsDescr(
                    source=folder / STATE_DICT_NAME,
                    architecture=v0_5.ArchitectureFromFileDescr(
                        source=folder / ARCHITECTURE_NAME,
                        callable=v0_5.Identifier(ARCHITECTURE_CALLABLE),
                        kwargs=exchange.architecture_kwargs(model),
                    ),
                    pytorch_version=torch_version,
                ),
                torchscript=v0_5.TorchscriptWeightsDescr(
                    source=folder / TORCHSCRIPT_NAME,
                    parent="pytorch_state_dict",
                    pytorch_version=torch_version,
                ),
                onnx=v0_5.OnnxWeightsDescr(
                    source=folder / ONNX_NAME,
                    parent="pytorch_state_dict",
                    opset_version=exchange.ONNX_OPSET,
                ),
            ),
            config=v0_5.Config(
                bioimageio=v0_5.BioimageioConfig(
                    architecture_type="U-Net",
                    architecture_description=(
                        f"{kind} U-Net, {config.base_channels} base channels, depth {depth}, unpadded convolutions"
                    ),
                    task="segmentation",
                    model_parameter_count=sum(p.numel() for p in model.parameters()),
                ),
                napari_unet={"record": RECORD_NAME, "format": PACKAGE_FORMAT, "version": PACKAGE_VERSION},
            ),
        )
        partial = path.with_name(f".{path.name}.partial")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_bioimageio_package(descr, output_path=partial)
            os.replace(partial, path)
        except OSError as error:
            raise OutputFileError(f"cannot write {path}: {error.strerror or error}") from error
        finally:
            partial.unlink(missing_ok=True)
    return path
