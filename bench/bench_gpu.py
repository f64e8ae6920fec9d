"""The speed tables on a CUDA GPU, and checks of every path that runs there.

    python bench/bench_gpu.py [--device cuda] [--train-seconds 45] [--sections ...]

Sections (``--sections``, default all, in this order):

- ``limits``: the best 3x3 convolution per precision (bench_limits.py's probe, on
  larger inputs than the CPU's, where a launch costs more than the arithmetic).
- ``checks`` (gpu_checks.py): tiled prediction against a whole-image pass, the GPU against the CPU,
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
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch

import napari_unet as nu
from bench_limits import best, limits_table, measure_limits
from bench_train import WARMUP_STEPS, timed_steps
from common import TileRecord, benchmark_image, format_table, median, paper_model, print_header, synchronize
from gpu_checks import FAILED, checks_section
from napari_unet.core.devices import precision_name, resolve_precision
from napari_unet.core.layer_plan import forward_flops
from napari_unet.core.metrics import match_instances, pixel_iou
from napari_unet.core.progress import drive

#: (channels, size) of the limit's convolutions on a GPU: large enough that a launch
#: is a small part of each.
GPU_SHAPES = ((64, 1024), (128, 512), (256, 256), (512, 128))
PRECISIONS = ("fp32", "bf16", "fp16")


def timed(function, repeats: int, device: str) -> tuple[float, object]:
    """Median wall seconds of ``repeats`` calls after one warm-up call, and the last result."""
    result = function()
    times = []
    for _ in range(repeats):
        synchronize(device)
        began = time.perf_counter()
        result = function()
        synchronize(device)
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
                    device,
                )
                network = record.network_seconds
                predicted, _ = timed(
                    lambda: nu.predict(model, image, precision=precision, device=device),  # noqa: B023
                    repeats,
                    device,
                )
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

            seconds, _ = timed(forward, repeats, device)
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
    synchronize(device)
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
