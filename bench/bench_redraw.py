"""What stretches napari's canvas redraw on this display: other busy cores, or a
thread in napari's own process.

Opens napari under a virtual display with the 512x512 synthetic nuclei, their
labels and a preview labels layer, and times ten canvas redraws (contrast changes
of the image) and ten fresh previews (new labels written into the preview layer in
place, as the Live widget writes them) with a 10 ms QTimer probe, the longest
event-loop gap of each, while: nothing else runs; another
process keeps one core busy; a torch thread in this process multiplies matrices
(torch releases Python's lock inside its operations); a pure-Python thread in this
process counts (it holds the lock), at interpreter switch intervals of 5 ms (Python's
default), 1 ms and 0.5 ms (``sys.setswitchinterval``).

    xvfb-run -a .venv/bin/python bench/bench_redraw.py
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from bench_live import GapProbe, repaint_gaps, run_event_loop
from common import print_header


@contextmanager
def busy_process():
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        process.kill()


@contextmanager
def busy_thread(work):
    stop = threading.Event()
    thread = threading.Thread(target=work, args=(stop,), daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        yield
    finally:
        stop.set()
        thread.join()


def torch_work(stop: threading.Event) -> None:
    import torch

    a = torch.randn(512, 512)
    while not stop.is_set():
        a = (a @ a).clamp_(-1, 1)


def python_work(stop: threading.Event) -> None:
    count = 0
    while not stop.is_set():
        count += 1


def preview_gaps(preview, labels: np.ndarray, gaps: list[float], previews: int = 10) -> list[float]:
    """The longest event-loop gap of each of ``previews`` fresh previews: ``labels``
    shifted by a few pixels each time, written into the ``preview`` layer in place
    (as the Live widget writes a preview), 0.3 s apart."""
    longest = []
    for index in range(previews):
        preview.data[:] = np.roll(labels, 3 * (index + 1), axis=1)
        preview.refresh()
        gaps.clear()
        run_event_loop(0.3)
        longest.append(max(gaps, default=0.0))
    return longest


@contextmanager
def switch_interval(seconds: float):
    before = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def main() -> None:
    print_header("canvas redraw in napari beside other work")
    import napari
    import torch

    from napari_unet.core.synthetic import synthetic_nuclei

    torch.set_num_threads(1)  # the torch thread below takes one core, as training beside the viewer does
    image, truth = synthetic_nuclei((512, 512), seed=0)
    viewer = napari.Viewer(show=True)
    layer = viewer.add_image(image, name="nuclei")
    viewer.add_labels(truth, name="labels")
    preview = viewer.add_labels(np.zeros_like(truth, dtype=np.int32), name="nuclei live", opacity=0.5)
    viewer.window._qt_window.resize(1600, 1000)
    probe = GapProbe()
    repaint_gaps(layer, probe.gaps, repaints=4)  # warm-up: napari's first redraws load what they need
    preview_gaps(preview, truth, probe.gaps, previews=2)
    cases = [
        ("nothing else", lambda: switch_interval(sys.getswitchinterval())),
        ("another process busy on one core", busy_process),
        ("a torch thread in this process", lambda: busy_thread(torch_work)),
        ("a pure-Python thread, switch interval 5 ms", lambda: _both(switch_interval(0.005), python_work)),
        ("a pure-Python thread, switch interval 1 ms", lambda: _both(switch_interval(0.001), python_work)),
        ("a pure-Python thread, switch interval 0.5 ms", lambda: _both(switch_interval(0.0005), python_work)),
        ("nothing else, again", lambda: switch_interval(sys.getswitchinterval())),
    ]
    for name, context in cases:
        with context():
            longest = 1000 * np.array(repaint_gaps(layer, probe.gaps, repaints=10))
            fresh = 1000 * np.array(preview_gaps(preview, truth, probe.gaps))
        print(
            f"{name:46s} redraw gap median {np.median(longest):4.0f} ms, max {longest.max():4.0f} ms; "
            f"fresh preview median {np.median(fresh):4.0f} ms, max {fresh.max():4.0f} ms",
            flush=True,
        )
    probe.stop()
    viewer.close()


@contextmanager
def _both(interval, work):
    with interval, busy_thread(work):
        yield


if __name__ == "__main__":
    main()
