"""Ahead-of-time imports, so that starting a training run does not stall the viewer."""

from __future__ import annotations

import importlib
import threading

_warm_up: threading.Thread | None = None


def warm_up() -> threading.Thread:
    """Import, in a background thread, what torch imports when the first optimiser is
    made (``torch._dynamo``: seconds of work that holds Python's lock for up to half
    a second at a time). Started when the Train widget opens, so that the import does
    not stall the viewer when training starts."""
    global _warm_up
    if _warm_up is None:
        _warm_up = threading.Thread(
            target=_import_quietly, args=("torch._dynamo",), name="napari-unet warm-up", daemon=True
        )
        _warm_up.start()
    return _warm_up


def _import_quietly(module: str) -> None:
    """Import ``module`` ahead of time; a failure is left to the import that needs it
    (napari closing during the import ends it with an error that is nobody's concern)."""
    try:
        importlib.import_module(module)
    except Exception:  # only a warm-up; a failed import leaves no module behind
        return
