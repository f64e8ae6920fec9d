"""Frozen configuration records shared by the model, prediction and training.

Every record converts to and from a plain JSON-able ``dict`` so that a model file
can carry it without pickling anything (:mod:`.records`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .devices import resolve_device
from .errors import ConfigError
from .records import check_types, from_dict, to_dict

#: Label value that marks unannotated pixels: they get weight 0 and never enter the
#: loss. 0 is annotated background and 1, 2, ... are cells.
IGNORE_LABEL = -1


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a U-Net (Ronneberger et al. 2015, Fig. 1).

    The defaults are the paper's network: one input channel, two classes, 64 base
    feature channels doubling over four poolings, dropout 0.5 at the end of the
    contracting path.

    Volumes (the 3D U-Net of Cicek et al. 2016): ``ndim=3`` makes every operation
    3D. ``spacing`` (one physical voxel size per spatial axis, e.g. (z, y, x); ``None``
    is isotropic) decides per level which axes the kernels span and the poolings
    halve (see :mod:`napari_unet.core.spacing`). ``batch_norm`` puts a batch
    normalisation (without learned scale and shift) before every ReLU;
    ``double_before_pool`` doubles the channels in the second convolution of each
    level instead of the first convolution of the next (32-64, 64-128, ...);
    ``up_bias`` gives the up-convolutions a bias. Every new field defaults to the 2D
    paper network, so older model files load unchanged.
    """

    in_channels: int = 1
    n_classes: int = 2
    base_channels: int = 64
    depth: int = 4
    dropout: float = 0.5
    ndim: int = 2
    spacing: tuple[float, ...] | None = None
    batch_norm: bool = False
    double_before_pool: bool = False
    up_bias: bool = True

    def __post_init__(self) -> None:
        if self.spacing is not None:
            object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        check_types(self)
        checks = [
            (self.in_channels >= 1, f"in_channels must be >= 1, got {self.in_channels}"),
            (self.n_classes >= 2, f"n_classes must be >= 2 (background and at least one class), got {self.n_classes}"),
            (self.base_channels >= 1, f"base_channels must be >= 1, got {self.base_channels}"),
            (1 <= self.depth <= 6, f"depth must be between 1 and 6, got {self.depth}"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.ndim in (2, 3), f"ndim must be 2 (images) or 3 (volumes), got {self.ndim}"),
            (
                self.spacing is None or (self.ndim == 3 and len(self.spacing) == 3 and min(self.spacing) > 0),
                f"spacing must hold one positive voxel size per axis (z, y, x) of a 3D model (ndim=3), "
                f"got {self.spacing} with ndim={self.ndim}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @classmethod
    def paper_3d(cls, in_channels: int = 3, n_classes: int = 3, spacing: tuple[float, ...] | None = None):
        """The 3D U-Net of Cicek et al. 2016: 3x3x3 convolutions with batch normalisation
        before each ReLU, channels 32-64, 64-128, 128-256, 256-512, three poolings, no
        dropout; 19,069,955 parameters for 3 input channels and 3 classes (the count
        the paper gives, met with normalisation layers that learn nothing and
        up-convolutions without bias). Input 132x132x116 -> output 44x44x28."""
        return cls(
            in_channels=in_channels,
            n_classes=n_classes,
            base_channels=32,
            depth=3,
            dropout=0.0,
            ndim=3,
            spacing=spacing,
            batch_norm=True,
            double_before_pool=True,
            up_bias=False,
        )


@dataclass(frozen=True)
class NormalizationConfig:
    """Per-image percentile normalisation, applied alike in training and prediction.

    Each plane and channel is mapped so that its ``low`` percentile becomes 0 and its
    ``high`` percentile becomes 1 (values outside are kept, not clipped).
    """

    low: float = 1.0
    high: float = 99.8

    def __post_init__(self) -> None:
        check_types(self)
        if not 0.0 <= self.low < self.high <= 100.0:
            raise ConfigError(f"need percentiles 0 <= low < high <= 100, got low {self.low}, high {self.high}")


@dataclass(frozen=True)
class InstanceConfig:
    """How per-class probabilities become instance labels.

    ``threshold`` applies to the foreground probability (1 - background); objects
    smaller than ``min_size`` pixels (voxels for 3D models) are dropped (training sets
    it from the annotation, see ``TrainConfig.fit_sizes``); ``fill_holes`` closes holes inside
    objects; ``expand`` grows every object by that many pixels into background
    without merging neighbours. The default 0 keeps the outlines the network
    predicts: the training target removes pixels only where cells touch, so a grow
    of every object made outlines about a pixel too large everywhere else (measured
    on real and synthetic nuclei: mean IoU of matches 0.74-0.77 -> 0.81-0.82 and
    0.79-0.80 -> 0.88-0.89; see the README).

    ``split`` > 0 splits an object where its (smoothed) foreground probability has
    peaks whose pieces meet along a line that lies, on average, at least that much
    below the lower peak: touching cells that the network separates by a dip rather
    than by a gap (:mod:`napari_unet.core.split`). 0, the paper's mode, keeps the
    connected components as they are. The default 0.1 was chosen on the real-data
    and synthetic benchmarks, where merged touching cells were the main error of
    networks trained for minutes (real nuclei and bacteria: AP@0.5 0.58-0.89 ->
    0.75-0.93; synthetic nuclei: 0.84 -> 0.98; see the README). A piece under
    ``min_piece`` pixels (voxels) joins the neighbour it dips least towards: its dip
    lies inside one textured cell (training sets it from the annotation, as
    ``min_size``).

    ``min_fill`` > 0 also splits objects shaped like several cells, where no dip of
    probability parts them (:mod:`napari_unet.core.concave`): an object that fills
    less than ``min_fill`` of the ellipse of its second moments is cut at the necks of
    its mask that lie at least ``neck`` px (voxels) less deep inside than the centres
    on both sides. Training fits both to the completely annotated objects; 0, the
    paper's mode and the default of a model that learned no sizes, never does.

    ``edge_size_factor`` >= 1: an object that touches the image's border (the
    volume's, for 3D models) is kept only from ``edge_size_factor`` times
    ``min_size``. The border cuts cells, so what is left of one there can be any size,
    and the network outlines it from a mirrored view: on the real-data benchmark the
    small objects at the border mostly missed their cells, while small objects inside
    the image matched theirs (training sets it with ``min_size``; 1, the default of a
    model that learned no sizes, treats both alike).

    ``object_size``: the median size of the completely annotated objects the model
    learned from (0: not known), set by training like ``min_size``; segmenting notes
    objects far from it (:mod:`napari_unet.core.rescale`), and with ``split`` splits
    objects over 1.5 times it once more where their log-odds dip: clumps of cells the
    network is sure of all the way across (:mod:`napari_unet.core.large_objects`).
    """

    threshold: float = 0.5
    min_size: int = 16
    fill_holes: bool = True
    expand: int = 0
    split: float = 0.1
    min_piece: int = 0
    min_fill: float = 0.0
    neck: float = 2.0
    edge_size_factor: float = 1.0
    object_size: int = 0

    def __post_init__(self) -> None:
        check_types(self)
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold must be in (0, 1), got {self.threshold}")
        for name in ("min_size", "min_piece", "expand", "object_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.edge_size_factor < 1.0:
            raise ConfigError(
                f"edge_size_factor must be >= 1 (objects at the image's border need at least min_size), "
                f"got {self.edge_size_factor}"
            )
        if not 0.0 <= self.split < 1.0:
            raise ConfigError(f"split must be in [0, 1) (0 keeps touching objects together), got {self.split}")
        if not 0.0 <= self.min_fill < 2.0 or self.neck <= 0.0:
            raise ConfigError(
                "need min_fill in [0, 2) (0 splits no object by its shape) and neck > 0, "
                f"got {self.min_fill}, {self.neck}"
            )

    def components(self) -> InstanceConfig:
        """These settings without either split: the paper's connected components."""
        return dataclasses.replace(self, split=0.0, min_fill=0.0)


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


DEFAULT_CLASS_NAMES = ("background", "cell")


def _default_class_names(n_classes: int) -> tuple[str, ...]:
    """ "background", "cell", "class 2", ... for ``n_classes`` classes."""
    return (*DEFAULT_CLASS_NAMES, *(f"class {index}" for index in range(2, n_classes)))[:n_classes]


@dataclass(frozen=True)
class ModelSpec:
    """Everything a model file records besides the weights.

    ``class_names`` holds one name per output class (``model.n_classes``) or ``None``,
    for which :attr:`classes` gives "background", "cell", "class 2", ... Files written
    before the names had to match the classes recorded "background", "cell" for any
    number of classes; for more than two classes those are read as ``None``.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    normalization: NormalizationConfig = field(default_factory=NormalizationConfig)
    instances: InstanceConfig = field(default_factory=InstanceConfig)
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_types(self)
        n_classes, names = self.model.n_classes, self.class_names
        if names is None:
            return
        if names == DEFAULT_CLASS_NAMES or (len(names) == n_classes and names == _default_class_names(n_classes)):
            object.__setattr__(self, "class_names", None)  # the default names: one spec, however written
        elif len(names) != n_classes:
            raise ConfigError(
                f"ModelSpec.class_names must name each of the model's {n_classes} classes, got {len(names)}: {names!r}"
            )

    @property
    def classes(self) -> tuple[str, ...]:
        """The name of each output class, in order."""
        return self.class_names if self.class_names is not None else _default_class_names(self.model.n_classes)

    def to_dict(self) -> dict:
        """A plain ``dict``; the class names are written out, as every version reads them."""
        return {**to_dict(self), "class_names": self.classes}

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        if not isinstance(data, dict):
            raise ConfigError(f"ModelSpec needs a mapping of settings, got {type(data).__name__}")
        names = data.get("class_names")
        if names is not None and not isinstance(names, (list, tuple)):
            raise ConfigError(f"ModelSpec.class_names must be a list of strings, got {names!r}")
        return cls(
            model=from_dict(ModelConfig, data.get("model")),
            normalization=from_dict(NormalizationConfig, data.get("normalization")),
            instances=from_dict(InstanceConfig, data.get("instances")),
            class_names=None if names is None else tuple(names),
        )


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


def default_model_config(
    device: str | None = None, in_channels: int = 1, ndim: int = 2, spacing: tuple[float, ...] | None = None
) -> ModelConfig:
    """The paper's network on a GPU; a smaller one (16 base channels, depth 3) on a CPU,
    where it trains about 10x faster per pixel and still sees 88 px of context, with
    batch normalisation before every ReLU, which brings the training time to a good
    model down to 0.61x there (bench/bench_quality.py ``--target``, median of 3 seeds).

    ``ndim=3``: the paper's 3D U-Net on a GPU; on a CPU a narrower and shallower one of
    the same design (:data:`CPU_3D_BASE_CHANNELS`, :data:`CPU_3D_DEPTH`), see
    bench/bench_volumes.py. ``spacing`` (z, y, x) adapts kernels and poolings to
    anisotropic voxels (3D only).
    """
    if ndim == 3:
        if resolve_device(device).type == "cuda":
            return ModelConfig.paper_3d(in_channels=in_channels, n_classes=2, spacing=spacing)
        return dataclasses.replace(
            ModelConfig.paper_3d(in_channels=in_channels, n_classes=2, spacing=spacing),
            base_channels=CPU_3D_BASE_CHANNELS,
            depth=CPU_3D_DEPTH,
        )
    if resolve_device(device).type == "cuda":
        return ModelConfig(in_channels=in_channels)
    return ModelConfig(in_channels=in_channels, base_channels=16, depth=3, batch_norm=True)


#: The 3D network trained on a CPU by default, as bench/bench_volumes.py measures it: from
#: scratch it does not train reliably in 5 CPU minutes; warm-started from its 2D twin
#: (:mod:`napari_unet.core.warm_start`) it finds every nucleus of the fully automated part
#: in every run, and misses one or two of 20 on the other (see the README, Volumes).
CPU_3D_BASE_CHANNELS = 8
CPU_3D_DEPTH = 2
#: A new 3D network's time limit on a CPU, where its steps are slow (3-7 s each for
#: the default on two cores): the budget bench/bench_volumes.py measures.
CPU_3D_MINUTES = 5.0


def default_minutes(ndim: int, device_type: str) -> float | None:
    """The time limit of a new network's training when none is given (the command
    line, the Train widget): :data:`CPU_3D_MINUTES` for a 3D network on a CPU
    (``device_type`` "cpu"), else none."""
    return CPU_3D_MINUTES if ndim == 3 and device_type == "cpu" else None
