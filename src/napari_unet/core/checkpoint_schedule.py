"""When a training run writes its checkpoint, and what it says when it cannot.

A run writes its checkpoint every ``checkpoint_every`` steps, after a 3D network's warm
start, and when it ends between two steps, for whatever reason. A checkpoint is only
ever written between steps, so that resuming from it is exact: a run interrupted in
the middle of a step (an exception raised inside it) keeps the last checkpoint and
says which. A periodic checkpoint that cannot be written (a full disk) is reported
once per run, and training goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from .train_events import CheckpointFailed, CheckpointSaved

log = logging.getLogger(__name__)


class CheckpointSchedule:
    """The checkpoints of one run to ``path``. ``write()`` writes the trainer's state
    as it is now and returns ``None``, or why it could not (the file then keeps what
    it held); ``step`` is the step the run starts from and ``exists`` whether a
    checkpoint of that step was written already."""

    def __init__(self, path: Path, write: Callable[[], str | None], step: int, exists: bool) -> None:
        self.path = path
        self._write = write
        self._tried_at = step
        self._saved_at = step if exists else None
        self._reported = False

    def write_now(self, step: int) -> CheckpointSaved | None:
        """Write the state after ``step`` steps; the event to yield when it was written."""
        return None if self._write_at(step) else CheckpointSaved(step, str(self.path))

    def after_step(self, step: int, every: int) -> CheckpointSaved | CheckpointFailed | None:
        """After step ``step``: write every ``every`` steps; the event to yield (a
        failure only the first time in the run)."""
        if step % every:
            return None
        error = self._write_at(step)
        if error is None:
            return CheckpointSaved(step, str(self.path))
        if self._reported:
            return None
        self._reported = True
        return CheckpointFailed(step, str(self.path), f"checkpoint at step {step} failed: {error}; training goes on")

    def _write_at(self, step: int) -> str | None:
        """Write the state after ``step`` steps and note it; why it failed, or ``None``."""
        self._tried_at = step
        error = self._write()
        if error is None:
            self._saved_at = step
        return error

    def at_end(self, step: int, between_steps: bool) -> None:
        """The run ends after ``step`` steps: write the state unless the last write was
        of this step, or say which checkpoint is kept when the run stopped inside a
        step (``between_steps`` False)."""
        if step <= self._tried_at:
            return
        if between_steps:
            self._write()
            return
        saved = self._saved_at
        kept = "no checkpoint is written" if saved is None else f"the checkpoint of step {saved} is kept"
        log.warning(
            "training was interrupted in the middle of step %d, whose state is half made: %s "
            "(a checkpoint is only written between steps, so that resuming is exact)",
            step + 1,
            kept,
        )
