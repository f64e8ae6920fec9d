"""``napari-unet train``: options, signals, the progress bar and the summary of a run
(resuming and what a run may replace: :mod:`.cli_resume`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from .cli_args import (
    add_prediction_arguments,
    add_spacing_argument,
    check_pairs,
    positive_int,
    spacing_option,
    tile_option,
    volume_planes,
)
from .cli_resume import refuse_to_replace, resume_trainer
from .cli_run import run_training
from .core.atomic_files import check_writable, remove_stale_temporaries
from .core.checkpoint import load_model, model_bytes
from .core.config import ModelConfig, default_model_config
from .core.devices import resolve_device
from .core.distributed import join_from_environment, launch
from .core.errors import ConfigError, TrainingError
from .core.exchange import FORMATS
from .core.io import IMAGE_SUFFIXES, read_image, read_labels, read_spacing
from .core.layout import channels_before_spatial
from .core.model import UNet
from .core.spacing import voxel_shape_note
from .core.threads import use_threads
from .core.train import SUMMARY_LOSS_STEPS, Trainer
from .core.train_config import CPU_3D_MINUTES, AugmentConfig, TrainConfig, WeightMapConfig, default_minutes
from .core.warm_start import WARM_START_STEPS


def train_config_from(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        steps=args.steps,
        minutes=training_minutes(args),
        tile=tile_option(args),
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        weights=WeightMapConfig(w0=args.w0, sigma=args.sigma),
        augment=AugmentConfig(elastic=not args.no_elastic, zoom=args.zoom),
        device=args.device,
        precision=args.precision,
        seed=args.seed,
        validate_every=args.validate_every,
        decay_by_time=args.decay_by_time,
        checkpoint_every=args.checkpoint_every,
        fit_sizes=not args.keep_sizes,
        warm_start_steps=warm_start_steps(args),
    )


def training_minutes(args: argparse.Namespace) -> float | None:
    """``--minutes``; for a new model without ``--steps`` by default
    :func:`~napari_unet.core.train_config.default_minutes` (a 3D model on a CPU: its
    steps take seconds there, the default steps would take hours)."""
    if args.minutes is not None or "steps" in args.given or args.init:
        return args.minutes
    return default_minutes(args.ndim, resolve_device(args.device).type)


def warm_start_steps(args: argparse.Namespace) -> int:
    """``--warm-start``: by default :data:`WARM_START_STEPS` for a new 3D model, else
    none; refused where it cannot apply."""
    if args.warm_start is None:
        return WARM_START_STEPS if args.ndim == 3 and not args.init else 0
    if args.warm_start and args.init:
        raise ConfigError("--warm-start starts a new 3D model; a model given with --init is its own start: drop one")
    if args.warm_start and args.ndim != 3:
        raise ConfigError("--warm-start applies to new 3D models (--ndim 3)")
    return args.warm_start


def _segmenting_line(model) -> str:
    """What the trained model's instance settings do, in one line (parts that are off
    are said to be off, not given as "under 0 px")."""
    instances, unit = model.spec.instances, "voxels" if model.config.ndim == 3 else "px"
    pieces = f"splits no object into pieces under {instances.min_piece} {unit}" if instances.min_piece else ""
    shape = (
        f"objects filling under {instances.min_fill:.3f} of their ellipse are split at necks "
        f"{instances.neck:.2g} px deep (segment --min-fill changes it)"
        if instances.min_fill
        else "no split by shape (segment --min-fill turns it on)"
    )
    border = f" ({instances.edge_size_factor:g}x that at the image's border)" if instances.edge_size_factor > 1 else ""
    size = f"segmenting drops objects under {instances.min_size} {unit}{border} (segment --min-size changes it)"
    return f"{size}{' and ' + pieces if pieces else ''}; {shape}"


def cmd_train(args: argparse.Namespace) -> int | None:
    if args.out.suffix.lower() in IMAGE_SUFFIXES:  # the model file would pass for an image
        raise ConfigError(
            f"--out is the trained model's file, not an image: name it {args.out.with_suffix('.safetensors')}"
        )
    if args.out.suffix.lower() in EXPORT_SUFFIXES:  # a safetensors file by that name would pass for one
        model = args.out.with_suffix(".safetensors")
        exported = args.out if args.out.suffix.lower() in FORMATS.values() else args.out.with_suffix(".pt")
        raise ConfigError(
            f"--out is the trained model's file (safetensors), not {args.out.suffix}: name it {model}, then "
            f"napari-unet export {model} --out {exported} writes the {exported.suffix} file"
        )
    if args.out.is_dir():  # --overwrite would not help: it is not a file to replace
        raise ConfigError(f"--out {args.out} is a folder: name the model's file, e.g. {args.out / 'model.safetensors'}")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:  # start the processes; each runs this command
        try:
            launch(args.nproc, args.argv)
        except SignalException as error:  # Ctrl-C or SIGTERM: the processes stopped as one process does
            return 128 + int(error.sigval)
        except ChildFailedError as error:
            raise TrainingError(
                f"a training process failed, so all {args.nproc} stopped ({error.get_first_failure()[1].message}); "
                f"the last checkpoint is intact"
            ) from error
        return None
    group = join_from_environment(resolve_device(args.device))
    if not group.distributed:  # torchrun's processes split the cores between them already
        use_threads(args.threads)
    check_pairs(args.images, args.labels, "training")
    check_pairs(args.val_images, args.val_labels, "validation")
    checkpoint = args.checkpoint or args.out.with_name(args.out.name + ".ckpt")
    if checkpoint.absolute() == args.out.absolute():
        raise ConfigError(f"the checkpoint and the model would both be {args.out}: give another --checkpoint")
    resumed_state = refuse_to_replace(args, checkpoint)
    check_writable(args.out)  # before any work, not after the training
    for stale in remove_stale_temporaries(args.out):
        logging.getLogger(__name__).info("removed %s, left by an interrupted write", stale)
    images = [read_image(p) for p in args.images]
    labels = [read_labels(p) for p in args.labels]
    options = {
        "val_images": [read_image(p) for p in args.val_images],
        "val_labels": [read_labels(p) for p in args.val_labels],
        "checkpoint_path": checkpoint,
        "overwrite": True,  # refuse_to_replace has had its say
        "channel_axis": args.channel_axis,
        # messages name a pair by its labels file, and its image ("the image of lab.tif" alone
        # sent a user looking for NaNs in the labels)
        "names": [f"{labels} (image {image})" for image, labels in zip(args.images, args.labels)],
        "val_names": [f"{labels} (image {image})" for image, labels in zip(args.val_images, args.val_labels)],
    }
    if args.resume:
        trainer = resume_trainer(args, images, labels, resumed_state, **options)
    else:
        config = train_config_from(args)
        model = initial_model(args) if args.init else new_model(args, images[0])
        trainer = Trainer(model, images, labels, config, **options)  # the data are checked before any note
        if config.minutes != args.minutes:
            print(
                f"napari-unet: a new 3D model on a CPU trains for {config.minutes:g} minutes "
                "(its 2D twin in the first half): --minutes or --steps to change",
                file=sys.stderr,
            )
    check_writable(args.out, model_bytes(trainer.model))
    resumed_at = trainer.step
    stopped_by = run_training(trainer)
    if group.is_main:  # the other processes of a data-parallel run write nothing
        trainer.save_model(args.out)
        summary = trainer.summary()
        if args.resume and trainer.step == resumed_at and stopped_by is None:
            print(
                f"{args.resume} holds a finished run ({summary.steps} steps): nothing was left to train; its model "
                f"is written to {args.out}{' again' if args.resume.name == args.out.name + '.ckpt' else ''} (to "
                f"train further, start a new run from it: --init {args.out})"
            )
            return None
        if summary.steps:
            loss = f"mean loss of the last {min(summary.steps, SUMMARY_LOSS_STEPS)} steps {summary.final_loss:.4f}"
        else:
            loss = (
                "stopped in the 2D warm start: the model holds its twin's weights so far; --resume does the warm "
                "start again from its beginning, so that the run continues exactly"
                if trainer.warm_start_stopped
                else ""
            )
        print(f"trained {summary.steps} steps in {summary.seconds:.0f} s{f' ({loss})' if loss else ''} -> {args.out}")
        validation = summary.validation
        if validation is not None and validation.step != summary.steps:
            best = f"AP@0.5 {validation.ap50:.3f}"
            print(f"the model holds the weights of step {validation.step}, whose validation scored best ({best})")
        print(_segmenting_line(trainer.model))
        if trainer.checkpoint_error:
            print(f"napari-unet: warning: no checkpoint for --resume: {trainer.checkpoint_error}", file=sys.stderr)
        else:
            print(f"checkpoint for --resume: {checkpoint}")
    return None if stopped_by is None else 128 + stopped_by


#: The suffixes of the files ``napari-unet export`` writes (and ".pth", torch's other one).
EXPORT_SUFFIXES = (*FORMATS.values(), ".pth")


#: Options that shape a new model's architecture (a model given with --init keeps its own),
#: and its voxel shape (--spacing was accepted with --init and silently ignored).
ARCHITECTURE_OPTIONS = ("in_channels", "base_channels", "depth", "batch_norm", "ndim", "spacing")


def initial_model(args: argparse.Namespace) -> UNet:
    """The --init model; an architecture option that contradicts it is refused."""
    model = load_model(args.init)
    for dest in ARCHITECTURE_OPTIONS:
        value, architecture = getattr(args, dest), getattr(model.config, dest)
        if dest == "spacing" and value is not None and architecture is not None:
            value, architecture = tuple(map(float, value)), tuple(map(float, architecture))
        if dest not in args.given or value == architecture:
            continue
        if dest == "batch_norm":
            option, has = ("--batch-norm" if value else "--no-batch-norm"), ("no " * (not architecture)) + "batch norm"
        else:
            shown = (
                "none"
                if architecture is None
                else " ".join(map("{:g}".format, architecture))
                if dest == "spacing"
                else architecture
            )
            option, has = f"--{dest.replace('_', '-')}", f"{dest.replace('_', ' ')} {shown}"
        raise ConfigError(
            f"{option} shapes a new model, but the --init model {args.init} has {has}, which fine-tuning keeps: "
            f"drop {option}, or leave out --init to train a new model"
        )
    return model


def new_model(args: argparse.Namespace, first_image) -> UNet:
    ndim = args.ndim
    in_channels = args.in_channels or default_model_config("cpu").in_channels
    # a clear error if the image does not fit, before anything is said about its voxels
    channels_before_spatial(first_image, in_channels, args.channel_axis, ndim)
    spacing = spacing_option(args, args.images[0], ndim)
    if spacing is not None:
        print(f"voxel spacing (z, y, x): {', '.join(f'{s:g}' for s in spacing)}")
    if ndim == 3 and args.spacing is None:  # the first volume's voxels make the model's: said where others differ
        for path in args.images[1:]:
            other = read_spacing(path)
            if voxel_shape_note(other, spacing, str(path)):
                print(
                    f"napari-unet: {path} records voxels of {other} (z, y, x), {args.images[0]} of {spacing}: a 3D "
                    f"model takes one voxel shape, here the first volume's, and sees the objects of {path} "
                    "stretched or squashed; resample it to that shape, or train on volumes of one shape",
                    file=sys.stderr,
                )
    defaults = default_model_config(args.device, ndim=ndim, spacing=spacing)
    chosen = {
        "in_channels": args.in_channels,
        "base_channels": args.base_channels,
        "depth": args.depth,
        "batch_norm": args.batch_norm,
    }
    config = ModelConfig(**{**vars(defaults), **{k: v for k, v in chosen.items() if v is not None}})
    planes = volume_planes(args.images[0], first_image, config.in_channels, args.channel_axis)
    if config.ndim == 2 and planes and "ndim" not in args.given:  # a 2D network asked for: nothing to suggest
        print(
            f"napari-unet: {args.images[0]} is a volume of {planes} planes, which a 2D network learns one plane at "
            "a time; add --ndim 3 for the 3D U-Net, which learns whole volumes (from a few annotated planes too)",
            file=sys.stderr,
        )
    torch.manual_seed(args.seed)  # the initial weights follow --seed
    return UNet.from_config(config)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
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
    add("--val-images", type=Path, nargs="*", default=[], help="validation images, scored during training")
    add("--val-labels", type=Path, nargs="*", default=[], help="their instance labels, one per validation image")
    add("--steps", type=int, default=defaults.steps, help="training steps (default: %(default)s)")
    add(
        "--minutes",
        type=float,
        default=None,
        help=f"stop after this many minutes (whichever comes first; default: none, {CPU_3D_MINUTES:g} for a new "
        "3D model on a CPU without --steps)",
    )
    add("--in-channels", type=int, default=None, help="channels of a new model (default 1)")
    add("--base-channels", type=int, default=None, help="new model width (default: 64 on GPU, 16 on CPU)")
    add("--depth", type=int, default=None, help="new model depth (default: 4 on GPU, 3 on CPU; 3D: 3 / 2)")
    add(
        "--batch-norm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="batch normalisation in a new model (default: on for CPU and 3D models, off for the paper's 2D network)",
    )
    add(
        "--ndim",
        type=int,
        choices=[2, 3],
        default=2,
        help="a new model for images (2, stacks plane by plane) or volumes (3: the 3D U-Net on (Z, Y, X))",
    )
    add_spacing_argument(parser, "with --ndim 3: the voxel size of the volumes")
    add(
        "--warm-start",
        type=int,
        default=None,
        metavar="STEPS",
        help="a new 3D model first trains its 2D twin STEPS steps on the annotated planes (in at most half of "
        f"--minutes) and starts from its weights (default: {WARM_START_STEPS} with --ndim 3; 0: off)",
    )
    add("--batch-size", type=int, default=defaults.batch_size, help="tiles per step (default: %(default)s)")
    add("--lr", type=float, default=None, help="peak learning rate (default: 3e-3 for adam, 1e-2 for sgd)")
    add(
        "--optimizer",
        choices=["adam", "sgd"],
        default=defaults.optimizer,
        help="adam with warm-up and cosine decay, or the paper's sgd with momentum 0.99 (default: %(default)s)",
    )
    add(
        "--w0",
        type=float,
        default=defaults.weights.w0,
        help="weight of the borders between cells (default: %(default)g)",
    )
    add("--sigma", type=float, default=defaults.weights.sigma, help="width of that weight in px (default: %(default)g)")
    add("--no-elastic", action="store_true", help="switch off elastic deformation")
    add(
        "--zoom",
        type=float,
        default=defaults.augment.zoom,
        help="random zoom of each sample by exp(U[-ZOOM, ZOOM]) (0.25: 0.78-1.28x; default 0: none)",
    )
    add(
        "--seed",
        type=int,
        default=defaults.seed,
        help="initial weights and samples (default: %(default)s); exact repeats also need the same --threads",
    )
    add(
        "--decay-by-time",
        action="store_true",
        help="end the learning-rate decay at --minutes when that comes before --steps (not exactly repeatable)",
    )
    add("--validate-every", type=int, default=None, help="steps between validations (default: 5 per run, <= 100)")
    add(
        "--checkpoint-every",
        type=int,
        default=defaults.checkpoint_every,
        help="steps between checkpoints (default: %(default)s)",
    )
    add(
        "--keep-sizes",
        action="store_true",
        help="keep the model's minimum object and split-piece sizes (default: set from the completely annotated "
        "objects: 40%% of the size 5%% of them fall below, at least 16 px, and 30%% of their median size)",
    )
    add("--checkpoint", type=Path, default=None, help="checkpoint file (default: OUT.ckpt)")
    add(
        "--nproc",
        type=positive_int,
        default=1,
        help="data-parallel processes on this machine (one per GPU; on a CPU they share the cores); "
        "--batch-size is the global batch",
    )
    add("--threads", type=positive_int, default=None, help="CPU threads (default: the cores other programs leave free)")
    add("--overwrite", action="store_true", help="replace an existing --out model and its checkpoint")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", type=Path, default=None, help="continue a checkpoint exactly")
    start.add_argument("--init", type=Path, default=None, help="fine-tune from a model file (its architecture stays)")
    add_prediction_arguments(parser)
