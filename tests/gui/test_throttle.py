"""The throttle that paces the widgets' per-step progress."""

from napari_unet._widgets._throttle import Throttle


def test_values_within_an_interval_wait_and_only_the_latest_is_shown(qtbot):
    shown = []
    throttle = Throttle(shown.append, interval=0.2)
    throttle(1)  # the first is shown at once
    for value in range(2, 30):
        throttle(value)  # all within the interval: they wait
    assert shown == [1]
    qtbot.waitUntil(lambda: len(shown) == 2, timeout=2000)
    assert shown == [1, 29]  # the latest, at the end of the interval
    qtbot.wait(400)
    assert shown == [1, 29]  # nothing was left waiting


def test_flush_shows_the_waiting_value_now_and_cancel_drops_it(qtbot):
    shown = []
    throttle = Throttle(shown.append, interval=0.2)
    throttle("a")
    throttle("b")
    throttle.flush()
    assert shown == ["a", "b"]
    throttle.flush()  # nothing waits: nothing is shown again
    throttle("c")
    throttle.cancel()
    qtbot.wait(400)
    assert shown == ["a", "b"]


def test_a_value_waiting_when_its_widget_closes_is_never_shown(qtbot):
    from qtpy.QtWidgets import QWidget

    widget = QWidget()
    shown = []
    throttle = Throttle(shown.append, interval=0.2, parent=widget)
    throttle(1)
    throttle(2)  # waits for the end of the interval
    widget.deleteLater()  # the dock closes first
    qtbot.wait(400)
    assert shown == [1]
