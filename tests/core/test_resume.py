"""Stopping training (Ctrl-C, SIGTERM, request_stop) and resuming it exactly."""

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_unet as nu
from napari_unet import cli, cli_run, cli_train
from napari_unet.core.checkpoint import load_state, save_state
from napari_unet.core.synthetic import synthetic_nuclei
from napari_unet.core.train import Trainer
from napari_unet.core.train_config import TrainConfig
from napari_unet.core.train_events import StepProgress

SRC = Path(__file__).resolve().parents[2] / "src"
FAST = TrainConfig(steps=10, tile=60, batch_size=2, device="cpu", precision="fp32", warmup_steps=2, seed=4)


def nuclei():
    image, labels = synthetic_nuclei((96, 96), seed=3)
    return [image], [labels]


def run_steps(trainer, steps):
    """Run ``trainer`` until its step counter reaches ``steps``, then close the run."""
    run = trainer.run()
    for event in run:
        if isinstance(event, StepProgress) and event.step == steps:
            break
    run.close()


def assert_same_weights(a, b):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_request_stop_ends_between_steps_and_resuming_is_exact(tmp_path):
    images, labels = nuclei()
    torch.manual_seed(1)
    alone = nu.UNet(base_channels=4, depth=2)
    reference = Trainer(alone, images, labels, FAST)
    nu.core.progress.drive(reference.run())

    torch.manual_seed(1)
    checkpoint = tmp_path / "run.ckpt"
    first = Trainer(nu.UNet(base_channels=4, depth=2), images, labels, FAST, checkpoint_path=checkpoint)
    for event in first.run():
        if isinstance(event, StepProgress) and event.step == 4:
            threading.Thread(target=first.request_stop).start()  # from another thread, while the run goes on
            time.sleep(0.05)
    assert first.step in (4, 5) and load_state(checkpoint)["step"] == first.step
    resumed = Trainer.resume(checkpoint, images, labels)
    nu.core.progress.drive(resumed.run())
    assert resumed.step == FAST.steps
    assert_same_weights(resumed.model, alone)


def test_resuming_on_another_number_of_cpu_threads_says_how_to_continue_exactly(tmp_path, caplog):
    """Some sums are split over the threads: a run resumed on another thread count ends
    within rounding of the uninterrupted one, and the warning names the count that
    continues it exactly; on the same count (or from a checkpoint without one) nothing."""
    images, labels = nuclei()
    checkpoint = tmp_path / "run.ckpt"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        torch.manual_seed(1)
        first = Trainer(nu.UNet(base_channels=4, depth=2), images, labels, FAST, checkpoint_path=checkpoint)
        run_steps(first, 3)
        assert load_state(checkpoint)["threads"] == 1
        for count, warned in ((2, True), (1, False)):
            torch.set_num_threads(count)
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="napari_unet"):
                Trainer.resume(checkpoint, images, labels)
            said = "ran on 1 CPU thread(s) and goes on on 2" in caplog.text and "--threads 1" in caplog.text
            assert said == warned, caplog.text
        state = load_state(checkpoint)
        del state["threads"]  # a checkpoint of an earlier version
        save_state(checkpoint, state)
        torch.set_num_threads(2)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="napari_unet"):
            Trainer.resume(checkpoint, images, labels)
        assert "thread" not in caplog.text
    finally:
        torch.set_num_threads(threads)


def test_a_resumed_run_ends_with_the_best_validated_weights_as_the_uninterrupted_one(tmp_path, monkeypatch):
    """Validation every 2 steps scores best at step 4; the run is stopped at step 6."""
    from napari_unet.core.train_events import ValidationResult

    scores = {2: 0.1, 4: 0.9, 6: 0.2, 8: 0.3, 10: 0.4}
    monkeypatch.setattr(Trainer, "validate", lambda self: ValidationResult(self.step, scores[self.step], 0.5))
    images, labels = nuclei()
    config = dataclasses.replace(FAST, validate_every=2)
    validation = {"val_images": images, "val_labels": labels}
    torch.manual_seed(1)
    reference = Trainer(nu.UNet(base_channels=4, depth=2), images, labels, config, **validation)
    at_step_4 = {}
    for event in reference.run():
        if isinstance(event, StepProgress) and event.step == 4:
            at_step_4 = {name: value.clone() for name, value in reference.model.state_dict().items()}
    assert reference.last_validation.step == 4

    torch.manual_seed(1)
    checkpoint = tmp_path / "run.ckpt"
    first = Trainer(nu.UNet(base_channels=4, depth=2), images, labels, config, checkpoint_path=checkpoint, **validation)
    for event in first.run():
        if isinstance(event, StepProgress) and event.step == 6:
            first.request_stop()
    assert load_state(checkpoint)["step"] == 6
    resumed = Trainer.resume(checkpoint, images, labels, **validation)
    nu.core.progress.drive(resumed.run())
    assert resumed.step == config.steps and resumed.last_validation == ValidationResult(4, 0.9, 0.5)
    assert_same_weights(resumed.model, reference.model)
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, at_step_4[name]), name


def test_an_interruption_inside_a_step_keeps_the_last_exact_checkpoint(tmp_path, monkeypatch, caplog):
    images, labels = nuclei()
    checkpoint = tmp_path / "run.ckpt"
    config = dataclasses.replace(FAST, checkpoint_every=3)
    trainer = Trainer(nu.UNet(base_channels=4, depth=2), images, labels, config, checkpoint_path=checkpoint)
    optimise = trainer.batch_step

    def interrupted_at_step_5(batch, lr, step):
        if trainer.step == 4:
            raise KeyboardInterrupt  # lands after the batch for step 5 was drawn
        return optimise(batch, lr, step)

    monkeypatch.setattr(trainer, "batch_step", interrupted_at_step_5)
    with caplog.at_level(logging.WARNING, logger="napari_unet"), pytest.raises(KeyboardInterrupt):
        nu.core.progress.drive(trainer.run())
    assert load_state(checkpoint)["step"] == 3
    assert "middle of step 5" in caplog.text and "checkpoint of step 3 is kept" in caplog.text


def _reader(stream, lines, started):
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace")
        lines.append(line)
        if "training on cpu" in line:
            started.set()


def _training_argv(folder: Path, image, labels) -> list[str]:
    """A long ``napari-unet train`` run in ``folder`` (at most 2 minutes, a final checkpoint only)."""
    folder.mkdir()
    np.save(folder / "img.npy", image)
    np.save(folder / "lab.npy", labels)
    argv = ["train", str(folder / "img.npy"), "--labels", str(folder / "lab.npy"), "--out", str(folder / "m")]
    argv += ["--steps", "100000", "--minutes", "2", "--base-channels", "4", "--depth", "2", "--tile", "60"]
    argv += ["--batch-size", "2", "--device", "cpu", "--precision", "fp32", "--seed", "5"]
    # the thread count of the checks below: sums split over threads depend on it
    return [*argv, "--threads", str(torch.get_num_threads())]


def _check_stopped_run_resumes_exactly(argv, image, labels):
    """The run of ``argv`` stopped with a checkpoint and a model at the same step;
    resuming it for two steps equals running it straight through, bit for bit."""
    out = Path(argv[argv.index("--out") + 1])
    checkpoint = out.with_name(out.name + ".ckpt")
    stopped_at = load_state(checkpoint)["step"]
    assert stopped_at >= 1 and nu.load_model(out).metadata["training"]["steps"] == stopped_at
    args = cli.build_parser().parse_args(argv)
    straight = Trainer(cli_train.new_model(args, image), [image], [labels], cli_train.train_config_from(args))
    run_steps(straight, stopped_at + 2)
    resumed = Trainer.resume(checkpoint, [image], [labels])
    run_steps(resumed, stopped_at + 2)
    assert resumed.step == straight.step == stopped_at + 2
    assert_same_weights(resumed.model, straight.model)


def test_sigterm_stops_a_training_process_between_steps_and_resuming_is_exact(tmp_path):
    """A real ``napari-unet train`` process gets SIGTERM mid-training (before, it
    died without a checkpoint or a model): it stops after the current step, writes
    both, exits with 143, and resuming is bitwise exact."""
    image, labels = synthetic_nuclei((96, 96), seed=3)
    argv = _training_argv(tmp_path / "run", image, labels)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    command = [sys.executable, "-m", "napari_unet.cli", "-v", *argv]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    lines, started = [], threading.Event()
    threading.Thread(target=_reader, args=(process.stderr, lines, started), daemon=True).start()
    try:
        assert started.wait(timeout=90), "".join(lines)
        time.sleep(1.0)  # some steps in: the signal lands inside one
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        process.kill()
    output = process.stdout.read().decode() + "".join(lines)
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "on SIGTERM" in output and "checkpoint for --resume" in output
    _check_stopped_run_resumes_exactly(argv, image, labels)


def test_ctrl_c_stops_training_between_steps_and_resuming_is_exact(tmp_path, capsys):
    """A real SIGINT reaches the command line while it trains in this process (before,
    the KeyboardInterrupt landed mid-step and the checkpoint recorded random states
    that had moved on): it stops after the current step and exits with 130."""
    image, labels = synthetic_nuclei((96, 96), seed=3)
    argv = _training_argv(tmp_path / "run", image, labels)
    default = signal.getsignal(signal.SIGINT)

    def press_ctrl_c_while_training():
        deadline = time.monotonic() + 60
        while signal.getsignal(signal.SIGINT) is default and time.monotonic() < deadline:
            time.sleep(0.01)  # until the command line has taken over Ctrl-C, i.e. training runs
        time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c_while_training)
    presser.start()
    code = cli.main(argv)
    presser.join()
    printed = capsys.readouterr()
    assert code == 130 and "on SIGINT" in printed.out
    assert "napari-unet: stopping after step " in printed.err  # answered at once: no second Ctrl-C needed
    assert signal.getsignal(signal.SIGINT) is default  # put back
    _check_stopped_run_resumes_exactly(argv, image, labels)


def test_a_second_ctrl_c_interrupts_at_once_and_names_the_checkpoint_to_resume(tmp_path, capsys, monkeypatch):
    image, labels = synthetic_nuclei((96, 96), seed=3)
    argv = _training_argv(tmp_path / "run", image, labels)
    run = Trainer.run

    def interrupted_after_step_2(self):
        steps = run(self)
        for event in steps:
            yield event
            if isinstance(event, StepProgress) and event.step == 2:
                steps.close()  # what the second Ctrl-C's KeyboardInterrupt does to the run
                raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "run", interrupted_after_step_2)
    assert cli.main(argv) == 130
    checkpoint = Path(argv[argv.index("--out") + 1] + ".ckpt")
    said = capsys.readouterr().out
    assert f"interrupted during step 3; continue from its last checkpoint with --resume {checkpoint}" in said
    assert load_state(checkpoint)["step"] == 2


# --- options when resuming ------------------------------------------------------------------------------------


@pytest.fixture
def stopped_run(tmp_path):
    image, labels = synthetic_nuclei((96, 96), seed=3)
    np.save(tmp_path / "img.npy", image)
    np.save(tmp_path / "lab.npy", labels)
    out = tmp_path / "m.safetensors"
    argv = ["train", str(tmp_path / "img.npy"), "--labels", str(tmp_path / "lab.npy"), "--out", str(out)]
    tiny = ["--base-channels", "2", "--depth", "2", "--tile", "60", "--batch-size", "1", "--device", "cpu"]
    assert cli.main([*argv, "--steps", "2", *tiny]) == 0
    state = load_state(out.with_name(out.name + ".ckpt"))
    state["config"]["steps"] = 4
    save_state(out.with_name(out.name + ".ckpt"), state)
    return argv, tiny, out.with_name(out.name + ".ckpt")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--steps", "50"], "--steps 50 differs from the checkpoint's run (--steps 4)"),
        (["--lr", "0.1"], "--lr 0.1 differs from the checkpoint's run (without --lr)"),
        (["--base-channels", "8"], "--base-channels 8 differs from the checkpoint's run (--base-channels 2)"),
        (["--no-elastic"], "--no-elastic differs from the checkpoint's run (without --no-elastic)"),
        (["--zoom", "0.2"], "--zoom 0.2 differs from the checkpoint's run (--zoom 0.0)"),
        (["--seed", "9"], "--seed 9 differs"),
        (["--minutes", "1"], "--minutes 1.0 differs from the checkpoint's run (without --minutes)"),
    ],
)
def test_options_that_would_change_a_resumed_run_are_refused(stopped_run, capsys, option, message):
    argv, _, checkpoint = stopped_run
    capsys.readouterr()
    code = cli.main([*argv, "--resume", str(checkpoint), *option])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0] and "--init" in err[0]


def test_resuming_with_the_same_options_and_a_device_works(stopped_run, capsys):
    argv, tiny, checkpoint = stopped_run
    same = [option for option in tiny if option != "--batch-size" and option != "1"]  # --steps not given
    assert cli.main([*argv, "--resume", str(checkpoint), *same, "--batch-size", "1", "--precision", "fp32"]) == 0
    assert "trained 4 steps" in capsys.readouterr().out
    assert load_state(checkpoint)["config"]["precision"] == "fp32"


def test_a_run_resumed_into_another_model_s_files_replaces_them_only_with_overwrite(stopped_run, capsys):
    """--resume with an --out whose model (or checkpoint) exists and belongs to another
    run replaced both without a word."""
    argv, _, checkpoint = stopped_run
    out = Path(argv[argv.index("--out") + 1])
    precious = out.with_name("precious.safetensors")
    precious.write_bytes(out.read_bytes())
    before = precious.read_bytes()
    other = [*argv[: argv.index("--out")], "--out", str(precious), "--resume", str(checkpoint)]
    capsys.readouterr()
    assert cli.main(other) == 2
    err = capsys.readouterr().err
    assert "precious.safetensors exists and is not the run of" in err and f"--out {out}" in err
    assert precious.read_bytes() == before and not precious.with_name("precious.safetensors.ckpt").exists()
    assert cli.main([*other, "--overwrite"]) == 0  # asked for
    assert precious.read_bytes() != before
    assert cli.main([*argv, "--resume", str(checkpoint)]) == 0  # its own model and checkpoint: no --overwrite
    other = [*other, "--checkpoint", str(checkpoint)]  # its own checkpoint given: the model at --out is still not its
    nu.save_model(nu.UNet(base_channels=2, depth=2), precious)  # another run's model (that run wrote it above)
    before = precious.read_bytes()
    assert cli.main(other) == 2 and precious.read_bytes() == before
    assert "precious.safetensors exists and is not the run of" in capsys.readouterr().err


def test_a_run_with_its_own_checkpoint_name_resumes_into_its_model_without_overwrite(tmp_path, capsys):
    """A run given --checkpoint C (not named after its model) and stopped was refused
    when resumed with the same command plus --resume C: "MODEL exists and is not the
    run of C" (a new user's walk). The model that run wrote is its own."""
    image, labels = synthetic_nuclei((96, 96), seed=3)
    np.save(tmp_path / "img.npy", image)
    np.save(tmp_path / "lab.npy", labels)
    out, checkpoint = tmp_path / "m.safetensors", tmp_path / "run.ckpt"
    argv = ["train", str(tmp_path / "img.npy"), "--labels", str(tmp_path / "lab.npy"), "--out", str(out)]
    argv += ["--base-channels", "2", "--depth", "2", "--tile", "60", "--batch-size", "1", "--device", "cpu"]
    argv += ["--steps", "2", "--checkpoint", str(checkpoint)]
    assert cli.main(argv) == 0
    state = load_state(checkpoint)
    state["config"]["steps"] = 4  # as if stopped at step 2 of 4
    save_state(checkpoint, state)
    model = nu.load_model(out)
    model.metadata["training"]["config"]["steps"] = 4
    nu.save_model(model, out, **model.metadata)
    capsys.readouterr()
    assert cli.main([*argv[:-4], "--checkpoint", str(checkpoint), "--resume", str(checkpoint)]) == 0
    assert "trained 4 steps" in capsys.readouterr().out and load_state(checkpoint)["step"] == 4
    # a model of the same settings trained on other data is not the run's (the settings alone matched)
    other, _ = synthetic_nuclei((96, 96), seed=8)
    np.save(tmp_path / "other.npy", other)
    precious = tmp_path / "precious.safetensors"
    elsewhere = [str(tmp_path / "other.npy") if arg == str(tmp_path / "img.npy") else arg for arg in argv]
    elsewhere[elsewhere.index("--out") + 1] = str(precious)
    elsewhere[elsewhere.index("--steps") + 1] = "4"  # the checkpoint's settings exactly
    assert cli.main([*elsewhere[:-2], "--checkpoint", str(tmp_path / "other.ckpt")]) == 0
    assert nu.load_model(precious).metadata["training"]["config"] == load_state(checkpoint)["config"]
    before = precious.read_bytes()
    resumed = [*argv[:-4], "--checkpoint", str(checkpoint), "--resume", str(checkpoint)]
    resumed[resumed.index("--out") + 1] = str(precious)
    assert cli.main(resumed) == 2 and precious.read_bytes() == before
    assert "precious.safetensors exists and is not the run of" in capsys.readouterr().err


def test_resuming_a_finished_run_says_that_nothing_was_left_to_train(stopped_run, capsys):
    argv, _, checkpoint = stopped_run
    assert cli.main([*argv, "--resume", str(checkpoint)]) == 0  # trains steps 3 and 4
    capsys.readouterr()
    out = Path(argv[argv.index("--out") + 1])
    out.unlink()
    assert cli.main([*argv, "--resume", str(checkpoint)]) == 0  # before: "trained 4 steps in 0 s", as if it had
    said, err = capsys.readouterr()
    assert "holds a finished run (4 steps): nothing was left to train" in said and "--init" in said
    assert "training:" not in err  # no progress bar of a run with nothing to do
    assert "trained" not in said and nu.load_model(out).metadata["training"]["steps"] == 4  # the model is there
    assert f"is written to {out} again" in said
    other = out.with_name("other.safetensors")  # written there for the first time: not "again"
    elsewhere = [*argv[: argv.index("--out")], "--out", str(other), "--resume", str(checkpoint)]
    assert cli.main(elsewhere) == 0 and f"is written to {other} (to train further" in capsys.readouterr().out


def test_resuming_on_other_data_is_said_once_and_on_the_same_data_not_at_all(stopped_run, capsys):
    argv, _, checkpoint = stopped_run
    labels_path = Path(argv[argv.index("--labels") + 1])
    state = load_state(checkpoint)
    assert cli.main([*argv, "--resume", str(checkpoint)]) == 0
    assert "warning" not in capsys.readouterr().err
    save_state(checkpoint, state)  # back to step 2
    labels = np.load(labels_path)
    labels[labels == labels.max()] = 0  # one cell less: corrected labels
    np.save(labels_path, labels)
    assert cli.main([*argv, "--resume", str(checkpoint)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "the training images or labels differ from those" in warnings[0]


def test_a_checkpoint_made_on_a_gpu_resumes_on_the_cpu(stopped_run, caplog, capsys):
    argv, _, checkpoint = stopped_run
    state = load_state(checkpoint)
    state["config"]["device"] = "cuda:3"
    save_state(checkpoint, state)
    if torch.cuda.device_count() > 3:
        pytest.skip("this machine has a cuda:3")
    with caplog.at_level(logging.WARNING, logger="napari_unet"):
        trainer = Trainer.resume(checkpoint, *nuclei())
    assert trainer.device.type in ("cpu", "cuda", "mps") and "made on cuda:3" in caplog.text
    assert cli.main([*argv, "--resume", str(checkpoint), "--device", "cpu"]) == 0
    assert "trained 4 steps" in capsys.readouterr().out


# --- suspicious label files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_unsigned_labels_at_their_largest_value_get_a_one_line_warning(tmp_path, capsys, dtype):
    image, labels = synthetic_nuclei((96, 96), seed=3)
    unsigned = labels.astype(dtype)
    unsigned[:, :20] = np.iinfo(dtype).max  # "unannotated", as some tools write it
    np.save(tmp_path / "img.npy", image)
    np.save(tmp_path / "lab.npy", unsigned)
    argv = ["train", str(tmp_path / "img.npy"), "--labels", str(tmp_path / "lab.npy"), "--out", str(tmp_path / "m")]
    assert cli.main([*argv, "--steps", "1", "--base-channels", "2", "--depth", "2", "--device", "cpu"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("napari-unet: warning:")
    assert "lab.npy" in warnings[0] and str(np.iinfo(dtype).max) in warnings[0] and "-1" in warnings[0]


def test_a_binary_mask_given_as_labels_gets_a_one_line_warning(tmp_path, capsys):
    image, labels = synthetic_nuclei((96, 96), seed=3)
    np.save(tmp_path / "img.npy", image)
    np.save(tmp_path / "mask.npy", (labels > 0).astype(np.uint8))
    argv = ["train", str(tmp_path / "img.npy"), "--labels", str(tmp_path / "mask.npy"), "--out", str(tmp_path / "m")]
    assert cli.main([*argv, "--steps", "1", "--base-channels", "2", "--depth", "2", "--device", "cpu"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings[0].startswith("napari-unet: warning: the labels of ")
    assert (
        f"mask.npy (image {tmp_path / 'img.npy'}) give all" in warnings[0] and "looks like a binary mask" in warnings[0]
    )
    assert all("no cell is completely annotated" in line for line in warnings[1:])  # true too: one id everywhere


def test_a_fine_tuned_model_records_the_runs_it_started_from_once(tmp_path):
    images, labels = nuclei()
    torch.manual_seed(2)
    first = Trainer(nu.UNet(base_channels=4, depth=2), images, labels, dataclasses.replace(FAST, steps=3))
    nu.core.progress.drive(first.run())
    assert first.model.metadata["training"]["steps"] == 3  # the model kept in memory says how it was trained
    assert "earlier_training" not in first.model.metadata
    first.save_model(tmp_path / "first.safetensors")

    parent = nu.load_model(tmp_path / "first.safetensors")
    checkpoint = tmp_path / "tune.ckpt"
    tuning = Trainer(parent, images, labels, dataclasses.replace(FAST, steps=6), checkpoint_path=checkpoint)
    run_steps(tuning, 4)  # stopped: its checkpoint records the run so far
    resumed = Trainer.resume(checkpoint, images, labels)
    nu.core.progress.drive(resumed.run())
    resumed.save_model(tmp_path / "tuned.safetensors")

    record = nu.load_model(tmp_path / "tuned.safetensors").metadata
    assert record["training"]["steps"] == 6
    assert [run["steps"] for run in record["earlier_training"]] == [3]  # the parent's run, not the resumed one's
    assert record["earlier_training"][0] == first.model.metadata["training"]
    again = Trainer(resumed.model, images, labels, dataclasses.replace(FAST, steps=2))  # from the model in memory
    nu.core.progress.drive(again.run())
    assert [run["steps"] for run in again.model.metadata["earlier_training"]] == [3, 6]


def test_training_history_leaves_out_what_is_not_a_record():
    from napari_unet.core.training_state import training_history

    metadata = {"earlier_training": [{"steps": 1}, "edited", 7], "training": {"steps": 2}}
    assert training_history(metadata) == [{"steps": 1}, {"steps": 2}]
    assert training_history(metadata, own=False) == [{"steps": 1}]
    assert training_history({"earlier_training": "not a list", "training": None}) == []


def test_a_new_run_refuses_to_write_over_an_earlier_run_s_checkpoint(tmp_path):
    """train(..., checkpoint_path=P) wrote over the checkpoint an earlier run had left
    at P without a word; now the new run says how to continue or replace it, the
    earlier checkpoint untouched. Resuming with the run's own checkpoint writes on."""
    images, labels = nuclei()
    checkpoint = tmp_path / "run.ckpt"
    config = dataclasses.replace(FAST, steps=4)
    run_steps(Trainer(nu.UNet(base_channels=4, depth=2), images, labels, config, checkpoint_path=checkpoint), 2)
    earlier = checkpoint.read_bytes()
    with pytest.raises(nu.OutputFileError, match=r"earlier run's checkpoint.*Trainer\.resume.*overwrite=True") as error:
        nu.train(nu.UNet(base_channels=4, depth=2), images, labels, config, checkpoint_path=checkpoint)
    assert str(checkpoint) in str(error.value) and checkpoint.read_bytes() == earlier
    copy = tmp_path / "copy.ckpt"
    copy.write_bytes(earlier)
    with pytest.raises(nu.OutputFileError, match="earlier run's checkpoint"):  # a resumed run's new file too
        Trainer.resume(checkpoint, images, labels, checkpoint_path=copy)
    nu.core.progress.drive(Trainer.resume(checkpoint, images, labels, checkpoint_path=checkpoint).run())
    assert load_state(checkpoint)["step"] == 4
    nu.train(nu.UNet(base_channels=4, depth=2), images, labels, config, checkpoint_path=copy, overwrite=True)
    assert load_state(copy)["step"] == 4


def test_a_data_parallel_process_takes_the_launchers_echo_of_a_ctrl_c_for_the_first(monkeypatch, capsys):
    """A Ctrl-C reaches every process of a --nproc run, and torchrun passes it on to
    them again: that echo, taken for a second Ctrl-C, interrupted the run mid-step
    without its model. Within LAUNCHER_ECHO_S it is the first one; later a second
    Ctrl-C interrupts at once, as in a run of one process."""
    from types import SimpleNamespace

    monkeypatch.setattr(cli_run, "LAUNCHER_ECHO_S", 0.3)
    stops = []
    group = SimpleNamespace(distributed=True, is_main=False)
    trainer = SimpleNamespace(step=4, group=group, request_stop=lambda: stops.append(1))
    with cli_run.stop_on_signals(trainer) as received:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # the launcher's echo
        time.sleep(0.05)
        assert received == [signal.SIGINT] and stops == [1]
        time.sleep(0.4)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    assert "stopping after" not in capsys.readouterr().err  # said by the first process alone
