"""The U-Net of Ronneberger et al. 2015 with unpadded ("valid") convolutions, as a
torch module (:class:`UNet`) that runs its :func:`~napari_unet.core.layer_plan.layer_plan`,
and what works on its weights (locks, snapshots, folded batch normalisation)."""

from __future__ import annotations

import dataclasses
import math
import threading
import weakref
from collections.abc import Sequence

import torch
from torch import nn

from .config import ModelConfig, ModelSpec
from .fused_ops import conv_relu
from .layer_plan import CONV, DROPOUT, UP, Layer, layer_plan, run_plan
from .up_conv import up_convolution


class SampleDropout2d(nn.Module):
    """Channel dropout (as ``nn.Dropout2d``) whose masks can come from one seed per sample.

    With ``seeds`` (one int per sample of the batch), sample ``i``'s channel mask is
    drawn from a generator seeded with ``seeds[i]``, so it does not depend on the
    batch it travels in or on the process that computes it (data-parallel training).
    Without seeds it draws from torch's global generator. Identity in eval mode.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor, seeds: Sequence[int] | None = None) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if seeds is None:
            drop = nn.functional.dropout2d if x.ndim == 4 else nn.functional.dropout3d
            return drop(x, self.p, training=True)
        keep = torch.stack(
            [torch.rand(x.shape[1], generator=torch.Generator().manual_seed(int(seed))) >= self.p for seed in seeds]
        )
        scale = keep.to(device=x.device, dtype=x.dtype) / (1.0 - self.p)
        return x * scale.view(*scale.shape, *([1] * (x.ndim - 2)))


_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_UP_CONV = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


class DoubleConv(nn.Sequential):
    """Two unpadded 3x3 convolutions, each followed by ReLU: H, W shrink by 4."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """U-Net with valid convolutions, crop-and-concat skips and He initialisation.

    Input ``(N, in_channels, H, W)`` with H and W valid input sizes for ``depth``
    (see :func:`napari_unet.core.geometry.output_size`); output logits
    ``(N, n_classes, H - m, W - m)`` with ``m = 12 * 2**depth - 8`` (184 for the
    paper's depth 4, so 572 -> 388).

    The defaults are the paper's network (Fig. 1): 23 convolution layers and about
    31.03 M parameters. Dropout sits at the end of the contracting path.

    ``ndim=3`` gives the 3D U-Net (Cicek et al. 2016) on ``(N, C, Z, Y, X)`` inputs;
    ``spacing`` and the other keywords are :class:`ModelConfig`'s, and
    :meth:`paper_3d` is the paper's 3D network. The modules are built from the
    layer plan (:func:`layer_plan`), the one description of the network.

    ``spec`` holds what a model file records besides the weights (normalisation,
    instance post-processing, class names); prediction reads it from here.
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        base_channels: int = 64,
        depth: int = 4,
        dropout: float = 0.5,
        *,
        ndim: int = 2,
        spacing: Sequence[float] | None = None,
        batch_norm: bool = False,
        double_before_pool: bool = False,
        up_bias: bool = True,
    ) -> None:
        super().__init__()
        self.config = config = ModelConfig(
            in_channels,
            n_classes,
            base_channels,
            depth,
            dropout,
            ndim=ndim,
            spacing=None if spacing is None else tuple(spacing),
            batch_norm=batch_norm,
            double_before_pool=double_before_pool,
            up_bias=up_bias,
        )
        self.spec = ModelSpec(model=config)
        self.plan = layer_plan(config)
        # containers first, in the order the 2D network always registered them, so
        # parameter order (optimiser state) and state-dict names stay as they were
        self.down = nn.ModuleList()
        self.bottom = nn.Sequential()
        self.dropout = SampleDropout2d(dropout)
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for layer in self.plan:
            if layer.kind == CONV:
                conv = _CONV[ndim](layer.in_channels, layer.out_channels, kernel_size=layer.kernel)
                self._place(layer.module, conv)
                if layer.norm:
                    self._place(layer.norm, _NORM[ndim](layer.out_channels, affine=False))
                if layer.relu:
                    self._place(_next_name(layer.norm or layer.module), nn.ReLU(inplace=True))
            elif layer.kind == UP:
                up = _UP_CONV[ndim](
                    layer.in_channels, layer.out_channels, layer.kernel, stride=layer.factor, bias=up_bias
                )
                self._place(layer.module, up)
        self._layers = [self.get_submodule(layer.module) if layer.module else None for layer in self.plan]
        self.reset_parameters()

    def _place(self, name: str, module: nn.Module) -> None:
        """Put ``module`` at the dotted ``name`` ("down.1.0", "up.2", "head"),
        appending the blocks that lead there."""
        *path, last = name.split(".")
        parent: nn.Module = self
        for part in path:
            if isinstance(parent, nn.ModuleList):
                while len(parent) <= int(part):
                    parent.append(nn.Sequential())
                parent = parent[int(part)]
            else:
                parent = getattr(parent, part)
        if isinstance(parent, nn.ModuleList):
            assert int(last) == len(parent)
            parent.append(module)
        else:
            parent.add_module(last, module)

    @classmethod
    def from_config(cls, config: ModelConfig) -> UNet:
        return cls(**dataclasses.asdict(config))

    @classmethod
    def paper_3d(cls, in_channels: int = 3, n_classes: int = 3, spacing: Sequence[float] | None = None) -> UNet:
        """The 3D U-Net of Cicek et al. 2016 (see :meth:`ModelConfig.paper_3d`)."""
        return cls.from_config(ModelConfig.paper_3d(in_channels, n_classes, spacing))

    def reset_parameters(self) -> None:
        """He initialisation: N(0, sqrt(2 / incoming connections)), zero biases."""
        for module in self.modules():
            if isinstance(module, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
                # stride == kernel: each output pixel sees one tap per input channel
                fan_in = module.in_channels
            elif isinstance(module, (nn.Conv2d, nn.Conv3d)):
                fan_in = module.in_channels * math.prod(module.kernel_size)
            else:
                continue
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_in))
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor, dropout_seeds: Sequence[int] | None = None) -> torch.Tensor:
        """Logits of ``x``; ``dropout_seeds`` (one per sample) fix the dropout masks in
        training mode (see :class:`SampleDropout2d`)."""

        def apply(index: int, layer: Layer, x: torch.Tensor) -> torch.Tensor:
            if layer.kind == DROPOUT:
                return self.dropout(x, dropout_seeds)
            if layer.relu and not layer.norm:
                return conv_relu(self._layers[index], x)
            if layer.kind == UP:
                return up_convolution(self._layers[index], x)
            x = self._layers[index](x)
            if layer.norm:
                x = self.get_submodule(layer.norm)(x)
            return torch.relu_(x) if layer.relu else x

        return run_plan(self.plan, x, apply)


def _next_name(name: str) -> str:
    """The dotted name one position after ``name`` in its block ("down.0.1" -> "down.0.2")."""
    *path, last = name.split(".")
    return ".".join([*path, str(int(last) + 1)])


_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def weights_lock(model: nn.Module) -> threading.Lock:
    """The lock held while ``model``'s weights change (an optimiser step) or are
    copied (:func:`snapshot`), so a copy never mixes two steps."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(model, threading.Lock())


def snapshot(model: UNet, device: torch.device | str = "cpu") -> UNet:
    """A copy of ``model`` on ``device`` in eval mode, with a consistent copy of its
    weights. ``model`` itself is not touched: not moved, not switched to eval, and
    its random number generators are not drawn from (the copy is built on the meta
    device and then filled in)."""
    with torch.device("meta"):
        copy = UNet.from_config(model.config)
    copy = copy.to_empty(device=device)
    with weights_lock(model), torch.no_grad():
        copy.load_state_dict(model.state_dict())
    copy.spec = model.spec
    copy.metadata = dict(getattr(model, "metadata", {}))
    return copy.eval().requires_grad_(False)


def folded_weights(model: UNet, layer: Layer) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias (float64, detached) of ``layer``'s convolution with the batch
    normalisation that follows it folded in, as it acts in eval mode (its running
    statistics); a convolution without a bias gets zeros. The caller holds
    :func:`weights_lock` when the model may be training."""
    module = model.get_submodule(layer.module)
    weight = module.weight.detach().double()
    bias = module.bias
    bias = torch.zeros(weight.shape[1 if layer.kind == UP else 0], dtype=weight.dtype) if bias is None else bias
    bias = bias.detach().double()
    if layer.norm:
        norm = model.get_submodule(layer.norm)
        scale = (norm.running_var.double() + norm.eps).rsqrt()
        shift = -norm.running_mean.double() * scale
        if norm.weight is not None:
            scale, shift = scale * norm.weight.double(), shift * norm.weight.double() + norm.bias.double()
        weight = weight * scale.view(-1, *([1] * (weight.ndim - 1)))
        bias = bias * scale + shift
    return weight, bias


def without_batch_norm(model: UNet) -> UNet:
    """The same function as ``model`` in eval mode, as a network without normalisation
    layers: each batch normalisation folded into the convolution before it (equal up
    to float32 rounding). A copy in eval mode on the CPU, with ``model``'s spec
    (recording ``batch_norm=False``) and metadata; ``model`` is not touched."""
    if not model.config.batch_norm:
        return snapshot(model)
    config = dataclasses.replace(model.config, batch_norm=False)
    with torch.device("meta"):
        plain = UNet.from_config(config)
    plain = plain.to_empty(device="cpu")
    state = {}
    with weights_lock(model), torch.no_grad():
        for layer, plain_layer in zip(model.plan, plain.plan):
            if layer.kind in (CONV, UP):
                weight, bias = folded_weights(model, layer)
                state[f"{plain_layer.module}.weight"] = weight.float().cpu()
                if plain.get_submodule(plain_layer.module).bias is not None:
                    state[f"{plain_layer.module}.bias"] = bias.float().cpu()
    plain.load_state_dict(state)
    plain.spec = dataclasses.replace(model.spec, model=config)
    plain.metadata = dict(getattr(model, "metadata", {}))
    return plain.eval().requires_grad_(False)
