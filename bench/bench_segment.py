"""End-to-end segmentation speed of the paper network, against the machine's limit.

Run ``python bench/bench_segment.py`` (options below; ``--help``). For each image
size (default 512 x 512 and 2048 x 2048 synthetic nuclei) and precision (fp32,
bf16) it times ``napari_unet.segment`` end to end (percentile normalisation,
mirror padding, tiles, stitching, instance labels; median of ``--repeats`` runs
after a warm-up run) and reports:

- the tile plan ``predict`` chose (tile size, number of tiles, batch) with its
  computed-to-useful output pixel ratio (``TilePlan.output_ratio``) and input ratio;
- the FLOPs of all convolutions and up-convolutions of those tiles (counted from the
  architecture, cross-checked against ``torch.utils.flop_counter``);
- the time spent in the network (forward passes + softmax, as the
  ``TileProgress.network_seconds`` of the same runs report it) and the rest;
- achieved FLOP/s of the network part and of the whole run as a fraction of the
  limit of ``bench_limits.py``, re-measured between the runs under the same load;
- how well bf16 labels agree with fp32 labels (foreground pixel IoU, instance AP at
  IoU 0.5) and both against the synthetic images' ground truth.

The network is the paper's (base 64, depth 4). By default it is trained briefly on
synthetic nuclei first (``--train-minutes``; cached for later runs); ``--model`` uses
a model file instead, ``--train-minutes 0`` a randomly initialised network (then the
label agreement says little about real use, and the output says so).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import napari_unet
from bench_limits import LimitProbe, best, limits_table, measure_limits
from common import (
    OtherLoad,
    TileRecord,
    benchmark_image,
    counted_flops,
    format_table,
    median,
    paper_model,
    plan_flops,
    print_header,
)
from napari_unet.core.devices import precision_name, resolve_precision
from napari_unet.core.layer_plan import forward_flops
from napari_unet.core.memory import RELEASE_DELAY_S
from napari_unet.core.metrics import match_instances, pixel_iou
from napari_unet.core.progress import drive

TARGETS = {
    # (what, size, precision): minimum fraction of the limit, end to end
    ("e2e_fraction", 512, "bf16"): 0.50,
    ("e2e_fraction", 512, "fp32"): 0.70,
}
OUTPUT_RATIO_TARGETS = {512: 1.3, 2048: 1.15}
IOU_TARGET = 0.98


def agreement(labels_a: np.ndarray, labels_b: np.ndarray) -> tuple[float, float]:
    """(foreground pixel IoU, instance AP@0.5) of ``labels_a`` against ``labels_b``."""
    return pixel_iou(labels_a, labels_b), match_instances(labels_a, labels_b, thresholds=(0.5,))[0].ap


def ablation(model, tile: int, precisions: list[str], repeats: int) -> list[tuple]:
    """Forward pass of one tile with the inference speed-ups switched on one by one.

    Variants, timed round-robin: the module as written (NCHW; autocast for bf16),
    the module in channels-last layout, :class:`CpuInference` (channels-last, fused
    conv+ReLU, weights prepared once), and the latter with freed memory kept for reuse
    (``memory.reuse_freed_memory``), which is what ``predict`` runs on a CPU.
    """
    import copy
    import statistics

    from napari_unet.core.cpu_inference import CpuInference
    from napari_unet.core.devices import autocast
    from napari_unet.core.memory import release_kept_memory, reuse_freed_memory

    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(1, model.config.in_channels, tile, tile)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    flops = forward_flops(model.config, tuple(x.shape))
    rows = []
    for precision in precisions:
        dtype = resolve_precision(precision, torch.device("cpu"))
        fast = CpuInference(model, dtype or torch.float32, tuple(x.shape))

        def module(net, inputs, dtype=dtype):
            with torch.inference_mode(), autocast(torch.device("cpu"), dtype):
                return net(inputs)

        def kept(fast=fast):
            with reuse_freed_memory(), torch.inference_mode():
                return fast(x)

        variants = {
            "module, NCHW": lambda: module(model, x),
            "module, channels-last": lambda: module(channels_last, x_cl),
            "CpuInference (fused conv+ReLU, packed weights)": lambda fast=fast: module(fast, x),
            "CpuInference + freed memory kept (predict's path)": kept,
        }
        times = {name: [] for name in variants}
        for run in variants.values():
            run()
        release_kept_memory()  # back to glibc's settled defaults, kept memory returned
        for _ in range(repeats):
            for name, run in variants.items():
                run()  # each timed run follows one of its own: steady state, as for tiles
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
                if run is kept:
                    release_kept_memory()  # the others run as in a process that never tuned malloc
        base = statistics.median(times["module, NCHW"])
        for name, values in times.items():
            seconds = statistics.median(values)
            rows.append((precision, name, f"{seconds:.3f}", f"{base / seconds:.2f}", f"{flops / seconds / 1e9:.0f}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="*", default=[512, 2048], help="square image sizes (px); none: ablation only"
    )
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], help="fp32, bf16, fp16")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (median reported)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--model", help="model file to use instead of the paper network")
    parser.add_argument(
        "--train-minutes",
        type=float,
        default=15.0,
        help="train the paper network this long on synthetic nuclei first (cached); 0: random weights",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the synthetic test images")
    parser.add_argument("--ablation-tile", type=int, default=700, help="tile for the speed-up ablation (0: skip it)")
    args = parser.parse_args()

    print_header("Segmentation speed: napari_unet.segment end to end, paper network")
    model, model_note = paper_model(args.model, args.train_minutes)
    config = model.config
    print(
        f"model: in {config.in_channels}, classes {config.n_classes}, base {config.base_channels}, "
        f"depth {config.depth}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; "
        f"{model_note}"
    )
    check_tile = 188 + 16 * 12
    check_shape = (1, config.in_channels, check_tile, check_tile)
    assert counted_flops(model, check_shape) == forward_flops(config, check_shape), (
        "forward_flops disagrees with torch.utils.flop_counter"
    )
    print("FLOPs (napari_unet.core.layer_plan.forward_flops) checked against torch.utils.flop_counter: equal")
    device = torch.device(args.device)
    print()
    print("## Limits measured at the start of this run (bench_limits.py)")
    measurements = measure_limits(devices=[args.device])
    print(limits_table(measurements))
    best_by_precision = best(measurements)
    print()

    rows, agreement_rows, target_rows = [], [], []
    labels_by = {}
    with OtherLoad() as load:
        for size in args.sizes:
            image, truth, image_note = benchmark_image((size, size), seed=args.seed)
            print(f"image {size}x{size}: {image_note}, dtype {image.dtype}")
            for precision in args.precisions:
                dtype = resolve_precision(precision, device)
                name = precision_name(dtype)
                probe = LimitProbe(best_by_precision[(str(device), name)])
                labels_by[(size, name)] = napari_unet.segment(model, image, precision=precision, device=device)
                totals, network = [], []
                for _ in range(args.repeats):
                    probe.sample()
                    tiles = TileRecord()
                    start = time.perf_counter()
                    drive(napari_unet.iter_segment(model, image, precision=precision, device=device), tiles)
                    totals.append(time.perf_counter() - start)
                    network.append(tiles.network_seconds)
                probe.sample()
                # the first call after a pause: the activation memory kept between calls
                # has gone back to the system (see napari_unet.core.memory.reuse_freed_memory)
                time.sleep(RELEASE_DELAY_S + 0.5)
                start = time.perf_counter()
                napari_unet.segment(model, image, precision=precision, device=device)
                after_idle = time.perf_counter() - start
                plan, batch = tiles.plan, tiles.batch
                flops = plan_flops(plan, config)
                total, net = median(totals), median(network)
                limit = probe.flop_per_s
                e2e_fraction = flops / total / limit
                rows.append(
                    (
                        f"{size}x{size}",
                        name,
                        f"{plan.tile[0]}x{plan.tile[1]}",
                        plan.n_tiles,
                        batch,
                        f"{plan.output_ratio:.3f}",
                        f"{plan.input_ratio:.3f}",
                        f"{flops / 1e9:.0f}",
                        f"{total:.3f}",
                        f"{min(totals):.3f}",
                        f"{after_idle:.3f}",
                        f"{net:.3f}",
                        f"{total - net:.3f}",
                        f"{flops / net / 1e9:.0f}",
                        f"{limit / 1e9:.0f}",
                        f"{flops / net / limit:.2f}",
                        f"{e2e_fraction:.2f}",
                    )
                )
                target = TARGETS.get(("e2e_fraction", size, name))
                if target is not None:
                    target_rows.append(
                        (
                            f"{size} {name} end to end, fraction of the {name} limit",
                            f">= {target:.2f}",
                            f"{e2e_fraction:.2f}",
                            "met" if e2e_fraction >= target else "MISSED",
                        )
                    )
                if size in OUTPUT_RATIO_TARGETS and precision == args.precisions[-1]:
                    goal = OUTPUT_RATIO_TARGETS[size]
                    target_rows.append(
                        (
                            f"{size} output ratio ({name} plan)",
                            f"<= {goal}",
                            f"{plan.output_ratio:.3f}",
                            "met" if plan.output_ratio <= goal else "MISSED",
                        )
                    )
            if (size, "fp32") in labels_by and (size, "bf16") in labels_by:
                fp32, bf16 = labels_by[(size, "fp32")], labels_by[(size, "bf16")]
                iou, ap = agreement(bf16, fp32)
                agreement_rows.append(
                    (
                        f"{size}x{size}",
                        f"{iou:.4f}",
                        f"{ap:.4f}",
                        int(fp32.max()),
                        int(bf16.max()),
                        f"{agreement(fp32, truth)[1]:.3f}",
                        f"{agreement(bf16, truth)[1]:.3f}",
                    )
                )
                target_rows.append(
                    (
                        f"{size} bf16 vs fp32 foreground IoU",
                        f">= {IOU_TARGET}",
                        f"{iou:.4f}",
                        "met" if iou >= IOU_TARGET else "MISSED",
                    )
                )
    print()
    print(load.describe())
    print()
    print("## Segmentation (times in s; median of", args.repeats, "runs after one warm-up run)")
    headers = (
        "image",
        "prec",
        "tile",
        "tiles",
        "batch",
        "out ratio",
        "in ratio",
        "GFLOP",
        "total s",
        "min s",
        "idle s",
        "network s",
        "other s",
        "net GFLOP/s",
        "limit GFLOP/s",
        "net/limit",
        "e2e/limit",
    )
    print(format_table(headers, rows))
    print(
        "total s: median of back-to-back runs (as when segmenting many images); min s: fastest run; "
        "idle s: one run after a pause, when the memory kept between calls has been released; "
        "network s: forward passes + softmax (TileProgress.network_seconds); other s: weight preparation, "
        "normalisation, tile extraction, stitching, instance labels (total - network). limit: the best 3x3 conv of "
        "bench_limits, re-measured between the runs (median). net/limit = GFLOP / network s / limit; "
        "e2e/limit = GFLOP / total s / limit."
    )
    if agreement_rows:
        print()
        print("## bf16 labels against fp32 labels (and both against the synthetic ground truth)")
        print(
            format_table(
                (
                    "image",
                    "fg IoU bf16/fp32",
                    "AP@0.5 bf16/fp32",
                    "objects fp32",
                    "objects bf16",
                    "AP@0.5 fp32/truth",
                    "AP@0.5 bf16/truth",
                ),
                agreement_rows,
            )
        )
    if args.ablation_tile and device.type == "cpu":
        print()
        print(
            f"## Ablation: one forward pass of a {args.ablation_tile}x{args.ablation_tile} tile "
            f"(median of {args.repeats + 2} round-robin runs, each after an untimed run)"
        )
        with OtherLoad() as load:
            rows = ablation(model, args.ablation_tile, args.precisions, args.repeats + 2)
        print(format_table(("prec", "variant", "s", "speed-up", "GFLOP/s"), rows))
        print(load.describe())
    if target_rows:
        print()
        print("## Targets")
        print(format_table(("target", "goal", "measured", "status"), target_rows))


if __name__ == "__main__":
    main()
