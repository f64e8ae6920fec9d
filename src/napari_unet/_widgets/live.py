"""Live training: the U-Net learns while you paint, and its preview follows."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
from magicgui.widgets import FileEdit, FloatSpinBox, Label, PushButton
from napari.layers import Image, Labels
from napari.utils.notifications import show_info

from .._session import Session
from ..core.config import IGNORE_LABEL
from ..core.live import AnnotationProblem, LivePreview, LiveTraining, accept_all, accept_object, live_model
from ..core.model import UNet
from ..core.threads import use_threads
from ..core.train_config import TrainConfig
from ..core.train_events import StepProgress
from ._base import DockWidget
from ._forms import SteadyComboBox, form, scrolling, side_by_side
from ._jobs import VIEWER_CORES
from ._layers import (
    EditWatcher,
    LayerError,
    NewAnnotationFollower,
    choose_pair,
    helper_layer,
    image_data,
    labels_data,
    layers_of,
    match_annotation,
    put_layer,
)
from ._strokes import write_as_one_edit
from ._throttle import Throttle
from ._training_inputs import free_model_path

ACCEPT_KEY = "a"
#: Planes up to this many pixels are previewed whole; larger ones around the camera.
WHOLE_PLANE_PIXELS = 1024 * 1024
WINDOW = 512
RUNNING_MESSAGE = "live training: paint, erase or add cells; the preview follows"


def live_job(save_path: Path, *args, stop, **kwargs):
    """Build a :class:`LiveTraining` from ``args``/``kwargs`` (here in the worker: the
    first optimiser alone can take seconds to import its machinery), yield it, run it
    until ``stop`` is set (checked between steps), then save its model (atomically)
    to ``save_path``. Like the Train widget's runs, it leaves a core to the viewer.

    While it runs, the objects that existed when it started (napari's whole heap) are
    kept out of Python's full garbage-collection passes (``gc.freeze``): such a pass
    holds the interpreter lock for 0.3-0.5 s with a viewer open, from whichever
    thread happens to allocate, and the training thread allocates enough to start
    one every minute or so; measured under Xvfb, one at the start of every live run
    and 0.44-0.53 s gaps in the middle of some. Newer objects are collected as usual,
    and everything frozen is handed back to the collector when the run ends."""
    use_threads(leave_free=VIEWER_CORES)
    gc.freeze()  # see the docstring
    try:
        live = LiveTraining(*args, **kwargs)
        yield live
        try:
            for event in live.run():
                yield event
                if stop.is_set():
                    live.stop()
        finally:
            live.trainer.save_model(save_path)
    finally:
        gc.unfreeze()
    return live


class LiveTrainWidget(DockWidget):
    """Start live training on an image and its annotation; every edit reaches the
    running trainer within about a second, and "<image> live" shows its latest
    segmentation. Press ``a`` over a predicted object to accept it as a cell."""

    def __init__(self, napari_viewer, session: Session | None = None) -> None:
        super().__init__(napari_viewer)
        viewer = self.viewer
        self.session = session or Session.of(viewer)
        self.image = SteadyComboBox(label="image", choices=lambda _: layers_of(viewer, Image), nullable=True)
        self.annotation = SteadyComboBox(label="annotation", choices=lambda _: layers_of(viewer, Labels), nullable=True)
        self.preview_seconds = FloatSpinBox(label="preview every (s)", value=3.0, min=0.5, max=60.0, step=0.5)
        self.save_path = FileEdit(
            label="save model to",
            mode="w",
            value=free_model_path(stem="live"),
            filter="*.safetensors",
        )
        self.start_button = PushButton(text="Start live training")
        self.stop_button = PushButton(text="Stop", enabled=False)
        # usable once a preview shows predicted objects
        self.accept_button = PushButton(text="Accept all predicted objects in view", enabled=False)
        self.step_label = Label(value="", visible=False)  # shown from the first step on
        controls = form(self.image, self.annotation, self.preview_seconds, self.save_path)
        buttons = side_by_side(self.start_button, self.stop_button)
        self.extend([controls, buttons, self.accept_button, self.step_label, self.status])
        # its settings scroll on a short screen, like the other docks': docked with
        # Annotate, Train and Segment at 1366x768 it made the window 972 px tall (now 901)
        self.controls_area = scrolling(controls, self.native.layout(), grow=False)
        self.live: LiveTraining | None = None
        self.preview: LivePreview | None = None
        self._shown: LivePreview | None = None  # the preview the layer shows
        self._problem: str | None = None  # why the latest edit could not be trained on
        self._running = RUNNING_MESSAGE  # what the status says while all is well
        self._show_step = Throttle(self._show_step_now, parent=self.native)
        self.runner = self.make_runner(
            "live training", self._on_event, self._on_done, self._on_idle, self._on_error, self._on_closed
        )
        # the layers of the latest run: its previews and accepted objects belong to them
        self._image_layer: Image | None = None
        self._annotation_layer: Labels | None = None
        self._ended_why = ""  # why the run stopped by itself, for the status when it has
        self._edits = EditWatcher(self._send_edit, self.native, delay_ms=300)
        self.start_button.changed.connect(self.guarded(self.start))
        self.stop_button.changed.connect(self.stop)
        self.accept_button.changed.connect(self.guarded(self.accept_in_view))
        self.image.changed.connect(lambda _image: match_annotation(self.viewer, self.image, self.annotation))
        choose_pair(self.viewer, self.image, self.annotation)
        self._follower = NewAnnotationFollower(self.annotation)

    def reset_choices(self, *_) -> None:
        super().reset_choices()
        choose_pair(self.viewer, self.image, self.annotation)
        # a running session keeps training the annotation it started from
        self._follower.follow(self.image, switch=not self.runner.busy)
        self._stop_if_removed()

    def _stop_if_removed(self) -> None:
        """Stop the run when its image or annotation has left the layer list: its
        previews would have no place, its edits no source."""
        if not self.runner.busy or self.runner.stopping:
            return
        for kind, layer in (("image", self._image_layer), ("annotation", self._annotation_layer)):
            if layer is not None and layer not in self.viewer.layers:
                self._ended_why = f"the {kind} layer '{layer.name}' was removed: "
                self.stop()
                return

    def _model(self, in_channels: int) -> tuple[UNet, str]:
        """The session's model, which live training goes on teaching, when it is a 2D
        U-Net for images of ``in_channels``; else a new network. With words for the
        status that say which (and why a session model is passed over)."""
        model = self.session.model
        if model is None:
            return live_model(in_channels), "a new network"
        if model.config.ndim == 2 and model.config.in_channels == in_channels:
            return model, f"the session's model, {self.session.source}"
        kind = "a 3D U-Net" if model.config.ndim == 3 else f"for images of {model.config.in_channels} channel(s)"
        return live_model(in_channels), f"a new network (the session's model is {kind})"

    def start(self) -> None:
        if self.runner.busy:
            return
        data, channel_axis = image_data(self.image.value)
        annotation = self.annotation.value
        labels = labels_data(annotation, self.image.value)
        if data.ndim - (channel_axis is not None) != 2:
            raise LayerError(
                f"live training works on one 2D image and {self.image.value.name} is a stack of "
                f"{data.shape[0]} planes: make a plane a layer of its own (layer list: right-click the image > "
                "Split Stack) and annotate that one, or train on the whole stack with the Train widget; images of "
                "several channels train from the command line (napari-unet train --in-channels N)"
            )
        in_channels = data.shape[channel_axis] if channel_axis is not None else 1
        painted = int(np.max(labels)) if labels.size else IGNORE_LABEL  # said before a start that would end at once
        if painted < 0:
            raise LayerError(f"the annotation '{annotation.name}' is empty: paint some cells (and background) first")
        if painted == 0:
            raise LayerError(f"the annotation '{annotation.name}' holds no cells: paint at least one cell")
        self.live = None
        self._image_layer, self._annotation_layer, self._ended_why = self.image.value, annotation, ""
        self._edits.watch(annotation)
        annotation.bind_key(ACCEPT_KEY, lambda _layer: self.guarded(self.accept_under_cursor)(), overwrite=True)
        self.start_button.enabled, self.stop_button.enabled = False, True
        model, which = self._model(in_channels)
        self.status.value = f"starting live training with {which}…"
        self._running = f"{RUNNING_MESSAGE}; {which}"
        self.runner.start(
            live_job,
            Path(self.save_path.value),
            model,
            np.asarray(data),
            labels,
            TrainConfig(device="auto"),
            channel_axis=channel_axis,
            preview_seconds=self.preview_seconds.value,
            name=f"annotation '{annotation.name}'",
        )

    def stop(self, *_) -> None:
        self.status.value = "stopping…"
        self.runner.stop()

    def _view_window(self) -> tuple[slice, slice]:
        """The whole plane when small, else a window around the camera's centre."""
        layer = self._image_layer
        height, width = layer.data.shape[:2] if layer.rgb else layer.data.shape[-2:]
        if height * width <= WHOLE_PLANE_PIXELS:
            return (slice(0, height), slice(0, width))
        centre = layer.world_to_data(self.viewer.camera.center)[-2:]
        y0 = int(np.clip(centre[0] - WINDOW // 2, 0, max(height - WINDOW, 0)))
        x0 = int(np.clip(centre[1] - WINDOW // 2, 0, max(width - WINDOW, 0)))
        return (slice(y0, y0 + WINDOW), slice(x0, x0 + WINDOW))

    def _show_step_now(self, event: StepProgress) -> None:
        self.step_label.value = f"step {event.step}, loss {event.loss:.4f}"
        self.step_label.visible = True

    def _send_edit(self) -> None:
        if self._problem is not None and self.status.value == self._problem:
            self.status.value = self._running  # this edit may mend it; if not, the problem comes back
        self._problem = None
        if self.live is not None and self.runner.busy and not self.runner.stopping:
            self.live.update(np.asarray(self._annotation_layer.data))
            self.live.look_at(self._view_window())

    def _on_event(self, event) -> None:
        if isinstance(event, LiveTraining):
            self.live = event
            event.look_at(self._view_window())
            self._send_edit()  # what was painted while it started
            self.session.set_model(event.model, "live training")
            self.status.value = self._running
        elif isinstance(event, StepProgress):
            self._show_step(event)
        elif isinstance(event, AnnotationProblem):
            kept = "" if event.trained else " (training goes on with the previous annotation)"
            self._problem = f"⚠ {event.message}{kept}"
            self.status.value = self._problem
        elif isinstance(event, LivePreview):
            self.preview = event
            self.accept_button.enabled = True
            self._show(event)

    def _show(self, preview: LivePreview) -> None:
        """Put the preview into "<image> live" (full plane size); the user's selected
        layer and its mode stay (``put_layer``). Once that layer exists, only the
        previous and the new window are written into it, in place."""
        image = self._image_layer
        if image not in self.viewer.layers:  # removed: the run is stopping
            return
        height, width = image.data.shape[:2] if image.rgb else image.data.shape[-2:]
        name = f"{image.name} live"
        layer = helper_layer(self.viewer, name, "preview")
        if isinstance(layer, Labels) and layer.data.shape == (height, width) and self._shown is not None:
            layer.data[self._shown.window] = 0
            layer.data[preview.window] = preview.labels
            layer.refresh()
        else:
            full = np.zeros((height, width), np.int32)
            full[preview.window] = preview.labels
            put_layer(self.viewer, name, full, "labels", image, role="preview", opacity=0.5)
        self._shown = preview

    def _full_preview(self) -> np.ndarray:
        if self.preview is None:
            raise LayerError("no preview yet: start live training and wait for the first preview")
        if self._annotation_layer not in self.viewer.layers:
            raise LayerError(
                f"the annotation '{self._annotation_layer.name}' the previews were made for was removed: "
                "start live training again on an annotation"
            )
        shown = helper_layer(self.viewer, f"{self._image_layer.name} live", "preview")
        if shown is None:
            raise LayerError("the live preview layer was removed: wait for the next preview")
        return np.asarray(shown.data)

    def accept_under_cursor(self) -> None:
        """Accept the predicted object under the mouse as a cell of the annotation."""
        preview = self._full_preview()
        layer = self._annotation_layer
        position = layer.world_to_data(self.viewer.cursor.position)[-2:]
        y, x = (round(float(v)) for v in position)
        if not (0 <= y < preview.shape[0] and 0 <= x < preview.shape[1]) or preview[y, x] == 0:
            raise LayerError("no predicted object under the cursor")
        data = np.array(layer.data)
        new_id = accept_object(data, preview, int(preview[y, x]))
        if not new_id:
            raise LayerError("the object under the cursor lies on pixels you have annotated already")
        write_as_one_edit(layer, np.nonzero(data == new_id), new_id)
        self.status.value = f"accepted the object as cell {new_id} (Ctrl+Z undoes it)"

    def accept_in_view(self) -> None:
        """Accept every predicted object that lies on unannotated pixels."""
        preview = self._full_preview()
        layer = self._annotation_layer
        data = np.array(layer.data)
        if data.min() > IGNORE_LABEL:
            raise LayerError("the annotation has no unannotated (-1) pixels to accept objects into")
        count = accept_all(data, preview)
        changed = np.nonzero(data != np.asarray(layer.data))
        write_as_one_edit(layer, changed, data[changed])
        self.status.value = f"accepted {count} predicted object(s) (Ctrl+Z undoes it)"

    def _keep_model(self, live: LiveTraining) -> Path:
        """Make the run's model the session's; returns the file it was saved to."""
        path = Path(self.save_path.value)
        self.session.set_model(live.model, f"live training ({live.trainer.step} steps)", path)
        return path

    def _on_done(self, live: LiveTraining) -> None:
        self._show_step.flush()
        path = self._keep_model(live)
        self.status.value = (
            f"{self._ended_why}stopped at step {live.trainer.step}; model saved to {path} and kept in the session"
        )
        self.save_path.value = free_model_path(path.parent, "live")  # the next run never overwrites this one

    def _on_closed(self, live: LiveTraining) -> None:
        """The dock closed during a run, which stopped it: its model stays the session's."""
        path = self._keep_model(live)
        show_info(
            f"napari-unet: live training stopped as its dock closed; model saved to {path} and kept in the session"
        )

    def shutdown(self) -> None:
        """Stop the run (see :class:`DockWidget`) and give the accept key back to the
        annotation: the dock that answered it is closing."""
        super().shutdown()
        layer, self._annotation_layer = self._annotation_layer, None
        if layer is not None:
            layer.bind_key(ACCEPT_KEY, None)

    def _on_error(self, message: str) -> None:
        self.status.value = f"⚠ {message}"

    def _on_idle(self) -> None:
        self.start_button.enabled, self.stop_button.enabled = True, False
        self._edits.watch(None)
