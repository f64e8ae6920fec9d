"""Driving a training from the command line: a progress bar on stderr, and Ctrl-C
or SIGTERM that stop the run after its current step, with its checkpoint."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time

from .cli_args import progress_bar
from .core.progress import drive
from .core.train import Trainer
from .core.train_events import CheckpointFailed, StepProgress, ValidationResult, WarmStartProgress

#: Seconds after a first Ctrl-C in which a process of a data-parallel run takes a second
#: one for the launcher's passing on of the first, not for the user's second.
LAUNCHER_ECHO_S = 1.0


@contextlib.contextmanager
def stop_on_signals(trainer: Trainer):
    """While inside, SIGINT (Ctrl-C) and SIGTERM ask ``trainer`` to stop after its
    current step (it then writes its checkpoint); a second one interrupts at once.
    Yields the list the received signal numbers go to. Outside the main thread
    (where Python cannot take signals) nothing is installed."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    signals = [signal.SIGINT, signal.SIGTERM]
    previous = {number: signal.getsignal(number) for number in signals}
    first_at: list[float] = []

    def first(number, frame) -> None:
        received.append(number)
        first_at.append(time.monotonic())
        trainer.request_stop()
        if trainer.group.is_main:  # (Ctrl-C reaches every process of a data-parallel run: said once)
            print(  # at once: a 3D step can take seconds, and an unanswered Ctrl-C gets pressed again
                f"\nnapari-unet: stopping after step {trainer.step + 1}, then writing the model and checkpoint "
                "(Ctrl-C again interrupts at once and keeps only the last checkpoint)",
                file=sys.stderr,
                flush=True,
            )
        for number in signals:  # a second one interrupts at once
            signal.signal(number, second)

    def second(number, frame) -> None:
        if trainer.group.distributed and time.monotonic() - first_at[0] < LAUNCHER_ECHO_S:
            return  # torchrun passes on the Ctrl-C that reached every process of the run already
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, previous[signal.SIGTERM])
        signal.raise_signal(number)

    for number in signals:
        signal.signal(number, first)
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def run_training(trainer: Trainer) -> int | None:
    """Drive a trainer with a progress bar. Ctrl-C or SIGTERM stops it after the
    current step and keeps its checkpoint; returns that signal's number, if any."""
    quiet = not trainer.group.is_main  # the other processes of a data-parallel run stay quiet
    quiet = quiet or trainer.step >= trainer.config.steps  # a finished run resumed: nothing to show
    # a run limited by time learns its number of steps from the first ones (0/100000 was shown till then)
    total = None if trainer.config.minutes is not None else trainer.config.steps
    desc = "training"
    if trainer.warm_starts and trainer.step == 0:  # the twin's steps come first (a log showed "training 0/20")
        total, desc = (None if trainer.config.minutes is not None else trainer.config.warm_start_steps), "2D warm start"
    with progress_bar(total=total, initial=trainer.step, desc=desc, unit="step", disable=quiet) as bar:

        def show(event) -> None:
            if isinstance(event, WarmStartProgress):  # the bar counts the twin's steps until the first 3D one
                if event.step == 1:
                    bar.set_description("2D warm start")
                bar.total = event.total_steps
                bar.update(event.step - bar.n)
                bar.set_postfix(loss=f"{event.loss:.4f}", refresh=False)  # shown at the bar's own pace
            elif isinstance(event, StepProgress):
                if event.step == 1:
                    bar.set_description("training", refresh=False)  # (before the reset draws the bar)
                    bar.reset(total=event.total_steps)
                bar.total = event.total_steps
                bar.update(event.step - bar.n)
                bar.set_postfix(loss=f"{event.loss:.4f}", eta=f"{event.eta_seconds:.0f}s", refresh=False)
            elif isinstance(event, ValidationResult):
                bar.write(f"step {event.step}: validation AP@0.5 {event.ap50:.3f}, pixel IoU {event.pixel_iou:.3f}")
            elif isinstance(event, CheckpointFailed):
                bar.write(f"napari-unet: warning: {event.message}")

        with stop_on_signals(trainer) as received:
            try:
                drive(trainer.run(), show)
            except KeyboardInterrupt:  # a second Ctrl-C: drive closed the run mid-step
                path = trainer.checkpoint_path
                kept = f"; continue from its last checkpoint with --resume {path}" if path and path.exists() else ""
                bar.write(f"interrupted during step {trainer.step + 1}{kept}")
                raise
        if received:
            if trainer.group.is_main:
                bar.write(f"stopped at step {trainer.step} on {signal.Signals(received[0]).name}")
            return received[0]
    return None
