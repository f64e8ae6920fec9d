import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from magicgui.widgets import Container
from npe2 import PluginManifest
from qtpy.QtCore import QPoint, QThread
from qtpy.QtWidgets import QComboBox, QSizePolicy

from napari_unet import UNet, save_model
from napari_unet._reader import get_reader
from napari_unet._sample_data import nuclei_2d, nuclei_stack, nuclei_volume
from napari_unet._session import Session
from napari_unet._widgets import AnnotateWidget, LiveTrainWidget, SegmentWidget, TrainWidget, WeightMapWidget

from .conftest import docked


def test_manifest_declares_widgets_sample_data_and_reader():
    manifest = PluginManifest.from_distribution("napari-unet")
    widgets = {w.display_name for w in manifest.contributions.widgets}
    assert widgets == {"Annotate cells", "Weight map", "Train U-Net", "Segment with U-Net", "Live training"}
    assert {s.key for s in manifest.contributions.sample_data} == {"nuclei_2d", "nuclei_stack", "nuclei_volume"}
    assert manifest.contributions.readers[0].filename_patterns == ["*.safetensors", "*.zip"]


def test_dock_widgets_share_the_viewer_session(viewer):
    viewer.window.add_plugin_dock_widget("napari-unet", "Train U-Net")
    _, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment with U-Net")
    session = Session.of(viewer)
    assert isinstance(segment, SegmentWidget) and segment.session is session
    session.set_model(UNet(base_channels=2, depth=2), "test")
    assert "test" in segment.model_info.value


def test_sample_data_are_annotated_images():
    (image, _, kind), (labels, _, labels_kind) = nuclei_2d()
    assert (kind, labels_kind) == ("image", "labels")
    assert image.shape == labels.shape == (512, 512) and labels.max() > 50
    (stack, _, _), (stack_labels, _, _) = nuclei_stack()
    assert stack.shape == stack_labels.shape == (3, 256, 256)
    (volume, meta, _), (volume_labels, labels_meta, _) = nuclei_volume()
    assert volume.shape == volume_labels.shape == (28, 128, 128) and volume_labels.max() >= 30
    assert meta["scale"] == labels_meta["scale"] == (2.0, 1.0, 1.0)


def test_opening_a_model_file_loads_it_off_the_gui_thread_into_the_session(viewer, tmp_path, qtbot, monkeypatch):
    from napari_unet import _reader

    path = tmp_path / "m.safetensors"
    torch.manual_seed(0)
    model = UNet(base_channels=2, depth=2)
    save_model(model, path)
    reader = get_reader(str(path))
    assert reader is not None and get_reader(str(tmp_path / "missing.safetensors")) is None
    threads = []
    load_model = _reader.load_model

    def load_and_note_the_thread(file):
        threads.append(threading.current_thread())
        return load_model(file)

    monkeypatch.setattr(_reader, "load_model", load_and_note_the_thread)
    assert reader(str(path)) == [(None,)]
    qtbot.waitUntil(lambda: Session.of(viewer).model is not None, timeout=20_000)
    assert threads and threads[0] is not threading.main_thread()
    loaded = Session.of(viewer).model
    assert torch.equal(loaded.head.weight, model.head.weight)
    assert Session.of(viewer).path == path


def test_the_model_file_dropped_last_wins_however_long_the_first_takes(viewer, tmp_path, qtbot, monkeypatch):
    from napari_unet import _reader

    first, second = tmp_path / "slow.safetensors", tmp_path / "quick.safetensors"
    for path in (first, second):
        save_model(UNet(base_channels=2, depth=2), path)
    load_model = _reader.load_model
    release = threading.Event()

    def slow_for_the_first(file):
        if Path(file) == first:
            release.wait(20)  # still loading when the second file has loaded
        return load_model(file)

    monkeypatch.setattr(_reader, "load_model", slow_for_the_first)
    get_reader(str(first))(str(first))
    slow = _reader.read_model.worker
    get_reader(str(second))(str(second))
    qtbot.waitUntil(lambda: Session.of(viewer).path == second, timeout=20_000)
    release.set()
    qtbot.waitUntil(lambda: not slow.is_running, timeout=20_000)
    qtbot.wait(100)  # the slow worker's result reaches the event loop
    assert Session.of(viewer).path == second


@pytest.mark.parametrize("name", ["bad.safetensors", "truncated.zip"])
def test_opening_a_corrupt_model_file_adds_nothing(viewer, tmp_path, qtbot, monkeypatch, name):
    """A truncated package got napari's own "refused the file", which named no cause."""
    path = tmp_path / name
    path.write_bytes(b"PK\x03\x04junk")
    errors = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    assert get_reader(str(path))(str(path)) == [(None,)]
    qtbot.waitUntil(lambda: bool(errors), timeout=20_000)
    assert name in errors[0] and "not a napari-unet model" in errors[0]
    assert Session.of(viewer).model is None


@pytest.mark.slow
def test_the_whole_loop(viewer, session, wait_idle, tmp_path, qtbot):
    """Sample data -> annotate -> weight map -> train -> segment -> objects appear."""
    for data, meta, kind in nuclei_stack():
        if kind == "image":
            image = viewer.add_image(data[0], **meta)
        else:
            truth = data[0]
    annotate = docked(viewer, AnnotateWidget(viewer))
    annotate.image.value = image
    annotate.create.clicked.emit()
    annotation = viewer.layers["nuclei stack annotation"]
    annotation.data = np.where(np.arange(256)[None, :] < 192, truth, -1).astype(np.int32)  # paint 3/4 of it

    weights = docked(viewer, WeightMapWidget(viewer))
    weights.annotation.value = annotation
    weights.compute.clicked.emit()
    wait_idle(weights)
    assert viewer.layers["nuclei stack annotation weights"].data.max() > 5

    train = docked(viewer, TrainWidget(viewer, session))
    train.image.value, train.annotation.value = image, annotation
    train.base_channels.value, train.depth.value, train.tile.value = 8, 2, 76
    train.steps.value, train.lr.value = 60, 0.005
    train.device.value = "cpu"
    train.save_path.value = tmp_path / "loop.safetensors"
    train.start_button.clicked.emit()
    wait_idle(train)
    assert session.model is not None

    segment = docked(viewer, SegmentWidget(viewer, session))
    segment.image.value = image
    segment.run_button.clicked.emit()
    wait_idle(segment)
    labels = viewer.layers["nuclei stack labels"].data
    assert labels.max() >= 5, f"only {labels.max()} objects found"


def _napari_unet_package(folder, model):
    """A package folder as napari-unet writes it, without the bioimage.io extras."""
    import io
    import json

    from napari_unet.core import bioimageio_package as bp
    from napari_unet.core import package_reader

    folder.mkdir()
    (folder / "rdf.yaml").write_text("type: model\n")
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    (folder / package_reader.STATE_DICT_NAME).write_bytes(buffer.getvalue())
    record = bp._record(model, package_reader.sha256(buffer.getvalue()), "")
    (folder / package_reader.RECORD_NAME).write_text(json.dumps(record))
    return folder


def test_dropping_a_bioimageio_package_puts_it_in_the_session(viewer, tmp_path, qtbot):
    torch.manual_seed(0)
    model = UNet(base_channels=2, depth=2)
    folder = _napari_unet_package(tmp_path / "package", model)
    assert get_reader(str(tmp_path)) is None  # a folder that is no package
    assert get_reader(str(folder))(str(folder)) == [(None,)]  # (napari offers its zip, see the test below)
    qtbot.waitUntil(lambda: Session.of(viewer).model is not None, timeout=60_000)  # loaded in a worker
    loaded = Session.of(viewer).model
    assert loaded is not None and torch.equal(loaded.head.weight, model.head.weight)


def test_napari_never_offers_this_plugin_for_a_folder(tmp_path):
    """Offered for every folder, the plugin made napari ask which reader should open
    each zarr store (MultipleReaderError without a window)."""
    from npe2 import PluginManager

    store = tmp_path / "image.zarr"
    store.mkdir()
    readers = PluginManager.instance().iter_compatible_readers([str(store)])
    assert "napari-unet.read_model" not in [reader.command for reader in readers]
    offered = PluginManager.instance().iter_compatible_readers([str(tmp_path / "model.safetensors")])
    assert "napari-unet.read_model" in [reader.command for reader in offered]


def test_dropping_a_foreign_package_explains_what_is_supported(viewer, tmp_path, monkeypatch, qtbot):
    import zipfile

    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("rdf.yaml", "type: model\n")
    assert get_reader(str(path))(str(path)) == [(None,)]
    qtbot.waitUntil(lambda: bool(shown), timeout=60_000)  # read in a worker
    assert Session.of(viewer).model is None
    assert shown and "did not write" in shown[0]
    plain = tmp_path / "images.zip"
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("a.tif", b"")
    assert get_reader(str(plain)) is None


def test_annotate_train_and_segment_docked_together_fit_a_laptop_screen(viewer, qtbot):
    """A 1366x768 screen: the three docks of the workflow, stacked, leave the window
    no taller than the screen (it grew to 1045 px); each dock's settings scroll, while
    the counts, buttons and progress that answer the user stay outside the scrolling part."""
    image = viewer.add_image(np.zeros((64, 64), np.float32), name="img")
    annotate = docked(viewer, AnnotateWidget(viewer))
    annotate.image.value = image
    annotate.create.clicked.emit()
    train = docked(viewer, TrainWidget(viewer))
    segment = docked(viewer, SegmentWidget(viewer))
    assert viewer.window._qt_window.minimumSizeHint().height() <= 768
    window = viewer.window._qt_window
    window.show()  # hidden widgets keep a default geometry: lay them out as on a screen
    train.plot.show()  # as after the first run: the loss plot fits too (it made the window 858-874 px tall)
    for widget in (annotate, train, segment):  # status lines as wide as the dock: they wrapped to 2-5 lines
        widget.status.value = "finished at step 484; model saved to /home/user/napari-unet/model-3.safetensors"
    qtbot.wait(50)
    assert window.minimumSizeHint().height() <= 768
    assert all(w.status.native.height() < 40 for w in (annotate, train, segment))
    for widget, area in ((annotate, annotate.controls_area), (train, train.settings_area)):
        assert area.isAncestorOf(widget.image.native)
    assert annotate.controls_area.isAncestorOf(annotate.new_cell.native)
    for control in (annotate.counts, annotate.status, train.start_button, segment.run_button, segment.progress):
        assert not annotate.controls_area.isAncestorOf(control.native)
        assert not train.settings_area.isAncestorOf(control.native)
        assert not segment.settings_area.isAncestorOf(control.native)


@pytest.mark.parametrize("widget_class", [AnnotateWidget, WeightMapWidget, TrainWidget, SegmentWidget, LiveTrainWidget])
def test_a_layer_named_after_a_long_file_name_does_not_widen_the_docks(viewer, qtbot, widget_class):
    """A 120-character layer name made every dock that offers the layer 1144 px wide:
    on a 1366 px screen the canvas had no width left."""
    image = viewer.add_image(np.zeros((64, 64), np.float32), name="img")
    labels = viewer.add_labels(np.zeros((64, 64), np.int32), name="ann")
    window = viewer.window._qt_window
    window.show()
    before = docked(viewer, widget_class(viewer))
    qtbot.wait(50)
    image.name = "2026-11-30_HeLa_H2B-GFP_confocal_63x_oil_stack_field-" * 3
    labels.name = image.name + " annotation"
    after = docked(viewer, widget_class(viewer))  # docked with the long names in its choices
    qtbot.wait(50)
    offered = [box.itemText(i) for box in after.native.findChildren(QComboBox) for i in range(box.count())]
    assert image.name in offered or labels.name in offered
    for hint in ("sizeHint", "minimumSizeHint"):
        assert getattr(after.native, hint)().width() <= getattr(before.native, hint)().width() + 2, hint


@pytest.mark.parametrize("widget_class", [AnnotateWidget, WeightMapWidget, TrainWidget, SegmentWidget, LiveTrainWidget])
def test_renaming_the_chosen_layers_keeps_them_chosen(viewer, widget_class):
    """magicgui finds the chosen item by its name: renaming the chosen annotation made
    Train and Live switch to another image's annotation of the same shape, silently."""
    first = viewer.add_image(np.zeros((64, 64), np.float32), name="A")
    viewer.add_labels(np.zeros((64, 64), np.int32), name="A annotation")
    image = viewer.add_image(np.zeros((64, 64), np.float32), name="B")
    labels = viewer.add_labels(np.zeros((64, 64), np.int32), name="B labels")
    widget = docked(viewer, widget_class(viewer))
    chosen = {name: layer for name, layer in (("image", image), ("annotation", labels)) if getattr(widget, name, None)}
    for name, layer in chosen.items():
        getattr(widget, name).value = layer
    changes = []
    for name in chosen:
        getattr(widget, name).changed.connect(changes.append)
    labels.name, image.name = "B truth", "B2"
    assert {name: getattr(widget, name).value for name in chosen} == chosen
    assert changes == []  # nothing changed, so no widget hears of a change
    assert {getattr(widget, name).native.currentText() for name in chosen} <= {"B2", "B truth"}
    name, layer = list(chosen.items())[-1]
    viewer.layers.remove(layer)
    assert getattr(widget, name).value is not layer and changes  # a removed layer is still let go
    assert first in viewer.layers


def in_view(control) -> bool:
    return not control.native.visibleRegion().isEmpty()


def scrolled_into_view(widget, control) -> bool:
    """Whether ``control`` lies wholly inside ``widget``'s scrolling settings' view."""
    viewport = widget.controls_area.viewport()
    return control.native.mapTo(viewport, QPoint(0, control.native.height())).y() <= viewport.height()


@pytest.mark.parametrize("height", [768, 1000, 1440])
def test_docks_are_tabs_of_one_another_unless_the_window_shows_both_whole(make_napari_viewer, qtbot, height):
    """Train docked below Annotate at 1366x768 left Annotate a 40 px scrolling strip for
    its paint buttons, and at 1600x1000 a 67 px one (new users' walks): Train is a tab
    beside Annotate, in front, unless the window shows both docks' controls whole
    (1440 px), and then each keeps its controls in view."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64), np.float32), name="img")
    window = viewer.window._qt_window
    window.resize(1366, height)
    window.show()
    annotate_dock, annotate = viewer.window.add_plugin_dock_widget("napari-unet", "Annotate cells")
    qtbot.wait(50)
    train_dock, train = viewer.window.add_plugin_dock_widget("napari-unet", "Train U-Net")
    qtbot.wait(50)
    tabbed = window.tabifiedDockWidgets(train_dock)
    if height < 1440:
        assert tabbed == [annotate_dock]
        assert in_view(train.start_button) and not in_view(annotate.new_cell)  # Train in front
        annotate_dock.raise_()
        qtbot.wait(50)
    else:
        assert tabbed == [] and in_view(train.start_button)
    assert in_view(annotate.new_cell) and scrolled_into_view(annotate, annotate.copy)  # none scrolled away


def test_docks_that_would_not_fit_a_tall_window_stacked_are_tabs(make_napari_viewer, qtbot):
    """All five docks stacked at 1600x1000 needed 994 px, and 1118 px once Train showed
    its loss plot: the window grew past the screen and Live training's buttons went
    below its edge (a new user's walk); stacked as tabs beside Live training (whose form
    is short), Train showed 116 px of its settings. A dock that would not leave the
    window STACKED_HEIGHT_RESERVE px beyond every stacked dock's controls whole is a tab
    instead, the window keeps its height, and each tab shows its controls."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64), np.float32), name="img")
    window = viewer.window._qt_window
    window.resize(1600, 1000)
    window.show()
    names = ["Annotate cells", "Weight map", "Train U-Net", "Segment with U-Net", "Live training"]
    docks, widgets = zip(*(viewer.window.add_plugin_dock_widget("napari-unet", name) for name in names))
    qtbot.wait(50)
    annotate, weights, train, segment, live = widgets
    assert window.tabifiedDockWidgets(docks[1]) == []  # Weight map's short form stacks
    assert set(window.tabifiedDockWidgets(docks[0])) == {docks[2], docks[3], docks[4]}
    assert window.height() == 1000
    assert in_view(live.start_button) and in_view(live.accept_button)  # the new dock in front, in view
    assert in_view(weights.compute)
    for dock, last in ((docks[0], annotate.copy), (docks[2], train.start_button), (docks[3], segment.run_button)):
        dock.raise_()
        qtbot.wait(50)
        assert in_view(last), dock.windowTitle()
    assert scrolled_into_view(annotate, annotate.copy)
    docks[2].raise_()
    qtbot.wait(50)
    settings = train.settings_area
    assert settings.viewport().height() >= 0.85 * settings.widget().sizeHint().height()
    # Live training's short form takes any height as a tab, and is no taller than its content again out of it
    maximum = QSizePolicy.Policy.Maximum
    assert live.native.sizePolicy().verticalPolicy() != maximum
    docks[4].setFloating(True)
    qtbot.wait(50)
    assert live.native.sizePolicy().verticalPolicy() == maximum


def test_a_dock_without_a_scrolling_part_leaves_the_height_it_does_not_use_to_the_others(viewer, qtbot):
    """Weight map docked below Annotate (from the Plugins menu) on a 1366x768 screen
    took 543 px, 340 of them blank, while Annotate's controls shrank to two rows
    (image, Create): its paint buttons could only be reached by scrolling a 44 px box.
    Stacked, it takes the height of its controls alone."""
    viewer.add_image(np.zeros((64, 64), np.float32), name="img")
    window = viewer.window._qt_window
    window.resize(1366, 1000)  # (at 768 px a second dock is a tab now, see above)
    window.show()
    # napari's test fixture keeps the status bar's thread off; in napari it runs, and the
    # window is laid out again as its updates arrive (without it the docks split right)
    checker = window.status_thread
    checker._terminate = False
    QThread.start(checker)
    try:
        _, annotate = viewer.window.add_plugin_dock_widget("napari-unet", "Annotate cells")
        annotate.create.clicked.emit()
        qtbot.wait(300)  # laid out on the screen before the next dock comes
        _, weights = viewer.window.add_plugin_dock_widget("napari-unet", "Weight map")
        qtbot.wait(300)
    finally:
        checker.terminate()
        checker.wait(5000)
    assert weights.native.height() <= weights.native.sizeHint().height() + 2
    viewport = annotate.controls_area.viewport()
    for button in (annotate.new_cell, annotate.background, annotate.erase):
        bottom = button.native.mapTo(viewport, QPoint(0, button.native.height())).y()
        assert bottom <= viewport.height(), f"{button.text} is scrolled out of view"


def test_the_counts_of_a_stack_s_annotation_do_not_widen_the_annotate_dock(viewer, qtbot):
    """The counts of a stack's annotation are three lines, the first about 90
    characters: they made the Annotate dock 182 px wider (365 -> 547 px on a 1366 px
    screen) for good, since a dock cannot be dragged narrower than its content."""
    viewer.add_image(np.zeros((3, 64, 64), np.float32), name="stack")
    viewer.window._qt_window.show()
    widget = docked(viewer, AnnotateWidget(viewer))
    qtbot.wait(50)
    before = widget.native.minimumSizeHint().width()
    widget.create.clicked.emit()
    qtbot.waitUntil(lambda: "planes annotated" in widget.counts.value, timeout=10_000)
    assert "ids unique across the stack" in widget.counts.value
    qtbot.wait(50)
    assert widget.native.minimumSizeHint().width() <= before + 2


@pytest.mark.parametrize("widget_class", [AnnotateWidget, WeightMapWidget, TrainWidget, SegmentWidget, LiveTrainWidget])
def test_a_dock_s_blocks_and_status_use_its_whole_width(viewer, qtbot, widget_class):
    """The dock's own rows carry no label column. The Train dock's combo box named
    ``labels`` had replaced magicgui's flag of that name, and its settings and status
    sat 63 px from the dock's edge behind an empty label; Segment's 37 px, Annotate's
    16; the status of Weight map and Live 76 and 114 px, squeezed into the value column."""
    widget = docked(viewer, widget_class(viewer))
    viewer.window._qt_window.show()
    qtbot.wait(50)
    assert widget.labels is False
    edge = widget.native.layout().contentsMargins().left()
    blocks = [child for child in widget if isinstance(child, Container)] + [widget.status]
    assert len(blocks) >= 2
    for block in blocks:
        assert block.native.mapTo(widget.native, QPoint(0, 0)).x() <= edge + 1, block


@pytest.mark.parametrize("name", ["Live training", "Weight map"])
def test_short_docks_shrink_by_scrolling_their_settings_and_never_grow(viewer, name):
    """Docked with Annotate, Train and Segment at 1366x768, Live made the window 972 px
    tall (Weight map 928): their settings did not scroll, so the docks could not shrink."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", name)
    native = widget.native
    assert native.minimumSizeHint().height() < native.sizeHint().height() - 30
    assert native.sizePolicy().verticalPolicy() == QSizePolicy.Policy.Maximum  # no taller than their content
