"""``napari-unet train --resume``: which settings a resumed run keeps, and which
existing files a run may replace."""

from __future__ import annotations

import argparse
from operator import attrgetter
from pathlib import Path
from types import SimpleNamespace

from .core.checkpoint import ModelFileError, load_model, load_state
from .core.config import ModelSpec
from .core.errors import ConfigError, NapariUnetError, OutputFileError
from .core.train import Trainer, final_loss
from .core.train_config import TrainConfig
from .core.training_state import require_checkpoint

#: Training settings a resumed run keeps (so that it continues exactly), as the
#: command line names them, with where the checkpoint records each: in its training
#: settings (``train``) or its model's architecture (``model``).
RESUME_KEEPS = {
    **{dest: f"train.{dest}" for dest in ("steps", "minutes", "tile", "batch_size", "optimizer", "lr", "seed")},
    **{dest: f"train.{dest}" for dest in ("decay_by_time", "validate_every", "checkpoint_every")},
    "w0": "train.weights.w0",
    "sigma": "train.weights.sigma",
    "no_elastic": "train.augment.elastic",  # negated: NEGATED_OPTIONS
    "zoom": "train.augment.zoom",
    "warm_start": "train.warm_start_steps",
    **{dest: f"model.{dest}" for dest in ("in_channels", "base_channels", "depth")},
}
#: Options that turn off the setting they stand for.
NEGATED_OPTIONS = {"no_elastic"}


def resume_trainer(args: argparse.Namespace, images, labels, state: dict | None = None, **kwargs) -> Trainer:
    """A trainer continuing ``args.resume`` (``state``: its checkpoint when already
    read); options that would change the run are refused, --device and --precision
    are applied."""
    state = load_state(args.resume) if state is None else state
    given = args.given
    if isinstance(state, dict) and state.get("kind") == "checkpoint":
        try:
            recorded = SimpleNamespace(
                train=TrainConfig.from_dict(state["config"]), model=ModelSpec.from_dict(state["model"]["spec"]).model
            )
        except (KeyError, TypeError, NapariUnetError) as error:
            raise ModelFileError(f"{args.resume} records unusable training settings: {error}") from error
        for dest, where in RESUME_KEEPS.items():
            value = getattr(args, dest)
            if isinstance(value, list):  # options taking one value per axis (--tile)
                value = value[0] if len(value) == 1 else tuple(value)
            was = attrgetter(where)(recorded)
            was = not was if dest in NEGATED_OPTIONS else was
            if dest in given and value != was:
                option = "--" + dest.replace("_", "-")
                shown = "" if isinstance(value, bool) else f" {value}"
                if isinstance(was, bool) or was is None:
                    before = f"{'with' if was else 'without'} {option}"
                else:
                    before = f"{option} {was}"
                raise ConfigError(
                    f"{option}{shown} differs from the checkpoint's run ({before}): "
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


def refuse_to_replace(args: argparse.Namespace, checkpoint: Path) -> dict | None:
    """An existing model or checkpoint is replaced only with --overwrite, except by a
    resumed run writing its own checkpoint again and the model named after it (MODEL
    beside MODEL.ckpt): a run resumed with another --out had replaced whatever model
    and checkpoint were there. Returns the checkpoint of --resume, read to check it
    (for :func:`resume_trainer`, which then need not read it again)."""
    state = None
    if args.resume:  # what it is, before any advice about what the run would replace
        if not args.resume.is_file():
            raise ModelFileError(
                f"no checkpoint file at {args.resume}: give the MODEL.ckpt that a run wrote beside its model MODEL"
            )
        state = load_state(args.resume)
        require_checkpoint(state, args.resume)
    if args.overwrite:
        return state
    own = []
    if args.resume:
        own = [path for path in (checkpoint, args.out) if _same_file(_checkpoint_of(path, checkpoint), args.resume)]
        if args.out not in own and _written_by_run(args.out, state):  # a --checkpoint not named after the model
            own.append(args.out)
    existing = [path for path in (args.out, checkpoint) if path.exists() and path not in own]
    if existing and args.resume:
        model = _model_of(args.resume)
        hint = f", or give --out {model} to continue the run where it was writing" if model else ""
        raise OutputFileError(
            f"{existing[0]} exists and is not the run of {args.resume}: pass --overwrite to replace it{hint}"
        )
    if existing:
        resume = f", or continue its run with --resume {checkpoint}" if checkpoint.exists() else ""
        raise OutputFileError(f"{existing[0]} exists: pass --overwrite to replace it{resume}")
    return state


def _checkpoint_of(path: Path, checkpoint: Path) -> Path:
    """The checkpoint that goes with ``path``: itself when it is ``checkpoint``, else
    the one named after the model ``path`` (MODEL.ckpt)."""
    return path if path == checkpoint else path.with_name(path.name + ".ckpt")


def _same_file(a: Path, b: Path) -> bool:
    return a.absolute().resolve() == b.absolute().resolve()


def _written_by_run(model: Path, state: dict) -> bool:
    """Whether the model file ``model`` was written by the run of the checkpoint
    ``state``: the same settings (seed included) and, at a step the checkpoint
    passed, the same mean of the last losses, which no run on other data shares."""
    if not model.is_file():
        return False
    try:
        training = load_model(model).metadata.get("training") or {}
    except NapariUnetError:  # not a model file: not the run's
        return False
    steps, losses = training.get("steps"), state.get("losses") or []
    if training.get("config") != state["config"] or not isinstance(steps, int) or not 0 < steps <= len(losses):
        return False
    return training.get("final_loss") == final_loss(losses[:steps])


def _model_of(checkpoint: Path) -> Path | None:
    """The model a run writes beside ``checkpoint`` when the checkpoint is named after
    it (MODEL.safetensors.ckpt), else ``None``."""
    model = checkpoint.with_name(checkpoint.name.removesuffix(".ckpt"))
    return model if checkpoint.suffix == ".ckpt" and model.suffix == ".safetensors" else None
