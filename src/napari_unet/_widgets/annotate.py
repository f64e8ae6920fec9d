"""Annotate cells: an annotation layer per image that starts unannotated everywhere.

Every pixel of a new annotation is -1 (unannotated: training ignores it). Painting
cells (1, 2, ...) and background (0) marks what the user vouches for, so a few cells
with some background around them are enough; "rest ... is background" finishes a
fully annotated image or plane by turning only its unannotated pixels into 0. No
action overwrites painted pixels.

The counts line and the highlight of touching cells follow every stroke
(:mod:`._tracking`).
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Label, PushButton, SpinBox
from napari.layers import Image, Labels
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QTimer

from ..core.annotation import AnnotationStats, annotation_dtype, as_signed, new_annotation
from ..core.config import IGNORE_LABEL
from ..core.label_checks import labels_warning
from ._base import DockWidget, wrap_lines
from ._forms import SteadyComboBox, form, scrolling
from ._layers import (
    ANNOTATION,
    ROLE,
    LayerError,
    annotation_colormap,
    annotations_for,
    helper_layer,
    labels_data,
    layers_of,
    placement_on,
    role_of,
    spatial_shape,
    unique_name,
)
from ._strokes import forget_history, write_as_one_edit
from ._tracking import AnnotationTracker, touching_name

NEW_CELL_KEY = "n"
#: Pixels converted per event-loop turn by "rest ... is background" (about 10 ms).
FILL_CHUNK = 1 << 22
#: Fills of up to this many pixels are one undo step; napari records every pixel
#: (about 15 ms for 512x512, 0.5 s for 2048x2048), so larger ones are not undoable.
UNDOABLE_FILL = 1 << 19


def annotation_name(image: Image) -> str:
    return f"{image.name} annotation"


def current_plane(viewer, layer, stack_ndim: int) -> tuple[int, ...]:
    """The index of the viewer's current plane in the leading ``stack_ndim`` axes of ``layer``."""
    world = viewer.dims.point
    data_point = layer.world_to_data(world[-layer.ndim :])
    return tuple(int(np.clip(round(p), 0, n - 1)) for p, n in zip(data_point[:stack_ndim], layer.data.shape))


def allocation_job(shape: tuple[int, ...], *, stop) -> np.ndarray:
    """A new annotation (-1 everywhere), made in a worker: large ones take a while."""
    return new_annotation(shape)


class AnnotateWidget(DockWidget):
    """Paint cells (1, 2, ...) and background (0) on an annotation that starts
    unannotated (-1); see the module docstring."""

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        viewer = self.viewer
        self.image = SteadyComboBox(label="image", choices=lambda _: layers_of(viewer, Image))
        self.create = PushButton(text="Create annotation layer for image")
        self.annotation = SteadyComboBox(label="annotation", choices=lambda _: layers_of(viewer, Labels), nullable=True)
        self.new_cell = PushButton(text=f"Paint a new cell ({NEW_CELL_KEY})")
        self.background = PushButton(text="Paint background (0)")
        self.background.tooltip = (
            "paints background on unannotated pixels only, so painted cells stay whole (napari's 'preserve "
            "labels' is turned on; Paint a new cell and Erase turn it off)"
        )
        self.erase = PushButton(text="Erase to unannotated (-1)")
        self.rest_of_plane = PushButton(text="Rest of this plane is background")
        self.rest_of_image = PushButton(text="Rest of the image is background")
        self.brush_size = SpinBox(label="brush size", value=10, min=1, max=200)
        self.contours = CheckBox(text="show contours", value=False)
        self.show_touching = CheckBox(text="highlight touching cells and unannotated gaps", value=True)
        self.source = ComboBox(
            label="segmentation", choices=lambda _: layers_of(viewer, Labels, allow={"segmentation"}), nullable=True
        )
        self.copy = PushButton(text="New annotation from segmentation")
        self.counts = wrap_lines(Label(value="no annotation layer"))
        self.controls = form(
            self.image, self.create, self.annotation, self.new_cell, self.background, self.erase,
            self.rest_of_plane, self.rest_of_image, self.brush_size, self.contours, self.show_touching,
            self.source, self.copy,
        )  # fmt: skip
        self.extend([self.controls, self.counts, self.status])
        # With Train and Segment docked below it on a laptop screen, the controls
        # scroll; the counts and messages that answer each stroke stay in view.
        self.controls_area = scrolling(self.controls, self.native.layout())
        self.rest_of_plane.visible = False
        self.create.changed.connect(self.guarded(self.create_annotation))
        self.new_cell.changed.connect(self.guarded(self.select_new_cell))
        self.background.changed.connect(self.guarded(self.select_background))
        self.erase.changed.connect(self.guarded(self.select_erase))
        self.rest_of_plane.changed.connect(self.guarded(lambda: self.fill_rest(plane_only=True)))
        self.rest_of_image.changed.connect(self.guarded(lambda: self.fill_rest(plane_only=False)))
        self.copy.changed.connect(self.guarded(self.start_from_segmentation))
        self.brush_size.changed.connect(self._apply_display)
        self.contours.changed.connect(self._apply_display)
        self.annotation.changed.connect(self._adopt)
        self.image.changed.connect(self._preselect)
        self.tracker = AnnotationTracker(self, self.counts, self.image, self.show_touching)
        self._known_stats: AnnotationStats | None = None
        self._layer: Labels | None = None
        self._converted: set[int] = set()
        self._filling = None
        self.creator = self.make_runner("creating an annotation", None, self._created, lambda: None, self._failed)
        self._creating_for: Image | None = None
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self._preselect()

    def shutdown(self) -> None:
        self.viewer.layers.events.removed.disconnect(self._on_layer_removed)
        super().shutdown()

    def _on_layer_removed(self, event) -> None:
        """An annotation deleted from the layer list takes its touching-cells helper
        layer with it (removed on the next turn, outside napari's removal)."""
        removed = event.value
        if isinstance(removed, Labels) and role_of(removed) == ANNOTATION:
            helper = helper_layer(self.viewer, touching_name(removed), "touching")
            if helper is not None:
                QTimer.singleShot(0, lambda: helper in self.viewer.layers and self.viewer.layers.remove(helper))

    def reset_choices(self, *_) -> None:
        super().reset_choices()
        self._preselect()

    def _preselect(self, *_) -> None:
        """When no annotation is chosen: the chosen image's annotation, if one made
        here, or one named as this widget names them (the samples' "<image>
        annotation"), exists; another labels layer is left alone (choosing it
        converts it)."""
        image = self.image.value
        if self.annotation.value is not None or image is None:
            return
        candidates = annotations_for(self.viewer, image, self.annotation.choices)
        named = annotation_name(image)
        found = [layer for layer in candidates if role_of(layer) == ANNOTATION or layer.name == named]
        if found:
            self.annotation.value = found[0]

    # -- actions -------------------------------------------------------------

    def _layer_or_raise(self) -> Labels:
        layer = self.annotation.value
        if layer is None:
            raise LayerError("no annotation layer: create one for the image first")
        return layer

    def _add_annotation(self, data: np.ndarray, image: Image) -> Labels:
        """A new annotation layer on ``image``'s grid, under a name no other layer has."""
        name = unique_name(self.viewer, annotation_name(image))
        ndim = data.ndim
        layer = self.viewer.add_labels(
            data,
            name=name,
            **placement_on(image, ndim),
            colormap=annotation_colormap(),
            metadata={ROLE: ANNOTATION},
        )
        self.annotation.reset_choices()
        self.annotation.value = layer
        return layer

    def create_annotation(self) -> Labels:
        """A new annotation layer for the chosen image, unannotated (-1) everywhere."""
        image = self.image.value
        if image is None:
            raise LayerError("choose an image layer first")
        shape = spatial_shape(image)
        if int(np.prod(shape)) > FILL_CHUNK:  # filling hundreds of MB: in a worker, then added
            if not self.creator.busy:
                self.status.value = "creating the annotation layer…"
                self._creating_for = image
                self.creator.start(allocation_job, shape)
            return None
        return self._created(new_annotation(shape), image)

    def _created(self, data: np.ndarray, image: Image | None = None) -> Labels | None:
        image = image or self._creating_for
        if image not in self.viewer.layers:
            return None
        self._known_stats = AnnotationStats.unannotated(data.shape)  # known without looking: no recount
        layer = self._add_annotation(data, image)
        self.select_new_cell()
        self._say_until_edited(f"'{layer.name}': unannotated everywhere; paint cells and some background around them")
        return layer

    def _say_until_edited(self, message: str) -> None:
        """Show ``message`` until the next edit of the annotation (a stroke, an undo)."""
        self.status.value = self.tracker.hint = message

    def report(self, message: str) -> None:
        """A refused action's reason, shown until the next edit (it went stale there)."""
        super().report(message)
        self.tracker.hint = self.status.value

    def select_new_cell(self) -> None:
        """Paint the next free cell id (unique across a whole stack)."""
        layer = self._layer_or_raise()
        largest = self.tracker.largest_id(layer)
        if largest + 1 >= np.iinfo(np.int16).max and layer.data.dtype.itemsize < 4:
            layer.data = np.asarray(layer.data).astype(np.int32)
        layer.selected_label = largest + 1
        layer.preserve_labels = False  # a cell may be painted over background (see select_background)
        layer.mode = "paint"

    def select_background(self) -> None:
        """The background brush paints unannotated pixels alone (napari's "preserve
        labels" turned on): a stroke between touching cells that strays over one
        leaves it whole. A new user's broad strokes had turned 3424 px of painted
        nuclei into background, and their model's AP@0.5 fell from 1.0 to 0.57."""
        layer = self._layer_or_raise()
        layer.selected_label = 0
        layer.preserve_labels = True
        layer.mode = "paint"

    def select_erase(self) -> None:
        """The eraser: it paints -1, so erased pixels become unannotated again."""
        layer = self._layer_or_raise()
        layer.preserve_labels = False  # (it would erase only the label selected before)
        layer.mode = "erase"

    def fill_rest(self, plane_only: bool) -> None:
        """Turn the unannotated pixels of the current plane (or of the whole
        annotation) into background; painted pixels stay as they are."""
        layer = self._layer_or_raise()
        if self._filling is not None:
            return
        data = layer.data
        stack_ndim = data.ndim - 2
        if plane_only and stack_ndim > 0:
            planes = [current_plane(self.viewer, layer, stack_ndim)]
        else:
            planes = list(np.ndindex(*data.shape[:-2]))
        if len(planes) * data.shape[-2] * data.shape[-1] <= UNDOABLE_FILL:
            return self._fill_undoably(layer, planes)
        rows_per_chunk = max(1, FILL_CHUNK // data.shape[-1])
        steps = [(plane, start) for plane in planes for start in range(0, data.shape[-2], rows_per_chunk)]

        def convert(plane, start):
            part = data[plane][start : start + rows_per_chunk]
            np.putmask(part, part == IGNORE_LABEL, 0)

        self.tracker.edited = False
        if data.size <= FILL_CHUNK:
            for step in steps:
                convert(*step)
            self._filled(layer, planes)
            return
        self._filling = iter(steps)
        self.rest_of_image.enabled = self.rest_of_plane.enabled = False
        self.status.value = "marking the rest as background…"

        def next_chunk():
            step = next(self._filling, None)
            if step is None:
                self._filling = None
                self.rest_of_image.enabled = self.rest_of_plane.enabled = True
                self._filled(layer, planes)
                return
            convert(*step)
            QTimer.singleShot(0, next_chunk)  # let the event loop run between chunks

        QTimer.singleShot(0, next_chunk)

    def _fill_undoably(self, layer: Labels, planes: list[tuple[int, ...]]) -> None:
        """The unannotated pixels of ``planes`` become background in one undoable
        edit, counted like a stroke."""
        data = np.asarray(layer.data)
        found = []
        for plane in planes:
            rows, cols = np.nonzero(data[plane] == IGNORE_LABEL)
            found.append((*(np.full(rows.size, i) for i in plane), rows, cols))
        indices = tuple(np.concatenate(axis) for axis in zip(*found))
        write_as_one_edit(layer, indices, 0)
        self.tracker.count_now()  # the fill itself is no later edit that makes the message below stale
        where = "this plane" if len(planes) == 1 and data.ndim > 2 else "the image"
        self._say_until_edited(f"the rest of {where} is background now (Ctrl+Z undoes it)")

    def _filled(self, layer: Labels, planes) -> None:
        where = "this plane" if len(planes) == 1 and layer.data.ndim > 2 else "the image"
        if layer is not self._layer:
            return
        self.tracker.filled(planes)
        forget_history(layer)
        self._say_until_edited(f"the rest of {where} is background now (too large to undo: Ctrl+Z starts from here)")

    def start_from_segmentation(self) -> None:
        """A new annotation holding a copy of a predicted labels layer, for correction
        and retraining (an existing annotation is never overwritten)."""
        source = self.source.value
        if source is None:
            raise LayerError(
                "choose the segmentation to start from: a labels layer that Segment with U-Net made "
                "(segment the image first)"
            )
        image = self.image.value
        if image is None:
            raise LayerError("choose the image the segmentation belongs to")
        data = labels_data(source, image)
        largest = int(data.max()) if data.size else 0
        layer = self._add_annotation(np.asarray(data).astype(annotation_dtype(largest)), image)
        self.select_new_cell()
        self._say_until_edited(
            f"'{layer.name}' is a copy of '{source.name}': every pixel outside its objects is background now, so "
            f"paint the cells it missed (or erase to unannotated where you are unsure), hide '{source.name}' to "
            "see your corrections, then train"
        )

    # -- following the annotation ----------------------------------------------

    def _apply_display(self, *_) -> None:
        layer = self.annotation.value
        if layer is not None:
            layer.brush_size = self.brush_size.value
            layer.contour = 1 if self.contours.value else 0

    def _on_brush_size(self, *_) -> None:
        """The brush size set in napari's layer controls (or with its keys) shows here too."""
        size = round(float(self._layer.brush_size))
        if size != self.brush_size.value and self.brush_size.min <= size <= self.brush_size.max:
            self.brush_size.value = size

    def _adopt(self, layer: Labels | None) -> None:
        """Make ``layer`` the annotation: signed (so it can hold -1), drawn with -1
        transparent and 0 tinted, followed edit by edit."""
        if self._layer is not None:
            self._layer.events.brush_size.disconnect(self._on_brush_size)
        self._layer = layer
        self.status.value = ""
        known, self._known_stats = self._known_stats, None
        self.rest_of_plane.visible = layer is not None and layer.data.ndim > 2
        if layer is None:
            self.tracker.follow(None)
            return
        messages = []
        warning = labels_warning(np.asarray(layer.data), f"labels '{layer.name}'")
        if warning:
            messages.append(warning)
        if not np.issubdtype(layer.data.dtype, np.signedinteger):
            old = layer.data.dtype
            layer.data = as_signed(np.asarray(layer.data))
            known = None
            if id(layer) not in self._converted:
                self._converted.add(id(layer))
                messages.append(
                    f"'{layer.name}' was {old}: converted to {layer.data.dtype} so it can hold -1 (unannotated)"
                )
        if role_is_not_annotation(layer):
            layer.colormap = annotation_colormap()
            layer.metadata[ROLE] = ANNOTATION
        layer.bind_key(NEW_CELL_KEY, lambda _layer: self.select_new_cell(), overwrite=True)
        layer.events.brush_size.connect(self._on_brush_size)
        self._apply_display()
        if messages:
            self.status.value = "⚠ " + "\n".join(messages) if warning else messages[0]
            for message in messages:
                (show_warning if message is warning else show_info)(message)
        self.tracker.follow(layer, known)

    def _failed(self, message: str) -> None:
        self.status.value = f"⚠ {message}"

    def refresh(self, *_) -> None:
        """Count the annotation again now (normally it follows every edit by itself)."""
        self.tracker.recount()


def role_is_not_annotation(layer: Labels) -> bool:
    return layer.metadata.get(ROLE) != ANNOTATION
