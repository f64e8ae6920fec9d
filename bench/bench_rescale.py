"""Models meeting images taken at another magnification: how much is lost, and what
``rescale`` gives back.

    .venv/bin/python bench/bench_real.py --splits "dsb2018 left->right" --keep DIR
    .venv/bin/python bench/bench_rescale.py --kept DIR [DIR ...] [--zooms 0.5 1 2] [--rescales 1.2 1.4] [--synthetic]

For each split folder that ``bench_real.py --keep DIR`` left (model, training
labels, test image, true labels), the test image and its labels are resized by each
zoom (linear interpolation, Gaussian-smoothed when shrinking; labels by nearest pixel),
as if taken at that magnification, and segmented three ways: as they are; with the
``rescale`` that the size note suggests, where the note appears (what a user told by
it would do next); and with the exact inverse of the zoom. AP@0.5, mAP and mean IoU
against the resized labels. A model trained before models recorded its object size
gets it from its training labels, as training now sets it. ``--rescales``: at 1x,
also segment with these factors (enlarging images taken at the training
magnification). ``--synthetic``: also the CPU default trained 300 steps on synthetic
nuclei (cached, ``common.cpu_default_model``) on two held-out 512x512 images.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
from skimage.transform import rescale as resize_by

import napari_unet as nu
from bench_real import score
from common import cpu_default_model, format_table, kept_split, print_header
from napari_unet.core.object_size import complete_objects, fitted_instances

NOTE_FACTOR = re.compile(r"segment it again with rescale ([0-9.]+)")


class Notes(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def zoomed(image: np.ndarray, truth: np.ndarray, zoom: float) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) image and labels as if taken at ``zoom`` times the magnification."""
    if zoom == 1.0:
        return image.astype(np.float32), truth
    image = np.stack([resize_by(p, zoom, order=1, anti_aliasing=zoom < 1, preserve_range=True) for p in image])
    truth = np.stack([resize_by(p, zoom, order=0, anti_aliasing=False, preserve_range=True) for p in truth])
    return image.astype(np.float32), truth.astype(np.int32)


def segmented(model: nu.UNet, image: np.ndarray, rescale: float, notes: Notes) -> tuple[np.ndarray, str | None]:
    """Labels of every plane and the size note's suggested factor, if it gave one."""
    notes.messages.clear()
    labels = nu.segment(model, image, rescale=rescale, device="cpu")
    found = [NOTE_FACTOR.search(message) for message in notes.messages]
    factors = [match.group(1) for match in found if match]
    return labels, (factors[0] if factors else None)


def cases(args: argparse.Namespace):
    """(name, model, image (N, H, W), labels (N, H, W)) of every kept split, and the
    synthetic model's held-out images with ``--synthetic``."""
    folders = sorted(path for kept in args.kept for path in kept.iterdir() if (path / "model.safetensors").exists())
    for folder in folders:
        model, image, truth = kept_split(folder)
        if model.spec.instances.object_size == 0:
            train_labels = np.load(folder / "train_labels.npy")
            planes = train_labels.reshape(-1, *train_labels.shape[-2:])
            fitted = fitted_instances(model.spec.instances, [complete_objects(p) for p in planes])
            model.spec = replace(model.spec, instances=replace(model.spec.instances, object_size=fitted.object_size))
        yield (
            f"{folder.parent.name}/{folder.name}",
            model,
            image.reshape(-1, *image.shape[-2:]),
            truth.reshape(-1, *truth.shape[-2:]),
        )
    if args.synthetic:
        model, _ = cpu_default_model(300)
        tests = [nu.synthetic_nuclei((512, 512), seed=seed) for seed in (100, 101)]
        yield "synthetic (300 steps)", model, np.stack([t[0] for t in tests]), np.stack([t[1] for t in tests])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kept", type=Path, nargs="+", required=True, help="folders that bench_real.py --keep filled")
    parser.add_argument("--zooms", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--rescales", type=float, nargs="*", default=[], help="factors to try at 1x too")
    parser.add_argument("--synthetic", action="store_true", help="also the cached synthetic-nuclei model")
    args = parser.parse_args()
    print_header("segmenting at other magnifications, with and without rescale")
    notes = Notes()
    logging.getLogger("napari_unet").addHandler(notes)
    rows = []
    for name, model, image, truth in cases(args):
        for zoom in args.zooms:
            scaled, scaled_truth = zoomed(image, truth, zoom)
            labels, suggested = segmented(model, scaled, 1.0, notes)
            runs = [("as it is", labels)]
            if suggested is not None:
                runs.append((f"rescale {suggested} (the note's)", segmented(model, scaled, float(suggested), notes)[0]))
            if zoom != 1.0:
                runs.append((f"rescale {1 / zoom:g} (exact)", segmented(model, scaled, 1 / zoom, notes)[0]))
            else:
                for factor in args.rescales:
                    runs.append((f"rescale {factor:g}", segmented(model, scaled, factor, notes)[0]))
            for how, result in runs:
                rows.append([name, f"{zoom:g}x", how, *score(result, scaled_truth)[:5]])
            print(f"done: {name} at {zoom:g}x", file=sys.stderr, flush=True)
    header = ["split", "zoom", "segmented", "true/pred", "AP@0.5", "AP@0.75", "mAP", "mean IoU"]
    print(format_table(header, rows))


if __name__ == "__main__":
    main()
