"""napari-unet against peers on the same images and hardware, in the same run.

Run ``python bench/bench_peers.py`` (``--help`` for options; the MONAI rows need
MONAI: ``pip install monai`` or the ``bench`` extra; without it they are left out,
and the output says so). For each image size and precision
it times, round-robin so that all methods see the same load, from a raw image to
per-class probabilities (percentile normalisation included everywhere):

- ``napari_unet.predict``: overlap-tile prediction with the paper network;
- ``whole image, our fast path``: one forward pass of the same network over the
  whole mirror-padded image (one tile covering it, ``tiling.extract_tile``), with the same CPU kernels predict uses
  (``CpuInference``); the same function as tiling, computed without overlap;
- ``whole image, plain module``: the same single pass through the ``nn.Module``
  as written (NCHW, autocast for bf16), i.e. what a plain PyTorch loop does;
- ``ONNX Runtime fp32`` and ``int8``: the same module exported to ONNX at predict's tile
  shape and run by ONNX Runtime's CPU provider inside predict's own tile loop (so the
  same tiles, normalisation and stitching; ``onnx_peer.py``); int8 by ONNX Runtime's
  dynamic quantisation. fp32 rounds only; ``--agreement-steps`` also trains (once,
  cached) the CPU default network and prints how far int8 labels agree with fp32 ones;
- ``MONAI sliding_window_inference``: ``monai.networks.nets.BasicUNet`` with the
  paper's widths 64..1024, ReLU, no normalisation layers and padded ("same")
  convolutions (31.1 M parameters), MONAI's defaults: ROI ``--roi`` px, overlap
  0.25, constant blending, one window per batch.

It reports the median wall time, its ratio to ``napari_unet.predict`` and the
network FLOPs each method computes. Every timed call starts from the same memory
state (nothing kept from earlier calls), so predict's times are those of a call
after a pause. Whole-image passes that would need more than
``--max-gib`` of activation memory are skipped. Weights are random (speed does not
depend on them); the networks differ, so only times are compared, not outputs.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import napari_unet
import onnx_peer
from common import (
    OtherLoad,
    TileRecord,
    benchmark_image,
    counted_flops,
    cpu_default_model,
    format_table,
    median,
    plan_flops,
    print_header,
)
from napari_unet.core import geometry
from napari_unet.core.cpu_inference import CpuInference
from napari_unet.core.devices import autocast, resolve_precision
from napari_unet.core.layer_plan import forward_flops
from napari_unet.core.memory import release_kept_memory
from napari_unet.core.metrics import pixel_iou
from napari_unet.core.normalize import normalize
from napari_unet.core.progress import drive
from napari_unet.core.tiling import extract_tile

MONAI_MISSING = "MONAI NOT INSTALLED (pip install monai, or the bench extra): its rows are left out"
#: Peak activation bytes per pixel per base channel (measured, with headroom).
_WHOLE_BYTES = {"plain": {None: 26, torch.bfloat16: 14}, "fast": {None: 22, torch.bfloat16: 12}}


def mirror_padded(model, image: np.ndarray) -> np.ndarray:
    """The normalised image (1, C, H', W') mirror-padded to the smallest valid input
    whose output covers the image: the one tile of a plan with a tile that size."""
    plane = normalize(image[None].astype(np.float32), model.spec.normalization)
    depth = model.config.depth
    image_hw = plane.shape[-2:]
    tile = [geometry.input_size_for_output(n, depth) for n in image_hw]
    plan = geometry.plan_tiles(image_hw, tile, depth)
    return np.ascontiguousarray(extract_tile(plane, (0, 0), plan)[None])


def whole_image_fast(model, image, dtype):
    padded = mirror_padded(model, image)
    with torch.inference_mode():
        network = CpuInference(model, dtype or torch.float32, padded.shape)
        logits = network(torch.from_numpy(padded))
        probs = torch.softmax(logits.float(), dim=1)[0, :, : image.shape[0], : image.shape[1]]
    return probs.numpy()


def whole_image_plain(model, image, dtype):
    padded = mirror_padded(model, image)
    with torch.inference_mode(), autocast(torch.device("cpu"), dtype):
        logits = model(torch.from_numpy(padded))
    return torch.softmax(logits.float(), dim=1)[0, :, : image.shape[0], : image.shape[1]].numpy()


def monai_network():
    """MONAI's BasicUNet at the paper's widths, or ``None`` where MONAI is not installed."""
    if importlib.util.find_spec("monai") is None:
        return None
    from monai.networks.nets import BasicUNet

    torch.manual_seed(0)
    return BasicUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=2,
        features=(64, 128, 256, 512, 1024, 64),
        act="relu",
        norm=None,
    ).eval()


def monai_predict(network, image, dtype, roi: int, normalization):
    from monai.inferers import sliding_window_inference

    plane = normalize(image[None].astype(np.float32), normalization)
    with torch.inference_mode(), autocast(torch.device("cpu"), dtype):
        logits = sliding_window_inference(
            torch.from_numpy(plane[None]), (roi, roi), 1, network, overlap=0.25, mode="constant"
        )
    return torch.softmax(logits.float(), dim=1)[0].numpy()


def monai_flops(network, image_hw, roi: int) -> int:
    """FLOPs of MONAI's windows: count its windows like its scan-interval rule."""
    from monai.inferers.utils import _get_scan_interval, dense_patch_slices

    roi_size = tuple(min(roi, n) for n in image_hw)
    interval = _get_scan_interval(image_hw, roi_size, 2, (0.25, 0.25))
    windows = len(dense_patch_slices(image_hw, roi_size, interval))
    return windows * counted_flops(network, (1, 1, *roi_size)), windows


def ort_methods(model, image, tiles: TileRecord, folder: Path) -> dict:
    """ONNX Runtime fp32 and int8 on predict's tiles (the plan of its warm-up run)."""
    onnx_file = onnx_peer.export_valid_module(model, tiles.plan.tile, folder / f"paper_{image.shape[0]}.onnx")
    methods = {}
    for label, path in (("ONNX Runtime fp32", onnx_file), ("ONNX Runtime int8", onnx_peer.quantized(onnx_file))):
        ort_session = onnx_peer.session(path)

        def run(ort_session=ort_session):
            with onnx_peer.network_of_session(ort_session):
                return napari_unet.predict(model, image, precision="fp32", device="cpu")

        methods[label] = (run, plan_flops(tiles.plan, model.config), "predict's tiles")
    return methods


def int8_agreement(steps: int, size: int, seed: int, folder: Path) -> str:
    """Foreground IoU of int8 ONNX Runtime labels against fp32 predict's, for the CPU
    default network trained ``steps`` steps (random weights say nothing about labels)."""
    model, note = cpu_default_model(steps)
    image, _, _ = benchmark_image((size, size), seed=seed)
    tiles = TileRecord()
    reference = drive(napari_unet.iter_segment(model, image, device="cpu", precision="fp32"), tiles)
    onnx_file = onnx_peer.export_valid_module(model, tiles.plan.tile, folder / "cpu_default.onnx")
    with onnx_peer.network_of_session(onnx_peer.session(onnx_peer.quantized(onnx_file))):
        int8 = napari_unet.segment(model, image, device="cpu", precision="fp32")
    iou = pixel_iou(int8, reference)
    return (
        f"int8 vs fp32 labels, CPU default network ({note}), {size}x{size}: foreground IoU {iou:.4f}, "
        f"{int(int8.max())} vs {int(reference.max())} objects ({'agree' if iou >= 0.98 else 'do not agree'} "
        "by the >= 0.98 rule)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048], help="square image sizes (px)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (median reported)")
    parser.add_argument("--roi", type=int, default=512, help="MONAI sliding-window ROI (px)")
    parser.add_argument("--max-gib", type=float, default=8.0, help="skip whole-image passes needing more")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--agreement-steps", type=int, default=400, help="0: skip the int8 label agreement")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench_peers_"))
    print_header("Peers: napari_unet.predict vs whole-image pass vs MONAI sliding window")
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = napari_unet.UNet().eval()
    monai_net = monai_network()
    peer = (
        f"MONAI BasicUNet 64..1024, same convs, {sum(p.numel() for p in monai_net.parameters()) / 1e6:.2f} M parameters"
        if monai_net is not None
        else MONAI_MISSING
    )
    print(
        f"ours: paper U-Net, valid convs, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M "
        f"parameters; {peer}; random weights"
    )
    rows = []
    with OtherLoad() as load:
        for size in args.sizes:
            image, _, image_note = benchmark_image((size, size), seed=args.seed)
            print(f"image {size}x{size}: {image_note}")
            padded_side = geometry.input_size_for_output(size, model.config.depth)
            for precision in args.precisions:
                dtype = resolve_precision(precision, device)
                whole_flops = forward_flops(model.config, (1, model.config.in_channels, padded_side, padded_side))
                tiles = TileRecord()  # predict's tile plan, from its progress records
                methods = {
                    "napari_unet.predict": (
                        lambda image=image, precision=precision, tiles=tiles: drive(
                            napari_unet.iter_predict(model, image, precision=precision, device="cpu"), tiles
                        ),
                        None,  # FLOPs and work: from the plan of the warm-up run
                        None,
                    ),
                }
                pixels = padded_side**2 * model.config.base_channels / 2**30
                for kind, function, label in (
                    ("fast", whole_image_fast, "whole image, our fast path"),
                    ("plain", whole_image_plain, "whole image, plain module"),
                ):
                    need = pixels * _WHOLE_BYTES[kind].get(dtype, 26)
                    if need <= args.max_gib:
                        methods[label] = (
                            lambda f=function, image=image, dtype=dtype: f(model, image, dtype),
                            whole_flops,
                            f"1 pass {padded_side}x{padded_side}",
                        )
                    else:
                        rows.append((f"{size}x{size}", precision, label, "-", "-", f"skipped: ~{need:.1f} GiB", "-"))
                if monai_net is not None:
                    m_flops, windows = monai_flops(monai_net, (size, size), args.roi)
                    methods["MONAI sliding_window_inference"] = (
                        lambda image=image, dtype=dtype: monai_predict(
                            monai_net, image, dtype, args.roi, model.spec.normalization
                        ),
                        m_flops,
                        f"{windows} window(s) {min(args.roi, size)}x{min(args.roi, size)}",
                    )
                times = {name: [] for name in methods}
                for function, _, _ in methods.values():  # warm-up
                    function()
                methods["napari_unet.predict"] = (
                    methods["napari_unet.predict"][0],
                    plan_flops(tiles.plan, model.config),
                    f"{tiles.plan.n_tiles} tile(s) {tiles.plan.tile[0]}x{tiles.plan.tile[1]}",
                )
                if precision == "fp32" and onnx_peer.available():
                    onnx_runs = ort_methods(model, image, tiles, folder)
                    for function, _, _ in onnx_runs.values():  # warm-up
                        function()
                    methods.update(onnx_runs)
                    times.update({name: [] for name in onnx_runs})
                for _ in range(args.repeats):
                    for name, (function, _, _) in methods.items():
                        release_kept_memory()  # every method starts from the same memory state
                        start = time.perf_counter()
                        function()
                        times[name].append(time.perf_counter() - start)
                ours = np.array(times["napari_unet.predict"])
                for name, (_, flops, work) in methods.items():
                    seconds = np.array(times[name])
                    rows.append(
                        (
                            f"{size}x{size}",
                            precision,
                            name,
                            f"{median(seconds):.3f}",
                            f"{median(seconds) / median(ours):.2f}",
                            work,
                            f"{flops / 1e9:.0f}",
                        )
                    )
    print()
    print(load.describe())
    print()
    print(f"## Wall time from raw image to probabilities (s; median of {args.repeats} rounds)")
    print(
        format_table(
            ("image", "prec", "method", "median s", "x predict", "work", "GFLOP"),
            rows,
        )
    )
    print("x predict: median time / median time of napari_unet.predict (> 1: slower than predict).")
    print("Every timed call starts with nothing kept from earlier calls (predict's first call after a pause).")
    if monai_net is None:
        print(MONAI_MISSING)
    if not onnx_peer.available():
        print(onnx_peer.ORT_MISSING)
    elif args.agreement_steps:
        print(int8_agreement(args.agreement_steps, 512, args.seed, folder))


if __name__ == "__main__":
    main()
