"""What the ``napari-unet`` commands share: options, their checks and progress bars."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .core.atomic_files import check_writable
from .core.config import InstanceConfig
from .core.errors import ConfigError, OutputFileError
from .core.geometry import is_volume
from .core.io import IMAGE_SUFFIXES, named_axes, read_spacing
from .core.layout import ImageShapeError, axes_at_minus3, rgb_for_one_channel_message
from .core.predict import TileProgress
from .core.progress import drive


def progress_bar(**kwargs) -> tqdm:
    """A progress bar on stderr that stays quiet in logs (rare updates when not a terminal)."""
    interval = 0.2 if sys.stderr.isatty() else 15.0
    return tqdm(file=sys.stderr, dynamic_ncols=True, mininterval=interval, **kwargs)


def drive_tiles(generator, description: str):
    """Run a tile-progress generator under a tqdm bar, shown from its first progress
    (bad input fails before it, without an empty bar); returns the generator's value."""
    bar = None

    def show(progress: TileProgress) -> None:
        nonlocal bar
        if bar is None:
            bar = progress_bar(desc=description, unit="tile", total=progress.total)
        bar.total = progress.total
        bar.update(progress.done - bar.n)

    try:
        with logging_redirect_tqdm():  # a warning logged while the bar is open goes on a line above it
            return drive(generator, show)
    finally:
        if bar is not None:
            bar.close()


def model_argument(args: argparse.Namespace):
    """The model of ``args.model``; a file that is no model but an image (the
    arguments swapped, ``segment IMAGE MODEL``) says which comes first."""
    from .core.checkpoint import ModelFileError, load_model

    try:
        return load_model(args.model)
    except ModelFileError as error:
        if Path(args.model).suffix.lower() in IMAGE_SUFFIXES:
            usage = "MODEL IMAGE..." if args.command == "segment" else "MODEL --out FILE"
            raise ModelFileError(
                f"{error}; {args.model} looks like an image, and the model file comes first "
                f"(napari-unet {args.command} {usage})"
            ) from error
        raise


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def tile_option(args: argparse.Namespace) -> int | tuple[int, ...] | None:
    """``--tile``: one size for every axis, or one per axis (Z Y X for volumes)."""
    if args.tile is None:
        return None
    return args.tile[0] if len(args.tile) == 1 else tuple(args.tile)


def prediction_options(args: argparse.Namespace) -> dict:
    return {
        "tile": tile_option(args),
        "device": args.device,
        "precision": args.precision,
        "channel_axis": args.channel_axis,
        "tta": args.tta,
        "rescale": args.rescale,
    }


def instance_options(args: argparse.Namespace, instances: InstanceConfig) -> InstanceConfig:
    """The model's ``instances`` with ``segment --split``, ``--min-fill`` and ``--min-size``
    where given; ``--split 0`` (the paper's connected components) also turns the shape
    split off unless ``--min-fill`` asks for it."""
    min_fill = 0.0 if args.split == 0 and args.min_fill is None else args.min_fill
    given = {"split": args.split, "min_fill": min_fill, "min_size": args.min_size}
    return replace(instances, **{name: value for name, value in given.items() if value is not None})


def check_pairs(images: list[Path], labels: list[Path], what: str) -> None:
    if len(images) != len(labels):
        raise ConfigError(f"{len(images)} {what} image(s) but {len(labels)} label file(s): give one per image")


def spacing_option(args: argparse.Namespace, path: Path, ndim: int) -> tuple[float, ...] | None:
    """Voxel spacing (z, y, x) for 3D data: ``--spacing``, else the file's metadata, else
    none (isotropic). 2D data have none."""
    if ndim != 3:
        if getattr(args, "spacing", None) and hasattr(args, "ndim"):  # train
            raise ConfigError("--spacing Z Y X applies to 3D models: add --ndim 3, or drop --spacing")
        if getattr(args, "spacing", None):
            held = "2D labels" if ndim == 2 else f"labels of {ndim} dimensions"
            raise ConfigError(
                f"--spacing Z Y X applies to volumes (3D labels), and {path} holds {held}: drop --spacing"
            )
        return None
    if getattr(args, "spacing", None):
        return tuple(args.spacing)
    spacing = read_spacing(path)
    if spacing is None:
        print(
            f"napari-unet: {path} records no voxel size: cubic voxels assumed; if z is coarser than y and x "
            "(it mostly is), pass --spacing Z Y X",
            file=sys.stderr,
        )
    return spacing


def add_spacing_argument(parser: argparse.ArgumentParser, purpose: str) -> None:
    """``--spacing Z Y X``: a voxel size, for ``purpose`` (the help's first words); by
    default the TIFF's metadata, else isotropic voxels (:func:`spacing_option`)."""
    parser.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        default=None,
        metavar=("Z", "Y", "X"),
        help=f"{purpose} (default: from the TIFF metadata, else isotropic)",
    )


def add_prediction_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tile",
        type=int,
        nargs="+",
        default=None,
        help="input tile size, one for every axis or one per axis (Z Y X for volumes); valid sizes only; default: best",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto: bf16 on GPUs (fp16 on those without bf16) and on CPUs with bf16 matrix units, else fp32",
    )
    parser.add_argument(
        "--channel-axis", type=int, default=None, help="axis of the images' channels (default: guessed)"
    )


def output_names(inputs: Sequence[Path]) -> list[str]:
    """One distinct base name per input file: its stem (without an OME-TIFF's ".ome");
    where stems collide, the parent folder's name and the stem, then also the suffix,
    then a number."""

    def name(index: int, level: int) -> str:
        path = inputs[index]
        parent = path.absolute().parent.name or "root"
        stem = path.stem[:-4] if path.stem.lower().endswith(".ome") and len(path.stem) > 4 else path.stem
        parts = [stem] if level == 0 else [parent, stem]
        if level >= 2 and path.suffix:
            parts.append(path.suffix.lstrip("."))
        if level >= 3:
            parts.append(str(index + 1))
        return "_".join(parts)

    levels = [0] * len(inputs)
    while True:
        names = [name(i, level) for i, level in enumerate(levels)]
        clashing = [i for i, n in enumerate(names) if names.count(n) > 1 and levels[i] < 3]
        if not clashing:
            return names
        for i in clashing:
            levels[i] += 1


def check_outputs(paths: Sequence[Path], overwrite: bool) -> None:
    """Before writing anything: refuse to replace existing files (unless
    ``overwrite``) and make sure every output's folder takes new files."""
    existing = [path for path in paths if path.exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more output file(s))" if len(existing) > 1 else ""
        raise OutputFileError(f"{existing[0]} exists{more}; pass --overwrite to replace it")
    for path in {path.parent: path for path in reversed(paths)}.values():  # the first output of each folder
        check_writable(path)


def file_channel_axis(path: Path, shape: tuple[int, ...], in_channels: int, given: int | None) -> int | None:
    """The channel axis of the image of ``shape`` read from ``path``: ``given``
    (--channel-axis) when set; else the axis the TIFF names colour samples ("S", an
    RGB TIFF stored planar or not) or, for a model of several channels, channels
    ("C"); else ``None`` (guessed from the shape). A file that names its axes, none of
    them channels, is refused by a model of several channels: a ZYX stack of 3
    planes was segmented as one RGB image, a planar RGB TIFF as 3 planes; and a
    hyperstack that names several channels beside other axes by a model of one (a
    ZCYX stack went as volumes of 2 planes)."""
    if given is not None:
        return given
    axes = named_axes(path, shape)
    if axes is None:
        return None
    if "S" in axes:
        samples = axes.index("S")
        if in_channels == 1:
            as_rgb = shape[:samples] + shape[samples + 1 :] + (shape[samples],)
            raise ImageShapeError(rgb_for_one_channel_message(as_rgb))
        return samples
    # a hyperstack's channels (ZCYX) went as volumes of 2 planes; a plain stack's planes may be named
    # channels (tifffile's ImageJ stacks read back as CYX), and go as before
    if in_channels == 1 and "C" in axes and len(axes) > 3 and shape[axes.index("C")] > 1:
        raise ImageShapeError(
            f"the model takes images of 1 channel, and the file names its axes {axes} with "
            f"{shape[axes.index('C')]} channels (C): save the channel to segment as a file of its own, or use a "
            f"model trained on {shape[axes.index('C')]} channels (napari-unet train --in-channels)"
        )
    if in_channels == 1:
        return None
    if "C" in axes:
        return axes.index("C")
    raise ImageShapeError(
        f"the model expects {in_channels} channels, but the file names its axes {axes} and none of them "
        "holds channels (C, or S for RGB): give the axis that does with --channel-axis, or use a one-channel model"
    )


def volume_planes(path: Path, image, in_channels: int, channel_axis: int | None) -> int | None:
    """How many planes ``image`` (read from ``path``) has when it is one volume
    (:func:`~napari_unet.core.geometry.is_volume` at the file's spacing), else ``None``.
    Its axes are read as a model of ``in_channels`` reads them: an RGB picture is no
    volume, and an image such a model cannot take is left to the model's own error."""
    if in_channels != 1:
        return None
    try:
        axes = axes_at_minus3(image.shape, 1, channel_axis)  # where (*stack, channel, H, W) come from
    except ImageShapeError:
        return None
    shape = tuple(image.shape[axis] for axis in axes[:-3] + axes[-2:])  # (*stack, H, W)
    return shape[0] if len(shape) == 3 and is_volume(shape, read_spacing(path)) else None
