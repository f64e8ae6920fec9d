"""Instance post-processing on outputs that are not cells: what labelling costs on the
probabilities of a barely trained network, as the first previews of live training and
the Train widget's previews see them.

    PYTHONPATH=SRC .venv/bin/python bench/bench_untrained_labels.py [--repeats 2]

Labels (``probabilities_to_labels``, default settings but no minimum size) the
2048x2048 output of two untrained tiny networks (4 base channels, depth 2, batch norm;
torch seeds 0 and 2) on tiled synthetic nuclei and of one trained 4 steps (foreground
nearly everywhere), and a field of smoothed noise spanning
0.52-0.92 (one object, thousands of local maxima), each also cut to its 512x512 corner,
and two 48x192x192 volumes of smoothed noise over 0.3-1.0 labelled as volumes (blurred
by 1 and 3 voxels: many small and fewer large blobs). Each input is labelled as by a
model that learned no object sizes and as by one that learned cells of 300 px (4000
voxels), whose objects over 1.5 times that are split once more
(:mod:`napari_unet.core.large_objects`), and each plane as by the 4-step network itself,
with the sizes and shapes its training fitted to the annotation (the split by shape
included, :mod:`napari_unet.core.concave`). Prints the best of ``--repeats`` per input.
Run it with ``PYTHONPATH`` set to the ``src`` of two checkouts to compare their
post-processing.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
import torch
from scipy import ndimage

import napari_unet as nu
from common import format_table, print_header
from napari_unet.core.config import InstanceConfig
from napari_unet.core.instances import probabilities_to_labels
from napari_unet.core.model import UNet
from napari_unet.core.synthetic import synthetic_nuclei


def untrained_output(seed: int) -> np.ndarray:
    """(2, 2048, 2048) probabilities of an untrained tiny network on 4 x 4 tiles of a
    512x512 synthetic nuclei image."""
    image, _ = synthetic_nuclei((512, 512), seed=3)
    big = np.tile(image, (4, 4)).astype(np.float32)
    torch.manual_seed(seed)
    model = UNet(base_channels=4, depth=2, batch_norm=True).eval()
    with torch.no_grad():
        x = torch.from_numpy((big - big.mean()) / big.std())[None, None]
        x = torch.nn.functional.pad(x, (60,) * 4, mode="reflect")
        return torch.softmax(model(x), 1)[0, :, :2048, :2048].numpy().copy()


def briefly_trained() -> tuple[np.ndarray, InstanceConfig]:
    """(2, 2048, 2048) probabilities of a tiny network (4 base channels, depth 2) after 4
    training steps on the same tiles with the first 512x512 annotated, as a widget's first
    preview sees them (foreground nearly everywhere, one object across the image), and
    the instance settings that training fitted to that annotation."""
    image, truth = synthetic_nuclei((512, 512), seed=3)
    big = np.tile(image, (4, 4))
    annotation = np.full(big.shape, -1, np.int16)
    annotation[:512, :512] = truth
    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=2)
    config = nu.TrainConfig(device="cpu", precision="fp32", steps=4, tile=60, batch_size=2)
    for _ in nu.Trainer(model, [big], [annotation], config).run():
        pass
    return nu.predict(model, big, device="cpu"), model.spec.instances


def noise_field(size: int) -> np.ndarray:
    """(2, size, size) probabilities whose foreground is smoothed noise over 0.52-0.92."""
    field = ndimage.gaussian_filter(np.random.default_rng(0).random((size, size)), 1.0)
    field = (0.52 + 0.4 * (field - field.min()) / (field.max() - field.min())).astype(np.float32)
    return np.stack([1 - field, field])


def noise_volume(sigma: float) -> np.ndarray:
    """(2, 48, 192, 192) probabilities whose foreground is noise blurred by ``sigma``
    voxels, over 0.3-1.0."""
    field = ndimage.gaussian_filter(np.random.default_rng(0).random((48, 192, 192)), sigma)
    field = (0.3 + 0.7 * (field - field.min()) / (field.max() - field.min())).astype(np.float32)
    return np.stack([1 - field, field])


def best_time(probabilities: np.ndarray, ndim: int, repeats: int, config: InstanceConfig) -> tuple[float, int]:
    """The shortest of ``repeats`` labellings with ``config`` (no minimum size) and the number of objects."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        labels = probabilities_to_labels(probabilities, replace(config, min_size=0), ndim=ndim)
        times.append(time.perf_counter() - start)
    return min(times), int(labels.max())


def cells(probabilities: np.ndarray, ndim: int, repeats: int, fitted: InstanceConfig) -> list[str]:
    """Seconds and objects without learned sizes, with cells of 300 px (4000 voxels), and
    (planes) with the sizes and shapes that training fitted to the synthetic nuclei."""
    plain = best_time(probabilities, ndim, repeats, InstanceConfig())
    sized = best_time(probabilities, ndim, repeats, InstanceConfig(object_size=300 if ndim == 2 else 4000))
    row = [f"{plain[0]:.3f}", str(plain[1]), f"{sized[0]:.3f}", str(sized[1])]
    if ndim == 2:
        shaped = best_time(probabilities, ndim, repeats, fitted)
        return [*row, f"{shaped[0]:.3f}", str(shaped[1])]
    return [*row, "-", "-"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print_header(f"labelling outputs that are not cells, by {nu.__file__}")
    inputs = {f"untrained network, seed {seed}": untrained_output(seed) for seed in (0, 2)}
    inputs["network trained 4 steps"], fitted = briefly_trained()
    inputs["smoothed noise"] = noise_field(2048)
    print(f"fitted to the synthetic nuclei: {fitted}")
    rows = []
    for name, probabilities in inputs.items():
        for size in (512, 2048):
            window = probabilities[:, :size, :size].copy()
            rows.append([name, f"{size}x{size}", *cells(window, 2, args.repeats, fitted)])
    for sigma in (1.0, 3.0):
        name = f"noise volume, blurred {sigma:g} voxels"
        rows.append([name, "48x192x192", *cells(noise_volume(sigma), 3, args.repeats, fitted)])
    headers = ["input", "size", "labels s (best)", "objects", "cells of 300 px: s", "objects", "fitted: s", "objects"]
    print(format_table(headers, rows))


if __name__ == "__main__":
    main()
