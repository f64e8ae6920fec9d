"""The training loop as a generator of progress events (paper section 3).

Drive it with a ``for`` loop (CLI, tests) or a napari thread worker (the GUI);
stopping at any yield (``close()`` or ``worker.quit()``) is clean and keeps a
checkpoint when a checkpoint path was given.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import math
import threading
import time
from collections.abc import Generator, Sequence
from pathlib import Path

import numpy as np
import torch

from . import geometry
from .atomic_files import check_writable, remove_stale_temporaries
from .best_weights import BestWeights
from .checkpoint import (
    checkpoint_bytes,
    load_state,
    model_from_state,
    save_model,
    save_state,
)
from .checkpoint_schedule import CheckpointSchedule
from .data import as_image_list, data_digest, prepare, validation_pairs
from .devices import precision_name, resolve_device, resolve_precision, training_layout
from .distributed import (
    any_process,
    batch_share,
    current_group,
    max_over_processes,
)
from .errors import OutputFileError
from .io import read_labels
from .memory import reuse_freed_memory
from .metrics import combine, match_instances, pixel_iou
from .model import UNet
from .object_size import CompleteObjects, fitted_instances
from .optimisation import lay_out_like_weights, make_optimizer, scheduled_learning_rate
from .predict import segment
from .prefetch import BatchPrefetcher
from .progress import drive
from .records import with_overrides
from .samples import SampleStream, default_tile_for
from .threads import available_cores
from .train_config import TrainConfig
from .train_events import StepProgress, TrainEvent, TrainSummary, ValidationResult
from .train_step import BatchStep
from .training_state import (
    checkpoint_record,
    refuse_earlier_checkpoint,
    restore_progress,
    resumed_config,
    training_history,
)
from .warm_start import FINE_TUNE_LR_SCALE, iter_warm_start

log = logging.getLogger(__name__)


#: The warning of a run whose annotation holds no completely annotated cell to fit
#: the model's object sizes to (:mod:`.object_size`).
NO_COMPLETE_CELL = (
    "no cell is completely annotated (painted background or other cells all around it, away from the image "
    "border), so the model keeps its default object sizes and cannot tell when an image was taken at another "
    "magnification: paint the background around a few cells"
)
#: TrainSummary.final_loss is the mean loss of this many last steps.
SUMMARY_LOSS_STEPS = 20
#: The most threads that draw training batches ahead of a GPU's steps (see
#: :attr:`Trainer.sampling_workers`); one drew about 40 samples of 572 px a second on a 2-core AMD EPYC.
MAX_SAMPLING_WORKERS = 4


def final_loss(losses: Sequence[float]) -> float:
    """The loss a run reports: the mean of its last :data:`SUMMARY_LOSS_STEPS` steps' (NaN before any)."""
    tail = losses[-SUMMARY_LOSS_STEPS:]
    return float(np.mean(tail)) if len(tail) else math.nan


class Trainer:
    """Trains ``model`` on images with instance labels (0 background, 1.. cells, -1 ignore).

    ``images[i]``: ``(H, W)``, ``(C, H, W)``, ``(H, W, C)`` or stacks, as for
    prediction (``channel_axis`` says where the channels are when the guess would be
    wrong); ``labels[i]``: int ``(*stack, H, W)``. Validation images (optional; checked
    with their labels before the first step, called by ``val_names`` in messages) are
    segmented every ``config.validation_interval`` steps; a checkpoint is written
    every ``config.checkpoint_every`` steps and when training stops between two steps.

    The checkpoint's location is checked before anything else happens
    (:class:`~napari_unet.core.errors.OutputFileError` if it cannot be written, or
    if it holds an earlier run's checkpoint and ``overwrite`` is false; resuming a
    run with its own checkpoint writes on there); a
    checkpoint that fails later (a full disk) is reported once as
    :class:`CheckpointFailed` and training goes on. :meth:`request_stop` (from another
    thread or a signal handler) ends training after the current step.

    Inside a torch.distributed process group each process computes its share of
    every batch and rank 0 alone validates and writes files; the result equals one
    process's up to float rounding (see :mod:`napari_unet.core.distributed`).
    """

    def __init__(
        self,
        model: UNet,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        config: TrainConfig | None = None,
        *,
        val_images: Sequence[np.ndarray] = (),
        val_labels: Sequence[np.ndarray] = (),
        checkpoint_path: str | Path | None = None,
        overwrite: bool = False,
        channel_axis: int | None = None,
        names: Sequence[str] | None = None,
        val_names: Sequence[str] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.model = model
        self.config = config = config or TrainConfig()
        self.device = resolve_device(config.device)
        self.dtype = resolve_precision(config.precision, self.device)
        self.layout = training_layout(self.device, model.config.ndim)
        self._sampling_workers: int | None = None
        self.channel_axis = channel_axis
        self.validation = validation_pairs(
            val_images, val_labels, in_channels=model.config.in_channels, channel_axis=channel_axis,
            ndim=model.config.ndim, names=val_names,
        )  # fmt: skip
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        if self.checkpoint_path is not None:
            refuse_earlier_checkpoint(self.checkpoint_path, overwrite)
            keeps_best = bool(self.validation) and config.keep_best
            check_writable(self.checkpoint_path, checkpoint_bytes(model, config, keeps_best))
        #: Why the last checkpoint could not be written (``None`` when it was).
        self.checkpoint_error: str | None = None
        self._stop = stop or threading.Event()
        self.group = current_group()
        self.share = batch_share(config.batch_size, self.group)
        self.tile = config.tile or default_tile_for(model.config)
        images, labels = as_image_list(images), as_image_list(labels, read_labels)  # paths read once, here
        self.replace_annotations(images, labels, names=names)
        no_complete_cell = not any(len(plane.objects.sizes) for plane in self.stream.planes)
        if self.config.fit_sizes and no_complete_cell and not self.data_warnings:  # (a warned fault comes first)
            log.warning(NO_COMPLETE_CELL)
            self.data_warnings.append(NO_COMPLETE_CELL)
        #: What the 2D twin trains on before step 1 (:attr:`warm_starts`), until then.
        self._warm_start_data = (images, labels, names) if self.warm_starts else None
        #: Seconds the warm start took (part of :attr:`seconds`).
        self.warm_seconds = 0.0
        #: Whether a stop came inside the 2D warm start (a resumed run does it again).
        self.warm_start_stopped = False
        model.to(self.device)
        self.optimizer = make_optimizer(model, config)
        #: Takes one optimisation step on a batch (:class:`~.train_step.BatchStep`).
        self.batch_step = BatchStep(model, self.optimizer, self.device, self.dtype, self.layout, self.group)
        self.step = 0
        self.seconds = 0.0
        self.losses: list[float] = []
        self.last_validation: ValidationResult | None = None
        #: The best validation so far and a copy of the weights that reached it.
        self.best = BestWeights()
        #: The training records of the runs ``model``'s weights came from, oldest
        #: first (a fine-tuned model's); its file keeps them beside this run's.
        self.earlier_training = training_history(getattr(model, "metadata", {}))

    def replace_annotations(
        self, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], names: Sequence[str] | None = None
    ) -> None:
        """Draw the samples of the next steps from these images and labels (at
        construction, and while training live as the user paints); model, optimiser
        state and step count stay. Raises :class:`TrainingDataError` for unusable
        annotations and then keeps the previous ones."""
        images, labels = as_image_list(images), as_image_list(labels, read_labels)  # paths read once
        planes = prepare(
            images,
            labels,
            in_channels=self.model.config.in_channels,
            normalization=self.model.spec.normalization,
            weights=self.config.weights,
            channel_axis=self.channel_axis,
            names=names,
            ndim=self.model.config.ndim,
            spacing=self.model.config.spacing,
        )
        #: What the user should hear about these annotations (each also logged).
        self.data_warnings = [warning for plane in planes for warning in plane.warnings]
        #: A fingerprint of the images and labels, kept in checkpoints (see :meth:`resume`).
        self.data_digest = data_digest(images, labels)
        config = self.model.config
        depth = geometry.model_axes(config) if config.ndim == 3 else config.depth
        self.stream = SampleStream(planes, self.tile, depth, self.config.augment, self.config.seed, config.spacing)
        if self.config.fit_sizes:
            self._fit_sizes([plane.objects for plane in planes])

    def _fit_sizes(self, objects: list[CompleteObjects]) -> None:
        """Give the model the minimum object and piece sizes and the shape split's
        settings that its annotation's completely annotated objects suggest
        (:mod:`napari_unet.core.object_size`); without any such object the model
        keeps its own."""
        spec = self.model.spec
        fitted = fitted_instances(spec.instances, objects, self.model.config.ndim, self.model.config.spacing)
        if fitted == spec.instances:
            return
        log.info(
            "segmenting will drop objects under %d %s, split none into pieces under %d, and split objects "
            "filling under %.3f of their ellipse at necks %.2g deep (from %d annotated objects)",
            fitted.min_size,
            "voxels" if self.model.config.ndim == 3 else "px",
            fitted.min_piece,
            fitted.min_fill,
            fitted.neck,
            sum(len(o.sizes) for o in objects),
        )
        self.model.spec = dataclasses.replace(spec, instances=fitted)

    @property
    def warm_starts(self) -> bool:
        """Whether this run's 3D network begins from its 2D twin
        (``config.warm_start_steps``, when training starts at step 0)."""
        return self.config.warm_start_steps > 0 and self.model.config.ndim == 3

    @classmethod
    def resume(
        cls,
        path: str | Path,
        images,
        labels,
        *,
        state: dict | None = None,
        device: str | None = None,
        precision: str | None = None,
        **kwargs,
    ) -> Trainer:
        """Continue exactly where the checkpoint at ``path`` stopped (weights,
        optimiser, step; every sample's randomness follows from the seed and its
        index) with the settings it was started with. Pass the same data as before;
        any number of processes may resume; ``state`` is the checkpoint when already
        loaded.

        ``device`` and ``precision`` replace the recorded ones (the results then
        differ by rounding only); a recorded device this machine lacks (a checkpoint
        made on a GPU, resumed on a laptop) becomes "auto", with a logged warning.
        """
        state = load_state(path) if state is None else state
        config = resumed_config(state, path, device, precision)
        if kwargs.get("checkpoint_path") and Path(kwargs["checkpoint_path"]).resolve() == Path(path).resolve():
            kwargs.setdefault("overwrite", True)  # the run's own checkpoint, written on as it continues
        trainer = cls(model_from_state(state["model"], path), images, labels, config, **kwargs)
        restore_progress(trainer, state, path)
        return trainer

    def learning_rate(self, step: int, seconds: float = 0.0) -> float:
        """The learning rate of step ``step`` (0-based), ``seconds`` into training
        (:func:`~napari_unet.core.optimisation.scheduled_learning_rate`); a run that
        warm-starts from its 2D twin fine-tunes at a tenth of the default peak."""
        cfg = self.config
        peak = cfg.learning_rate * (FINE_TUNE_LR_SCALE if self.warm_starts and cfg.lr is None else 1.0)
        return scheduled_learning_rate(cfg, peak, step, seconds)

    def run(self) -> Generator[TrainEvent, None, TrainSummary]:
        """Train until ``steps`` or ``minutes``; yields a :class:`StepProgress` every step,
        a :class:`ValidationResult` every ``config.validation_interval`` steps and at
        the end (when validation data was given) and :class:`CheckpointSaved` every ``checkpoint_every``;
        before all of them, a :class:`WarmStartProgress` every step of the warm start
        (:attr:`warm_starts`). On a CPU, freed memory stays in the process for the next
        step while it runs (:func:`.memory.reuse_freed_memory`) and goes back after."""
        with reuse_freed_memory() if self.device.type == "cpu" else contextlib.nullcontext():
            return (yield from self._run())

    def _run(self) -> Generator[TrainEvent, None, TrainSummary]:
        cfg = self.config
        log.info(
            "training on %s in %s: tile %s, batch %d, %s",
            self.device,
            precision_name(self.dtype),
            self.tile,
            cfg.batch_size,
            cfg.optimizer,
        )
        started = time.perf_counter() - self.seconds
        self.model.to(memory_format=self.layout)  # back to channels-first when training stops
        lay_out_like_weights(self.optimizer)  # a resumed run's state was read channels-first
        between_steps = True  # whether the state is exactly that after self.step steps
        checkpoints = None
        if self.checkpoint_path is not None and self.group.is_main:
            for stale in remove_stale_temporaries(self.checkpoint_path):
                log.info("removed %s, left by an interrupted write", stale)
            exists = bool(self.step or self.warm_seconds)
            checkpoints = CheckpointSchedule(self.checkpoint_path, self._write_checkpoint, self.step, exists)
        if self._warm_start_data is not None and self.step == 0 and not self.warm_seconds:
            images, labels, names = self._warm_start_data
            self._warm_start_data = None
            options = {"channel_axis": self.channel_axis, "names": names}
            seconds, whole = yield from iter_warm_start(self.model, images, labels, cfg, self._stop, **options)
            # a warm start stopped midway is done again whole by a resumed run, which then continues
            # exactly (it skipped the steps left, and ended elsewhere than the uninterrupted run); its
            # time is not counted either, or a run limited by minutes would lose it from its 3D steps
            self.warm_seconds = seconds if whole else 0.0
            self.warm_start_stopped = not whole
            self.seconds = time.perf_counter() - started - (0.0 if whole else seconds)
            # its weights are work that a stop must not lose
            if checkpoints is not None and (saved := checkpoints.write_now(self.step)):
                yield saved
        prefetch = BatchPrefetcher(self.sampling_workers)
        try:
            while self.step < cfg.steps and not self._should_stop(started):
                between_steps = False
                begin = time.perf_counter()
                upcoming = [self._sample_indices(step) for step in range(self.step + 1, cfg.steps)[: prefetch.workers]]
                batch = prefetch.batch(self.stream, self._sample_indices(self.step), upcoming)
                data_seconds = time.perf_counter() - begin
                lr = self.learning_rate(self.step, self._elapsed(started))
                loss = self.batch_step(batch, lr, self.step + 1)
                self.step += 1
                self.losses.append(loss)
                self.seconds = time.perf_counter() - started
                between_steps = True
                yield self._progress(loss, lr, begin, data_seconds)
                if not self.group.is_main:
                    continue
                if self.validation and (self.step % cfg.validation_interval == 0 or self.step == cfg.steps):
                    yield self._validated()
                if checkpoints is not None and (event := checkpoints.after_step(self.step, cfg.checkpoint_every)):
                    yield event
            ended_by_time = self.step < cfg.steps and not self._stop.is_set()  # not stopped: resumes stay exact
            if self.validation and self.group.is_main and ended_by_time and not self._validated_at(self.step):
                yield self._validated()  # a run that ended by time: its last step too
        finally:
            prefetch.close()
            if checkpoints is not None:
                checkpoints.at_end(self.step, between_steps)
            self._restore_best()
            self.model.to(memory_format=torch.contiguous_format)
            self.model.eval()
            self.model.metadata = self.metadata()  # what its file records, also for a model kept in memory
        return self.summary()

    def _validated_at(self, step: int) -> bool:
        return self.last_validation is not None and self.last_validation.step == step

    @property
    def sampling_workers(self) -> int:
        """How many batches background threads draw at once, ahead of the steps.

        None on a CPU: the thread's work would take cores from torch's threads, which
        then wait for each other (on a 2-core Xeon with AMX, drawing every batch in the
        step gave 1.05x the steps/s of a thread drawing ahead; the widgets, which leave a
        core to the viewer, never had the thread). On a GPU half the cores, at most
        :data:`MAX_SAMPLING_WORKERS`: there the CPU's sample preparation is what the
        steps wait for (on an H200 with 16 cores and one thread, 49-55% of a step of the
        paper network with batch 1 in bf16, 74-83% with batch 4, 92% for the 3D
        network; bench/bench_gpu.py).
        """
        if self._sampling_workers is not None:
            return self._sampling_workers
        if self.device.type == "cpu":
            return 0
        return max(1, min(MAX_SAMPLING_WORKERS, available_cores() // 2))

    @sampling_workers.setter
    def sampling_workers(self, workers: int) -> None:
        """Draw this many batches ahead instead (benchmarks compare settings so)."""
        self._sampling_workers = workers

    def _sample_indices(self, step: int) -> list[int]:
        """The global indices of this process's samples in ``step``."""
        return [step * self.config.batch_size + j for j in self.share]

    def _elapsed(self, started: float) -> float:
        """Seconds since training started (the longest of all processes' clocks)."""
        if not self.config.decay_by_time or self.config.minutes is None:
            return 0.0  # only then does the schedule depend on the clock
        return max_over_processes(time.perf_counter() - started, self.group)

    def _validated(self) -> ValidationResult:
        """Validate now, and keep a copy of the weights if they are the best so far."""
        self.last_validation = self.validate()
        self.best.offer(self.last_validation, self.model, self.config.keep_best)
        return self.last_validation

    def _restore_best(self) -> None:
        """Give the model the best validated weights, if they beat the last validation.
        (The checkpoint keeps the last step's weights, and the best ones beside them.)"""
        stands_for = self.best.restore(self.model)
        if stands_for is not None and stands_for != self.last_validation:
            log.info("kept the weights of step %d (validation AP@0.5 %.3f)", stands_for.step, stands_for.ap50)
        self.last_validation = stands_for

    def request_stop(self) -> None:
        """Stop after the current step: :meth:`run` then writes its checkpoint (at a
        step boundary, so resuming from it is exact) and returns. Safe to call from
        another thread or a signal handler."""
        self._stop.set()

    def _write_checkpoint(self) -> str | None:
        """Write the checkpoint; on failure log it (the first time as a warning), keep
        the reason in :attr:`checkpoint_error` and return it (``None`` when written)."""
        try:
            self.save_checkpoint(self.checkpoint_path)
        except OutputFileError as error:
            report = log.info if self.checkpoint_error else log.warning
            report("checkpoint at step %d failed: %s; training goes on", self.step, error)
            self.checkpoint_error = str(error)
            return self.checkpoint_error
        self.checkpoint_error = None
        return None

    def _should_stop(self, started: float) -> bool:
        """Out of time, or asked to stop, on any process (so that all stop together)."""
        minutes = self.config.minutes
        out_of_time = minutes is not None and time.perf_counter() - started >= 60 * minutes
        return any_process(out_of_time or self._stop.is_set(), self.group)

    def _progress(self, loss: float, lr: float, begin: float, data_seconds: float) -> StepProgress:
        cfg = self.config
        step_seconds = max(time.perf_counter() - begin, 1e-9)
        per_step = (self.seconds - self.warm_seconds) / self.step if self.step else step_seconds
        remaining = (cfg.steps - self.step) * per_step
        total = cfg.steps
        if cfg.minutes is not None:
            remaining = min(remaining, max(60 * cfg.minutes - self.seconds, 0.0))
            total = min(cfg.steps, self.step + round(remaining / per_step))
        return StepProgress(
            step=self.step,
            total_steps=total,
            loss=loss,
            lr=lr,
            seconds=self.seconds,
            samples_per_second=cfg.batch_size / step_seconds,
            eta_seconds=remaining,
            data_fraction=data_seconds / step_seconds,
        )

    def validate(self) -> ValidationResult:
        """AP@0.5 (matches pooled over images) and the area-weighted mean pixel IoU."""
        matches, ious, areas = [], [], []
        options = {"device": self.device, "precision": precision_name(self.dtype), "channel_axis": self.channel_axis}
        for image, truth in self.validation:
            labels = segment(self.model, image, notes=False, **options)
            matches.append(match_instances(labels, truth, thresholds=(0.5,)))
            ious.append(pixel_iou(labels, truth))
            areas.append(np.asarray(truth).size)
        return ValidationResult(self.step, combine(matches)[0].ap, float(np.average(ious, weights=areas)))

    def summary(self) -> TrainSummary:
        return TrainSummary(
            steps=self.step,
            seconds=self.seconds,
            final_loss=final_loss(self.losses),
            validation=self.last_validation,
        )

    def metadata(self) -> dict:
        """What the model file records about this training."""
        summary = self.summary()
        return {
            "training": {
                "steps": summary.steps,
                "seconds": round(summary.seconds, 2),
                "final_loss": summary.final_loss,
                "tile": self.tile,
                "device": str(self.device),
                "precision": precision_name(self.dtype),
                "config": self.config.to_dict(),
                "validation": None if summary.validation is None else vars(summary.validation),
            },
            "weight_map": {"w0": self.config.weights.w0, "sigma": self.config.weights.sigma},
            **({"earlier_training": self.earlier_training} if self.earlier_training else {}),
        }

    def save_model(self, path: str | Path) -> None:
        """Write the trained model with its training record (atomically)."""
        save_model(self.model, path, **self.metadata())

    def save_checkpoint(self, path: str | Path) -> None:
        """Write everything needed to resume exactly (atomically)."""
        save_state(path, checkpoint_record(self))
        log.info("checkpoint at step %d written to %s", self.step, path)


def iter_train(
    model: UNet,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    config: TrainConfig | None = None,
    **kwargs,
) -> Generator[TrainEvent, None, TrainSummary]:
    """Train ``model`` in place, as a generator of progress events that returns a
    :class:`TrainSummary`; stop early by closing it. ``images`` and ``labels``: lists
    of images and their annotations, or one of each (a stack is one image).

    ``config`` (default :class:`TrainConfig()`) with any of its fields given as
    keywords (``steps=500, device="cpu", seed=0``); the other keywords are
    :class:`Trainer`'s (``val_images``, ``val_labels``, ``checkpoint_path``,
    ``overwrite``, ``channel_axis``, ``names``, ``val_names``, ``stop``).
    """
    trainer_options = {name: kwargs.pop(name) for name in _TRAINER_OPTIONS if name in kwargs}
    trainer = Trainer(model, images, labels, with_overrides(config or TrainConfig(), kwargs), **trainer_options)
    return (yield from trainer.run())


#: The keyword-only arguments of :class:`Trainer`.
_TRAINER_OPTIONS = [p.name for p in inspect.signature(Trainer.__init__).parameters.values() if p.kind == p.KEYWORD_ONLY]


def train(model: UNet, images, labels, config: TrainConfig | None = None, **kwargs) -> TrainSummary:
    """Train ``model`` in place to the end and return the :class:`TrainSummary`;
    arguments as for :func:`iter_train`."""
    return drive(iter_train(model, images, labels, config, **kwargs))
