"""Opening a napari-unet model file, or a bioimage.io package napari-unet exported
(its zip: napari offers no plugin reader for folders here, see napari.yaml), in napari
makes it the session's model.

The file is read and checked in a thread worker, so a large (or slow to read) file
never freezes napari; the model enters the session when it is loaded.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

from .core.checkpoint import ModelFileError, load_model
from .core.package_reader import is_package

log = logging.getLogger(__name__)


def get_reader(path):
    """The reader for a single model file or a bioimage.io package (whose
    reading explains what is supported if it is not ours), or ``None`` for anything
    else, such as other programs' zip files and folders. A damaged zip is taken, so
    that opening it says why it cannot be read (napari's own answer named no cause)."""
    if not isinstance(path, (str, Path)):
        return None
    if is_package(path):
        return read_model
    if not Path(path).is_file():
        return None
    if Path(path).suffix.lower() == ".zip" and zipfile.is_zipfile(path):
        return None  # another program's zip: left to the readers that know it
    return read_model  # a damaged or empty zip too: the loading says what is wrong with it


def read_model(path):
    """Start loading the model into the current viewer's session; adds no layers.

    Returns at once; the returned worker (also kept as ``read_model.worker``) puts
    the model into the session when it has been loaded, or shows why it cannot be.
    Of files dropped one after another, the last one dropped is the session's model,
    whichever loads first.
    """
    import napari
    from napari.qt.threading import create_worker
    from napari.utils.notifications import show_error, show_info

    from ._session import Session

    viewer = napari.current_viewer()
    session = Session.of(viewer) if viewer is not None else None
    name = Path(path).name

    def loaded(model) -> None:
        if read_model.worker is not worker:  # a file dropped after this one loads instead
            return
        if session is not None:
            session.set_model(model, f"file {name}", path)
        show_info(f"napari-unet: model {name} loaded; use it in the Segment or Train widget")

    def failed(error: BaseException) -> None:
        if not isinstance(error, ModelFileError):  # a bug: keep its traceback in the log
            log.error("loading %s failed", path, exc_info=error)
        show_error(str(error))

    worker = create_worker(load_model, path, _start_thread=False, _ignore_errors=True)
    worker.returned.connect(loaded)
    worker.errored.connect(failed)
    read_model.worker = worker
    worker.start()
    return [(None,)]


read_model.worker = None
