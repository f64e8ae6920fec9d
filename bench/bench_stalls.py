"""How long the napari event loop stalls for each step of the first hour, on a large image.

    .venv/bin/python bench/bench_stalls.py [--size 8192]

Under a virtual display when there is no DISPLAY. A 10 ms QTimer probe runs while
the script drives the widgets as a user would on a ``size`` x ``size`` image:
Create annotation layer, 20 brush strokes, "rest of the image is background", a
segmentation result arriving, and Start training (tiny model, one annotated corner, for a
few seconds). For each step it prints the longest gap between probe ticks, which is
the longest time the viewer could not redraw or react. Adding a layer or replacing its
data costs napari itself a moment: the first two rows measure napari alone (an empty
labels layer of the same size added, then its data replaced), the floor under any step
that shows a new result.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np

from common import format_table, print_header


class Probe:
    """Ticks every 10 ms in the event loop; ``longest(action)`` runs ``action`` and then
    the event loop until ``until()`` holds, and returns the longest gap between ticks."""

    def __init__(self, explain: float = 0.0) -> None:
        from qtpy.QtCore import QTimer
        from qtpy.QtWidgets import QApplication

        self.app = QApplication.instance()
        self.ticks: list[float] = [time.perf_counter()]
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))
        self.timer.start()
        if explain:
            threading.Thread(target=self._explain, args=(explain,), daemon=True).start()

    def _explain(self, after: float) -> None:
        """Print every thread's stack once per stall that lasts ``after`` seconds."""
        main, reported = threading.main_thread().ident, None
        while True:
            time.sleep(0.02)
            last = self.ticks[-1]
            if time.perf_counter() - last > after and reported != last:
                reported = last
                print(f"--- the event loop has stalled for {after * 1000:.0f} ms:", file=sys.stderr)
                for ident, frame in sys._current_frames().items():
                    if ident != threading.get_ident():
                        name = "main thread" if ident == main else f"thread {ident}"
                        print(f"  {name}:\n" + "".join(traceback.format_stack(frame)[-6:]), file=sys.stderr)

    def run_for(self, seconds: float, until=lambda: True) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or not until():
            self.app.processEvents()
            time.sleep(0.002)

    def longest(self, action, until=lambda: True, settle: float = 0.3) -> float:
        self.run_for(0.1)
        start = len(self.ticks) - 1
        action()
        self.run_for(settle, until)
        return float(np.diff(self.ticks[start:]).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--train-seconds", type=float, default=8.0)
    parser.add_argument("--explain", type=float, default=0.0, help="print stacks of stalls longer than this (s)")
    args = parser.parse_args()
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        from pyvirtualdisplay import Display

        Display(visible=False, size=(1600, 1000)).start()
    import napari

    from napari_unet._widgets import AnnotateWidget, SegmentWidget, TrainWidget
    from napari_unet._widgets._jobs import SegmentationDone, display_labels
    from napari_unet._widgets._warm_up import warm_up
    from napari_unet.core.synthetic import synthetic_nuclei

    print_header(f"event-loop stalls at {args.size}x{args.size}")
    n = args.size
    image, truth = synthetic_nuclei((512, 512), seed=3)
    big = np.tile(image, (n // 512, n // 512))
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    probe = Probe(args.explain)
    rows = []
    image_layer = viewer.add_image(big, name="big")
    probe.run_for(0.5)
    empty = np.zeros((n, n), np.uint16)
    rows.append(["napari: add an empty labels layer", probe.longest(lambda: viewer.add_labels(empty, name="empty"))])
    filled = np.tile(np.arange(512 * 512, dtype=np.uint16).reshape(512, 512) % 300, (n // 512, n // 512))
    replace = lambda: setattr(viewer.layers["empty"], "data", filled)  # noqa: E731
    rows.append(["napari: replace a labels layer's data", probe.longest(replace)])
    viewer.layers.remove("empty")

    annotate = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(annotate)
    annotate.image.value = image_layer
    created = lambda: annotate.annotation.value is not None  # noqa: E731 - large ones are made in a worker
    rows.append(["Create annotation layer", probe.longest(annotate.create.clicked.emit, until=created)])
    layer = annotate.annotation.value
    viewer.layers.selection.active = layer
    layer.brush_size = 30

    def strokes():
        for i in range(20):
            if i % 4 == 0:
                annotate.new_cell.clicked.emit()
            layer.paint((n // 2, 100 + 20 * i), layer.selected_label)
            probe.app.processEvents()

    rows.append(["20 brush strokes (longest)", probe.longest(strokes)])
    rest = getattr(annotate, "rest_of_image", None) or annotate.ignore_rest  # the old widget's button
    rows.append(
        ["rest of the image is background", probe.longest(rest.clicked.emit, until=lambda: rest.enabled, settle=0.5)]
    )

    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment)
    segment._target, segment._notes = (image_layer, None), ()  # what a Segment click sets
    prepare = getattr(segment, "_prepare_result_layers", None)  # what Segment's click does first (new code)
    if prepare is not None:
        rows.append(["Segment click (empty result layer added)", probe.longest(lambda: prepare(image_layer))])
    result = display_labels(np.tile(truth, (n // 512, n // 512)))  # the type the worker hands over
    add_result = lambda: segment._on_done(SegmentationDone(result, None, "a result"))  # noqa: E731 - as the worker does
    rows.append(["the segmentation result arrives", probe.longest(add_result)])

    annotation = np.full((n, n), -1, np.int16)
    annotation[:512, :512] = truth
    labels_layer = viewer.add_labels(annotation, name="corner annotation")
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train)
    train.image.value, train.annotation.value = image_layer, labels_layer
    train.base_channels.value, train.depth.value, train.tile.value = 4, 2, 60
    train.batch_size.value, train.steps.value = 2, 100_000
    train.device.value, train.precision.value = "cpu", "fp32"
    with tempfile.TemporaryDirectory() as folder:
        train.save_path.value = Path(folder) / "model.safetensors"
        warm_up().join()
        stall = probe.longest(train.start_button.clicked.emit, settle=args.train_seconds)
        steps = train.progress.value
        train.runner.stop()
        probe.run_for(0.1, until=lambda: not train.runner.busy)
    rows.append([f"Start training, then {args.train_seconds:g} s of it ({steps} steps)", stall])

    with tempfile.TemporaryDirectory() as folder:  # the model just trained, as ONNX then as a package
        for format, name in (("onnx", "model.onnx"), ("bioimageio", "model.zip")):
            target = Path(folder) / name
            segment.exporter.ask_path = lambda target=target, format=format: (target, format)  # the save dialog
            began = time.perf_counter()
            stall = probe.longest(segment.exporter.button.clicked.emit, until=lambda: not segment.exporter.runner.busy)
            took = time.perf_counter() - began
            rows.append([f"Export model… as {format} ({took:.1f} s; {segment.status.value[:40]})", stall])
    print(format_table(["step", "longest stall (ms)"], [[name, f"{1000 * s:.0f}"] for name, s in rows]))
    viewer.close()


if __name__ == "__main__":
    main()
