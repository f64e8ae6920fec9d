"""The machine's limit: achieved FLOP/s of one large 3x3 convolution.

Run ``python bench/bench_limits.py`` (options: ``--shapes``, ``--repeats``). Times
3x3 unpadded convolutions of ``C -> C`` channels on ``1 x C x S x S`` inputs and
counts ``2 * Cin * Cout * 9 * Hout * Wout`` FLOPs. The default shapes all have
about 19 GFLOP: 64 -> 64 on 512 x 512 (the paper network's widest layer),
128 -> 128 on 256 x 256 and 256 -> 256 on 128 x 128 (the same work with fewer
pixels: less memory traffic per FLOP).

Each precision and shape is timed in the ways torch offers (NCHW and channels-last
layouts; bf16 through autocast and with bf16 tensors; oneDNN with weights
reordered once) and the *limit* of a precision is the best of all: the fastest
convolution torch reaches on this machine. Other benchmarks call :func:`measure_limits` in the same
run, and re-sample the best variant between their own timings
(:class:`LimitProbe`), to report their speed as a fraction of the limit under the
same load. On a CUDA GPU, fp32 (TF32 off), bf16 and fp16 are timed too.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from common import OtherLoad, conv_flops, format_table, measure, median, print_header, synchronize
from napari_unet.core.devices import cpu_has_bf16, precision_name

#: The dtype of each precision, by the names napari_unet uses (bench_segment looks
#: limits up by ``precision_name`` of the dtype predict resolves).
_DTYPES = {precision_name(dtype): dtype or torch.float32 for dtype in (None, torch.bfloat16, torch.float16)}
PACKED = "channels-last oneDNN packed"


@dataclass(frozen=True)
class Measurement:
    device: str
    precision: str
    variant: str
    seconds: float
    flops: int
    size: int
    channels: int

    @property
    def flop_per_s(self) -> float:
        return self.flops / self.seconds


def variants(device: torch.device, precision: str) -> list[str]:
    """Names of the ways to run one convolution in ``precision`` on ``device``."""
    names = []
    for layout in ("nchw", "channels-last"):
        names += [layout] if precision == "fp32" else [f"{layout} autocast", f"{layout} {precision} tensors"]
    if device.type == "cpu" and precision in ("fp32", "bf16") and torch.backends.mkldnn.is_available():
        names.append(PACKED)
    return names


def make_conv(device: str, precision: str, variant: str, size: int = 512, channels: int = 64) -> Callable:
    """A no-argument function running the convolution once (inputs made here, seeded)."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(channels, channels, 3, 3, generator=generator) * (2 / (9 * channels)) ** 0.5
    bias = torch.zeros(channels)
    x = torch.randn(1, channels, size, size, generator=generator)
    dtype = _DTYPES[precision]
    if variant == PACKED:
        x = x.to(dtype).contiguous(memory_format=torch.channels_last)
        packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
            weight.to(dtype).contiguous().to_mkldnn(), [0, 0], [1, 1], [1, 1], 1, list(x.shape)
        )
        op = torch.ops.mkldnn._convolution_pointwise
        bias = bias.to(dtype)

        def run_packed():
            with torch.inference_mode():
                return op(x, packed, bias, [0, 0], [1, 1], [1, 1], 1, "none", [], "")

        return run_packed
    layout = torch.channels_last if variant.startswith("channels-last") else torch.contiguous_format
    tensor_dtype = torch.float32 if "autocast" in variant else dtype
    weight = weight.to(device, tensor_dtype).contiguous(memory_format=layout)
    bias = bias.to(device, tensor_dtype)
    x = x.to(device, tensor_dtype).contiguous(memory_format=layout)

    def run():
        context = torch.autocast(device.type, dtype=dtype) if "autocast" in variant else contextlib.nullcontext()
        with torch.inference_mode(), context:
            return torch.nn.functional.conv2d(x, weight, bias)

    return run


def default_precisions(device: torch.device) -> tuple[str, ...]:
    if device.type == "cuda":
        return ("fp32", "bf16", "fp16")
    return ("fp32", "bf16") if cpu_has_bf16() else ("fp32",)


#: (channels, size) of the default convolutions, about 19 GFLOP each.
SHAPES = ((64, 512), (128, 256), (256, 128))


def measure_limits(
    shapes: tuple[tuple[int, int], ...] = SHAPES,
    repeats: int = 5,
    devices: list[str] | None = None,
    precisions: tuple[str, ...] | None = None,
) -> list[Measurement]:
    """Median seconds and FLOP/s of 3x3 ``C -> C`` convolutions on ``S x S`` inputs
    for each ``(C, S)`` in ``shapes``.

    One :class:`Measurement` per device, precision, shape and variant (see
    :func:`limits` for the best per precision). CPU: fp32, and bf16 where the CPU
    has bf16 instructions; CUDA: fp32 (TF32 off), bf16, fp16.
    """
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    runners = []
    for name in devices:
        device = torch.device(name)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cudnn.benchmark = True
        for precision in precisions or default_precisions(device):
            for channels, size in shapes:
                for variant in variants(device, precision):
                    try:
                        run = make_conv(name, precision, variant, size, channels)
                        measure(run, repeats=0, warmup=2, device=device)
                    except (RuntimeError, AttributeError):  # a variant this build lacks
                        continue
                    runners.append((name, precision, variant, channels, size, run))
    # round-robin: every variant is sampled across the whole measurement, so a burst
    # of load from other processes does not fall on one variant only
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(repeats):
        for index, (name, *_, run) in enumerate(runners):
            times[index] += measure(run, repeats=1, warmup=0, device=name)
    return [
        Measurement(name, precision, variant, median(seconds), conv_flops(c, c, 3, s - 2, s - 2), s, c)
        for (name, precision, variant, c, s, _), seconds in zip(runners, times)
    ]


def best(measurements: list[Measurement]) -> dict[tuple[str, str], Measurement]:
    """The fastest measurement per (device, precision)."""
    result: dict[tuple[str, str], Measurement] = {}
    for m in measurements:
        key = (m.device, m.precision)
        if key not in result or m.flop_per_s > result[key].flop_per_s:
            result[key] = m
    return result


def limits(measurements: list[Measurement]) -> dict[tuple[str, str], float]:
    """The best FLOP/s per (device, precision): the machine's limit for that precision."""
    return {key: m.flop_per_s for key, m in best(measurements).items()}


class LimitProbe:
    """Re-measures the limit's convolution between other timings, so a benchmark can
    divide by a limit taken under the same load as its own numbers."""

    def __init__(self, limit: Measurement) -> None:
        self.limit = limit
        self.run = make_conv(limit.device, limit.precision, limit.variant, limit.size, limit.channels)
        self.samples: list[float] = []
        self.run()

    def sample(self, calls: int = 3) -> float:
        """FLOP/s of the median of ``calls`` calls; also kept in ``samples``."""
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            self.run()
            synchronize(self.limit.device)
            times.append(time.perf_counter() - start)
        value = self.limit.flops / statistics.median(times)
        self.samples.append(value)
        return value

    @property
    def flop_per_s(self) -> float:
        """Median of all samples (the limit under this run's load)."""
        return statistics.median(self.samples) if self.samples else self.limit.flop_per_s


def limits_table(measurements: list[Measurement]) -> str:
    top = limits(measurements)
    rows = []
    for m in measurements:
        fraction = m.flop_per_s / top[(m.device, m.precision)]
        rows.append(
            (
                m.device,
                m.precision,
                f"{m.channels}->{m.channels} on {m.size}x{m.size}",
                m.variant,
                f"{1000 * m.seconds:.1f}",
                f"{m.flop_per_s / 1e9:.0f}",
                f"{fraction:.2f}" + ("  <- limit" if fraction == 1.0 else ""),
            )
        )
    headers = ("device", "precision", "conv", "variant", "ms (median)", "GFLOP/s", "of limit")
    return format_table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=[f"{c}x{s}" for c, s in SHAPES],
        help="convolutions as CHANNELSxSIZE, e.g. 64x512 (C -> C channels on a SIZE x SIZE input)",
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (median reported)")
    args = parser.parse_args()
    shapes = tuple(tuple(int(v) for v in shape.split("x")) for shape in args.shapes)
    print_header("Machine limit: large 3x3 convolutions")
    for channels, size in shapes:
        flops = conv_flops(channels, channels, 3, size - 2, size - 2)
        print(f"conv {channels}->{channels}, 3x3 valid, input 1x{channels}x{size}x{size}: {flops / 1e9:.2f} GFLOP")
    print(f"median of {args.repeats} calls after 2 warm-up calls, variants timed round-robin")
    print()
    with OtherLoad() as load:
        measurements = measure_limits(shapes, args.repeats)
    print(limits_table(measurements))
    print(load.describe())


if __name__ == "__main__":
    main()
