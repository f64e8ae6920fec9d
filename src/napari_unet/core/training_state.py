"""What a training checkpoint holds besides the model, and how a resumed
:class:`~napari_unet.core.train.Trainer` gets it back.

A checkpoint is a safetensors file (:mod:`.checkpoint`): the model with its training
record, the optimiser's state, the settings, the step count, the clock, the losses, the
best validated weights and a fingerprint of the data. Every sample's randomness follows
from the seed and its index, so these are all a resumed run needs to take exactly the
steps an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .best_weights import BestWeights
from .checkpoint import ModelFileError, model_state
from .devices import resolve_device
from .errors import ConfigError, NapariUnetError, OutputFileError
from .model import weights_lock
from .train_config import TrainConfig

if TYPE_CHECKING:
    from .train import Trainer

log = logging.getLogger(__name__)


def checkpoint_record(trainer: Trainer) -> dict:
    """Everything :func:`restore_progress` needs, ready for :func:`~.checkpoint.save_state`."""
    return {
        "kind": "checkpoint",
        "model": model_state(trainer.model, trainer.metadata()),
        "optimizer": trainer.optimizer.state_dict(),
        "config": trainer.config.to_dict(),
        "step": trainer.step,
        "seconds": trainer.seconds,
        "warm_seconds": trainer.warm_seconds,
        "losses": trainer.losses,
        "validation": trainer.best.to_state(),
        "data": trainer.data_digest,
        # a CPU run's sums split over its threads: the count an exact continuation needs
        **({"threads": torch.get_num_threads()} if trainer.device.type == "cpu" else {}),
    }


def require_checkpoint(state, path: str | Path) -> None:
    """Raise :class:`ConfigError` unless ``state`` (read from ``path``) is a training
    checkpoint: a model file is fine-tuned, not resumed."""
    if not isinstance(state, dict) or state.get("kind") != "checkpoint":
        raise ConfigError(
            f"{path} is a model file, not a training checkpoint: fine-tune it instead (command line: --init {path}; "
            "Python: train load_model(path))"
        )


def refuse_earlier_checkpoint(path: Path, replace: bool) -> None:
    """Raise :class:`~.errors.OutputFileError` when a new run would write its
    checkpoints over the file at ``path`` (an earlier run's work) and ``replace`` is
    false."""
    if path.is_file() and not replace:
        raise OutputFileError(
            f"checkpoint_path {path} holds an earlier run's checkpoint: continue that run with "
            f"nu.Trainer.resume({str(path)!r}, images, labels, checkpoint_path={str(path)!r}), pass "
            "overwrite=True to replace it, or choose another checkpoint_path"
        )


def resumed_config(state, path: str | Path, device: str | None, precision: str | None) -> TrainConfig:
    """The settings a checkpoint's run was started with; ``device`` and ``precision``
    replace the recorded ones, and a recorded device this machine lacks becomes "auto"
    (with a logged warning). Raises :class:`ConfigError` for a model file and
    :class:`ModelFileError` for unusable settings."""
    require_checkpoint(state, path)
    try:
        config = TrainConfig.from_dict(state["config"])
    except (KeyError, NapariUnetError) as error:
        raise ModelFileError(f"{path} records unusable training settings: {error}") from error
    overrides = {}
    if precision is not None:
        overrides["precision"] = precision
    if device is not None:
        overrides["device"] = device
    else:
        try:
            resolve_device(config.device)
        except ConfigError:
            log.warning("the checkpoint was made on %s, which this machine lacks: resuming on auto", config.device)
            overrides["device"] = "auto"
    return dataclasses.replace(config, **overrides)


def restore_progress(trainer: Trainer, state: dict, path: str | Path) -> None:
    """Give ``trainer`` (made with the checkpoint's model and settings) the optimiser
    state, step, clock, losses and best validation that ``state`` recorded. Raises
    :class:`ModelFileError` when they cannot be restored; warns when ``trainer``'s data
    differ from the checkpoint's, or when a CPU run goes on on another number of
    threads than it ran on (some sums are split over the threads, so it then ends
    within rounding of an uninterrupted run, not bit for bit)."""
    try:
        with weights_lock(trainer.model):
            trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.step = _count(state["step"])
        trainer.seconds = float(state["seconds"])
        trainer.warm_seconds = float(state.get("warm_seconds", 0.0))
        trainer.losses = [float(loss) for loss in state["losses"]]
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{path} is damaged: its training state cannot be restored ({error!r})") from error
    if state.get("data", trainer.data_digest) != trainer.data_digest:
        log.warning(
            "the training images or labels differ from those %s was started with: the run goes on with these, "
            "so it ends where an uninterrupted run on the old data would not",
            path,
        )
    recorded, threads = state.get("threads"), torch.get_num_threads()
    if trainer.device.type == "cpu" and isinstance(recorded, int) and recorded != threads:
        log.warning(
            "%s ran on %d CPU thread(s) and goes on on %d: it ends within rounding of an uninterrupted run, "
            "not bit for bit (--threads %d on the command line, torch.set_num_threads(%d) in Python, "
            "continues it exactly)",
            path,
            recorded,
            threads,
            recorded,
            recorded,
        )
    trainer.best = BestWeights.from_state(state.get("validation"), trainer.model, path)
    # the checkpoint's own training record is this run's, not one it started from
    trainer.earlier_training = training_history(trainer.model.metadata, own=False)
    trainer.last_validation = trainer.best.last


def training_history(metadata: dict, *, own: bool = True) -> list[dict]:
    """The training records, oldest first, of every run that the weights of a model
    with this file ``metadata`` went through: the runs its own training started from
    (``earlier_training``) and, with ``own``, its own (``training``). Entries that are
    not records (a hand-edited file) are left out."""
    earlier = metadata.get("earlier_training")
    runs = [*(earlier if isinstance(earlier, list) else []), metadata.get("training") if own else None]
    return [run for run in runs if isinstance(run, dict)]


def _count(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"a step count must be a non-negative integer, got {value!r}")
    return value
