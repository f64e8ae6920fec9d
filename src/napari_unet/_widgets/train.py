"""Train a U-Net on annotated layers in a worker thread, with live progress."""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    RadioButtons,
    SpinBox,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_info

from .._session import Session
from ..core.checkpoint import load_model
from ..core.config import OPTIMIZERS, AugmentConfig, TrainConfig, WeightMapConfig, default_model_config
from ..core.model import UNet
from ..core.train import StepProgress, Trainer, ValidationResult
from ._base import DockWidget
from ._choices import device_choices, precision_choices, tile_choices
from ._jobs import Preview, TrainingDone, training_job
from ._layers import LayerError, display_labels, image_data, labels_data, layers_of, put_layer
from ._plot import LossPlot
from ._runner import JobRunner

DEFAULT_SAVE = Path.home() / "napari-unet" / "model.safetensors"


def format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}:{seconds:02d}"


def group(title: str, *widgets) -> Container:
    """A titled block of labelled controls."""
    box = Container(widgets=list(widgets), labels=True)
    box.margins = (0, 0, 0, 0)
    heading = Label(value=f"<b>{title}</b>")
    return Container(widgets=[heading, box], labels=False)


class TrainWidget(DockWidget):
    """Training data (image + annotation pairs), model, settings, Start/Stop, progress.

    What a run needs is shown at once; the paper's hyper-parameters and the preview
    sit under "advanced settings".
    """

    def __init__(self, napari_viewer, session: Session | None = None) -> None:
        super().__init__(napari_viewer, labels=False)
        viewer = self.viewer
        self.session = session or Session.of(viewer)
        cpu = default_model_config("cpu")
        defaults = TrainConfig()
        images = lambda _: layers_of(viewer, Image)  # noqa: E731
        labels = lambda _: layers_of(viewer, Labels)  # noqa: E731
        self.image = ComboBox(label="image", choices=images, nullable=True)
        self.labels = ComboBox(label="annotation", choices=labels, nullable=True)
        self.add_pair = PushButton(text="Add pair")
        self.clear_pairs = PushButton(text="Clear pairs")
        self.pairs_label = Label(value="pairs: the image and annotation above")
        self.val_image = ComboBox(label="validation image", choices=images, nullable=True, value=None)
        self.val_labels = ComboBox(label="validation labels", choices=labels, nullable=True, value=None)
        self.model_source = RadioButtons(
            label="model", choices=["new", "session model", "file"], value="new", orientation="horizontal"
        )
        self.model_file = FileEdit(label="model file", mode="r", filter="*.safetensors")
        self.base_channels = SpinBox(label="base channels", value=cpu.base_channels, min=1, max=128)
        self.depth = SpinBox(label="depth", value=cpu.depth, min=1, max=6)
        self.steps = SpinBox(label="steps", value=defaults.steps, min=1, max=1_000_000)
        self.minutes = FloatSpinBox(label="minutes (0: no limit)", value=0.0, min=0.0, max=10_000.0, step=0.5)
        self.device = ComboBox(label="device", choices=device_choices(), value="auto")
        self.lr = FloatSpinBox(label="learning rate", value=defaults.learning_rate, min=1e-5, max=1.0, step=1e-5)
        self.batch_size = SpinBox(label="batch size", value=defaults.batch_size, min=1, max=256)
        self.optimizer = ComboBox(label="optimizer", choices=list(OPTIMIZERS), value=defaults.optimizer)
        self.tile = ComboBox(label="tile", choices=tile_choices(cpu.depth), value=None)
        self.w0 = FloatSpinBox(label="w0", value=WeightMapConfig().w0, min=0.0, max=100.0)
        self.sigma = FloatSpinBox(label="sigma (px)", value=WeightMapConfig().sigma, min=0.5, max=50.0)
        self.elastic = CheckBox(text="elastic deformation", value=True)
        self.precision = ComboBox(label="precision", choices=precision_choices(), value="auto")
        self.preview_image = ComboBox(label="preview on", choices=images, nullable=True, value=None)
        self.preview_every = SpinBox(label="preview every (steps)", value=50, min=1, max=100_000)
        self.save_path = FileEdit(label="save model to", mode="w", value=DEFAULT_SAVE, filter="*.safetensors")
        self.show_advanced = CheckBox(text="advanced settings", value=False)
        self.start_button = PushButton(text="Start training")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1)
        self.status.value = f"devices found: {', '.join(device_choices()[1:])}"
        self.validation_label = Label(value="")
        self.plot = LossPlot()
        self.advanced = group(
            "Advanced",
            self.lr, self.batch_size, self.optimizer, self.tile, self.w0, self.sigma, self.elastic,
            self.precision, self.val_image, self.val_labels, self.preview_image, self.preview_every,
        )  # fmt: skip
        self.advanced.visible = False
        self.extend(
            [
                group("Data", self.image, self.labels, self.add_pair, self.clear_pairs, self.pairs_label),
                group("Model", self.model_source, self.model_file, self.base_channels, self.depth),
                group("Run", self.steps, self.minutes, self.device, self.save_path),
                self.show_advanced, self.advanced,
                self.start_button, self.stop_button, self.progress, self.status, self.validation_label,
            ]
        )  # fmt: skip
        self.native.layout().addWidget(self.plot)
        for label in (self.pairs_label, self.validation_label):
            label.native.setWordWrap(True)
        self.pairs: list[tuple[Image, Labels]] = []
        self.runner = JobRunner("training", self._on_event, self._on_done, self._on_idle, self._on_error)
        self.trainer: Trainer | None = None
        self.add_pair.changed.connect(self.guarded(self._add_pair))
        self.clear_pairs.changed.connect(self._clear_pairs)
        self.depth.changed.connect(lambda depth: self._set_tile_choices(depth))
        self.show_advanced.changed.connect(lambda shown: setattr(self.advanced, "visible", shown))
        self.start_button.changed.connect(self.guarded(self.start))
        self.stop_button.changed.connect(self.stop)

    def _set_tile_choices(self, depth: int) -> None:
        self.tile.choices = tile_choices(depth)
        self.tile.value = None

    def _add_pair(self) -> None:
        labels_data(self.labels.value, self.image.value)
        self.pairs.append((self.image.value, self.labels.value))
        self.pairs_label.value = "pairs: " + "; ".join(f"{i.name} + {l.name}" for i, l in self.pairs)  # noqa: E741

    def _clear_pairs(self, *_) -> None:
        self.pairs.clear()
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
            augment=AugmentConfig(elastic=self.elastic.value),
            device=self.device.value,
            precision=self.precision.value,
        )

    def _model(self, in_channels: int) -> UNet:
        source = self.model_source.value
        if source == "session model":
            if self.session.model is None:
                raise LayerError("there is no model in this session yet: train a new one or open a file")
            return self.session.model
        if source == "file":
            return load_model(self.model_file.value)
        return UNet(in_channels=in_channels, base_channels=self.base_channels.value, depth=self.depth.value)

    def build_trainer(self) -> Trainer:
        """A trainer for the chosen layers and settings (raises on bad input)."""
        pairs = self.pairs or [(self.image.value, self.labels.value)]
        images, annotations, channel_axes = [], [], set()
        for image_layer, labels_layer in pairs:
            data, channel_axis = image_data(image_layer)
            images.append(data)
            channel_axes.add(channel_axis)
            annotations.append(labels_data(labels_layer, image_layer))
        if len(channel_axes) > 1:
            raise LayerError("the training images mix RGB and single-channel layers: train on one kind")
        channel_axis = channel_axes.pop()
        model = self._model(in_channels=images[0].shape[channel_axis] if channel_axis is not None else 1)
        validation = {}
        if self.val_image.value is not None and self.val_labels.value is not None:
            validation = {
                "val_images": [image_data(self.val_image.value)[0]],
                "val_labels": [labels_data(self.val_labels.value, self.val_image.value)],
            }
        save = Path(self.save_path.value)
        checkpoint = save.with_name(save.name + ".ckpt")
        return Trainer(
            model,
            images,
            annotations,
            self.config(),
            checkpoint_path=checkpoint,
            channel_axis=channel_axis,
            **validation,
        )

    def start(self) -> None:
        if self.runner.busy:
            return
        self.trainer = self.build_trainer()
        preview = None
        if self.preview_image.value is not None:
            preview = image_data(self.preview_image.value)
        self.plot.clear_data()
        self.progress.max = self.trainer.config.steps
        self.progress.value = 0
        self.status.value = f"training on {self.trainer.device}…"
        self._set_running(True)
        self.runner.start(training_job, self.trainer, Path(self.save_path.value), preview, self.preview_every.value)

    def stop(self, *_) -> None:
        """Stop at the next step; the checkpoint and model are written."""
        self.status.value = "stopping…"
        self.runner.stop()

    def _set_running(self, running: bool) -> None:
        self.start_button.enabled = not running
        self.stop_button.enabled = running

    def _on_event(self, event) -> None:
        if isinstance(event, StepProgress):
            self.progress.max = event.total_steps
            self.progress.value = event.step
            self.status.value = (
                f"step {event.step}/{event.total_steps}  loss {event.loss:.4f}  "
                f"{event.samples_per_second:.1f} samples/s  ETA {format_seconds(event.eta_seconds)}"
            )
            self.plot.add(event.step, event.loss, force=event.step == event.total_steps)
        elif isinstance(event, ValidationResult):
            self.validation_label.value = (
                f"validation at step {event.step}: AP@0.5 {event.ap50:.3f}, pixel IoU {event.pixel_iou:.3f}"
            )
        elif isinstance(event, Preview):
            layer = self.preview_image.value
            if layer is not None:
                labels = display_labels(event.labels)
                put_layer(self.viewer, f"{layer.name} preview", labels, "labels", layer, role="preview")

    def _on_done(self, done: TrainingDone) -> None:
        trainer = done.trainer
        self.plot.redraw()
        path = Path(self.save_path.value)
        self.session.set_model(trainer.model, f"trained here ({trainer.step} steps)", path)
        verb = "stopped" if done.stopped else "finished"
        self.status.value = f"{verb} at step {trainer.step}; model saved to {path}"
        show_info(f"napari-unet: training {verb}; model saved to {path}")

    def _on_error(self, message: str) -> None:
        self.status.value = f"⚠ {message}"

    def _on_idle(self) -> None:
        self._set_running(False)
