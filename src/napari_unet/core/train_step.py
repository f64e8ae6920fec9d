"""One optimisation step on one batch: the forward pass in the training precision and
memory layout, the paper's weighted loss over every process's samples, the backward
pass and the optimiser's update. The loop that draws the batches and takes the steps
is :class:`~napari_unet.core.train.Trainer`."""

from __future__ import annotations

import torch

from .devices import autocast
from .distributed import ProcessGroup, sum_gradients, sum_over_processes
from .errors import TrainingError
from .model import UNet, weights_lock
from .optimisation import weighted_cross_entropy
from .samples import Batch


class BatchStep:
    """Takes optimisation steps of ``model`` with ``optimizer`` on ``device``: inputs
    in ``layout`` (a torch memory format), the forward pass under autocast to ``dtype``
    (fp16 with a gradient scaler), gradients summed over the processes of ``group``.
    The optimiser's update holds the model's weights lock, so a snapshot taken from
    another thread (live previews) never sees half-updated weights."""

    def __init__(
        self,
        model: UNet,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        dtype: torch.dtype,
        layout: torch.memory_format,
        group: ProcessGroup,
    ) -> None:
        self.model, self.optimizer, self.group = model, optimizer, group
        self.device, self.dtype, self.layout = device, dtype, layout
        self.scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    def __call__(self, batch: Batch, lr: float, step: int) -> float:
        """Step ``step`` (1-based, for messages) on ``batch`` at learning rate ``lr``;
        returns the batch's loss (the weighted mean over all processes' samples).
        Raises :class:`TrainingError` when the loss is not finite, before any weight
        changes."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        image = torch.from_numpy(batch.image).to(self.device, non_blocking=True).contiguous(memory_format=self.layout)
        target = torch.from_numpy(batch.target).to(self.device, non_blocking=True)
        weights = torch.from_numpy(batch.weights).to(self.device, non_blocking=True)
        with autocast(self.device, self.dtype):
            logits = self.model(image, dropout_seeds=batch.dropout_seeds)
        # the weighted mean over the whole batch, whichever process holds which samples
        loss = weighted_cross_entropy(logits, target, weights, sum_over_processes(weights.sum(), self.group))
        reported = sum_over_processes(loss.detach(), self.group)
        if not torch.isfinite(reported):
            wider = {torch.float16: "bf16 or fp32 (fp16 ends at 65504)", torch.bfloat16: "fp32"}.get(self.dtype)
            raise TrainingError(
                f"the loss became {reported.item()} at step {step}: lower the learning rate (this step's, "
                f"after warm-up and schedule: {lr:g})" + (f" or use precision {wider}" if wider else "")
            )
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            sum_gradients(list(self.model.parameters()), self.group)
            with weights_lock(self.model):
                self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            sum_gradients(list(self.model.parameters()), self.group)
            with weights_lock(self.model):
                self.optimizer.step()
        return float(reported)
