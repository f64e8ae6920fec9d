import threading

import pytest

from napari_unet.core.progress import drive, until_stopped


def counting(n, cleaned):
    try:
        yield from range(n)
        return "done"
    finally:
        cleaned.append(True)


def test_drive_passes_every_record_and_returns_the_value():
    seen, cleaned = [], []
    assert drive(counting(4, cleaned), seen.append) == "done"
    assert seen == [0, 1, 2, 3] and cleaned == [True]


def test_drive_closes_the_generator_when_the_caller_fails():
    cleaned = []

    def fail(item):
        if item == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        drive(counting(10, cleaned), fail)
    assert cleaned == [True]


def test_until_stopped_forwards_then_closes_when_asked():
    stop, cleaned, seen = threading.Event(), [], []

    def consumer():
        result = yield from until_stopped(counting(10, cleaned), stop)
        return result

    relay = consumer()
    for item in relay:
        seen.append(item)
        if item == 2:
            stop.set()
    assert seen == [0, 1, 2] and cleaned == [True]
    assert drive(until_stopped(counting(3, []), threading.Event())) == "done"
