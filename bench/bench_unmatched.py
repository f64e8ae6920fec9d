"""Which true objects the kept real-data models leave unmatched, and how often.

For every model that ``bench_real.py --keep DIR`` left, its test part is labelled with
its own instance settings (probabilities cached as ``probs.npy``, as
``bench_relabel_kept.py`` caches them) and matched one-to-one to the truth at IoU 0.5
(``napari_unet.core.metrics``). Each true object without a match is listed per split
with its size, its centre, whether it touches the test part's border, the highest
foreground probability on it and the size of the prediction covering most of it; the
table says in how many of the split's models it is unmatched.

    .venv/bin/python bench/bench_unmatched.py --kept DIR [DIR ...] [--splits NAME ...]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np

from common import format_table, kept_probabilities, kept_split, print_header
from napari_unet.core.instances import foreground, probabilities_to_labels
from napari_unet.core.metrics import contingency, iou_matrix, optimal_matches


def unmatched(pred: np.ndarray, truth: np.ndarray, probability: np.ndarray) -> list[tuple]:
    """(true id, size, centre, at border, highest foreground, covering prediction's size)
    of each object of ``truth`` that no object of ``pred`` matches at IoU 0.5 (2D or 3D)."""
    table, true_ids, _ = contingency(pred, truth)
    rows, _ = optimal_matches(iou_matrix(table), 0.5)
    found = []
    for row in sorted(set(range(true_ids.size)) - set(rows.tolist())):
        where = truth == true_ids[row]
        coords = [c for c, n in zip(np.nonzero(where), truth.shape) if n > 1]  # not a stack's single plane
        border = any(c.min() == 0 or c.max() == n - 1 for c, n in zip(coords, [n for n in truth.shape if n > 1]))
        covering = table[row + 1, 1:]
        pred_size = int(table[:, 1:].sum(axis=0)[covering.argmax()]) if covering.any() else 0
        centre = tuple(round(float(c.mean())) for c in coords)
        found.append((int(true_ids[row]), int(where.sum()), centre, border, float(probability[where].max()), pred_size))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kept", type=Path, nargs="+", required=True, help="folders left by bench_real.py --keep")
    parser.add_argument("--splits", nargs="+", help="the split folders to look at (default: all)")
    args = parser.parse_args()
    print_header("true objects the kept models leave unmatched at IoU 0.5")
    seen: dict[tuple, list] = defaultdict(list)
    models: dict[str, int] = defaultdict(int)
    for kept in args.kept:
        for folder in sorted(p for p in kept.iterdir() if p.is_dir()):
            if args.splits and folder.name not in args.splits:
                continue
            model, test, truth = kept_split(folder)
            probabilities = kept_probabilities(folder, model, test)
            ndim = model.config.ndim
            labels = probabilities_to_labels(probabilities, model.spec.instances, ndim=ndim).reshape(truth.shape)
            probability = foreground(probabilities, ndim).reshape(truth.shape)
            models[folder.name] += 1
            for true_id, size, centre, border, highest, pred_size in unmatched(labels, truth, probability):
                seen[folder.name, true_id, size, centre, border].append((highest, pred_size))
    rows = []
    by_split_then_count = sorted(seen.items(), key=lambda item: (item[0][0], -len(item[1])))
    for (split, true_id, size, centre, border), found in by_split_then_count:
        highest = [h for h, _ in found]
        covering = [p for _, p in found]
        rows.append(
            [
                split,
                str(true_id),
                str(size),
                str(centre),
                "yes" if border else "no",
                f"{len(found)} of {models[split]}",
                f"{min(highest):.2f}-{max(highest):.2f}",
                f"{min(covering)}-{max(covering)}",
            ]
        )
    headers = ["split", "true id", "px", "centre", "at border", "unmatched in", "highest foreground"]
    headers.append("covering pred px")
    print(format_table(headers, rows))
    print("covering pred px: the size of the prediction that covers most of the object (0: none does)")


if __name__ == "__main__":
    main()
