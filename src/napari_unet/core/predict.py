"""Overlap-tile prediction (paper Fig. 2) for images of any size."""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from . import geometry, sources, tiling
from .checkpoint import load_model
from .config import InstanceConfig
from .cpu_inference import CpuInference
from .device_inference import DeviceInference
from .devices import autocast, precision_name, resolve_device, resolve_precision
from .errors import ConfigError
from .instances import no_objects_note, probabilities_to_labels, unrelated_planes_note
from .layout import axes_at_minus3, channels_before_spatial
from .memory import reuse_freed_memory
from .model import UNet
from .object_size import in_voxels
from .progress import drive
from .records import with_overrides
from .rescale import check_rescale, instances_at_scale, resize_planes, scaled_shape, size_mismatch_note
from .tile_budget import plan_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileProgress:
    """Tiles done out of all tiles of the whole image (every plane counted), the tile
    plan of one plane, and the seconds spent so far in the network itself (the rest
    is reading, normalising, mirroring and stitching)."""

    done: int
    total: int
    plan: geometry.TilePlan
    network_seconds: float


@dataclass(frozen=True)
class PredictOptions:
    """How to run overlap-tile prediction.

    ``tile``: input tile size (an int, or (h, w) / (z, y, x); valid sizes only) or ``None`` for the
    tile that minimises computed pixels within the memory budget. ``device``:
    "auto", "cpu", "cuda", "cuda:N" or "mps". ``precision``: "auto", "fp32",
    "bf16" or "fp16". ``batch_size``: tiles per forward pass (``None``: as many as
    the budget allows). ``memory_bytes``: activation budget (``None``: 1 GiB on a
    CPU, half the free memory on a GPU). ``tta``: test-time augmentation, the mean of
    the probabilities of the 8 flips and quarter turns of each plane (of the y-x
    planes of a volume), each computed by exact overlap-tile prediction and turned
    back; 8 times the work, and the image is read into memory. ``rescale``: resize
    the planes (y and x) by this factor before prediction and the probabilities back
    after it, for images taken at another magnification than the model's training
    images (:mod:`napari_unet.core.rescale`; the image is read into memory).
    """

    tile: int | tuple[int, ...] | None = None
    device: str | None = None
    precision: str | None = None
    batch_size: int | None = None
    memory_bytes: int | None = None
    channel_axis: int | None = None
    tta: bool = False
    rescale: float = 1.0

    def __post_init__(self) -> None:
        if self.tile is not None:
            sizes = tuple(self.tile) if isinstance(self.tile, (tuple, list)) else (self.tile,)
            if len(sizes) not in (1, 2, 3) or not all(_is_count(size) for size in sizes):
                raise geometry.InvalidTileSize(
                    f"tile must be a whole number of pixels, or one per axis ((h, w) or (z, y, x)); got {self.tile!r}"
                )
            object.__setattr__(self, "tile", int(sizes[0]) if len(sizes) == 1 else tuple(map(int, sizes)))
        for name in ("batch_size", "memory_bytes"):
            value = getattr(self, name)
            if value is not None and not _is_count(value):
                raise ConfigError(f"{name} must be a positive whole number, got {value!r}")
        object.__setattr__(self, "rescale", check_rescale(self.rescale))
        if self.channel_axis is not None and not isinstance(self.channel_axis, numbers.Integral):
            raise ConfigError(f"channel_axis must be an integer axis, got {self.channel_axis!r}")


def _is_count(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def iter_predict(model: UNet, image: np.ndarray, **options) -> Generator[TileProgress, None, np.ndarray]:
    """Per-class probabilities of ``image``, as a generator of :class:`TileProgress`.

    ``image``: ``(H, W)``, ``(C, H, W)``, ``(H, W, C)`` or stacks ``(*stack, ...)``,
    see :func:`napari_unet.core.layout.channels_at_minus3`; a numpy array, or a lazy
    source (memmap, dask or zarr array, OME-Zarr group, TIFF or zarr path) of which only
    the tiles' windows are read (:mod:`napari_unet.core.sources`). Each plane is normalised
    with the model's normalisation, mirror-padded by index and covered by tiles
    whose outputs abut exactly (no blending). Returns (as the generator's value)
    float32 probabilities ``(*stack, n_classes, H, W)``.

    A 3D model (``model.config.ndim == 3``) takes volumes instead of planes:
    ``(Z, Y, X)``, ``(C, Z, Y, X)``, ``(Z, Y, X, C)`` or stacks of them, and returns
    ``(*stack, n_classes, Z, Y, X)``; tiles are cuboids (``tile`` an int or (z, y, x)).

    The caller's ``model`` is left as it is (device, train/eval mode, weights): the
    prediction runs on a snapshot of its weights, so a model may keep training in
    another thread meanwhile. Stop early by closing the generator; ``options`` are
    :class:`PredictOptions`.
    """
    model, image = as_model(model), sources.open_source(image)
    opts = PredictOptions(**options)
    if opts.rescale != 1.0:
        return (yield from _iter_predict_rescaled(model, image, opts))
    if opts.tta:
        return (yield from _iter_predict_tta(model, image, opts))
    ndim = model.config.ndim
    if ndim == 2:  # images may be lazy (zarr, dask, TIFF): only the tiles' windows are read
        data = sources.planes_of(image, model.config.in_channels, opts.channel_axis)
    else:
        data = channels_before_spatial(image, model.config.in_channels, opts.channel_axis, ndim)
    stack_shape, spatial = data.shape[: -ndim - 1], data.shape[-ndim:]
    device = resolve_device(opts.device)
    dtype = resolve_precision(opts.precision, device)
    plan, batch_size = plan_for(model, spatial, device, opts, dtype)
    n_planes = math.prod(stack_shape)
    total = plan.n_tiles * n_planes
    log.info(
        "predicting %s on %s in %s: %d tile(s) of %s, batch %d",
        data.shape,
        device,
        precision_name(dtype),
        total,
        plan.tile,
        batch_size,
    )
    output = np.empty((*stack_shape, model.config.n_classes, *spatial), np.float32)
    done, network_seconds = 0, 0.0
    memory = reuse_freed_memory() if device.type == "cpu" else contextlib.nullcontext()
    with memory:
        network = _network(model, device, dtype, (batch_size, model.config.in_channels, *plan.tile))
        for index in np.ndindex(*stack_shape):
            plane = sources.plane_reader(data, index, model.spec.normalization)
            for origins in tiling.tile_batches(plan, batch_size):
                batch = np.stack([plane.tile(o, plan) for o in origins])
                began = time.perf_counter()
                probs = _forward(network, batch, device, dtype)
                network_seconds += time.perf_counter() - began
                for origin, tile_probs in zip(origins, probs):
                    tiling.paste_tile(output[index], tile_probs, origin, plan)
                done += len(origins)
                yield TileProgress(done, total, plan, network_seconds)
    return output


def _iter_predict_rescaled(model: UNet, image, opts: PredictOptions) -> Generator[TileProgress, None, np.ndarray]:
    """:func:`iter_predict` of ``image`` with its planes resized by ``opts.rescale``,
    the probabilities resized back to the image's planes."""
    ndim = model.config.ndim
    data = channels_before_spatial(np.asarray(image), model.config.in_channels, opts.channel_axis, ndim)
    scaled = resize_planes(data, scaled_shape(data.shape, opts.rescale))
    plain = asdict(replace(opts, rescale=1.0, channel_axis=data.ndim - ndim - 1))  # (*stack, C, *spatial)
    probabilities = yield from iter_predict(model, scaled, **plain)
    return resize_planes(probabilities, data.shape[-2:])


#: The 8 symmetries of a square (quarter turns, then a flip) of the last two axes:
#: (turns, flip); the inverse of each is a flip first, then as many turns back.
_SQUARE_SYMMETRIES = [(turns, flip) for flip in (False, True) for turns in range(4)]


def _turned(array: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    array = np.rot90(array, turns, axes=(-2, -1))
    return np.flip(array, -1) if flip else array


def _turned_back(array: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    array = np.flip(array, -1) if flip else array
    return np.rot90(array, -turns, axes=(-2, -1))


def _iter_predict_tta(model: UNet, image, opts: PredictOptions) -> Generator[TileProgress, None, np.ndarray]:
    """:func:`iter_predict` with ``opts.tta``: the mean over the 8 symmetries of the
    planes (percentile normalisation does not change under them)."""
    ndim = model.config.ndim
    spacing = model.config.spacing
    if spacing is not None and spacing[-1] != spacing[-2]:
        raise ConfigError(f"tta turns the y-x planes, so it needs equal y and x spacing; the model has {spacing}")
    data = channels_before_spatial(np.asarray(image), model.config.in_channels, opts.channel_axis, ndim)
    plain = asdict(replace(opts, tta=False, channel_axis=data.ndim - ndim - 1))
    parts, mean, seconds = len(_SQUARE_SYMMETRIES), None, 0.0
    for part, (turns, flip) in enumerate(_SQUARE_SYMMETRIES):
        run = iter_predict(model, np.ascontiguousarray(_turned(data, turns, flip)), **plain)
        probabilities, seconds = yield from _as_part(run, part, parts, seconds)
        probabilities = _turned_back(probabilities, turns, flip)
        if mean is None:
            mean = np.array(probabilities)  # a copy: the sum is kept in place
        else:
            mean += probabilities
    mean /= parts
    return mean


def _as_part(run, part: int, parts: int, seconds_before: float):
    """Re-yield ``run``'s progress as run ``part`` of ``parts`` equal runs; returns its
    value and the network seconds of all runs so far."""
    seconds = seconds_before
    while True:
        try:
            progress = next(run)
        except StopIteration as finished:
            return finished.value, seconds
        seconds = seconds_before + progress.network_seconds
        yield TileProgress(part * progress.total + progress.done, parts * progress.total, progress.plan, seconds)


def _network(model: UNet, device: torch.device, dtype, input_shape: tuple[int, ...]):
    """What computes the logits from a snapshot of ``model``'s weights: on a CPU the
    faster :class:`CpuInference` (fp32 or bf16, equal to the modules up to rounding),
    else :class:`DeviceInference` (a copy of the module on ``device``)."""
    with torch.inference_mode():
        if device.type == "cpu" and dtype in (None, torch.bfloat16):
            return CpuInference(model, dtype or torch.float32, input_shape)
        return DeviceInference(model, device, dtype, len(input_shape))


def _forward(network, batch: np.ndarray, device: torch.device, dtype) -> np.ndarray:
    """Softmax probabilities (B, K, oh, ow) float32 for a batch (B, C, th, tw)."""
    inputs = torch.from_numpy(batch).to(device)
    with torch.inference_mode(), autocast(device, dtype):
        logits = network(inputs)
    return torch.softmax(logits.float(), dim=1).cpu().numpy()


def predict(model: UNet, image: np.ndarray, **options) -> np.ndarray:
    """Per-class probabilities float32 ``(*stack, n_classes, H, W)``; see :func:`iter_predict`."""
    return drive(iter_predict(model, image, **options))


def as_model(model: UNet | str | os.PathLike) -> UNet:
    """``model``, or the model in the file at the path ``model``."""
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    if not isinstance(model, UNet):
        raise ConfigError(f"model must be a napari_unet.UNet or the path of a model file, got {type(model).__name__}")
    return model


def instance_settings(instances: InstanceConfig | dict | None, model: UNet) -> InstanceConfig:
    """The instance settings to label with: ``instances``, or ``model``'s own
    (``model.spec.instances``) with the fields a dict gives replaced."""
    if instances is None:
        return model.spec.instances
    if isinstance(instances, dict):
        return with_overrides(model.spec.instances, instances)
    if not isinstance(instances, InstanceConfig):
        raise ConfigError(
            f"instances must be an InstanceConfig or a dict of its settings, got {type(instances).__name__}"
        )
    return instances


def iter_segment(
    model: UNet,
    image: np.ndarray,
    *,
    return_probabilities: bool = False,
    instances: InstanceConfig | None = None,
    as_volume: bool = False,
    spacing: tuple[float, float, float] | None = None,
    notes: bool = True,
    **options,
) -> Generator[TileProgress, None, np.ndarray | tuple[np.ndarray, np.ndarray]]:
    """Instance labels of ``image``, as a generator of :class:`TileProgress`.

    Returns int32 labels ``(*stack, H, W)`` made with ``instances`` (default: the
    model's instance settings, ``model.spec.instances``; for 3D models
    ``(*stack, Z, Y, X)``, one id per object across planes), or ``(labels,
    probabilities)`` with ``return_probabilities``; ``options`` as for
    :func:`iter_predict`. ``notes``: log a warning when the objects are far from the
    size the model learned (:func:`~napari_unet.core.rescale.size_mismatch_note`) or
    when there are none (:func:`~napari_unet.core.instances.no_objects_note`); off for
    the previews and validations of a model in training, which say nothing yet.

    ``as_volume`` (2D models, images with a stack axis): the planes are predicted one
    by one as usual, then the last stack axis is taken as z and the probabilities of
    each volume (*stack, Z, H, W) are labelled at once, in 3D (:func:`volume_labels`):
    an object keeps one id across planes. ``spacing``, the stack's voxel size (z, y,
    x; ``None``: cubes), turns the instance settings' sizes (areas in the planes) into
    volumes (:func:`~napari_unet.core.object_size.in_voxels`) and makes the split by
    shape measure physical distances. A 3D model's labelling takes the spacing the
    model was made for.
    """
    model = as_model(model)
    rescale = check_rescale(options.get("rescale", 1.0))
    instances = instances_at_scale(instance_settings(instances, model), rescale)
    if as_volume:
        check_volume_of_planes(model, image, options.get("channel_axis"), spacing)
    elif spacing is not None:
        raise ConfigError("spacing applies with as_volume (a 3D model brings its own)")
    probabilities = yield from iter_predict(model, image, **options)
    if as_volume:
        labels = volume_labels(probabilities, instances, spacing)
        used = in_voxels(instances, spacing)  # the sizes the labelling used
    else:
        labels = probabilities_to_labels(probabilities, instances, model.config.ndim, model.config.spacing)
        used = instances
    if notes:
        note = unrelated_planes_note(labels) if as_volume else None  # a wrong choice comes before sizes
        note = note or size_mismatch_note(labels, used, labelled_ndim(model, as_volume), rescale)
        note = note or no_objects_note(labels, probabilities, used, model.config.ndim)
        if note:
            log.warning(note)
    return (labels, probabilities) if return_probabilities else labels


def labelled_ndim(model: UNet, as_volume: bool = False) -> int:
    """How many axes one labelling of :func:`iter_segment` spans: 3 for a 3D model, or
    a 2D model's stack labelled ``as_volume``; else 2 (every plane of a stack numbers
    its objects from 1)."""
    return 3 if as_volume or model.config.ndim == 3 else 2


def check_volume_of_planes(model: UNet, image, channel_axis: int | None, spacing) -> None:
    """Refuse ``as_volume`` for a 3D model, an image without a stack axis or a bad
    ``spacing``, before any work."""
    if spacing is not None and (len(spacing) != 3 or min(spacing) <= 0):
        raise ConfigError(f"spacing must be three positive voxel sizes (z, y, x), got {tuple(spacing)}")
    if model.config.ndim == 3:
        raise ConfigError("as_volume is for 2D models: a 3D model labels whole volumes already")
    shape = tuple(getattr(image, "shape", None) or np.shape(image))
    order = axes_at_minus3(shape, model.config.in_channels, channel_axis)
    if len(order) < 4 or shape[order[-4]] == 1:  # (1, Y, X): one plane, its objects made balls of its sizes
        which = "is one plane" if len(order) <= 4 else f"holds volumes of one plane each (z, axis {order[-4]})"
        raise ConfigError(
            f"labelling as a volume (as_volume, --as-volume) needs a stack of planes (Z, Y, X); "
            f"this image (shape {shape}) {which}"
        )


def volume_labels(
    probabilities: np.ndarray, instances: InstanceConfig, spacing: tuple[float, float, float] | None = None
) -> np.ndarray:
    """Instance labels int32 (*stack, Z, H, W) of a 2D model's probabilities of a stack
    of planes (*stack, Z, K, H, W), labelled as volumes (3D objects, 6-connected) of
    voxels of ``spacing`` (z, y, x; ``None``: cubes) with the 2D ``instances``'
    sizes made volumes (:func:`~napari_unet.core.object_size.in_voxels`)."""
    return probabilities_to_labels(np.moveaxis(probabilities, -3, -4), in_voxels(instances, spacing), 3, spacing)


def segment(
    model: UNet,
    image: np.ndarray,
    *,
    return_probabilities: bool = False,
    instances: InstanceConfig | None = None,
    **options,
):
    """Instance labels int32 ``(*stack, H, W)`` (and the probabilities with
    ``return_probabilities``); see :func:`iter_segment`."""
    segmentation = iter_segment(model, image, return_probabilities=return_probabilities, instances=instances, **options)
    return drive(segmentation)
