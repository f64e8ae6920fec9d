"""Large and lazy image layers in the Segment widget.

Dask-, zarr- and multiscale image layers are passed on as they are (the
full-resolution level of a multiscale layer): prediction reads only the windows of
the tiles it works on. Above :data:`STORE_PIXELS` pixels, or when asked, the labels
are written chunk by chunk into a zarr store (:func:`napari_unet.segment_to`) and
shown as a multiscale labels layer backed by that store, refreshed as chunks finish.
A cancelled run leaves the store; running again with the same store resumes it. A
temporary store (no folder chosen) is deleted when the next run's layer replaces its
layer, and when napari (Python) ends: nothing shows it any more, and a large image's
labels take hundreds of MB.
"""

from __future__ import annotations

import atexit
import math
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from napari.layers import Image, Labels

from ..core.progress import until_stopped
from ..core.store import ATTRIBUTE, refresh_pyramid
from ..core.stream import DEFAULT_CHUNK, ChunkProgress, StreamResult, iter_segment_to
from ._layers import (
    ROLE,
    LayerError,
    follow_placement,
    helper_name,
    layer_named,
    placement_on,
    selection_kept,
    spatial_shape,
)

#: Images with more pixels than this (all planes) go through a zarr store.
STORE_PIXELS = 1 << 26
#: Chunk edge of the stores the widget writes.
STORE_CHUNK = DEFAULT_CHUNK
#: Least seconds between two refreshes of the labels layer while a store fills in.
REFRESH_S = 0.5
#: The temporary folders this session made for stores (:func:`store_for`).
_TEMPORARY: set[Path] = set()
#: The metadata key of a store-backed labels layer that holds its store's path.
STORE_KEY = "napari_unet_store"


def lazy_image_data(layer: Image | None):
    """The data of an image layer without reading it (the full-resolution level of a
    multiscale layer) and its channel axis (-1 for RGB layers)."""
    if layer is None:
        raise LayerError("choose an image layer first (File > Open, or File > Open Sample > napari-unet)")
    data = layer.data[0] if layer.multiscale else layer.data
    return data, (-1 if layer.rgb else None)


def wants_store(layer: Image, asked: bool) -> bool:
    return asked or math.prod(spatial_shape(layer)) > STORE_PIXELS


#: Longest file name made from a layer's name (most file systems allow 255 bytes).
STORE_NAME_BYTES = 120


def store_file_name(layer_name: str) -> str:
    """A file name from a layer's name: path separators and characters that file
    systems refuse become "_", and a long name is cut (at a character boundary) to
    :data:`STORE_NAME_BYTES` bytes of UTF-8."""
    name = re.sub(r'[\\/:*?"<>|\x00-\x1f]', "_", layer_name).strip(" .") or "labels"
    return name.encode()[:STORE_NAME_BYTES].decode(errors="ignore")


@atexit.register
def _remove_temporary_stores() -> None:
    """Delete the temporary store folders left (the last run's, a cancelled one's):
    five walks of a new user left 1-1.2 MB each in /tmp, a large image's hundreds."""
    while _TEMPORARY:
        shutil.rmtree(_TEMPORARY.pop(), ignore_errors=True)


def store_for(layer: Image, chosen) -> tuple[Path, bool]:
    """Where to write (the chosen folder, or a new temporary one) and whether to resume:
    a chosen store that an earlier, unfinished run of napari-unet left is resumed."""
    if chosen is None or str(chosen) in ("", "."):
        folder = Path(tempfile.mkdtemp(prefix="napari-unet-"))
        _TEMPORARY.add(folder)
        return folder / f"{store_file_name(layer.name)}.zarr", False
    path = Path(chosen)
    if not path.exists():
        return path, False
    import zarr

    try:
        record = dict(zarr.open_group(path, mode="r").attrs).get(ATTRIBUTE) or {}
    except Exception:  # not a zarr store
        record = {}
    if record and not record.get("complete"):
        return path, True
    raise LayerError(f"{path} exists; choose a new store folder (an unfinished napari-unet store is resumed)")


@dataclass(frozen=True)
class StoreDone:
    result: StreamResult


def store_job(model, data, out: Path, *, stop: threading.Event, resume: bool, **options):
    """Segment ``data`` into the store ``out``, keeping its pyramid current for the
    viewer; returns ``None`` if stopped (the store can be resumed)."""
    run = iter_segment_to(model, data, out, resume=resume, chunk=STORE_CHUNK, **options)
    result = yield from until_stopped(_refreshing(run, out), stop)
    return None if result is None else StoreDone(result)


def _refreshing(run, out: Path):
    try:
        while True:
            try:
                progress = next(run)
            except StopIteration as end:
                return end.value
            refresh_pyramid(out, progress.plane, progress.rows, progress.cols)
            yield progress
    finally:
        run.close()


class StoreView:
    """The labels layer that shows a store while it fills in."""

    def __init__(self, viewer, name: str, out: Path, like: Image) -> None:
        self.viewer, self.name, self.out, self.like = viewer, name, out, like
        self.layer: Labels | None = None
        self.refreshed = 0.0

    def update(self, progress: ChunkProgress) -> None:
        if time.monotonic() - self.refreshed >= REFRESH_S or progress.done == progress.total:
            self._show()
            self.refreshed = time.monotonic()

    def finish(self) -> None:
        self._show()

    def _show(self) -> None:
        """Show the store's levels, read afresh: a layer refresh re-read none of the
        coarser levels (arrays opened earlier kept answering what they first read),
        so the labels filled in only when zoomed in to the full resolution."""
        import zarr

        levels = []
        while (self.out / str(len(levels))).exists():
            levels.append(zarr.open_array(self.out / str(len(levels)), mode="r"))
        data = levels if len(levels) > 1 else levels[0]
        if self.layer is not None and self.layer in self.viewer.layers:
            self.layer.data = data
            return
        ndim = levels[0].ndim
        name = helper_name(self.viewer, self.name, "segmentation")  # never a layer of the user's
        earlier = layer_named(self.viewer, name)
        if _shows_alike(earlier, levels):
            # the earlier run's layer shows this one's store: napari took 0.3-0.8 s to remove a
            # large layer and add another, while the window froze
            stored = earlier.metadata.get(STORE_KEY)
            earlier.data = data
            earlier.metadata = {**earlier.metadata, STORE_KEY: str(self.out)}
            follow_placement(earlier, self.like)
            _drop_temporary_store(stored, keep=self.out)
            self.layer = earlier
            return
        with selection_kept(self.viewer):  # the user's layer stays selected, in its mode
            if earlier is not None:
                self.viewer.layers.remove(earlier)
                _drop_temporary_store(earlier.metadata.get(STORE_KEY), keep=self.out)
            self.layer = self.viewer.add_labels(
                data,
                name=name,
                multiscale=len(levels) > 1,
                metadata={ROLE: "segmentation", STORE_KEY: str(self.out)},
                **placement_on(self.like, ndim),
            )


def _shows_alike(layer, levels: list) -> bool:
    """Whether labels ``layer`` can show the store ``levels`` instead of its data: both
    multiscale or both not, the same shape and type at full resolution (as napari-unet's
    helper layers are reused)."""
    if not isinstance(layer, Labels) or layer.multiscale != (len(levels) > 1):
        return False
    first = layer.data[0] if layer.multiscale else layer.data
    return first.shape == levels[0].shape and first.dtype == levels[0].dtype


def _drop_temporary_store(store: str | None, keep: Path) -> None:
    """Delete the temporary folder of ``store`` (the path a labels layer showed before
    it was replaced or given another store) unless it holds ``keep``, the store shown
    now; chosen stores stay."""
    folder = Path(store).parent if store else None
    if folder in _TEMPORARY and folder != keep.parent:
        _TEMPORARY.discard(folder)
        shutil.rmtree(folder, ignore_errors=True)
