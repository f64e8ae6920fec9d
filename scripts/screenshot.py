"""Make docs/screenshot.png: napari-unet docked in napari, trained and run on the 2D sample.

Run it from the repository root under a virtual display (about a minute on 2 cores)::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot.py

or as ``.venv/bin/python scripts/screenshot.py``: where no display is set, the script
starts itself again under ``xvfb-run`` like that.
It opens a napari window, loads the "Synthetic nuclei (2D, annotated)" sample, docks
the four napari-unet widgets, shows the annotation's weight map (hidden in the
picture), trains a small U-Net (base 8, depth 3, 400 steps, CPU) with the Train
widget's Start button, segments the image with the Segment widget and saves the
whole window (quantised to 256 colours, about 100 kB). Seeds and one torch thread
make it repeatable; napari's settings and the model go to a temporary folder, so the
user's napari settings are neither used nor changed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WINDOW = (1600, 1000)
STEPS = 400  # fewer leave touching nuclei merged
TIMEOUT = 300.0  # seconds to wait for one job


def process_events(until, timeout: float = TIMEOUT) -> None:
    """Run the Qt event loop until ``until()`` is true."""
    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise TimeoutError("napari-unet job did not finish in time")
        QApplication.processEvents()
        time.sleep(0.05)


def settle(seconds: float = 0.5) -> None:
    """Let Qt lay out and paint for a moment."""
    end = time.monotonic() + seconds
    process_events(lambda: time.monotonic() > end)


def make_scrollable(dock) -> None:
    """Put a dock's contents in a scroll area (the Train widget is taller than the window)."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QFrame, QScrollArea

    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setWidget(dock.widget())
    dock.setWidget(scroll)


def main() -> None:
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        if shutil.which("xvfb-run"):
            screen = f"-screen 0 {WINDOW[0]}x{WINDOW[1]}x24"
            os.execvp("xvfb-run", ["xvfb-run", "-a", "-s", screen, sys.executable, __file__, *sys.argv[1:]])
        sys.exit("no display: run this under xvfb-run (see the docstring)")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    args = parser.parse_args()

    # A fixed folder, as its name shows in the picture; fresh napari settings, the user's untouched.
    work = Path(tempfile.gettempdir()) / "napari-unet-screenshot"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    os.environ["NAPARI_CONFIG"] = str(work / "settings.yaml")

    import napari
    import torch
    from napari.settings import get_settings
    from PIL import Image
    from qtpy.QtCore import Qt

    from napari_unet._sample_data import nuclei_2d

    torch.manual_seed(0)
    torch.set_num_threads(1)  # repeatable, and fast on a busy machine
    get_settings().application.gui_notification_level = "error"  # no toasts over the canvas
    get_settings().application.console_notification_level = "error"

    viewer = napari.Viewer(title="napari U-Net", show=True)
    window = viewer.window._qt_window
    window.resize(*WINDOW)
    for data, meta, kind in nuclei_2d():
        getattr(viewer, f"add_{kind}")(data, **meta)
    image, annotation = viewer.layers["nuclei"], viewer.layers["nuclei annotation"]

    add = lambda name: viewer.window.add_plugin_dock_widget("napari-unet", name)  # noqa: E731
    train_dock, train = add("Train U-Net")
    segment_dock, segment = add("Segment with U-Net")
    annotate_dock, annotate = add("Annotate cells")
    weights_dock, weights = add("Weight map")
    make_scrollable(train_dock)
    train.plot.setMaximumHeight(200)
    # Train in one column; beside it Segment above Annotate / Weight map (tabs).
    window.splitDockWidget(train_dock, segment_dock, Qt.Orientation.Horizontal)
    window.splitDockWidget(segment_dock, annotate_dock, Qt.Orientation.Vertical)
    window.tabifyDockWidget(annotate_dock, weights_dock)
    window.resize(*WINDOW)
    settle()

    annotate.image.value, annotate.annotation.value = image, annotation
    weights.labels.value = annotation
    weights.compute.clicked.emit()
    process_events(lambda: not weights.runner.busy)

    train.image.value, train.labels.value = image, annotation
    train.base_channels.value, train.depth.value = 8, 3
    train.steps.value, train.lr.value = STEPS, 0.01
    train.device.value = "cpu"
    train.save_path.value = work / "model.safetensors"
    train.start_button.clicked.emit()
    process_events(lambda: not train.runner.busy)
    if train.session.model is None:
        raise RuntimeError(f"training failed: {train.status.value}")

    segment.image.value = image
    segment.device.value = "cpu"
    segment.run_button.clicked.emit()
    process_events(lambda: not segment.runner.busy)
    if "nuclei labels" not in viewer.layers:
        raise RuntimeError(f"segmentation failed: {segment.status.value}")

    for layer in viewer.layers:
        layer.visible = layer.name in ("nuclei", "nuclei labels")
    viewer.layers.selection.active = viewer.layers["nuclei labels"]
    weights_dock.raise_()
    qt_viewer = viewer.window._qt_viewer
    for dock, width in ((segment_dock, 360), (train_dock, 440)):  # the canvas gets the rest
        window.resizeDocks([dock], [width], Qt.Orientation.Horizontal)
        settle(0.2)
    settle()
    bar = train_dock.widget().verticalScrollBar()
    bar.setValue(bar.maximum())
    canvas = qt_viewer.canvas.native
    viewer.scene.camera.center = (0, 256, 220)
    viewer.scene.camera.zoom = canvas.height() / 440  # about 440 of the 512 rows, cells large
    settle(1.0)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    viewer.close()
    # 256 colours: the window loses nothing visible and the PNG shrinks to about 100 kB
    picture = Image.fromarray(shot[..., :3]).quantize(256, method=Image.Quantize.FASTOCTREE)
    picture.save(args.out, optimize=True)
    shutil.rmtree(work, ignore_errors=True)
    print(f"screenshot written to {args.out}")


if __name__ == "__main__":
    sys.exit(main())
