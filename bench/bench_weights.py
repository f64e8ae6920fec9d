"""Benchmark the separation weight map against its brute-force reference.

Run ``python bench/bench_weights.py`` (options: ``--size``, ``--cells``, ``--repeats``,
``--seed``). Builds a seeded synthetic labels image of random ellipses (many of them
touching, plus an unannotated strip), times :func:`weight_map` (median of repeats) and
:func:`weight_map_reference`, and prints a table with the speed-up and the largest
absolute difference.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the brute-force reference lives in tests/

import numpy as np
from tests.reference import weight_map_reference

from napari_unet.core.config import IGNORE_LABEL
from napari_unet.core.metrics import touching_pairs
from napari_unet.core.weights import separation_gap, weight_map


def ellipse_labels(size: int, n_cells: int, seed: int) -> np.ndarray:
    """Labels int32 (size, size) with ``n_cells`` random ellipses; ids 1..n.

    Centres are drawn at least 26 px apart and radii are 14..24 px, so neighbours
    often overlap; an ellipse only paints pixels still free, so overlapping cells end
    up touching along a shared boundary.
    """
    rng = np.random.default_rng(seed)
    centres: list[np.ndarray] = []
    while len(centres) < n_cells:
        candidate = rng.uniform(0, size, 2)
        if all(np.hypot(*(candidate - c)) >= 26 for c in centres):
            centres.append(candidate)
    yy, xx = np.mgrid[0:size, 0:size]
    labels = np.zeros((size, size), np.int32)
    for index, (cy, cx) in enumerate(centres, start=1):
        ry, rx = rng.uniform(14, 24, 2)
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dy * np.cos(angle) + dx * np.sin(angle)
        v = -dy * np.sin(angle) + dx * np.cos(angle)
        inside = (u / ry) ** 2 + (v / rx) ** 2 <= 1.0
        labels[inside & (labels == 0)] = index
    labels[:, : size // 16] = IGNORE_LABEL
    return labels


def median_ms(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--cells", type=int, default=125)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--reference-repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    labels = ellipse_labels(args.size, args.cells, args.seed)
    n_cells = len(np.unique(labels[labels > 0]))
    gap_px = int(separation_gap(labels).sum())
    n_touching = len(touching_pairs(labels))
    fast = weight_map(labels)
    reference = weight_map_reference(labels)
    max_diff = float(np.abs(fast - reference).max())
    fast_ms = median_ms(lambda: weight_map(labels), args.repeats)
    reference_ms = median_ms(lambda: weight_map_reference(labels), args.reference_repeats)

    print(f"$ python {' '.join(sys.argv)}")
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"labels {args.size}x{args.size}: {args.cells} cells drawn, {n_cells} not wholly under the ignore strip, "
        f"{n_touching} touching pairs, {gap_px} separation-gap px, "
        f"{int((labels == IGNORE_LABEL).sum())} ignore px; w0=10, sigma=5"
    )
    print(f"{'implementation':<28}{'median ms':>12}{'repeats':>10}")
    print(f"{'weight_map':<28}{fast_ms:>12.1f}{args.repeats:>10}")
    print(f"{'weight_map_reference':<28}{reference_ms:>12.1f}{args.reference_repeats:>10}")
    print(f"speed-up {reference_ms / fast_ms:.1f}x, max |fast - reference| = {max_diff:.2e}")


if __name__ == "__main__":
    main()
