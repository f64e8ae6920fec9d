"""The ``napari-unet`` command line: the core's jobs without napari."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from .core.checkpoint import ModelFileError, describe, load_model
from .core.geometry import InvalidTileSize
from .core.instances import probabilities_to_labels
from .core.io import ImageFileError, read_image, write_image
from .core.layout import ImageShapeError
from .core.predict import iter_predict

#: Errors that come from what the user typed or gave us: one line, exit status 2.
USER_ERRORS = (ModelFileError, ImageFileError, ImageShapeError, InvalidTileSize, ValueError, OSError)


class CommandError(Exception):
    """A user-facing failure of a sub-command."""


def drive(generator, description: str, unit: str):
    """Run a progress generator under a tqdm bar; returns the generator's value."""
    with tqdm(desc=description, unit=unit, dynamic_ncols=True, file=sys.stderr) as bar:
        while True:
            try:
                progress = next(generator)
            except StopIteration as stop:
                return stop.value
            bar.total = progress.total
            bar.update(progress.done - bar.n)


def _prediction_options(args: argparse.Namespace) -> dict:
    return {"tile": args.tile, "device": args.device, "precision": args.precision}


def cmd_segment(args: argparse.Namespace) -> None:
    model = load_model(args.model)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for path in args.images:
        image = read_image(path)
        probabilities = drive(iter_predict(model, image, **_prediction_options(args)), path.name, "tile")
        labels = probabilities_to_labels(probabilities, model.spec.instances)
        write_image(args.out_dir / f"{path.stem}_labels.tif", labels)
        if args.probabilities:
            write_image(args.out_dir / f"{path.stem}_probabilities.tif", probabilities)
        print(f"{path}: {int(labels.max())} objects -> {args.out_dir / (path.stem + '_labels.tif')}")


def cmd_info(args: argparse.Namespace) -> None:
    print(json.dumps(describe(args.model), indent=2))


def _add_prediction_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tile",
        type=int,
        default=None,
        help="input tile size (valid sizes only; default: best for the image)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-unet", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="segment images with a model file")
    segment.add_argument("model", type=Path)
    segment.add_argument("images", type=Path, nargs="+")
    segment.add_argument("--out-dir", type=Path, required=True)
    segment.add_argument("--probabilities", action="store_true", help="also write class probabilities")
    _add_prediction_arguments(segment)
    segment.set_defaults(run=cmd_segment)

    info = commands.add_parser("info", help="show what a model file holds")
    info.add_argument("model", type=Path)
    info.set_defaults(run=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        args.run(args)
    except (CommandError, *USER_ERRORS) as error:
        print(f"napari-unet: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("napari-unet: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
