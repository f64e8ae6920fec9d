"""Choosing a torch device and a numeric precision, with honest fallbacks."""

from __future__ import annotations

import contextlib
import logging

import torch

from .errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def available_devices() -> list[str]:
    """Device names usable here, best first (always ends with ``"cpu"``)."""
    found = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return [*found, "cpu"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or ``"auto"`` picks cuda, then mps, then cpu; else validates ``device``."""
    if device is None or device == "auto":
        return torch.device(available_devices()[0])
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"unknown device {device!r}; use one of: auto, {', '.join(available_devices())}") from error
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {device!r} is not supported; use one of: auto, {', '.join(available_devices())}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but this torch sees no CUDA GPU; use cpu")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"no {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if resolved.type == "mps" and resolved.type not in available_devices():
        raise ConfigError("device 'mps' asked for, but it is not available here; use cpu")
    return resolved


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    cpu = torch.cpu
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def resolve_precision(precision: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; ``None`` means fp32.

    ``"auto"`` (or ``None``) picks the fastest precision whose results match fp32
    within tolerance: bf16 on CUDA GPUs and CPUs with bf16 matrix units, else fp32.
    A precision the device cannot run falls back with a logged note.
    """
    name = "auto" if precision is None else str(precision).lower()
    if name not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if name == "fp32":
        return None
    if device.type == "cuda":
        if name in ("auto", "bf16") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    if device.type == "cpu":
        if name == "auto":
            return torch.bfloat16 if cpu_has_bf16() else None
        if not cpu_has_bf16():
            log.info("%s asked for, but this CPU has no bf16/fp16 matrix units: using fp32", name)
            return None
        if name == "fp16":
            log.info("fp16 on this CPU is slower than bf16: using bf16 instead")
        return torch.bfloat16
    if device.type == "mps" and name == "fp16":
        return torch.float16
    if name != "auto":
        log.info("%s is not supported on %s: using fp32", name, device)
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """An autocast context for ``dtype`` on ``device`` (a no-op for fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def channels_last(tensor_ndim: int) -> torch.memory_format:
    """The channels-last memory format of a ``tensor_ndim``-dimensional tensor (4: images, 5: volumes)."""
    return torch.channels_last if tensor_ndim == 4 else torch.channels_last_3d


def layout_of(x: torch.Tensor) -> torch.memory_format:
    """Channels-last where ``x`` (N, C, *spatial) is laid out so, else channels-first."""
    last = channels_last(x.ndim)
    return last if x.is_contiguous(memory_format=last) else torch.contiguous_format


def training_layout(device: torch.device, ndim: int) -> torch.memory_format:
    """The memory format that training keeps the network's weights and inputs in.

    Channels-last on a CPU: oneDNN's convolutions work in that layout and reorder
    channels-first tensors at every convolution and its gradients.
    ``bench/bench_train.py`` prints the ratio of steps/s (on a 2-core Xeon with AMX,
    bf16: 1.49x for the 2D CPU default without batch norm, 1.23x for the 3D one;
    probes in fp32 there: 1.4x and 1.8x). Channels-first on other devices, where it
    was not measured.
    """
    return channels_last(ndim + 2) if device.type == "cpu" else torch.contiguous_format


def precision_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
