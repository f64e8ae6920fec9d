"""The speed tables on a CUDA GPU, and checks of every path that runs there.

    python bench/bench_gpu.py [--device cuda] [--train-seconds 45] [--sections ...]

Sections (``--sections``, default all, in this order):

- ``limits``: the best 3x3 convolution per precision (bench_limits.py's probe, on
  larger inputs than the CPU's, where a launch costs more than the arithmetic).
- ``checks``: tiled prediction against a whole-image pass, the GPU against the CPU,
  two equal training runs and a stopped-and-resumed one bitwise, fp16 training,
  a model trained on the GPU saved and loaded on the CPU, 3D training and tiling, live
  training's previews, the command line (train, segment, demo). Each prints PASS or
  FAIL with its numbers; FAILs are counted at the end.
- ``segment``: ``napari_unet.segment`` end to end with the paper network, 512x512 and
  2048x2048 synthetic nuclei, fp32/bf16/fp16, with cuDNN's autotuner
  (``torch.backends.cudnn.benchmark``) off and on; the time split into the network,
  the rest of prediction and instance post-processing (on the CPU); labels of each
  precision against fp32's. Then one tile's forward pass in channels-first and
  channels-last layout, and where the time of one 512x512 segmentation goes
  (cProfile, the functions with the most time of their own).
- ``train``: steps/s of the paper network (tile 572, batch 1 and 4) per precision,
  memory layout and number of sampling threads, with the share of a step spent
  waiting for samples (drawn on the CPU), useful FLOP/s against the limit; the GPU's
  3D default.

The paper network is trained on the GPU for ``--train-seconds`` on synthetic nuclei
first, so that its labels (and the post-processing they cost) are those of a model
that finds nuclei.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
import torch

import napari_unet as nu
from bench_limits import best, limits_table, measure_limits
from bench_train import WARMUP_STEPS, timed_steps
from common import TileRecord, benchmark_image, format_table, median, paper_model, print_header
from napari_unet.core.devices import precision_name, resolve_precision
from napari_unet.core.geometry import input_size_for_output
from napari_unet.core.metrics import match_instances, pixel_iou
from napari_unet.core.model import forward_flops
from napari_unet.core.progress import drive

#: (channels, size) of the limit's convolutions on a GPU: large enough that a launch
#: is a small part of each.
GPU_SHAPES = ((64, 1024), (128, 512), (256, 256), (512, 128))
PRECISIONS = ("fp32", "bf16", "fp16")
FAILED: list[str] = []


def check(name: str, ok: bool, detail: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(function, repeats: int) -> tuple[float, object]:
    """Median wall seconds of ``repeats`` calls after one warm-up call, and the last result."""
    result = function()
    times = []
    for _ in range(repeats):
        synchronize()
        began = time.perf_counter()
        result = function()
        synchronize()
        times.append(time.perf_counter() - began)
    return median(times), result


# --------------------------------------------------------------------------- limits


def limits_section(device: str) -> dict:
    measurements = measure_limits(shapes=GPU_SHAPES, repeats=7, devices=[device])
    print(limits_table(measurements))
    torch.backends.cudnn.benchmark = False  # the probe switched it on; the sections set it themselves
    return {precision: m.flop_per_s for (_, precision), m in best(measurements).items()}


# --------------------------------------------------------------------------- segmentation


def segment_section(model: nu.UNet, device: str, limit: dict, sizes: list[int], repeats: int) -> None:
    rows, agreement = [], []
    for size in sizes:
        image, truth, note = benchmark_image((size, size))
        print(f"image {size}x{size}: {note}")
        reference = None
        for precision in PRECISIONS:
            for autotune in (False, True):
                torch.backends.cudnn.benchmark = autotune
                record = TileRecord()
                total, labels = timed(  # each lambda is called before the loop moves on
                    lambda: drive(nu.iter_segment(model, image, precision=precision, device=device), record),  # noqa: B023
                    repeats,
                )
                network = record.network_seconds
                predicted, _ = timed(lambda: nu.predict(model, image, precision=precision, device=device), repeats)  # noqa: B023
                plan, dtype = record.plan, resolve_precision(precision, torch.device(device))
                flops = forward_flops(model.config, (plan.n_tiles, model.config.in_channels, *plan.tile))
                rows.append(
                    (
                        f"{size}x{size}",
                        precision_name(dtype),
                        "on" if autotune else "off",
                        f"{plan.tile[0]}x{plan.tile[1]} x{plan.n_tiles}, batch {record.batch}",
                        f"{1000 * total:.1f}",
                        f"{1000 * network:.1f}",
                        f"{1000 * (predicted - network):.1f}",
                        f"{1000 * (total - predicted):.1f}",
                        f"{flops / network / 1e12:.1f}",
                        f"{flops / network / limit[precision_name(dtype)]:.0%}",
                    )
                )
                if reference is None:
                    reference = labels
                if autotune:
                    ap = match_instances(labels, truth, thresholds=(0.5,))[0].ap
                    agreement.append(
                        (f"{size}x{size}", precision_name(dtype), f"{pixel_iou(labels, reference):.4f}", f"{ap:.3f}")
                    )
    headers = ["image", "precision", "cudnn autotune", "tiles", "end to end ms", "network ms", "rest of predict ms"]
    headers += ["post-processing ms", "network TFLOP/s", "of limit"]
    print(format_table(headers, rows))
    print()
    print(format_table(["image", "precision", "foreground IoU with fp32", "AP@0.5 against truth"], agreement))
    torch.backends.cudnn.benchmark = False


def layout_section(model: nu.UNet, device: str, tile: int, batch: int, repeats: int) -> None:
    """One batch of tiles through the network in both memory layouts, autotuner on."""
    torch.backends.cudnn.benchmark = True
    x = torch.randn(batch, model.config.in_channels, tile, tile, device=device)
    flops = forward_flops(model.config, tuple(x.shape))
    rows = []
    for precision in PRECISIONS:
        dtype = resolve_precision(precision, torch.device(device))
        for layout in (torch.contiguous_format, torch.channels_last):
            network = copy.deepcopy(model).to(device).eval().to(memory_format=layout)
            inputs = x.contiguous(memory_format=layout)

            def forward(network=network, inputs=inputs, dtype=dtype):
                autocast = torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)
                with torch.inference_mode(), autocast:
                    return network(inputs)

            seconds, _ = timed(forward, repeats)
            name = "channels-last" if layout == torch.channels_last else "channels-first"
            rows.append((precision, name, f"{1000 * seconds:.2f}", f"{flops / seconds / 1e12:.1f}"))
    print(f"one forward pass of {batch} tile(s) of {tile}x{tile}, autotuner on:")
    print(format_table(["precision", "layout", "ms", "TFLOP/s"], rows))
    torch.backends.cudnn.benchmark = False


def profile_section(model: nu.UNet, device: str, size: int = 512, rows: int = 18) -> None:
    """Where one segmentation's time goes, by the functions' own time (after a warm-up)."""
    import cProfile
    import pstats

    image, _, _ = benchmark_image((size, size))
    torch.backends.cudnn.benchmark = True
    nu.segment(model, image, device=device)
    profile = cProfile.Profile()
    profile.enable()
    nu.segment(model, image, device=device)
    synchronize()
    profile.disable()
    print(f"one {size}x{size} segmentation, default precision, autotuner on:")
    pstats.Stats(profile, stream=sys.stdout).sort_stats("tottime").print_stats(rows)
    torch.backends.cudnn.benchmark = False


# --------------------------------------------------------------------------- training


def training_row(name: str, model_config, config, data, layout, workers: int | None, limit: dict) -> tuple:
    """One training run's table row: steps/s after the warm-up, with cuDNN's autotuner on.
    ``layout``/``workers``: the memory layout and the sampling threads (``None``: the trainer's own)."""
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    images, labels = zip(*data)
    began = time.perf_counter()
    trainer = nu.Trainer(nu.UNet.from_config(model_config), list(images), list(labels), config)
    if layout is not None:
        trainer.layout = layout
    if workers is not None:
        trainer.sampling_workers = workers
    rate, wait = timed_steps(trainer.run())
    torch.backends.cudnn.benchmark = False
    tile = trainer.tile if isinstance(trainer.tile, tuple) else (trainer.tile,) * model_config.ndim
    useful = 3 * forward_flops(model_config, (config.batch_size, model_config.in_channels, *tile)) * rate
    precision = precision_name(trainer.dtype)
    return (
        name,
        f"{'x'.join(map(str, tile))}x{config.batch_size}",
        precision,
        "channels-last" if trainer.layout in (torch.channels_last, torch.channels_last_3d) else "channels-first",
        str(trainer.sampling_workers),
        f"{rate:.1f}",
        f"{rate * config.batch_size:.1f}",
        f"{100 * wait:.0f}%",
        f"{useful / 1e12:.1f}",
        f"{useful / limit[precision]:.1%}",
        f"{time.perf_counter() - began:.0f}",
    )


def train_section(device: str, limit: dict, steps: int) -> None:
    """The paper network (tile 572) in fp32 and bf16, both layouts, batch 1 and 4; in
    bf16 with one sampling thread and with the trainer's number; the GPU's 3D default."""
    from napari_unet.core.synthetic import synthetic_dataset
    from napari_unet.core.synthetic_volume import synthetic_volume

    data = synthetic_dataset(4, (700, 700), seed=0)
    rows = []
    paper = nu.ModelConfig()
    for batch in (1, 4):
        for precision in ("fp32", "bf16"):
            for layout in (torch.contiguous_format, torch.channels_last):
                for workers in (1, None) if precision == "bf16" else (None,):
                    config = nu.TrainConfig(tile=572, batch_size=batch, steps=steps, device=device, precision=precision)
                    rows.append(training_row("paper 2D", paper, config, data, layout, workers, limit))
                    print(" ".join(rows[-1]), flush=True)
    volume = [synthetic_volume((96, 160, 160), spacing=(1.0, 1.0, 1.0), seed=0)]
    config3d = nu.default_model_config(device, ndim=3)
    steps_3d = max(steps // 2, WARMUP_STEPS + 3)
    for workers in (1, None):
        config = nu.TrainConfig(batch_size=1, steps=steps_3d, device=device, precision="bf16")
        rows.append(training_row("GPU 3D default", config3d, config, volume, None, workers, limit))
    headers = ["network", "tile x batch", "precision", "layout", "sampling threads", "steps/s", "samples/s"]
    print(format_table([*headers, "data wait", "useful TFLOP/s", "of limit", "run s"], rows))


# --------------------------------------------------------------------------- checks


def small_trainer(device: str, precision: str, steps: int, checkpoint=None, seed: int = 3) -> nu.Trainer:
    image, labels = nu.synthetic_nuclei((256, 256), seed=seed)
    torch.manual_seed(1)
    model = nu.UNet(base_channels=16, depth=3, batch_norm=True)
    config = nu.TrainConfig(steps=steps, tile=124, batch_size=2, device=device, precision=precision, warmup_steps=2)
    return nu.Trainer(model, [image], [labels], config, checkpoint_path=checkpoint)


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


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--train-seconds", type=float, default=45.0, help="training of the paper network first")
    parser.add_argument("--sections", nargs="+", default=["limits", "checks", "segment", "train"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30, help="training steps per setting")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA GPU that torch can see")
    print_header("GPU: speed tables and checks")
    limit = {}
    sections = {
        "limits": lambda: limit.update(limits_section(args.device)),
        "segment": lambda: segment_section(model, args.device, limit, args.sizes, args.repeats),
        "layout": lambda: layout_section(model, args.device, 700, 1, args.repeats),
        "profile": lambda: profile_section(model, args.device),
        "train": lambda: train_section(args.device, limit, args.steps),
        "checks": lambda: checks_section(model, args.device, workdir),
    }
    if "segment" in args.sections:
        at = args.sections.index("segment") + 1
        args.sections[at:at] = ["layout", "profile"]
    began = time.perf_counter()
    model, note = paper_model(None, args.train_seconds / 60.0)
    print(f"paper network: {note} ({time.perf_counter() - began:.0f} s)\n")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name in args.sections:
            print(f"## {name}", flush=True)
            began = time.perf_counter()
            try:
                sections[name]()
            except Exception:
                traceback.print_exc(file=sys.stdout)
                FAILED.append(f"section {name} raised")
            print(f"({name}: {time.perf_counter() - began:.0f} s)\n", flush=True)
    print(f"checks failed: {len(FAILED)}" + (f" ({'; '.join(FAILED)})" if FAILED else ""))


if __name__ == "__main__":
    main()
