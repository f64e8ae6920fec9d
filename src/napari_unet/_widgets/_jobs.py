"""Long jobs for thread workers: generators that never touch layers or Qt.

Each job yields small records for the main thread and stops cleanly when its
``stop`` event is set: segmentation checks it at every yield; training hands it to
the trainer, which ends after its current step (a 3D run's warm start included), so
a stopped training still writes its checkpoint and model from the worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..core.checkpoint import ModelFileError, load_model, model_state, save_state
from ..core.instances import objects_found
from ..core.model import UNet
from ..core.predict import iter_segment, labelled_ndim, segment
from ..core.progress import until_stopped
from ..core.threads import use_threads
from ..core.train import Trainer
from ..core.train_events import StepProgress

#: Cores napari's training leaves to the viewer, so it stays responsive.
VIEWER_CORES = 1


def display_labels(labels: np.ndarray) -> np.ndarray:
    """Instance labels in the smallest type napari draws without converting them
    (uint16 while ids fit, else as they are)."""
    labels = np.asarray(labels)
    if labels.size and labels.min() >= 0 and labels.max() <= np.iinfo(np.uint16).max:
        return labels.astype(np.uint16, copy=False)
    return labels


@dataclass(frozen=True)
class Preview:
    """Labels of the preview image after ``step`` training steps."""

    step: int
    labels: np.ndarray


@dataclass(frozen=True)
class TrainingStarted:
    """The training data are prepared; ``threads`` torch threads train."""

    trainer: Trainer
    threads: int


@dataclass(frozen=True)
class TrainingDone:
    trainer: Trainer
    stopped: bool


def training_job(
    make_trainer: Callable[[threading.Event], Trainer],
    save_path: Path | None,
    preview: tuple[np.ndarray, int | None] | None = None,
    preview_every: int = 1,
    threads: int | None = None,
    *,
    stop: threading.Event,
):
    """Build the trainer with ``make_trainer(stop)`` (preparing the training data:
    weight maps, normalisation) and run it, all in this worker thread: yields
    :class:`TrainingStarted`, then the trainer's events and, every ``preview_every``
    steps, a :class:`Preview` of ``preview`` (image, channel axis). Saves the model at
    the end, also when stopped. ``threads``: torch threads, ``None`` for the automatic
    choice, which leaves a core to the viewer.

    ``stop`` reaches the trainer itself, which ends after its current step, writing
    its checkpoint; in a 3D run's warm start the twin's weights so far are taken over
    first (closing the run's generator instead would drop them)."""
    chosen = use_threads(threads, leave_free=VIEWER_CORES)
    trainer = make_trainer(stop)
    yield TrainingStarted(trainer, chosen)
    events = trainer.run()
    try:
        for event in events:
            yield event
            if stop.is_set() or preview is None or not isinstance(event, StepProgress):
                continue
            if event.step % preview_every == 0:
                image, channel_axis = preview
                labels = segment(trainer.model, image, device=trainer.device, channel_axis=channel_axis, notes=False)
                yield Preview(event.step, display_labels(labels))
    finally:
        events.close()  # after an error in a preview: the run writes its checkpoint here
        if save_path is not None:
            trainer.save_model(save_path)
    return TrainingDone(trainer, stop.is_set())


@dataclass(frozen=True)
class SegmentationDone:
    """``labels``: what the layer shows (for one plane of a stack: that plane, or the
    whole stack when its type had to widen); ``found``: how many objects, in words
    (:func:`~napari_unet.core.instances.objects_found`)."""

    labels: np.ndarray
    probabilities: np.ndarray | None
    found: str
    #: Warnings the core logged while segmenting (e.g. NaN pixels set to 0).
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PlaneOfStack:
    """One plane, ``index``, of a stack whose labels so far are ``stack`` (the shown
    layer's data, (*planes, H, W) or (*planes, Z, Y, X)), segmented alone."""

    stack: np.ndarray
    index: tuple[int, ...]

    @cached_property
    def other_planes_largest_ids(self) -> list[int]:
        """The largest id of every other plane of the stack (0: no objects), read
        once, plane by plane (a worker's job: a stack can be large)."""
        planes = np.ndindex(self.stack.shape[: len(self.index)])
        return [int(self.stack[i].max()) for i in planes if i != self.index]

    def kept_note(self) -> str | None:
        """What the status should add when other planes hold labels of an earlier
        run, which this one leaves as they are (``None`` when none do)."""
        kept = sum(1 for largest in self.other_planes_largest_ids if largest > 0)
        if not kept:
            return None
        planes = "plane keeps its" if kept == 1 else "planes keep their"
        return (
            f"only plane {', '.join(map(str, self.index))} was segmented: {kept} other {planes} earlier labels, "
            "which may come from another model or other settings ('all planes' redoes them)"
        )

    def numbered_after_the_others(self, labels: np.ndarray) -> np.ndarray:
        """``labels`` of the plane with ids past those of the stack's other planes, so
        that no id names two objects: the plane in the stack's type, or, when the ids
        outgrow that type, the whole stack (int32) with the plane written in."""
        others = max(self.other_planes_largest_ids, default=0)
        plane = np.where(labels > 0, labels.astype(np.int64) + others, 0)
        kind = self.stack.dtype
        if np.issubdtype(kind, np.integer) and int(plane.max(initial=0)) <= np.iinfo(kind).max:
            return plane.astype(kind)
        whole = np.array(self.stack, dtype=np.int32)
        whole[self.index] = plane
        return whole


def segmentation_job(
    model: UNet,
    image: np.ndarray,
    *,
    stop: threading.Event,
    keep_probabilities: bool,
    plane_of: PlaneOfStack | None = None,
    **options,
):
    """Segment ``image`` tile by tile, yielding progress; returns ``None`` if stopped.
    ``plane_of``: ``image`` is that plane of a stack (see :class:`PlaneOfStack`).
    Uses the cores other programs leave free."""
    use_threads()
    with warnings_logged_here() as notes:
        tiles = iter_segment(model, image, return_probabilities=keep_probabilities, **options)
        result = yield from until_stopped(tiles, stop)
    if result is None:
        return None
    labels, probabilities = result if keep_probabilities else (result, None)
    found = objects_found(labels, labelled_ndim(model, options.get("as_volume", False)))  # ids restart per plane
    if plane_of is None:
        return SegmentationDone(display_labels(labels), probabilities, found, tuple(notes))
    kept = plane_of.kept_note()
    shown = plane_of.numbered_after_the_others(labels)
    return SegmentationDone(shown, probabilities, found, (*notes, *([kept] if kept else [])))


@contextlib.contextmanager
def warnings_logged_here() -> Iterator[list[str]]:
    """The warnings napari-unet logs in this thread during the block (a widget shows
    them beside its result; the command line prints the same log records)."""
    notes: list[str] = []
    thread = threading.get_ident()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.thread == thread:
                notes.append(record.getMessage())

    handler = Collect(logging.WARNING)
    logger = logging.getLogger("napari_unet")
    logger.addHandler(handler)
    try:
        yield notes
    finally:
        logger.removeHandler(handler)


def export_job(
    model: UNet,
    path: Path,
    format: str,
    *,
    stop: threading.Event,
    image: np.ndarray | None = None,
    channel_axis: int | None = None,
):
    """Export ``model`` to ``path`` as ``format`` (with ``image`` as a package's
    example) through ``napari-unet export`` in another Python process; one step: says
    what it does, then writes. Returns the path.

    The exporters' libraries hold the interpreter lock while they load (onnx's
    ``ml_dtypes`` for 0.54 s on a 2-core Xeon), which froze the viewer at the first
    export; in a process of their own they cannot, and a crash in one of them cannot
    take napari and its unsaved layers down. Raises :class:`ExportError` with the
    command's one-line message when it fails."""
    from ..core.exchange import ExportError

    yield f"exporting to {path.name} ({format})…"
    with tempfile.TemporaryDirectory(prefix="napari-unet-export-") as folder:
        source = Path(folder) / "model.safetensors"
        save_state(source, model_state(model, getattr(model, "metadata", {})))
        command = [sys.executable, "-m", "napari_unet.cli", "export", str(source), "--out", str(path)]
        command += ["--format", format, "--overwrite"]  # the save dialog asked before replacing a file
        if image is not None:
            example = Path(folder) / "image.npy"
            np.save(example, image)
            command += ["--image", str(example)]
            command += [] if channel_axis is None else [f"--channel-axis={channel_axis}"]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        said = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        reason = said[-1].removeprefix("napari-unet: error: ") if said else f"it ended with status {done.returncode}"
        raise ExportError(f"the export to {path.name} failed: {reason}")
    return path


def read_model_job(path: Path, *, stop: threading.Event) -> tuple[Path, UNet | ModelFileError]:
    """``(path, model)`` read from a model file (a large or zipped one takes up to
    seconds), or ``(path, error)`` for a file that is not a model: a widget shows
    that beside its choice, not as a failed job."""
    try:
        return path, load_model(path)
    except ModelFileError as error:
        return path, error
