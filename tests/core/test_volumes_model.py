"""The 3D U-Net (Cicek et al. 2016): one layer plan for 2D and 3D, anisotropic levels."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from napari_unet import ModelConfig, ModelSpec, UNet
from napari_unet.core.cpu_inference import CpuInference
from napari_unet.core.layer_plan import forward_flops, layer_input_shapes, layer_plan
from napari_unet.core.spacing import level_kernels_and_pools, voxel_shape_note


def test_paper_3d_network_has_the_papers_parameters_and_shapes():
    model = UNet.paper_3d(in_channels=3, n_classes=3)
    assert sum(p.numel() for p in model.parameters()) == 19_069_955
    assert layer_input_shapes(model.plan, (1, 3, 116, 132, 132))[-1] == (1, 3, 28, 44, 44)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    assert [c.out_channels for c in convs[:8]] == [32, 64, 64, 128, 128, 256, 256, 512]  # doubled before pooling
    assert sum(isinstance(m, nn.BatchNorm3d) for m in model.modules()) == 2 * 7  # before each ReLU
    assert sum(isinstance(m, nn.ConvTranspose3d) for m in model.modules()) == 3


def test_paper_3d_geometry_runs_for_real():
    """The same plan with 2 base channels: 132x132x116 voxels in, 44x44x28 out."""
    config = ModelConfig.paper_3d(in_channels=3, n_classes=3)
    model = UNet.from_config(ModelConfig(**{**vars(config), "base_channels": 2})).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 116, 132, 132))
    assert out.shape == (1, 3, 28, 44, 44)


@pytest.mark.parametrize(
    ("spacing", "kernels", "pools"),
    [
        (None, [(3, 3, 3)] * 4, [(2, 2, 2)] * 3),
        ((1.0, 1.0, 1.0), [(3, 3, 3)] * 4, [(2, 2, 2)] * 3),
        ((2.0, 1.0, 1.0), [(1, 3, 3)] + [(3, 3, 3)] * 3, [(1, 2, 2)] + [(2, 2, 2)] * 2),
        ((4.5, 1.0, 1.0), [(1, 3, 3)] * 2 + [(3, 3, 3)] * 2, [(1, 2, 2)] * 2 + [(2, 2, 2)]),
        ((1.9, 1.0, 1.0), [(3, 3, 3)] * 4, [(2, 2, 2)] * 3),
        ((1.0, 2.0, 2.0), [(3, 1, 1)] + [(3, 3, 3)] * 3, [(2, 1, 1)] + [(2, 2, 2)] * 2),
    ],
)
def test_anisotropic_levels_follow_the_spacing(spacing, kernels, pools):
    assert level_kernels_and_pools(spacing, 3, 3) == (kernels, pools)


def test_anisotropic_network_uses_in_plane_kernels_and_pooling():
    model = UNet(ndim=3, spacing=(2.0, 0.5, 0.5), base_channels=2, depth=3).eval()
    plan = model.plan
    assert model.down[0][0].kernel_size == (1, 3, 3) and model.down[1][0].kernel_size == (1, 3, 3)
    assert model.down[2][0].kernel_size == (3, 3, 3)
    assert [layer.factor for layer in plan if layer.kind == "pool"] == [(1, 2, 2), (1, 2, 2), (2, 2, 2)]
    assert model.up[-1].stride == (1, 2, 2)
    shape = layer_input_shapes(plan, (1, 1, 36, 92, 92))[-1]
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 36, 92, 92)).shape == shape == (1, 2, 20, 4, 4)  # z loses 16 only


def test_2d_networks_keep_their_parameter_names_and_config():
    model = UNet(base_channels=4, depth=2)
    names = [name for name, _ in model.named_parameters()]
    assert names[:4] == ["down.0.0.weight", "down.0.0.bias", "down.0.2.weight", "down.0.2.bias"]
    assert names[-2:] == ["head.weight", "head.bias"] and "up.0.weight" in names and "up_conv.1.2.bias" in names
    old = {"in_channels": 1, "n_classes": 2, "base_channels": 4, "depth": 2, "dropout": 0.5}  # a file before volumes
    spec = ModelSpec.from_dict({"model": old})
    assert spec.model == model.config and spec.model.ndim == 2 and spec.model.spacing is None
    assert all(layer.kernel in ((3, 3), (2, 2), (1, 1), ()) for layer in model.plan)


def test_3d_flops_follow_the_plan():
    model = UNet(ndim=3, spacing=(2.0, 1.0, 1.0), base_channels=2, depth=2, batch_norm=True).eval()
    shape = (1, 1, 24, 52, 52)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(shape))
    assert forward_flops(model.config, shape) == counter.get_total_flops()


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize(("in_channels", "spacing"), [(2, (2.0, 1.0, 1.0)), (1, (2.0, 1.0, 1.0)), (1, None)])
def test_fast_cpu_inference_of_a_3d_network_with_batch_norm_equals_the_module(in_channels, spacing, fused):
    """Also with one input channel, whose first convolution runs over windows of planes
    (3 planes, or 1 where the first level's kernel does not span z)."""
    torch.manual_seed(3)
    config = dict(ndim=3, spacing=spacing, in_channels=in_channels, n_classes=3, base_channels=3, depth=2)
    model = UNet(**config, batch_norm=True)
    model.train()
    shape = (2, in_channels, 52, 52, 52) if spacing is None else (2, in_channels, 24, 52, 52)
    with torch.no_grad():
        for _ in range(3):  # running statistics that are not the identity
            model(torch.randn(shape) * 3 + 1)
    model.eval()
    x = torch.randn(shape)
    with torch.no_grad():
        expected = model(x)
    fast = CpuInference(model, torch.float32, x.shape, fused=fused)
    out = fast(x)
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    np.testing.assert_allclose(out.float().numpy(), expected.numpy(), atol=1e-4 * expected.abs().max().item())


def test_3d_config_is_checked():
    with pytest.raises(ValueError, match="ndim"):
        UNet(ndim=4)
    with pytest.raises(ValueError, match="spacing"):
        UNet(ndim=3, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        ModelConfig(ndim=3, spacing=(0.0, 1.0, 1.0))
    assert layer_plan(ModelConfig(ndim=3, spacing=[2, 1, 1])).count(layer_plan(ModelConfig(ndim=3))[0]) == 0


def test_voxel_shape_note_compares_shapes_not_sizes_within_ten_percent():
    assert voxel_shape_note((2.0, 0.5, 0.5), (4.0, 1.0, 1.0), "f records") is None  # same shape, other unit
    assert voxel_shape_note((2.15, 1.0, 1.0), (2.0, 1.0, 1.0), "f records") is None  # 7.5% deeper
    note = voxel_shape_note((2.3, 1.0, 1.0), (2.0, 1.0, 1.0), "f records")  # 15% deeper
    assert note.startswith("f records voxels of (2.3, 1.0, 1.0) (z, y, x), the model was made for voxels shaped (2.0")
    assert voxel_shape_note(None, (2.0, 1.0, 1.0), "f records") is None  # nothing recorded: nothing to say
