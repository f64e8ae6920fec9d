"""Frozen configuration records of what a model is: its network, the normalisation of
its inputs, how its probabilities become instances (:mod:`.train_config` holds how
to train one).

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
        if not 0.0 <= self.min_fill <= 1.0:  # 1.5 was taken, and split every object
            raise ConfigError(
                "min_fill (segment --min-fill) is the share of the ellipse of its moments an object fills, below "
                f"which it is split by its shape: from 0 (never) to 1, got {self.min_fill}"
            )
        if self.neck <= 0.0:
            raise ConfigError(f"neck must be > 0 px, got {self.neck}")

    def components(self) -> InstanceConfig:
        """These settings without either split: the paper's connected components."""
        return dataclasses.replace(self, split=0.0, min_fill=0.0)


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
