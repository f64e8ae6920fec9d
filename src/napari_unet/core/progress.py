"""Driving long jobs written as generators.

Prediction and training yield small progress records and return their result as
the generator's value. :func:`drive` runs such a generator to its end (the Python
API, the command line); :func:`until_stopped` forwards its records and lets another
thread stop it between two records (the napari widgets' workers).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Generator
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def drive(generator: Generator[Item, None, Result], on_item: Callable[[Item], None] | None = None) -> Result:
    """Run ``generator`` to its end, passing every yielded record to ``on_item``;
    returns the generator's value. Leaving early (an exception in ``on_item``,
    Ctrl-C) closes the generator, so its clean-up runs."""
    result = _Result()
    with contextlib.closing(_recording(generator, result)) as records:
        for item in records:
            if on_item is not None:
                on_item(item)
    return result.value


def until_stopped(
    generator: Generator[Item, None, Result], stop: threading.Event
) -> Generator[Item, None, Result | None]:
    """Forward ``generator``'s records; when ``stop`` is set after a record, close
    the generator (its clean-up runs) and return ``None`` instead of its value."""
    result = _Result()
    with contextlib.closing(_recording(generator, result)) as records:
        for item in records:
            yield item
            if stop.is_set():
                return None
    return result.value


class _Result:
    value = None


def _recording(generator: Generator, result: _Result) -> Generator:
    """Yield what ``generator`` yields and keep its return value in ``result``."""
    result.value = yield from generator
