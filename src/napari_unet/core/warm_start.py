"""A 3D U-Net's warm start from its 2D twin, trained on the annotated planes.

In a few CPU minutes a 3D network makes few optimiser steps (each sample is a
cube), while a 2D network of the same design makes some twenty times more on the
same annotated planes. So a new 3D network first trains its *twin*: the network of
the same layer plan in 2D (the same widths, depth, normalisation), on the volume's
annotated planes. Its weights are then *inflated* into the 3D network, which then
computes what the twin computes on every plane: each 2D kernel becomes the middle
plane of its 3D kernel (the others zero); each up-convolution's 2D kernel is
repeated along z; 1x1 kernels and normalisation carry over as they are. Only the 2x2x2
pooling differs: it takes each maximum over two neighbouring planes. The 3D training
that follows learns what the third dimension adds (see the README, "Volumes").
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Generator, Iterator, Sequence

import numpy as np
import torch

from .config import ModelConfig
from .data import as_image_list
from .layer_plan import CONV, UP
from .layout import channels_before_spatial
from .model import UNet
from .train_config import TrainConfig
from .train_events import StepProgress, WarmStartProgress

#: The twin's steps before a new 3D network trains, by default (command line, widget);
#: on a 2-core CPU they take about 2 of 5 minutes (bench/bench_volumes.py).
WARM_START_STEPS = 1000

#: The 3D training after a warm start runs at this fraction of the default learning
#: rate (when none is given): fine-tuning, which keeps what the twin learned
#: (bench/bench_volumes.py; the full rate lost 0.13 AP@0.5 on one of two parts).
FINE_TUNE_LR_SCALE = 0.1


def _twin_config(config: ModelConfig) -> ModelConfig:
    return dataclasses.replace(config, ndim=2, spacing=None)


def twin(model: UNet) -> UNet:
    """The 2D network of ``model``'s layer plan, with ``model``'s normalisation of
    the input (its instance settings stay the 3D model's)."""
    planes = UNet.from_config(_twin_config(model.config))
    planes.spec = dataclasses.replace(planes.spec, normalization=model.spec.normalization)
    return planes


def inflate(planes: UNet, model: UNet) -> None:
    """Give the 3D ``model`` the weights of its 2D twin ``planes`` (see the module's
    docstring), in place: the parameters stay the same tensors, so an optimiser
    made for ``model`` keeps working."""
    if model.config.ndim != 3 or _twin_config(model.config) != planes.config:
        raise ValueError("inflate needs a 3D network and its 2D twin (see twin())")
    source, inflated = planes.state_dict(), {}
    for layer in model.plan:
        if layer.kind not in (CONV, UP):
            continue
        flat = source[f"{layer.module}.weight"]
        weight = model.get_submodule(layer.module).weight
        if layer.kind == CONV:  # (out, in, kz, ky, kx): the twin's kernel in the middle plane
            deep = torch.zeros_like(weight)
            deep[:, :, weight.shape[2] // 2] = flat
        else:  # (in, out, fz, fy, fx): every output plane of a pair gets the twin's kernel
            deep = flat[:, :, None].expand_as(weight).clone()
        inflated[f"{layer.module}.weight"] = deep
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            tensor.copy_(inflated.get(name, source[name]))


def plane_images(images: Sequence, in_channels: int, channel_axis: int | None) -> list[np.ndarray]:
    """The volumes ``images`` (any layout a 3D network takes) as stacks of planes
    with their channels at -3, ``(*stack, Z, C, Y, X)``, as the twin reads them with
    ``channel_axis=-3``."""
    volumes = [channels_before_spatial(image, in_channels, channel_axis, 3) for image in as_image_list(images)]
    return [np.moveaxis(volume, -4, -3) for volume in volumes]


def twin_config(config: TrainConfig) -> TrainConfig:
    """How the twin trains: ``config``'s settings for ``warm_start_steps`` steps, in
    at most half of a ``minutes`` budget, with the 2D default tile, no validation
    and no fitting of object sizes (the 3D model fits its own)."""
    return dataclasses.replace(
        config,
        steps=config.warm_start_steps,
        minutes=None if config.minutes is None else config.minutes / 2,
        tile=None,
        validate_every=None,
        fit_sizes=False,
        warm_start_steps=0,
    )


def iter_warm_start(
    model: UNet,
    images: Sequence,
    labels: Sequence,
    config: TrainConfig,
    stop: threading.Event,
    *,
    channel_axis: int | None = None,
    names: Sequence[str] | None = None,
) -> Generator[WarmStartProgress, None, tuple[float, bool]]:
    """Train ``model``'s 2D twin on the annotated planes of ``images`` (volumes) and
    ``labels`` with :func:`twin_config` of ``config``, yielding a
    :class:`WarmStartProgress` per step, then inflate it into ``model``; returns the
    seconds it took and whether it ran to its end (its steps or its time). Setting
    ``stop`` ends the twin's training early (its weights so far are inflated all the
    same). The twin's initial weights follow ``config.seed``, and it overwrites every
    weight of ``model``: a warm start done again from the beginning is the same."""
    from .train import Trainer  # train.py runs this generator

    began = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # the twin's initial weights follow the run's seed alone
        torch.manual_seed(config.seed)
        planes = twin(model)
    with _warnings_already_given():
        trainer = Trainer(
            planes,
            plane_images(images, model.config.in_channels, channel_axis),
            labels,
            twin_config(config),
            channel_axis=-3,
            names=names,
            stop=stop,  # one request stops both trainings
        )
    for event in trainer.run():
        if isinstance(event, StepProgress):
            yield WarmStartProgress(event.step, event.total_steps, event.loss, event.seconds)
    inflate(planes, model)
    return time.perf_counter() - began, trainer.step >= trainer.config.steps or not stop.is_set()


@contextlib.contextmanager
def _warnings_already_given() -> Iterator[None]:
    """Leave out the warnings on the data that this thread logs meanwhile: the 3D
    trainer checked the same annotation (plane by plane where it matters) and logged,
    and shows, what the twin would say again. Other threads' records pass."""
    thread = threading.get_ident()

    def quiet(record: logging.LogRecord) -> bool:
        return record.thread != thread or record.levelno > logging.WARNING

    loggers = [logging.getLogger(f"napari_unet.core.{name}") for name in ("data", "train")]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)
