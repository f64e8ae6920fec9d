"""Shared helpers for the benchmarks: machine description, timing, FLOP counting, tables.

Benchmarks print plain-text tables of measured numbers. Timings are medians of
repeats after warm-up runs, because the machines they run on are often shared.
"""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch

import napari_unet
from napari_unet import TileProgress
from napari_unet.core.config import ModelConfig
from napari_unet.core.geometry import TilePlan
from napari_unet.core.layer_plan import forward_flops
from napari_unet.core.progress import drive


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else platform)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_description() -> list[str]:
    """Lines describing the machine and software the numbers were measured on."""
    flags = cpu_flags()
    simd = [name for name in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if name in flags]
    lines = [
        f"cpu: {cpu_model()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}, "
        f"isa: {' '.join(simd) or 'unknown'}",
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"numpy {__import__('numpy').__version__}, {platform.system()} {platform.release()}",
    ]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            lines.append(f"gpu {index}: {torch.cuda.get_device_name(index)}")
    else:
        lines.append("gpu: none visible to torch")
    try:
        load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
        lines.append(f"load average at start: {load} (other processes share this machine)")
    except OSError:
        pass
    return lines


def command_line() -> str:
    """The exact command that is running, to print with its results."""
    return " ".join(shlex.quote(part) for part in [os.path.basename(sys.executable), *sys.argv])


def print_header(title: str) -> None:
    print(f"# {title}")
    print(f"command: {command_line()}")
    for line in machine_description():
        print(line)
    print()


def synchronize(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(function: Callable[[], object], repeats: int = 5, warmup: int = 1, device="cpu") -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``function`` after ``warmup`` calls."""
    for _ in range(warmup):
        function()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


class OtherLoad:
    """How busy other processes kept the CPUs while a benchmark ran (Linux only).

    Reads the machine's busy time from /proc/stat and subtracts this process's own
    CPU time; ``share`` is the other processes' busy time as a fraction of all CPUs.
    """

    def __enter__(self) -> OtherLoad:
        self._start = (_machine_busy(), _own_cpu(), time.perf_counter())
        self.share = float("nan")
        return self

    def __exit__(self, *exc) -> None:
        busy, own, wall = _machine_busy(), _own_cpu(), time.perf_counter()
        if busy is None or self._start[0] is None:
            return
        elapsed = (wall - self._start[2]) * (os.cpu_count() or 1)
        other = (busy - self._start[0]) - (own - self._start[1])
        self.share = max(0.0, other / elapsed) if elapsed > 0 else float("nan")

    def describe(self) -> str:
        if self.share != self.share:
            return "CPU time used by other processes: unknown"
        return f"CPU time used by other processes during the run: {100 * self.share:.0f}% of all cores"


def _machine_busy() -> float | None:
    try:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


# --------------------------------------------------------------------------- predictions


class TileRecord:
    """What the :class:`napari_unet.TileProgress` records of one prediction tell: pass
    an instance as ``on_item`` to :func:`napari_unet.core.progress.drive` with
    ``iter_predict`` or ``iter_segment``.

    ``plan``: the tile plan of a plane; ``batch``: tiles per forward pass (those the
    first record counts); ``network_seconds``: seconds spent in the network (forward
    passes and softmax), as the last record counts them.
    """

    def __init__(self) -> None:
        self.first: TileProgress | None = None
        self.last: TileProgress | None = None

    def __call__(self, progress: TileProgress) -> None:
        if self.first is None:
            self.first = progress
        self.last = progress

    @property
    def plan(self) -> TilePlan:
        return self.last.plan

    @property
    def batch(self) -> int:
        return self.first.done

    @property
    def network_seconds(self) -> float:
        return self.last.network_seconds


# --------------------------------------------------------------------------- FLOPs


def conv_flops(c_in: int, c_out: int, kernel: int, out_h: int, out_w: int) -> int:
    """Multiply-adds x 2 of a dense convolution (bias and activation not counted)."""
    return 2 * c_in * c_out * kernel * kernel * out_h * out_w


def plan_flops(plan: TilePlan, config: ModelConfig) -> int:
    """FLOPs of all tiles of ``plan`` (one image plane) through a network of ``config``
    (:func:`napari_unet.core.layer_plan.forward_flops` of a batch of all the tiles)."""
    return forward_flops(config, (plan.n_tiles, config.in_channels, *plan.tile))


# --------------------------------------------------------------------------- tables


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table; floats are printed as given (format them before)."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(str(h)), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    lines = [
        "  ".join(str(h).ljust(w) for h, w in zip(headers, widths)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


# --------------------------------------------------------------------------- models and images

#: Where briefly trained benchmark models are kept between runs.
CACHE_DIR = os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "napari-unet-bench"
)


def cpu_default_model(steps: int, seed: int = 0):
    """The CPU default network trained ``steps`` steps on synthetic nuclei (cached in
    :data:`CACHE_DIR`), and a line saying where it came from."""
    import napari_unet as nu

    path = os.path.join(CACHE_DIR, f"cpu_default_synthetic_{steps}steps_seed{seed}.safetensors")
    if os.path.exists(path):
        return nu.load_model(path), f"cached at {path}"
    data = [nu.synthetic_nuclei((256, 256), seed=seed + i) for i in range(6)]
    model = nu.UNet.from_config(nu.default_model_config("cpu"))
    summary = nu.train(model, [d[0] for d in data], [d[1] for d in data], steps=steps, device="cpu", seed=seed)
    os.makedirs(CACHE_DIR, exist_ok=True)
    nu.save_model(model, path)
    return model, f"trained {summary.steps} steps in {summary.seconds:.0f} s, saved to {path}"


def kept_split(folder):
    """What ``bench_real.py --keep DIR`` left in one split's folder: the trained model,
    the test image shaped as its true labels (planes of a stack: (N, H, W)), and the
    true labels."""
    import napari_unet as nu
    from napari_unet.core.io import read_image

    truth = read_image(os.path.join(folder, "test_truth.npy"))
    test = read_image(os.path.join(folder, "test.tif")).reshape(truth.shape)
    return nu.load_model(os.path.join(folder, "model.safetensors")), test, truth


def kept_probabilities(folder, model, test):
    """The probabilities of ``model`` on ``test`` (from :func:`kept_split` of ``folder``),
    predicted once and cached in the folder as ``probs.npy``."""
    import numpy as np

    import napari_unet as nu

    cache = os.path.join(folder, "probs.npy")
    if os.path.exists(cache):
        return np.load(cache)
    probabilities = nu.predict(model, test, device="cpu")
    np.save(cache, probabilities)
    return probabilities


def benchmark_image(shape: tuple[int, int], seed: int = 1):
    """A realistic test image (H, W), its labels and a description: synthetic
    fluorescent nuclei (:func:`napari_unet.synthetic_nuclei`)."""
    image, labels = napari_unet.synthetic_nuclei(shape, seed=seed)
    return image, labels, f"synthetic_nuclei(shape={shape}, seed={seed})"


def paper_model(model_path: str | None = None, train_minutes: float = 0.0, seed: int = 0):
    """The paper network (base 64, depth 4) and a line saying what its weights are.

    ``model_path``: a model file to load. Else, with ``train_minutes > 0``, the paper
    network briefly trained on synthetic nuclei (kept in :data:`CACHE_DIR` and reused
    by later runs); else randomly initialised (He init, seeded).
    """
    if model_path:
        model = napari_unet.load_model(model_path).eval()
        return model, f"loaded from {model_path}"
    if train_minutes > 0:
        path = os.path.join(CACHE_DIR, f"paper_unet_synthetic_{train_minutes:g}min_seed{seed}.unet")
        if os.path.exists(path):
            model = napari_unet.load_model(path).eval()
            return model, f"briefly trained, cached at {path}: {_training_note(model)}"
        os.makedirs(CACHE_DIR, exist_ok=True)
        model = _train_briefly(train_minutes, seed, path)
        return model, f"briefly trained, saved to {path}: {_training_note(model)}"
    torch.manual_seed(seed)
    return napari_unet.UNet().eval(), f"RANDOMLY INITIALISED paper network (He init, torch seed {seed})"


def _training_note(model) -> str:
    info = getattr(model, "metadata", {}).get("training", {})
    validation = info.get("validation") or {}
    ap = validation.get("ap50")
    return (
        f"{info.get('steps', '?')} steps in {info.get('seconds', '?')} s on synthetic nuclei, tile "
        f"{info.get('tile', '?')}, {info.get('precision', '?')}"
        + (f", validation AP@0.5 {ap:.3f}, pixel IoU {validation.get('pixel_iou', 0):.3f}" if ap else "")
    )


def _train_briefly(minutes: float, seed: int, path: str):
    """The paper network trained for ``minutes`` on synthetic nuclei, validated once at
    the end and saved to ``path`` with its training record."""
    from napari_unet.core.synthetic import synthetic_dataset

    data = synthetic_dataset(8, (256, 256), seed=seed)
    val_image, val_labels = synthetic_dataset(1, (512, 512), seed=seed + 1000)[0]
    torch.manual_seed(seed)
    model = napari_unet.UNet()
    config = napari_unet.TrainConfig(
        steps=100_000,
        minutes=minutes,
        batch_size=2,
        schedule="constant",
        seed=seed,
        validate_every=100_000,  # the run stops on time, not at a step: validated once below
    )
    trainer = napari_unet.Trainer(
        model,
        [image for image, _ in data],
        [labels for _, labels in data],
        config,
        val_images=[val_image],
        val_labels=[val_labels],
    )
    drive(trainer.run())
    trainer.last_validation = trainer.validate()
    trainer.save_model(path)
    model.metadata = trainer.metadata()
    return model.eval()


def counted_flops(module: torch.nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass as torch's FlopCounterMode counts them, on a copy of
    ``module`` on the meta device (no memory, no compute). A cross-check of
    :func:`napari_unet.core.layer_plan.forward_flops` and the counter for networks without
    an analytic formula."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(module).to("meta").eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(torch.empty(*input_shape, device="meta"))
    return counter.get_total_flops()
