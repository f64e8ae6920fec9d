"""Images that need not fit in memory, read window by window.

Prediction accepts, besides numpy arrays: memory-mapped arrays, ``dask`` arrays,
``zarr`` arrays, OME-Zarr images (a zarr group with multiscales metadata: its
full-resolution level), TIFF files (memory-mapped when uncompressed, else through
tifffile's zarr interface, which decodes only the tiles or strips a read touches) and
paths to any of these. Such a source is never converted whole: a tile's input is read
as the bounding window of its mirrored indices and gathered from that window.

Normalisation of a lazy source needs each plane's percentiles. They come from a
deterministic sample: every pixel when the plane has at most :data:`SAMPLE_PIXELS`
pixels (so the result equals the in-memory path exactly), otherwise the regular grid
of every ``s``-th row and column with the smallest ``s`` that keeps the sample within
:data:`SAMPLE_PIXELS`. The sample is read in blocks, so memory stays bounded, and it is
the same on every run.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import NormalizationConfig
from .errors import NapariUnetError
from .geometry import TilePlan, context
from .io import is_zarr_store
from .layout import axes_at_minus3, channels_at_minus3
from .normalize import normalize, normalize_with, percentile_range
from .tiling import extract_tile, reflect_index

#: Most pixels per plane that percentiles are computed from (4096 x 4096).
SAMPLE_PIXELS = 1 << 24
#: Most pixels of one read while sampling (per channel).
_BLOCK_PIXELS = 1 << 20


class SourceError(NapariUnetError, ValueError):
    """An input that cannot be opened as an image (unreadable store, unknown format)."""


def is_lazy(image: Any) -> bool:
    """Whether ``image`` is read window by window rather than converted whole: anything
    with ``shape``, ``dtype`` and indexing that is not a plain in-memory numpy array
    (memory maps count as lazy)."""
    if type(image) is np.ndarray:
        return False
    return all(hasattr(image, name) for name in ("shape", "dtype", "__getitem__")) and len(image.shape) >= 1


def open_source(source: Any) -> Any:
    """An array-like for ``source``: a path (zarr / OME-Zarr store, TIFF, NPY, other
    image files), a zarr group (an OME-Zarr image: its full-resolution level), a torch
    tensor (as a numpy array) or an array (returned as it is). Raises :class:`SourceError` with one line otherwise."""
    if isinstance(source, (str, os.PathLike)):
        return _open_path(Path(source))
    if isinstance(source, torch.Tensor):  # on any device, in any dtype numpy lacks (bfloat16)
        tensor = source.detach().cpu()
        return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    zarr = _zarr()
    if zarr is not None and isinstance(source, zarr.Group):
        return full_resolution(source)
    return source


@dataclass(frozen=True)
class Calibration:
    """The physical size of a source's pixels along each of its axes (``scale``, 1.0
    where unknown), their units (OME-Zarr's unit names, e.g. "micrometer"; ``None``
    where unknown) and names ("t", "z", ...; ``None`` where unknown), so that labels
    written for it line up with it."""

    scale: tuple[float, ...]
    units: tuple[str | None, ...]
    names: tuple[str | None, ...]


def source_calibration(source: Any, ndim: int) -> Calibration | None:
    """The calibration of an OME-Zarr image with ``ndim`` axes: its first multiscale's
    full-resolution scale and its axes' names and units; ``None`` for other sources
    (viewers show TIFFs and arrays at a scale of 1 whatever they record, so labels
    for them keep that scale) or none recorded."""
    zarr = _zarr()
    group = source
    if isinstance(source, (str, os.PathLike)) and is_zarr_store(Path(source)) and zarr is not None:
        try:
            group = zarr.open(str(source), mode="r")
        except Exception:
            return None
    if zarr is None or not isinstance(group, zarr.Group):
        return None
    try:
        multiscale = _first_multiscale(group)
        transforms = multiscale["datasets"][0]["coordinateTransformations"]
        scale = next(tuple(float(v) for v in t["scale"]) for t in transforms if t.get("type") == "scale")
        axes = multiscale.get("axes") or [None] * len(scale)
    except (KeyError, IndexError, TypeError, ValueError, StopIteration):
        return None
    units = tuple(axis.get("unit") if isinstance(axis, dict) else None for axis in axes)
    names = tuple(axis.get("name") if isinstance(axis, dict) else axis for axis in axes)
    if len(scale) != ndim or len(units) != ndim or min(scale) <= 0:
        return None
    return Calibration(scale, units, tuple(name if isinstance(name, str) else None for name in names))


def _zarr():
    try:
        import zarr
    except ImportError:  # pragma: no cover - zarr is a dependency
        return None
    return zarr


def _open_path(path: Path) -> Any:
    if not path.exists():
        raise SourceError(f"no such image: {path}")
    if is_zarr_store(path):
        import zarr

        try:
            node = zarr.open(str(path), mode="r")
        except Exception as error:  # zarr raises several types for unreadable stores
            raise SourceError(f"cannot open zarr store {path}: {error}") from error
        return full_resolution(node) if isinstance(node, zarr.Group) else node
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return _open_tiff(path)
    if suffix == ".npy":
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as error:
            raise SourceError(f"cannot read {path}: {error}") from error
    from .io import ImageFileError, read_image

    try:
        return read_image(path)
    except ImageFileError as error:
        raise SourceError(str(error)) from error


def _open_tiff(path: Path) -> Any:
    """A TIFF's first series: memory-mapped where its pixels are stored contiguously and
    uncompressed, else as a read-only zarr array over the file's tiles or strips."""
    import tifffile

    try:
        return tifffile.memmap(path, mode="r")
    except ValueError:  # compressed, tiled or otherwise not one contiguous block
        pass
    except Exception as error:
        raise SourceError(f"cannot read TIFF {path}: {error}") from error
    try:
        import zarr

        store = tifffile.imread(path, aszarr=True, series=0, level=0)
        return zarr.open(store, mode="r", zarr_format=2)
    except Exception as error:
        raise SourceError(f"cannot read TIFF {path}: {error}") from error


def full_resolution(group: Any) -> Any:
    """The full-resolution array of an OME-Zarr multiscale image ``group`` (the first
    dataset of its first multiscale), for NGFF 0.4 (zarr v2) and 0.5 (zarr v3)."""
    try:
        return group[_first_multiscale(group)["datasets"][0]["path"]]
    except (IndexError, KeyError, TypeError) as error:
        arrays = [name for name, _ in group.arrays()] if hasattr(group, "arrays") else []
        hint = f" (it holds arrays {', '.join(sorted(arrays))}: open one of them)" if arrays else ""
        raise SourceError(f"zarr group {group.store_path} is not an OME-Zarr image: no multiscales{hint}") from error


def _first_multiscale(group: Any) -> dict:
    """The first multiscale record of an OME-Zarr image ``group``: under ``ome`` (NGFF
    0.5, zarr v3) or at the top of its attributes (0.4, zarr v2). Raises
    ``KeyError``, ``IndexError`` or ``TypeError`` when there is none."""
    attributes = dict(group.attrs)
    return attributes.get("ome", attributes)["multiscales"][0]


def read_region(array: Any, index: tuple) -> np.ndarray:
    """``array[index]`` as a numpy array (a dask array is computed in this thread)."""
    if type(array).__module__.startswith("dask"):
        return np.asarray(array[index].compute(scheduler="synchronous"))
    return np.asarray(array[index])


class LazyPlanes:
    """A lazy ``(*stack, C, H, W)`` view of an array (see
    :func:`~napari_unet.core.layout.axes_at_minus3`) that reads windows on request."""

    def __init__(self, array: Any, axes: tuple[int | None, ...]) -> None:
        self.array = array
        self.axes = axes
        self.shape = tuple(1 if a is None else int(array.shape[a]) for a in axes)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def read(self, index: tuple[int, ...], rows: slice, cols: slice) -> np.ndarray:
        """The window ``(C, rows, cols)`` of plane ``index`` in the source's dtype."""
        n_stack = self.ndim - 3
        source_index: list[Any] = [slice(None)] * len(self.array.shape)
        kept = []  # (view position, source axis) of the axes the read keeps
        for position, axis in enumerate(self.axes):
            if axis is None:
                continue
            if position < n_stack:
                source_index[axis] = int(index[position])
            else:
                source_index[axis] = {n_stack: slice(None), n_stack + 1: rows, n_stack + 2: cols}[position]
                kept.append((position, axis))
        window = read_region(self.array, tuple(source_index))
        in_source_order = sorted(kept, key=lambda item: item[1])
        order = [in_source_order.index(item) for item in sorted(kept)]
        window = window.transpose(order)
        return window[None] if self.axes[n_stack] is None else window


def sample_digest(planes: LazyPlanes, side: int = 64) -> str:
    """A fingerprint of the pixels of ``planes``: the SHA-256 of the windows of ``side``
    px at the corners and the centre of its first, middle and last plane. It reads 15
    small windows whatever the image's size, so that a resumed run can tell another
    image of the same shape and type from its own without reading either whole."""
    digest = hashlib.sha256()
    stack = planes.shape[:-3]
    height, width = planes.shape[-2:]
    count = math.prod(stack)
    if count == 0 or height == 0 or width == 0:
        return digest.hexdigest()  # no pixel to sample

    def starts(length: int) -> list[slice]:  # the first, middle and last window along an axis
        middle = max((length - side) // 2, 0)
        return [slice(0, side), slice(middle, middle + side), slice(max(length - side, 0), length)]

    (top, middle, bottom), (left, centre, right) = starts(height), starts(width)
    corners_and_centre = [(top, left), (top, right), (middle, centre), (bottom, left), (bottom, right)]
    for flat in sorted({0, count // 2, count - 1}):
        index = np.unravel_index(flat, stack) if stack else ()
        for window in corners_and_centre:
            digest.update(np.ascontiguousarray(planes.read(tuple(int(i) for i in index), *window)).tobytes())
    return digest.hexdigest()


def planes_of(image: Any, in_channels: int, channel_axis: int | None = None) -> np.ndarray | LazyPlanes:
    """``image`` as ``(*stack, C, H, W)``: a numpy view for in-memory arrays, a
    :class:`LazyPlanes` for lazy ones (see :func:`is_lazy`)."""
    image = open_source(image) if isinstance(image, (str, os.PathLike)) or _is_group(image) else image
    if is_lazy(image):
        return LazyPlanes(image, axes_at_minus3(image.shape, in_channels, channel_axis))
    return channels_at_minus3(image, in_channels, channel_axis)


def _is_group(image: Any) -> bool:
    zarr = _zarr()
    return zarr is not None and isinstance(image, zarr.Group)


class InMemoryPlane:
    """A normalised plane (C, H, W) held whole; tiles gathered by mirrored index."""

    def __init__(self, plane: np.ndarray) -> None:
        self.plane = plane

    def tile(self, origin: tuple[int, int], plan: TilePlan) -> np.ndarray:
        return extract_tile(self.plane, origin, plan)


class LazyPlane:
    """One plane of a :class:`LazyPlanes` with its normalisation range: each tile reads
    the bounding window of its mirrored indices, gathers them and normalises."""

    def __init__(self, planes: LazyPlanes, index: tuple[int, ...], low: np.ndarray, high: np.ndarray) -> None:
        self.planes, self.index = planes, index
        self.low, self.high = low, high

    def tile(self, origin: tuple[int, int], plan: TilePlan) -> np.ndarray:
        ctx = context(plan.depth)
        height, width = self.planes.shape[-2:]
        rows = reflect_index(np.arange(plan.tile[0]) + origin[0] - ctx, height)
        cols = reflect_index(np.arange(plan.tile[1]) + origin[1] - ctx, width)
        top, left = int(rows.min()), int(cols.min())
        window = self.planes.read(self.index, slice(top, int(rows.max()) + 1), slice(left, int(cols.max()) + 1))
        gathered = window[:, (rows - top)[:, None], (cols - left)[None, :]]
        return normalize_with(gathered, self.low, self.high)


def sample_step(height: int, width: int, max_pixels: int = SAMPLE_PIXELS) -> int:
    """The grid step ``s`` of the normalisation sample (1: every pixel)."""
    step = 1
    while math.ceil(height / step) * math.ceil(width / step) > max_pixels:
        step += 1
    return step


def normalization_range(
    planes: LazyPlanes, index: tuple[int, ...], config: NormalizationConfig, max_pixels: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel low/high percentiles (float32, shape (C,)) of plane ``index`` from
    the deterministic sample described in the module docstring."""
    channels, height, width = planes.shape[-3:]
    step = sample_step(height, width, max_pixels or SAMPLE_PIXELS)
    block = step * max(1, math.isqrt(_BLOCK_PIXELS))
    sample_rows, sample_cols = math.ceil(height / step), math.ceil(width / step)
    sample = np.empty((channels, sample_rows, sample_cols), np.float32)
    for top in range(0, height, block):
        for left in range(0, width, block):
            rows, cols = slice(top, min(top + block, height), step), slice(left, min(left + block, width), step)
            window = planes.read(index, rows, cols)
            y, x = top // step, left // step
            sample[:, y : y + window.shape[1], x : x + window.shape[2]] = window
    return percentile_range(sample.reshape(channels, -1), config)


def plane_reader(data: np.ndarray | LazyPlanes, index: tuple[int, ...], config: NormalizationConfig):
    """What prediction takes tiles of, for plane ``index`` of ``data`` (from
    :func:`planes_of`): the normalised plane in memory, or a :class:`LazyPlane`."""
    if isinstance(data, LazyPlanes):
        low, high = normalization_range(data, index, config)
        return LazyPlane(data, index, low, high)
    return InMemoryPlane(normalize(data[index], config))
