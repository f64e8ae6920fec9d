"""The best validated weights of a training run: kept while it runs, and written into
its checkpoint with the last validation, so that a resumed run ends with the model the
uninterrupted run would have ended with."""

from __future__ import annotations

import os
from typing import Any

import torch

from .model import UNet, weights_lock
from .modelfile import ModelFileError
from .train_events import ValidationResult


def _result_state(result: ValidationResult | None) -> dict[str, Any] | None:
    return None if result is None else {"step": result.step, "ap50": result.ap50, "pixel_iou": result.pixel_iou}


def _result(state: Any, path: str | os.PathLike) -> ValidationResult | None:
    if state is None:
        return None
    try:
        step, ap50, pixel_iou = state["step"], float(state["ap50"]), float(state["pixel_iou"])
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFileError(f"{path} is damaged: its validation record is unreadable ({error!r})") from error
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ModelFileError(f"{path} is damaged: its validation record has step {step!r}")
    return ValidationResult(step, ap50, pixel_iou)


class BestWeights:
    """The weights of the validation with the highest AP@0.5 so far (a tie keeps the
    earlier one), and the last validation, which they must beat to be restored."""

    def __init__(self) -> None:
        self.result: ValidationResult | None = None
        self.weights: dict[str, torch.Tensor] | None = None
        self.last: ValidationResult | None = None

    def offer(self, result: ValidationResult, model: UNet, keep: bool) -> None:
        """Record ``result`` as the last validation; with ``keep``, copy ``model``'s
        weights when it is the best so far."""
        self.last = result
        if not keep or (self.result is not None and result.ap50 <= self.result.ap50):
            return
        with weights_lock(model), torch.no_grad():
            self.weights = {name: value.detach().clone() for name, value in model.state_dict().items()}
        self.result = result

    def restore(self, model: UNet) -> ValidationResult | None:
        """Give ``model`` the best weights if they beat the last validation; returns the
        validation the model now stands for (``None`` when there was none)."""
        if self.weights is None or self.last is None or self.result.ap50 <= self.last.ap50:
            return self.last
        with weights_lock(model), torch.no_grad():
            model.load_state_dict(self.weights)
        return self.result

    def to_state(self) -> dict[str, Any]:
        """The nested state a checkpoint holds (see :func:`.checkpoint.save_state`)."""
        return {"best": _result_state(self.result), "weights": self.weights, "last": _result_state(self.last)}

    @classmethod
    def from_state(cls, state: Any, model: UNet, path: str | os.PathLike) -> BestWeights:
        """What :meth:`to_state` wrote, checked against ``model``'s weights (names and
        shapes); a checkpoint without it (an older one) has none."""
        kept = cls()
        if state is None:
            return kept
        if not isinstance(state, dict):
            raise ModelFileError(f"{path} is damaged: its best weights are not a mapping")
        kept.result, kept.last = _result(state.get("best"), path), _result(state.get("last"), path)
        weights = state.get("weights")
        if (weights is None) != (kept.result is None):
            raise ModelFileError(f"{path} is damaged: its best weights and their validation do not go together")
        if weights is not None:
            expected = {name: tuple(value.shape) for name, value in model.state_dict().items()}
            if (
                not isinstance(weights, dict)
                or {name: tuple(getattr(value, "shape", ())) for name, value in weights.items()} != expected
            ):
                raise ModelFileError(f"{path} is damaged: its best weights do not fit its model")
            kept.weights = weights
        return kept
