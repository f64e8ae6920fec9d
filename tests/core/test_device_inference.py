"""The GPU inference path (DeviceInference), exercised on the CPU where it runs the same code."""

import logging

import numpy as np
import pytest
import torch

import napari_unet as nu
from napari_unet.core import device_inference
from napari_unet.core.device_inference import DeviceInference, inference_layout
from napari_unet.core.predict import _forward

CPU = torch.device("cpu")


def overflowing_model() -> nu.UNet:
    """A small network whose activations pass fp16's largest value (about 7e19 here)."""
    torch.manual_seed(0)
    model = nu.UNet(base_channels=4, depth=2).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(30)
    return model


def tiles(model: nu.UNet, count: int = 2) -> np.ndarray:
    size = 92  # a valid input size of depth 2
    return np.random.default_rng(0).random((count, model.config.in_channels, size, size), dtype=np.float32)


def test_fp16_that_overflows_is_computed_again_in_fp32_with_one_warning(caplog):
    model = overflowing_model()
    batch = tiles(model)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.float16):
        assert not torch.isfinite(model(torch.from_numpy(batch))).all()  # the failure the guard is for
    network = DeviceInference(model, CPU, torch.float16, 4)
    with caplog.at_level(logging.WARNING):
        first = _forward(network, batch, CPU, torch.float16)
        second = _forward(network, batch, CPU, torch.float16)
    reference = _forward(DeviceInference(model, CPU, None, 4), batch, CPU, None)
    assert np.isfinite(first).all() and np.array_equal(first, second)
    np.testing.assert_allclose(first, reference, atol=1e-6)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "predicting in fp32 instead; choose precision fp32 for" in warnings[0]
    assert network.dtype is None  # later batches go straight to the fallback


def test_fp16_within_range_stays_fp16_without_a_warning(caplog):
    torch.manual_seed(0)
    model = nu.UNet(base_channels=4, depth=2).eval()
    batch = tiles(model)
    network = DeviceInference(model, CPU, torch.float16, 4)
    with caplog.at_level(logging.WARNING):
        half = _forward(network, batch, CPU, torch.float16)
    full = _forward(DeviceInference(model, CPU, None, 4), batch, CPU, None)
    assert network.dtype == torch.float16 and not caplog.records
    assert 0 < np.abs(half - full).max() < 1e-2  # computed in fp16: close, not equal


@pytest.mark.parametrize(
    ("device", "dtype", "ndim", "layout"),
    [
        ("cuda", torch.bfloat16, 4, torch.channels_last),
        ("cuda", torch.float16, 5, torch.channels_last_3d),
        ("cuda", None, 4, torch.contiguous_format),
        ("mps", torch.float16, 4, torch.contiguous_format),
        ("cpu", torch.bfloat16, 4, torch.contiguous_format),
    ],
)
def test_half_precision_on_cuda_runs_channels_last(device, dtype, ndim, layout):
    assert inference_layout(torch.device(device), dtype, ndim) == layout


@pytest.mark.parametrize("ndim", [2, 3])
def test_channels_last_gives_the_logits_of_channels_first(monkeypatch, ndim):
    torch.manual_seed(0)
    model = nu.UNet(base_channels=4, depth=2, ndim=ndim).eval()
    shape = (1, 1, *([44] * ndim)) if ndim == 3 else (2, 1, 92, 92)
    batch = np.random.default_rng(1).random(shape, dtype=np.float32)
    plain = _forward(DeviceInference(model, CPU, None, batch.ndim), batch, CPU, None)
    last = torch.channels_last if ndim == 2 else torch.channels_last_3d
    monkeypatch.setattr(device_inference, "inference_layout", lambda *_: last)
    network = DeviceInference(model, CPU, None, batch.ndim)
    assert any(p.dim() == batch.ndim and not p.is_contiguous() for p in network.module.parameters())
    # fp32 either way; oneDNN's AVX-512 kernels sum in another order per layout (1.1e-6 seen)
    np.testing.assert_allclose(_forward(network, batch, CPU, None), plain, atol=1e-5)
