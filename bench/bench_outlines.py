"""Post-processing: the same probabilities made into labels three ways.

    .venv/bin/python bench/bench_outlines.py [--steps 400] [--kept DIR]

The CPU default network trained ``--steps`` steps on synthetic nuclei (cached, as in
``common.cpu_default_model``) predicts two held-out 512x512 synthetic images once;
the probabilities become labels with the 1-px grow and no split (``expand=1,
split=0``: the first default), without the grow (``expand=0, split=0``: the paper's
components with the network's outlines) and with touching objects split at
probability dips (``expand=0, split=0.1``: the current default), scored as
``bench_real.py`` scores (AP at IoU 0.5 and 0.75, mAP, mean IoU of matched pairs,
the error taxonomy with the signed boundary offset) and by pixel IoU. ``--kept
DIR``: also the split folders that ``bench_real.py --keep DIR`` left (their model,
test image and true labels).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np

import napari_unet as nu
from bench_real import score
from common import cpu_default_model, format_table, print_header
from napari_unet.core.config import InstanceConfig
from napari_unet.core.instances import probabilities_to_labels
from napari_unet.core.io import read_image
from napari_unet.core.metrics import pixel_iou

#: (expand, split) of each way: the first default, the paper's components, the current default.
WAYS = ((1, 0.0), (0, 0.0), (0, 0.1))


def row(name: str, expand: int, split: float, probabilities: np.ndarray, truth: np.ndarray) -> list[str]:
    """bench_real's scores (and pixel IoU) of the labels made with ``expand`` and
    ``split`` from probabilities (N, K, H, W) against truth (N, H, W)."""
    labels = probabilities_to_labels(probabilities, InstanceConfig(expand=expand, split=split))
    pixels = np.mean([pixel_iou(p, t) for p, t in zip(labels, truth)])
    return [name, str(expand), f"{split:g}", *score(labels, truth), f"{pixels:.3f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="training steps of the synthetic model (cached)")
    parser.add_argument("--kept", type=Path, default=None, help="folders left by bench_real.py --keep")
    args = parser.parse_args()
    print_header("instance post-processing: 1-px grow, components, split at probability dips")
    model, note = cpu_default_model(args.steps)
    print(f"synthetic model: CPU default, {note}")
    cases = []
    pairs = [nu.synthetic_nuclei((512, 512), seed=seed) for seed in (100, 101)]
    probabilities = np.stack([nu.predict(model, image, device="cpu") for image, _ in pairs])
    cases.append(("synthetic, 2 x 512x512", probabilities, np.stack([truth for _, truth in pairs])))
    for folder in sorted(args.kept.iterdir()) if args.kept else []:
        kept_model = nu.load_model(folder / "model.safetensors")
        test, truth = read_image(folder / "test.tif"), read_image(folder / "test_truth.npy")
        planes = test.reshape(truth.shape)
        cases.append((folder.name, nu.predict(kept_model, planes, device="cpu"), truth))
    rows = [row(name, expand, split, p, t) for name, p, t in cases for expand, split in WAYS]
    headers = ["images", "expand", "split", "true/pred", "AP@0.5", "AP@0.75", "mAP", "mean IoU"]
    headers += ["merged", "split", "missed", "FP", "offset px", "pixel IoU"]
    print(format_table(headers, rows))


if __name__ == "__main__":
    main()
