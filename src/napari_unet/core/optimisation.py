"""What one training step optimises and how fast: the paper's weighted loss (eq. 1),
the optimiser and the learning-rate schedule. The loop that takes the steps is
:class:`~napari_unet.core.train.Trainer`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .train_config import TrainConfig


def weighted_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, total_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Pixel-wise softmax cross entropy weighted by ``weights`` (paper eq. 1).

    logits (B, K, H, W), target (B, H, W) int64, weights (B, H, W) (or (B, K, Z, Y, X)
    and (B, Z, Y, X) for volumes). Returns the
    weighted sum divided by ``total_weight`` (default: the sum of ``weights``, i.e.
    the weighted mean, so the scale does not depend on tile size or ignored pixels;
    in data-parallel training the weight summed over every process's samples).
    """
    per_pixel = F.cross_entropy(logits.float(), target, reduction="none")
    total = weights.sum() if total_weight is None else total_weight
    return (per_pixel * weights).sum() / total.clamp_min(1e-6)


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """``config.optimizer`` ("adam" or "sgd" with momentum) over ``model``'s parameters,
    at ``config``'s peak learning rate and weight decay. Adam runs torch's fused kernel
    (one pass over all weights instead of a dozen small operations per tensor) where
    the weights are float tensors on one CPU or GPU; a checkpoint's optimiser state
    keeps the kernel it was written with, so resumed runs repeat exactly."""
    params = list(model.parameters())
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
        )
    devices = {p.device.type for p in params}
    fused = len(devices) == 1 and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=fused or None)


def lay_out_like_weights(optimizer: torch.optim.Optimizer) -> None:
    """Lay each per-weight tensor of ``optimizer``'s state (Adam's moments, momentum)
    out in memory as its weight is (e.g. channels-last), copying those that differ.
    Fused kernels read a weight and its state as flat memory, so a state read back
    channels-first from a checkpoint would update the wrong elements of a
    channels-last weight (and elementwise updates over mismatched strides are slower)."""
    for weight, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == weight.shape and value.stride() != weight.stride():
                state[key] = torch.empty_like(weight, dtype=value.dtype).copy_(value)


def scheduled_learning_rate(config: TrainConfig, peak: float, step: int, seconds: float = 0.0) -> float:
    """The learning rate of step ``step`` (0-based), started ``seconds`` into training:
    linear warm-up to ``peak``, then constant or a cosine decay that ends at
    ``config.steps`` — or, with ``decay_by_time``, at the ``minutes`` budget if that
    comes first."""
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return peak
    span = max(config.steps - config.warmup_steps, 1)
    done = min(step - config.warmup_steps, span) / span
    if config.decay_by_time and config.minutes is not None:
        done = max(done, min(seconds / (60 * config.minutes), 1.0))
    return peak * 0.5 * (1 + math.cos(math.pi * done))
