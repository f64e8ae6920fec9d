"""Large images: peak memory and throughput of the in-memory and the streamed path.

Run ``python bench/bench_big.py`` (``--help`` for options). Each case runs in a
fresh Python process, so that its peak resident memory (``ru_maxrss``) is its own:

- ``memory 4096``: ``napari_unet.segment`` of a 4096 x 4096 uint8 image held in memory;
- ``streamed 4096``: ``napari_unet.segment_to`` of the same image stored as zarr
  (chunks of 1024 px) into an OME-Zarr store (labels, pyramid);
- ``streamed 16384``: the same for a 16384 x 16384 uint8 zarr image (``--big 0`` skips it);
- ``workers 1`` / ``workers 2``: ``segment_to`` of the 4096 x 4096 zarr image on a local
  dask.distributed cluster of 1 and 2 worker processes (the workers' peak memory is
  reported separately from the driver's).

The model is the CPU default network (base 16, depth 3) in fp32 with weights that
pass the image through and threshold it (so the nuclei become objects and the
labelling has real work; the convolutions cost the same with any weights), or
``--model FILE``.
The images are synthetic nuclei (``napari_unet.synthetic_nuclei``, 4096 x 4096,
rescaled to uint8); the 16384 x 16384 image repeats that one 4 x 4 times, written
block by block. Mpx/s counts image pixels per second of the whole call (reading,
prediction, labelling, writing; for the stores also the pyramid); on a shared machine
wall-clock time depends on the other processes, so the CPU seconds the case used
(its own process, and for the cluster cases its workers' too) and the seconds spent in
the network are reported as well. The in-memory and streamed 4096 cases are run
``--rounds`` times, alternately, and the medians reported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import CACHE_DIR, OtherLoad, format_table, print_header

HERE = Path(__file__).resolve().parent


def _rss_mib() -> float:
    """Peak resident memory of this process so far (VmHWM: unlike ru_maxrss it starts
    afresh at exec, so a case does not inherit the peak of the process that started it)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process so far."""
    times = os.times()
    return times.user + times.system


def _model(path: str | None):
    """The CPU default network (base 16, depth 3) with weights that pass the image
    straight through its top level and call bright pixels foreground, so the nuclei
    come out as objects and labelling does realistic work; the convolutions cost what
    they cost with any weights. Or the model in ``path``."""
    import torch

    import napari_unet as nu
    from napari_unet.core.config import default_model_config

    if path:
        return nu.load_model(path)
    model = nu.UNet.from_config(default_model_config("cpu")).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        for conv in (model.down[0][0], model.down[0][2], model.up_conv[-1][0], model.up_conv[-1][2]):
            conv.weight[0, 0, 1, 1] = 1.0
        model.up_conv[-1][0].weight[0, model.config.base_channels, 1, 1] = 1.0
        model.head.weight[1, 0] = 20.0
        model.head.bias[1] = -8.0
    return model


def make_images(folder: Path, big: int) -> None:
    """The 4096 x 4096 zarr image and (``big > 0``) the big one, unless present."""
    import zarr

    import napari_unet as nu

    small = folder / "image_4096.zarr"
    if not small.exists():
        image, _ = nu.synthetic_nuclei((4096, 4096), seed=1)
        image = (image.astype(np.float32) * (255.0 / max(float(image.max()), 1.0))).astype(np.uint8)
        array = zarr.create_array(small.with_suffix(".tmp"), shape=image.shape, chunks=(1024, 1024), dtype="uint8")
        array[:] = image
        os.rename(small.with_suffix(".tmp"), small)
    if big:
        large = folder / f"image_{big}.zarr"
        if not large.exists():
            tile = zarr.open_array(small, mode="r")[:]
            array = zarr.create_array(large.with_suffix(".tmp"), shape=(big, big), chunks=(1024, 1024), dtype="uint8")
            for top in range(0, big, 4096):
                for left in range(0, big, 4096):
                    h, w = min(4096, big - top), min(4096, big - left)
                    array[top : top + h, left : left + w] = tile[:h, :w]
            os.rename(large.with_suffix(".tmp"), large)


def run_case(case: str, folder: Path, model_path: str | None, size: int) -> dict:
    """One case in this process; returns its measurements."""
    import dask.array  # noqa: F401 - one-time imports stay out of the timings, as torch's do
    import ome_zarr.writer  # noqa: F401
    import torch
    import zarr

    import napari_unet as nu
    from napari_unet.core.progress import drive

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    model = _model(model_path)
    source = folder / f"image_{size}.zarr"
    out = folder / f"out_{case.replace(' ', '_')}_{os.getpid()}.zarr"
    record: dict = {"case": case, "pixels": size * size}
    with OtherLoad() as load:
        if case.startswith("memory"):
            image = zarr.open_array(source, mode="r")[:]
            record["rss_before_mib"] = _rss_mib()
            network = []
            began, cpu = time.perf_counter(), _cpu_seconds()
            labels = drive(nu.iter_segment(model, image, precision="fp32"), network.append)
            record["seconds"], record["cpu_seconds"] = time.perf_counter() - began, _cpu_seconds() - cpu
            record["network_seconds"] = network[-1].network_seconds
            record["objects"] = int(labels.max())
        elif case.startswith("workers"):
            from napari_unet.core.cluster import cluster_client
            from napari_unet.core.stream import iter_segment_to

            workers = int(case.split()[1])
            record["rss_before_mib"] = _rss_mib()
            with cluster_client(workers=workers) as client:
                network = []
                worker_cpu = sum(client.run(_cpu_seconds).values())
                began, cpu = time.perf_counter(), _cpu_seconds()
                result = drive(iter_segment_to(model, source, out, precision="fp32", client=client), network.append)
                record["seconds"] = time.perf_counter() - began
                record["cpu_seconds"] = _cpu_seconds() - cpu + sum(client.run(_cpu_seconds).values()) - worker_cpu
                record["network_seconds"] = network[-1].network_seconds
                peaks = client.run(_rss_mib)
            record["worker_rss_mib"] = max(peaks.values())
            record["objects"] = sum(result.n_objects)
        else:
            record["rss_before_mib"] = _rss_mib()
            network = []
            began, cpu = time.perf_counter(), _cpu_seconds()
            result = drive(nu.iter_segment_to(model, source, out, precision="fp32"), network.append)
            record["seconds"], record["cpu_seconds"] = time.perf_counter() - began, _cpu_seconds() - cpu
            record["network_seconds"] = network[-1].network_seconds
            record["objects"] = sum(result.n_objects)
    shutil.rmtree(out, ignore_errors=True)
    record["peak_rss_mib"] = _rss_mib()
    record["other_load"] = load.share
    record["torch_threads"] = torch.get_num_threads()
    return record


def in_subprocess(case: str, size: int, args) -> dict:
    command = [sys.executable, str(Path(__file__)), "--case", case, "--size", str(size), "--folder", str(args.folder)]
    if args.model:
        command += ["--model", args.model]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"case {case} failed (exit status {done.returncode}):\n{done.stderr[-3000:]}", flush=True)
        return None
    record = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"done: {json.dumps(record)}", flush=True)  # kept even if a later case fails
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a model file (default: the CPU default network, seeded)")
    parser.add_argument("--big", type=int, default=16384, help="edge of the big streamed image (0: skip it)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the 4096 x 4096 cases (0: none)")
    parser.add_argument("--no-workers", action="store_true", help="skip the dask.distributed cases")
    parser.add_argument("--folder", type=Path, default=Path(CACHE_DIR) / "big", help="where the images are kept")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=4096, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.folder, args.model, args.size)))
        return

    print_header("Large images: in memory vs streamed to OME-Zarr (bench_big.py)")
    args.folder.mkdir(parents=True, exist_ok=True)
    make_images(args.folder, args.big)
    plan = [("memory 4096", 4096), ("streamed 4096", 4096)] * args.rounds
    if not args.no_workers:
        plan += [("workers 1", 4096), ("workers 2", 4096)]
    if args.big:
        plan.append((f"streamed {args.big}", args.big))
    records: dict[str, list[dict]] = {}
    for case, size in plan:
        record = in_subprocess(case, size, args)
        if record is not None:
            records.setdefault(case, []).append(record)

    rows = []
    for case, runs in records.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        cpu = statistics.median(r["cpu_seconds"] for r in runs)
        network = statistics.median(r["network_seconds"] for r in runs)
        first = runs[0]
        workers = f"{max(r['worker_rss_mib'] for r in runs):.0f}" if "worker_rss_mib" in first else "-"
        rows.append(
            [
                case,
                f"{first['pixels'] / 1e6:.1f}",
                f"{seconds:.1f}",
                f"{first['pixels'] / 1e6 / seconds:.2f}",
                f"{cpu:.1f}",
                f"{first['pixels'] / 1e6 / cpu:.2f}",
                f"{network:.1f}",
                f"{max(r['peak_rss_mib'] for r in runs):.0f}",
                f"{min(r['rss_before_mib'] for r in runs):.0f}",
                workers,
                f"{100 * max(r['other_load'] for r in runs):.0f}%",
                str(first["objects"]),
            ]
        )
    headers = ["case", "Mpx", "s", "Mpx/s", "CPU s", "Mpx/CPU s", "network s", "peak RSS MiB", "RSS before MiB",
               "worker RSS MiB", "other load", "objects"]  # fmt: skip
    print(format_table(headers, rows))
    for what, key in (("wall-clock", "seconds"), ("CPU-time", "cpu_seconds")):
        if "memory 4096" not in records or "streamed 4096" not in records:
            break
        memory = statistics.median(r[key] for r in records["memory 4096"])
        streamed = statistics.median(r[key] for r in records["streamed 4096"])
        print(f"streamed / in-memory {what} throughput at 4096 x 4096: {memory / streamed:.2f}")
    print(f"rounds: {args.rounds}; each case ran in its own process (peak RSS includes Python, torch and the model)")


if __name__ == "__main__":
    main()
