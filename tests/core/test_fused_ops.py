"""The fused convolution + ReLU of training equals the eager pair, values and gradients."""

import itertools

import pytest
import torch

from napari_unet.core import fused_ops

pytestmark = pytest.mark.skipif(fused_ops.fused_conv_op() is None, reason="this torch has no oneDNN fused op")


def _run(conv, x, fused: bool, dtype):
    conv.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype or torch.float32, enabled=dtype is not None):
        y = fused_ops.conv_relu(conv, x) if fused else torch.relu_(conv(x))
    (y.float() * torch.linspace(-1, 1, y.numel()).view(y.shape)).sum().backward()
    return y.detach(), x.grad, conv.weight.grad, None if conv.bias is None else conv.bias.grad


@pytest.mark.parametrize(
    ("ndim", "dtype", "channels_last", "bias"),
    list(itertools.product((2, 3), (torch.bfloat16, None), (True, False), (True, False))),
)
def test_conv_relu_equals_the_eager_pair(ndim, dtype, channels_last, bias):
    torch.manual_seed(0)
    conv = (torch.nn.Conv2d if ndim == 2 else torch.nn.Conv3d)(6, 8, 3, bias=bias)
    x = torch.randn((2, 6, 20, 22) if ndim == 2 else (2, 6, 8, 10, 9))
    if channels_last:
        layout = torch.channels_last if ndim == 2 else torch.channels_last_3d
        conv, x = conv.to(memory_format=layout), x.contiguous(memory_format=layout)
    eager, fused = _run(conv, x, False, dtype), _run(conv, x, True, dtype)
    assert (fused[0] == 0).any() and (fused[0] > 0).any()  # the ReLU cut something
    for name, a, b in zip(("output", "input gradient", "weight gradient", "bias gradient"), eager, fused):
        if a is None:
            assert b is None, name
            continue
        assert a.dtype == b.dtype and a.stride() == b.stride(), name
        assert torch.equal(a, b), name


def test_the_fused_op_is_what_the_network_runs(monkeypatch):
    calls, apply = [], fused_ops._ConvReLU.apply
    monkeypatch.setattr(fused_ops._ConvReLU, "apply", lambda *args: calls.append(1) or apply(*args))
    from napari_unet import UNet

    model = UNet(base_channels=2, depth=1, dropout=0.0)
    model(torch.zeros(1, 1, 28, 28))
    assert len(calls) == 6  # two per block (down, bottom, up); not the up-convolution or the head


def test_convolutions_it_cannot_fuse_run_as_before():
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(1, 2, 8, 8)
    assert torch.equal(fused_ops.conv_relu(conv, x), torch.relu(conv(x)))
