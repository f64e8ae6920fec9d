"""Segment an image layer with overlap-tile prediction in a worker thread."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels

from .._session import Session, summary
from ..core.checkpoint import ModelFileError
from ..core.config import InstanceConfig
from ..core.geometry import is_volume
from ..core.instances import foreground as probabilities_foreground
from ..core.instances import objects_counted
from ..core.layout import ImageShapeError, axes_at_minus3
from ..core.model import UNet
from ..core.spacing import voxel_shape_note
from ._base import DockWidget, wrap_lines
from ._choices import NO_MODEL_FILE, chosen_file, device_choices, precision_choices, reset_tile_choices, tile_choices
from ._forms import SteadyComboBox, SteadyRadioButtons, form, scrolling, side_by_side
from ._jobs import PlaneOfStack, SegmentationDone, read_model_job, segmentation_job
from ._layers import (
    LayerError,
    follow_placement,
    helper_layer,
    layer_spacing,
    layers_of,
    put_layer,
    selection_kept,
    spatial_shape,
    with_layer_axes,
)
from ._stream import StoreDone, StoreView, lazy_image_data, store_for, store_job, wants_store
from .export import ModelExport

#: What the status adds to a run into a zarr store with "split touching cells" ticked.
STORE_KEEPS_TOUCHING = (
    "touching cells are not split in a zarr store (the split needs whole images in memory): cells the network "
    "joined stay one object"
)


def with_notes(status: str, notes) -> str:
    """``status`` with each of ``notes`` on a line of its own after it."""
    return status + "".join(f"\n⚠ {note}" for note in notes)


CURRENT_PLANE, ALL_PLANES, AS_VOLUME = "current plane", "all planes", "all planes as a volume"


class SegmentWidget(DockWidget):
    """Image layer + model -> "<image> labels" layer (and optionally probabilities)."""

    def __init__(self, napari_viewer, session: Session | None = None) -> None:
        super().__init__(napari_viewer)
        viewer = self.viewer
        self.session = session or Session.of(viewer)
        self.image = SteadyComboBox(label="image", choices=lambda _: layers_of(viewer, Image), nullable=True)
        self.model_source = SteadyRadioButtons(
            label="model", choices=["session model", "file"], value="session model", orientation="horizontal"
        )
        self.model_file = FileEdit(label="model file", mode="r", filter="*.safetensors *.zip")
        self.model_info = Label(value=self.session.describe())
        self._file_model: UNet | ModelFileError | None = None  # read from the chosen file
        self._reading: Path | None = None  # the file read last (or being read)
        self._model_choice: tuple | None = None  # (source, file, session model) the model info describes
        self._placeholders = []
        # valid sizes for the chosen model's depth, recomputed whenever napari resets the choices
        self.tile = ComboBox(label="tile", choices=lambda _: self._tile_choices(), value=None)
        self.device = ComboBox(label="device", choices=device_choices(), value="auto")
        self.precision = ComboBox(label="precision", choices=precision_choices(), value="auto")
        self.planes = ComboBox(
            label="stacks",
            choices=[CURRENT_PLANE, ALL_PLANES, AS_VOLUME],
            value=ALL_PLANES,
            tooltip="what a 2D model segments of a stack; 'as a volume': every plane, then one labelling of the "
            "whole stack (with the layer's scale as voxel size), so that a cell keeps one id across planes "
            "(3D models always segment volumes)",
        )
        self.probabilities = CheckBox(text="also show probabilities", value=False)
        self.tta = CheckBox(
            text="test-time augmentation (8x slower)",
            value=False,
            tooltip="average the predictions of the 8 flips and quarter turns of the image",
        )
        self.rescale = FloatSpinBox(
            label="rescale",
            value=1.0,
            min=0.125,
            max=8.0,
            step=0.25,
            tooltip="resize the image by this factor before the network sees it, and the result back: 2 where the "
            "cells look half as large as those the model learned (another magnification); sizes below stay the "
            "model's, in the pixels it sees",
        )
        self.split = CheckBox(
            text="split touching cells",
            value=True,
            tooltip="split an object where the probability dips between two peaks, or where its shape is that "
            "of several cells (the model's settings); off: keep the network's connected components, as the paper does",
        )
        self.min_size = SpinBox(
            label="smallest object (px)",
            value=InstanceConfig().min_size,
            min=0,
            max=10**9,
            tooltip="drop objects of fewer pixels (voxels for 3D models; a stack as a volume: a ball of that "
            "cross-section); set from the model, whose training chose it from the annotated cells; objects "
            "at the image's border need the model's edge factor times that (1.25 when training chose it)",
        )
        self.to_store = CheckBox(text="write labels to a zarr store (always for very large images)", value=False)
        self.store = FileEdit(label="store", mode="d", value="", tooltip="empty: a temporary folder")
        self.run_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="tiles", value=0, min=0, max=1)
        self.settings = form(
            self.image, self.model_source, self.model_file, self.model_info, self.tile, self.device, self.precision,
            self.planes, self.probabilities, self.tta, self.rescale, self.split, self.min_size, self.to_store,
            self.store,
        )  # fmt: skip
        self.exporter = ModelExport(self, self.model, lambda: self.image.value)
        buttons = side_by_side(self.run_button, self.cancel_button)
        self.extend([self.settings, buttons, self.exporter.button, form(self.progress), self.status])
        self.settings_area = scrolling(self.settings, self.native.layout())  # Segment stays in view
        wrap_lines(self.model_info)
        self.runner = self.make_runner("segmentation", self._on_progress, self._on_done, self._on_idle, self._on_error)
        self.file_runner = self.make_runner(
            "reading the model file", None, self._on_file_read, self._on_file_reader_idle, self._on_error
        )
        self.session.model_changed.connect(self._on_model_changed)
        self.model_source.changed.connect(self._on_model_changed)
        self.model_file.changed.connect(self._on_model_changed)
        self.run_button.changed.connect(self.guarded(self.run))
        self.cancel_button.changed.connect(self.cancel)
        self.image.changed.connect(self._reset_progress)
        self.image.changed.connect(self._suggest_stacks)
        self._on_model_changed()
        self._preselect()

    def reset_choices(self, *_) -> None:
        super().reset_choices()
        self._preselect()

    def _preselect(self) -> None:
        """Choose the selected image layer, or else the newest one, when none is chosen."""
        if self.image.value is not None:
            return
        images = [layer for layer in self.image.choices if layer is not None]
        active = self.viewer.layers.selection.active
        if active in images:
            self.image.value = active
        elif images:
            self.image.value = images[-1]

    def _suggest_stacks(self, *_) -> None:
        """A volume (:func:`~napari_unet.core.geometry.is_volume` at the layer's scale)
        is labelled as a volume by a 2D model, other stacks plane by plane; so are
        stacks too large for memory, which go plane by plane into a zarr store. The
        choice is shown for stacks only, as the chosen model reads them: a 2-channel
        layer (2, H, W) is one image to a 2-channel model, and a 3D model labels
        whole volumes."""
        layer = self.image.value
        self.planes.visible = self._offers_planes(layer)
        if self._offers_planes(layer):
            volume = is_volume(spatial_shape(layer), layer_spacing(layer)) and not wants_store(layer, False)
            self.planes.value = AS_VOLUME if volume else ALL_PLANES

    def _offers_planes(self, layer: Image | None) -> bool:
        model = self._known_model()
        return layer is not None and self._stack_ndim(layer) > 0 and (model is None or model.config.ndim == 2)

    def _stack_ndim(self, layer: Image) -> int:
        """How many leading axes of ``layer``'s data hold planes for the chosen model
        (a single-channel model is assumed while none is chosen)."""
        model = self._known_model()
        in_channels = model.config.in_channels if model is not None else 1
        try:
            return len(axes_at_minus3(np.shape(layer.data), in_channels, -1 if layer.rgb else None)) - 3
        except ImageShapeError:  # the model cannot read this layer: running says why
            return len(spatial_shape(layer)) - 2

    def _reset_progress(self, *_) -> None:
        self.progress.max = 1
        self.progress.value = 0

    def _on_model_changed(self, *_) -> None:
        """Describe the chosen model and fit the settings to it; a model file is read
        in a worker first (the paper's network takes ~0.2 s, a bioimage.io zip longer)."""
        self._file_model = None
        choice = (self.model_source.value, str(self.model_file.value), self.session.model)
        if choice != self._model_choice and self.status.value.startswith("⚠"):
            self.status.value = ""  # said of the model chosen before
        self._model_choice = choice
        path = chosen_file(self.model_file.value)
        if self.model_source.value == "file" and path is None:
            self.model_info.value = NO_MODEL_FILE
        elif self.model_source.value == "file":
            self.model_info.value = f"reading {path.name}…"
            if not self.file_runner.busy:  # else the file is read when the running read ends
                self._read(path)
        else:
            self.model_info.value = self.session.describe()
        self._fit_settings_to_model()

    def _on_file_read(self, result) -> None:
        path, model = result
        if self.model_source.value != "file" or chosen_file(self.model_file.value) != path:
            return  # chosen before the user's latest choice
        self._file_model = model
        self.model_info.value = (
            f"⚠ {model}" if isinstance(model, ModelFileError) else f"file {path.name} ({summary(model)})"
        )
        self._fit_settings_to_model()

    def _read(self, path: Path) -> None:
        self._reading = path
        self.file_runner.start(read_model_job, path)

    def _on_file_reader_idle(self) -> None:
        chosen = chosen_file(self.model_file.value)
        if self.model_source.value == "file" and chosen is not None and chosen != self._reading:
            self._read(chosen)  # chosen while the previous file was read

    def _fit_settings_to_model(self) -> None:
        """Smallest object, tile sizes and the stacks choice for the chosen model."""
        model = self._known_model()
        if model is not None:
            self.min_size.value = model.spec.instances.min_size
            self.min_size.label = f"smallest object ({'voxels' if model.config.ndim == 3 else 'px'})"
        reset_tile_choices(self.tile)
        self.planes.visible = self._offers_planes(self.image.value)

    def _known_model(self) -> UNet | None:
        """The chosen model when it is loaded (the session's, or a file read), else None."""
        if self.model_source.value == "file":
            return self._file_model if isinstance(self._file_model, UNet) else None
        return self.session.model

    def _tile_choices(self) -> list[tuple[str, int | None]]:
        """The tile sizes valid for the chosen model (before one is known: for depth 4)."""
        model = self._known_model()
        return tile_choices(model.config.depth, model.config.ndim) if model is not None else tile_choices(4)

    def model(self) -> UNet:
        if self.model_source.value == "file":
            path = chosen_file(self.model_file.value)
            if path is None:
                raise LayerError(NO_MODEL_FILE)
            if isinstance(self._file_model, ModelFileError):
                raise self._file_model
            if self._file_model is None:
                raise LayerError(f"still reading {path.name}: try again in a moment")
            return self._file_model
        if self.session.model is None:
            raise LayerError("no model in this session: train one, open a model file, or choose 'file'")
        return self.session.model

    def _plane_index(self, layer: Image) -> tuple[int, ...]:
        """The stack position of the viewer's current plane in ``layer``'s data."""
        stack_ndim = self._stack_ndim(layer)
        world = self.viewer.dims.point
        data_point = layer.world_to_data(world[-layer.ndim :])
        return tuple(int(np.clip(round(p), 0, n - 1)) for p, n in zip(data_point[:stack_ndim], layer.data.shape))

    def run(self) -> None:
        if self.runner.busy:
            return
        layer = self.image.value
        data, channel_axis = lazy_image_data(layer)  # dask / zarr / multiscale data stays unread
        model = self.model()
        self._target, self._store_view = (layer, None), None
        self._ndim = model.config.ndim
        volumes = self._ndim == 3  # a 3D model segments whole volumes into one 3D labels layer
        if volumes and len(spatial_shape(layer)) < 3:
            raise LayerError(f"the model is a 3D U-Net and {layer.name} is one plane: choose a stack or a 2D model")
        # notes the status shows beside the result's own
        self._notes = ()
        spacing = layer_spacing(layer)
        if volumes and spacing is not None and set(spacing) != {1.0}:  # napari's scale of 1: nothing recorded
            note = voxel_shape_note(spacing, model.config.spacing, f"the scale of {layer.name} gives")
            self._notes = (note,) if note else ()
        # the stacks choice is shown, and applies, for stacks alone: kept from a stack segmented
        # before, it refused a plane chosen after it, with the choice hidden
        as_volume = self.planes.value == AS_VOLUME and self._offers_planes(layer)
        if as_volume and self.to_store.value:
            raise LayerError("a volume is labelled at once, not plane by plane into a store: untick the zarr store")
        if not volumes and not as_volume and wants_store(layer, self.to_store.value):
            if self.rescale.value != 1.0:
                raise LayerError(
                    "rescale resizes whole images in memory, not plane by plane into a zarr store: set rescale 1, "
                    "or untick the zarr store where the image fits in memory"
                )
            return self._run_into_store(layer, model, data, channel_axis)
        if self.planes.value == CURRENT_PLANE and self._offers_planes(layer):
            index = self._plane_index(layer)
            data = data[index]
            self._target = (layer, index)
        self.status.value = f"segmenting {layer.name}…"
        self._reset_progress()
        self.progress.label = "tiles"
        self._prepare_result_layers(layer)
        plane_of = None
        if self._target[1] is not None:  # numbered after the other planes' objects, in the worker
            shown = helper_layer(self.viewer, f"{layer.name} labels", "segmentation").data
            stack = shown if isinstance(shown, np.ndarray) else np.zeros(spatial_shape(layer), np.uint16)
            plane_of = PlaneOfStack(stack, self._target[1])  # (a store-backed layer is replaced)
        self.cancel_button.enabled, self.run_button.enabled = True, False
        options = {
            "tile": self.tile.value,
            "device": self.device.value,
            "precision": self.precision.value,
            "channel_axis": channel_axis,
            "tta": self.tta.value,
            "rescale": self.rescale.value,
            "instances": self._instances(model),
            "as_volume": as_volume,
            "spacing": layer_spacing(layer) if as_volume else None,
        }
        keep = self.probabilities.value
        self.runner.start(segmentation_job, model, data, keep_probabilities=keep, plane_of=plane_of, **options)

    def cancel(self, *_) -> None:
        """Stop the segmentation after the tile or chunk in hand (a chunk of a store can
        take a second or more), saying so at once."""
        if self.runner.busy:
            self.runner.stop()
            self.cancel_button.enabled = False
            self.status.value = "cancelling…"

    def _instances(self, model: UNet) -> InstanceConfig:
        """The model's instance settings with this widget's split and smallest object."""
        instances = model.spec.instances if self.split.value else model.spec.instances.components()
        return replace(instances, min_size=self.min_size.value)

    def _run_into_store(self, layer: Image, model: UNet, data, channel_axis) -> None:
        """Stream all planes into a zarr store shown as a labels layer that fills in."""
        out, resume = store_for(layer, self.store.value)
        self._store_view = StoreView(self.viewer, f"{layer.name} labels", out, layer)
        instances = self._instances(model)
        if instances != instances.components():  # the in-memory count had 2400 more nuclei of 8300 (a user's walk)
            asked = not wants_store(layer, False)  # the image would fit in memory
            self._notes = (STORE_KEEPS_TOUCHING + ("; untick the zarr store to split them" if asked else ""),)
        self.status.value = with_notes(f"segmenting {layer.name} into {out}…", self._notes)
        self.progress.value = 0
        self.progress.label = "chunks"  # a store fills in chunk by chunk
        self.cancel_button.enabled, self.run_button.enabled = True, False
        options = {"tile": self.tile.value, "device": self.device.value, "precision": self.precision.value}
        self.runner.start(
            store_job, model, data, out, resume=resume, channel_axis=channel_axis, instances=instances,
            probabilities=self.probabilities.value, **options,
        )  # fmt: skip

    def _prepare_result_layers(self, layer: Image) -> None:
        """Add the (hidden, empty) result layers now, if they do not exist yet: adding
        a layer costs napari a noticeable moment, better spent at the click than when
        the result arrives (while the user may be painting). Removed again if the run
        is cancelled or fails."""
        shape = spatial_shape(layer)
        wanted = [(f"{layer.name} labels", np.uint16, "labels", "segmentation", {})]
        if self.probabilities.value:
            wanted.append((f"{layer.name} probability", np.float32, "image", "probability", {"colormap": "viridis"}))
        self._placeholders = []
        for name, dtype, kind, role, options in wanted:
            existing = helper_layer(self.viewer, name, role)
            if existing is not None and existing.data.shape == shape:
                continue
            empty = np.zeros(shape, dtype)
            added = put_layer(self.viewer, name, empty, kind, layer, role=role, visible=False, **options)
            self._placeholders.append(added)

    def _drop_placeholders(self) -> None:
        with selection_kept(self.viewer):
            for placeholder in self._placeholders:
                if placeholder in self.viewer.layers:
                    self.viewer.layers.remove(placeholder)
        self._placeholders = []

    def _on_progress(self, progress) -> None:
        self.progress.max = progress.total
        self.progress.value = progress.done
        if self._store_view is not None:
            self._store_view.update(progress)

    def _on_done(self, result: SegmentationDone | StoreDone | None) -> None:
        if result is None:
            view = getattr(self, "_store_view", None)
            if view is None:
                self.status.value = "cancelled"
            else:
                self.store.value = view.out  # so that Segment again resumes it, also after a temporary store
                self.status.value = f"cancelled: Segment again to resume the store {view.out}"
            self._reset_progress()
            self._drop_placeholders()
            return
        if isinstance(result, StoreDone):
            self._store_view.finish()
            objects = objects_counted(result.result.n_objects)
            self.status.value = with_notes(f"{self._store_view.name}: {objects} in {result.result.path}", self._notes)
            return
        layer, index = self._target
        if layer not in self.viewer.layers:  # a layer of labels for it would lie over nothing
            self._drop_placeholders()
            self.status.value = (
                f"'{layer.name}' was removed while it was segmented: its labels ({result.found}) are not added"
            )
            return
        self._placeholders = []
        name = f"{layer.name} labels"
        labels = with_layer_axes(result.labels, layer)
        if index is None or labels.shape == spatial_shape(layer):
            labels_layer = put_layer(self.viewer, name, labels, "labels", layer, role="segmentation", visible=True)
        else:
            labels_layer = self._show_plane(layer, index, labels)
        if result.probabilities is not None:
            foreground = probabilities_foreground(result.probabilities, self._ndim).astype(np.float32, copy=False)
            foreground = with_layer_axes(foreground, layer)
            shown = f"{layer.name} probability"
            put_layer(
                self.viewer, shown, foreground, "image", layer, role="probability", colormap="viridis", visible=True
            )
        notes = (*self._notes, *result.notes)
        self.status.value = with_notes(f"{labels_layer.name}: {result.found}", notes)

    def _show_plane(self, layer: Image, index: tuple[int, ...], plane: np.ndarray) -> Labels:
        """Write the segmented ``plane`` at ``index`` into ``layer``'s labels layer in
        place (the rest of the stack, maybe large, is neither copied nor re-sent); a
        labels layer removed or replaced meanwhile is made anew. Returns that layer."""
        name = f"{layer.name} labels"
        shown = helper_layer(self.viewer, name, "segmentation")
        data = None if shown is None else shown.data
        if not isinstance(data, np.ndarray) or data.shape != spatial_shape(layer) or data.dtype != plane.dtype:
            stack = np.zeros(spatial_shape(layer), plane.dtype)
            stack[index] = plane
            return put_layer(self.viewer, name, stack, "labels", layer, role="segmentation", visible=True)
        data[index] = plane
        follow_placement(shown, layer)
        shown.refresh()
        shown.visible = True
        return shown

    def _on_error(self, message: str) -> None:
        self.status.value = f"⚠ {message}"
        self._drop_placeholders()

    def _on_idle(self) -> None:
        self.cancel_button.enabled, self.run_button.enabled = False, True
