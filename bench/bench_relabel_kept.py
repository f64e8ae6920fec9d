"""Relabel the test parts of the models that ``bench_real.py --keep DIR`` left, with
whatever napari_unet is on the path, and score them as bench_real scores.

    PYTHONPATH=SRC .venv/bin/python bench/bench_relabel_kept.py --kept DIR [DIR ...] [--split DEPTH]

Each kept folder's model predicts its test part once (cached there as probs.npy); the
probabilities become labels with the model's own instance settings (``--split``
replaces their depth) and get bench_real's row. Run it with ``PYTHONPATH`` set to the
``src`` of two checkouts to compare two post-processings on the same probabilities.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np

import napari_unet as nu
from bench_real import score
from common import format_table, kept_split, print_header
from napari_unet.core.instances import probabilities_to_labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kept", type=Path, nargs="+", required=True, help="folders left by bench_real.py --keep")
    parser.add_argument("--split", type=float, default=None, help="split depth instead of the model's")
    args = parser.parse_args()
    print_header(f"kept models relabelled by {nu.__file__}")
    rows = []
    for kept in args.kept:
        for folder in sorted(p for p in kept.iterdir() if p.is_dir()):
            model, test, truth = kept_split(folder)
            cache = folder / "probs.npy"
            if cache.exists():
                probabilities = np.load(cache)
            else:
                probabilities = nu.predict(model, test, device="cpu")
                np.save(cache, probabilities)
            instances = model.spec.instances
            if args.split is not None:
                instances = replace(instances, split=args.split)
            rows.append(
                [
                    f"{kept.name}/{folder.name}",
                    f"{instances.split:g}",
                    *score(probabilities_to_labels(probabilities, instances), truth),
                ]
            )
    headers = [
        "model",
        "split",
        "true/pred",
        "AP@0.5",
        "AP@0.75",
        "mAP",
        "mean IoU",
        "merged",
        "split",
        "missed",
        "FP",
        "offset px",
    ]
    print(format_table(headers, rows))


if __name__ == "__main__":
    main()
