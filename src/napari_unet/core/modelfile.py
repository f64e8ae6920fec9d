"""Checking a model file before anything in it is allocated.

A model file is a safetensors file: an 8-byte header length, a JSON header that
lists every tensor (dtype, shape, byte range) and carries our JSON document, then
the tensor bytes. :func:`read_checked` looks at the path, the file size and the
header first and reads the tensor bytes only when all of this holds:

- the path is a regular file once symlinks are followed (no FIFO, device or folder),
  of at most :data:`MAX_FILE_BYTES`;
- the header is at most :data:`MAX_HEADER_BYTES`, every entry has the JSON types the
  format prescribes, each tensor's byte range matches its dtype and shape, and the
  ranges cover the rest of the file exactly (so all tensors together are exactly
  as large as the file);
- the document is a napari-unet document of a known version whose tensor
  references all exist;
- a model's architecture has the right types and lies within :data:`LIMITS`, and
  the file holds exactly the weights that architecture has (names, float dtypes,
  shapes, as computed from :func:`~napari_unet.core.layer_plan.layer_plan`).

So a small file cannot make the loader allocate more than its own size, and a
hostile header ends in :class:`ModelFileError`, never in a traceback.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ModelSpec
from .errors import NapariUnetError
from .layer_plan import CONV, UP, layer_plan

FORMAT = "napari-unet"
FORMAT_VERSION = 1
HEADER_KEY = "napari_unet"

#: Largest model or checkpoint file accepted (the paper network's checkpoint is
#: about 0.4 GB).
MAX_FILE_BYTES = 32 << 30
#: Largest JSON header accepted (safetensors' own limit).
MAX_HEADER_BYTES = 100 << 20
#: Upper bounds on the architecture recorded in a model file (depth is 1-6 anyway).
LIMITS = {"in_channels": 4096, "n_classes": 1024, "base_channels": 512}
#: Nesting depth of a stored state beyond which a file is refused.
MAX_NESTING = 64

DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
WEIGHT_DTYPES = ("F32", "F16", "BF16")
COUNTER_DTYPES = ("I64",)


class ModelFileError(NapariUnetError, ValueError):
    """A file that is not a readable napari-unet model."""


@dataclass(frozen=True)
class TensorEntry:
    """What the header says about one tensor (nothing of it is read yet)."""

    dtype: str
    shape: tuple[int, ...]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def unflatten(skeleton: Any, leaves: dict[str, Any], path: str | os.PathLike = "<memory>") -> Any:
    """The nested state a JSON ``skeleton`` describes, its tensor references replaced
    by ``leaves[name]`` (tensors, or :class:`TensorEntry` records to check a file
    before reading it). A malformed skeleton raises :class:`ModelFileError`."""

    def build(node: Any, depth: int) -> Any:
        if depth > MAX_NESTING:
            raise ModelFileError(f"{path} is damaged: its state is nested more than {MAX_NESTING} levels deep")
        if isinstance(node, dict):
            if set(node) == {"__tensor__"}:
                name = node["__tensor__"]
                if not isinstance(name, str) or name not in leaves:
                    raise ModelFileError(f"{path} is damaged: it refers to a tensor {name!r} it does not hold")
                return leaves[name]
            items = node.get("__items__")
            if set(node) != {"__items__"} or not isinstance(items, list):
                raise ModelFileError(f"{path} is damaged: unexpected entry {_short(node)} in its state")
            result = {}
            for item in items:
                if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], (str, int))):
                    raise ModelFileError(f"{path} is damaged: unexpected entry {_short(item)} in its state")
                result[item[0]] = build(item[1], depth + 1)
            return result
        if isinstance(node, list):
            return [build(item, depth + 1) for item in node]
        return node

    return build(skeleton, 0)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def expected_weights(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Name and shape of every tensor of the U-Net ``spec`` describes (2D or 3D), as
    :class:`~napari_unet.core.model.UNet`'s ``state_dict`` names them, computed from
    the layer plan without building anything."""
    config = spec.model
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in layer_plan(config):
        if layer.kind == CONV:
            shapes[f"{layer.module}.weight"] = (layer.out_channels, layer.in_channels, *layer.kernel)
            shapes[f"{layer.module}.bias"] = (layer.out_channels,)
            if layer.norm:  # batch normalisation without affine parameters: running statistics only
                shapes[f"{layer.norm}.running_mean"] = shapes[f"{layer.norm}.running_var"] = (layer.out_channels,)
                shapes[f"{layer.norm}.num_batches_tracked"] = ()
        elif layer.kind == UP:
            shapes[f"{layer.module}.weight"] = (layer.in_channels, layer.out_channels, *layer.kernel)
            if config.up_bias:
                shapes[f"{layer.module}.bias"] = (layer.out_channels,)
    return shapes


def check_model_state(state: Any, path: str | os.PathLike) -> ModelSpec:
    """Check a model state whose tensors are :class:`TensorEntry` records (or tensors)
    against the architecture it records; returns that architecture's spec."""
    if not isinstance(state, dict) or state.get("kind") != "model":
        raise ModelFileError(f"{path} holds no model")
    try:
        spec = ModelSpec.from_dict(state.get("spec"))
    except (NapariUnetError, TypeError, ValueError) as error:
        raise ModelFileError(f"{path} records unusable settings: {error}") from error
    for name, limit in LIMITS.items():
        if getattr(spec.model, name) > limit:
            raise ModelFileError(
                f"{path} records {name} = {getattr(spec.model, name)}, above the limit of {limit}: refused"
            )
    metadata = state.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise ModelFileError(f"{path} is damaged: its metadata is not a mapping")
    weights = state.get("weights")
    if not isinstance(weights, dict):
        raise ModelFileError(f"{path} is damaged: it holds no weights")
    expected = expected_weights(spec)
    missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or extra:
        what = f"lacks {', '.join(missing[:3])}" if missing else f"has unexpected {', '.join(map(str, extra[:3]))}"
        raise ModelFileError(f"{path} does not hold the weights of the U-Net it describes: it {what}")
    for name, shape in expected.items():
        entry = weights[name]
        dtype = entry.dtype if isinstance(entry, TensorEntry) else None
        got = entry.shape if isinstance(entry, TensorEntry) else getattr(entry, "shape", None)
        counter = name.endswith("num_batches_tracked")  # batch normalisation's step count (3D networks)
        if isinstance(entry, TensorEntry) and dtype not in (COUNTER_DTYPES if counter else WEIGHT_DTYPES):
            raise ModelFileError(f"{path}: weight {name} has dtype {dtype}, not a float type")
        if got is None or tuple(got) != shape:
            raise ModelFileError(
                f"{path} does not hold the weights of the U-Net it describes: {name} has shape "
                f"{None if got is None else tuple(got)}, the architecture needs {shape}"
            )
    return spec


def _open_regular(path: Path) -> int:
    """A read-only descriptor of ``path``, refused unless it is a regular file (after
    following symlinks) of at most :data:`MAX_FILE_BYTES`."""
    try:
        info = os.stat(path)
    except OSError as error:
        raise ModelFileError(f"cannot read model file {path}: {error.strerror or error}") from error
    _check_regular(path, info)
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise ModelFileError(f"cannot read model file {path}: {error.strerror or error}") from error
    try:
        _check_regular(path, os.fstat(descriptor))  # the same file that was checked above
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def _check_regular(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a pipe, device or socket)"
        raise ModelFileError(f"cannot read model file {path}: it is {kind}")
    if info.st_size > MAX_FILE_BYTES:
        raise ModelFileError(
            f"{path} is {info.st_size / 2**30:.1f} GiB, larger than any napari-unet model "
            f"({MAX_FILE_BYTES >> 30} GiB at most): refused"
        )


#: What files of other formats are, by their suffix, for the message that refuses them.
FOREIGN_FORMATS = {
    ".onnx": "an ONNX model (napari-unet exports them for other software, and does not read them)",
    ".pt": "a TorchScript or pickled PyTorch file, which napari-unet never loads (loading one can run its code)",
    ".pth": "a pickled PyTorch file, which napari-unet never loads (loading one can run its code)",
}


def _not_ours(path: Path) -> ModelFileError:
    """The error for a file that is no napari-unet model file, saying what it may be
    (by its suffix, else by its first bytes)."""
    foreign = FOREIGN_FORMATS.get(Path(path).suffix.lower()) or _sniffed(path)
    if foreign:
        return ModelFileError(
            f"{path} is {foreign}; give a napari-unet model file (.safetensors) or a bioimage.io package "
            "napari-unet exported"
        )
    return ModelFileError(f"{path} is not a napari-unet model file (corrupt, truncated or another format)")


def _sniffed(path: Path) -> str | None:
    """What a file's first bytes say it is, when they name a format that can run code."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(9)
    except OSError:
        return None
    if head[8:9] == b"{":  # a safetensors file (its header's length, then its JSON), damaged
        return None
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # pickle's protocol opcode
        return FOREIGN_FORMATS[".pth"]
    if head[:2] == b"PK" and _pickles_inside(path):  # torch.save's and TorchScript's zip
        return FOREIGN_FORMATS[".pt"]
    return None


def _pickles_inside(path: Path) -> bool:
    """Whether ``path`` is a zip archive holding pickles (``data.pkl``), as torch writes them."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(".pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _read_exactly(stream, count: int, path: Path) -> bytes:
    data = stream.read(count)
    if len(data) != count:
        raise ModelFileError(f"{path} is truncated (or changed while being read)")
    return data


def _parse_entries(header: Any, data_bytes: int, path: Path) -> tuple[dict[str, TensorEntry], dict]:
    """The tensor entries and the metadata of a safetensors header, checked."""
    not_ours = _not_ours(path)
    if not isinstance(header, dict):
        raise not_ours
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise not_ours
    entries, ranges = {}, []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not (isinstance(entry, dict) and set(entry) == {"dtype", "shape", "data_offsets"}):
            raise not_ours
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_BYTES or not isinstance(shape, list) or not all(_is_int(n) and n >= 0 for n in shape):
            raise not_ours
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise not_ours
        begin, end = offsets
        if not 0 <= begin <= end <= data_bytes or end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise ModelFileError(f"{path} is damaged: the size of tensor {name!r} does not match its shape")
        entries[name] = TensorEntry(dtype, tuple(shape))
        ranges.append((begin, end))
    position = 0
    for begin, end in sorted(ranges):
        if begin != position:
            raise ModelFileError(f"{path} is damaged: its tensors overlap or leave gaps")
        position = end
    if position != data_bytes:
        raise ModelFileError(f"{path} is damaged: its tensors do not account for the file's size")
    return entries, metadata


def _parse_document(metadata: dict, path: Path) -> dict:
    if HEADER_KEY not in metadata:
        raise ModelFileError(f"{path} is not a napari-unet model file")
    try:
        document = json.loads(metadata[HEADER_KEY])
    except (ValueError, RecursionError) as error:
        raise ModelFileError(f"{path} is damaged: its napari-unet document is not valid JSON") from error
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a napari-unet model file")
    version = document.get("version")
    if not _is_int(version) or version < 1:
        raise ModelFileError(f"{path} is damaged: format version {_short(version)}")
    if version > FORMAT_VERSION:
        raise ModelFileError(f"{path} was written by a newer napari-unet (format {version}); upgrade to read it")
    if "state" not in document:
        raise ModelFileError(f"{path} is damaged: it holds no state")
    return document


def read_checked(path: str | os.PathLike) -> tuple[dict, bytes]:
    """The JSON document (its ``"state"``: the state skeleton) and the raw bytes of the
    model file at ``path``, after the checks in the module docstring (the bytes are
    read last)."""
    path = Path(path)
    with os.fdopen(_open_regular(path), "rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        not_ours = _not_ours(path)
        if size < 8:
            raise not_ours
        prefix = _read_exactly(stream, 8, path)
        header_bytes = int.from_bytes(prefix, "little")
        if not 2 <= header_bytes <= min(MAX_HEADER_BYTES, size - 8):
            raise not_ours
        prefix += _read_exactly(stream, header_bytes, path)
        try:
            header = json.loads(prefix[8:])
        except (ValueError, RecursionError) as error:
            raise not_ours from error
        entries, metadata = _parse_entries(header, size - 8 - header_bytes, path)
        document = _parse_document(metadata, path)
        state = unflatten(document["state"], entries, path)
        if isinstance(state, dict) and state.get("kind") == "checkpoint":
            check_model_state(state.get("model"), path)
        elif isinstance(state, dict) and state.get("kind") == "model":
            check_model_state(state, path)
        stream.seek(0)
        data = _read_exactly(stream, size, path)
    if not data.startswith(prefix):
        raise ModelFileError(f"{path} changed while being read")
    return document, data
