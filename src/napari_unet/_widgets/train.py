"""Train a U-Net on annotated layers in a worker thread, with live progress."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_info, show_warning

from .._session import Session
from ..core.checkpoint import load_model
from ..core.config import (
    CPU_3D_MINUTES,
    OPTIMIZERS,
    AugmentConfig,
    TrainConfig,
    WeightMapConfig,
    default_minutes,
    default_model_config,
)
from ..core.devices import resolve_device
from ..core.errors import ConfigError
from ..core.geometry import is_volume
from ..core.io import check_writable
from ..core.model import UNet
from ..core.threads import available_cores
from ..core.train import Trainer
from ..core.train_events import CheckpointFailed, StepProgress, ValidationResult, WarmStartProgress
from ..core.training_state import training_history
from ..core.warm_start import WARM_START_STEPS
from ._base import DockWidget, wrap_lines
from ._choices import (
    NO_MODEL_FILE,
    chosen_file,
    device_choices,
    precision_choices,
    reset_tile_choices,
    tile_choices,
)
from ._forms import SteadyComboBox, SteadyRadioButtons, form, group, scrolling, side_by_side
from ._jobs import Preview, TrainingDone, TrainingStarted, display_labels, training_job
from ._layers import (
    EditWatcher,
    LayerError,
    NewAnnotationFollower,
    choose_pair,
    image_data,
    labels_data,
    layer_spacing,
    layers_of,
    match_annotation,
    put_layer,
    spatial_shape,
)
from ._plot import LossPlot
from ._throttle import Throttle
from ._training_inputs import free_model_path, trainer_factory, training_inputs
from ._warm_up import warm_up

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


def format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}:{seconds:02d}"


class TrainWidget(DockWidget):
    """Training data (image + annotation pairs), model, settings, Start/Stop, progress.

    What a run needs is shown at once; the paper's hyper-parameters and the preview
    sit under "advanced settings". The settings scroll when the screen is short.
    """

    def __init__(self, napari_viewer, session: Session | None = None) -> None:
        super().__init__(napari_viewer)
        warm_up()
        viewer = self.viewer
        self.session = session or Session.of(viewer)
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
        self.start_button = PushButton(text="Start training")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1)
        self.status.value = f"devices found: {', '.join(device_choices()[1:])}"
        self.validation_label = Label(value="", visible=False)  # shown once validation has something to say
        self.plot = LossPlot()
        self._show_step = Throttle(self._show_step_now, parent=self.native)
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
        self.extend(
            [
                self.settings,
                side_by_side(self.start_button, self.stop_button),
                form(self.progress),
                self.status,
                self.validation_label,
            ]
        )
        self.native.layout().addWidget(self.plot)
        self.plot.hide()  # until the first run: before it, its room goes to the settings
        # The settings alone are taller than a 1366x768 laptop's screen leaves a dock;
        # they scroll, and Start, Stop, progress and status stay in view below them.
        self.settings_area = scrolling(self.settings, self.native.layout())
        for label in (self.pairs_label, self.validation_label):
            wrap_lines(label)
        self.pairs: list[tuple[Image, Labels]] = []
        self.runner = self.make_runner(
            "training", self._on_event, self._on_done, self._on_idle, self._on_error, self._on_closed
        )
        self.trainer: Trainer | None = None
        self._started_message = ""
        self._warnings: list[str] = []  # on the chosen layers, found by the last Start
        self._run_warnings: list[str] = []  # on the data of the latest run, shown under its status
        self.add_pair.changed.connect(self.guarded(self._add_pair))
        self.clear_pairs.changed.connect(self._clear_pairs)
        self.depth.changed.connect(self._set_tile_choices)
        self.network.changed.connect(self._on_network_changed)
        self._enable_warm_start()
        self.model_source.changed.connect(self._on_source_changed)
        self.image.changed.connect(self._suggest_network)
        self.show_advanced.changed.connect(lambda shown: setattr(self.advanced, "visible", shown))
        self.start_button.changed.connect(self.guarded(self.start))
        self.stop_button.changed.connect(self.stop)
        self.image.changed.connect(self._match_annotation)
        self.preview_image.changed.connect(self._prepare_preview)
        self._preselect()
        self._follower = NewAnnotationFollower(self.annotation)
        self._refusal = ""  # why the last Start was refused, while the status still says so
        self._edits = EditWatcher(self._on_annotation_edited, self.native, delay_ms=300)
        self.annotation.changed.connect(self._edits.watch)
        self._edits.watch(self.annotation.value)

    def reset_choices(self, *_) -> None:
        super().reset_choices()
        self._preselect()
        self._follower.follow(self.image)
        self._drop_removed_pairs()

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
        (:func:`~napari_unet.core.config.default_minutes`: a 3D network on a CPU)."""
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
            return lambda: model
        if source == "file":
            path = chosen_file(self.model_file.value)
            if path is None:
                raise LayerError(f"{NO_MODEL_FILE}, or train a new model")
            if not path.is_file():
                raise LayerError(f"no model file at {path}: choose one, or train a new model")
            return lambda: load_model(path)
        ndim = self._network_ndim()
        config = default_model_config("cpu", in_channels, ndim=ndim, spacing=self.spacing() if ndim == 3 else None)
        chosen = dataclasses.replace(
            config, base_channels=self.base_channels.value, depth=self.depth.value, batch_norm=self.batch_norm.value
        )
        return lambda: UNet.from_config(chosen)

    def trainer_factory(self):
        """Check the chosen layers and settings (raises on bad input) and return a
        function that builds the trainer, to be called in the worker thread
        (:func:`~._training_inputs.trainer_factory`)."""
        pairs = self.pairs or [(self.image.value, self.annotation.value)]
        inputs = training_inputs(pairs, self.val_image.value, self.val_labels.value)
        make_model = self._model_factory(inputs.in_channels)
        save = Path(self.save_path.value)
        check_writable(save)  # before training, not after it
        self._warnings = inputs.warnings
        return trainer_factory(inputs, make_model, self.config(), save)

    def build_trainer(self) -> Trainer:
        """A trainer for the chosen layers and settings, built here (raises on bad input)."""
        return self.trainer_factory()()

    def start(self) -> None:
        if self.runner.busy:
            return
        make_trainer = self.trainer_factory()
        preview = None
        if self.preview_image.value is not None:
            preview = image_data(self.preview_image.value)
        self.trainer = None
        self.progress.max = self.steps.value
        self.progress.value = 0
        self.validation_label.value = ""
        self.validation_label.visible = False
        self._run_warnings = list(self._warnings)
        self.status.value = self._with_warnings("preparing the training data…")
        for warning in self._warnings:
            show_warning(warning)
        self._set_running(True)
        self._saving_to = Path(self.save_path.value)
        self.runner.start(
            training_job, make_trainer, self._saving_to, preview, self.preview_every.value, self.threads.value or None
        )

    def stop(self, *_) -> None:
        """Stop at the next step; the checkpoint and model are written."""
        self.status.value = "stopping…"
        self.runner.stop()

    def _set_running(self, running: bool) -> None:
        self.start_button.enabled = not running
        self.stop_button.enabled = running

    def _on_event(self, event) -> None:
        if isinstance(event, TrainingStarted):
            self.plot.clear_data()  # (a run refused while preparing keeps the last run's curve)
            self.plot.show()  # from the first run on
            self.trainer = event.trainer
            self.progress.max = event.trainer.config.steps
            threads = f" with {event.threads} CPU thread(s)" if event.trainer.device.type == "cpu" else ""
            self._started_message = f"training on {event.trainer.device}{threads}…"
            for warning in event.trainer.data_warnings:
                show_warning(warning)
            self._run_warnings += event.trainer.data_warnings
            if not self.runner.stopping:  # Stop pressed while preparing: "stopping…" stays
                self.status.value = self._with_warnings(self._started_message)
        elif isinstance(event, StepProgress):
            self.plot.record(event.step, event.loss)
            self._show_step(event)
        elif isinstance(event, WarmStartProgress):
            self.plot.record_twin(event.step, event.loss)
            self._show_step(event)
        elif isinstance(event, ValidationResult):
            self.validation_label.value = (
                f"validation at step {event.step}: AP@0.5 {event.ap50:.3f}, pixel IoU {event.pixel_iou:.3f}"
            )
            self.validation_label.visible = True  # (a Label reports no change of its own)
        elif isinstance(event, CheckpointFailed):
            show_warning(f"napari-unet: {event.message}")
        elif isinstance(event, Preview):
            layer = self.preview_image.value
            if layer is not None:
                labels = display_labels(event.labels)
                put_layer(self.viewer, f"{layer.name} preview", labels, "labels", layer, role="preview", visible=True)

    def _show_step_now(self, event: StepProgress | WarmStartProgress) -> None:
        """Progress bar, status line and loss plot at ``event`` (throttled: ``_show_step``)."""
        self.progress.max = event.total_steps
        self.progress.value = event.step
        stopping = "stopping… " if self.runner.stopping else ""  # steps queued before Stop: it was heard
        if isinstance(event, WarmStartProgress):
            line = (
                f"{stopping}warm start: the 2D twin on the annotated planes, step {event.step}/{event.total_steps}  "
                f"loss {event.loss:.4f}"
            )
        else:
            line = (
                f"{stopping}step {event.step}/{event.total_steps}  loss {event.loss:.4f}  "
                f"{event.samples_per_second:.1f} samples/s  ETA {format_seconds(event.eta_seconds)}"
            )
        self.status.value = self._with_warnings(line)
        self.plot.redraw()

    def _with_warnings(self, line: str) -> str:
        """``line`` with this run's warnings on the data under it: they stay in view
        while the step line changes (a new user never saw "no background painted"
        scroll by within a second)."""
        return line + "".join(f"\n⚠ {warning}" for warning in self._run_warnings)

    def _keep_model(self, trainer: Trainer) -> Path:
        """Make the run's model the session's; returns the file it was saved to."""
        runs = training_history(trainer.model.metadata)
        total = sum(run["steps"] for run in runs if isinstance(run.get("steps"), int))
        steps = f"{trainer.step} steps" + (f", {total} in {len(runs)} runs" if len(runs) > 1 else "")
        self.session.set_model(trainer.model, f"trained here ({steps})", self._saving_to)
        return self._saving_to

    def _on_closed(self, done: TrainingDone) -> None:
        """The dock closed during a run, which stopped it: its model stays the
        session's (Segment offers it), as when Stop is pressed."""
        path = self._keep_model(done.trainer)
        show_info(f"napari-unet: training stopped as its dock closed; model saved to {path} and kept in the session")

    def _on_done(self, done: TrainingDone) -> None:
        trainer = done.trainer
        self.trainer = trainer
        self._show_step.flush()  # the last step's progress and the whole loss curve
        path = self._keep_model(done.trainer)
        verb = "stopped" if done.stopped else "finished"
        self._run_warnings = [*self._warnings, *trainer.data_warnings]  # of the annotation this model learnt from
        twin = f" (after {self.plot.twin_steps} steps of its 2D twin)" if self.plot.twin_steps else ""
        self.model_source.value = "session model"  # Start again trains this model further, as users expect
        self.status.value = self._with_warnings(
            f"{verb} at step {trainer.step}{twin}; model saved to {path} and kept in the session: Start trains it "
            f"further (model: new for a fresh network)"
        )
        show_info(f"napari-unet: training {verb}; model saved to {path}")
        if trainer.checkpoint_error:
            show_warning(f"napari-unet: the last checkpoint could not be written: {trainer.checkpoint_error}")
        self._name_the_next_file()

    def _name_the_next_file(self) -> None:
        """Give the next run, which trains the model just saved further, a file of its own:
        it replaced the file the user had chosen, and the model in it, without a word."""
        saved = Path(self.save_path.value)
        following = free_model_path(saved.parent, re.sub(r"-\d+$", "", saved.stem))
        if saved == self._default_save:
            self._default_save = following
        self.save_path.value = following

    def _on_error(self, message: str) -> None:
        self._show_step.flush()
        trainer = self.trainer
        if trainer is not None and trainer.step > 0 and self._saving_to.exists():  # a run that failed midway
            path = self._keep_model(trainer)  # its model changed, and was saved: say so
            message += f"\nthe model of step {trainer.step} was saved to {path} and kept in the session"
            self._name_the_next_file()
        self.status.value = self._refusal = f"⚠ {message}"

    def _on_annotation_edited(self) -> None:
        """An edit may have answered why the last Start was refused (e.g. "the
        annotations are empty"): the message goes rather than stand beside the cells
        just painted; Start checks again."""
        if not self.runner.busy and self._refusal and self.status.value == self._refusal:
            self.status.value = "annotation edited since: Start checks it again"
        self._refusal = ""

    def _on_idle(self) -> None:
        self._show_step.flush()
        self._set_running(False)
