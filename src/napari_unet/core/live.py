"""Live training: the network keeps learning while the annotation changes.

A :class:`LiveTraining` runs an open-ended :class:`~napari_unet.core.train.Trainer`
on one image. Another thread hands it the edited annotation with :meth:`update`;
between two steps the trainer draws its next samples from it (targets and weight
maps recomputed once per edit, never per step), keeping its optimiser state. Every
``preview_seconds`` it segments a window of the image (the part the user looks at)
and yields it as a :class:`LivePreview`.

Previews come from a running average of the weights over the last steps, not from
the weights of the latest step: at the constant learning rate of an open-ended run
one step can move the whole preview (AP@0.5 of consecutive previews of the
built-in sample jumped between 0.2 and 0.7), while the average moves smoothly.
When the run ends, the model takes the averaged weights: the model the user keeps is
the one whose previews they judged. For the same reason the model keeps the deeper
split of touching objects (:data:`LIVE_SPLIT`), without the split by shape, that its
previews were made with.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch

from .config import IGNORE_LABEL, default_model_config
from .data import TrainingDataError
from .model import UNet, snapshot, weights_lock
from .predict import segment
from .samples import default_tile_for
from .train import Trainer
from .train_config import TrainConfig
from .train_events import StepProgress

#: Steps of an open-ended live run (it ends when stopped).
OPEN_ENDED = 10**9
#: Output side (px) asked of a live run's training tiles (the valid size nearest it
#: is taken: input 140 px, output 52 px for the CPU default network). Samples are centred on annotated
#: pixels, and a live annotation is sparse (a few cells with background around them),
#: so a tile that holds a few cells sees the same annotated pixels as the batch
#: default (output 132 px for the CPU default network) at 2.5x less compute: measured
#: on the built-in sample with 25 annotated cells, 3-3.7x the steps per second, and
#: AP@0.5 of the preview after 10 s 0.50-0.58 instead of 0.09-0.29 (after a minute,
#: the same within noise).
LIVE_TILE_OUTPUT = 48
#: The previews' running average of the weights gives the newest step this weight
#: (1 / steps so far before that: a plain mean of the first steps).
AVERAGE_RATE = 0.1
#: The least probability dip at which live training's previews, and the model it
#: keeps, split touching objects (the batch default is 0.1). A network trained for a
#: minute has bumps of 0.1-0.2 inside single cells, so 0.1 cuts cells apart: in
#: headless live runs on the built-in sample (the benchmark's annotator, 3 runs, the
#: previews after 30 s re-segmented at each depth) mean AP@0.5 was 0.61-0.65 at 0.1,
#: 0.63-0.76 without splitting and 0.74-0.78 at 0.2-0.3. The split by shape
#: (:mod:`.concave`) is off for the same reason: such a network's outlines are rough
#: enough for it to cut single cells (bench_live.py with it: from 29 s on 12-44 true
#: cells cut in pieces per preview and AP@0.5 0.36-0.82; without it, two runs: 0-1
#: cut in the last 30 s, best AP@0.5 0.93 and 0.95).
LIVE_SPLIT = 0.25


def live_model(in_channels: int = 1) -> UNet:
    """A new network for live training: the CPU default without its batch normalisation.

    At the constant learning rate of a live run, normalisation statistics gathered on
    tiles around the few annotated cells do not hold for the never-annotated rest of
    the image: with batch normalisation the previews of the benchmark's annotator on
    the built-in sample filled the background with streaks, up to 1600-3300 false
    objects in 4 of 6 runs (the plain network's worst, in a run beside them: 670).
    Batch training, whose learning rate decays, does not show it.
    """
    config = default_model_config("cpu", in_channels=in_channels)
    return UNet.from_config(dataclasses.replace(config, batch_norm=False))


@dataclass(frozen=True)
class LivePreview:
    """Instance labels of ``window`` (a tuple of slices of the image's last two
    axes) after ``step`` steps, ``seconds`` into live training."""

    step: int
    seconds: float
    window: tuple[slice, slice]
    labels: np.ndarray


@dataclass(frozen=True)
class AnnotationProblem:
    """An edited annotation that cannot be trained on yet; training goes on with the
    previous one. With ``trained``, one that trains but most likely not as the user
    means it (the training data's warnings, e.g. cells left unpainted on 0)."""

    message: str
    trained: bool = False


def live_config(model: UNet, config: TrainConfig | None = None) -> TrainConfig:
    """``config`` for an open-ended run of ``model``: constant learning rate after
    warm-up, no step or time limit, no periodic validation, and unless ``config``
    sets one, a training tile whose output is :data:`LIVE_TILE_OUTPUT` px."""
    config = config or TrainConfig()
    tile = config.tile or default_tile_for(model.config, LIVE_TILE_OUTPUT)
    return dataclasses.replace(config, steps=OPEN_ENDED, minutes=None, schedule="constant", keep_best=False, tile=tile)


class LiveTraining:
    """Open-ended training of ``model`` on ``image`` while its annotation changes.

    ``image``: (H, W) or (H, W, C) with ``channel_axis``; ``labels``: int (H, W), -1
    where not annotated. Raises :class:`TrainingDataError` when the first annotation
    holds no cell yet.
    """

    def __init__(
        self,
        model: UNet,
        image: np.ndarray,
        labels: np.ndarray,
        config: TrainConfig | None = None,
        *,
        channel_axis: int | None = None,
        preview_seconds: float = 3.0,
        name: str | None = None,
    ) -> None:
        self.image = image
        self.channel_axis = channel_axis
        self.preview_seconds = preview_seconds
        #: What messages about the annotation call it (e.g. "annotation 'cells - Labels'").
        self.names = [name] if name else None
        self.trainer = Trainer(
            model, [image], [labels], live_config(model, config), channel_axis=channel_axis, names=self.names
        )
        self._keep_live_instances()
        #: The running average of the weights that previews are made from.
        self.averaged = snapshot(model, self.trainer.device)
        self.window: tuple[slice, slice] = (slice(None), slice(None))
        self._pending: np.ndarray | None = None
        self._lock = threading.Lock()
        #: How many edits have reached the trainer.
        self.edits_applied = 0

    @property
    def model(self) -> UNet:
        return self.trainer.model

    def update(self, labels: np.ndarray) -> None:
        """Train on ``labels`` from the next step on (any thread; the latest wins)."""
        with self._lock:
            self._pending = np.array(labels, copy=True)

    def look_at(self, window: tuple[slice, slice]) -> None:
        """Preview this window of the image from now on (any thread)."""
        self.window = window

    def stop(self) -> None:
        """End after the current step (any thread)."""
        self.trainer.request_stop()

    def run(self) -> Generator[StepProgress | LivePreview | AnnotationProblem, None, None]:
        """Train until stopped, yielding step progress, previews and annotation
        problems; at the end the model takes the averaged weights."""
        began = time.perf_counter()
        last_preview = -np.inf
        try:
            for event in self.trainer.run():
                if not isinstance(event, StepProgress):
                    continue
                self._average(self.trainer.step)
                problem = self._apply_pending()  # the next step already samples the edit
                yield event
                if problem is not None:
                    yield problem
                now = time.perf_counter()
                if now - last_preview >= self.preview_seconds:
                    yield self.preview(self.trainer.step, now - began)
                    last_preview = time.perf_counter()
        finally:
            with weights_lock(self.model), torch.no_grad():
                self.model.load_state_dict(self.averaged.state_dict())

    def _average(self, step: int) -> None:
        """Move the averaged weights towards the model's after step ``step`` (1-based)."""
        rate = max(AVERAGE_RATE, 1.0 / step)
        with torch.no_grad():
            for average, current in zip(self.averaged.state_dict().values(), self.model.state_dict().values()):
                if average.is_floating_point():
                    average.lerp_(current, rate)
                else:
                    average.copy_(current)  # batch counters

    def _apply_pending(self) -> AnnotationProblem | None:
        with self._lock:
            labels, self._pending = self._pending, None
        if labels is None:
            return None
        try:
            self.trainer.replace_annotations([self.image], [labels], names=self.names)
        except TrainingDataError as error:
            return AnnotationProblem(str(error))
        self._keep_live_instances()  # the edit refitted the sizes
        self.edits_applied += 1
        warnings = self.trainer.data_warnings
        return AnnotationProblem(" ".join(warnings), trained=True) if warnings else None

    def _keep_live_instances(self) -> None:
        """Give the model the instance settings of live previews: the deeper split at
        probability dips (:data:`LIVE_SPLIT`; 0 stays 0: the user keeps touching
        objects together) and no split by shape (see :data:`LIVE_SPLIT`)."""
        instances = self.model.spec.instances
        split = LIVE_SPLIT if 0 < instances.split < LIVE_SPLIT else instances.split
        live = dataclasses.replace(instances, split=split, min_fill=0.0)
        if live != instances:
            self.model.spec = dataclasses.replace(self.model.spec, instances=live)

    def preview(self, step: int, seconds: float) -> LivePreview:
        """Segment the current window with the averaged weights."""
        window = self.window
        image = self.image[window] if self.channel_axis is None else self.image[(*window, slice(None))]
        labels = segment(
            self.averaged,
            image,
            device=self.trainer.device,
            channel_axis=self.channel_axis,
            instances=self.model.spec.instances,  # the minimum size follows the annotation
            notes=False,
        )
        return LivePreview(step, seconds, window, labels)


def accept_object(annotation: np.ndarray, preview: np.ndarray, object_id: int) -> int:
    """Copy predicted object ``object_id`` of ``preview`` (same shape) into
    ``annotation`` in place as a new cell, on the pixels the user has not annotated
    (-1); returns the new cell's id (0 when nothing was copied)."""
    where = (preview == object_id) & (annotation == IGNORE_LABEL) & (object_id > 0)
    if not where.any():
        return 0
    new_id = int(max(annotation.max(), 0)) + 1
    annotation[where] = new_id
    return new_id


def accept_all(annotation: np.ndarray, preview: np.ndarray) -> int:
    """Accept every predicted object of ``preview`` that lies wholly on unannotated
    pixels; returns how many were accepted."""
    ids = np.unique(preview[preview > 0])
    touched = np.unique(preview[(preview > 0) & (annotation != IGNORE_LABEL)])
    accepted = 0
    for object_id in np.setdiff1d(ids, touched):
        accepted += accept_object(annotation, preview, int(object_id)) > 0
    return accepted
