"""The training loop as a generator of progress events (paper section 3).

Drive it with a ``for`` loop (CLI, tests) or a napari thread worker (the GUI);
stopping at any yield (``close()`` or ``worker.quit()``) is clean and keeps a
checkpoint when a checkpoint path was given.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import geometry
from .checkpoint import load_state, model_from_state, model_state, save_model, save_state
from .config import TrainConfig
from .data import SampleStream, default_tile_for, prepare
from .devices import autocast, precision_name, resolve_device, resolve_precision
from .distributed import any_process, batch_share, current_group, sum_gradients, sum_over_processes
from .errors import ConfigError, NapariUnetError
from .metrics import combine, match_instances, pixel_iou
from .model import UNet, weights_lock
from .predict import segment
from .progress import drive

log = logging.getLogger(__name__)


class TrainingError(NapariUnetError, RuntimeError):
    """Training cannot go on (e.g. the loss diverged)."""


@dataclass(frozen=True)
class StepProgress:
    """One optimiser step: loss, learning rate, timing (seconds since the start of
    training, resumed time included), throughput and the share spent on data."""

    step: int
    total_steps: int
    loss: float
    lr: float
    seconds: float
    samples_per_second: float
    eta_seconds: float
    data_fraction: float


@dataclass(frozen=True)
class ValidationResult:
    """Instance AP at IoU 0.5 and foreground pixel IoU on the validation images."""

    step: int
    ap50: float
    pixel_iou: float


@dataclass(frozen=True)
class CheckpointSaved:
    step: int
    path: str


@dataclass(frozen=True)
class TrainSummary:
    steps: int
    seconds: float
    final_loss: float
    validation: ValidationResult | None


TrainEvent = StepProgress | ValidationResult | CheckpointSaved


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


class Trainer:
    """Trains ``model`` on images with instance labels (0 background, 1.. cells, -1 ignore).

    ``images[i]``: ``(H, W)``, ``(C, H, W)``, ``(H, W, C)`` or stacks, as for
    prediction (``channel_axis`` says where the channels are when the guess would be
    wrong); ``labels[i]``: int ``(*stack, H, W)``. Validation images (optional) are
    segmented every ``config.validation_interval`` steps; a checkpoint is written
    every ``config.checkpoint_every`` steps and when training stops.

    Inside a torch.distributed process group each process computes its share of
    every batch and rank 0 alone validates and writes files; the result equals one
    process's up to float rounding (see :mod:`napari_unet.core.distributed`).
    """

    def __init__(
        self,
        model: UNet,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        config: TrainConfig | None = None,
        *,
        val_images: Sequence[np.ndarray] = (),
        val_labels: Sequence[np.ndarray] = (),
        checkpoint_path: str | Path | None = None,
        channel_axis: int | None = None,
    ) -> None:
        self.model = model
        self.config = config = config or TrainConfig()
        self.device = resolve_device(config.device)
        self.dtype = resolve_precision(config.precision, self.device)
        if len(val_images) != len(val_labels):
            raise ConfigError("give one validation label image per validation image")
        self.validation = list(zip(val_images, val_labels))
        self.channel_axis = channel_axis
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        volumes = model.config.ndim == 3
        planes = prepare(
            images,
            labels,
            in_channels=model.config.in_channels,
            normalization=model.spec.normalization,
            weights=config.weights,
            channel_axis=channel_axis,
            ndim=model.config.ndim,
            spacing=model.config.spacing,
        )
        self.group = current_group()
        self.share = batch_share(config.batch_size, self.group)
        self.tile = config.tile or default_tile_for(model.config)
        depth = geometry.model_axes(model.config) if volumes else model.config.depth
        self.stream = SampleStream(planes, self.tile, depth, config.augment, config.seed, model.config.spacing)
        model.to(self.device)
        self.optimizer = self._make_optimizer()
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None
        self.step = 0
        self.seconds = 0.0
        self.losses: list[float] = []
        self.last_validation: ValidationResult | None = None

    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        params = self.model.parameters()
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=cfg.learning_rate, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        return torch.optim.Adam(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    @classmethod
    def resume(cls, path: str | Path, images, labels, **kwargs) -> Trainer:
        """Continue exactly where the checkpoint at ``path`` stopped (weights,
        optimiser, step; every sample's randomness follows from the seed and its
        index). Pass the same data as before; any number of processes may resume."""
        state = load_state(path)
        if state.get("kind") != "checkpoint":
            raise ConfigError(f"{path} is a model file, not a training checkpoint: use it to fine-tune instead")
        config = TrainConfig.from_dict(state["config"])
        trainer = cls(model_from_state(state["model"], path), images, labels, config, **kwargs)
        with weights_lock(trainer.model):
            trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.step = int(state["step"])
        trainer.seconds = float(state["seconds"])
        trainer.losses = list(state["losses"])
        return trainer

    def learning_rate(self, step: int) -> float:
        cfg = self.config
        peak = cfg.learning_rate
        if step < cfg.warmup_steps:
            return peak * (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return peak
        span = max(cfg.steps - cfg.warmup_steps, 1)
        return peak * 0.5 * (1 + math.cos(math.pi * min(step - cfg.warmup_steps, span) / span))

    def run(self) -> Generator[TrainEvent, None, TrainSummary]:
        """Train until ``steps`` or ``minutes``; yields a :class:`StepProgress` every step,
        a :class:`ValidationResult` every ``config.validation_interval`` steps and at
        the end (when validation data was given) and :class:`CheckpointSaved` every ``checkpoint_every``."""
        cfg = self.config
        log.info(
            "training on %s in %s: tile %s, batch %d, %s",
            self.device,
            precision_name(self.dtype),
            self.tile,
            cfg.batch_size,
            cfg.optimizer,
        )
        started = time.perf_counter() - self.seconds
        saved_at = self.step
        try:
            while self.step < cfg.steps and not self._out_of_time(started):
                begin = time.perf_counter()
                batch = self.stream.batch([self.step * cfg.batch_size + j for j in self.share])
                data_seconds = time.perf_counter() - begin
                lr = self.learning_rate(self.step)
                loss = self._optimise(batch, lr)
                self.step += 1
                self.losses.append(loss)
                self.seconds = time.perf_counter() - started
                yield self._progress(loss, lr, begin, data_seconds)
                if not self.group.is_main:
                    continue
                if self.validation and (self.step % cfg.validation_interval == 0 or self.step == cfg.steps):
                    self.last_validation = self.validate()
                    yield self.last_validation
                if self.checkpoint_path and self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint(self.checkpoint_path)
                    saved_at = self.step
                    yield CheckpointSaved(self.step, str(self.checkpoint_path))
        finally:
            if self.group.is_main and self.checkpoint_path and self.step > saved_at:
                self.save_checkpoint(self.checkpoint_path)
            self.model.eval()
        return self.summary()

    def _out_of_time(self, started: float) -> bool:
        minutes = self.config.minutes
        if minutes is None:
            return False
        return any_process(time.perf_counter() - started >= 60 * minutes, self.group)

    def _optimise(self, batch, lr: float) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        image = torch.from_numpy(batch.image).to(self.device, non_blocking=True)
        target = torch.from_numpy(batch.target).to(self.device, non_blocking=True)
        weights = torch.from_numpy(batch.weights).to(self.device, non_blocking=True)
        with autocast(self.device, self.dtype):
            logits = self.model(image, dropout_seeds=batch.dropout_seeds)
        # the weighted mean over the whole batch, whichever process holds which samples
        loss = weighted_cross_entropy(logits, target, weights, sum_over_processes(weights.sum(), self.group))
        reported = sum_over_processes(loss.detach(), self.group)
        if not torch.isfinite(reported):
            raise TrainingError(
                f"the loss became {reported.item()} at step {self.step + 1}: lower the learning rate "
                f"(now {lr:g}) or use precision fp32"
            )
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            sum_gradients(list(self.model.parameters()), self.group)
            with weights_lock(self.model):
                self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            sum_gradients(list(self.model.parameters()), self.group)
            with weights_lock(self.model):
                self.optimizer.step()
        return float(reported)

    def _progress(self, loss: float, lr: float, begin: float, data_seconds: float) -> StepProgress:
        cfg = self.config
        step_seconds = max(time.perf_counter() - begin, 1e-9)
        per_step = self.seconds / self.step if self.step else step_seconds
        remaining = (cfg.steps - self.step) * per_step
        total = cfg.steps
        if cfg.minutes is not None:
            remaining = min(remaining, max(60 * cfg.minutes - self.seconds, 0.0))
            total = min(cfg.steps, self.step + round(remaining / per_step))
        return StepProgress(
            step=self.step,
            total_steps=total,
            loss=loss,
            lr=lr,
            seconds=self.seconds,
            samples_per_second=cfg.batch_size / step_seconds,
            eta_seconds=remaining,
            data_fraction=data_seconds / step_seconds,
        )

    def validate(self) -> ValidationResult:
        """AP@0.5 (matches pooled over images) and the area-weighted mean pixel IoU."""
        matches, ious, areas = [], [], []
        options = {"device": self.device, "precision": precision_name(self.dtype), "channel_axis": self.channel_axis}
        for image, truth in self.validation:
            labels = segment(self.model, image, **options)
            matches.append(match_instances(labels, truth, thresholds=(0.5,)))
            ious.append(pixel_iou(labels, truth))
            areas.append(np.asarray(truth).size)
        return ValidationResult(self.step, combine(matches)[0].ap, float(np.average(ious, weights=areas)))

    def summary(self) -> TrainSummary:
        tail = self.losses[-20:]
        return TrainSummary(
            steps=self.step,
            seconds=self.seconds,
            final_loss=float(np.mean(tail)) if tail else math.nan,
            validation=self.last_validation,
        )

    def metadata(self) -> dict:
        """What the model file records about this training."""
        summary = self.summary()
        return {
            "training": {
                "steps": summary.steps,
                "seconds": round(summary.seconds, 2),
                "final_loss": summary.final_loss,
                "tile": self.tile,
                "device": str(self.device),
                "precision": precision_name(self.dtype),
                "config": self.config.to_dict(),
                "validation": None if summary.validation is None else vars(summary.validation),
            },
            "weight_map": {"w0": self.config.weights.w0, "sigma": self.config.weights.sigma},
        }

    def save_model(self, path: str | Path) -> None:
        """Write the trained model with its training record (atomically)."""
        save_model(self.model, path, **self.metadata())

    def save_checkpoint(self, path: str | Path) -> None:
        """Write everything needed to resume exactly (atomically)."""
        save_state(
            path,
            {
                "kind": "checkpoint",
                "model": model_state(self.model, self.metadata()),
                "optimizer": self.optimizer.state_dict(),
                "config": self.config.to_dict(),
                "step": self.step,
                "seconds": self.seconds,
                "losses": self.losses,
            },
        )
        log.info("checkpoint at step %d written to %s", self.step, path)


def iter_train(
    model: UNet,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    config: TrainConfig | None = None,
    **kwargs,
) -> Generator[TrainEvent, None, TrainSummary]:
    """Train ``model`` in place, as a generator of progress events that returns a
    :class:`TrainSummary`; stop early by closing it.

    ``config`` (default :class:`TrainConfig()`) with any of its fields given as
    keywords (``steps=500, device="cpu", seed=0``); the other keywords are
    :class:`Trainer`'s (``val_images``, ``val_labels``, ``checkpoint_path``,
    ``channel_axis``).
    """
    trainer_options = {name: kwargs.pop(name) for name in _TRAINER_OPTIONS if name in kwargs}
    trainer = Trainer(model, images, labels, with_overrides(config or TrainConfig(), kwargs), **trainer_options)
    return (yield from trainer.run())


#: The keyword-only arguments of :class:`Trainer`.
_TRAINER_OPTIONS = [p.name for p in inspect.signature(Trainer.__init__).parameters.values() if p.kind == p.KEYWORD_ONLY]


def train(model: UNet, images, labels, config: TrainConfig | None = None, **kwargs) -> TrainSummary:
    """Train ``model`` in place to the end and return the :class:`TrainSummary`;
    arguments as for :func:`iter_train`."""
    return drive(iter_train(model, images, labels, config, **kwargs))


def with_overrides(config: TrainConfig, overrides: dict) -> TrainConfig:
    """``config`` with some fields replaced; unknown names are refused by name."""
    known = {field.name for field in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown training setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return dataclasses.replace(config, **overrides)
