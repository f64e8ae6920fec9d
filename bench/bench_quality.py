"""Quality of CPU training on synthetic nuclei, and what the separation weights buy.

Trains the CPU-sized default model on the demo's synthetic training images for a
fixed wall-time budget, once with the paper's separation weights (w0 = 10) and once
without them (w0 = 0), then segments the held-out 512x512 test images and reports
instance AP and how many touching ground-truth pairs end up merged.

    .venv/bin/python bench/bench_quality.py [--minutes 3] [--steps N] [--lr LR] [--w0 10 0] [--seed 0]

Time to a good model (``--target 0.95``): one run of ``--steps`` steps (the schedule
spans them, no time limit); every ``--every`` steps the training pauses, the held-out
images are predicted once and turned into labels with and without splitting touching
objects (``split`` 0.1, the default, and 0, the paper's components), and the
training time (pauses left out) at which AP@0.5 first reaches the target is reported
for each.

    .venv/bin/python bench/bench_quality.py --target 0.95 --steps 900 [--every 25]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import format_table, print_header
from napari_unet import StepProgress, predict
from napari_unet.core.instances import probabilities_to_labels
from napari_unet.core.metrics import combine, match_instances, touching_pairs
from napari_unet.core.progress import drive
from napari_unet.demo import demo_data, demo_trainer, evaluate_on_test

#: Post-processings compared by --target: the default split and the paper's components.
SPLITS = {"split 0.1 (default)": 0.1, "split 0 (components)": 0.0}


def run(minutes: float | None, steps: int, lr: float | None, seed: int, w0: float) -> list[str]:
    data = demo_data(seed)
    trainer = demo_trainer(data, minutes=minutes, steps=steps, lr=lr, seed=seed, device="cpu", w0=w0)
    summary = drive(trainer.run())
    _, rows = evaluate_on_test(trainer, data)
    overall = {round(s.threshold, 2): s for s in rows[-1][1]}
    pairs = sum(len(touching_pairs(truth)) for _, truth in data.test)
    merged = rows[-1][3]
    return [
        f"{w0:g}",
        str(summary.steps),
        f"{summary.seconds:.0f}",
        f"{overall[0.5].ap:.3f}",
        f"{overall[0.75].ap:.3f}",
        f"{overall[0.5].f1:.3f}",
        f"{rows[-1][2]:.3f}",
        f"{merged}/{pairs}",
    ]


def time_to_target(steps: int, lr: float | None, seed: int, every: int, target: float) -> None:
    """Print AP@0.5 on the held-out images every ``every`` steps with each of SPLITS
    and the training time at which each first reached ``target``."""
    data = demo_data(seed)
    trainer = demo_trainer(data, minutes=None, steps=steps, lr=lr, seed=seed, device="cpu")
    reached: dict[str, tuple[int, float] | None] = dict.fromkeys(SPLITS)
    curve, training_seconds, resumed = [], 0.0, time.perf_counter()
    for event in trainer.run():
        if not isinstance(event, StepProgress) or (event.step % every and event.step != steps):
            continue
        training_seconds += time.perf_counter() - resumed
        probabilities = [predict(trainer.model, image, device="cpu") for image, _ in data.test]
        aps = []
        for name, split in SPLITS.items():
            instances = replace(trainer.model.spec.instances, split=split)
            stats = [
                match_instances(probabilities_to_labels(p, instances), truth, thresholds=(0.5,))
                for p, (_, truth) in zip(probabilities, data.test)
            ]
            aps.append(combine(stats)[0].ap)
            if reached[name] is None and aps[-1] >= target:
                reached[name] = (event.step, training_seconds)
        curve.append([str(event.step), f"{training_seconds:.0f}", *(f"{ap:.3f}" for ap in aps)])
        print("  ".join(curve[-1]), flush=True)
        resumed = time.perf_counter()
    print(format_table(["step", "train s", *(f"AP@0.5 {name}" for name in SPLITS)], curve))
    print()
    rows = [
        [name, f"{at[0]}" if at else f"not in {steps}", f"{at[1]:.0f}" if at else "-", curve[-1][2 + i]]
        for i, (name, at) in enumerate(reached.items())
    ]
    print(format_table(["labels", f"first step with AP@0.5 >= {target}", "training s", "AP@0.5 at the end"], rows))
    times = [at[1] for at in reached.values() if at]
    if len(times) == 2:
        print(f"time to AP@0.5 >= {target}: {times[0]:.0f} s vs {times[1]:.0f} s ({times[0] / times[1]:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="wall-time budget per run (0: none)")
    parser.add_argument("--steps", type=int, default=100_000, help="step budget per run")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the trainer's)")
    parser.add_argument("--w0", type=float, nargs="+", default=[10.0, 0.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", type=float, default=None, help="report the time to reach this AP@0.5 instead")
    parser.add_argument("--every", type=int, default=25, help="steps between measurements with --target")
    args = parser.parse_args()
    if args.target is not None:
        print_header(f"time to AP@0.5 >= {args.target} on held-out synthetic nuclei (2 x 512x512 test images)")
        print(f"CPU default, {args.steps} steps (schedule over the steps), measured every {args.every} steps")
        return time_to_target(args.steps, args.lr, args.seed, args.every, args.target)
    print_header("training quality on held-out synthetic nuclei (2 x 512x512 test images)")
    rows = [run(args.minutes or None, args.steps, args.lr, args.seed, w0) for w0 in args.w0]
    headers = ["w0", "steps", "train s", "AP@0.5", "AP@0.75", "F1@0.5", "pixel IoU", "merged touching pairs"]
    print(format_table(headers, rows))


if __name__ == "__main__":
    main()
