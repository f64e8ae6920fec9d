"""Make docs/screenshot.png: the first hour in napari, on the 2D sample.

Run it from the repository root under a virtual display (about a minute on 2 cores)::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot.py

or as ``.venv/bin/python scripts/screenshot.py``: where no display is set, the script
starts itself again under ``xvfb-run`` like that.
It opens a napari window, loads the "Synthetic nuclei (2D, annotated)" sample and
docks the four napari-unet widgets, then walks the workflow as a user would:
*Create annotation layer* (a new, unannotated layer next to the sample's complete
annotation), paints a few cells with the brush (``layer.paint``, checking that the
annotation stays selected in paint mode, so a drag paints rather than pans), paints
background around them, shows the weight map (hidden in the picture), trains a small
U-Net (base 8, depth 3, 400 steps, CPU) on the sample's complete annotation with the
Train widget's Start button, segments the image with the Segment widget (outlines in
the picture) and saves the whole window (quantised to 256 colours). Seeds and one
torch thread make it repeatable; napari's settings and the model go to a temporary
folder, so the user's napari settings are neither used nor changed.
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
TIMEOUT = 1800.0  # seconds to wait for one job (a busy machine trains slowly)


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


def paint_a_few_cells(viewer, annotate, image, truth) -> None:
    """What a user does first: a new annotation, a few cells, background around them."""
    import numpy as np

    annotate.image.value = image
    annotate.create.clicked.emit()
    layer = annotate.annotation.value
    if layer.name != "nuclei annotation 2" or not (layer.data == -1).all():
        raise RuntimeError("Create should make a new, unannotated layer next to the sample's annotation")
    region = (slice(150, 300), slice(160, 330))  # a patch of the image, cells touching in it
    ids = [i for i in np.unique(truth[region]) if i > 0 and (truth == i)[region].sum() == (truth == i).sum()]
    annotate.background.clicked.emit()
    layer.brush_size = 12
    top, left = region[0].start, region[1].start
    for y in range(top + 4, region[0].stop - 4, 8):  # brush strokes of background over the patch
        for x in range(left + 4, region[1].stop - 4, 8):
            if not truth[y - 8 : y + 9, x - 8 : x + 9].any():
                layer.paint((y, x), 0)
    for cell in ids:
        annotate.new_cell.clicked.emit()
        yy, xx = np.nonzero(truth == cell)
        layer.data_setitem((yy, xx), layer.selected_label)  # the cell, painted to its outline
        settle(0.05)
    if viewer.layers.selection.active is not layer or layer.mode != "paint":
        raise RuntimeError("painting must leave the annotation selected in paint mode")


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

    paint_a_few_cells(viewer, annotate, image, annotation.data)
    weights.annotation.value = annotate.annotation.value
    weights.compute.clicked.emit()
    process_events(lambda: not weights.runner.busy)

    train.image.value, train.annotation.value = image, annotation
    train.base_channels.value, train.depth.value = 8, 3
    train.steps.value, train.lr.value = STEPS, 0.01
    train.device.value = "cpu"
    train.threads.value = 1  # repeatable
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

    painted = annotate.annotation.value
    shown = ("nuclei", "nuclei labels", painted.name, f"{painted.name} touching")
    for layer in viewer.layers:
        if layer.visible != (layer.name in shown):  # napari resets the mode of a layer it shows or hides
            layer.visible = layer.name in shown
    viewer.layers["nuclei labels"].contour = 1  # outlines, so the annotation shows under them
    viewer.layers.move(viewer.layers.index(painted), len(viewer.layers) - 1)
    viewer.layers.selection.active = painted
    if painted.mode != "paint":
        raise RuntimeError(f"the annotation should still be painted, but its mode is {painted.mode}")
    annotate_dock.raise_()
    qt_viewer = viewer.window._qt_viewer
    for dock, width in ((segment_dock, 330), (train_dock, 420)):  # the canvas gets the rest
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
