"""Model and training-state files: safetensors, written atomically, never unpickled.

A file holds tensors plus one JSON document in the safetensors header. Nested
state (an optimizer's state, RNG states) is stored as a JSON skeleton whose tensor
leaves point at named tensors, so nothing in a file is ever executed on load. The
document records a SHA-256 digest of the tensors (:func:`tensors_digest`), checked on
load: weight bytes changed on disk (a bad copy, a flipped sector) were read without a
word and segmented differently. Files written before it have none and load as before.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .atomic_files import write_atomic
from .errors import ConfigError
from .model import UNet
from .modelfile import FORMAT, FORMAT_VERSION, HEADER_KEY, ModelFileError, check_model_state, read_checked, unflatten
from .train_config import TrainConfig

__all__ = ["ModelFileError", "describe", "load_model", "load_state", "model_from_state", "save_model", "save_state"]


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


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """The SHA-256 (hex) of ``tensors``' names, types, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]  # on the CPU: saved or read from a file
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Save nested ``state`` (dicts, lists, tensors, JSON scalars) atomically, with the
    digest of its tensors."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, tensors, "t")
    document = {"format": FORMAT, "version": FORMAT_VERSION, "state": skeleton, "sha256": tensors_digest(tensors)}
    write_atomic(path, save_safetensors(tensors, metadata={HEADER_KEY: json.dumps(document)}))


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Load what :func:`save_state` wrote; raises :class:`ModelFileError` otherwise.

    The file is checked before its tensors are read (see :mod:`.modelfile`): a model
    file, or the model in a checkpoint, must hold exactly the weights its recorded
    architecture has, and nothing larger than the file itself is ever allocated.
    """
    document, data = read_checked(path)
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, OverflowError) as error:
        raise ModelFileError(f"{path} is damaged: its tensors cannot be read ({error})") from error
    recorded = document.get("sha256")
    if recorded is not None and recorded != tensors_digest(tensors):
        raise ModelFileError(
            f"{path} is damaged: its weights are not the ones it was saved with (their checksum differs); "
            "use another copy of the file"
        )
    return unflatten(document["state"], tensors, path)


def save_model(model: UNet, path: str | os.PathLike, **metadata: Any) -> None:
    """Save weights, architecture, normalisation, instance settings, class names and
    free JSON-able ``metadata`` (e.g. training summary) to one file, atomically."""
    if not isinstance(model, UNet):
        raise ConfigError(f"model must be a napari_unet.UNet, got {type(model).__name__}")
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
    """Build the UNet a model state describes (see :func:`save_model`); the weights
    are checked against the recorded architecture before the network is built."""
    spec = check_model_state(state, path)
    with torch.device("meta"):  # no memory and no random draws for weights replaced below
        model = UNet.from_config(spec.model)
    model = model.to_empty(device="cpu")
    model.spec = spec
    try:
        model.load_state_dict(state["weights"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{path} does not hold a usable U-Net: {error}") from error
    broken = [name for name, tensor in model.state_dict().items() if not torch.isfinite(tensor).all()]
    if broken:
        more = f" and {len(broken) - 1} more" if len(broken) > 1 else ""
        raise ModelFileError(
            f"{path} holds NaN or infinite weights ({broken[0]}{more}): it cannot segment anything; "
            "use the model of an earlier checkpoint, or train again"
        )
    model.metadata = dict(state.get("metadata") or {})
    return model


def load_model(path: str | os.PathLike) -> UNet:
    """Load a model saved by :func:`save_model` (or a training checkpoint).

    Never executes code from the file, and checks it before allocating anything (see
    :func:`load_state`). The returned model is in eval mode on the CPU, with
    ``model.spec`` and ``model.metadata`` filled in. Also opens the bioimage.io
    packages napari-unet exports (zip or folder, see
    :mod:`napari_unet.core.package_reader`).
    """
    from .package_reader import is_package, read_package

    if is_package(path):
        return read_package(path)
    state = load_state(path)
    if isinstance(state, dict) and state.get("kind") == "checkpoint":
        state = state.get("model")
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


def model_bytes(model: UNet) -> int:
    """About how large a model file of ``model`` is (its weights, plus 1 MiB)."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) + (1 << 20)


def checkpoint_bytes(model: UNet, config: TrainConfig, keeps_best: bool = False) -> int:
    """About how large a checkpoint of ``model`` trained with ``config`` is: the
    weights plus the optimiser's per-weight state (two moments for Adam, momentum
    for SGD), the best validated weights where ``keeps_best``, and the model's record."""
    return model_bytes(model) * ((3 if config.optimizer == "adam" else 2) + keeps_best)
