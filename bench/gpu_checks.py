"""PASS/FAIL checks of every path that runs on a CUDA GPU (bench_gpu.py's ``checks``).

Each check prints one line, PASS or FAIL with its numbers; :data:`FAILED` collects
the names of those that failed. :func:`checks_section` runs the groups of checks so
that one group that raises cannot hide the others.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

import napari_unet as nu
from napari_unet.core.geometry import input_size_for_output
from napari_unet.core.metrics import match_instances, pixel_iou
from napari_unet.core.progress import drive

#: Names of the checks that failed so far.
FAILED: list[str] = []


def check(name: str, ok: bool, detail: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def small_trainer(device: str, precision: str, steps: int, checkpoint=None) -> nu.Trainer:
    torch.manual_seed(1)
    model = nu.UNet(base_channels=16, depth=3, batch_norm=True)
    config = nu.TrainConfig(steps=steps, tile=124, batch_size=2, device=device, precision=precision, warmup_steps=2)
    return nu.Trainer(model, *small_trainer_data(), config, checkpoint_path=checkpoint)


def same_weights(a: nu.UNet, b: nu.UNet) -> tuple[bool, float]:
    worst = 0.0
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        if x.is_floating_point():
            worst = max(worst, (x.float().cpu() - y.float().cpu()).abs().max().item())
        elif not torch.equal(x.cpu(), y.cpu()):
            worst = float("inf")
    return worst == 0.0, worst


def checks_section(model: nu.UNet, device: str, workdir: Path) -> None:
    """Every group of checks runs even when one before it raised (counted as a FAIL)."""
    groups = {
        "prediction": lambda: _prediction_checks(model, device),
        "training": lambda: _training_checks(device, workdir),
        "3D": lambda: _volume_check(device),
        "live training": lambda: _live_check(device),
        "command line": lambda: _cli_checks(device, workdir),
    }
    for name, run in groups.items():
        try:
            run()
        except Exception as error:  # one broken path must not hide the others
            traceback.print_exc(file=sys.stdout)
            check(f"{name} checks", False, f"raised {type(error).__name__}: {error}")


def _prediction_checks(model: nu.UNet, device: str) -> None:
    image, _ = nu.synthetic_nuclei((300, 340), seed=5)
    for tf32 in (False, True):
        torch.backends.cudnn.allow_tf32 = tf32
        whole = nu.predict(model, image, device=device, precision="fp32")
        tiled = nu.predict(model, image, device=device, precision="fp32", tile=236)
        diff = float(np.abs(whole - tiled).max())
        check(f"tiled = whole, fp32, TF32 {'on' if tf32 else 'off'}", diff <= 1e-5, f"max |diff| {diff:.2e}")
    torch.backends.cudnn.allow_tf32 = False
    on_cpu = nu.predict(model, image, device="cpu", precision="fp32")  # the model's weights are on the GPU
    on_gpu = nu.predict(model, image, device=device, precision="fp32")
    torch.backends.cudnn.allow_tf32 = True
    diff = float(np.abs(on_cpu - on_gpu).max())
    check("GPU fp32 (TF32 off) = CPU fp32", diff <= 1e-4, f"max |diff| {diff:.2e}")
    for precision in ("bf16", "fp16"):
        labels = nu.segment(model, image, device=device, precision=precision)
        reference = nu.segment(model, image, device=device, precision="fp32")
        iou = pixel_iou(labels, reference)
        check(f"{precision} labels agree with fp32", iou >= 0.98, f"foreground IoU {iou:.4f}")


def _training_checks(device: str, workdir: Path) -> None:
    from napari_unet.core.train_events import StepProgress

    for precision in ("fp32", "bf16"):
        a, b = small_trainer(device, precision, 8), small_trainer(device, precision, 8)
        drive(a.run())
        drive(b.run())
        equal, worst = same_weights(a.model, b.model)
        check(f"two equal {precision} runs give equal weights", equal, f"max |diff| {worst:.2e}")
        checkpoint = workdir / f"stopped_{precision}.ckpt"
        stopped = small_trainer(device, precision, 8, checkpoint=checkpoint)
        for event in stopped.run():
            if isinstance(event, StepProgress) and event.step == 4:
                stopped.request_stop()
        resumed = nu.Trainer.resume(checkpoint, *small_trainer_data())
        drive(resumed.run())
        equal, worst = same_weights(resumed.model, a.model)
        check(f"{precision} run stopped at 4 and resumed = uninterrupted", equal, f"max |diff| {worst:.2e}")

    fp16 = small_trainer(device, "fp16", 30)
    drive(fp16.run())
    losses = np.asarray(fp16.losses)
    scale = fp16.scaler.get_scale() if fp16.scaler else "none"
    check(
        "fp16 training (gradient scaler)",
        bool(np.isfinite(losses).all()) and losses[-5:].mean() < losses[:5].mean(),
        f"loss {losses[:5].mean():.3f} -> {losses[-5:].mean():.3f}, gradient scale {scale}",
    )
    path = workdir / "gpu_model.safetensors"
    fp16.save_model(path)
    loaded = nu.load_model(path)
    equal, worst = same_weights(loaded, fp16.model)
    devices = {p.device.type for p in loaded.parameters()}
    check("a model trained on the GPU loads on the CPU", equal and devices == {"cpu"}, f"devices {devices}")


def _volume_check(device: str) -> None:
    volume, volume_labels = _small_volume()
    model3d = nu.UNet(ndim=3, base_channels=8, depth=2)
    summary = nu.train(model3d, [volume], [volume_labels], steps=10, device=device)
    whole_tile = tuple(input_size_for_output(n, 2) for n in volume.shape)
    small_tile = input_size_for_output(20, 2)
    whole = nu.predict(model3d, volume, device=device, precision="fp32", tile=whole_tile)
    tiled = nu.predict(model3d, volume, device=device, precision="fp32", tile=small_tile)
    diff = float(np.abs(whole - tiled).max())
    check("3D: trains, tiled = whole", diff <= 1e-5, f"{summary.steps} steps, max |diff| {diff:.2e}")


def small_trainer_data():
    image, labels = nu.synthetic_nuclei((256, 256), seed=3)
    return [image], [labels]


def _small_volume():
    from napari_unet.core.synthetic_volume import synthetic_volume

    return synthetic_volume((24, 96, 96), spacing=(1.0, 1.0, 1.0), seed=0)


def _live_check(device: str) -> None:
    from napari_unet.core.live import LivePreview, LiveTraining, live_model

    image, labels = nu.synthetic_nuclei((512, 512), seed=0)
    annotation = np.full_like(labels, -1)
    for cell in range(1, 9):
        annotation[labels == cell] = cell
    annotation[:40, :40] = np.where(labels[:40, :40] == 0, 0, -1)
    live = LiveTraining(live_model(), image, annotation, nu.TrainConfig(device=device), preview_seconds=2.0)
    previews, began = [], time.perf_counter()
    for event in live.run():
        if isinstance(event, LivePreview):
            previews.append(event)
        if time.perf_counter() - began > 10:
            live.stop()
    ap = match_instances(previews[-1].labels, labels, thresholds=(0.5,))[0].ap if previews else float("nan")
    check(
        "live training on the GPU",
        len(previews) >= 3 and next(live.model.parameters()).device.type == "cuda",
        f"{live.trainer.step} steps in 10 s, {len(previews)} previews, last AP@0.5 {ap:.2f}",
    )


def _cli_checks(device: str, workdir: Path) -> None:
    image, labels = nu.synthetic_nuclei((384, 384), seed=2)
    nu.write_image(workdir / "img.tif", image)
    nu.write_image(workdir / "lab.tif", labels)
    model_path = workdir / "cli.safetensors"
    commands = {
        "cli train": [
            "train",
            "img.tif",
            "--labels",
            "lab.tif",
            "--steps",
            "40",
            "--device",
            device,
            "--out",
            str(model_path),
        ],
        "cli segment": ["segment", str(model_path), "img.tif", "--device", device, "--out-dir", "segmented"],
        "cli segment to zarr": ["segment", str(model_path), "img.tif", "--device", device, "--out", "seg.zarr"],
        "cli info": ["info", str(model_path)],
        "cli demo (30 s)": ["demo", "--minutes", "0.5", "--device", device, "--out-dir", "demo_output"],
    }
    source = str(Path(nu.__file__).parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([source, os.environ.get("PYTHONPATH", "")]))
    for name, arguments in commands.items():
        began = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "napari_unet.cli", *arguments], cwd=workdir, capture_output=True, text=True, env=env
        )
        seconds = time.perf_counter() - began
        tail = [line for line in (done.stdout + done.stderr).replace("\r", "\n").splitlines() if line.strip()][-4:]
        check(name, done.returncode == 0, f"rc {done.returncode} in {seconds:.0f} s; " + " | ".join(tail))
