import numpy as np
import pytest

from napari_unet._session import Session
from napari_unet.core.synthetic import synthetic_nuclei

#: Longest a GUI test waits for a worker (ms); jobs here take seconds.
WORKER_TIMEOUT = 120_000


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def session():
    return Session()


@pytest.fixture
def nuclei():
    """A small annotated synthetic image: (image uint16, labels int32)."""
    return synthetic_nuclei((128, 128), seed=5)


@pytest.fixture
def wait_idle(qtbot):
    """Wait until a widget's worker has finished, then let queued signals run."""
    widgets = []

    def wait(widget, timeout=WORKER_TIMEOUT):
        widgets.append(widget)
        qtbot.waitUntil(lambda: not widget.runner.busy, timeout=timeout)
        qtbot.wait(10)

    yield wait
    for widget in widgets:  # never leave a worker running into the next test
        widget.runner.stop()
        qtbot.waitUntil(lambda w=widget: not w.runner.busy, timeout=WORKER_TIMEOUT)


def docked(viewer, widget):
    """Dock ``widget`` as napari does for a plugin (which keeps its layer choices current)."""
    viewer.window.add_dock_widget(widget)
    return widget


def created_annotation(viewer, image):
    """The annotation layer Annotate's *Create* makes for ``image``."""
    from napari_unet._widgets import AnnotateWidget

    annotate = docked(viewer, AnnotateWidget(viewer))
    annotate.image.value = image
    annotate.create.clicked.emit()
    return annotate.annotation.value


def paint_discs(shape, centres, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = i
    return labels
