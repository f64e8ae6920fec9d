"""``napari-unet segment MODEL INPUT --out OUT.zarr``: streamed segmentation of a
large image into an OME-Zarr store (see :mod:`napari_unet.core.stream`)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from .cli_args import model_argument, positive_int
from .core.errors import ConfigError
from .core.instances import objects_counted
from .core.io import IMAGE_SUFFIXES
from .core.progress import drive
from .core.stream import DEFAULT_CHUNK, ChunkProgress, iter_segment_to


def add_stream_arguments(parser: argparse.ArgumentParser, outputs) -> None:
    """``--out`` (in the group ``outputs``, next to ``--out-dir``) and its options."""
    outputs.add_argument(
        "--out", type=Path, default=None,
        help="write one (large) image's labels into this OME-Zarr store, chunk by chunk (labels at OUT/0)",
    )  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue an interrupted --out run")
    parser.add_argument("--chunk", type=positive_int, default=DEFAULT_CHUNK, help="chunk edge of the --out store in px")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive_int, default=None, help="spread --out over N local worker processes")
    where.add_argument("--scheduler", default=None, help="spread --out over the dask cluster at this address")


#: Options of segment that --out cannot honour, and whether the user gave each.
IN_MEMORY_ONLY = {
    "--tta": lambda args: args.tta,
    "--rescale": lambda args: args.rescale != 1.0,
    "--split": lambda args: args.split not in (None, 0),  # 0: the components --out keeps anyway
    "--min-fill": lambda args: args.min_fill not in (None, 0),
}


def check_stream_arguments(args: argparse.Namespace) -> None:
    """Options of ``--out`` given without it, options it cannot honour
    (:data:`IN_MEMORY_ONLY`), or several inputs for one store."""
    if args.out is None:
        extra = [f"--{name}" for name in ("resume", "workers", "scheduler") if getattr(args, name)]
        extra += ["--chunk"] * ("chunk" in getattr(args, "given", ()))
        if extra:
            raise ConfigError(f"{', '.join(extra)} only {'apply' if len(extra) > 1 else 'applies'} with --out OUT.zarr")
        return
    in_memory = [option for option, given in IN_MEMORY_ONLY.items() if given(args)]
    if in_memory:  # each needs whole planes, or objects whole across chunks
        source = args.images[0]
        instead = (
            "drop them: a zarr store is segmented with --out only"
            if source.suffix.lower() == ".zarr" or source.is_dir()
            else "use --out-dir DIR for them"
        )
        raise ConfigError(
            f"{', '.join(in_memory)} {'work' if len(in_memory) > 1 else 'works'} on whole planes in memory, while "
            f"--out streams them in chunks: {instead} (the --out store keeps the objects the network's mask joins, "
            "as --split 0)"
        )
    if args.out.suffix.lower() in IMAGE_SUFFIXES:  # a store named so would be a folder that looks like a file
        raise ConfigError(
            f"--out writes an OME-Zarr store, a folder of chunks, not a {args.out.suffix} file: name it "
            f"{args.out.with_suffix('.zarr')}, or use --out-dir DIR for a NAME_labels.tif per image"
        )
    if len(args.images) != 1:
        raise ConfigError(f"--out writes one image's store; got {len(args.images)} inputs (use --out-dir for several)")
    if args.as_volume:
        raise ConfigError("--as-volume labels a whole stack at once, which --out streams in pieces: use --out-dir")


def cmd_segment_to(args: argparse.Namespace, options: dict) -> None:
    """Run the streamed segmentation of ``args.images[0]`` under one progress bar."""
    from .cli_args import instance_options, progress_bar

    if args.overwrite and args.out.exists() and not args.resume:
        raise ConfigError(
            f"--overwrite replaces files, not zarr stores: remove {args.out} first, or finish it with --resume"
        )
    model = model_argument(args)
    instances = instance_options(args, model.spec.instances)
    cluster = contextlib.nullcontext(None)
    if args.workers is not None or args.scheduler is not None:
        from .core.cluster import cluster_client

        cluster = cluster_client(workers=args.workers, scheduler=args.scheduler)
    source = args.images[0]
    with cluster as client, contextlib.ExitStack() as bars:
        bar = None

        def show(progress: ChunkProgress) -> None:
            nonlocal bar
            if bar is None:  # opened at the first chunk, so a bad input shows no bar before its error
                bar = bars.enter_context(progress_bar(desc=source.name, unit="chunk", total=progress.total))
            bar.update(progress.done - bar.n)

        run = iter_segment_to(
            model, source, args.out, chunk=args.chunk, probabilities=args.probabilities, resume=args.resume,
            client=client, instances=instances, **options,
        )  # fmt: skip
        try:
            result = drive(run, show)
        except KeyboardInterrupt:
            if args.out.exists():
                print(f"napari-unet: {args.out} is unfinished: run the same command with --resume to finish it",
                      file=sys.stderr)  # fmt: skip
            raise
    objects = objects_counted(result.n_objects)
    print(f"{source}: {objects} -> {result.path} (labels at {result.path / '0'})")
