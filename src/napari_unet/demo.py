"""The demo job: train on synthetic nuclei, segment held-out images, report metrics.

Everything it writes lands in one folder: sample images and their true labels, the
model, predicted labels, a metrics table and an overlay PNG to look at.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from skimage.segmentation import find_boundaries

from .core.config import ModelConfig, NormalizationConfig, default_model_config
from .core.errors import ConfigError
from .core.evaluation import Row, evaluate_pairs
from .core.io import write_image
from .core.model import UNet
from .core.normalize import normalize
from .core.predict import segment
from .core.synthetic import synthetic_dataset, synthetic_nuclei
from .core.train import Trainer
from .core.train_config import TrainConfig

TRAIN_IMAGES = 6
TRAIN_SHAPE = (256, 256)
TEST_SHAPE = (512, 512)
TEST_IMAGES = 2
_DISPLAY = NormalizationConfig(low=0.5, high=99.5)


@dataclass(frozen=True)
class DemoData:
    train: list[tuple[np.ndarray, np.ndarray]]
    validation: tuple[np.ndarray, np.ndarray]
    test: list[tuple[np.ndarray, np.ndarray]]


def demo_data(seed: int = 0) -> DemoData:
    """Training, validation and held-out test images with exact labels, all distinct seeds."""
    train = synthetic_dataset(TRAIN_IMAGES, TRAIN_SHAPE, seed=seed)
    validation = synthetic_nuclei(TRAIN_SHAPE, seed=seed + 10_000)
    test = [synthetic_nuclei(TEST_SHAPE, seed=seed + 20_000 + i) for i in range(TEST_IMAGES)]
    return DemoData(train, validation, test)


def demo_trainer(
    data: DemoData,
    *,
    minutes: float | None,
    seed: int,
    device: str,
    w0: float | None = None,
    steps: int = 100_000,
    model_config: ModelConfig | None = None,
    **options,
) -> Trainer:
    """A trainer for ``model_config`` (default: the CPU-sized or, on a GPU, paper-sized
    model) on ``data``, stopping after ``minutes`` or ``steps``, whichever comes first;
    ``w0`` replaces the training default of the separation weight, and ``options``
    (``lr``, ``tile``, ``batch_size``, ...) the :class:`TrainConfig` defaults."""
    model = UNet.from_config(model_config or default_model_config(device))
    config = TrainConfig(steps=steps, minutes=minutes, seed=seed, device=device, validate_every=100, **options)
    if w0 is not None:
        config = replace(config, weights=replace(config.weights, w0=w0))
    images, labels = zip(*data.train)
    return Trainer(
        model,
        list(images),
        list(labels),
        config,
        val_images=[data.validation[0]],
        val_labels=[data.validation[1]],
    )


def evaluate_on_test(trainer: Trainer, data: DemoData) -> tuple[list[np.ndarray], list[Row]]:
    """Predicted labels for the held-out images and their metrics rows."""
    predicted = [segment(trainer.model, image, device=trainer.device) for image, _ in data.test]
    rows = evaluate_pairs((f"test_{i}", p, t) for i, (p, (_, t)) in enumerate(zip(predicted, data.test)))
    return predicted, rows


def overlay(image: np.ndarray, predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """RGB uint8: the image in gray, true outlines in magenta, predicted outlines in green."""
    gray = np.clip(normalize(image[None], _DISPLAY)[0], 0, 1)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    rgb[find_boundaries(truth, mode="inner")] = (1.0, 0.0, 1.0)
    rgb[find_boundaries(predicted, mode="inner")] = (0.0, 1.0, 0.0)
    return (rgb * 255).astype(np.uint8)


def output_names() -> list[str]:
    """The names of the files the demo writes into its folder."""
    tests = [f"test_{i}{part}.tif" for i in range(TEST_IMAGES) for part in ("", "_truth", "_labels")]
    return ["model.safetensors", *tests, "overlay.png", "metrics.txt"]


def check_out_dir(out_dir: Path) -> None:
    """Refuse a folder the demo would write into that holds anything but an earlier
    demo's output (its metrics.txt among its files): a user's own model.safetensors
    there was replaced without a word."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ConfigError(f"{out_dir} is a file: choose a folder for the demo's output with --out-dir")
    present = {path.name for path in out_dir.iterdir()}
    if present and not (present <= set(output_names()) and "metrics.txt" in present):
        raise ConfigError(
            f"{out_dir} holds files that are not an earlier demo's output, and the demo writes "
            f"model.safetensors, test images, overlay.png and metrics.txt there: choose another --out-dir"
        )


def write_outputs(out_dir: Path, trainer: Trainer, data: DemoData, predicted: list[np.ndarray], table: str) -> None:
    """Write the demo's model, test images and labels, overlay and metrics into ``out_dir``
    (:func:`output_names`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer.save_model(out_dir / "model.safetensors")
    for i, ((image, truth), labels) in enumerate(zip(data.test, predicted)):
        write_image(out_dir / f"test_{i}.tif", image)
        write_image(out_dir / f"test_{i}_truth.tif", truth)
        write_image(out_dir / f"test_{i}_labels.tif", labels)
    image, truth = data.test[0]
    write_image(out_dir / "overlay.png", overlay(image, predicted[0], truth))
    (out_dir / "metrics.txt").write_text(table + "\n")
