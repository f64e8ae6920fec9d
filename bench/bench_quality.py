"""Quality of CPU training on synthetic nuclei, and what the separation weights buy.

Trains the CPU-sized default model on the demo's synthetic training images for a
fixed wall-time budget, once with the paper's separation weights (w0 = 10) and once
without them (w0 = 0), then segments the held-out 512x512 test images and reports
instance AP and how many touching ground-truth pairs end up merged.

    .venv/bin/python bench/bench_quality.py [--minutes 3] [--steps N] [--lr LR] [--w0 10 0] [--seed 0]

Time to a good model (``--target 0.95``): per seed, one run of ``--steps`` steps (the
schedule spans them, no time limit) of the CPU default and one of the same network without
batch normalisation (the default before it); every ``--every`` steps the training
pauses, the held-out images are predicted once and turned into labels with and
without splitting touching objects (``split`` 0.1, the default, and 0, the paper's
components), and the training time (pauses left out) at which AP@0.5 first reaches
the target is reported for each pair; with several ``--seeds`` (default three: runs
differ widely) the medians over the seeds are compared with the default's (a run that
never reaches the target counts with its whole training time, a lower bound).

    .venv/bin/python bench/bench_quality.py --target 0.95 --steps 600 [--every 25] [--seeds 0 1 2]
        [--networks "CPU default"] [--stop-at-target] [--tile T] [--batch-size B] [--lr LR]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import format_table, median, print_header
from napari_unet import ModelConfig, StepProgress, default_model_config, predict
from napari_unet.core.instances import probabilities_to_labels
from napari_unet.core.metrics import combine, match_instances, touching_pairs
from napari_unet.core.progress import drive
from napari_unet.demo import demo_data, demo_trainer, evaluate_on_test

#: Post-processings compared by --target: the default split and the paper's components.
SPLITS = {"split 0.1 (default)": 0.1, "split 0 (components)": 0.0}


def run(minutes: float | None, steps: int, options: dict, seed: int, w0: float) -> list[str]:
    data = demo_data(seed)
    trainer = demo_trainer(data, minutes=minutes, steps=steps, seed=seed, device="cpu", w0=w0, **options)
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


#: Networks compared by --target: the CPU default and the same without batch
#: normalisation (the CPU default before batch normalisation became part of it).
MODELS = {
    "CPU default": default_model_config("cpu"),
    "no batch norm": replace(default_model_config("cpu"), batch_norm=False),
}


def training_curve(
    model: ModelConfig, steps: int, options: dict, seed: int, every: int, stop_at: float | None = None
) -> list[list]:
    """Rows (step, training seconds, AP@0.5 with each of SPLITS) every ``every`` steps
    of one training run of ``model`` (``options``: training settings other than the
    defaults); the pauses to measure are left out of the time. ``stop_at``: end the
    run once every labelling has reached that AP@0.5."""
    data = demo_data(seed)
    trainer = demo_trainer(data, minutes=None, steps=steps, seed=seed, device="cpu", model_config=model, **options)
    curve, training_seconds, resumed = [], 0.0, time.perf_counter()
    for event in trainer.run():
        if not isinstance(event, StepProgress) or (event.step % every and event.step != steps):
            continue
        training_seconds += time.perf_counter() - resumed
        probabilities = [predict(trainer.model, image, device="cpu") for image, _ in data.test]
        aps = []
        for split in SPLITS.values():
            instances = replace(trainer.model.spec.instances, split=split)
            stats = [
                match_instances(probabilities_to_labels(p, instances), truth, thresholds=(0.5,))
                for p, (_, truth) in zip(probabilities, data.test)
            ]
            aps.append(combine(stats)[0].ap)
        curve.append([event.step, training_seconds, *aps])
        print("  ".join([str(event.step), f"{training_seconds:.0f}", *(f"{ap:.3f}" for ap in aps)]), flush=True)
        if stop_at is not None and min(aps) >= stop_at:
            break
        resumed = time.perf_counter()
    return curve


def time_to_target(
    steps: int, options: dict, seeds: list[int], every: int, target: float, networks: list[str], stop: bool
) -> None:
    """Train each of ``networks`` (names in MODELS) once per seed (data, initial
    weights and samples follow the seed); print AP@0.5 on the held-out images every
    ``every`` steps with each of SPLITS, the training time at which each pair first
    reached ``target``, and the median time over the seeds of each pair against the
    first's. ``stop``: a run ends once both labellings reached the target."""
    rows, reached = [], {}
    for seed in seeds:
        for model_name in networks:
            print(f"seed {seed}, {model_name}: step, training s, AP@0.5 with {', '.join(SPLITS)}")
            curve = training_curve(MODELS[model_name], steps, options, seed, every, target if stop else None)
            for i, split_name in enumerate(SPLITS):
                first = next((row for row in curve if row[2 + i] >= target), None)
                # not reached: the whole run's training time, a lower bound
                times = reached.setdefault((model_name, split_name), [])
                times.append((curve[-1][1], False) if first is None else (first[1], True))
                at = "-" if first is None else f"{first[0]} / {first[1]:.0f} s"
                rows.append([str(seed), model_name, split_name, at, f"{curve[-1][0]}: {curve[-1][2 + i]:.3f}"])
    print()
    headers = ["seed", "network", "labels", f"first step / training s with AP@0.5 >= {target}", "last step: AP@0.5"]
    print(format_table(headers, rows))
    print()
    (default, default_times), *others = reached.items()
    if not all(done for _, done in default_times):
        print(f"the default ({' + '.join(default)}) did not reach {target} with every seed")
        return
    default_median = median([seconds for seconds, _ in default_times])
    for (model_name, split_name), times in others:
        bound = "" if all(done for _, done in times) else ">= "  # some runs never reached it
        other_median = median([seconds for seconds, _ in times])
        ratios = " ".join(f"{'' if done else '<= '}{a / b:.2f}" for (a, _), (b, done) in zip(default_times, times))
        print(
            f"time to AP@0.5 >= {target}, median of {len(seeds)} seeds: {default_median:.0f} s "
            f"({' + '.join(default)}) vs {bound}{other_median:.0f} s ({model_name} + {split_name}): "
            f"{'<= ' if bound else ''}{default_median / other_median:.2f}x (per seed {ratios})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="wall-time budget per run (0: none)")
    parser.add_argument("--steps", type=int, default=100_000, help="step budget per run")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the trainer's)")
    parser.add_argument("--tile", type=int, default=None, help="training tile (default: the trainer's)")
    parser.add_argument("--batch-size", type=int, default=None, help="tiles per step (default: the trainer's)")
    parser.add_argument("--w0", type=float, nargs="+", default=[10.0, 0.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the --target runs")
    parser.add_argument("--target", type=float, default=None, help="report the time to reach this AP@0.5 instead")
    parser.add_argument("--every", type=int, default=25, help="steps between measurements with --target")
    parser.add_argument("--networks", nargs="+", choices=list(MODELS), default=list(MODELS), help="with --target")
    parser.add_argument("--stop-at-target", action="store_true", help="end each --target run once it got there")
    args = parser.parse_args()
    chosen = {"lr": args.lr, "tile": args.tile, "batch_size": args.batch_size}
    options = {name: value for name, value in chosen.items() if value is not None}
    if options:
        print("training settings other than the defaults:", options)
    if args.target is not None:
        print_header(f"time to AP@0.5 >= {args.target} on held-out synthetic nuclei (2 x 512x512 test images)")
        print(f"{args.steps} steps per run (schedule over the steps), measured every {args.every} steps")
        return time_to_target(
            args.steps, options, args.seeds, args.every, args.target, args.networks, args.stop_at_target
        )
    print_header("training quality on held-out synthetic nuclei (2 x 512x512 test images)")
    rows = [run(args.minutes or None, args.steps, options, args.seed, w0) for w0 in args.w0]
    headers = ["w0", "steps", "train s", "AP@0.5", "AP@0.75", "F1@0.5", "pixel IoU", "merged touching pairs"]
    print(format_table(headers, rows))


if __name__ == "__main__":
    main()
