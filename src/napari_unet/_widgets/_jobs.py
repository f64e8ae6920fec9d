"""Long jobs for thread workers: generators that never touch layers or Qt.

Each job yields small records for the main thread and stops cleanly when its
``stop`` event is set (checked at every yield), so a stopped training still
writes its checkpoint and model from the worker thread.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.instances import probabilities_to_labels
from ..core.model import UNet
from ..core.predict import iter_predict, segment
from ..core.train import StepProgress, Trainer


@dataclass(frozen=True)
class Preview:
    """Labels of the preview image after ``step`` training steps."""

    step: int
    labels: np.ndarray


@dataclass(frozen=True)
class TrainingDone:
    trainer: Trainer
    stopped: bool


def training_job(
    trainer: Trainer,
    save_path: Path | None,
    preview: tuple[np.ndarray, int | None] | None = None,
    preview_every: int = 1,
    *,
    stop: threading.Event,
):
    """Run ``trainer``, yielding its events and, every ``preview_every`` steps, a
    :class:`Preview` of ``preview`` (image, channel axis). Saves the model at the end."""
    events = trainer.run()
    try:
        for event in events:
            yield event
            if stop.is_set():
                break
            if preview is not None and isinstance(event, StepProgress) and event.step % preview_every == 0:
                image, channel_axis = preview
                labels = segment(trainer.model, image, device=trainer.device, channel_axis=channel_axis)
                yield Preview(event.step, labels)
    finally:
        events.close()  # writes the checkpoint of a stopped run
        if save_path is not None:
            trainer.save_model(save_path)
    return TrainingDone(trainer, stop.is_set())


@dataclass(frozen=True)
class SegmentationDone:
    labels: np.ndarray
    probabilities: np.ndarray | None


def segmentation_job(model: UNet, image: np.ndarray, *, stop: threading.Event, keep_probabilities: bool, **options):
    """Predict ``image`` tile by tile, yielding progress; returns ``None`` if stopped."""
    tiles = iter_predict(model, image, **options)
    while True:
        try:
            progress = next(tiles)
        except StopIteration as finished:
            probabilities = finished.value
            break
        yield progress
        if stop.is_set():
            tiles.close()
            return None
    labels = probabilities_to_labels(probabilities, model.spec.instances)
    return SegmentationDone(labels, probabilities if keep_probabilities else None)
