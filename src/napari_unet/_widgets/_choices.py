"""Choices shared by several widgets: devices, precisions, tile sizes, model files."""

from __future__ import annotations

from pathlib import Path

from ..core.devices import PRECISIONS, available_devices
from ..core.geometry import input_size_for_output, step, valid_sizes

#: Largest tile offered in the tile choosers (input px).
MAX_TILE = 1276


def device_choices() -> list[str]:
    """ "auto" and every device found here (cuda:N, mps, cpu)."""
    return ["auto", *available_devices()]


def precision_choices() -> list[str]:
    return list(PRECISIONS)


def tile_choices(depth: int, ndim: int = 2) -> list[tuple[str, int | None]]:
    """("auto", None) and every valid input tile size for ``depth`` up to MAX_TILE
    that can step across an image (smaller valid sizes give outputs too small to).
    3D networks: "auto" alone (their tiles differ per axis: the best within the
    memory budget)."""
    if ndim == 3:
        return [("auto", None)]
    smallest = input_size_for_output(step(depth), depth)
    return [("auto", None)] + [(str(size), size) for size in valid_sizes(depth, MAX_TILE) if size >= smallest]


#: What a widget says when "file" is chosen as the model source and no file is.
NO_MODEL_FILE = "choose a model file (.safetensors, or a bioimage.io .zip)"


def chosen_file(value) -> Path | None:
    """The path in a file field, or None while it is empty (magicgui reads an empty
    field as '.')."""
    text = str(value).strip()
    return None if text in ("", ".") else Path(text)


def reset_tile_choices(tile) -> None:
    """Fill the ``tile`` combo box anew for another network, in increasing order, at
    "auto": a plain reset keeps the sizes both networks allow first and appends the
    others after them (100, ..., 1276, 44, 48, ... after a depth of 3 became 2)."""
    tile.native.clear()
    tile.reset_choices()
    tile.value = None
