"""What a model holds, in words: for ``napari-unet info`` and the README of a
bioimage.io package (:mod:`.package_readme`). Reads the model's spec and its file's
training record; writes nothing."""

from __future__ import annotations

from typing import Any

from .model import UNet
from .training_state import training_history


def _rounded(value: Any) -> Any:
    return f"{value:.4g}" if isinstance(value, float) else value


def describe_training(metadata: dict[str, Any]) -> list[str]:
    """Markdown list lines on how a model with this file ``metadata`` was trained (steps,
    time, tile, optimiser, augmentation, earlier runs, validation, loss), or one line
    saying that the file holds no training record."""
    training = metadata.get("training")
    if not training:
        return ["No training record: the model file did not come from napari-unet's trainer."]
    config = training.get("config") or {}
    lines = [
        f"- steps: {training.get('steps')} in {training.get('seconds')} s on {training.get('device')} "
        f"({training.get('precision')}), final loss {_rounded(training.get('final_loss'))}",
        f"- tile: {training.get('tile')} px, batch size {config.get('batch_size')}, optimizer "
        f"{config.get('optimizer')}, learning rate {config.get('lr') or 'default'}, schedule {config.get('schedule')}",
    ]
    augment = config.get("augment") or {}
    if augment:
        lines.append(
            "- augmentation: "
            + ", ".join(f"{key} {value}" for key, value in augment.items() if not isinstance(value, dict))
        )
    earlier = training_history(metadata, own=False)
    if earlier:
        steps = " + ".join(str(run.get("steps")) for run in earlier)
        lines.append(f"- fine-tuned from a model trained before, in {len(earlier)} run(s) of {steps} steps")
    validation = training.get("validation")
    if validation:
        lines.append(
            f"- validation at step {validation.get('step')}: AP@0.5 {_rounded(validation.get('ap50'))}, "
            f"pixel IoU {_rounded(validation.get('pixel_iou'))}"
        )
    weight_map = metadata.get("weight_map")
    if weight_map:
        lines.append(
            f"- loss: pixel-weighted cross-entropy with the paper's separation weight map, "
            f"w0 = {weight_map.get('w0')}, sigma = {weight_map.get('sigma')} px"
        )
    return lines


def describe_network(model: UNet) -> str:
    """The network of ``model`` in one line: channels, classes, width, depth, batch
    normalisation and parameter count."""
    config = model.config
    parameters = sum(p.numel() for p in model.parameters())
    return (
        f"{config.in_channels} input channel(s), {config.n_classes} classes ({', '.join(model.spec.classes)}), "
        f"{config.base_channels} base channels, depth {config.depth}"
        + (", batch normalisation" if config.batch_norm else "")
        + f", {parameters:,} parameters"
    )


def model_card(model: UNet, source: str) -> str:
    """A few lines on ``model`` (read from ``source``, a path): the network, how its
    input is normalised, how its output becomes objects, and how it was trained."""
    config, spec = model.config, model.spec
    inst, norm = spec.instances, spec.normalization
    unit = "voxels" if config.ndim == 3 else "px"
    network = describe_network(model)
    if config.ndim == 3 and config.spacing:
        network += f"; voxel size (z, y, x) {', '.join(f'{s:g}' for s in config.spacing)}"
    edge = f" ({inst.edge_size_factor:g}x that at the image's border)" if inst.edge_size_factor > 1 else ""
    splits = [f"at probability dips of {inst.split:g}"] if inst.split else []
    if inst.min_fill:
        splits.append(f"by shape below a fill of {inst.min_fill:g} (necks of {inst.neck:g} px)")
    pieces = f" into pieces of at least {inst.min_piece} {unit}" if splits and inst.min_piece else ""
    objects = [
        f"threshold {inst.threshold:g}",
        f"smallest object {inst.min_size} {unit}{edge}",
        f"touching objects split {', '.join(splits)}{pieces}" if splits else "touching objects not split",
    ]
    if inst.object_size:
        objects.append(f"cells of about {inst.object_size} {unit} learned")
    if inst.expand:
        objects.append(f"objects grown by {inst.expand} px")
    return "\n".join(
        [
            f"{source}: a {config.ndim}D U-Net",
            f"- network: {network}",
            f"- input: the {norm.low:g} and {norm.high:g} percentiles of each image and channel are mapped to 0 and 1",
            f"- objects: {'; '.join(objects)}",
            "Training",
            *describe_training(getattr(model, "metadata", {}) or {}),
        ]
    )


def _rounded(score) -> str:
    """A score as three decimals ("pixel IoU 0.94828666945257" was printed in full)."""
    return f"{score:.3f}" if isinstance(score, (int, float)) else str(score)
