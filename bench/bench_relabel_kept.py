"""Relabel the test parts of the models that ``bench_real.py --keep DIR`` left, with
whatever napari_unet is on the path, and score them as bench_real scores.

    PYTHONPATH=SRC .venv/bin/python bench/bench_relabel_kept.py --kept DIR [DIR ...] [--split DEPTH] [--refit]

Each kept folder's model predicts its test part once (cached there as probs.npy); the
probabilities become labels with the model's own instance settings (``--split``
replaces their depth; ``--refit`` fits their sizes and shapes again to the kept
training labels, as training with that ``src`` would) and get bench_real's row. Run it with ``PYTHONPATH`` set to the
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
from common import format_table, kept_probabilities, kept_split, print_header
from napari_unet.core.instances import probabilities_to_labels
from napari_unet.core.object_size import complete_objects, fitted_instances


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kept", type=Path, nargs="+", required=True, help="folders left by bench_real.py --keep")
    parser.add_argument("--split", type=float, default=None, help="split depth instead of the model's")
    parser.add_argument("--refit", action="store_true", help="fit sizes and shapes to the kept training labels")
    args = parser.parse_args()
    print_header(f"kept models relabelled by {nu.__file__}")
    rows = []
    for kept in args.kept:
        for folder in sorted(p for p in kept.iterdir() if p.is_dir()):
            model, test, truth = kept_split(folder)
            probabilities = kept_probabilities(folder, model, test)
            instances = model.spec.instances
            if args.refit:
                train = np.load(folder / "train_labels.npy")
                planes = train.reshape(-1, *train.shape[-2:])
                instances = fitted_instances(instances, [complete_objects(plane) for plane in planes])
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
