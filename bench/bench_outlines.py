"""Post-processing: the same probabilities made into labels six ways.

    .venv/bin/python bench/bench_outlines.py [--steps 400] [--kept DIR] [--thresholds T ...]

The CPU default network trained ``--steps`` steps on synthetic nuclei (cached, as in
``common.cpu_default_model``) predicts two held-out 512x512 synthetic images once;
the probabilities become labels with the 1-px grow and no split (``expand=1,
split=0``: the first default), without the grow (``expand=0, split=0``: the paper's
components with the network's outlines) and with touching objects split at
probability dips (``expand=0, split=0.1``), each dropping objects under 16 px; then
the split with the minimum size that training fits to the annotation, that and the
smallest piece a split may leave, fitted too, and the current default: also the split
of objects shaped like several cells with its fitted fill and neck
(:mod:`napari_unet.core.object_size`, computed here from the training labels), scored
as ``bench_real.py`` scores (AP at IoU 0.5 and 0.75, mAP, mean IoU of matched pairs,
the error taxonomy with the signed boundary offset) and by pixel IoU.
``--kept DIR``: also the split folders that ``bench_real.py --keep DIR`` left (their
model, training labels, test image and true labels). ``--thresholds T ...``: two more
rows per threshold T, both from the current default: the foreground threshold T
instead of 0.5 ("threshold T"), and the objects found at 0.5 with their outlines
trimmed to the pixels of probability >= T ("outline T").
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
from common import cpu_default_model, format_table, kept_split, print_header
from napari_unet.core.config import InstanceConfig
from napari_unet.core.instances import foreground, probabilities_to_labels
from napari_unet.core.io import read_image
from napari_unet.core.metrics import pixel_iou
from napari_unet.core.object_size import complete_objects, fitted_instances

#: (expand, split, sizes) of each way: the first default, the paper's components, the
#: split, the split with the fitted minimum size, with both sizes fitted, the current
#: default (also the shape split, fitted).
WAYS = ((1, 0.0, "16"), (0, 0.0, "16"), (0, 0.1, "16"), (0, 0.1, "min size"), (0, 0.1, "fitted"), (0, 0.1, "shape"))


def row(name: str, way: tuple, fitted: InstanceConfig, probabilities: np.ndarray, truth: np.ndarray) -> list[str]:
    """bench_real's scores (and pixel IoU) of the labels made the ``way`` (expand, split,
    sizes: "16", "min size" (``fitted``'s minimum size), "fitted" (its minimum size
    and smallest piece) or "shape" (those and its shape split), then optionally
    "threshold" or "outline" and its T) from probabilities (N, K, H, W) against truth (N, H, W)."""
    expand, split, sizes, *variant = way
    config = InstanceConfig(expand=expand, split=split)
    if sizes == "shape":
        config = replace(fitted, expand=expand, split=split)
    elif sizes != "16":
        config = replace(config, min_size=fitted.min_size, min_piece=fitted.min_piece if sizes == "fitted" else 0)
    kind, level = variant or (None, None)
    if kind == "threshold":
        config = replace(config, threshold=level)
    labels = probabilities_to_labels(probabilities, config)
    if kind == "outline":
        labels = np.where(foreground(probabilities) >= level, labels, 0)
    pixels = np.mean([pixel_iou(p, t) for p, t in zip(labels, truth)])
    cells = [
        name,
        str(expand),
        f"{split:g}" + (f", {kind} {level:g}" if kind else ""),
        str(config.min_size),
        str(config.min_piece),
        f"{config.min_fill:g}",
    ]
    return [*cells, *score(labels, truth), f"{pixels:.3f}"]


def fitted_to(labels) -> InstanceConfig:
    """The instance settings training fits to these training label planes (H, W) each."""
    return fitted_instances(InstanceConfig(), [complete_objects(plane) for plane in labels])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="training steps of the synthetic model (cached)")
    parser.add_argument("--kept", type=Path, default=None, help="folders left by bench_real.py --keep")
    parser.add_argument("--thresholds", type=float, nargs="*", default=[], help="also these foreground thresholds")
    args = parser.parse_args()
    print_header("instance post-processing: 1-px grow, components, split at probability dips and by shape")
    model, note = cpu_default_model(args.steps)
    print(f"synthetic model: CPU default, {note}")
    cases = []
    pairs = [nu.synthetic_nuclei((512, 512), seed=seed) for seed in (100, 101)]
    probabilities = np.stack([nu.predict(model, image, device="cpu") for image, _ in pairs])
    training = [nu.synthetic_nuclei((256, 256), seed=seed)[1] for seed in range(6)]  # cpu_default_model's data
    cases.append(("synthetic, 2 x 512x512", fitted_to(training), probabilities, np.stack([t for _, t in pairs])))
    for folder in sorted(args.kept.iterdir()) if args.kept else []:
        kept_model, planes, truth = kept_split(folder)
        training = read_image(folder / "train_labels.npy").reshape(-1, *truth.shape[-2:])
        cases.append((folder.name, fitted_to(training), nu.predict(kept_model, planes, device="cpu"), truth))
    ways = WAYS + tuple((*WAYS[-1], kind, level) for level in args.thresholds for kind in ("threshold", "outline"))
    rows = [row(name, way, fitted, p, t) for name, fitted, p, t in cases for way in ways]
    headers = ["images", "expand", "split", "min size", "min piece", "min fill", "true/pred", "AP@0.5", "AP@0.75"]
    headers += ["mAP"]
    headers += ["mean IoU"]
    headers += ["merged", "split", "missed", "FP", "offset px", "pixel IoU"]
    print(format_table(headers, rows))


if __name__ == "__main__":
    main()
