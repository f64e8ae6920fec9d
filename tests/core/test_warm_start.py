"""A new 3D network's warm start: its 2D twin trains on the annotated planes, and
its weights, inflated, are where the 3D training begins."""

import dataclasses
import time

import numpy as np
import pytest
import torch

import napari_unet as nu
from napari_unet import cli_train
from napari_unet.cli import build_parser, given_options, main
from napari_unet.core.checkpoint import load_state
from napari_unet.core.config import IGNORE_LABEL
from napari_unet.core.layer_plan import CONV, UP
from napari_unet.core.progress import drive
from napari_unet.core.train import Trainer
from napari_unet.core.train_config import TrainConfig
from napari_unet.core.train_events import StepProgress, WarmStartProgress
from napari_unet.core.warm_start import FINE_TUNE_LR_SCALE, WARM_START_STEPS, inflate, plane_images, twin, twin_config
from tests.core.test_volumes_train import ellipsoids

FAST = TrainConfig(steps=2, warm_start_steps=3, batch_size=1, tile=(20, 44, 44), device="cpu", precision="fp32")


def small_3d(spacing=None, seed=0):
    torch.manual_seed(seed)
    return nu.UNet(ndim=3, base_channels=2, depth=1, batch_norm=True, double_before_pool=True, up_bias=False,
                   spacing=spacing)  # fmt: skip


def sparse_volume():
    image, labels = ellipsoids((24, 48, 48), seed=1)
    annotation = np.full_like(labels, IGNORE_LABEL)
    annotation[::4] = labels[::4]  # every 4th plane annotated, the rest unannotated
    return image, annotation


@pytest.mark.parametrize("spacing", [None, (2.0, 1.0, 1.0)])  # 3x3x3 kernels; 1x3x3 at the first level
def test_the_inflated_network_computes_its_twin_on_every_plane_of_a_volume_constant_along_z(spacing, rng):
    model = small_3d(spacing)
    planes = twin(model)
    with torch.no_grad():
        for tensor in planes.state_dict(keep_vars=True).values():
            if tensor.is_floating_point():  # weights, biases and normalisation statistics: none trivial
                tensor.copy_(torch.from_numpy(rng.uniform(0.2, 1.0, tensor.shape).astype(np.float32)))
    inflate(planes, model)
    plane = rng.normal(size=(1, 1, 44, 44)).astype(np.float32)
    volume = np.repeat(plane[:, :, None], 20, axis=2)
    planes.eval(), model.eval()
    with torch.no_grad():
        deep, flat = model(torch.from_numpy(volume)), planes(torch.from_numpy(plane))
    assert deep.shape[2] > 1
    for z in range(deep.shape[2]):
        torch.testing.assert_close(deep[:, :, z], flat, rtol=1e-4, atol=1e-4 * float(flat.abs().max()))


def test_each_inflated_layer_computes_its_twin_layer_plane_by_plane(rng):
    """A convolution's output plane z is the twin's on input plane z + kz // 2 (the
    kernel's middle plane); an up-convolution's planes 2z and 2z + 1 are both the
    twin's on plane z."""
    model = small_3d()
    planes = twin(model)
    inflate(planes, model)
    for layer in model.plan:
        if layer.kind not in (CONV, UP):
            continue
        deep, flat = model.get_submodule(layer.module), planes.get_submodule(layer.module)
        volume = torch.from_numpy(rng.normal(size=(1, layer.in_channels, 6, 10, 10)).astype(np.float32))
        with torch.no_grad():
            out = deep(volume)
            for z in range(out.shape[2]):
                source = z // 2 if layer.kind == UP else z + layer.kernel[0] // 2
                torch.testing.assert_close(out[:, :, z], flat(volume[:, :, source]), rtol=1e-5, atol=1e-5)


def test_inflate_takes_a_3d_network_and_its_own_twin_only():
    model = small_3d()
    with pytest.raises(ValueError, match="its 2D twin"):
        inflate(twin(small_3d().__class__(ndim=3, base_channels=4, depth=1)), model)
    with pytest.raises(ValueError, match="a 3D network"):
        inflate(twin(model), twin(model))


def test_the_twin_reads_volumes_as_stacks_of_planes_with_their_channels():
    volume = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)  # (C, Z, Y, X)
    (planes,) = plane_images([volume], in_channels=2, channel_axis=0)
    assert planes.shape == (3, 2, 4, 5)
    np.testing.assert_array_equal(planes[1, 0], volume[0, 1])


def test_a_new_3d_run_begins_from_its_twin_trained_on_the_annotated_planes():
    image, annotation = sparse_volume()
    model = small_3d()
    trainer = Trainer(model, [image], [annotation], FAST)
    events = []
    for event in trainer.run():
        events.append(event)
        if isinstance(event, WarmStartProgress) and event.step == FAST.warm_start_steps:
            trainer.request_stop()  # after the warm start: no 3D step
    assert [type(e) for e in events] == [WarmStartProgress] * 3 and trainer.step == 0

    with torch.random.fork_rng():  # the same twin, trained on its own
        torch.manual_seed(FAST.seed)
        planes = twin(model)
    drive(nu.iter_train(planes, plane_images([image], 1, None), [annotation], twin_config(FAST), channel_axis=-3))
    expected = small_3d(seed=1)
    inflate(planes, expected)
    for (name, got), want in zip(model.state_dict().items(), expected.state_dict().values()):
        assert torch.equal(got, want), name


def test_after_a_warm_start_the_3d_network_fine_tunes_at_a_tenth_of_the_rate():
    image, annotation = sparse_volume()
    config = dataclasses.replace(FAST, steps=1, warmup_steps=1)
    events = list(nu.iter_train(small_3d(), [image], [annotation], config))
    assert sum(isinstance(e, WarmStartProgress) for e in events) == 3
    (step,) = [e for e in events if isinstance(e, StepProgress)]
    assert step.lr == pytest.approx(config.learning_rate * FINE_TUNE_LR_SCALE)
    plain = list(nu.iter_train(small_3d(), [image], [annotation], dataclasses.replace(config, warm_start_steps=0)))
    assert [e.lr for e in plain] == [pytest.approx(config.learning_rate)]  # no warm start: the full rate
    given = list(nu.iter_train(small_3d(), [image], [annotation], dataclasses.replace(config, lr=1e-3)))
    assert [e.lr for e in given if isinstance(e, StepProgress)] == [pytest.approx(1e-3)]  # a given rate is kept


def test_a_2d_network_ignores_the_warm_start():
    image, annotation = sparse_volume()
    config = dataclasses.replace(FAST, tile=None, steps=1)
    torch.manual_seed(0)
    events = list(nu.iter_train(nu.UNet(base_channels=2, depth=1), [image], [annotation], config))
    assert [type(e) for e in events] == [StepProgress]


def test_resuming_a_warm_started_run_is_exact_and_does_not_warm_start_again(tmp_path):
    image, annotation = sparse_volume()
    config = dataclasses.replace(FAST, steps=3, checkpoint_every=1)
    reference = small_3d()
    drive(nu.iter_train(reference, [image], [annotation], config))

    checkpoint = tmp_path / "run.ckpt"
    first = Trainer(small_3d(), [image], [annotation], config, checkpoint_path=checkpoint)
    for event in first.run():
        if isinstance(event, StepProgress) and event.step == 1:
            first.request_stop()
    assert first.step == 1
    resumed = Trainer.resume(checkpoint, [image], [annotation])
    events = list(resumed.run())
    assert not any(isinstance(e, WarmStartProgress) for e in events) and resumed.step == 3
    for (name, got), want in zip(resumed.model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(got, want), name


def test_a_stop_in_the_warm_start_keeps_its_weights_and_a_resumed_run_does_it_again_exactly(tmp_path):
    """The twin's training is work: stopped early, its weights so far are inflated and
    saved at step 0. A resumed run went on from them without the warm-start steps left,
    and ended elsewhere than the uninterrupted run (a new user's walk: weights up to 3.0
    apart); it does the warm start again from its beginning and ends the same, bit for bit."""
    image, annotation = sparse_volume()
    reference = small_3d()
    drive(nu.iter_train(reference, [image], [annotation], FAST))

    checkpoint = tmp_path / "run.ckpt"
    stopped = Trainer(small_3d(), [image], [annotation], FAST, checkpoint_path=checkpoint)
    events, began = [], time.perf_counter()
    for event in stopped.run():
        events.append(event)
        if isinstance(event, WarmStartProgress) and event.step == 1:
            stopped.request_stop()
    elapsed = time.perf_counter() - began
    assert stopped.step == 0 and stopped.warm_start_stopped and stopped.warm_seconds == 0
    # nor is its time counted: a run limited by minutes would lose it from its 3D steps
    assert load_state(checkpoint)["seconds"] < 0.25 * elapsed
    assert [type(event).__name__ for event in events] == ["WarmStartProgress", "CheckpointSaved"]
    saved = {name: tensor.clone() for name, tensor in stopped.model.state_dict().items()}

    resumed = Trainer.resume(checkpoint, [image], [annotation])
    assert resumed.step == 0
    for name, tensor in resumed.model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name  # the stopped twin's weights, kept
    events = list(resumed.run())
    warm = [e.step for e in events if isinstance(e, WarmStartProgress)]
    assert warm == list(range(1, FAST.warm_start_steps + 1)) and resumed.step == FAST.steps
    for (name, got), want in zip(resumed.model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(got, want), name


def parsed(parser, argv):
    """``argv`` parsed as the command line parses it (with the options it was given)."""
    args = parser.parse_args(argv)
    args.given = given_options(argv)
    return args


def test_the_command_line_warm_starts_new_3d_models_only(tmp_path):
    parser = build_parser()
    base = ["train", "vol.tif", "--labels", "lab.tif", "--out", str(tmp_path / "m.safetensors")]
    config = lambda *extra: cli_train.train_config_from(parsed(parser, [*base, *extra]))  # noqa: E731
    assert config("--ndim", "3").warm_start_steps == WARM_START_STEPS
    assert config("--ndim", "3", "--warm-start", "5").warm_start_steps == 5
    assert config().warm_start_steps == 0  # 2D
    assert config("--ndim", "3", "--init", "old.safetensors").warm_start_steps == 0  # its own weights are the start
    with pytest.raises(nu.ConfigError, match="--warm-start applies to new 3D models"):
        config("--warm-start", "5")
    with pytest.raises(nu.ConfigError, match="drop one"):
        config("--ndim", "3", "--warm-start", "5", "--init", "old.safetensors")


def test_the_command_line_s_bar_names_the_warm_start_first(tmp_path, capsys):
    """A log of a warm-started run began "training: 0/20" (the 3D steps) and the bar
    said "2D warm start" over the 3D steps' count at their first step."""
    image, annotation = sparse_volume()
    np.save(tmp_path / "vol.npy", image)
    np.save(tmp_path / "lab.npy", annotation)
    argv = ["train", str(tmp_path / "vol.npy"), "--labels", str(tmp_path / "lab.npy"), "--ndim", "3"]
    argv += ["--warm-start", "3", "--steps", "2", "--base-channels", "2", "--depth", "1", "--batch-size", "1"]
    assert main([*argv, "--device", "cpu", "--out", str(tmp_path / "m.safetensors")]) == 0
    bars = [line.strip() for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if "|" in line]
    assert bars[0].startswith("2D warm start:") and "0/3" in bars[0]
    assert all(line.startswith("training:") for line in bars if "/2 " in line)


def test_a_new_3d_model_on_a_cpu_trains_five_minutes_unless_told_otherwise(tmp_path, monkeypatch):
    """Its steps take seconds on a CPU: the default 1000 would take hours."""
    from napari_unet.core.train_config import CPU_3D_MINUTES

    parser = build_parser()
    base = ["train", "vol.tif", "--labels", "lab.tif", "--out", str(tmp_path / "m.safetensors"), "--device", "cpu"]
    minutes = lambda *extra: cli_train.train_config_from(parsed(parser, [*base, *extra])).minutes  # noqa: E731
    assert minutes("--ndim", "3") == CPU_3D_MINUTES == 5
    assert minutes("--ndim", "3", "--minutes", "2") == 2
    assert minutes("--ndim", "3", "--steps", "30") is None  # the user chose a length
    assert minutes() is None  # 2D
    assert minutes("--ndim", "3", "--init", "old.safetensors") is None  # not a new model
    monkeypatch.setattr(cli_train, "resolve_device", lambda device: torch.device("cuda"))
    assert minutes("--ndim", "3") is None  # a GPU trains until its steps


def test_the_twin_does_not_repeat_the_warnings_the_3d_run_gave_and_shows(caplog):
    """Cells left 0 on the annotated planes: the 3D run warns once (its Train widget
    shows ``data_warnings``); the twin, checking the same planes, stays silent."""
    from napari_unet._sample_data import nuclei_volume

    (image, _, _), (labels, _, _) = nuclei_volume()
    sparse = np.full(labels.shape, IGNORE_LABEL, np.int32)
    for z in (10, 14):  # two cells painted on each plane, the rest of the plane 0
        keep = np.unique(labels[z][labels[z] > 0])[:2]
        sparse[z] = np.where(np.isin(labels[z], keep), labels[z], 0)
    with caplog.at_level("WARNING", logger="napari_unet"):
        trainer = Trainer(small_3d(spacing=(2.0, 1.0, 1.0)), [image], [sparse], FAST)
        for event in trainer.run():
            if isinstance(event, WarmStartProgress):
                trainer.request_stop()
    logged = [record.getMessage() for record in caplog.records if "painted 0" in record.getMessage()]
    assert len(logged) == 1 and "in 2 of its 2 annotated planes" in logged[0]
    assert logged == [warning for warning in trainer.data_warnings if "painted 0" in warning]
