"""Exported models against napari-unet: sizes, equality figures, bioimage.io checks.

Exports a model (default: the CPU default network, 16 base channels and depth 3,
trained briefly on synthetic nuclei and cached) as a bioimage.io package, ONNX and
TorchScript, and reports:

- each file's size and how long writing it took;
- max |difference| of TorchScript and ONNX Runtime against the torch network on two
  input sizes, and of the torch network against ``napari_unet.predict``;
- ``bioimageio.core.test_model`` for each weight format of the package;
- ``bioimageio.core``'s tiled prediction of a larger image against
  ``napari_unet.predict``, its whole-image prediction, and its block artifacts (tiles
  against one pass with the same normalisation);
- whether export -> ``load_model`` -> ``predict`` reproduces the predictions exactly.

A 3D model (``--model`` a 3D file, or ``--ndim 3``: the CPU default 3D network,
untrained, its batch normalisation fed a few volumes) is checked on synthetic
volumes; its package gets ``test_model`` and the round trip (not the tiled 2D checks).

    .venv/bin/python bench/bench_export.py [--model FILE | --ndim 3] [--size 512] [--blocksize 10] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

import napari_unet as nu
from common import benchmark_image, cpu_default_model, format_table, print_header
from napari_unet.core import exchange
from napari_unet.core.normalize import normalize


def foreground(model: nu.UNet, image: np.ndarray) -> np.ndarray:
    return 1.0 - nu.predict(model, image, precision="fp32")[0]


def test_image(model: nu.UNet, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Synthetic nuclei of ``shape``: an image, or a volume for a 3D model."""
    if model.config.ndim == 3:
        from napari_unet.core.synthetic_volume import synthetic_volume

        return synthetic_volume(shape, seed=seed)[0]
    return benchmark_image(shape, seed=seed)[0]


def volume_model(seed: int = 0) -> tuple[nu.UNet, str]:
    """The CPU default 3D network, untrained; its batch normalisation holds the running
    statistics of a few synthetic volumes."""
    from napari_unet.core.config import default_model_config
    from napari_unet.core.normalize import normalize

    torch.manual_seed(seed)
    model = nu.UNet.from_config(default_model_config("cpu", ndim=3))
    volumes = [normalize(test_image(model, (52, 92, 92), s)[None], model.spec.normalization) for s in range(3)]
    with torch.no_grad():
        for volume in volumes:
            model(torch.from_numpy(volume[None]))
    return model.eval(), "the CPU default 3D network, untrained (batch-norm statistics of 3 synthetic volumes)"


def format_equality(model: nu.UNet, files: dict[str, Path], size: int) -> list[list[object]]:
    """Max |difference| of each format against the torch network on two sizes."""
    import onnxruntime

    network = exchange.same_size_network(model)
    scripted = torch.jit.load(str(files["torchscript"]))
    session = onnxruntime.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
    sizes = exchange.axis_sizes(model)
    larger = (20, 37) if model.config.ndim == 2 else (3, 10, 17)
    shapes = [(1, *(a.smallest for a in sizes)), (2, *(a.smallest + n * a.step for a, n in zip(sizes, larger)))]
    rows = []
    for batch, *shape in shapes:
        images = [test_image(model, tuple(shape), s) for s in range(batch)]
        inputs = torch.from_numpy(np.stack([normalize(i[None], model.spec.normalization) for i in images]))
        with torch.no_grad():
            expected = network(inputs).numpy()
            torchscript = scripted(inputs).numpy()
        onnx = session.run(None, {exchange.INPUT_NAME: inputs.numpy()})[0]
        against_predict = max(float(np.abs(expected[b, 0] - foreground(model, images[b])).max()) for b in range(batch))
        rows.append(
            [
                " x ".join(map(str, (batch, *shape))),
                f"{np.abs(torchscript - expected).max():.1e}",
                f"{np.abs(onnx - expected).max():.1e}",
                f"{against_predict:.1e}",
            ]
        )
    return rows


def package_tests(package: Path) -> list[str]:
    """``bioimageio.core.test_model`` of each weight format, a line each."""
    import bioimageio.core as core

    lines = []
    for weight_format in ("pytorch_state_dict", "torchscript", "onnx"):
        began = time.perf_counter()
        summary = core.test_model(package, weight_format=weight_format, devices=["cpu"])
        passed = sum(d.status == "passed" for d in summary.details)
        lines.append(
            f"bioimageio test ({weight_format}): {summary.status}, {passed}/{len(summary.details)} checks passed "
            f"({time.perf_counter() - began:.0f} s)"
        )
    return lines


def bioimageio_checks(model: nu.UNet, package: Path, size: int, blocksize: int) -> list[str]:
    import bioimageio.core as core
    from bioimageio.core.digest_spec import create_sample_for_model

    lines = package_tests(package)
    descr = core.load_model_description(package)
    image = benchmark_image((size, size), seed=7)[0].astype(np.float32)
    reference = foreground(model, image)
    tiled = core.predict(model=descr, inputs={"raw": image[None, None]}, blocksize_parameter=blocksize)
    whole = core.predict(model=descr, inputs={"raw": image[None, None]})
    block = exchange.min_size(model.config.depth) + blocksize * 2**model.config.depth
    inner = block - 2 * exchange.halo(model.config.depth)
    blocks = int(np.ceil(size / inner)) ** 2
    lines.append(
        f"bioimageio.core tiled prediction, {size} x {size}, blocksize {blocksize} ({block} px blocks, {blocks} "
        f"blocks) vs napari_unet.predict: max |difference| "
        f"{np.abs(tiled.members['foreground'].data.values[0, 0] - reference).max():.1e}"
    )
    lines.append(
        "bioimageio.core whole-image prediction vs napari_unet.predict: max |difference| "
        f"{np.abs(whole.members['foreground'].data.values[0, 0] - reference).max():.1e} "
        "(it takes the percentiles after mirroring the image by the halo)"
    )
    with core.create_prediction_pipeline(descr, devices=["cpu"]) as pipeline:
        sample = create_sample_for_model(descr, inputs={"raw": image[None, None]}, sample_id="s")
        pipeline.apply_preprocessing(sample)
        one_pass = pipeline.predict_sample_without_blocking(sample, skip_preprocessing=True)
        tiles = pipeline.predict_sample_with_blocking(sample, skip_preprocessing=True, ns=1)
    artifacts = one_pass.members["foreground"].data.values - tiles.members["foreground"].data.values
    lines.append(f"block artifacts (blocksize 1, same normalisation): max |difference| {np.abs(artifacts).max():.1e}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="model file (default: CPU default, trained)")
    parser.add_argument("--ndim", type=int, choices=(2, 3), default=2, help="3: the CPU default 3D network")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--size", type=int, default=512, help="image side for tiled prediction (a declared size)")
    parser.add_argument("--blocksize", type=int, default=10, help="bioimage.io blocksize parameter n")
    parser.add_argument("--out-dir", type=Path, default=None, help="keep the exported files here")
    args = parser.parse_args()
    print_header("exported models against napari-unet")
    if args.model:
        model, note = nu.load_model(args.model), f"from {args.model}"
    elif args.ndim == 3:
        model, note = volume_model()
    else:
        model, note = cpu_default_model(args.train_steps)
    config = model.config
    print(
        f"model: {config.ndim}D, base {config.base_channels}, depth {config.depth}, {config.in_channels} channel(s); "
        f"{note}\n"
    )
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="bench-export-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    files, rows = {}, []
    for format, name in [("torchscript", "model.pt"), ("onnx", "model.onnx"), ("bioimageio", "model.zip")]:
        began = time.perf_counter()
        files[format] = exchange.export_model(model, out_dir / name, format)
        rows.append([format, name, f"{files[format].stat().st_size / 1e6:.2f}", f"{time.perf_counter() - began:.1f}"])
    print(format_table(["format", "file", "MB", "write s"], rows))
    print()
    print("max |difference| against the torch network (napari-unet's normalisation applied first)")
    print(format_table(["input", "TorchScript", "ONNX Runtime", "torch vs predict"], format_equality(model, files, 0)))
    print()
    if config.ndim == 2:
        for line in bioimageio_checks(model, files["bioimageio"], args.size, args.blocksize):
            print(line)
    else:
        for line in package_tests(files["bioimageio"]):
            print(line)
    image = test_image(model, (300, 260) if config.ndim == 2 else (40, 100, 90), seed=9)
    same = np.array_equal(nu.predict(nu.load_model(files["bioimageio"]), image), nu.predict(model, image))
    print(f"round trip export -> load_model -> predict identical: {same}")


if __name__ == "__main__":
    main()
