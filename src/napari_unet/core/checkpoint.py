"""Model and training-state files: safetensors, written atomically, never unpickled.

A file holds tensors plus one JSON document in the safetensors header. Nested
state (an optimizer's state, RNG states) is stored as a JSON skeleton whose tensor
leaves point at named tensors, so nothing in a file is ever executed on load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .config import ModelSpec
from .errors import NapariUnetError
from .io import write_atomic
from .model import UNet

FORMAT = "napari-unet"
FORMAT_VERSION = 1
_HEADER_KEY = "napari_unet"


class ModelFileError(NapariUnetError, ValueError):
    """A file that is not a readable napari-unet model."""


def _flatten(value: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """A JSON skeleton of ``value``; tensors move into ``tensors`` under ``prefix``."""
    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().cpu().contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(value, dict):
        return {"__items__": [[k, _flatten(v, tensors, f"{prefix}.{k}")] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_flatten(v, tensors, f"{prefix}.{i}") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a model file")


def _unflatten(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict) and "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if isinstance(skeleton, dict) and "__items__" in skeleton:
        return {k: _unflatten(v, tensors) for k, v in skeleton["__items__"]}
    if isinstance(skeleton, list):
        return [_unflatten(v, tensors) for v in skeleton]
    return skeleton


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Save nested ``state`` (dicts, lists, tensors, JSON scalars) atomically."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, tensors, "t")
    header = {_HEADER_KEY: json.dumps({"format": FORMAT, "version": FORMAT_VERSION, "state": skeleton})}
    write_atomic(path, save_safetensors(tensors, metadata=header))


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Load what :func:`save_state` wrote; raises :class:`ModelFileError` otherwise."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ModelFileError(f"cannot read model file {path}: {error.strerror or error}") from error
    try:
        tensors = load_safetensors(data)
        header_size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_size]).get("__metadata__") or {}
        document = json.loads(metadata[_HEADER_KEY])
    except (SafetensorError, ValueError, KeyError, TypeError, OverflowError) as error:
        raise ModelFileError(
            f"{path} is not a napari-unet model file (corrupt, truncated or another format)"
        ) from error
    if document.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a napari-unet model file")
    if document.get("version", 0) > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was written by a newer napari-unet (format {document['version']}); upgrade to read it"
        )
    try:
        return _unflatten(document["state"], tensors)
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFileError(f"{path} is damaged: its tensor index does not match its tensors") from error


def save_model(model: UNet, path: str | os.PathLike, **metadata: Any) -> None:
    """Save weights, architecture, normalisation, instance settings, class names and
    free JSON-able ``metadata`` (e.g. training summary) to one file, atomically."""
    save_state(path, model_state(model, metadata))


def model_state(model: UNet, metadata: dict[str, Any]) -> dict[str, Any]:
    """The nested state that :func:`save_model` writes (also embedded in checkpoints)."""
    json.dumps(metadata)  # fail early on metadata a file cannot hold
    return {
        "kind": "model",
        "spec": model.spec.to_dict(),
        "metadata": metadata,
        "weights": dict(model.state_dict()),
    }


def model_from_state(state: dict[str, Any], path: str | os.PathLike = "<memory>") -> UNet:
    """Build the UNet a model state describes (see :func:`save_model`)."""
    try:
        spec = ModelSpec.from_dict(state["spec"])
        model = UNet.from_config(spec.model)
        model.spec = spec
        model.load_state_dict(state["weights"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{path} does not hold a usable U-Net: {error}") from error
    model.metadata = dict(state.get("metadata") or {})
    return model


def load_model(path: str | os.PathLike) -> UNet:
    """Load a model saved by :func:`save_model` (or a training checkpoint).

    Never executes code from the file. The returned model is in eval mode on the
    CPU, with ``model.spec`` and ``model.metadata`` filled in. Also opens the
    bioimage.io packages napari-unet exports (zip or folder, see
    :mod:`napari_unet.core.bioimageio_package`).
    """
    from .bioimageio_package import is_package, read_package

    if is_package(path):
        return read_package(path)
    state = load_state(path)
    if state.get("kind") == "checkpoint":
        state = state["model"]
    if state.get("kind") != "model":
        raise ModelFileError(f"{path} holds no model")
    return model_from_state(state, path).eval()


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """What a model file holds: spec, metadata and parameter count (for ``info``)."""
    model = load_model(path)
    return {
        "file": str(path),
        "spec": model.spec.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "metadata": model.metadata,
    }
