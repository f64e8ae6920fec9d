"""Opening a napari-unet model file, or a bioimage.io package napari-unet exported
(zip or folder), in napari makes it the session's model."""

from __future__ import annotations

from pathlib import Path

from .core.bioimageio_package import is_package
from .core.checkpoint import ModelFileError, load_model


def get_reader(path):
    """The reader for a single model file or a bioimage.io package (whose
    reading explains what is supported if it is not ours), or ``None`` for anything
    else, such as other zip files and folders."""
    if not isinstance(path, (str, Path)):
        return None
    if is_package(path):
        return read_model
    if not Path(path).is_file() or Path(path).suffix.lower() == ".zip":
        return None
    return read_model


def read_model(path):
    """Load the model into the current viewer's session; adds no layers."""
    import napari
    from napari.utils.notifications import show_error, show_info

    from ._session import Session

    try:
        model = load_model(path)
    except ModelFileError as error:
        show_error(str(error))
        return [(None,)]
    viewer = napari.current_viewer()
    if viewer is not None:
        Session.of(viewer).set_model(model, f"file {Path(path).name}", path)
        show_info(f"napari-unet: model {Path(path).name} loaded; use it in the Segment or Train widget")
    return [(None,)]
