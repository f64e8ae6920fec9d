"""The ``napari-unet`` command line: the core's jobs without napari."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from .core.checkpoint import describe, load_model
from .core.config import AugmentConfig, ModelConfig, TrainConfig, WeightMapConfig, default_model_config
from .core.errors import ConfigError, NapariUnetError
from .core.evaluation import evaluate_pairs
from .core.io import read_image, write_image
from .core.layout import ImageShapeError, channels_at_minus3
from .core.metrics import MatchStats
from .core.model import UNet
from .core.predict import TileProgress, iter_segment
from .core.progress import drive
from .core.threads import use_threads
from .core.train import StepProgress, Trainer, ValidationResult
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


def _prediction_options(args: argparse.Namespace) -> dict:
    return {"tile": args.tile, "device": args.device, "precision": args.precision, "channel_axis": args.channel_axis}


def _check_pairs(images: list[Path], labels: list[Path], what: str) -> None:
    if len(images) != len(labels):
        raise ConfigError(f"{len(images)} {what} image(s) but {len(labels)} label file(s): give one per image")


def cmd_segment(args: argparse.Namespace) -> None:
    model = load_model(args.model)
    for path in args.images:
        image = read_image(path)
        segmentation = iter_segment(model, image, return_probabilities=args.probabilities, **_prediction_options(args))
        result = drive_tiles(segmentation, path.name)
        labels, probabilities = result if args.probabilities else (result, None)
        write_image(args.out_dir / f"{path.stem}_labels.tif", labels)
        if probabilities is not None:
            write_image(args.out_dir / f"{path.stem}_probabilities.tif", probabilities)
        print(f"{path}: {int(labels.max())} objects -> {args.out_dir / (path.stem + '_labels.tif')}")


def cmd_info(args: argparse.Namespace) -> None:
    print(json.dumps(describe(args.model), indent=2))


def cmd_weights(args: argparse.Namespace) -> None:
    for path in args.labels:
        labels = read_image(path)
        if labels.ndim != 2:
            raise ImageShapeError(f"{path}: weight maps need 2D label images, got shape {labels.shape}")
        weights = weight_map(labels, args.w0, args.sigma)
        write_image(args.out_dir / f"{path.stem}_weights.tif", weights)
        write_image(args.out_dir / f"{path.stem}_target.tif", separation_target(labels))
        print(f"{path}: weights in [{weights.min():.2f}, {weights.max():.2f}] -> {args.out_dir}")


def train_config_from(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        steps=args.steps,
        minutes=args.minutes,
        tile=args.tile,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        weights=WeightMapConfig(w0=args.w0, sigma=args.sigma),
        augment=AugmentConfig(elastic=not args.no_elastic),
        device=args.device,
        precision=args.precision,
        seed=args.seed,
        validate_every=args.validate_every,
        checkpoint_every=args.checkpoint_every,
    )


def run_training(trainer: Trainer) -> None:
    """Drive a trainer with a progress bar; Ctrl-C stops it and keeps its checkpoint."""
    with progress_bar(total=trainer.config.steps, initial=trainer.step, desc="training", unit="step") as bar:

        def show(event) -> None:
            if isinstance(event, StepProgress):
                bar.total = event.total_steps
                bar.update(event.step - bar.n)
                bar.set_postfix(loss=f"{event.loss:.4f}", eta=f"{event.eta_seconds:.0f}s")
            elif isinstance(event, ValidationResult):
                bar.write(f"step {event.step}: validation AP@0.5 {event.ap50:.3f}, pixel IoU {event.pixel_iou:.3f}")

        try:
            drive(trainer.run(), show)
        except KeyboardInterrupt:  # drive closed the run, which wrote its checkpoint
            bar.write(f"stopped at step {trainer.step}")


def cmd_train(args: argparse.Namespace) -> None:
    use_threads(args.threads)
    _check_pairs(args.images, args.labels, "training")
    _check_pairs(args.val_images, args.val_labels, "validation")
    images = [read_image(p) for p in args.images]
    labels = [read_image(p) for p in args.labels]
    val = {
        "val_images": [read_image(p) for p in args.val_images],
        "val_labels": [read_image(p) for p in args.val_labels],
    }
    checkpoint = args.checkpoint or args.out.with_name(args.out.name + ".ckpt")
    if args.resume:
        trainer = Trainer.resume(
            args.resume, images, labels, checkpoint_path=checkpoint, channel_axis=args.channel_axis, **val
        )
    else:
        config = train_config_from(args)
        model = load_model(args.init) if args.init else _new_model(args, images[0])
        trainer = Trainer(
            model, images, labels, config, checkpoint_path=checkpoint, channel_axis=args.channel_axis, **val
        )
    run_training(trainer)
    trainer.save_model(args.out)
    summary = trainer.summary()
    print(f"trained {summary.steps} steps in {summary.seconds:.0f} s (loss {summary.final_loss:.4f}) -> {args.out}")
    print(f"checkpoint for --resume: {checkpoint}")


def _new_model(args: argparse.Namespace, first_image) -> UNet:
    defaults = default_model_config(args.device)
    chosen = {"in_channels": args.in_channels, "base_channels": args.base_channels, "depth": args.depth}
    config = ModelConfig(**{**vars(defaults), **{k: v for k, v in chosen.items() if v is not None}})
    channels_at_minus3(first_image, config.in_channels, args.channel_axis)  # a clear error if the image does not fit
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


def _add_prediction_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tile", type=int, default=None, help="input tile size (valid sizes only; default: best)")
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
    add("--depth", type=int, default=None, help="new model depth (default: 4 on GPU, 3 on CPU)")
    add("--batch-size", type=int, default=defaults.batch_size)
    add("--lr", type=float, default=None)
    add("--optimizer", choices=["adam", "sgd"], default=defaults.optimizer)
    add("--w0", type=float, default=defaults.weights.w0)
    add("--sigma", type=float, default=defaults.weights.sigma)
    add("--no-elastic", action="store_true", help="switch off elastic deformation")
    add("--seed", type=int, default=defaults.seed)
    add("--validate-every", type=int, default=None, help="steps between validations (default: 5 per run, <= 100)")
    add("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    add("--checkpoint", type=Path, default=None, help="checkpoint file (default: OUT.ckpt)")
    add("--threads", type=int, default=None, help="CPU threads (default: the cores other programs leave free)")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", type=Path, default=None, help="continue a checkpoint exactly")
    start.add_argument("--init", type=Path, default=None, help="fine-tune from a model file")
    _add_prediction_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-unet", description="U-Net segmentation (Ronneberger et al. 2015)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="segment images with a model file")
    segment.add_argument("model", type=Path)
    segment.add_argument("images", type=Path, nargs="+")
    segment.add_argument("--out-dir", type=Path, required=True)
    segment.add_argument("--probabilities", action="store_true", help="also write class probabilities")
    _add_prediction_arguments(segment)
    segment.set_defaults(run=cmd_segment)

    train = commands.add_parser("train", help="train a model on annotated images")
    _add_train_arguments(train)
    train.set_defaults(run=cmd_train)

    weights = commands.add_parser("weights", help="write separation weight maps and training targets")
    weights.add_argument("labels", type=Path, nargs="+")
    weights.add_argument("--out-dir", type=Path, required=True)
    weights.add_argument("--w0", type=float, default=WeightMapConfig().w0)
    weights.add_argument("--sigma", type=float, default=WeightMapConfig().sigma)
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
    except NapariUnetError as error:
        print(f"napari-unet: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("napari-unet: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
