"""Training steps/s of this checkout against another one, runs alternating.

    git worktree add /tmp/before <commit>
    .venv/bin/python bench/compare_training.py /tmp/before [--rounds 4] [--steps 30]

Each round runs bench_train.py's headless measurement of the CPU default and of the
fixed workload (the same network without batch normalisation) once per checkout, each
in a fresh process importing that checkout's ``src`` (the other checkout's own
``bench/bench_train.py`` measures it), so that a busy spell of this shared machine
hits both. Prints every run and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import format_table, median, print_header

HERE = Path(__file__).resolve().parent.parent
SETTINGS = ("cpu-default", "cpu-default, no BN")
MEASURE = """
import sys
sys.path.insert(0, "bench")
from bench_train import headless
from napari_unet.core.synthetic import synthetic_dataset
print(headless(sys.argv[1], int(sys.argv[2]), synthetic_dataset(4, (256, 256), seed=0))[0])
"""


def steps_per_second(checkout: Path, setting: str, steps: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout / "src")}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, setting, str(steps)],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="the other checkout (e.g. a git worktree of an earlier commit)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    print_header("training speed: this checkout against another")
    checkouts = {"this": HERE, "other": args.other.resolve()}
    for name, path in checkouts.items():
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=path, capture_output=True, text=True)
        print(f"{name}: {path} at {commit.stdout.strip() or 'unknown commit'}")
    rates = {(c, s): [] for c in checkouts for s in SETTINGS}
    for _ in range(args.rounds):
        for setting in SETTINGS:
            for checkout, path in checkouts.items():
                rates[checkout, setting].append(steps_per_second(path, setting, args.steps))
    rows = []
    for setting in SETTINGS:
        this, other = median(rates["this", setting]), median(rates["other", setting])
        runs = [" ".join(f"{r:.2f}" for r in rates[c, setting]) for c in checkouts]
        rows.append([setting, *runs, f"{this:.2f}", f"{other:.2f}", f"{this / other:.2f}x"])
    headers = ["setting", "this: steps/s", "other: steps/s", "this median", "other median", "this / other"]
    print(format_table(headers, rows))


if __name__ == "__main__":
    main()
