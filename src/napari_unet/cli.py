"""The ``napari-unet`` command line: the core's jobs without napari."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from tqdm import tqdm

from .cli_stream import add_stream_arguments, check_stream_arguments, cmd_segment_to
from .core.checkpoint import ModelFileError, describe, load_model, load_state
from .core.config import (
    AugmentConfig,
    ModelConfig,
    ModelSpec,
    TrainConfig,
    WeightMapConfig,
    default_model_config,
)
from .core.devices import resolve_device
from .core.distributed import join_from_environment, launch
from .core.errors import ConfigError, NapariUnetError, OutputFileError
from .core.evaluation import evaluate_pairs
from .core.io import ImageFileError, check_writable, read_image, read_spacing, remove_stale_temporaries, write_image
from .core.layout import ImageShapeError, channels_before_spatial
from .core.metrics import MatchStats
from .core.model import UNet
from .core.predict import TileProgress, iter_segment
from .core.progress import drive
from .core.threads import use_threads
from .core.train import CheckpointFailed, StepProgress, Trainer, TrainingError, ValidationResult, model_bytes
from .core.weights import separation_target, weight_map


def progress_bar(**kwargs) -> tqdm:
    """A progress bar on stderr that stays quiet in logs (rare updates when not a terminal)."""
    interval = 0.2 if sys.stderr.isatty() else 15.0
    return tqdm(file=sys.stderr, dynamic_ncols=True, mininterval=interval, **kwargs)


def drive_tiles(generator, description: str):
    """Run a tile-progress generator under a tqdm bar; returns the generator's value."""
    with progress_bar(desc=description, unit="tile") as bar:

        def show(progress: TileProgress) -> None:
            bar.total = progress.total
            bar.update(progress.done - bar.n)

        return drive(generator, show)


def _tile(args: argparse.Namespace) -> int | tuple[int, ...] | None:
    """``--tile``: one size for every axis, or one per axis (Z Y X for volumes)."""
    if args.tile is None:
        return None
    return args.tile[0] if len(args.tile) == 1 else tuple(args.tile)


def _prediction_options(args: argparse.Namespace) -> dict:
    return {"tile": _tile(args), "device": args.device, "precision": args.precision, "channel_axis": args.channel_axis}


def _check_pairs(images: list[Path], labels: list[Path], what: str) -> None:
    if len(images) != len(labels):
        raise ConfigError(f"{len(images)} {what} image(s) but {len(labels)} label file(s): give one per image")


def output_names(inputs: Sequence[Path]) -> list[str]:
    """One distinct base name per input file: its stem; where stems collide, the
    parent folder's name and the stem, then also the suffix, then a number."""

    def name(index: int, level: int) -> str:
        path = inputs[index]
        parent = path.absolute().parent.name or "root"
        parts = [path.stem] if level == 0 else [parent, path.stem]
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
    for folder in dict.fromkeys(path.parent for path in paths):
        check_writable(folder / ".napari-unet-output")


def _check_inputs(paths: Sequence[Path]) -> None:
    for path in paths:
        if not path.is_file():
            raise ImageFileError(f"no such image file: {path}")


def cmd_segment(args: argparse.Namespace) -> None:
    check_stream_arguments(args)
    if args.out is not None:
        return cmd_segment_to(args, _prediction_options(args))
    _check_inputs(args.images)
    model = load_model(args.model)
    suffixes = ["labels", "probabilities"] if args.probabilities else ["labels"]
    outputs = [{kind: args.out_dir / f"{base}_{kind}.tif" for kind in suffixes} for base in output_names(args.images)]
    check_outputs([path for files in outputs for path in files.values()], args.overwrite)
    for path, files in zip(args.images, outputs):
        image = read_image(path)
        segmentation = iter_segment(model, image, return_probabilities=args.probabilities, **_prediction_options(args))
        result = drive_tiles(segmentation, path.name)
        labels, probabilities = result if args.probabilities else (result, None)
        write_image(files["labels"], labels)
        if probabilities is not None:
            write_image(files["probabilities"], probabilities)
        print(f"{path}: {int(labels.max())} objects -> {files['labels']}")


def cmd_info(args: argparse.Namespace) -> None:
    print(json.dumps(describe(args.model), indent=2))


def cmd_weights(args: argparse.Namespace) -> None:
    WeightMapConfig(w0=args.w0, sigma=args.sigma)  # refuse bad settings before reading anything
    outputs = [
        (args.out_dir / f"{base}_weights.tif", args.out_dir / f"{base}_target.tif")
        for base in output_names(args.labels)
    ]
    _check_inputs(args.labels)
    check_outputs([path for pair in outputs for path in pair], args.overwrite)
    for path, (weights_path, target_path) in zip(args.labels, outputs):
        labels = read_image(path)
        if labels.ndim not in (2, 3):
            raise ImageShapeError(
                f"{path}: weight maps need 2D (H, W) or 3D (Z, Y, X) label images, got shape {labels.shape}"
            )
        spacing = _spacing(args, path, labels.ndim)
        weights = weight_map(labels, args.w0, args.sigma, spacing=spacing)
        write_image(weights_path, weights)
        write_image(target_path, separation_target(labels))
        print(f"{path}: weights in [{weights.min():.2f}, {weights.max():.2f}] -> {weights_path}")


def train_config_from(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        steps=args.steps,
        minutes=args.minutes,
        tile=_tile(args),
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        weights=WeightMapConfig(w0=args.w0, sigma=args.sigma),
        augment=AugmentConfig(elastic=not args.no_elastic),
        device=args.device,
        precision=args.precision,
        seed=args.seed,
        validate_every=args.validate_every,
        decay_by_time=args.decay_by_time,
        checkpoint_every=args.checkpoint_every,
    )


@contextlib.contextmanager
def stop_on_signals(trainer: Trainer):
    """While inside, SIGINT (Ctrl-C) and SIGTERM ask ``trainer`` to stop after its
    current step (it then writes its checkpoint); a second one interrupts at once.
    Yields the list the received signal numbers go to. Outside the main thread
    (where Python cannot take signals) nothing is installed."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    signals = [signal.SIGINT, signal.SIGTERM]
    previous = {number: signal.getsignal(number) for number in signals}

    def first(number, frame) -> None:
        received.append(number)
        trainer.request_stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second one interrupts at once
        signal.signal(signal.SIGTERM, previous[signal.SIGTERM])

    for number in signals:
        signal.signal(number, first)
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def run_training(trainer: Trainer) -> int | None:
    """Drive a trainer with a progress bar. Ctrl-C or SIGTERM stops it after the
    current step and keeps its checkpoint; returns that signal's number, if any."""
    main = trainer.group.is_main  # the other processes of a data-parallel run stay quiet
    with progress_bar(
        total=trainer.config.steps, initial=trainer.step, desc="training", unit="step", disable=not main
    ) as bar:

        def show(event) -> None:
            if isinstance(event, StepProgress):
                bar.total = event.total_steps
                bar.update(event.step - bar.n)
                bar.set_postfix(loss=f"{event.loss:.4f}", eta=f"{event.eta_seconds:.0f}s")
            elif isinstance(event, ValidationResult):
                bar.write(f"step {event.step}: validation AP@0.5 {event.ap50:.3f}, pixel IoU {event.pixel_iou:.3f}")
            elif isinstance(event, CheckpointFailed):
                bar.write(f"napari-unet: warning: {event.message}")

        with stop_on_signals(trainer) as received:
            try:
                drive(trainer.run(), show)
            except KeyboardInterrupt:  # a second Ctrl-C: drive closed the run mid-step
                bar.write(f"interrupted during step {trainer.step + 1}")
                raise
        if received:
            name = signal.Signals(received[0]).name
            bar.write(f"stopped at step {trainer.step} on {name}")
            return received[0]
    return None


#: Training settings a resumed run keeps (so that it continues exactly), as the
#: command line names them, with how to read each from the checkpoint.
RESUME_KEEPS = {
    "steps": lambda train, model: train.steps,
    "minutes": lambda train, model: train.minutes,
    "tile": lambda train, model: train.tile,
    "batch_size": lambda train, model: train.batch_size,
    "optimizer": lambda train, model: train.optimizer,
    "lr": lambda train, model: train.lr,
    "w0": lambda train, model: train.weights.w0,
    "sigma": lambda train, model: train.weights.sigma,
    "no_elastic": lambda train, model: not train.augment.elastic,
    "seed": lambda train, model: train.seed,
    "decay_by_time": lambda train, model: train.decay_by_time,
    "validate_every": lambda train, model: train.validate_every,
    "checkpoint_every": lambda train, model: train.checkpoint_every,
    "in_channels": lambda train, model: model.in_channels,
    "base_channels": lambda train, model: model.base_channels,
    "depth": lambda train, model: model.depth,
}


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


def _resume(args: argparse.Namespace, images, labels, **kwargs) -> Trainer:
    """A trainer continuing ``args.resume``; options that would change the run are
    refused, --device and --precision are applied."""
    state = load_state(args.resume)
    given = given_options(args.argv)
    if isinstance(state, dict) and state.get("kind") == "checkpoint":
        try:
            recorded_train = TrainConfig.from_dict(state["config"])
            recorded_model = ModelSpec.from_dict(state["model"]["spec"]).model
        except (KeyError, TypeError, NapariUnetError) as error:
            raise ModelFileError(f"{args.resume} records unusable training settings: {error}") from error
        for dest, recorded in RESUME_KEEPS.items():
            value = getattr(args, dest)
            if isinstance(value, list):  # options taking one value per axis (--tile)
                value = value[0] if len(value) == 1 else tuple(value)
            if dest in given and value != recorded(recorded_train, recorded_model):
                option = "--" + dest.replace("_", "-")
                shown = "" if isinstance(value, bool) else f" {value}"
                raise ConfigError(
                    f"{option}{shown} differs from the checkpoint's {recorded(recorded_train, recorded_model)}: "
                    f"a resumed run keeps its settings so that it continues exactly; drop {option}, "
                    "or start a new run from the model with --init"
                )
    return Trainer.resume(
        args.resume,
        images,
        labels,
        state=state,
        device=args.device if "device" in given else None,
        precision=args.precision if "precision" in given else None,
        **kwargs,
    )


def cmd_train(args: argparse.Namespace) -> int | None:
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:  # start the processes; each runs this command
        try:
            launch(args.nproc, args.argv)
        except ChildFailedError as error:
            raise TrainingError(
                f"a training process failed, so all {args.nproc} stopped ({error.get_first_failure()[1].message}); "
                f"the last checkpoint is intact"
            ) from error
        return None
    group = join_from_environment(resolve_device(args.device))
    if not group.distributed:  # torchrun's processes split the cores between them already
        use_threads(args.threads)
    _check_pairs(args.images, args.labels, "training")
    _check_pairs(args.val_images, args.val_labels, "validation")
    checkpoint = args.checkpoint or args.out.with_name(args.out.name + ".ckpt")
    if checkpoint.absolute() == args.out.absolute():
        raise ConfigError(f"the checkpoint and the model would both be {args.out}: give another --checkpoint")
    check_writable(args.out)  # before any work, not after the training
    for stale in remove_stale_temporaries(args.out):
        logging.getLogger(__name__).info("removed %s, left by an interrupted write", stale)
    images = [read_image(p) for p in args.images]
    labels = [read_image(p) for p in args.labels]
    options = {
        "val_images": [read_image(p) for p in args.val_images],
        "val_labels": [read_image(p) for p in args.val_labels],
        "checkpoint_path": checkpoint,
        "channel_axis": args.channel_axis,
        "names": [str(p) for p in args.labels],
    }
    if args.resume:
        trainer = _resume(args, images, labels, **options)
    else:
        config = train_config_from(args)
        model = load_model(args.init) if args.init else _new_model(args, images[0])
        trainer = Trainer(model, images, labels, config, **options)
    check_writable(args.out, model_bytes(trainer.model))
    stopped_by = run_training(trainer)
    if group.is_main:  # the other processes of a data-parallel run write nothing
        trainer.save_model(args.out)
        summary = trainer.summary()
        print(f"trained {summary.steps} steps in {summary.seconds:.0f} s (loss {summary.final_loss:.4f}) -> {args.out}")
        if trainer.checkpoint_error:
            print(f"napari-unet: warning: no checkpoint for --resume: {trainer.checkpoint_error}", file=sys.stderr)
        else:
            print(f"checkpoint for --resume: {checkpoint}")
    return None if stopped_by is None else 128 + stopped_by


def _spacing(args: argparse.Namespace, path: Path, ndim: int) -> tuple[float, ...] | None:
    """Voxel spacing (z, y, x) for 3D data: ``--spacing``, else the file's metadata, else
    none (isotropic). 2D data have none."""
    if ndim != 3:
        if getattr(args, "spacing", None):
            raise ConfigError("--spacing Z Y X applies to volumes (3D labels, or --ndim 3)")
        return None
    if getattr(args, "spacing", None):
        return tuple(args.spacing)
    return read_spacing(path)


def _new_model(args: argparse.Namespace, first_image) -> UNet:
    ndim = args.ndim
    spacing = _spacing(args, args.images[0], ndim)
    if spacing is not None:
        print(f"voxel spacing (z, y, x): {', '.join(f'{s:g}' for s in spacing)}")
    defaults = default_model_config(args.device, ndim=ndim, spacing=spacing)
    chosen = {"in_channels": args.in_channels, "base_channels": args.base_channels, "depth": args.depth}
    config = ModelConfig(**{**vars(defaults), **{k: v for k, v in chosen.items() if v is not None}})
    # a clear error if the image does not fit
    channels_before_spatial(first_image, config.in_channels, args.channel_axis, config.ndim)
    torch.manual_seed(args.seed)  # the initial weights follow --seed
    return UNet.from_config(config)


def format_table(rows: list[tuple[str, list[MatchStats], float, int]]) -> str:
    """A plain-text table: one row per image (and overall) of instance metrics."""
    columns = [("AP@0.5", 7), ("AP@0.75", 7), ("AP@0.9", 7), ("F1@0.5", 7), ("mIoU", 6), ("pxIoU", 6), ("merged", 6)]
    header = f"{'image':<28} " + " ".join(f"{name:>{width}}" for name, width in columns)
    lines = [header, "-" * len(header)]
    for name, stats, pixel_iou, merged in rows:
        by = {round(s.threshold, 2): s for s in stats}
        lines.append(
            f"{name[:28]:<28} {by[0.5].ap:7.3f} {by[0.75].ap:7.3f} {by[0.9].ap:7.3f} "
            f"{by[0.5].f1:7.3f} {by[0.5].mean_matched_iou:6.3f} {pixel_iou:6.3f} {merged:6d}"
        )
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> None:
    _check_pairs(args.predictions, args.truth, "prediction")
    pairs = [(p.name, read_image(p), read_image(t)) for p, t in zip(args.predictions, args.truth)]
    print(format_table(evaluate_pairs(pairs)))


def cmd_demo(args: argparse.Namespace) -> None:
    from . import demo

    data = demo.demo_data(args.seed)
    trainer = demo.demo_trainer(data, minutes=args.minutes, seed=args.seed, device=args.device)
    config = trainer.model.config
    print(
        f"training a U-Net (base {config.base_channels}, depth {config.depth}) on {len(data.train)} synthetic "
        f"images for {args.minutes:g} min on {trainer.device}"
    )
    run_training(trainer)
    predicted, rows = demo.evaluate_on_test(trainer, data)
    table = format_table(rows)
    demo.write_outputs(args.out_dir, trainer, data, predicted, table)
    print(table)
    print(f"wrote the model, test images, labels, metrics.txt and overlay.png to {args.out_dir}")


def cmd_export(args: argparse.Namespace) -> None:
    from .core.exchange import export_model

    model = load_model(args.model)
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
    elif args.author or args.name or args.trained_on or args.image:
        raise ConfigError("--author, --name, --trained-on and --image apply to --format bioimageio only")
    path = export_model(model, args.out, args.format, **options)
    print(f"{args.model} -> {path} ({args.format}, {path.stat().st_size / 1e6:.2f} MB)")


def _add_export_parser(commands) -> None:
    export = commands.add_parser("export", help="write a model for other software (bioimage.io, ONNX, TorchScript)")
    export.add_argument("model", type=Path, help="model file (.safetensors) or napari-unet bioimage.io package")
    export.add_argument("--format", choices=["bioimageio", "onnx", "torchscript"], default="bioimageio")
    export.add_argument("--out", type=Path, required=True, help="file to write (.zip, .onnx or .pt)")
    export.add_argument("--author", action="append", default=[], help="package author (repeat for several)")
    export.add_argument("--name", default=None, help="model name in the package (letters, digits, spaces, _+-())")
    export.add_argument("--license", default="CC-BY-4.0", help="SPDX license id of the weights (default CC-BY-4.0)")
    export.add_argument("--trained-on", default=None, help="one sentence on the training data, for the README")
    export.add_argument("--image", type=Path, default=None, help="example image for the test tensors and cover")
    export.add_argument("--channel-axis", type=int, default=None, help="channel axis of --image (default: guessed)")
    export.set_defaults(run=cmd_export)


def _add_prediction_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tile",
        type=int,
        nargs="+",
        default=None,
        help="input tile size, one for every axis or one per axis (Z Y X for volumes); valid sizes only; default: best",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument(
        "--channel-axis", type=int, default=None, help="axis of the images' channels (default: guessed)"
    )


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    add = parser.add_argument
    add("images", type=Path, nargs="+", help="training images")
    add(
        "--labels",
        type=Path,
        nargs="+",
        required=True,
        help="instance labels, one per image (-1 = unannotated)",
    )
    add("--out", type=Path, required=True, help="model file to write")
    add("--val-images", type=Path, nargs="*", default=[])
    add("--val-labels", type=Path, nargs="*", default=[])
    add("--steps", type=int, default=defaults.steps)
    add("--minutes", type=float, default=None, help="stop after this many minutes (whichever comes first)")
    add("--in-channels", type=int, default=None, help="channels of a new model (default 1)")
    add("--base-channels", type=int, default=None, help="new model width (default: 64 on GPU, 16 on CPU)")
    add("--depth", type=int, default=None, help="new model depth (default: 4 on GPU, 3 on CPU; 3D: 3 / 2)")
    add(
        "--ndim",
        type=int,
        choices=[2, 3],
        default=2,
        help="a new model for images (2, stacks plane by plane) or volumes (3: the 3D U-Net on (Z, Y, X))",
    )
    add(
        "--spacing",
        type=float,
        nargs=3,
        default=None,
        metavar=("Z", "Y", "X"),
        help="voxel size of the volumes (default: from the TIFF metadata, else isotropic); with --ndim 3",
    )
    add("--batch-size", type=int, default=defaults.batch_size)
    add("--lr", type=float, default=None)
    add("--optimizer", choices=["adam", "sgd"], default=defaults.optimizer)
    add("--w0", type=float, default=defaults.weights.w0)
    add("--sigma", type=float, default=defaults.weights.sigma)
    add("--no-elastic", action="store_true", help="switch off elastic deformation")
    add("--seed", type=int, default=defaults.seed)
    add(
        "--decay-by-time",
        action="store_true",
        help="end the learning-rate decay at --minutes when that comes before --steps (not exactly repeatable)",
    )
    add("--validate-every", type=int, default=None, help="steps between validations (default: 5 per run, <= 100)")
    add("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    add("--checkpoint", type=Path, default=None, help="checkpoint file (default: OUT.ckpt)")
    add(
        "--nproc",
        type=int,
        default=1,
        help="data-parallel processes on this machine (one per GPU; on a CPU they share the cores); "
        "--batch-size is the global batch",
    )
    add("--threads", type=int, default=None, help="CPU threads (default: the cores other programs leave free)")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", type=Path, default=None, help="continue a checkpoint exactly")
    start.add_argument("--init", type=Path, default=None, help="fine-tune from a model file")
    _add_prediction_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-unet", description="U-Net segmentation (Ronneberger et al. 2015)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser(
        "segment", help="segment images with a model file (volumes (Z, Y, X) as a whole with a 3D model)"
    )
    segment.add_argument("model", type=Path)
    segment.add_argument("images", type=Path, nargs="+")
    outputs = segment.add_mutually_exclusive_group(required=True)
    outputs.add_argument("--out-dir", type=Path)
    add_stream_arguments(segment, outputs)
    segment.add_argument("--probabilities", action="store_true", help="also write class probabilities")
    segment.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _add_prediction_arguments(segment)
    segment.set_defaults(run=cmd_segment)

    train = commands.add_parser("train", help="train a model on annotated images")
    _add_train_arguments(train)
    train.set_defaults(run=cmd_train)

    weights = commands.add_parser(
        "weights", help="write separation weight maps and training targets (3D for 3D labels)"
    )
    weights.add_argument("labels", type=Path, nargs="+")
    weights.add_argument("--out-dir", type=Path, required=True)
    weights.add_argument("--w0", type=float, default=WeightMapConfig().w0)
    weights.add_argument("--sigma", type=float, default=WeightMapConfig().sigma)
    weights.add_argument("--overwrite", action="store_true", help="replace existing output files")
    weights.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        default=None,
        metavar=("Z", "Y", "X"),
        help="voxel size of 3D labels: physical distances (default: from the TIFF metadata, else isotropic)",
    )
    weights.set_defaults(run=cmd_weights)

    evaluate = commands.add_parser("evaluate", help="compare predicted labels with ground truth")
    evaluate.add_argument("predictions", type=Path, nargs="+")
    evaluate.add_argument("--truth", type=Path, nargs="+", required=True)
    evaluate.set_defaults(run=cmd_evaluate)

    demo = commands.add_parser("demo", help="train on synthetic nuclei and segment held-out images")
    demo.add_argument("--out-dir", type=Path, default=Path("demo_output"))
    demo.add_argument("--minutes", type=float, default=2.0)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="auto")
    demo.set_defaults(run=cmd_demo)

    _add_export_parser(commands)

    info = commands.add_parser("info", help="show what a model file holds")
    info.add_argument("model", type=Path)
    info.set_defaults(run=cmd_info)
    return parser


class _Formatter(logging.Formatter):
    """Warnings as one ``napari-unet: warning:`` line; other records as they are."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return f"napari-unet: warning: {message}" if record.levelno >= logging.WARNING else message


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
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
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)


if __name__ == "__main__":
    sys.exit(main())
