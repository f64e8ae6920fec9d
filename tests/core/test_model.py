import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from napari_unet import UNet
from napari_unet.core.cpu_inference import CpuInference
from napari_unet.core.geometry import input_size_for_output, output_size
from napari_unet.core.layer_plan import (
    center_window,
    forward_flops,
    layer_input_shapes,
    layer_plan,
    max_pool,
    pool_and_window,
)
from napari_unet.core.model import SampleDropout2d


def conv_layers(model):
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def test_default_is_the_paper_network():
    model = UNet()
    assert len(conv_layers(model)) == 23
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in model.modules()) == 4
    n_parameters = sum(p.numel() for p in model.parameters())
    assert n_parameters == 31_030_658  # about 31.03 M, one input channel, two classes
    widths = [block[0].out_channels for block in model.down] + [model.bottom[0].out_channels]
    assert widths == [64, 128, 256, 512, 1024]
    assert all(conv.padding == (0, 0) for conv in conv_layers(model))


def test_paper_tile_572_gives_388():
    model = UNet(base_channels=4).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 572, 572))
    assert out.shape == (1, 2, 388, 388)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 6])
def test_shapes_for_every_depth(depth):
    model = UNet(in_channels=3, n_classes=4, base_channels=2, depth=depth).eval()

    size = input_size_for_output(8, depth)
    with torch.no_grad():
        out = model(torch.zeros(2, 3, size, size + 2**depth))
    assert out.shape == (2, 4, output_size(size, depth), output_size(size + 2**depth, depth))


def test_he_initialisation():
    model = UNet(base_channels=16)
    conv = model.down[1][0]  # 3x3 conv with 16 input channels
    expected = math.sqrt(2.0 / (16 * 9))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert torch.all(conv.bias == 0)


def test_dropout_only_at_the_end_of_the_contracting_path():
    model = UNet(base_channels=2, dropout=0.5)
    dropouts = [name for name, m in model.named_modules() if isinstance(m, SampleDropout2d)]
    assert dropouts == ["dropout"]
    assert [layer.kind for layer in model.plan].index("dropout") == 2 * 5 + 4  # after the bottom convolutions
    x = torch.ones(3, 4, 5, 5)
    model.dropout.train()
    first, again = model.dropout(x, [1, 2, 3]), model.dropout(x, [1, 2, 3])
    assert torch.equal(first, again) and set(first.unique().tolist()) <= {0.0, 2.0}  # kept channels scaled 1/(1-p)
    assert torch.equal(model.dropout(x[1:2], [2]), first[1:2])  # a sample's mask follows its seed alone
    assert torch.equal(UNet(base_channels=2, dropout=0).train().dropout(x, [1, 2, 3]), x)


@pytest.mark.parametrize(
    "kwargs", [{"depth": 0}, {"depth": 7}, {"base_channels": 0}, {"n_classes": 1}, {"in_channels": 0}]
)
def test_bad_architecture_is_refused_clearly(kwargs):
    with pytest.raises(ValueError, match="must be"):
        UNet(**kwargs)


@pytest.mark.parametrize(("fused", "batch_norm"), [(True, False), (False, False), (True, True), (False, True)])
def test_fast_cpu_inference_equals_the_module(fused, batch_norm):
    """CpuInference follows the same layer plan; both its fused oneDNN path and its
    plain channels-last fallback give the module's logits in fp32, also with batch
    normalisation folded into the convolutions."""
    torch.manual_seed(2)
    model = UNet(in_channels=2, n_classes=3, base_channels=6, depth=3, batch_norm=batch_norm)
    with torch.no_grad():
        for _ in range(2 * batch_norm):  # running statistics that are not the identity
            model(torch.randn(2, 2, 188, 204) * 3 + 1)
    model.eval()
    x = torch.randn(2, 2, 188, 204)
    with torch.no_grad():
        expected = model(x)
    fast = CpuInference(model, torch.float32, (2, 2, 188, 204), fused=fused)
    assert fast.fused == (fused and torch.backends.mkldnn.is_available())
    scale = expected.abs().max().item()
    assert (fast(x).float() - expected).abs().max().item() <= 1e-5 * max(scale, 1.0)


def test_layer_plan_gives_shapes_flops_and_margin():
    from napari_unet.core.geometry import margin

    config = UNet().config
    shapes = layer_input_shapes(layer_plan(config), (1, 1, 572, 572))
    assert shapes[-1] == (1, 2, 388, 388)
    assert [margin(depth) for depth in range(1, 7)] == [12 * 2**depth - 8 for depth in range(1, 7)]
    small = UNet(base_channels=4, depth=2).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        small(torch.zeros(1, 1, 92, 92))
    assert forward_flops(small.config, (1, 1, 92, 92)) == counter.get_total_flops()
    with pytest.raises(ValueError, match="odd"):
        layer_input_shapes(layer_plan(config), (1, 1, 570, 570))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last, torch.channels_last_3d])
def test_pooling_and_the_skip_window_give_the_values_and_gradients_of_two_separate_ops(layout):
    """The pooling and the skip connection's crop in one autograd node: the same values
    as max pooling and the central window, the gradient their two gradients' sum, in
    the input's memory format (channels-last training adds them in one layout)."""
    torch.manual_seed(0)
    shape = (2, 3, 8, 12, 10) if layout == torch.channels_last_3d else (2, 3, 12, 10)
    factor = (1, 2, 2) if len(shape) == 5 else (2, 2)  # volumes of coarse z pool along y and x alone
    size = (4, 5, 3)[-(len(shape) - 2) :]
    values = torch.randn(shape).contiguous(memory_format=layout)
    fused_input, plain_input = values.clone().requires_grad_(), values.clone().requires_grad_()
    pooled, window = pool_and_window(fused_input, factor, size)
    plain_pooled, plain_window = max_pool(plain_input, factor), center_window(plain_input, size)
    assert torch.equal(pooled, plain_pooled) and torch.equal(window, plain_window)
    assert window.is_contiguous(memory_format=layout)
    pooled_grad, window_grad = torch.randn(pooled.shape), torch.randn(window.shape)
    (pooled * pooled_grad).sum().add((window * window_grad).sum()).backward()
    (plain_pooled * pooled_grad).sum().add((plain_window * window_grad).sum()).backward()
    assert torch.equal(fused_input.grad, plain_input.grad)
    assert fused_input.grad.is_contiguous(memory_format=layout)
    with torch.no_grad():  # nothing to differentiate: the window is a view
        assert pool_and_window(fused_input, factor, size)[1]._base is fused_input
