"""The ``napari-unet`` command line: the core's jobs without napari."""

from __future__ import annotations

import argparse
import json
import logging
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli_args import (
    add_prediction_arguments,
    add_spacing_argument,
    check_outputs,
    drive_tiles,
    file_channel_axis,
    instance_options,
    model_argument,
    output_names,
    positive_int,
    prediction_options,
    spacing_option,
    volume_planes,
)
from .cli_labels import cmd_evaluate, cmd_weights, format_table
from .cli_run import run_training
from .cli_stream import add_stream_arguments, check_stream_arguments, cmd_segment_to
from .cli_train import add_train_arguments, cmd_train
from .core.checkpoint import describe, load_model
from .core.errors import ConfigError, NapariUnetError
from .core.exchange import FORMATS, axis_sizes, export_model
from .core.instances import objects_found
from .core.io import (
    check_image_file,
    image_shape,
    output_axes,
    read_image,
    read_spacing,
    write_image,
)
from .core.layout import ImageShapeError, axes_at_minus3
from .core.model_card import model_card
from .core.predict import check_volume_of_planes, iter_segment, labelled_ndim
from .core.spacing import voxel_shape_note
from .core.threads import use_threads
from .core.train_config import WeightMapConfig


def cmd_segment(args: argparse.Namespace) -> None:
    check_stream_arguments(args)
    elsewhere = args.workers is not None or args.scheduler is not None
    if args.threads is not None and elsewhere:
        raise ConfigError("--threads is for this process: with --workers or --scheduler each worker takes its share")
    if not elsewhere:
        use_threads(args.threads)
    if args.out is not None:
        if args.spacing is not None and not args.as_volume:
            raise ConfigError("--spacing Z Y X applies to volumes in memory (--as-volume, or a 3D model), not --out")
        return cmd_segment_to(args, prediction_options(args))
    for path in args.images:  # all of them before any work
        check_image_file(path)
    model = model_argument(args)
    if args.spacing is not None and not args.as_volume and model.config.ndim == 2:
        raise ConfigError("--spacing Z Y X applies to volumes: add --as-volume, or use a 3D model")
    if model.config.ndim == 3 and args.as_volume:
        raise ConfigError("--as-volume is for 2D models: a 3D model labels whole volumes already; drop --as-volume")
    for path in args.images:  # an image the model cannot take fails before any output is written
        shape = image_shape(path)
        try:
            channel_axis = file_channel_axis(path, shape, model.config.in_channels, args.channel_axis)
            if model.config.ndim == 2 and not args.as_volume:
                axes_at_minus3(shape, model.config.in_channels, channel_axis)
        except ImageShapeError as error:  # with one image, the widgets' message word for word
            if len(args.images) == 1:
                raise
            raise ImageShapeError(f"{path}: {error}") from error
    instances = instance_options(args, model.spec.instances)
    suffixes = ["labels", "probabilities"] if args.probabilities else ["labels"]
    outputs = [{kind: args.out_dir / f"{base}_{kind}.tif" for kind in suffixes} for base in output_names(args.images)]
    check_outputs([path for files in outputs for path in files.values()], args.overwrite)
    for path, files in zip(args.images, outputs):
        image = read_image(path)
        channel_axis = file_channel_axis(path, image.shape, model.config.in_channels, args.channel_axis)
        if not args.as_volume:
            _note_volume_planes(path, image, model, channel_axis)
        _note_other_spacing(path, model, args.spacing)
        if args.as_volume:  # a plane is refused before any note on its voxels
            check_volume_of_planes(model, image, channel_axis, None)
        spacing = spacing_option(args, path, 3) if args.as_volume else None
        segmentation = iter_segment(
            model,
            image,
            return_probabilities=args.probabilities,
            instances=instances,
            as_volume=args.as_volume,
            spacing=spacing,
            **(prediction_options(args) | {"channel_axis": channel_axis}),
        )
        result = drive_tiles(segmentation, path.name)
        labels, probabilities = result if args.probabilities else (result, None)
        written = {"pixel_size_of": path, "spacing": args.spacing}  # --spacing over the file's own
        write_image(files["labels"], labels, axes=output_axes(path, labels.shape), **written)
        if probabilities is not None:
            axes = output_axes(path, probabilities.shape, classes_before=model.config.ndim)
            write_image(files["probabilities"], probabilities, axes=axes, **written)
        found = objects_found(labels, labelled_ndim(model, args.as_volume))
        print(f"{path}: {found} -> {files['labels']}")


def _note_volume_planes(path: Path, image, model, channel_axis: int | None) -> None:
    """One line on stderr when a 2D model is about to label a volume's planes one by
    one (:func:`~napari_unet.cli_args.volume_planes`)."""
    planes = volume_planes(path, image, model.config.in_channels, channel_axis) if model.config.ndim == 2 else None
    if planes:
        print(
            f"napari-unet: {path} is a volume of {planes} planes, labelled one plane at a time "
            "(each numbers its objects from 1); add --as-volume for 3D objects across planes",
            file=sys.stderr,
        )


def _note_other_spacing(path: Path, model, given: list[float] | None) -> None:
    """One line on stderr when a 3D model is about to segment a volume whose voxels
    (``given`` by --spacing, else as its file records them) are of another shape than
    the model was made for (:func:`~napari_unet.core.spacing.voxel_shape_note`)."""
    if model.config.ndim == 3:
        spacing, said = (tuple(given), "--spacing gives") if given else (read_spacing(path), f"{path} records")
        note = voxel_shape_note(spacing, model.config.spacing, said)
        if note:
            print(f"napari-unet: {note}", file=sys.stderr)


def cmd_info(args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(describe(args.model), indent=2))
    else:
        print(model_card(load_model(args.model), str(args.model)))
        print(f"(everything the file records: napari-unet info --json {args.model})")


def cmd_demo(args: argparse.Namespace) -> None:
    from . import demo

    demo.check_out_dir(args.out_dir)  # before minutes of training
    data = demo.demo_data(args.seed)
    trainer = demo.demo_trainer(data, minutes=args.minutes, seed=args.seed, device=args.device)
    config = trainer.model.config
    print(
        f"training a U-Net (base {config.base_channels}, depth {config.depth}"
        f"{', batch norm' if config.batch_norm else ''}) on {len(data.train)} synthetic "
        f"images for {args.minutes:g} min on {trainer.device}"
    )
    run_training(trainer)
    predicted, rows = demo.evaluate_on_test(trainer, data)
    table = format_table(rows)
    demo.write_outputs(args.out_dir, trainer, data, predicted, table)
    print(table)
    print(f"wrote the model, test images, labels, metrics.txt and overlay.png to {args.out_dir}")


def cmd_export(args: argparse.Namespace) -> None:
    args.format = export_format(args.out, args.format)
    check_outputs([args.out], args.overwrite)
    model = model_argument(args)
    options = {}
    if args.format == "bioimageio":
        options = {
            "authors": args.author,
            "name": args.name,
            "license": args.license,
            "trained_on": args.trained_on,
            "image": read_image(args.image) if args.image else None,
            "channel_axis": args.channel_axis,
        }
        if not args.author:
            print("napari-unet: no --author given; the package names its author 'Unknown'", file=sys.stderr)
    elif args.author or args.name or args.trained_on or args.image or "license" in args.given:
        raise ConfigError("--author, --name, --license, --trained-on and --image apply to --format bioimageio only")
    path = export_model(model, args.out, args.format, **options)
    print(f"{args.model} -> {path} ({args.format}, {path.stat().st_size / 1e6:.2f} MB)")
    if args.format != "bioimageio":  # a package describes its sizes itself
        print(exported_sizes(model))


def exported_sizes(model) -> str:
    """How to call an ONNX or TorchScript export of ``model``: its input's axes, the
    sizes that tile on the pooling grid and the halo a tiled consumer drops."""
    names = "zyx"[-model.config.ndim :]
    sizes = axis_sizes(model)
    declared = ", ".join(f"{name} {axis.smallest} + k*{axis.step}" for name, axis in zip(names, sizes))
    halos = ", ".join(f"{name} {axis.halo}" for name, axis in zip(names, sizes))
    return (
        f"input (N, {model.config.in_channels}, {', '.join(names.upper())}) normalised per image and channel; "
        f"output (N, 1, ...) the foreground probability. Tile sizes: {declared}; halo to drop at tile borders: "
        f"{halos} px"
    )


def export_format(out: Path, chosen: str | None) -> str:
    """The export format ``--format`` chose, else the one ``--out``'s suffix names; a
    suffix of another format is refused (a zip named .onnx is a trap for whoever opens it)."""
    named = {suffix: kind for kind, suffix in FORMATS.items()}
    by_name = named.get(out.suffix.lower())
    if chosen is None and by_name is None:
        raise ConfigError(f"--out {out}: name it .zip (bioimage.io), .onnx or .pt (TorchScript), or give --format")
    if chosen is not None and by_name is not None and by_name != chosen:
        raise ConfigError(
            f"--out {out} is named for {by_name}, but --format is {chosen}: name it "
            f"{out.with_suffix(FORMATS[chosen]).name}, or drop --format"
        )
    return chosen or by_name


def _add_export_parser(commands) -> None:
    export = commands.add_parser("export", help="write a model for other software (bioimage.io, ONNX, TorchScript)")
    export.add_argument("model", type=Path, help="model file (.safetensors) or napari-unet bioimage.io package")
    export.add_argument("--format", choices=list(FORMATS), default=None, help="(default: the one --out's suffix names)")
    export.add_argument("--out", type=Path, required=True, help="file to write (.zip: bioimage.io, .onnx or .pt)")
    export.add_argument("--author", action="append", default=[], help="package author (repeat for several)")
    export.add_argument(
        "--name", default=None, help="model name in the package (5 or more letters, digits, spaces, _+-())"
    )
    export.add_argument("--license", default="CC-BY-4.0", help="SPDX license id of the weights (default CC-BY-4.0)")
    export.add_argument("--trained-on", default=None, help="one sentence on the training data, for the README")
    export.add_argument("--image", type=Path, default=None, help="example image for the test tensors and cover")
    export.add_argument("--channel-axis", type=int, default=None, help="channel axis of --image (default: guessed)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    export.set_defaults(run=cmd_export)


def given_options(argv: Sequence[str]) -> set[str]:
    """The destinations of the options ``argv`` gives explicitly (not by default)."""
    parser = build_parser()
    parsers = [parser]
    while parsers:
        current = parsers.pop()
        for action in current._actions:
            action.default = argparse.SUPPRESS
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
    return set(vars(parser.parse_args(argv)))


class _Parser(argparse.ArgumentParser):
    """A usage mistake in one line, with where to read more: argparse's own printed its
    usage block of 15 lines above it. Subcommands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line. Options must be spelled out: an abbreviation such as
    ``weights --out w.tif`` (meaning a file) used to be taken for ``--out-dir``."""
    parser = _Parser(prog="napari-unet", description="U-Net segmentation (Ronneberger et al. 2015)", allow_abbrev=False)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser(
        "segment", help="segment images with a model file (volumes (Z, Y, X) as a whole with a 3D model)"
    )
    segment.add_argument("model", type=Path, help="model file (.safetensors) or napari-unet bioimage.io package")
    segment.add_argument("images", type=Path, nargs="+", help="images to segment (TIFF, PNG, .npy, zarr, ...)")
    outputs = segment.add_mutually_exclusive_group(required=True)
    outputs.add_argument(
        "--out-dir", type=Path, help="write NAME_labels.tif (and NAME_probabilities.tif) per image here"
    )
    add_stream_arguments(segment, outputs)
    segment.add_argument("--probabilities", action="store_true", help="also write class probabilities")
    segment.add_argument(
        "--tta", action="store_true", help="test-time augmentation: average the 8 flips and quarter turns (8x slower)"
    )
    segment.add_argument(
        "--rescale",
        type=float,
        default=1.0,
        metavar="F",
        help="resize the images by F before the network sees them, and the results back (2: the cells look half "
        "as large as those the model learned, e.g. a 20x model on 10x images; default 1)",
    )
    segment.add_argument(
        "--split",
        type=float,
        default=None,
        metavar="DEPTH",
        help="split objects where the probability dips by DEPTH between two peaks, on average along the line "
        "where their pieces meet (default: the model's, 0.1; "
        "0: keep the network's connected components, as the paper does, without the shape split either)",
    )
    segment.add_argument(
        "--min-fill",
        type=float,
        default=None,
        metavar="F",
        help="split objects that fill less than F of the ellipse of their moments at the necks of their shape "
        "(default: the model's, set from its annotation; 0: never)",
    )
    segment.add_argument(
        "--min-size",
        type=int,
        default=None,
        metavar="N",
        help="drop objects under N pixels (voxels for 3D models; default: the model's, set from its annotation); "
        "objects at the image's border need the model's edge factor times N (1.25 when training set the sizes)",
    )
    segment.add_argument(
        "--as-volume",
        action="store_true",
        help="2D models on stacks (Z, Y, X): label the planes' probabilities as one volume, so that an object "
        "keeps one id across planes (the model's sizes, areas in its planes, become volumes of balls)",
    )
    add_spacing_argument(
        segment, "with --as-volume or a 3D model: the volume's voxel size (sizes and distances in 3D; the outputs')"
    )
    segment.add_argument("--overwrite", action="store_true", help="replace existing output files")
    segment.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads (default: the cores other programs leave free; with --workers each worker takes its share)",
    )
    add_prediction_arguments(segment)
    segment.set_defaults(run=cmd_segment)

    train = commands.add_parser("train", help="train a model on annotated images")
    add_train_arguments(train)
    train.set_defaults(run=cmd_train)

    weights = commands.add_parser(
        "weights", help="write separation weight maps and training targets (3D for 3D labels)"
    )
    weights.add_argument("labels", type=Path, nargs="+", help="instance labels (0 background, -1 unannotated)")
    weights.add_argument("--out-dir", type=Path, required=True, help="write NAME_weights.tif and NAME_target.tif here")
    weights.add_argument(
        "--w0",
        type=float,
        default=WeightMapConfig().w0,
        help="weight of the borders between cells (default: %(default)g)",
    )
    weights.add_argument(
        "--sigma", type=float, default=WeightMapConfig().sigma, help="width of that weight in px (default: %(default)g)"
    )
    weights.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_spacing_argument(weights, "the voxel size of 3D labels, for physical distances")
    weights.set_defaults(run=cmd_weights)

    evaluate = commands.add_parser(
        "evaluate",
        help="compare predicted labels with ground truth",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "columns, per image and overall (objects are matched one to one where their IoU exceeds the threshold):\n"
            "  AP@t    matched / (matched + unmatched predicted + unmatched true) at IoU t (0.5, 0.75, 0.9)\n"
            "  F1@0.5  2 matched / (2 matched + unmatched predicted + unmatched true)\n"
            "  mIoU    mean IoU of the pairs matched at 0.5 (how well the outlines fit)\n"
            "  pxIoU   IoU of the foreground (the pixels of all objects together), whichever object they belong to\n"
            "  merged  pairs of touching true objects predicted as one object"
        ),
    )
    evaluate.add_argument("predictions", type=Path, nargs="+", help="predicted instance labels")
    evaluate.add_argument(
        "--truth", type=Path, nargs="+", required=True, help="true instance labels, one per prediction"
    )
    evaluate.add_argument(
        "--volumes", action="store_true", help="match objects in 3D (Z, Y, X) instead of plane by plane"
    )
    evaluate.set_defaults(run=cmd_evaluate)

    demo = commands.add_parser("demo", help="train on synthetic nuclei and segment held-out images")
    demo.add_argument("--out-dir", type=Path, default=Path("demo_output"), help="where to write (default: %(default)s)")
    demo.add_argument("--minutes", type=float, default=2.0, help="training time (default: %(default)g)")
    demo.add_argument("--seed", type=int, default=0, help="synthetic data and training seed (default: %(default)s)")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    demo.set_defaults(run=cmd_demo)

    _add_export_parser(commands)

    info = commands.add_parser("info", help="show what a model file holds")
    info.add_argument("model", type=Path, help="model file (.safetensors) or bioimage.io package")
    info.add_argument("--json", action="store_true", help="print everything the file records, as JSON")
    info.set_defaults(run=cmd_info)
    for command in commands.choices.values():
        command.allow_abbrev = False
        # also after the command (napari-unet train ... -v); not given there, the one before it stands
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log what happens")
    return parser


class _Formatter(logging.Formatter):
    """Warnings as one ``napari-unet: warning:`` line; other records as they are."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return f"napari-unet: warning: {message}" if record.levelno >= logging.WARNING else message


def _stdout_is_a_pipe() -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(sys.stdout.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):  # no file behind it (captured, closed)
        return False


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    args.given = given_options(argv)  # what a resumed run must not change
    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter("%(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    previous_level = root.level
    root.setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        return args.run(args) or 0
    except NapariUnetError as error:
        print(f"napari-unet: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("napari-unet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `napari-unet info MODEL | head -3`: the reader has what it wanted
        if not _stdout_is_a_pipe():
            raise  # another pipe (a worker's): not the reader's doing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error as Python flushes stdout
        return 141
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)


if __name__ == "__main__":
    sys.exit(main())
