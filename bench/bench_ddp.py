"""Training throughput with 1 and with N data-parallel processes on this machine.

The CPU default network (16 base channels, depth 3) trains on synthetic nuclei with a
global batch of ``--batch-size`` samples; with N processes (gloo) each computes its
share of every batch and the cores are split between them, as ``napari-unet train
--nproc N`` does. Prints samples/s (steps after ``--warmup`` steps) per process count.

    .venv/bin/python bench/bench_ddp.py [--processes 1 2] [--steps 30] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))

import napari_unet as nu
from common import OtherLoad, format_table, print_header
from napari_unet.core.progress import drive


def _run(rank: int, world_size: int, folder: str, steps: int, warmup: int, batch_size: int) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world_size)
    data = [nu.synthetic_nuclei((256, 256), seed=i) for i in range(4)]
    torch.manual_seed(0)
    model = nu.UNet.from_config(nu.default_model_config("cpu"))
    times = []
    events = nu.iter_train(
        model, [d[0] for d in data], [d[1] for d in data], steps=steps, batch_size=batch_size, device="cpu"
    )
    drive(events, lambda event: times.append(time.perf_counter()) if isinstance(event, nu.StepProgress) else None)
    if rank == 0:
        seconds = times[-1] - times[warmup - 1]
        Path(folder, "result").write_text(f"{(steps - warmup) * batch_size / seconds}")
    if world_size > 1:
        dist.destroy_process_group()


def samples_per_second(world_size: int, steps: int, warmup: int, batch_size: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_run, args=(world_size, folder, steps, warmup, batch_size), nprocs=world_size, join=True)
        return float(Path(folder, "result").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    print_header("data-parallel training throughput (CPU default network, gloo)")
    rows = []
    with OtherLoad() as load:
        for world_size in args.processes:
            rate = samples_per_second(world_size, args.steps, args.warmup, args.batch_size)
            threads = max(1, (os.cpu_count() or 1) // world_size)
            rows.append([str(world_size), str(threads), f"{rate:.2f}"])
    baseline = float(rows[0][2])
    for row in rows:
        row.append(f"{float(row[2]) / baseline:.2f}x")
    print(format_table(["processes", "threads each", "samples/s", "vs first"], rows))
    print(f"global batch {args.batch_size}, {args.steps} steps ({args.warmup} warm-up); {load.describe()}")


if __name__ == "__main__":
    main()
