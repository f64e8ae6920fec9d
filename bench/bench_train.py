"""Training speed: steps/s, the time a step waits for its samples, and widget vs headless.

    .venv/bin/python bench/bench_train.py [--steps 40] [--skip-widget]

Settings: the CPU default, the same network without batch normalisation (the fixed
workload that training speed is compared on), that network again in the channels-first
layout that training used before it kept CPU tensors channels-last (the ratio of the two
comes from the same run), the paper's network, and the 3D CPU default in both layouts
(on a synthetic volume of 40x96x96 isotropic voxels). Each setting's useful training FLOP/s
(three times the forward convolutions' FLOPs per sample: the forward pass and the two
gradients of the backward pass) is put against the machine's convolution limit, the best
large 3x3 convolution of bench_limits.py at the training's precision (bf16 where the CPU
has it, else fp32), measured in the same run. "data wait" is the share of a step spent
on its samples, which a CPU draws in the step itself (see ``Trainer.sampling_workers``).

Headless runs drive a ``napari_unet.Trainer`` directly, every setting twice, the
settings alternating; the widget run starts the same training from napari's Train
widget (in a thread worker, under a virtual display when there is no DISPLAY), three
times alternating with headless runs. Medians are reported.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
import torch

import napari_unet
from bench_limits import limits, measure_limits
from common import format_table, median, print_header
from napari_unet import ModelConfig, StepProgress, TrainConfig, UNet, default_model_config
from napari_unet.core.devices import precision_name
from napari_unet.core.layer_plan import forward_flops
from napari_unet.core.synthetic import synthetic_dataset
from napari_unet.core.synthetic_volume import synthetic_volume

WARMUP_STEPS = 3


#: The settings measured: the CPU default, the same network without batch normalisation
#: (the fixed workload of the speed issue) in the training's memory layout and in the
#: channels-first layout that training used before, the paper's network with its tile,
#: and the 3D CPU default in both layouts.
SETTINGS = (
    "cpu-default",
    "cpu-default, no BN",
    "cpu-default, no BN, channels-first",
    "paper",
    "3d-default",
    "3d-default, channels-first",
)


def settings(name: str) -> tuple[ModelConfig, TrainConfig]:
    if name == "paper":
        return ModelConfig(), TrainConfig(tile=572, batch_size=1, device="cpu", precision="auto")
    if name.startswith("3d-default"):
        return default_model_config("cpu", ndim=3), TrainConfig(device="cpu", precision="auto")
    model = default_model_config("cpu")
    if name.startswith("cpu-default, no BN"):
        model = replace(model, batch_norm=False)
    return model, TrainConfig(device="cpu", precision="auto")


def steps_of(name: str, steps: int) -> int:
    """Steps per run: ``steps`` for the 2D CPU default, fewer for the larger networks."""
    if name.startswith("cpu-default"):
        return steps
    return max(steps // (8 if name.startswith("3d") else 4), WARMUP_STEPS + 3)


def timed_steps(events) -> tuple[float, float]:
    """Steps/s after the warm-up steps and the mean share of a step spent waiting for data."""
    stamps, shares = [], []
    for event in events:
        if isinstance(event, StepProgress):
            stamps.append(time.perf_counter())
            shares.append(event.data_fraction)
    steady = stamps[WARMUP_STEPS - 1 :]
    return (len(steady) - 1) / (steady[-1] - steady[0]), float(np.mean(shares[WARMUP_STEPS:]))


def training_inputs(name: str, data) -> tuple[UNet, list, list, TrainConfig]:
    """A freshly seeded model of setting ``name``, the images, the labels and its config."""
    model_config, config = settings(name)
    torch.manual_seed(0)
    images, labels = zip(*data)
    return UNet.from_config(model_config), list(images), list(labels), config


def headless(name: str, steps: int, data) -> tuple[float, float]:
    model, images, labels, config = training_inputs(name, data)
    trainer = napari_unet.Trainer(model, images, labels, replace(config, steps=steps))
    if name.endswith("channels-first"):
        trainer.layout = torch.contiguous_format
    return timed_steps(trainer.run())


def widget_run(name: str, steps: int, data, tmp: Path) -> float:
    """Steps/s of the same training started from the Train widget."""
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_unet._widgets import TrainWidget

    viewer = napari.Viewer(show=False)
    try:
        image, labels = data[0]
        widget = TrainWidget(viewer)
        viewer.window.add_dock_widget(widget)  # as napari docks it: its layer choices follow the layer list
        widget.image.value = viewer.add_image(image, name="img")
        widget.annotation.value = viewer.add_labels(labels, name="ann")
        for other_image, other_labels in data[1:]:
            widget.pairs.append((viewer.add_image(other_image), viewer.add_labels(other_labels)))
        if widget.pairs:
            widget.pairs.insert(0, (widget.image.value, widget.annotation.value))
        model_config, config = settings(name)
        widget.base_channels.value, widget.depth.value = model_config.base_channels, model_config.depth
        widget.batch_norm.value = model_config.batch_norm
        widget.tile.value = config.tile
        widget.batch_size.value, widget.steps.value = config.batch_size, steps
        widget.device.value, widget.precision.value = "cpu", "auto"
        widget.save_path.value = tmp / "model.safetensors"
        stamps = []
        torch.manual_seed(0)
        widget.start_button.clicked.emit()
        # events reach the main thread only when it processes them: nothing is missed
        widget.runner.worker.yielded.connect(
            lambda event: stamps.append(time.perf_counter()) if isinstance(event, StepProgress) else None
        )
        app = QApplication.instance()
        while widget.runner.busy:
            app.processEvents()
            time.sleep(0.005)
        steady = stamps[WARMUP_STEPS - 1 :]
        return (len(steady) - 1) / (steady[-1] - steady[0])
    finally:
        viewer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="steps per run for the CPU default (paper: 1/4)")
    parser.add_argument("--skip-widget", action="store_true")
    args = parser.parse_args()
    print_header("training speed")
    data = synthetic_dataset(4, (256, 256), seed=0)
    volume = [synthetic_volume((40, 96, 96), spacing=(1.0, 1.0, 1.0), seed=0)]  # one id per nucleus in every plane

    def inputs_of(name: str) -> list:
        return volume if name.startswith("3d") else data

    limit_of = {precision: f for (_, precision), f in limits(measure_limits(repeats=3, devices=["cpu"])).items()}
    print("convolution limit: " + ", ".join(f"{p} {f / 1e9:.1f} GFLOP/s" for p, f in limit_of.items()))
    runs = {name: [] for name in SETTINGS}
    for _ in range(2):  # alternating, so that a busy spell of the machine hits every setting
        for name in SETTINGS:
            runs[name].append(headless(name, steps_of(name, args.steps), inputs_of(name)))
    rows = []
    for name in SETTINGS:
        model_config, config = settings(name)
        rate = median([r[0] for r in runs[name]])
        share = median([r[1] for r in runs[name]])
        trainer = napari_unet.Trainer(*training_inputs(name, inputs_of(name)))  # the tile and precision it resolves
        tile = trainer.tile if isinstance(trainer.tile, tuple) else (trainer.tile, trainer.tile)
        batch_shape = (config.batch_size, model_config.in_channels, *tile)
        useful = 3 * forward_flops(model_config, batch_shape)  # per step
        limit = limit_of[precision_name(trainer.dtype)]
        rows.append(
            [
                name,
                f"{model_config.base_channels}/{model_config.depth}{' BN' if model_config.batch_norm else ''}",
                f"{tile[0] if len(tile) == 2 else 'x'.join(map(str, tile))}x{config.batch_size}",
                precision_name(trainer.dtype),
                f"{rate:.2f}",
                f"{rate * config.batch_size:.1f}",
                f"{100 * share:.1f}%",
                f"{rate * useful / 1e9:.1f}",
                f"{rate * useful / limit:.0%}",
            ]
        )
    headers = ["setting", "base/depth", "tile x batch", "precision", "steps/s", "samples/s", "data wait"]
    print(format_table([*headers, "useful GFLOP/s", "of limit"], rows))
    for setting in ("cpu-default, no BN", "3d-default"):
        layouts = [median([r[0] for r in runs[f"{setting}{suffix}"]]) for suffix in ("", ", channels-first")]
        print(f"{setting}: training layout / channels-first: {layouts[0] / layouts[1]:.2f}x the steps/s")
    if args.skip_widget:
        return
    display = None
    if not os.environ.get("DISPLAY"):
        from pyvirtualdisplay import Display

        display = Display(visible=False, size=(1280, 1024)).start()
    import tempfile

    rates = {"headless": [], "widget": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(3):
            rates["headless"].append(headless("cpu-default", args.steps, data[:1])[0])
            rates["widget"].append(widget_run("cpu-default", args.steps, data[:1], Path(tmp)))
    head, wid = median(rates["headless"]), median(rates["widget"])
    print()
    print(
        format_table(
            ["cpu-default, 1 image", "steps/s runs", "median steps/s"],
            [
                ["headless trainer", " ".join(f"{r:.2f}" for r in rates["headless"]), f"{head:.2f}"],
                ["Train widget (worker)", " ".join(f"{r:.2f}" for r in rates["widget"]), f"{wid:.2f}"],
            ],
        )
    )
    print(f"widget / headless: {100 * wid / head:.0f}%")
    if display is not None:
        display.stop()


if __name__ == "__main__":
    main()
