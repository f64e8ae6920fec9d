"""The Annotate widget's counts line and touching-cells highlight, kept in step with
every edit of the annotation.

A stroke is counted from a small window around it
(:class:`~napari_unet.core.annotation.AnnotationStats`) on the next turn of the event
loop, when napari has written it. Only when the whole annotation changes (another
layer followed, undo or redo, new data) is it recounted: at once for small
annotations, in a worker for large ones, with the edits made meanwhile replayed on
the worker's result.
"""

from __future__ import annotations

import threading

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Label
from napari.layers import Labels
from qtpy.QtCore import QTimer

from ..core.annotation import AnnotationStats, Window, highlight
from ._base import DockWidget
from ._layers import helper_layer, highlight_colormap, put_layer, selection_kept, spatial_shape
from ._strokes import edited_window, history_signature

#: Annotations up to this many pixels are recounted at once; larger ones in a worker.
RECOUNT_IN_PLACE = 1 << 21
#: Edits whose box exceeds this many pixels (a large fill) are recounted as a whole.
LOCAL_EDIT_LIMIT = 1 << 22


def touching_name(layer: Labels) -> str:
    return f"{layer.name} touching"


def count_job(labels: np.ndarray, with_highlight: bool, *, stop, copied: threading.Event | None = None):
    """Counts (and the highlight) of an annotation, for a worker: it takes a snapshot
    first (copying releases Python's lock, so the viewer keeps running) and sets
    ``copied`` when it has."""
    if copied is not None:
        labels = np.array(labels)
        copied.set()
    stats = AnnotationStats.of(labels)
    shown = None
    if with_highlight and not stop.is_set():
        shown = np.zeros(labels.shape, np.uint8)
        for index in np.ndindex(*labels.shape[:-2]):
            shown[index] = highlight(labels[index])
    return stats, shown


class AnnotationTracker:
    """Follows one annotation layer at a time for ``widget``: writes its counts into
    ``counts`` (with a warning when its shape differs from the ``image`` choice's
    layer) and, while ``show_touching`` is ticked, its highlight into the layer
    "<annotation> touching"."""

    def __init__(self, widget: DockWidget, counts: Label, image: ComboBox, show_touching: CheckBox) -> None:
        self.widget, self.viewer = widget, widget.viewer
        self.counts, self.image, self.show_touching = counts, image, show_touching
        self.layer: Labels | None = None
        self.stats: AnnotationStats | None = None
        self.hint = ""  # a status message that the next stroke clears
        self.edited = False  # a stroke was made since this was last set False
        self._pending: list | None = None  # edits made while a recount runs, replayed on its result
        self._queued: list = []  # napari history entries not counted yet
        self._recount_again = False
        self._copied = threading.Event()
        self._copied.set()
        self._own_refresh = False
        self._history = None
        self.counter = widget.make_runner("annotation counts", None, self._counted, self._count_idle, self._failed)
        self._recount_timer = QTimer(widget.native)
        self._recount_timer.setSingleShot(True)
        self._recount_timer.setInterval(100)
        self._recount_timer.timeout.connect(self.recount)
        show_touching.changed.connect(self._toggle_touching)

    def follow(self, layer: Labels | None, known: AnnotationStats | None = None) -> None:
        """Follow ``layer`` (None: none) from now on; ``known``: its counts, when the
        caller knows them without counting (a new annotation)."""
        if self.layer is not None:
            self.layer.events.paint.disconnect(self._on_paint)
            self.layer.events.set_data.disconnect(self._on_redrawn)
            self.layer.events.data.disconnect(self._on_replaced)
            self.layer.events.visible.disconnect(self._show_touching_with_layer)
            self._show_touching_with_layer(shown=False)  # the marks of an annotation no longer followed
        self.layer = layer
        self._pending = None
        self._queued = []
        self.stats = known if known is not None and layer is not None and known.shape == layer.data.shape else None
        if layer is None:
            self.counts.value = "no annotation layer"
            return
        layer.events.paint.connect(self._on_paint)
        layer.events.set_data.connect(self._on_redrawn)
        layer.events.data.connect(self._on_replaced)
        layer.events.visible.connect(self._show_touching_with_layer)
        self._history = history_signature(layer)
        if self.show_touching.value and self.touching_layer() is None:
            # added now, empty: adding a layer is what costs napari a moment, and then
            # it does not happen in the middle of painting
            self._put_touching(np.zeros(layer.data.shape, np.uint8))
        self._show_touching_with_layer()
        if self.stats is None:
            self.recount()
        else:
            self.show_counts()

    def largest_id(self, layer: Labels) -> int:
        """The largest cell id in ``layer``, with every edit made so far counted."""
        if self._queued and layer is self.layer:
            self.count_now()
        if self.stats is not None and self._pending is None and layer is self.layer:
            ids = [value for stats in self.stats.planes.values() for value, n in stats.values.items() if n > 0]
            return max([0, *ids])
        return max(int(np.max(layer.data)), 0)

    def filled(self, planes: list[tuple[int, ...]]) -> None:
        """The unannotated pixels of ``planes`` of the followed layer became
        background, written around napari's history: count them (and show them)."""
        layer = self.layer
        if self.stats is None or self._pending is not None or self.edited:
            layer.refresh()
            self.recount()
            return
        for plane in planes:
            self.stats.fill_unannotated(plane)
        helper = self.touching_layer()
        if helper is not None:
            for plane in planes:
                shown = helper.data[plane]
                np.putmask(shown, shown == 2, 0)
            helper.refresh()
        self._own_refresh = True
        try:
            layer.refresh()
        finally:
            self._own_refresh = False
        self.show_counts()

    def recount(self) -> None:
        """Count the whole annotation again (in a worker for large ones)."""
        layer = self.layer
        if layer is None:
            return
        if self.counter.busy:
            self._recount_again = True
            return
        self._queued = []  # written already, so the snapshot holds them
        data = np.asarray(layer.data)
        if data.size <= RECOUNT_IN_PLACE:
            self._pending = []
            self._counted(count_job(data, self.show_touching.value, stop=self.counter.stop_event))
            return
        self.counts.value = "counting…"
        self._pending = []
        self._copied = threading.Event()  # edits before the worker's snapshot: count again
        self.counter.start(count_job, data, self.show_touching.value, copied=self._copied)

    def show_counts(self) -> None:
        layer, stats = self.layer, self.stats
        if layer is None or stats is None:
            return
        message = stats.summary()
        image = self.image.value
        if image is not None and layer.data.shape != spatial_shape(image):
            message += f"\n⚠ shape {layer.data.shape} differs from image '{image.name}' {spatial_shape(image)}"
        self.counts.value = message

    def touching_layer(self) -> Labels | None:
        layer = self.layer
        if layer is None:
            return None
        helper = helper_layer(self.viewer, touching_name(layer), "touching")
        return helper if isinstance(helper, Labels) and helper.data.shape == layer.data.shape else None

    # -- napari's events ---------------------------------------------------------

    def _on_replaced(self, *_) -> None:
        """New data: recount soon."""
        self._recount_timer.start()

    def _on_redrawn(self, *_) -> None:
        """napari redrew the layer: after an undo or redo (its history moved without a
        paint event) the data changed as a whole, so recount soon."""
        history = history_signature(self.layer)
        if history != self._history or history is None:
            self._history = history
            if not self._own_refresh:
                self._clear_hint()  # an undo or redo: what the status said may be untrue now
                self._recount_timer.start()

    def _on_paint(self, event) -> None:
        """Queue a stroke's edits; they are counted on the next turn of the event loop,
        when napari has written them (it reports some edits before writing them)."""
        if self.layer is None:
            return
        self.edited = True
        if not self._queued:
            QTimer.singleShot(0, self.count_now)
        self._queued.extend(event.value)
        self._history = history_signature(self.layer)

    # -- counting ------------------------------------------------------------------

    def _counted(self, result) -> None:
        stats, shown = result
        layer = self.layer
        pending, self._pending = self._pending or [], None
        if layer is None or stats.shape != layer.data.shape:
            return
        for plane, window, before, after in pending:  # edits made since the snapshot
            stats.update_window(plane, window, before, after)
            if shown is not None:
                shown[plane][window.crop][window.inner] = highlight(after)[window.inner]
        self.stats = stats
        if shown is not None and self.show_touching.value:
            self._put_touching(shown)
        self.show_counts()

    def _failed(self, message: str) -> None:
        self.widget.status.value = f"⚠ {message}"

    def _count_idle(self) -> None:
        if self._recount_again:
            self._recount_again = False
            self.recount()

    def _clear_hint(self) -> None:
        """Clear the status when it still shows :attr:`hint` (an edit made it stale)."""
        status = self.widget.status
        if self.hint and status.value == self.hint:
            status.value = ""

    def count_now(self) -> None:
        """Update the counts and the highlight from the window around the queued edits:
        those napari has written, whose counting otherwise waits for the next turn of the
        event loop (a message about them then is not taken for stale)."""
        atoms, self._queued = self._queued, []
        layer = self.layer
        if layer is None or not atoms:
            return
        self._clear_hint()
        edited = edited_window(layer.data, atoms, LOCAL_EDIT_LIMIT)
        if edited is None:
            self.recount()
            return
        window, planes = edited
        helper = self.touching_layer() if self.show_touching.value else None
        if self._pending is not None and not self._copied.is_set():
            self._recount_again = True  # the snapshot may or may not hold these edits
        for plane, before, after in planes:
            if self._pending is not None:
                self._pending.append((plane, window, before, after))
            elif self.stats is not None:
                self.stats.update_window(plane, window, before, after)
            if self.show_touching.value:
                helper = self._update_touching(helper, plane, window, after)
        self.show_counts()

    # -- the highlight -------------------------------------------------------------

    def _update_touching(self, helper: Labels | None, plane, window: Window, after: np.ndarray) -> Labels | None:
        new = highlight(after)[window.inner]
        if helper is None:  # the user removed it
            if not new.any():
                return None
            helper = self._put_touching(np.zeros(self.layer.data.shape, np.uint8))
        region = tuple(slice(c.start + i.start, c.start + i.stop) for c, i in zip(window.crop, window.inner))
        old = np.asarray(helper.data[plane][region])
        changed = np.nonzero(old != new)
        if changed[0].size:
            stack = [np.full(changed[0].size, p) for p in plane]
            indices = (*stack, changed[0] + region[0].start, changed[1] + region[1].start)
            helper.data_setitem(indices, new[changed])  # redraws only the changed pixels
        return helper

    def _put_touching(self, shown: np.ndarray) -> Labels:
        return put_layer(
            self.viewer,
            touching_name(self.layer),
            shown,
            "labels",
            self.layer,
            role="touching",
            colormap=highlight_colormap(),
            opacity=0.9,
        )

    def _show_touching_with_layer(self, *_, shown: bool | None = None) -> None:
        """Show the touching marks while their annotation shows (``shown``: as given):
        an annotation hidden by its eye, or left for a new one, left its orange marks
        over the segmentation and over the new, empty annotation."""
        if self.layer is None:
            return
        helper = helper_layer(self.viewer, touching_name(self.layer), "touching")
        visible = self.layer.visible if shown is None else shown
        if helper is not None and helper.visible != visible:
            helper.visible = visible

    def _toggle_touching(self, shown: bool) -> None:
        layer = self.layer
        if layer is None:
            return
        if shown:
            self._put_touching(np.zeros(layer.data.shape, np.uint8))
            self.recount()
        elif (helper := helper_layer(self.viewer, touching_name(layer), "touching")) is not None:
            with selection_kept(self.viewer):
                self.viewer.layers.remove(helper)
