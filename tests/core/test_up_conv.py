"""The up-convolution of CPU training: torch's values, and input and weight gradients
(matrix products) equal to torch's up to rounding and laid out as torch's."""

import itertools

import pytest
import torch

from napari_unet.core import up_conv


def _run(up, x, ours: bool, dtype):
    up.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype or torch.float32, enabled=dtype is not None):
        y = up_conv.up_convolution(up, x) if ours else up(x)
    (y.double() * torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view(y.shape)).sum().backward()
    return y.detach(), x.grad, up.weight.grad, None if up.bias is None else up.bias.grad


@pytest.mark.parametrize(
    ("kernel", "dtype", "channels_last", "bias"),
    list(itertools.product(((2, 2), (2, 2, 2), (1, 2, 2)), (torch.bfloat16, None), (True, False), (True, False))),
)
def test_the_up_convolution_equals_torchs(kernel, dtype, channels_last, bias):
    torch.manual_seed(0)
    ndim = len(kernel)
    up = (torch.nn.ConvTranspose2d if ndim == 2 else torch.nn.ConvTranspose3d)(6, 4, kernel, stride=kernel, bias=bias)
    x = torch.randn((3, 6, 9, 7) if ndim == 2 else (2, 6, 4, 6, 5))
    if channels_last:
        layout = torch.channels_last if ndim == 2 else torch.channels_last_3d
        up, x = up.to(memory_format=layout), x.contiguous(memory_format=layout)
    torchs, ours = _run(up, x, False, dtype), _run(up, x, True, dtype)
    for name, a, b in zip(("output", "input gradient", "weight gradient", "bias gradient"), torchs, ours):
        if a is None:
            assert b is None, name
            continue
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride(), name
        if name == "output":  # torch's own operation
            assert torch.equal(a, b), name
        else:  # summed in another order, then rounded to the precision computed in
            tolerance = 1e-5 if dtype is None else 2.0**-7  # (bfloat16: 8 bits of mantissa)
            assert torch.allclose(a, b, rtol=tolerance, atol=tolerance * float(a.abs().max())), name


def test_the_weight_gradient_is_the_exact_sum():
    """Against float64 sums written out per kernel offset."""
    torch.manual_seed(1)
    x, grad = torch.randn(2, 3, 4, 5, dtype=torch.float64), torch.randn(2, 5, 8, 15, dtype=torch.float64)
    expected = torch.zeros(3, 5, 2, 3, dtype=torch.float64)
    for ky, kx in itertools.product(range(2), range(3)):
        expected[:, :, ky, kx] = torch.einsum("nihw,nohw->io", x, grad[:, :, ky::2, kx::3])
    assert torch.allclose(up_conv.weight_gradient(x, grad, [2, 3]), expected, rtol=1e-12, atol=1e-12)


def test_it_is_what_the_network_runs_and_other_up_convolutions_run_as_before(monkeypatch):
    calls, apply = [], up_conv._UpConvolution.apply
    monkeypatch.setattr(up_conv._UpConvolution, "apply", lambda *args: calls.append(1) or apply(*args))
    from napari_unet import UNet

    UNet(base_channels=2, depth=2, dropout=0.0)(torch.zeros(1, 1, 60, 60))
    assert len(calls) == 2  # one per level back up
    overlapping = torch.nn.ConvTranspose2d(2, 3, 3, stride=2)
    x = torch.randn(1, 2, 5, 5)
    assert torch.equal(up_conv.up_convolution(overlapping, x), overlapping(x)) and len(calls) == 2
