"""Predicting while training: prediction works on a snapshot and never touches the trainer's module."""

import threading

import numpy as np
import torch

import napari_unet as nu
from napari_unet.core.progress import drive
from napari_unet.core.synthetic import synthetic_nuclei
from napari_unet.core.train import Trainer
from napari_unet.core.train_config import TrainConfig


def test_predicting_in_a_loop_while_training_never_switches_the_trainers_module_to_eval():
    image, labels = synthetic_nuclei((96, 96), seed=7)
    torch.manual_seed(0)
    model = nu.UNet(base_channels=4, depth=2)
    config = TrainConfig(steps=30, tile=60, batch_size=2, device="cpu", precision="fp32", warmup_steps=2, seed=1)
    trainer = Trainer(model, [image], [labels], config)
    trainer_thread = threading.current_thread()

    mode_calls = []  # (thread, mode) of every train()/eval() on the trainer's module
    forward_calls = []  # (thread, training) of every forward pass through it

    def recording_train(mode=True):
        mode_calls.append((threading.current_thread(), mode))
        return type(model).train(model, mode)

    model.train = recording_train
    model.register_forward_pre_hook(
        lambda module, args: forward_calls.append((threading.current_thread(), module.training))
    )

    done, errors, predictions = threading.Event(), [], []

    def predict_in_a_loop():
        precisions = ["bf16", "fp32"]
        while not done.is_set():
            try:
                precision = precisions[len(predictions) % 2]
                predictions.append(nu.predict(model, image, device="cpu", precision=precision, tile=76))
            except Exception as error:
                errors.append(error)
                return

    predictor = threading.Thread(target=predict_in_a_loop)
    predictor.start()
    try:
        summary = drive(trainer.run())
    finally:
        done.set()
        predictor.join(timeout=120)
    assert not errors, errors
    assert summary.steps == 30 and np.isfinite(summary.final_loss)
    assert len(predictions) >= 2
    assert all(p.shape == (2, 96, 96) and np.isfinite(p).all() for p in predictions)
    assert all(thread is trainer_thread for thread, _ in mode_calls), "prediction switched the trainer's module"
    assert [mode for _, mode in mode_calls[:-1]] == [True] * 30  # train() before every step; eval() at the end only
    assert mode_calls[-1][1] is False
    assert len(forward_calls) == 30 and all(t is trainer_thread and training for t, training in forward_calls)
    assert all(p.device.type == "cpu" for p in model.parameters())
