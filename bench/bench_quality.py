"""Quality of CPU training on synthetic nuclei, and what the separation weights buy.

Trains the CPU-sized default model on the demo's synthetic training images for a
fixed wall-time budget, once with the paper's separation weights (w0 = 10) and once
without them (w0 = 0), then segments the held-out 512x512 test images and reports
instance AP and how many touching ground-truth pairs end up merged.

    .venv/bin/python bench/bench_quality.py [--minutes 3] [--steps N] [--lr LR] [--w0 10 0] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import format_table, print_header
from napari_unet.core.metrics import touching_pairs
from napari_unet.core.progress import drive
from napari_unet.demo import demo_data, demo_trainer, evaluate_on_test


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="wall-time budget per run (0: none)")
    parser.add_argument("--steps", type=int, default=100_000, help="step budget per run")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the trainer's)")
    parser.add_argument("--w0", type=float, nargs="+", default=[10.0, 0.0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print_header("training quality on held-out synthetic nuclei (2 x 512x512 test images)")
    rows = [run(args.minutes or None, args.steps, args.lr, args.seed, w0) for w0 in args.w0]
    headers = ["w0", "steps", "train s", "AP@0.5", "AP@0.75", "F1@0.5", "pixel IoU", "merged touching pairs"]
    print(format_table(headers, rows))


if __name__ == "__main__":
    main()
