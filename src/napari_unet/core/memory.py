"""Keeping freed activation memory in the process while predicting or training (Linux, glibc).

:func:`reuse_freed_memory` is what prediction and training run under on a CPU;
:func:`release_kept_memory` hands the kept memory back at once (benchmarks call it so
that every method starts from the same state).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Iterator

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


def release_kept_memory() -> None:
    """Give memory kept by :func:`reuse_freed_memory` back to the system now and restore
    glibc's settled thresholds (a no-op while a prediction runs, or off glibc)."""
    libc = _glibc()
    if libc is None:
        return
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

    Each layer's activations of a large tile take tens to hundreds of MB, and every
    training step allocates and frees the same few dozen tensors of 1-30 MB. glibc
    serves large blocks with fresh ``mmap`` pages (above 128 kB until a first such
    block is freed, above 32 MB at most later) and unmaps them, or trims its heap, on
    free, so every forward pass and every step page-faults and the kernel zeroes that
    memory again: up to a fifth of the forward time of the paper network on a CPU in
    fp32, less in bf16, and about a seventh of a training step of the CPU default
    network (measured in bench/). Inside this context glibc keeps freed blocks instead.
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
                state.timer = threading.Timer(RELEASE_DELAY_S, release_kept_memory)
                state.timer.daemon = True
                state.timer.start()
