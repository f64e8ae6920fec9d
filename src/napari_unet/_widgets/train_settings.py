"""The Train widget's settings form: the training data (image and annotation pairs,
validation), the model (new, the session's or a file, and a new one's network), the
run (steps, minutes, device, file) and the advanced settings, and the
:class:`~napari_unet.core.train_config.TrainConfig` and model they describe."""

from __future__ import annotations

import dataclasses

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, PushButton, SpinBox
from napari.layers import Image, Labels

from ..core.checkpoint import load_model
from ..core.config import default_model_config
from ..core.devices import resolve_device
from ..core.errors import ConfigError
from ..core.geometry import is_volume
from ..core.model import UNet
from ..core.threads import available_cores
from ..core.train_config import CPU_3D_MINUTES, OPTIMIZERS, AugmentConfig, TrainConfig, WeightMapConfig, default_minutes
from ..core.warm_start import WARM_START_STEPS
from ._choices import (
    NO_MODEL_FILE,
    chosen_file,
    device_choices,
    precision_choices,
    reset_tile_choices,
    tile_choices,
)
from ._forms import SteadyComboBox, SteadyRadioButtons, group
from ._layers import (
    LayerError,
    NewAnnotationFollower,
    choose_pair,
    labels_data,
    layer_spacing,
    layers_of,
    match_annotation,
    put_layer,
    spatial_shape,
)
from ._training_inputs import free_model_path

NETWORK_TIP = (
    "2D: the U-Net on planes (stacks plane by plane). 3D: the 3D U-Net on whole volumes, "
    "trained from a few annotated planes (the rest -1), voxel spacing from the image layer's scale"
)
BATCH_NORM_TIP = (
    "normalise every convolution's output over the batch: on a CPU a new model reaches a good "
    "segmentation in about 0.6 of the time; off is the paper's network"
)
WARM_START_TIP = (
    "a new 3D network first trains its 2D twin (the same layers in 2D) this many steps on the annotated "
    "planes, in at most half of the minutes, and starts from its weights; 0: none"
)
ZOOM_TIP = (
    "rescale each training sample by a random factor from exp(-zoom) to exp(zoom) (0.25: 0.78-1.28x), "
    "so the network also sees cells a little smaller and larger than the annotated ones; 0: none, as in the paper"
)


class TrainSettings:
    """The settings half of :class:`~napari_unet._widgets.train.TrainWidget` (a mixin
    of it: the fields are its attributes, e.g. ``widget.depth``): builds the form,
    keeps its choices consistent with each other and with the viewer's layers, and
    turns it into a :class:`~napari_unet.core.train_config.TrainConfig` and a model.
    Needs the widget's ``viewer``, ``session``, ``status`` and ``runner``."""

    def _build_settings(self) -> None:
        """Create the fields and ``self.settings``, the form that holds them."""
        viewer = self.viewer
        cpu = default_model_config("cpu")
        defaults = TrainConfig()
        images = lambda _: layers_of(viewer, Image)  # noqa: E731
        labels = lambda _: layers_of(viewer, Labels)  # noqa: E731
        self.image = SteadyComboBox(label="image", choices=images, nullable=True)
        self.annotation = SteadyComboBox(label="annotation", choices=labels, nullable=True)
        self.add_pair = PushButton(text="Add pair")
        self.clear_pairs = PushButton(text="Clear pairs")
        self.pairs_label = Label(value="pairs: the image and annotation above")
        self.val_image = SteadyComboBox(label="validation image", choices=images, nullable=True, value=None)
        self.val_labels = SteadyComboBox(label="validation labels", choices=labels, nullable=True, value=None)
        self.model_source = SteadyRadioButtons(
            label="model", choices=["new", "session model", "file"], value="new", orientation="horizontal"
        )
        self.model_file = FileEdit(label="model file", mode="r", filter="*.safetensors")
        self.network = SteadyRadioButtons(
            label="network", choices=["2D", "3D"], value="2D", orientation="horizontal", tooltip=NETWORK_TIP
        )
        self.base_channels = SpinBox(label="base channels", value=cpu.base_channels, min=1, max=128)
        self.depth = SpinBox(label="depth", value=cpu.depth, min=1, max=6)
        self.warm_start = SpinBox(
            label="2D warm start (steps)", value=WARM_START_STEPS, min=0, max=1_000_000, tooltip=WARM_START_TIP
        )
        self.steps = SpinBox(label="steps", value=defaults.steps, min=1, max=1_000_000)
        self.minutes = FloatSpinBox(label="minutes (0: no limit)", value=0.0, min=0.0, max=10_000.0, step=0.5)
        self.device = ComboBox(label="device", choices=device_choices(), value="auto")
        self.lr = FloatSpinBox(label="learning rate", value=defaults.learning_rate, min=1e-5, max=1.0, step=1e-5)
        self.batch_size = SpinBox(label="batch size", value=defaults.batch_size, min=1, max=256)
        self.optimizer = ComboBox(label="optimizer", choices=list(OPTIMIZERS), value=defaults.optimizer)
        self.tile = ComboBox(
            label="tile",
            choices=lambda _: tile_choices(self.depth.value, self._network_ndim()),
            value=None,
        )
        self.w0 = FloatSpinBox(label="w0", value=WeightMapConfig().w0, min=0.0, max=100.0)
        self.sigma = FloatSpinBox(label="sigma (px)", value=WeightMapConfig().sigma, min=0.5, max=50.0)
        augment = AugmentConfig()
        self.elastic = CheckBox(text="elastic deformation", value=augment.elastic)
        self.zoom = FloatSpinBox(label="random zoom", value=augment.zoom, min=0.0, max=1.0, step=0.05, tooltip=ZOOM_TIP)
        self.batch_norm = CheckBox(text="batch normalisation", value=cpu.batch_norm, tooltip=BATCH_NORM_TIP)
        self.precision = ComboBox(label="precision", choices=precision_choices(), value="auto")
        self.preview_image = SteadyComboBox(label="preview on", choices=images, nullable=True, value=None)
        self.preview_every = SpinBox(label="preview every (steps)", value=50, min=1, max=100_000)
        self.threads = SpinBox(label="CPU threads (0: automatic)", value=0, min=0, max=max(available_cores() * 2, 2))
        self._default_save = free_model_path()
        self.save_path = FileEdit(label="save model to", mode="w", value=self._default_save, filter="*.safetensors")
        self.show_advanced = CheckBox(text="advanced settings", value=False)
        self.advanced = group(
            "Advanced",
            self.lr, self.batch_size, self.optimizer, self.tile, self.w0, self.sigma, self.elastic, self.zoom,
            self.batch_norm, self.precision, self.threads, self.val_image, self.val_labels, self.preview_image,
            self.preview_every,
        )  # fmt: skip
        self.advanced.visible = False
        self.settings = Container(
            widgets=[
                group("Data", self.image, self.annotation, self.add_pair, self.clear_pairs, self.pairs_label),
                group(
                    "Model", self.model_source, self.model_file, self.network, self.base_channels, self.depth,
                    self.warm_start,
                ),
                group("Run", self.steps, self.minutes, self.device, self.save_path),
                self.show_advanced, self.advanced,
            ],
            labels=False,
        )  # fmt: skip
        self.pairs: list[tuple[Image, Labels]] = []

    def _connect_settings(self) -> None:
        """Keep the choices consistent: tiles follow the depth, a new network's
        defaults its kind, the annotation the image (once the runner exists)."""
        self.add_pair.changed.connect(self.guarded(self._add_pair))
        self.clear_pairs.changed.connect(self._clear_pairs)
        self.depth.changed.connect(self._set_tile_choices)
        self.network.changed.connect(self._on_network_changed)
        self._enable_warm_start()
        self.model_source.changed.connect(self._on_source_changed)
        self.image.changed.connect(self._suggest_network)
        self.show_advanced.changed.connect(lambda shown: setattr(self.advanced, "visible", shown))
        self.image.changed.connect(self._match_annotation)
        self.preview_image.changed.connect(self._prepare_preview)
        self._preselect()
        self._follower = NewAnnotationFollower(self.annotation)

    def _preselect(self) -> None:
        """Choose the obvious image and annotation when no image is chosen (:func:`choose_pair`)."""
        choose_pair(self.viewer, self.image, self.annotation)

    def _match_annotation(self, *_) -> None:
        match_annotation(self.viewer, self.image, self.annotation)

    def _prepare_preview(self, layer: Image | None) -> None:
        """Add the (hidden, empty) preview layer as soon as a preview image is chosen:
        adding a layer costs napari a noticeable moment, which then does not fall
        into training, where the previews only replace its data."""
        if layer is not None:
            empty = np.zeros(spatial_shape(layer), np.uint16)
            put_layer(self.viewer, f"{layer.name} preview", empty, "labels", layer, role="preview", visible=False)

    def _set_tile_choices(self, *_) -> None:
        reset_tile_choices(self.tile)

    def _network_ndim(self) -> int:
        """2 or 3: the kind of network chosen for a new model."""
        return 3 if self.network.value == "3D" else 2

    def _on_source_changed(self, source: str) -> None:
        """The network's shape can be chosen for a new model only (a model trained
        further keeps its own); back to a new one, the suggestion follows the image."""
        for choice in (self.network, self.base_channels, self.depth, self.batch_norm):
            choice.enabled = source == "new"
        self._suggest_network()  # for the image chosen meanwhile
        self._enable_warm_start()

    def _enable_warm_start(self) -> None:
        """A warm start is for a new 3D network only."""
        self.warm_start.enabled = self.model_source.value == "new" and self.network.value == "3D"

    def _suggest_network(self, *_) -> None:
        """For a new model: a 3D network for a volume (:func:`~napari_unet.core.geometry.is_volume`),
        else 2D; on a CPU a line says that a 3D run is limited in time."""
        layer = self.image.value
        if layer is None or self.model_source.value != "new":
            return
        shape = spatial_shape(layer)
        volume = is_volume(shape, self.spacing())
        self.network.value = "3D" if volume else "2D"
        if volume and self._device_type() == "cpu" and not self.runner.busy:
            self.status.value = (
                f"{layer.name}: {shape[-3]} planes, a 3D network suggested: it starts from its 2D twin, "
                f"and on a CPU it trains for {CPU_3D_MINUTES:g} minutes (set 'minutes' to give it more)"
            )

    def _device_type(self) -> str:
        """The kind of device the chosen one is ("cpu" when it cannot be used)."""
        try:
            return resolve_device(self.device.value).type
        except ConfigError:
            return "cpu"

    def _on_network_changed(self, *_) -> None:
        """The CPU defaults of the chosen kind of network, and its time limit
        (:func:`~napari_unet.core.train_config.default_minutes`: a 3D network on a CPU)."""
        defaults = default_model_config("cpu", ndim=self._network_ndim())
        if self.network.value == "2D" and "a 3D network suggested" in self.status.value:
            self.status.value = ""  # the user chose: the suggestion is answered
        self.minutes.value = default_minutes(self._network_ndim(), self._device_type()) or 0.0
        self.base_channels.value, self.depth.value = defaults.base_channels, defaults.depth
        self.batch_norm.value = defaults.batch_norm
        self._set_tile_choices()
        self._enable_warm_start()

    def spacing(self) -> tuple[float, ...] | None:
        """The voxel spacing (z, y, x) of the training image: its layer's scale."""
        layer = self.image.value if self.image.value is not None else (self.pairs[0][0] if self.pairs else None)
        return None if layer is None else layer_spacing(layer)

    def _add_pair(self) -> None:
        labels_data(self.annotation.value, self.image.value)
        self.pairs.append((self.image.value, self.annotation.value))
        self._show_pairs()

    def _clear_pairs(self, *_) -> None:
        self.pairs.clear()
        self._show_pairs()

    def _drop_removed_pairs(self) -> None:
        """Pairs one of whose layers was deleted are no longer trained on (they were, silently)."""
        kept = [pair for pair in self.pairs if all(layer in self.viewer.layers for layer in pair)]
        if len(kept) != len(self.pairs):
            self.pairs[:] = kept
            self._show_pairs()

    def _show_pairs(self) -> None:
        if self.pairs:
            self.pairs_label.value = "pairs: " + "; ".join(f"{i.name} + {a.name}" for i, a in self.pairs)
        else:
            self.pairs_label.value = "pairs: the image and annotation above"

    def config(self) -> TrainConfig:
        return TrainConfig(
            steps=self.steps.value,
            minutes=self.minutes.value or None,
            tile=self.tile.value,
            batch_size=self.batch_size.value,
            optimizer=self.optimizer.value,
            lr=self.lr.value,
            weights=WeightMapConfig(w0=self.w0.value, sigma=self.sigma.value),
            augment=AugmentConfig(elastic=self.elastic.value, zoom=self.zoom.value),
            device=self.device.value,
            precision=self.precision.value,
            warm_start_steps=self.warm_start.value if self.warm_start.enabled else 0,
        )

    def _model_factory(self, in_channels: int):
        """A function returning the model to train (called in the worker: building
        the paper's network or reading a file takes a while)."""
        source = self.model_source.value
        if source == "session model":
            model = self.session.model
            if model is None:
                raise LayerError("there is no model in this session yet: train a new one or open a file")
            if model.config.in_channels != in_channels:
                raise LayerError(
                    f"the session model takes images of {model.config.in_channels} channel(s), this image has "
                    f"{in_channels}: choose model: new to train a fresh network on it"
                )
            return lambda: model
        if source == "file":
            path = chosen_file(self.model_file.value)
            if path is None:
                raise LayerError(f"{NO_MODEL_FILE}, or train a new model")
            if not path.is_file():
                raise LayerError(f"no model file at {path}: choose one, or train a new model")

            def from_file() -> UNet:
                model = load_model(path)
                if model.config.in_channels != in_channels:  # the core's advice ("train on the RGB layer") did not fit
                    raise LayerError(
                        f"{path.name} takes images of {model.config.in_channels} channel(s), this image has "
                        f"{in_channels}: choose model: new to train a fresh network on it"
                    )
                return model

            return from_file
        ndim = self._network_ndim()
        config = default_model_config("cpu", in_channels, ndim=ndim, spacing=self.spacing() if ndim == 3 else None)
        chosen = dataclasses.replace(
            config, base_channels=self.base_channels.value, depth=self.depth.value, batch_norm=self.batch_norm.value
        )
        return lambda: UNet.from_config(chosen)
