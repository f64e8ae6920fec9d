"""Export a model for other software: TorchScript, ONNX and bioimage.io packages.

Every exported form computes the same thing: an image ``(N, C, H, W)`` (a 3D
model: a volume ``(N, C, Z, Y, X)``), already normalised like napari-unet
normalises it, goes in; the foreground probability ``(N, 1, ...)`` of the same size
comes out (1 minus the softmax probability of class 0, as napari-unet's Segment
widget shows it). The network is
:class:`~napari_unet.core.standalone_unet.SameSizeUNet`, which mirrors the image by
the network's context internally, so its output equals :func:`napari_unet.predict`
on the same image. Sizes that step by the pooling grid (``2**depth`` for a 2D model)
are the declared ones; a tiled consumer drops the halo (:func:`halo`, per axis
:func:`axis_sizes`) at every tile border and gets seamless results.

ONNX and TorchScript need only torch (and onnx for ONNX); the bioimage.io package
needs the ``export`` extra (see :mod:`napari_unet.core.bioimageio_package`). All
three hold 2D and 3D models.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import warnings
from pathlib import Path

import torch

from . import standalone_unet
from .atomic_files import check_writable, write_atomic
from .errors import NapariUnetError, OutputFileError
from .model import UNet, without_batch_norm
from .spacing import level_kernels_and_pools

#: Export formats and the file name suffix of each.
FORMATS = {"bioimageio": ".zip", "onnx": ".onnx", "torchscript": ".pt"}
#: ONNX opset of exported models (ONNX Runtime 1.13 and later run it).
ONNX_OPSET = 17
#: Names of the graph's input and output in ONNX files (the bioimage.io tensor ids).
INPUT_NAME, OUTPUT_NAME = "raw", "foreground"


class ExportError(NapariUnetError, RuntimeError):
    """An export that cannot run here (a missing optional package, an unknown format)."""


def halo(depth: int) -> int:
    """Pixels to drop at each tile border for seamless tiling (48 for depth 3)."""
    return standalone_unet.halo(depth)


def min_size(depth: int) -> int:
    """The smallest declared input size; sizes step by ``2**depth`` from here."""
    return standalone_unet.min_size(depth)


def kernel_side(kernel: int | tuple[int, ...]) -> int | tuple[int, ...]:
    """A square kernel's side (the standalone file's format); other kernels as they are."""
    if isinstance(kernel, tuple) and len(set(kernel)) <= 1:
        return kernel[0] if kernel else 0  # layers without a kernel (pooling, concatenation): 0
    return kernel


def plan_signature(model: UNet) -> list[tuple]:
    """The core's layer plan in the standalone file's tuple format."""
    return [
        (layer.kind, layer.module, layer.in_channels, layer.out_channels, kernel_side(layer.kernel), layer.relu)
        for layer in model.plan
    ]


def architecture_kwargs(model: UNet) -> dict:
    """Keyword arguments of :class:`SameSizeUNet` for ``model``'s architecture: those
    of the 2D paper network, and for other networks (3D, anisotropic kernels, doubled
    channels, up-convolutions without bias) what sets them apart."""
    config = model.config
    kwargs = {
        "in_channels": config.in_channels,
        "n_classes": config.n_classes,
        "base_channels": config.base_channels,
        "depth": config.depth,
    }
    if config.ndim != 2 or config.double_before_pool or not config.up_bias:
        kernels, pools = level_kernels_and_pools(config.spacing, config.depth, config.ndim)
        kwargs.update(
            ndim=config.ndim,
            kernels=[list(kernel) for kernel in kernels],
            pools=[list(factors) for factors in pools],
            double_before_pool=config.double_before_pool,
            up_bias=config.up_bias,
        )
    return kwargs


@dataclasses.dataclass(frozen=True)
class AxisSizes:
    """What an exported model's consumer needs per spatial axis: the declared sizes
    are ``smallest + k * step``; each output pixel sees ``context`` pixels each side,
    and tiles drop ``halo`` pixels (the context on the pooling grid) at each border."""

    step: int
    context: int

    @property
    def halo(self) -> int:
        return standalone_unet.axis_halo(self.context, self.step)

    @property
    def smallest(self) -> int:
        return 2 * self.halo + self.step


def axis_sizes(model: UNet) -> tuple[AxisSizes, ...]:
    """:class:`AxisSizes` of each spatial axis (y, x; a 3D model z, y, x)."""
    config = model.config
    kernels, pools = level_kernels_and_pools(config.spacing, config.depth, config.ndim)
    return tuple(
        AxisSizes(
            step=math.prod(factors[axis] for factors in pools),
            context=standalone_unet.axis_context([k[axis] for k in kernels], [p[axis] for p in pools]),
        )
        for axis in range(config.ndim)
    )


def same_size_network(model: UNet) -> standalone_unet.SameSizeUNet:
    """The standalone network with a copy of ``model``'s weights, in eval mode on the CPU;
    batch normalisation is folded into the convolutions (see
    :func:`~napari_unet.core.model.without_batch_norm`).

    Raises ``RuntimeError`` (a bug, not a user error) if the standalone file's layer
    plan ever drifts from the core's.
    """
    plain = without_batch_norm(model)  # a consistent copy, even while training
    kwargs = architecture_kwargs(plain)
    standalone_plan = [tuple(layer) for layer in standalone_unet.layer_plan(**_plan_kwargs(kwargs))]
    if standalone_plan != plan_signature(plain):
        raise RuntimeError("standalone_unet.layer_plan differs from napari_unet.core.layer_plan.layer_plan")
    network = standalone_unet.SameSizeUNet(**kwargs)
    network.load_state_dict(plain.state_dict())
    return network.eval().requires_grad_(False)


def _plan_kwargs(kwargs: dict) -> dict:
    """:func:`standalone_unet.layer_plan`'s share of the network's keyword arguments."""
    return {key: value for key, value in kwargs.items() if key != "up_bias"}


def example_input(model: UNet, batch: int = 1) -> torch.Tensor:
    """A zero input of the smallest declared size plus one step per axis (for tracing)."""
    shape = [sizes.smallest + sizes.step for sizes in axis_sizes(model)]
    return torch.zeros(batch, model.config.in_channels, *shape)


def _check_target(path: Path) -> None:
    """Before any work: ``path`` must be a file name that can be written (its folder
    is created if need be, as for every other output)."""
    if path.is_dir():
        raise OutputFileError(f"{path} is a folder; give a file name to export to")
    check_writable(path)


def export_torchscript(model: UNet, path: str | os.PathLike) -> Path:
    """Write ``model`` as a scripted TorchScript module (image -> foreground probability)."""
    path = Path(path)
    _check_target(path)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what bioimage.io runs
        torch.jit.save(torch.jit.script(same_size_network(model)), buffer)
    write_atomic(path, buffer.getvalue())
    return path


def export_onnx(model: UNet, path: str | os.PathLike, opset: int = ONNX_OPSET) -> Path:
    """Write ``model`` as ONNX with dynamic batch and spatial sizes.

    Uses torch's TorchScript-based exporter: it records the shape arithmetic of the
    internal mirroring as graph operations in about a second, where the
    ``torch.export``-based one spends about a minute solving symbolic shapes.
    """
    try:
        import onnx  # noqa: F401 - the exporter needs it
    except ImportError as error:
        raise ExportError(
            "ONNX export needs the onnx package: pip install -e '.[export]' in the napari-unet source folder"
        ) from error
    path = Path(path)
    _check_target(path)
    axes = {0: "batch", **{2 + i: name for i, name in enumerate("zyx"[-model.config.ndim :])}}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        torch.onnx.export(
            same_size_network(model),
            (example_input(model),),
            buffer,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
            opset_version=opset,
        )
    write_atomic(path, buffer.getvalue())
    return path


def export_model(model: UNet, path: str | os.PathLike, format: str, **package_options) -> Path:
    """Export ``model`` to ``path`` as ``format`` (one of :data:`FORMATS`).

    ``package_options`` go to
    :func:`napari_unet.core.bioimageio_package.write_package` (bioimage.io only).
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if format != "bioimageio" and package_options:
        raise ExportError(f"{', '.join(package_options)} only apply to bioimage.io packages")
    if format == "torchscript":
        return export_torchscript(model, path)
    if format == "onnx":
        return export_onnx(model, path)
    from .bioimageio_package import write_package

    return write_package(model, path, **package_options)
