"""The Train widget's layers as a trainer's inputs.

:func:`training_inputs` reads and checks the chosen layers on the GUI thread (cheap:
no copies); :func:`trainer_factory` returns the function the worker thread calls to
build the trainer, which copies the annotations and prepares the weight maps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels

from ..core.label_checks import labels_warning
from ..core.model import UNet
from ..core.train import Trainer
from ..core.train_config import TrainConfig
from ._layers import LayerError, image_data, labels_data, placement_differences

#: Where the Train widget saves models unless told otherwise.
DEFAULT_FOLDER = Path.home() / "napari-unet"


def free_model_path(folder: Path | None = None, stem: str = "model") -> Path:
    """``folder/stem.safetensors`` (folder: :data:`DEFAULT_FOLDER`), or ``stem-2``,
    ``stem-3``, ...: the first name that neither a model nor its checkpoint uses yet,
    so no run overwrites another."""
    folder = DEFAULT_FOLDER if folder is None else folder
    number = 1
    while True:
        path = folder / (f"{stem}.safetensors" if number == 1 else f"{stem}-{number}.safetensors")
        if not path.exists() and not path.with_name(path.name + ".ckpt").exists():
            return path
        number += 1


@dataclass
class TrainingInputs:
    """Images (as :func:`~._layers.image_data` gives them), their annotations (views of
    the layers' data, copied only in the worker), names for messages, the images'
    channel axis, the annotations' warnings and the validation keywords of
    :class:`~napari_unet.core.train.Trainer` (none or both of ``val_images`` and
    ``val_labels``)."""

    images: list[np.ndarray]
    annotations: list[np.ndarray]
    names: list[str]
    channel_axis: int | None
    warnings: list[str]
    validation: dict = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        return 1 if self.channel_axis is None else self.images[0].shape[self.channel_axis]


def placement_warning(image: Image, labels: Labels) -> str | None:
    """A warning when an annotation lies elsewhere in the viewer than its image (another
    scale, translation or transform): training pairs their pixels by index, not what the
    user sees under each stroke. ``None`` when they lie on each other."""
    differs = list(placement_differences(labels, image))
    if not differs:
        return None
    return (
        f"annotation '{labels.name}' lies elsewhere in the viewer than image '{image.name}' (its "
        f"{' and '.join(differs)} differ): training pairs their pixels by index, not the cells you see under "
        "your strokes; give both layers the same scale and translation"
    )


def training_inputs(
    pairs: list[tuple[Image, Labels]], val_image: Image | None, val_labels: Labels | None
) -> TrainingInputs:
    """Read and check (image, annotation) layer ``pairs`` and the validation pair;
    raises :class:`~._layers.LayerError` with what to change."""
    images, annotations, names, channel_axes, warnings = [], [], [], set(), []
    for image_layer, labels_layer in pairs:
        data, channel_axis = image_data(image_layer)
        images.append(data)
        channel_axes.add(channel_axis)
        labels = labels_data(labels_layer, image_layer)
        annotations.append(labels)
        names.append(f"annotation '{labels_layer.name}'")
        warnings.append(labels_warning(labels, names[-1]))
        warnings.append(placement_warning(image_layer, labels_layer))
    if len(channel_axes) > 1:
        raise LayerError("the training images mix RGB and single-channel layers: train on one kind")
    if (val_image is None) != (val_labels is None):
        raise LayerError("validation needs an image and its labels: choose both, or neither")
    validation = {}
    if val_image is not None:
        validation = {"val_images": [image_data(val_image)[0]], "val_labels": [labels_data(val_labels, val_image)]}
    kept = [warning for warning in warnings if warning]
    return TrainingInputs(images, annotations, names, channel_axes.pop(), kept, validation)


def trainer_factory(
    inputs: TrainingInputs, make_model: Callable[[], UNet], config: TrainConfig, save: Path
) -> Callable[[threading.Event | None], Trainer]:
    """A function that builds the trainer for ``inputs`` (a model from ``make_model``,
    its checkpoint beside ``save``), which ends after the current step once the event
    it is given is set. It copies the annotations, prepares the training data (weight
    maps, normalisation) and may build a model, which take seconds on large images:
    call it in a worker thread."""

    def make_trainer(stop: threading.Event | None = None) -> Trainer:
        # a snapshot first (in the worker: copying a large annotation takes a while), so
        # that strokes painted while the data are prepared change nothing
        snapshot = [np.array(labels) for labels in inputs.annotations]
        return Trainer(
            make_model(),
            inputs.images,
            snapshot,
            config,
            checkpoint_path=save.with_name(save.name + ".ckpt"),
            overwrite=True,  # the save dialog asks before a model is replaced; its checkpoint goes with it
            channel_axis=inputs.channel_axis,
            names=inputs.names,
            stop=stop,
            **inputs.validation,
        )

    return make_trainer
