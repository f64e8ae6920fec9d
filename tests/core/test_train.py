import copy
import dataclasses

import numpy as np
import pytest
import torch

import napari_unet as nu
from napari_unet import UNet, load_model
from napari_unet.core.checkpoint import load_state
from napari_unet.core.optimisation import lay_out_like_weights, make_optimizer, weighted_cross_entropy
from napari_unet.core.progress import drive
from napari_unet.core.train import Trainer, iter_train
from napari_unet.core.train_config import AugmentConfig, TrainConfig
from napari_unet.core.train_events import CheckpointSaved, StepProgress, TrainSummary, ValidationResult

from .test_data import discs

FAST = TrainConfig(steps=8, tile=60, batch_size=2, device="cpu", precision="fp32", warmup_steps=2, seed=3)


def tiny_model():
    torch.manual_seed(0)
    return UNet(base_channels=4, depth=2)


def data():
    image, labels = discs((80, 80), centres=((25, 25), (45, 52), (60, 20)))
    return [image], [labels]


def test_weighted_loss_is_the_weighted_mean_and_ignores_zero_weight():
    logits = torch.randn(2, 2, 5, 5)
    target = torch.randint(0, 2, (2, 5, 5))
    weights = torch.rand(2, 5, 5)
    weights[0, :2] = 0
    manual = -(torch.log_softmax(logits, 1).gather(1, target[:, None])[:, 0] * weights).sum() / weights.sum()
    assert torch.allclose(weighted_cross_entropy(logits, target, weights), manual)
    changed = logits.clone()
    changed[0, :, :2] = 100 * torch.randn(2, 2, 5)
    assert torch.allclose(weighted_cross_entropy(changed, target, weights), manual)


def test_progress_events_validation_and_checkpoints(tmp_path):
    images, labels = data()
    config = dataclasses.replace(FAST, validate_every=4, checkpoint_every=4)
    events = list(
        iter_train(
            tiny_model(),
            images,
            labels,
            config,
            val_images=images,
            val_labels=labels,
            checkpoint_path=tmp_path / "c",
        )
    )
    steps = [e for e in events if isinstance(e, StepProgress)]
    assert [e.step for e in steps] == list(range(1, 9))
    assert all(e.total_steps == 8 and np.isfinite(e.loss) and 0 <= e.data_fraction <= 1 for e in steps)
    assert steps[-1].eta_seconds == 0
    assert [e.step for e in events if isinstance(e, ValidationResult)] == [4, 8]
    assert [e.step for e in events if isinstance(e, CheckpointSaved)] == [4, 8]
    assert steps[1].lr > steps[0].lr  # warm-up
    assert steps[-1].lr < steps[2].lr  # cosine decay


@pytest.mark.parametrize(
    ("val_labels", "message"),
    [
        (lambda labels: labels[:, :40], r"labels of shape \(80, 40\) do not match the image"),
        (lambda labels: labels + 0.5, "look"),  # fractional: an image given as labels
        (lambda labels: labels - 5, "the value -5 is not a label"),
        (lambda labels: np.full_like(labels, -1), "unannotated \\(-1\\) everywhere"),
        (np.zeros_like, "hold no cell, so an untrained network"),  # it scored AP 1 at step 1, and was kept
    ],
)
def test_validation_pairs_are_checked_before_the_first_step(val_labels, message):
    """A bad validation pair was found at the first validation (step 100 of a default
    run): the run ended there with a traceback from the metrics and no model
    written, and resuming met it again. Labels with nothing annotated scored AP 1."""
    images, labels = data()
    bad = val_labels(labels[0])
    with pytest.raises(nu.NapariUnetError, match=message) as raised:
        Trainer(tiny_model(), images, labels, FAST, val_images=[images[0]], val_labels=[bad], val_names=["val.tif"])
    assert str(raised.value).startswith("val.tif: ")


@pytest.mark.parametrize(("fault", "message"), [(np.nan, "NaN or infinite"), (0.0, "constant")])
def test_a_validation_image_that_training_would_refuse_is_refused(fault, message):
    images, labels = data()
    bad = np.full_like(images[0], 5.0) if fault == 0.0 else np.where(labels[0] > 0, fault, images[0])
    with pytest.raises(nu.NapariUnetError, match=message):
        Trainer(tiny_model(), images, labels, FAST, val_images=[bad], val_labels=[labels[0]])


def test_a_run_that_ends_by_time_is_validated_at_its_last_step():
    """With --minutes the step count is rarely reached: validation then ran only
    every `validate_every` steps, often never, and the model recorded none."""
    images, labels = data()
    config = dataclasses.replace(FAST, steps=100_000, minutes=0.005, validate_every=100_000)
    events = list(iter_train(tiny_model(), images, labels, config, val_images=images, val_labels=labels))
    last = [e for e in events if isinstance(e, StepProgress)][-1]
    assert [e.step for e in events if isinstance(e, ValidationResult)] == [last.step]


def test_loss_goes_down():
    images, labels = data()
    config = dataclasses.replace(FAST, steps=60, augment=AugmentConfig(elastic=False), lr=3e-3)
    losses = [e.loss for e in iter_train(tiny_model(), images, labels, config) if isinstance(e, StepProgress)]
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])


def test_stopping_keeps_a_checkpoint_at_the_last_step(tmp_path):
    images, labels = data()
    trainer = Trainer(
        tiny_model(),
        images,
        labels,
        dataclasses.replace(FAST, checkpoint_every=100),
        checkpoint_path=tmp_path / "c",
    )
    events = trainer.run()
    for event in events:
        if isinstance(event, StepProgress) and event.step == 3:
            break
    events.close()
    assert load_state(tmp_path / "c")["step"] == 3
    assert load_model(tmp_path / "c").config == trainer.model.config


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_resume_continues_exactly(tmp_path, optimizer):
    images, labels = data()
    config = dataclasses.replace(FAST, optimizer=optimizer, lr=1e-3, checkpoint_every=100)
    straight = Trainer(tiny_model(), images, labels, config)
    list(straight.run())

    first = Trainer(tiny_model(), images, labels, config, checkpoint_path=tmp_path / "c")
    events = first.run()
    for event in events:
        if event.step == 5:
            break
    events.close()
    resumed = Trainer.resume(tmp_path / "c", images, labels)
    assert resumed.step == 5
    list(resumed.run())
    assert resumed.step == 8
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.losses == straight.losses


def test_model_file_records_training_and_fine_tunes(tmp_path):
    images, labels = data()
    trainer = Trainer(tiny_model(), images, labels, FAST)
    list(trainer.run())
    trainer.save_model(tmp_path / "m")
    model = load_model(tmp_path / "m")
    record = model.metadata["training"]
    assert record["steps"] == 8 and record["config"]["batch_size"] == 2 and record["tile"] == 60
    assert model.metadata["weight_map"] == {"w0": 10.0, "sigma": 5.0}
    tuned = Trainer(model, images, labels, dataclasses.replace(FAST, steps=2))
    list(tuned.run())
    assert not torch.equal(tuned.model.head.weight, trainer.model.head.weight)


def test_resuming_a_model_file_is_refused_with_a_hint(tmp_path):
    images, labels = data()
    from napari_unet import save_model

    save_model(tiny_model(), tmp_path / "m")
    with pytest.raises(ValueError, match="fine-tune"):
        Trainer.resume(tmp_path / "m", images, labels)


def test_minutes_budget_stops_training():
    images, labels = data()
    config = dataclasses.replace(FAST, steps=10_000, minutes=0.02)
    events = [e for e in iter_train(tiny_model(), images, labels, config) if isinstance(e, StepProgress)]
    assert 1 <= len(events) < 10_000
    assert events[-1].seconds < 0.02 * 60 + 2


def test_train_runs_to_the_end_and_takes_config_fields_as_keywords():
    images, labels = data()
    model = tiny_model()
    before = model.head.weight.detach().clone()
    summary = nu.train(model, images, labels, FAST, steps=5, seed=1)
    assert isinstance(summary, TrainSummary) and summary.steps == 5 and np.isfinite(summary.final_loss)
    assert not torch.equal(model.head.weight, before)
    with pytest.raises(nu.ConfigError, match="unknown TrainConfig setting.*stepz"):
        nu.train(tiny_model(), images, labels, stepz=5)


def test_iter_train_returns_the_summary():
    images, labels = data()
    events = iter_train(tiny_model(), images, labels, FAST, steps=3)
    with pytest.raises(StopIteration) as finished:
        while True:
            next(events)
    assert isinstance(finished.value.value, TrainSummary) and finished.value.value.steps == 3


def test_channel_axis_says_where_the_channels_are():
    """A (C, H, W) image whose C == H would be ambiguous without channel_axis."""
    image, labels = discs((80, 80), centres=((25, 25), (45, 52)))
    rgb_last = np.repeat(image[..., None], 3, axis=-1)
    model = UNet(in_channels=3, base_channels=4, depth=2)
    summary = nu.train(model, [rgb_last], [labels], FAST, steps=2, channel_axis=-1)
    assert summary.steps == 2


@pytest.mark.slow
def test_training_while_another_thread_predicts_gives_the_same_weights():
    """Prediction works on a snapshot: the trained weights do not depend on it."""
    import threading

    images, labels = data()
    config = dataclasses.replace(FAST, steps=25)
    alone = tiny_model()
    nu.train(alone, images, labels, config)

    busy = tiny_model()
    done = threading.Event()
    predictions = []

    def predict_in_a_loop():
        while not done.is_set():
            predictions.append(nu.predict(busy, images[0], device="cpu", precision="fp32"))

    predictor = threading.Thread(target=predict_in_a_loop)
    predictor.start()
    try:
        nu.train(busy, images, labels, config)
    finally:
        done.set()
        predictor.join()
    assert len(predictions) >= 2
    for (name, a), b in zip(alone.state_dict().items(), busy.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_a_time_budget_decays_the_learning_rate_by_the_clock():
    images, labels = data()
    config = dataclasses.replace(FAST, steps=100_000, minutes=2.0, warmup_steps=2, decay_by_time=True)
    trainer = Trainer(tiny_model(), images, labels, config)
    peak = config.learning_rate
    assert trainer.learning_rate(10, seconds=0.0) == pytest.approx(peak, rel=1e-6)
    assert trainer.learning_rate(10, seconds=60.0) == pytest.approx(peak / 2)  # half the budget: cos(pi/2)
    assert trainer.learning_rate(10, seconds=130.0) == pytest.approx(0.0, abs=1e-12)
    by_steps = Trainer(tiny_model(), images, labels, dataclasses.replace(config, steps=22, decay_by_time=False))
    assert by_steps.learning_rate(12, seconds=1e9) == pytest.approx(peak / 2)  # by steps: the clock is ignored


def test_the_best_validated_weights_are_kept(monkeypatch):
    images, labels = data()
    config = dataclasses.replace(FAST, steps=6, validate_every=2)
    trainer = Trainer(tiny_model(), images, labels, config, val_images=images, val_labels=labels)
    scores = iter([0.4, 0.9, 0.3])
    snapshots = {}

    def fake_validate():
        snapshots[trainer.step] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        return ValidationResult(trainer.step, next(scores), 0.5)

    monkeypatch.setattr(trainer, "validate", fake_validate)
    summary = drive(trainer.run())
    assert summary.steps == 6 and summary.validation.step == 4 and summary.validation.ap50 == 0.9
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, snapshots[4][name]), name
    assert not torch.equal(trainer.model.head.weight, snapshots[6]["head.weight"])


def test_on_a_cpu_training_keeps_the_weights_channels_last_and_hands_them_back_channels_first():
    images, labels = data()
    model = tiny_model()
    kernel = next(p for p in model.parameters() if p.ndim == 4 and p.shape[1] > 1)
    events = Trainer(model, images, labels, FAST).run()
    next(events)
    assert kernel.is_contiguous(memory_format=torch.channels_last) and not kernel.is_contiguous()
    list(events)
    assert all(p.is_contiguous() for p in model.parameters())


def test_the_memory_layout_changes_results_by_rounding_only():
    images, labels = data()
    trained = {}
    for layout in (torch.channels_last, torch.contiguous_format):
        trainer = Trainer(tiny_model(), images, labels, FAST)
        trainer.layout = layout
        list(trainer.run())
        trained[layout] = trainer
    last, first = trained.values()
    np.testing.assert_allclose(last.losses, first.losses, rtol=1e-5)
    for (name, a), b in zip(last.model.state_dict().items(), first.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_adam_is_fused_and_its_state_is_laid_out_as_the_weights_it_updates():
    """torch's fused Adam reads a weight and its moments as flat memory: moments read
    back channels-first for channels-last weights updated the wrong elements."""
    model = tiny_model()
    optimizer = make_optimizer(model, FAST)
    assert optimizer.param_groups[0]["fused"]
    model.to(memory_format=torch.channels_last)
    twin = copy.deepcopy(model)
    twin_optimizer = make_optimizer(twin, FAST)
    for weights, opt in ((model, optimizer), (twin, twin_optimizer)):
        for p in weights.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
    state = twin_optimizer.state_dict()
    for moments in state["state"].values():
        moments["exp_avg"], moments["exp_avg_sq"] = moments["exp_avg"].contiguous(), moments["exp_avg_sq"].contiguous()
    twin_optimizer.load_state_dict(state)  # as a resumed run reads it
    lay_out_like_weights(twin_optimizer)
    for weights, opt in ((model, optimizer), (twin, twin_optimizer)):
        for p in weights.parameters():
            p.grad = torch.linspace(-1, 1, p.numel()).view(p.shape)
        opt.step()
    kernel = next(p for p in twin.parameters() if p.ndim == 4 and p.shape[1] > 1)
    assert twin_optimizer.state[kernel]["exp_avg"].stride() == kernel.stride() != kernel.contiguous().stride()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_a_cpu_draws_its_samples_in_the_step(monkeypatch):
    """A sampling thread would take cores from torch's threads (and from the viewer)."""
    import napari_unet.core.train as train_module

    from .test_prefetch import sample_threads

    images, labels = data()
    for cores in (torch.get_num_threads(), torch.get_num_threads() + 1):
        monkeypatch.setattr(train_module, "available_cores", lambda cores=cores: cores)
        events = Trainer(tiny_model(), images, labels, FAST).run()
        next(events)
        assert not sample_threads()
        events.close()


def test_on_a_gpu_half_the_cores_draw_batches_ahead(monkeypatch):
    import napari_unet.core.train as train_module

    images, labels = data()
    trainer = Trainer(tiny_model(), images, labels, FAST)
    trainer.device = torch.device("cuda")  # only what the property reads: nothing runs there
    for cores, workers in ((1, 1), (2, 1), (6, 3), (16, train_module.MAX_SAMPLING_WORKERS)):
        monkeypatch.setattr(train_module, "available_cores", lambda cores=cores: cores)
        assert trainer.sampling_workers == workers
    trainer.sampling_workers = 2
    assert trainer.sampling_workers == 2


def test_a_loss_that_overflows_fp16_says_to_use_bf16_or_fp32():
    image, labels = nu.synthetic_nuclei((96, 96), seed=0)
    torch.manual_seed(0)
    model = nu.UNet(base_channels=4, depth=2)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(30)  # activations near 1e20, past fp16's 65504
    trainer = nu.Trainer(model, [image], [labels], nu.TrainConfig(steps=2, tile=92, device="cpu", precision="fp32"))
    trainer.batch_step.dtype = torch.float16  # what precision="fp16" resolves to on a CUDA GPU
    with pytest.raises(nu.TrainingError, match=r"use precision bf16 or fp32 \(fp16 ends at 65504\)"):
        nu.core.progress.drive(trainer.run())


def test_a_loss_that_is_not_finite_in_fp32_asks_for_a_lower_rate_only(monkeypatch):
    """fp32 runs were told to "use precision fp32", and the rate quoted, the step's in
    warm-up, was not the one the user set without saying so."""
    image, labels = nu.synthetic_nuclei((96, 96), seed=0)
    trainer = nu.Trainer(nu.UNet(base_channels=4, depth=2), [image], [labels], FAST)
    nan_loss = lambda logits, *args: logits.sum() * float("nan")  # noqa: E731
    monkeypatch.setattr("napari_unet.core.train_step.weighted_cross_entropy", nan_loss)
    with pytest.raises(nu.TrainingError) as raised:
        nu.core.progress.drive(trainer.run())
    message = str(raised.value)
    assert message.startswith("the loss became nan at step 1: lower the learning rate (this step's, after warm-up")
    assert "precision" not in message
