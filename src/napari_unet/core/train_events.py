"""What training reports: the events the training loop yields and its summary.

The CLI, the napari widgets, live training and the tests all read these records;
none of them needs the trainer itself to understand one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepProgress:
    """One optimiser step: loss, learning rate, timing (seconds since the start of
    training, resumed time included), throughput and the share of the step spent
    waiting for its samples (on a CPU drawing them; on a GPU waiting for the threads
    that draw them ahead)."""

    step: int
    total_steps: int
    loss: float
    lr: float
    seconds: float
    samples_per_second: float
    eta_seconds: float
    data_fraction: float


@dataclass(frozen=True)
class WarmStartProgress:
    """One optimiser step of a 3D network's warm start, its 2D twin training on the
    annotated planes (see :mod:`napari_unet.core.warm_start`): ``seconds`` since the
    warm start began."""

    step: int
    total_steps: int
    loss: float
    seconds: float


@dataclass(frozen=True)
class ValidationResult:
    """Instance AP at IoU 0.5 and foreground pixel IoU on the validation images."""

    step: int
    ap50: float
    pixel_iou: float


@dataclass(frozen=True)
class CheckpointSaved:
    step: int
    path: str


@dataclass(frozen=True)
class CheckpointFailed:
    """A periodic checkpoint could not be written (yielded once per run); training
    goes on, and the previous checkpoint file, if any, is unchanged."""

    step: int
    path: str
    message: str


@dataclass(frozen=True)
class TrainSummary:
    steps: int
    seconds: float
    final_loss: float
    validation: ValidationResult | None


TrainEvent = StepProgress | WarmStartProgress | ValidationResult | CheckpointSaved | CheckpointFailed
