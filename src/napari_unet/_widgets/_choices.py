"""Choices shared by several widgets: devices, precisions, tile sizes."""

from __future__ import annotations

from ..core.devices import PRECISIONS, available_devices
from ..core.geometry import valid_sizes

#: Largest tile offered in the tile choosers (input px).
MAX_TILE = 1276


def device_choices() -> list[str]:
    """ "auto" and every device found here (cuda:N, mps, cpu)."""
    return ["auto", *available_devices()]


def precision_choices() -> list[str]:
    return list(PRECISIONS)


def tile_choices(depth: int) -> list[tuple[str, int | None]]:
    """("auto", None) and every valid input tile size for ``depth`` up to MAX_TILE."""
    return [("auto", None)] + [(str(size), size) for size in valid_sizes(depth, MAX_TILE)]
