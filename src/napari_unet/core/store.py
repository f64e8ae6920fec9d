"""The OME-Zarr store of a streamed segmentation (:mod:`napari_unet.core.stream`).

Labels int32 at ``0`` with a 2x pyramid ``1``, ``2``, ... (halved until a level fits
in one chunk), NGFF 0.5 multiscales and image-label metadata, optional probabilities
at ``probabilities/0``, and while a run is unfinished a scratch group ``work`` (the
foreground mask and one record file per finished chunk stage). The store is created
under a temporary name and renamed into place; its attributes hold the run's
fingerprint, so that a resumed run can check it continues the same work.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic_files import write_atomic
from .errors import ConfigError, OutputFileError
from .sources import Calibration

if TYPE_CHECKING:
    from .chunk_work import Run

#: Key of this package's record in the store's attributes.
ATTRIBUTE = "napari_unet"
#: Scratch group (mask, records) that exists while a run is unfinished.
WORK = "work"
#: Stages of :class:`ChunkProgress`.
PREDICTED, LABELLED = "predicted", "labelled"


class OutputExistsError(OutputFileError):
    """``out`` exists and was not asked to be resumed (or cannot be)."""


def axes_names(n_stack: int) -> list[str]:
    """OME-Zarr axis names of labels with ``n_stack`` stack axes (taken as z, or t and z)."""
    if n_stack > 2:
        raise ConfigError(f"OME-Zarr output holds at most 2 stack axes (t, z); this image has {n_stack}")
    return [*{0: [], 1: ["z"], 2: ["t", "z"]}[n_stack], "y", "x"]


def pyramid_shapes(shape: tuple[int, ...], chunk: tuple[int, int]) -> list[tuple[int, ...]]:
    """Shapes of the levels: halve y and x until a level fits in one chunk."""
    shapes = [tuple(shape)]
    while shapes[-1][-2] > chunk[0] or shapes[-1][-1] > chunk[1]:
        *stack, height, width = shapes[-1]
        shapes.append((*stack, math.ceil(height / 2), math.ceil(width / 2)))
    return shapes


def create_store(path: Path, run: Run, fingerprint: dict) -> None:
    """Create the empty store under a temporary name, then rename it into place."""
    import zarr
    from ome_zarr.writer import write_multiscales_metadata

    blocking = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise OutputFileError(f"cannot create {path}: {blocking} is a file, not a folder; choose another output")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.creating-{uuid.uuid4().hex[:8]}")
    try:
        root = zarr.open_group(temporary, mode="w-")
        n_stack = len(run.stack_shape)
        names = axes_names(n_stack)
        unknown = (None,) * len(names)
        calibration = run.calibration or Calibration((1.0,) * len(names), unknown, unknown)
        stack_names = calibration.names[:n_stack]  # the source's: a time series stays "t"
        if all(name not in (None, "c", "y", "x") for name in stack_names) and len(set(stack_names)) == n_stack:
            names = [*stack_names, "y", "x"]
        axes = [_axis(name, unit) for name, unit in zip(names, calibration.units)]
        chunks = (1,) * n_stack + run.grid.chunk
        datasets = []
        for level, shape in enumerate(pyramid_shapes((*run.stack_shape, *run.grid.shape), run.grid.chunk)):
            level_chunks = clipped_chunks(chunks, shape)
            root.create_array(str(level), shape=shape, chunks=level_chunks, dtype="int32", fill_value=0)
            scale = [*calibration.scale[:n_stack], *(size * 2**level for size in calibration.scale[n_stack:])]
            datasets.append({"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
        write_multiscales_metadata(root, datasets, axes=axes, name="labels")
        root.attrs["ome"] = {**root.attrs["ome"], "image-label": {"version": root.attrs["ome"]["version"]}}
        if run.probabilities:
            group = root.create_group("probabilities")
            shape = (*run.stack_shape, run.n_classes, *run.grid.shape)
            group.create_array("0", shape=shape, chunks=(*chunks[:n_stack], run.n_classes, *run.grid.chunk),
                               dtype="float32", fill_value=0.0)  # fmt: skip
            scale = [*calibration.scale[:n_stack], 1.0, *calibration.scale[n_stack:]]
            dataset = {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}
            with_classes = [*axes[:-2], _axis("c"), *axes[-2:]]
            write_multiscales_metadata(group, [dataset], axes=with_classes, name="probabilities")
        work = root.create_group(WORK)
        shape = (*run.stack_shape, *run.grid.shape)
        work.create_array("mask", shape=shape, chunks=clipped_chunks(chunks, shape), dtype="bool", fill_value=False)
        (temporary / WORK / "records" / PREDICTED).mkdir(parents=True)
        (temporary / WORK / "records" / LABELLED).mkdir(parents=True)
        root.attrs[ATTRIBUTE] = {**fingerprint, "complete": False}
        os.rename(temporary, path)
    except OSError as error:
        shutil.rmtree(temporary, ignore_errors=True)
        raise OutputFileError(f"cannot create {path}: {error.strerror or error}") from error
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _axis(name: str, unit: str | None = None) -> dict:
    """An OME-Zarr axis: its name, type and (where known) unit."""
    kind = {"t": "time", "c": "channel"}.get(name, "space")
    return {"name": name, "type": kind} if unit is None else {"name": name, "type": kind, "unit": unit}


def clipped_chunks(chunks: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(max(1, min(c, s)) for c, s in zip(chunks, shape))


def read_fingerprint(path: Path) -> dict | None:
    import zarr

    try:
        return dict(zarr.open_group(path, mode="r").attrs).get(ATTRIBUTE)
    except Exception:  # not a zarr group at all
        return None


def open_store(path: Path, run: Run, fingerprint: dict, resume: bool) -> bool:
    """Create ``path`` or check that it can be resumed; returns whether it is complete."""
    if not path.exists():
        create_store(path, run, fingerprint)
        return False
    found = read_fingerprint(path)
    if found is None:  # said first: resuming it would not help (an empty folder named as the output)
        raise OutputExistsError(
            f"{path} exists and is not a napari-unet segmentation store; it was left as it is: choose another output"
        )
    if not resume:
        raise OutputExistsError(
            f"{path} exists; choose another output, or resume it (command line: --resume; Python: resume=True)"
        )
    found = dict(found)
    complete = found.pop("complete", False)
    found.pop("objects", None)
    if found.get("version") != fingerprint.get("version"):
        raise OutputExistsError(
            f"{path} was written by another version of napari-unet, whose stores this one does not resume: "
            "choose another output"
        )
    different = {key for key in set(found) | set(fingerprint) if found.get(key) != fingerprint.get(key)}
    if different:
        image = ["from another image"] if any(key.startswith("image_") for key in different) else []
        settings = sorted(key for key in different if not key.startswith("image_"))
        recorded = ", ".join(f"{key} {found[key]}" for key in settings if found.get(key) is not None)
        how = [
            *image,
            *([f"with other {', '.join(settings)}" + (f" ({recorded})" if recorded else "")] if settings else []),
        ]
        raise OutputExistsError(
            f"{path} was written {' and '.join(how)}; resume it with the same image, model and settings, "
            "or choose another output"
        )
    return complete


def finish(run: Run, n_objects: list[int]) -> None:
    """Mark the store complete, then remove the scratch data."""
    import zarr

    register_as_labels(Path(run.out))
    root = zarr.open_group(run.out, mode="r+")  # opened after: attributes are written whole
    root.attrs[ATTRIBUTE] = {**dict(root.attrs[ATTRIBUTE]), "complete": True, "objects": n_objects}
    shutil.rmtree(Path(run.out) / WORK, ignore_errors=True)


def image_of_labels(out: Path) -> Path | None:
    """The OME-Zarr image whose ``labels/`` group ``out`` is in (``IMAGE.zarr/labels/NAME``), if so."""
    image = out.parent.parent
    if out.parent.name != "labels" or not image.is_dir():
        return None
    import zarr

    try:
        group = zarr.open_group(image, mode="r")
    except Exception:  # not a zarr group
        return None
    # NGFF 0.5 (zarr v3) images only: the store is written in zarr v3
    return image if group.metadata.zarr_format == 3 and "multiscales" in group.attrs.get("ome", {}) else None


def register_as_labels(out: Path) -> None:
    """Written into an OME-Zarr image's ``labels/`` group: list it there (NGFF labels)
    and point its ``image-label`` metadata at the image, so viewers pair them."""
    image = image_of_labels(out)
    if image is None:
        return
    import zarr
    from ome_zarr.writer import get_metadata, write_label_metadata

    labels = zarr.open_group(out.parent, mode="a")
    if out.name in get_metadata(labels).get("labels", []):
        return  # registered by a run killed just after
    group = zarr.open_group(out, mode="r+")
    ome = dict(group.attrs["ome"])
    ome.pop("image-label", None)
    group.attrs["ome"] = ome
    write_label_metadata(labels, out.name, source={"image": "../../"})


def write_pyramid(run: Run) -> None:
    """Levels 1, 2, ... from the level above, by keeping every second pixel (dask)."""
    import dask.array as da
    import zarr

    root = Path(run.out)
    levels = pyramid_shapes((*run.stack_shape, *run.grid.shape), run.grid.chunk)
    for level in range(1, len(levels)):
        record = run.records / f"level_{level}.done"
        if record.exists():
            continue
        above = da.from_zarr(zarr.open_array(root / str(level - 1), mode="r"))
        target = zarr.open_array(root / str(level), mode="r+")
        halved = above[..., ::2, ::2].rechunk(target.chunks)
        da.store(halved, target, lock=False, scheduler="threads")
        write_atomic(record, b"")


def refresh_pyramid(out: str | os.PathLike, plane: tuple[int, ...], rows: slice, cols: slice) -> None:
    """Bring the pyramid levels over one window of a plane up to date with level 0,
    for a viewer that watches a run (level ``k`` keeps every ``2**k``-th pixel, as
    :func:`write_pyramid` does, which still writes the final levels). Call it from
    one thread: level chunks are read, changed and written back."""
    import zarr

    root = Path(out)
    full = zarr.open_array(root / "0", mode="r")
    level = 1
    while (root / str(level)).exists():
        step = 2**level
        target = zarr.open_array(root / str(level), mode="r+")
        top, left = -(-rows.start // step), -(-cols.start // step)
        bottom, right = -(-rows.stop // step), -(-cols.stop // step)
        if bottom > top and right > left:
            window = (*plane, slice(top * step, rows.stop, step), slice(left * step, cols.stop, step))
            target[(*plane, slice(top, bottom), slice(left, right))] = full[window]
        level += 1
