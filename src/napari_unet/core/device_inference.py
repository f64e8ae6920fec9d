"""The inference path of a :class:`~napari_unet.core.model.UNet` on a GPU (CUDA or
MPS): a snapshot of the weights in the memory layout the device's convolutions run
fastest in, and a guard against fp16's narrow range (see :class:`DeviceInference`)."""

from __future__ import annotations

import contextlib
import logging

import torch

from .devices import precision_name
from .model import UNet, snapshot

log = logging.getLogger(__name__)

#: The largest finite fp16 value: activations above it become inf, then NaN.
FP16_MAX = float(torch.finfo(torch.float16).max)


def inference_layout(device: torch.device, dtype: torch.dtype | None, tensor_ndim: int) -> torch.memory_format:
    """The memory format that prediction on ``device`` in ``dtype`` keeps the network
    and its inputs in (``tensor_ndim``: 4 for images, 5 for volumes).

    Channels-last for bf16 and fp16 on CUDA: on an H200 one forward pass of the paper
    network on a 700x700 tile took 3.01 ms instead of 3.98 in bf16 and 2.52 instead
    of 3.48 in fp16 (cuDNN's autotuner on; bench/bench_gpu.py). Channels-first
    otherwise: in fp32 channels-last was 3% slower there (18.1 against 17.6 ms), and
    on other devices it was not measured.
    """
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        return torch.channels_last if tensor_ndim == 4 else torch.channels_last_3d
    return torch.contiguous_format


def fp16_fallback(device: torch.device) -> torch.dtype | None:
    """The precision that replaces fp16 when a network overflows it: bf16 (fp32's
    range) where the device runs it, else fp32 (``None``)."""
    if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


class DeviceInference:
    """Logits of ``model`` on ``device`` in ``dtype``, from a snapshot of its weights.

    Call with a batch ``(N, C, *spatial)`` on ``device``; returns the logits
    ``(N, K, *(spatial - margin))`` computed in ``dtype`` (autocast), whatever autocast
    the caller set.

    A network without batch normalisation can have activations beyond fp16's range
    (65504): they become inf and NaN, and every pixel would be labelled background.
    With fp16, a batch whose logits are not all finite is computed again in
    :func:`fp16_fallback`'s precision, and so is every later batch; a warning says so
    once. (On an H200 the paper network, trained for 30 s in bf16, gave no object at
    all in fp16 before this guard.)
    """

    def __init__(self, model: UNet, device: torch.device, dtype: torch.dtype | None, tensor_ndim: int) -> None:
        self.device = device
        self.dtype = dtype
        self.layout = inference_layout(device, dtype, tensor_ndim)
        self.module = snapshot(model, device).to(memory_format=self.layout)
        self._fell_back = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=self.layout)
        logits = self._logits(x)
        if self.dtype == torch.float16 and not bool(torch.isfinite(logits).all()):
            self.dtype, self._fell_back = fp16_fallback(self.device), True
            log.warning(
                "fp16 overflowed in this network (activations beyond %.0f gave inf): predicting in %s instead; "
                "choose precision %s for this model",
                FP16_MAX,
                precision_name(self.dtype),
                "fp32" if self.dtype is None else "bf16 or fp32",
            )
            logits = self._logits(x)
        return logits

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """The snapshot's logits in :attr:`dtype`, whichever autocast the caller set
        (after a fallback, the caller's is still fp16's)."""
        if self.dtype is not None:
            context = torch.autocast(self.device.type, dtype=self.dtype)
        elif self._fell_back:
            context = torch.autocast(self.device.type, enabled=False)
        else:
            context = contextlib.nullcontext()
        with context:
            return self.module(x)
