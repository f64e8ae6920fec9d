"""``napari-unet weights`` and ``napari-unet evaluate``: the commands on label files
(the paper's weight maps of an annotation; a segmentation scored against one)."""

from __future__ import annotations

import argparse
import logging
import sys

from .cli_args import check_outputs, check_pairs, output_names, spacing_option
from .core.evaluation import evaluate_pairs
from .core.io import image_shape, output_axes, read_labels, write_image
from .core.label_checks import (
    image_like_reason,
    labels_warning,
    looks_like_image_message,
    out_of_range_message,
    unsigned_max_warning,
)
from .core.layout import ImageShapeError
from .core.metrics import MatchStats
from .core.train_config import WeightMapConfig
from .core.weights import LabelError, separation_target, weight_map


def cmd_weights(args: argparse.Namespace) -> None:
    WeightMapConfig(w0=args.w0, sigma=args.sigma)  # refuse bad settings before reading anything
    outputs = [
        (args.out_dir / f"{base}_weights.tif", args.out_dir / f"{base}_target.tif")
        for base in output_names(args.labels)
    ]
    for path in args.labels:  # every file's shape before any output is written
        shape = image_shape(path)
        if len(shape) not in (2, 3):
            raise ImageShapeError(f"{path}: weight maps need 2D (H, W) or 3D (Z, Y, X) label images, got shape {shape}")
    check_outputs([path for pair in outputs for path in pair], args.overwrite)
    every_labels = [read_labels(path) for path in args.labels]
    for path, labels in zip(args.labels, every_labels):  # every file before any output, as train checks them
        reason = image_like_reason(labels)
        if reason is not None:  # an image given for labels: a weight map of nothing
            raise LabelError(looks_like_image_message(str(path), reason))
        message = out_of_range_message(labels, str(path))
        if message:
            raise LabelError(message)
        warning = labels_warning(labels, f"the labels of {path}")
        if warning:
            logging.getLogger(__name__).warning(warning)
    for path, labels, (weights_path, target_path) in zip(args.labels, every_labels, outputs):
        spacing = spacing_option(args, path, labels.ndim)
        weights = weight_map(labels, args.w0, args.sigma, spacing=spacing)
        axes = output_axes(path, labels.shape)
        written = {"pixel_size_of": path, "axes": axes, "spacing": args.spacing}  # --spacing over the file's own
        write_image(weights_path, weights, **written)
        write_image(target_path, separation_target(labels), **written)
        print(f"{path}: weights in [{weights.min():.2f}, {weights.max():.2f}] -> {weights_path}")


def format_table(rows: list[tuple[str, list[MatchStats], float, int]]) -> str:
    """A plain-text table: one row per image (and overall) of instance metrics."""
    columns = [("AP@0.5", 7), ("AP@0.75", 7), ("AP@0.9", 7), ("F1@0.5", 7), ("mIoU", 6), ("pxIoU", 6), ("merged", 6)]
    wide = max(len(row[0]) for row in rows)  # names are whole: two files may share their first characters
    header = f"{'image':<{wide}} " + " ".join(f"{name:>{width}}" for name, width in columns)
    lines = [header, "-" * len(header)]
    for name, stats, pixel_iou, merged in rows:
        by = {round(s.threshold, 2): s for s in stats}
        lines.append(
            f"{name:<{wide}} {by[0.5].ap:7.3f} {by[0.75].ap:7.3f} {by[0.9].ap:7.3f} "
            f"{by[0.5].f1:7.3f} {by[0.5].mean_matched_iou:6.3f} {pixel_iou:6.3f} {merged:6d}"
        )
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> None:
    check_pairs(args.predictions, args.truth, "prediction")
    names = output_names(args.predictions)  # distinct, as the files of segment --out-dir
    names = [f"{name} (file)" if name == "overall" else name for name in names]  # not the summary row
    pairs = [(n, read_labels(p), read_labels(t)) for n, p, t in zip(names, args.predictions, args.truth)]
    sources = [(str(p), str(t)) for p, t in zip(args.predictions, args.truth)]  # errors name the file at fault
    if not args.volumes and any(truth.ndim >= 3 for _, _, truth in pairs):
        print("napari-unet: scored plane by plane; --volumes matches 3D objects", file=sys.stderr)
    rows = evaluate_pairs(pairs, 3 if args.volumes else 2, sources)
    for (prediction, truth), (_, predicted, true) in zip(sources, pairs):
        if not (predicted > 0).any():
            print(f"napari-unet: {prediction} holds no object, so every true object counts as missed", file=sys.stderr)
        if not (true > 0).any():
            print(f"napari-unet: {truth} holds no object, so every predicted one counts as false", file=sys.stderr)
        warning = unsigned_max_warning(true, f"the true labels of {truth}", use="scored")
        if warning:  # a truth file with 255 for its background scored AP@0.5 0.97 without a word
            print(f"napari-unet: warning: {warning}", file=sys.stderr)
    print(format_table(rows))
