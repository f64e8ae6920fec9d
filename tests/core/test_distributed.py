"""Data-parallel training: N gloo processes train the network one process trains."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import napari_unet as nu
from napari_unet.core.distributed import ProcessGroup, batch_share
from napari_unet.core.progress import drive
from napari_unet.core.train import Trainer
from napari_unet.core.train_config import TrainConfig
from napari_unet.core.train_events import CheckpointSaved

from .test_data import discs

CONFIG = TrainConfig(
    steps=4, tile=60, batch_size=4, device="cpu", precision="fp32", warmup_steps=1, seed=3, checkpoint_every=2
)


def data():
    image, labels = discs((80, 80), centres=((25, 25), (45, 52), (60, 20)))
    return [image], [labels]


def fresh_model():
    torch.manual_seed(0)
    return nu.UNet(base_channels=4, depth=2)  # dropout 0.5 at the bottom: per-sample masks matter


def _train_in_group(rank: int, world_size: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world_size)
    try:
        images, labels = data()
        trainer = Trainer(fresh_model(), images, labels, CONFIG, checkpoint_path=f"{folder}/run.ckpt")

        def keep_halfway(event) -> None:  # a copy of the checkpoint written at step 2, to resume later
            if isinstance(event, CheckpointSaved) and event.step == 2:
                shutil.copy(event.path, f"{folder}/halfway.ckpt")

        drive(trainer.run(), keep_halfway)
        if rank == 0:
            trainer.save_model(f"{folder}/model.safetensors")
    finally:
        dist.destroy_process_group()


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)


def test_batch_shares_cover_the_batch_once():
    for world_size in (1, 2, 3):
        for batch in range(world_size, 9):
            slots = [j for rank in range(world_size) for j in batch_share(batch, ProcessGroup(rank, world_size))]
            assert slots == list(range(batch))
    with pytest.raises(nu.ConfigError, match="at least 2"):
        batch_share(1, ProcessGroup(0, 2))


@pytest.mark.slow
def test_two_processes_train_what_one_trains_and_resume_with_one(tmp_path):
    images, labels = data()
    alone = fresh_model()
    nu.train(alone, images, labels, CONFIG)

    mp.spawn(_train_in_group, args=(2, str(tmp_path)), nprocs=2, join=True)
    assert_same_weights(alone, nu.load_model(tmp_path / "model.safetensors"))

    # the checkpoint the two processes wrote at step 2, resumed by one process
    resumed = Trainer.resume(tmp_path / "halfway.ckpt", images, labels)
    assert resumed.step == 2
    drive(resumed.run())
    assert resumed.step == 4
    assert_same_weights(alone, resumed.model)


@pytest.mark.slow
def test_cli_nproc_runs_under_torchrun(tmp_path):
    image, labels = discs((80, 80), centres=((25, 25), (45, 52), (60, 20)))
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    command = [sys.executable, "-m", "napari_unet.cli", "train", str(tmp_path / "img.tif")]
    command += ["--labels", str(tmp_path / "lab.tif"), "--out", str(tmp_path / "m.safetensors"), "--nproc", "2"]
    command += ["--steps", "3", "--batch-size", "2", "--base-channels", "2", "--depth", "2", "--tile", "60"]
    command += ["--device", "cpu", "--precision", "fp32"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("trained 3 steps") == 1  # rank 0 alone reports and writes
    assert nu.load_model(tmp_path / "m.safetensors").metadata["training"]["steps"] == 3
    np.testing.assert_equal((tmp_path / "m.safetensors.ckpt").exists(), True)


@pytest.mark.parametrize(
    ("backend", "expected"),
    [("gloo", torch.device("cpu")), ("cpu:gloo,cuda:nccl", torch.device("cpu")), ("nccl", torch.device("cuda", 0))],
)
def test_small_collectives_are_made_where_the_backend_reduces_them(monkeypatch, backend, expected):
    """nccl reduces CUDA tensors only: the stop flag and the clock, made on the CPU,
    would stop multi-GPU training at its first step (read from the code: no two GPUs
    were at hand to run it)."""
    from napari_unet.core import distributed

    monkeypatch.setattr(distributed.dist, "get_backend", lambda: backend)
    monkeypatch.setattr(distributed.torch.cuda, "current_device", lambda: 0)
    assert distributed.collective_device() == expected


def test_the_launchers_notes_on_a_ctrl_c_are_left_out_and_a_kill_is_not():
    """A Ctrl-C of --nproc 2 printed torchrun's 'Sending process N closing signal
    SIGINT' per process; a process it had to kill after its shutdown timeout must
    still be said."""
    import logging

    from napari_unet.core.distributed import _signal_notes_left_out

    def record(message):
        return logging.LogRecord("torch.distributed.elastic", logging.WARNING, "", 0, message, (), None)

    assert not _signal_notes_left_out(record("Sending process 10125 closing signal SIGINT"))
    assert not _signal_notes_left_out(record("Received 2 death signal, shutting down workers"))
    assert _signal_notes_left_out(record("Unable to shutdown process 10125 via 2, forcefully exiting via 9"))
