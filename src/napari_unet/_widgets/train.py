"""Train a U-Net on annotated layers in a worker thread, with live progress."""

from __future__ import annotations

import re
from pathlib import Path

from magicgui.widgets import Label, ProgressBar, PushButton
from napari.utils.notifications import show_info, show_warning

from .._session import Session
from ..core.atomic_files import check_writable
from ..core.train import Trainer
from ..core.train_events import CheckpointFailed, StepProgress, ValidationResult, WarmStartProgress
from ..core.training_state import training_history
from ._base import DockWidget, wrap_lines
from ._choices import device_choices
from ._forms import form, scrolling, side_by_side
from ._jobs import Preview, TrainingDone, TrainingStarted, display_labels, training_job
from ._layers import EditWatcher, image_data, put_layer
from ._plot import LossPlot
from ._throttle import Throttle
from ._training_inputs import free_model_path, trainer_factory, training_inputs
from ._warm_up import warm_up
from .train_settings import TrainSettings


def format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}:{seconds:02d}"


class TrainWidget(TrainSettings, DockWidget):
    """Training data (image + annotation pairs), model, settings, Start/Stop, progress.

    What a run needs is shown at once; the paper's hyper-parameters and the preview
    sit under "advanced settings". The settings scroll when the screen is short.
    """

    def __init__(self, napari_viewer, session: Session | None = None) -> None:
        super().__init__(napari_viewer)
        warm_up()
        self.session = session or Session.of(self.viewer)
        self._build_settings()
        self.start_button = PushButton(text="Start training")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1)
        self.status.value = f"devices found: {', '.join(device_choices()[1:])}"
        self.validation_label = Label(value="", visible=False)  # shown once validation has something to say
        self.plot = LossPlot()
        self._show_step = Throttle(self._show_step_now, parent=self.native)
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
        self.runner = self.make_runner(
            "training", self._on_event, self._on_done, self._on_idle, self._on_error, self._on_closed
        )
        self.trainer: Trainer | None = None
        self._started_message = ""
        self._warnings: list[str] = []  # on the chosen layers, found by the last Start
        self._run_warnings: list[str] = []  # on the data of the latest run, shown under its status
        self._run_layers: list = []  # the layers the running training read its data from
        self._removal_notes: list[str] = []  # which of them were removed while it ran
        self._connect_settings()
        self.start_button.changed.connect(self.guarded(self.start))
        self.stop_button.changed.connect(self.stop)
        self._refusal = ""  # why the last Start was refused, while the status still says so
        self._edits = EditWatcher(self._on_annotation_edited, self.native, delay_ms=300)
        self.annotation.changed.connect(self._edits.watch)
        self._edits.watch(self.annotation.value)

    def reset_choices(self, *_) -> None:
        super().reset_choices()
        self._preselect()
        self._follower.follow(self.image)
        self._drop_removed_pairs()
        self._note_removed_layers()

    def _note_removed_layers(self) -> None:
        """Say so when a layer the running training read its data from is removed: the
        run goes on with the data it read (Live training stops instead, its edits gone)."""
        if not self.runner.busy:
            return
        removed = dict.fromkeys(layer for layer in self._run_layers if layer not in self.viewer.layers)  # once each
        for layer in removed:
            note = f"the layer '{layer.name}' was removed: this run goes on with the data it read at Start"
            self._removal_notes.append(note)
            self._run_warnings.append(note)
            show_warning(f"napari-unet: {note}")
        self._run_layers = [layer for layer in self._run_layers if layer in self.viewer.layers]

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
        pairs = self.pairs or [(self.image.value, self.annotation.value)]
        self._run_layers = [layer for pair in pairs for layer in pair]
        self._run_layers += [layer for layer in (self.val_image.value, self.val_labels.value) if layer is not None]
        self._removal_notes = []
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
        # of the annotation this model learnt from
        self._run_warnings = [*self._warnings, *trainer.data_warnings, *self._removal_notes]
        twin = f" (after {self.plot.twin_steps} steps of its 2D twin)" if self.plot.twin_steps else ""
        self.model_source.value = "session model"  # Start again trains this model further, as users expect
        self.status.value = self._with_warnings(
            f"{verb} at step {trainer.step}{twin}; model saved to {path} and kept in the session: Start trains it "
            f"further; for a fresh network, choose model: new"
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
