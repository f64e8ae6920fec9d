"""Reading and writing images and label files (TIFF, PNG/JPEG, NPY)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from .checkpoint import write_atomic

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")


class ImageFileError(ValueError):
    """An image file that cannot be read."""


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The array stored in ``path`` (TIFF, PNG, JPEG or NPY; NPY without pickles)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ImageFileError(f"no such image file: {path}")
    if suffix not in IMAGE_SUFFIXES:
        raise ImageFileError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}")
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(path)
        import imageio.v3 as iio

        return iio.imread(path)
    except Exception as error:  # every reader has its own exception types
        raise ImageFileError(f"cannot read image {path}: {error}") from error


def write_image(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` atomically as TIFF (``.tif``/``.tiff``), NPY or PNG."""
    path = Path(path)
    buffer = io.BytesIO()
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(buffer, array, compression="zlib")
    elif suffix == ".npy":
        np.save(buffer, array, allow_pickle=False)
    elif suffix == ".png":
        import imageio.v3 as iio

        buffer.write(iio.imwrite("<bytes>", array, extension=".png"))
    else:
        raise ImageFileError(f"{path}: cannot write {suffix!r} files; use .tif, .npy or .png")
    write_atomic(path, buffer.getvalue())
