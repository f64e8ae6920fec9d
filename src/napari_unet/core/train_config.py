"""Frozen configuration records of how to train: the weight map, the augmentation and
the run's settings (:class:`TrainConfig`), with the default time limit of a new network.

Like the model's records (:mod:`.config`), each converts to and from a plain JSON-able
``dict`` (:mod:`.records`), so checkpoints carry them without pickling anything.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import ConfigError
from .records import check_types, from_dict, to_dict


@dataclass(frozen=True)
class WeightMapConfig:
    """Separation weight map parameters (paper section 3: w0 = 10, sigma = 5 px)."""

    w0: float = 10.0
    sigma: float = 5.0
    balance_classes: bool = True

    def __post_init__(self) -> None:
        check_types(self)
        if self.w0 < 0:
            raise ConfigError(f"w0 (the weight of the borders between cells) must be >= 0, got {self.w0:g}")
        if self.sigma <= 0:
            raise ConfigError(f"sigma (the width of the border weight in px) must be > 0, got {self.sigma:g}")


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation of training samples (paper section 3.1).

    Elastic deformation: displacement vectors on a coarse ``grid x grid`` grid drawn
    from N(0, ``elastic_std`` px), interpolated bicubically to every pixel. Plus
    random flips and 90-degree rotations, and gray-value jitter: the normalised image
    becomes ``(x * scale + shift) ** gamma``-like with ``scale`` in
    [1 - ``contrast``, 1 + ``contrast``], ``shift`` in [-``brightness``,
    ``brightness``] and ``log(gamma)`` in [-``gamma``, ``gamma``].

    ``zoom`` > 0 also rescales each sample about its centre by ``exp(u)``, ``u`` in
    [-``zoom``, ``zoom``] (0.25: objects 0.78-1.28 times their size), so that a
    network sees objects a little smaller and larger than the annotated ones; the
    default 0 (the paper's augmentation) leaves every sample as before.
    """

    elastic: bool = True
    grid: int = 3
    elastic_std: float = 10.0
    flips: bool = True
    rotations: bool = True
    contrast: float = 0.2
    brightness: float = 0.1
    gamma: float = 0.2
    zoom: float = 0.0

    def __post_init__(self) -> None:
        check_types(self)
        if self.grid < 2 or self.elastic_std < 0:
            raise ConfigError(
                f"need grid >= 2 and elastic_std >= 0, got grid {self.grid}, elastic_std {self.elastic_std}"
            )
        if not 0.0 <= self.zoom <= 1.0:
            raise ConfigError(f"zoom must be in [0, 1] (the log of the largest zoom factor), got {self.zoom}")


OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """How to train (paper section 3, with faster defaults where noted).

    Training stops after ``steps`` optimiser steps or ``minutes`` of wall time,
    whichever comes first. ``tile`` is the input tile size (a valid size; ``None``
    picks one whose output is about 128 px; for 3D models an int or (z, y, x), by
    default 48 voxels of output in y and x and as long along z). ``optimizer`` "sgd"
    is the paper's (momentum 0.99, batch 1, large tiles); the default "adam" converges
    faster on few images. ``lr`` ``None`` means 3e-3 for adam and 1e-2 for sgd; the
    schedule warms up linearly over ``warmup_steps`` and then is constant or
    cosine-decays to zero at ``steps``; ``decay_by_time`` ends the decay at the
    ``minutes`` budget when that comes before ``steps`` (the learning rate then follows
    the clock, so such a run is not exactly repeatable or resumable). Validation (when
    validation images are given) runs every ``validate_every`` steps (``None``: see
    :attr:`validation_interval`) and at the end; with ``keep_best`` the model ends with
    the weights of the best validation. ``fit_sizes`` sets the model's
    ``InstanceConfig.min_size`` and ``min_piece`` from the sizes of the completely
    annotated objects (:mod:`napari_unet.core.object_size`; measured on real
    microscopy in the README). ``warm_start_steps`` (3D networks; 0: none) lets a
    run that starts at step 0 first train the network's 2D twin that many steps on
    the annotated planes, in at most half of ``minutes``, and begin from its weights
    (:mod:`napari_unet.core.warm_start`); the 3D training then runs at a tenth of
    the default learning rate. Meant for new networks: it replaces the weights.
    """

    steps: int = 1000
    minutes: float | None = None
    tile: int | tuple[int, ...] | None = None
    batch_size: int = 4
    optimizer: str = "adam"
    lr: float | None = None
    momentum: float = 0.99
    weight_decay: float = 0.0
    schedule: str = "cosine"
    decay_by_time: bool = False
    warmup_steps: int = 20
    weights: WeightMapConfig = field(default_factory=WeightMapConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    validate_every: int | None = None
    keep_best: bool = True
    checkpoint_every: int = 100
    fit_sizes: bool = True
    warm_start_steps: int = 0

    def __post_init__(self) -> None:
        check_types(self)
        tiles = () if self.tile is None else (self.tile,) if isinstance(self.tile, int) else tuple(self.tile)
        checks = [
            (all(size >= 1 for size in tiles), "tile sizes must be >= 1 (no tile: the default for the network)"),
            (self.steps >= 1, "steps must be >= 1"),
            (self.minutes is None or self.minutes > 0, "minutes must be > 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (self.lr is None or self.lr > 0, "lr must be > 0"),
            (self.momentum >= 0 and self.weight_decay >= 0, "momentum and weight_decay must be >= 0"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.warm_start_steps >= 0, "warm_start_steps must be >= 0"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
            (self.validate_every is None or self.validate_every >= 1, "validate_every must be >= 1"),
            (self.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
            (self.seed >= 0, "seed must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def validation_interval(self) -> int:
        """Steps between validations: ``validate_every``, or by default five times per
        run and at least every 100 steps."""
        if self.validate_every is not None:
            return self.validate_every
        return max(1, min(100, self.steps // 5))

    @property
    def learning_rate(self) -> float:
        """The peak learning rate (``lr``, or the optimiser's default)."""
        return self.lr if self.lr is not None else {"adam": 3e-3, "sgd": 1e-2}[self.optimizer]

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"TrainConfig needs a mapping of settings, got {type(data).__name__}")
        data = dict(data)
        nested = {
            "weights": from_dict(WeightMapConfig, data.pop("weights", None)),
            "augment": from_dict(AugmentConfig, data.pop("augment", None)),
        }
        return dataclasses.replace(from_dict(cls, data), **nested)


#: A new 3D network's time limit on a CPU, where its steps are slow (3-7 s each for
#: the default on two cores): the budget bench/bench_volumes.py measures.
CPU_3D_MINUTES = 5.0


def default_minutes(ndim: int, device_type: str) -> float | None:
    """The time limit of a new network's training when none is given (the command
    line, the Train widget): :data:`CPU_3D_MINUTES` for a 3D network on a CPU
    (``device_type`` "cpu"), else none."""
    return CPU_3D_MINUTES if ndim == 3 and device_type == "cpu" else None
