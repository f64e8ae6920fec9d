"""Show the paper's separation weight map and training target of an annotation."""

from __future__ import annotations

import numpy as np
from magicgui.widgets import CheckBox, FloatSpinBox, PushButton
from napari.layers import Image, Labels

from ..core.annotation import UNANNOTATED_RIM, AnnotationStats, highlight
from ..core.label_checks import labels_warning
from ..core.train_config import WeightMapConfig
from ..core.weights import separation_target, weight_map
from ._base import DockWidget
from ._forms import SteadyComboBox, form, scrolling
from ._layers import (
    ANNOTATION,
    EditWatcher,
    NewAnnotationFollower,
    helper_layer,
    labels_data,
    layers_of,
    put_layer,
    role_of,
)


def weight_job(
    labels: np.ndarray, config: WeightMapConfig, spacing: tuple[float, ...] | None = None, name: str = "", *, stop
):
    """Weights (float32), targets (uint8), the number of cell pairs separated only
    by unannotated pixels and what to tell the user about labels called ``name``
    that most likely do not mean what they say (:func:`labels_warning`), for every
    plane of ``labels`` (..., H, W), or with
    ``spacing`` (z, y, x) for every volume (..., Z, Y, X), as a 3D network trains on
    it. In the target, 1 is a cell, 0 background and :data:`UNANNOTATED_RIM` the
    unannotated pixels that are all that lies between two cells in a plane (weight
    0: nothing tells the network to separate them)."""
    labels = np.array(labels)  # a snapshot: painting goes on meanwhile
    weights = np.zeros(labels.shape, np.float32)
    target = np.zeros(labels.shape, np.uint8)
    spatial = 2 if spacing is None else 3
    for index in np.ndindex(*labels.shape[:-spatial]):
        if stop.is_set():
            return None
        part = labels[index]
        weights[index] = weight_map(
            part, config.w0, config.sigma, balance_classes=config.balance_classes, spacing=spacing
        )
        target[index] = separation_target(part)
        yield index
    for plane in np.ndindex(*labels.shape[:-2]):
        target[plane][highlight(labels[plane]) == UNANNOTATED_RIM] = UNANNOTATED_RIM
    return weights, target, len(AnnotationStats.of(labels).bridged()), labels_warning(labels, f"labels '{name}'")


class WeightMapWidget(DockWidget):
    """w(x) = w_c(x) + w0 exp(-(d1 + d2)^2 / 2 sigma^2) of a labels layer, as an image layer.

    The border term lies on background pixels of the training target, including the
    gaps cut between touching cells; unannotated (-1) pixels get weight 0.
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        viewer = self.viewer
        defaults = WeightMapConfig()
        self.annotation = SteadyComboBox(label="annotation", choices=lambda _: layers_of(viewer, Labels), nullable=True)
        self.w0 = FloatSpinBox(label="w0", value=defaults.w0, min=0.0, max=100.0, step=0.5)
        self.sigma = FloatSpinBox(label="sigma (px)", value=defaults.sigma, min=0.5, max=50.0, step=0.5)
        self.balance = CheckBox(text="balance class frequencies", value=defaults.balance_classes)
        self.volume = CheckBox(
            text="as a 3D network trains (one map per volume)",
            value=False,
            visible=False,
            tooltip="a stack as one volume, with distances in the layer's scale; off: one map per plane, as a "
            "2D network trains",
        )
        self.live = CheckBox(text="update while painting", value=True)
        self.compute = PushButton(text="Show weight map")
        controls = form(self.annotation, self.w0, self.sigma, self.balance, self.volume, self.live)
        self.extend([controls, self.compute, self.status])
        self.controls_area = scrolling(controls, self.native.layout(), grow=False)  # a short form: shrinks only
        self.runner = self.make_runner("weight map", lambda _: None, self._show, self._idle, self._failed)
        self._again = False
        self._edits = EditWatcher(self._refresh_shown, self.native, delay_ms=300)
        self.compute.changed.connect(self.guarded(self.update_map))
        for control in (self.w0, self.sigma, self.balance, self.volume):
            control.changed.connect(lambda _value: self._edits.timer.start())
        self.annotation.changed.connect(self._edits.watch)
        self.annotation.changed.connect(self._offer_volume)
        self._preselect()
        self._follower = NewAnnotationFollower(self.annotation)

    def reset_choices(self, *_) -> None:
        super().reset_choices()
        self._preselect()
        self._follower.follow()  # an annotation made after the dock opened, as Train and Live do

    def _preselect(self) -> None:
        """When no layer is chosen: the newest annotation, else the newest labels layer."""
        if self.annotation.value is None:
            layers = [layer for layer in self.annotation.choices if layer is not None]
            annotations = [layer for layer in layers if role_of(layer) == ANNOTATION]
            if layers:
                self.annotation.value = (annotations or layers)[-1]

    def _offer_volume(self, layer: Labels | None) -> None:
        """The 3D choice, for stacks only."""
        self.volume.visible = layer is not None and layer.ndim >= 3

    def _spacing(self, layer: Labels) -> tuple[float, ...] | None:
        """The voxel size (z, y, x) of a stack mapped as a volume (its layer's scale), else None."""
        if not (self.volume.value and layer.ndim >= 3):
            return None
        return tuple(float(step) for step in layer.scale[-3:])

    @property
    def config(self) -> WeightMapConfig:
        return WeightMapConfig(w0=self.w0.value, sigma=self.sigma.value, balance_classes=self.balance.value)

    def update_map(self) -> None:
        """Compute the weight map in a worker (again, if one is running)."""
        if self.runner.busy:
            self._again = True
            return
        layer = self.annotation.value
        data = labels_data(layer)
        self._source = layer
        self.status.value = "computing…"
        self.runner.start(weight_job, data, self.config, self._spacing(layer), layer.name)  # copied in the worker

    def _show(self, result) -> None:
        if result is None:
            return
        weights, target, bridged, warning = result
        name = self._source.name
        if self._source not in self.viewer.layers:  # its map would lie over nothing
            self.status.value = f"'{name}' was removed while its weight map was computed: the map is not added"
            return
        shown = put_layer(
            self.viewer,
            f"{name} weights",
            weights,
            "image",
            self._source,
            role="weights",
            colormap="magma",
            blending="additive",
        )
        fit_contrast(shown)
        target_layer = put_layer(
            self.viewer, f"{name} target", target, "labels", self._source, role="target", opacity=0.5, visible=False
        )
        self.status.value = f"weights from {weights.min():.2f} to {weights.max():.2f}"
        if bridged:
            target_layer.visible = True
            self.status.value += (
                f"\n⚠ {bridged} pair(s) of cells are separated only by unannotated pixels (weight 0, shown in "
                f"'{target_layer.name}' as {UNANNOTATED_RIM}): paint background (0) between them"
            )
        if warning:
            self.status.value += f"\n⚠ {warning}"

    def _failed(self, message: str) -> None:
        self.status.value = f"⚠ {message}"

    def _idle(self) -> None:
        if self._again:
            self._again = False
            self.guarded(self.update_map)()

    def _refresh_shown(self) -> None:
        """Recompute after edits or parameter changes, if live and already shown."""
        layer = self.annotation.value
        if self.live.value and layer is not None and helper_layer(self.viewer, f"{layer.name} weights", "weights"):
            self.guarded(self.update_map)()


def fit_contrast(layer: Image) -> None:
    """Contrast limits over the range of the layer's new data, unless the user has
    set limits of their own since they were last fitted (napari keeps a layer's
    limits when its data change: the map of an empty annotation, all 0, left the
    limits at 0-1 while painting raised the map to 10 and more)."""
    fitted = layer.metadata.get("fitted contrast")
    if fitted is not None and tuple(layer.contrast_limits) != fitted:
        return
    layer.reset_contrast_limits_range()
    layer.reset_contrast_limits()
    layer.metadata["fitted contrast"] = tuple(layer.contrast_limits)
