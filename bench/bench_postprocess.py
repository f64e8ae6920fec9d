"""What instance post-processing costs inside end-to-end segmentation.

Segments synthetic nuclei with the CPU default network (16 base channels, depth 3),
briefly trained on synthetic nuclei and cached, and splits the time of
``napari_unet.segment`` into the network (``TileProgress.network_seconds``), the
rest of prediction (normalising, mirroring, stitching) and post-processing
(``probabilities_to_labels``: threshold, components, the split of touching objects
at probability dips, holes, the split by shape, size filter). The same probabilities
are also labelled without either split (``split=0, min_fill=0``, the paper's components) and through the plain
whole-image formulation kept in tests/reference.py (what the project shipped before),
whose labels must be identical to those without the split.

    .venv/bin/python bench/bench_postprocess.py [--sizes 512 2048] [--repeats 3] [--train-steps 300]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))  # for tests.reference

from tests.reference import plane_labels_reference

import napari_unet as nu
from common import OtherLoad, TileRecord, benchmark_image, cpu_default_model, format_table, median, print_header
from napari_unet.core.instances import foreground, probabilities_to_labels
from napari_unet.core.progress import drive


def timed(function):
    began = time.perf_counter()
    result = function()
    return result, time.perf_counter() - began


def measure_size(model: nu.UNet, size: int, repeats: int) -> list[str]:
    image, _, _ = benchmark_image((size, size))
    components = model.spec.instances.components()
    totals, networks, posts, unsplit_posts, references = [], [], [], [], []
    for _ in range(repeats):
        record = TileRecord()
        (labels, probabilities), total = timed(
            lambda: drive(nu.iter_segment(model, image, return_probabilities=True), record)  # noqa: B023
        )
        _, post = timed(lambda: probabilities_to_labels(probabilities, model.spec.instances))  # noqa: B023
        unsplit, unsplit_post = timed(lambda: probabilities_to_labels(probabilities, components))  # noqa: B023
        mask = foreground(probabilities) > components.threshold
        reference, before = timed(lambda: plane_labels_reference(mask, components))  # noqa: B023
        if not np.array_equal(unsplit, reference):
            raise AssertionError(f"{size}x{size}: labels differ from the reference formulation")
        totals.append(total)
        networks.append(record.network_seconds)
        posts.append(post)
        unsplit_posts.append(unsplit_post)
        references.append(before)
    total, network, post, unsplit_post, before = (
        median(v) for v in (totals, networks, posts, unsplit_posts, references)
    )
    rest = total - post  # prediction without post-processing
    return [
        f"{size}x{size}",
        f"{int(labels.max())} / {int(unsplit.max())}",
        f"{total:.3f}",
        f"{network:.3f}",
        f"{post:.3f}",
        f"{100 * post / total:.1f}%",
        f"{unsplit_post:.3f}",
        f"{100 * unsplit_post / (rest + unsplit_post):.1f}%",
        f"{before:.3f}",
        f"{100 * before / (rest + before):.1f}%",
        "yes",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=300)
    args = parser.parse_args()
    print_header("instance post-processing inside end-to-end segmentation (CPU default network)")
    model, note = cpu_default_model(args.train_steps)
    print(f"model: base {model.config.base_channels}, depth {model.config.depth}; {note}")
    with OtherLoad() as load:
        rows = [measure_size(model, size, args.repeats) for size in args.sizes]
    headers = [
        "image",
        "objects split / not",
        "segment s",
        "network s",
        "post s",
        "post share",
        "no split: post s",
        "no split: share",
        "before: post s",
        "before: share",
        "no split = before",
    ]
    print(format_table(headers, rows))
    print(f"medians of {args.repeats} runs; {load.describe()}")
    print("post share = post-processing / end-to-end segment() (the default: split at probability dips and by shape);")
    print("'no split' = split 0, min_fill 0 (the paper's components); 'before' = their whole-image formulation")


if __name__ == "__main__":
    main()
