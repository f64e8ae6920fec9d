"""Training speed for every torch thread count, on a quiet machine and beside a busy process.

    .venv/bin/python bench/bench_threads.py [--seconds 6] [--max-threads N]

Trains the CPU default model (as ``bench_train.py``) for a few seconds per setting
and prints steps/s for 1..cores torch threads, first with nothing else started by
the benchmark ("quiet") and then beside one busy-looping process ("busy"). Then it
lets the default policy (``napari_unet.core.threads.choose_threads``, as the command
line uses it) choose the thread count in both situations, and ends with the line

    threads: busy/quiet steps-per-second ratio R with the default policy

Other programs on a shared machine add to "quiet"; the load they caused is printed
before each quiet run. About two minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch

from common import format_table, print_header
from napari_unet.core.config import default_model_config
from napari_unet.core.model import UNet
from napari_unet.core.synthetic import synthetic_dataset
from napari_unet.core.threads import available_cores, choose_threads, other_busy_cores
from napari_unet.core.train import Trainer
from napari_unet.core.train_config import TrainConfig
from napari_unet.core.train_events import StepProgress

WARMUP_STEPS = 2
BUSY_LOOP = "while True:\n    pass\n"


def steps_per_second(threads: int, data, seconds: float) -> float:
    """Steps/s of the CPU default training with ``threads`` torch threads, measured
    over about ``seconds`` after the warm-up steps (at least two measured steps)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    images, labels = zip(*data)
    config = TrainConfig(steps=10**6, device="cpu", precision="auto", checkpoint_every=10**9)
    trainer = Trainer(UNet.from_config(default_model_config("cpu")), list(images), list(labels), config)
    stamps = []
    events = trainer.run()
    try:
        for event in events:
            if not isinstance(event, StepProgress):
                continue
            stamps.append(time.perf_counter())
            measured = stamps[WARMUP_STEPS - 1 :]
            if len(measured) >= 3 and measured[-1] - measured[0] >= seconds:
                break
    finally:
        events.close()
    measured = stamps[WARMUP_STEPS - 1 :]
    return (len(measured) - 1) / (measured[-1] - measured[0])


class BusyProcess:
    """One other process that keeps a core busy (a Python busy loop)."""

    def __enter__(self) -> BusyProcess:
        self.process = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
        time.sleep(0.5)  # let it start spinning
        return self

    def __exit__(self, *exc) -> None:
        self.process.kill()
        self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per setting")
    parser.add_argument("--max-threads", type=int, default=None, help="largest thread count (default: cores)")
    args = parser.parse_args()
    print_header("threads: training steps/s by torch thread count, quiet and beside a busy process")
    cores = available_cores()
    counts = range(1, (args.max_threads or cores) + 1)
    data = synthetic_dataset(2, (256, 256), seed=0)
    model = default_model_config("cpu")
    print(f"CPU default model (base {model.base_channels}, depth {model.depth}), {cores} usable core(s)")
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, OMP_WAIT_POLICY=", end="")
    print(os.environ.get("OMP_WAIT_POLICY", "unset (torch's default)"))
    print()
    rows = []
    for threads in counts:
        other = other_busy_cores()
        quiet = steps_per_second(threads, data, args.seconds)
        with BusyProcess():
            busy = steps_per_second(threads, data, args.seconds)
        rows.append([threads, f"{other:.2f}", f"{quiet:.2f}", f"{busy:.2f}", f"{busy / quiet:.2f}"])
    print(format_table(["threads", "other load (cores)", "quiet steps/s", "busy steps/s", "busy/quiet"], rows))
    print()
    other = other_busy_cores()
    quiet_threads = choose_threads()
    quiet = steps_per_second(quiet_threads, data, args.seconds)
    with BusyProcess():
        busy_threads = choose_threads()
        busy = steps_per_second(busy_threads, data, args.seconds)
    policy_rows = [
        [f"quiet (other load {other:.2f} cores)", quiet_threads, f"{quiet:.2f}"],
        ["busy", busy_threads, f"{busy:.2f}"],
    ]
    print(format_table(["default policy", "threads chosen", "steps/s"], policy_rows))
    print(f"threads: busy/quiet steps-per-second ratio {busy / quiet:.2f} with the default policy")


if __name__ == "__main__":
    main()
