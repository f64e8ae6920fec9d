"""Choosing a torch device and a numeric precision, with honest fallbacks."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import threading
from collections.abc import Iterator

import torch

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
        raise ValueError(f"unknown device {device!r}; use one of: auto, {', '.join(available_devices())}") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but this torch sees no CUDA GPU; use cpu")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"no {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if resolved.type == "mps" and resolved.type not in available_devices():
        raise ValueError("device 'mps' asked for, but it is not available here; use cpu")
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
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
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


def precision_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


# glibc's mallopt parameters and the values its dynamic thresholds settle at on
# 64-bit systems once a large block has been freed (what a long-running process has).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_SETTLED_MMAP_THRESHOLD = 32 << 20
_SETTLED_TRIM_THRESHOLD = 64 << 20
_HOLD_MMAP_THRESHOLD = 1 << 30
_HOLD_TRIM_THRESHOLD = (1 << 31) - 1
#: Seconds the kept memory outlives the last prediction, so that back-to-back calls
#: (a loop over images) reuse it; then it goes back to the system.
RELEASE_DELAY_S = 2.0


class _MallocState:
    lock = threading.Lock()
    users = 0
    holding = False
    timer: threading.Timer | None = None


def _glibc():
    """The C library when it is glibc on Linux (which has mallopt), else ``None``."""
    if not sys.platform.startswith("linux") or os.environ.get("NAPARI_UNET_MALLOC_TUNING", "1") == "0":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def _release(libc) -> None:
    state = _MallocState
    with state.lock:
        if state.users == 0 and state.holding:
            libc.mallopt(_M_MMAP_THRESHOLD, _SETTLED_MMAP_THRESHOLD)
            libc.mallopt(_M_TRIM_THRESHOLD, _SETTLED_TRIM_THRESHOLD)
            libc.malloc_trim(0)
            state.holding = False


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """Inside, freed large blocks stay in the process for reuse (Linux with glibc).

    Each layer's activations of a large tile take tens to hundreds of MB. glibc
    serves blocks above 32 MB with fresh ``mmap`` pages and unmaps them on free, so
    every forward pass page-faults and the kernel zeroes that memory again: up to a
    fifth of the forward time of the paper network on a CPU in fp32, less in bf16
    (measured in bench/). Inside this context glibc keeps freed blocks instead.
    :data:`RELEASE_DELAY_S` seconds after the last user left (a new user cancels
    the countdown), the thresholds go back to the values glibc's own dynamic ones
    settle at and the kept memory is returned to the system (``malloc_trim``).
    Results are unaffected. The environment variable ``NAPARI_UNET_MALLOC_TUNING=0``
    turns it off.
    """
    libc = _glibc()
    if libc is None:
        yield
        return
    state = _MallocState
    with state.lock:
        state.users += 1
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        if not state.holding:
            libc.mallopt(_M_MMAP_THRESHOLD, _HOLD_MMAP_THRESHOLD)
            libc.mallopt(_M_TRIM_THRESHOLD, _HOLD_TRIM_THRESHOLD)
            state.holding = True
    try:
        yield
    finally:
        with state.lock:
            state.users -= 1
            if state.users == 0:
                state.timer = threading.Timer(RELEASE_DELAY_S, _release, (libc,))
                state.timer.daemon = True
                state.timer.start()
