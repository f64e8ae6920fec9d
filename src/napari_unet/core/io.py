"""Reading and writing images and label files (TIFF, PNG/JPEG, NPY)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from .atomic_files import write_atomic
from .errors import ConfigError, NapariUnetError, OutputFileError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")


class ImageFileError(NapariUnetError, ValueError):
    """An image file that cannot be read."""


def is_zarr_store(path: Path) -> bool:
    """Whether ``path`` names a zarr store (a ``.zarr`` name, or a folder holding zarr's markers)."""
    markers = ("zarr.json", ".zarray", ".zgroup")
    return path.suffix.lower() == ".zarr" or (path.is_dir() and any((path / m).exists() for m in markers))


def check_image_file(path: str | os.PathLike) -> None:
    """Raise :class:`ImageFileError` unless ``path`` is a file, saying what a folder or
    a zarr store given instead takes."""
    path = Path(path)
    if is_zarr_store(path) and path.exists():
        raise ImageFileError(
            f"{path} is a zarr store, not an image file: a store is segmented chunk by chunk into another store "
            f"(command line: napari-unet segment MODEL {path} --out OUT.zarr; Python: segment_to); elsewhere give "
            "a TIFF, PNG, JPEG or NPY file"
        )
    if path.is_dir():
        raise ImageFileError(f"{path} is a folder: give the image files in it (for example {path / '*.tif'})")
    if not path.is_file():
        raise ImageFileError(f"no such image file: {path}")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The array stored in ``path`` (TIFF, PNG, JPEG or NPY; NPY without pickles)."""
    path = Path(path)
    suffix = path.suffix.lower()
    check_image_file(path)
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


def stored_colours(path: str | os.PathLike) -> str | None:
    """How the TIFF, PNG or JPEG at ``path`` stores colours ("RGB", "indexed-colour
    (palette)", ...), or None for grey values and other files."""
    suffix = Path(path).suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                if "S" in tif.series[0].axes:
                    return "RGB"
                palette = tif.pages[0].photometric == tifffile.PHOTOMETRIC.PALETTE
                return "indexed-colour (palette)" if palette else None
        if suffix in (".png", ".jpg", ".jpeg"):
            from PIL import Image

            with Image.open(path) as image:
                mode = image.mode
            return {"P": "indexed-colour (palette)", "PA": "indexed-colour (palette)"}.get(
                mode, None if mode in ("1", "L", "I", "F") or mode.startswith("I;") else mode
            )
    except Exception:  # unreadable here: read_image will say why
        return None
    return None


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """The label image stored in ``path`` (as :func:`read_image`, or the labels of a
    zarr store that ``segment --out`` wrote), refusing files that store colours: an
    RGB or palette image of an annotation was read as (H, W, 3) colours and failed
    later as a shape mismatch, as "an image", or (``weights``) as a volume 3 pixels
    wide."""
    if is_zarr_store(Path(path)) and Path(path).is_dir():
        return _store_labels(Path(path))
    colours = stored_colours(path)
    if colours is not None:
        raise ImageFileError(
            f"{path} stores colours ({colours}), not label ids: labels need one integer id per pixel (0 background, "
            "1, 2, ... cells, -1 unannotated); save them as a grayscale integer TIFF or PNG"
        )
    return read_image(path)


def _store_labels(path: Path) -> np.ndarray:
    """The full-resolution labels (array "0") of the zarr store at ``path``, as
    ``segment --out`` writes them (an OME-Zarr labels image), read whole: the labels
    of a large image could not be evaluated from the command line."""
    import zarr

    try:
        return np.asarray(zarr.open_array(path / "0", mode="r")[...])
    except Exception as error:  # zarr's own exception types
        raise ImageFileError(
            f"{path} holds no labels at {path / '0'}, where segment --out writes them ({type(error).__name__})"
        ) from error


def image_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The shape of the image :func:`read_image` would read from ``path``, from the
    file's header where the format has one (the pixels are not read)."""
    path = Path(path)
    check_image_file(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                return tuple(tif.series[0].shape)
        import imageio.v3 as iio

        return tuple(iio.improps(path).shape)
    except Exception:  # unreadable here: read_image will say why
        return tuple(read_image(path).shape)


#: The types ImageJ's TIFF format holds; labels that fit are written as uint16 in it.
IMAGEJ_TYPES = (np.uint8, np.uint16, np.float32)


def write_image(
    path: str | os.PathLike,
    array: np.ndarray,
    pixel_size_of: str | os.PathLike | None = None,
    axes: str | None = None,
    spacing: tuple[float, float, float] | None = None,
) -> None:
    """Write ``array`` atomically as TIFF (``.tif``/``.tiff``), NPY or PNG.

    A TIFF gets the pixel size that the TIFF ``pixel_size_of`` records
    (:func:`pixel_size_tags`), so that an output lines up with its input in other
    software; ``spacing`` (z, y, x), when given (a user's ``--spacing``), replaces
    the file's voxel size, in the file's unit where it names one. ImageJ's z spacing
    and unit need ImageJ's format, which holds uint8, uint16 and float32 only: labels
    are then written as uint16 where their ids fit, and arrays of other types keep
    the x/y resolution alone. ImageJ's format also names every axis: ``axes`` are
    ``array``'s (tifffile's letters, e.g. "ZYX"; by default :func:`output_axes` of
    ``pixel_size_of``); arrays whose axes are not in ImageJ's order (T, Z, C, Y, X),
    e.g. a 3D model's probabilities (C, Z, Y, X), keep the x/y resolution alone too
    (written without names, a volume's planes were read back as channels); their
    ``axes`` are kept in tifffile's own description. Every TIFF holds grey values:
    labels of a stack of 3 planes were stored as an RGB picture.
    """
    path = Path(path)
    buffer = io.BytesIO()
    suffix = path.suffix.lower()
    if pixel_size_of is not None and not Path(pixel_size_of).is_file():
        raise OutputFileError(f"pixel_size_of: no file at {pixel_size_of} to take the pixel size from")
    if spacing is not None and (len(spacing) != 3 or not all(float(size) > 0 for size in spacing)):
        raise ConfigError(f"spacing {tuple(spacing)} needs 3 positive values (z, y, x)")
    if suffix in (".tif", ".tiff"):
        import tifffile

        tags = pixel_size_tags(pixel_size_of) if pixel_size_of is not None else {}
        if spacing is not None:
            tags = spacing_tags(spacing, tags.get("metadata", {}).get("unit"))
        imagej = tags.pop("metadata", None)
        if imagej and array.dtype not in IMAGEJ_TYPES and _fits_uint16(array):
            array = array.astype(np.uint16)
        if axes is None and imagej:
            axes = "YX" if array.ndim == 2 else output_axes(pixel_size_of, array.shape)
        if imagej and array.dtype in IMAGEJ_TYPES and _in_imagej_order(axes, array.ndim):
            tags.update(imagej=True, metadata={**imagej, "axes": axes})
        elif axes is not None and len(axes) == array.ndim:
            tags["metadata"] = {"axes": axes}  # tifffile's own description keeps the names
        # grey values always: tifffile stored 3 or 4 planes (..., 3, H, W) as an RGB picture
        tifffile.imwrite(buffer, array, compression="zlib", photometric="minisblack", **tags)
    elif suffix == ".npy":
        np.save(buffer, array, allow_pickle=False)
    elif suffix == ".png":
        import imageio.v3 as iio

        buffer.write(iio.imwrite("<bytes>", array, extension=".png"))
    else:
        raise ImageFileError(f"{path}: cannot write {suffix!r} files; use .tif, .npy or .png")
    write_atomic(path, buffer.getvalue())


#: The axes an ImageJ hyperstack may hold, in the order it holds them.
IMAGEJ_ORDER = "TZCYX"


def _in_imagej_order(axes: str | None, ndim: int) -> bool:
    return (
        axes is not None
        and len(axes) == ndim
        and len(set(axes)) == ndim
        and set(axes) <= set(IMAGEJ_ORDER)
        and axes.endswith("YX")
        and list(axes) == sorted(axes, key=IMAGEJ_ORDER.index)
    )


def named_axes(path: str | os.PathLike, shape: tuple[int, ...]) -> str | None:
    """The names (tifffile's letters) that the TIFF at ``path`` gives the axes of an
    image of ``shape`` read from it, e.g. "ZYX" (ImageJ), "TCZYX" (OME) or "SYX" (RGB
    stored planar); ``None`` for other files, other shapes, or planes the file leaves
    unnamed (tifffile's "I" and "Q")."""
    series = _first_series(path) if Path(path).suffix.lower() in (".tif", ".tiff") else None
    if series is None:
        return None
    axes, sizes = series
    return axes if sizes == tuple(shape) and not set(axes) & set("IQ") else None


def _first_series(path: str | os.PathLike) -> tuple[str, tuple[int, ...]] | None:
    """The axes (tifffile's letters) and shape of the first series of the TIFF at
    ``path``; ``None`` when it cannot be read as a TIFF (reading it says why)."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return tif.series[0].axes, tuple(tif.series[0].shape)
    except Exception:  # every reader has its own exception types
        return None


def output_axes(path: str | os.PathLike, shape: tuple[int, ...], classes_before: int | None = None) -> str | None:
    """The axes (tifffile's letters) of an array of ``shape`` made from the TIFF at
    ``path``: the file's own axes where the shapes agree (labels of a one-channel
    stack keep its names, "ZYX", or "CYX" for a stack that names its planes
    channels; a stack of unnamed planes, "IYX" or "QYX", is taken for "ZYX"), else
    the file's axes without its channels (labels of a "ZCYX" stack are "ZYX");
    for another file (PNG, JPEG, NPY), "YX" for a plane's ("CYX" for its
    probabilities), so that they read back alike from every input; ``None`` when
    they cannot be told (other shapes, a stack from a file that does not name it).
    ``classes_before``: the array also holds a class axis, named "C", before its last
    ``classes_before`` axes (probabilities: 2 for a 2D model, 3 for a 3D one)."""
    shape = tuple(shape)
    if classes_before is not None:
        shape = shape[: len(shape) - classes_before - 1] + shape[len(shape) - classes_before :]
    series = _first_series(path)
    if series is None:
        plane = len(shape) == 2 and classes_before in (None, 2)
        return ("YX" if classes_before is None else "CYX") if plane else None
    axes, sizes = series
    if "Z" not in axes and sum(axis in "IQ" for axis in axes) == 1:  # ImageJ's plain stack: "images", no "slices"
        axes = axes.replace("I", "Z").replace("Q", "Z")
    whole = list(zip(axes, sizes))
    for pairs in (whole, [(axis, size) for axis, size in whole if axis not in "CS"]):
        if tuple(size for _, size in pairs) != shape:
            continue
        letters = "".join(axis for axis, _ in pairs)
        if classes_before is None:
            return letters
        if "C" in letters:
            return None  # a class axis beside the file's own "C"
        cut = len(letters) - classes_before
        return letters[:cut] + "C" + letters[cut:]
    return None


def _fits_uint16(array: np.ndarray) -> bool:
    if not np.issubdtype(array.dtype, np.integer) or array.size == 0:
        return False
    return int(array.min()) >= 0 and int(array.max()) <= np.iinfo(np.uint16).max


def _tiff_calibration(path: str | os.PathLike) -> tuple[dict, dict] | None:
    """The first page's ``XResolution``, ``YResolution`` and ``ResolutionUnit`` tag
    values (those present; resolutions as (numerator, denominator)) and ImageJ's
    metadata of the TIFF at ``path``; ``None`` for other files and for metadata that
    cannot be read (pixels readable, metadata not: the caller goes without)."""
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page_tags = tif.pages[0].tags
            names = ("XResolution", "YResolution", "ResolutionUnit")
            values = {name: page_tags[name].value for name in names if page_tags.get(name) is not None}
            return values, dict(tif.imagej_metadata or {})
    except Exception:
        return None


def pixel_size_tags(path: str | os.PathLike) -> dict:
    """``tifffile.imwrite`` keywords that give a new TIFF the pixel size the TIFF at
    ``path`` records: its X/Y resolution and resolution unit, and under
    ``metadata`` ImageJ's z ``spacing`` and ``unit``; ``{}`` for other files, files
    without a resolution, or metadata that cannot be read."""
    found = _tiff_calibration(path)
    if found is None or not {"XResolution", "YResolution"} <= found[0].keys():
        return {}
    values, imagej = found
    (x, x_unit), (y, y_unit) = values["XResolution"], values["YResolution"]
    if not x_unit or not y_unit:
        return {}
    tags = {"resolution": (x / x_unit, y / y_unit), "resolutionunit": values.get("ResolutionUnit", 1)}
    calibration = {key: imagej[key] for key in ("spacing", "unit") if key in imagej}
    if calibration:
        tags["metadata"] = calibration
    return tags


def spacing_tags(spacing: tuple[float, float, float], unit: str | None = None) -> dict:
    """``tifffile.imwrite`` keywords, as :func:`pixel_size_tags` gives them, that
    record the voxel size ``spacing`` (z, y, x) and ImageJ's ``unit`` if given."""
    z, y, x = (float(size) for size in spacing)
    calibration = {"spacing": z} | ({"unit": unit} if unit else {})
    return {"resolution": (1 / x, 1 / y), "resolutionunit": 1, "metadata": calibration}


def read_spacing(path: str | os.PathLike) -> tuple[float, float, float] | None:
    """The voxel spacing (z, y, x) a TIFF file records, or ``None``.

    Read from ImageJ's metadata (``spacing`` for z) and the X/Y resolution tags
    (pixels per unit); ``None`` where the file holds no z spacing, is not a TIFF, or
    cannot be read (the caller then treats voxels as isotropic).
    """
    found = _tiff_calibration(path)
    if found is None:
        return None
    values, imagej = found
    z = imagej.get("spacing")
    if z is None or float(z) <= 0:
        return None
    rationals = [values.get(name, (1, 1)) for name in ("YResolution", "XResolution")]
    sizes = [denominator / numerator if numerator else 1.0 for numerator, denominator in rationals]
    return (float(z), sizes[0], sizes[1])
