"""Reading back the bioimage.io model packages that napari-unet wrote.

Needs only napari-unet's own dependencies (no ``bioimageio.spec``). A package is a
zip or an unpacked folder; only plain file names are read from it. The state dict
is loaded with ``torch.load(weights_only=True)`` after its SHA-256 is checked against
the package's record (``napari_unet.json``), into napari-unet's own network: the
packaged architecture file is never executed. Packages that napari-unet did not
write are refused with a message saying what is supported.

The names below are the package layout that :mod:`napari_unet.core.bioimageio_package`
writes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
import zipfile
from pathlib import Path, PurePosixPath

import torch

from .checkpoint import ModelFileError, model_from_state
from .model import UNet

PACKAGE_FORMAT = "napari-unet bioimage.io package"
PACKAGE_VERSION = 1
RECORD_NAME = "napari_unet.json"
DESCRIPTION_NAMES = ("rdf.yaml", "bioimageio.yaml")
STATE_DICT_NAME = "weights.pt"
#: Added to the percentile range by ``scale_range`` (the spec requires a positive value;
#: napari-unet itself adds none, so the smallest keeps the two equal).
SCALE_RANGE_EPS = 1e-12


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: A package member larger than this (bytes) that unpacks to more than
#: :data:`BOMB_RATIO` times its packed size is refused unread: trained weights pack to
#: about 0.9 of their size, JSON records are a few kB.
BOMB_MIN_BYTES = 64 << 20
BOMB_RATIO = 20


class _Files:
    """Named files of a package, from a zip or a folder; only plain names are read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip = zipfile.ZipFile(path) if path.is_file() else None

    def names(self) -> set[str]:
        if self.zip is not None:
            return set(self.zip.namelist())
        return {p.name for p in self.path.iterdir() if p.is_file()}

    def read(self, name: str) -> bytes:
        if PurePosixPath(name).name != name or name in ("", ".", ".."):
            raise ModelFileError(f"{self.path}: refusing to read {name!r} (not a plain file name)")
        try:
            if self.zip is not None:
                self._check_unpacked_size(self.zip.getinfo(name))
                return self.zip.read(name)
            return (self.path / name).read_bytes()
        except (KeyError, OSError) as error:
            raise ModelFileError(f"{self.path} is incomplete: {name} is missing") from error
        except zipfile.BadZipFile as error:  # e.g. a member whose CRC does not match
            raise ModelFileError(f"{self.path} is damaged: {name} cannot be read ({error})") from error

    def _check_unpacked_size(self, member: zipfile.ZipInfo) -> None:
        """Refuse a member that unpacks far beyond its packed size before unpacking it
        (weights barely compress; a 6 MB package whose weights unpacked to 2 GiB of
        zeros took 4.4 GB of memory before its hash was found wrong). zipfile never
        unpacks more than the size a member declares."""
        if member.file_size > BOMB_MIN_BYTES and member.file_size > BOMB_RATIO * member.compress_size:
            raise ModelFileError(
                f"{self.path} is damaged or hostile: {member.filename} would unpack from "
                f"{member.compress_size / 1e6:.1f} MB to {member.file_size / 1e6:.0f} MB"
            )

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def _package_root(path: str | os.PathLike) -> Path | None:
    """The zip or folder of the bioimage.io package at ``path``, or ``None`` if it is none."""
    path = Path(path)
    if path.is_file() and path.name in DESCRIPTION_NAMES:
        return path.parent
    if path.is_dir():
        return path if any((path / name).is_file() for name in DESCRIPTION_NAMES) else None
    if path.is_file() and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
        except (zipfile.BadZipFile, OSError):
            return None
        return path if names & set(DESCRIPTION_NAMES) else None
    return None


def is_package(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a bioimage.io model package (zip, folder or its rdf.yaml)."""
    return _package_root(path) is not None


def foreign_package_message(path: Path) -> str:
    return (
        f"{path} is a bioimage.io package that napari-unet did not write. napari-unet opens its own "
        "model files (.safetensors) and the bioimage.io packages it exported (napari-unet export "
        "--format bioimageio), zipped or unpacked; run other bioimage.io models with bioimageio.core, "
        "deepImageJ or ilastik"
    )


def _description(files: _Files, root: Path) -> tuple[str | None, dict | None]:
    """The package's description file name and contents, read as plain YAML data
    (``safe_load``: no objects built); ``None`` for what is missing or not a mapping."""
    import yaml

    name = next((name for name in DESCRIPTION_NAMES if name in files.names()), None)
    try:
        description = yaml.safe_load(files.read(name)) if name else None
    except yaml.YAMLError as error:
        raise ModelFileError(f"{root} is damaged: {name} is no valid YAML") from error
    return name, description if isinstance(description, dict) else None


def _check_record_hash(files: _Files, root: Path, name: str | None, description: dict | None) -> None:
    """Refuse a package whose record differs from the SHA-256 its description lists for
    it: a record edited by hand (its normalisation percentiles, say) changed every
    prediction without a word, where bioimage.io's own tools refuse the package."""
    attachments = description.get("attachments") if description else None
    listed = [
        entry.get("sha256")
        for entry in (attachments if isinstance(attachments, list) else [])
        if isinstance(entry, dict) and entry.get("source") == RECORD_NAME
    ]
    if listed and listed[0] and listed[0] != sha256(files.read(RECORD_NAME)):
        raise ModelFileError(
            f"{root} is damaged or was edited: {RECORD_NAME} does not match the SHA-256 that {name} lists for it "
            "(napari-unet reads its settings from that file; export the model again to change them)"
        )


def _processing(tensors: object, key: str) -> list | None:
    """The processing steps ``key`` of the first tensor of ``tensors`` (a description's
    inputs or outputs), without the ``ensure_dtype`` float32 steps the spec adds;
    ``None`` when the description does not have them in the form napari-unet writes."""
    tensor = tensors[0] if isinstance(tensors, list) and tensors else None
    steps = (tensor.get(key) or []) if isinstance(tensor, dict) else None
    if not isinstance(steps, list) or not all(isinstance(step, dict) for step in steps):
        return None
    return [step for step in steps if step != {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]


def _check_processing(model: UNet, root: Path, name: str | None, description: dict | None) -> None:
    """Refuse a package whose description's pre- or postprocessing is not the one
    napari-unet wrote for the model: percentiles edited in rdf.yaml (the record
    untouched) would make bioimage.io's tools compute something else than napari-unet,
    which reads its normalisation from the record. A description without tensors
    (which bioimage.io's tools cannot run at all) is not compared."""
    if description is None or ("inputs" not in description and "outputs" not in description):
        return
    low, high = model.spec.normalization.low, model.spec.normalization.high
    axes = list("zyx"[-model.config.ndim :])
    steps, after = (
        _processing(description.get("inputs"), "preprocessing"),
        _processing(description.get("outputs"), "postprocessing"),
    )
    kwargs = steps[0].get("kwargs") if steps and len(steps) == 1 and steps[0].get("id") == "scale_range" else None
    try:
        same = (
            isinstance(kwargs, dict)
            and kwargs.get("axes") == axes
            and float(kwargs.get("min_percentile")) == low
            and float(kwargs.get("max_percentile")) == high
            and float(kwargs.get("eps")) == SCALE_RANGE_EPS
            and after == []
        )
    except (TypeError, ValueError):
        same = False
    if not same:
        raise ModelFileError(
            f"{root} was edited: the pre- or postprocessing in {name} is not what napari-unet wrote for this model "
            f"(scale_range over the axes {', '.join(axes)} from percentile {low:g} to {high:g}, nothing after), so "
            f"bioimage.io's tools would compute something else than napari-unet, which reads its normalisation from "
            f"{RECORD_NAME}; export the model again to change it"
        )


def read_package(path: str | os.PathLike) -> UNet:
    """The model in a bioimage.io package that napari-unet wrote (zip or folder).

    Loads the ``pytorch_state_dict`` weights with ``weights_only=True`` after checking
    their SHA-256 against the package's record, into napari-unet's own network; never
    runs code from the package. Raises :class:`ModelFileError` for anything else.
    """
    root = _package_root(path)
    if root is None:
        raise ModelFileError(f"{path} is not a bioimage.io model package (no rdf.yaml or bioimageio.yaml)")
    files = _Files(root)
    try:
        if RECORD_NAME not in files.names():
            raise ModelFileError(foreign_package_message(root))
        try:
            record = json.loads(files.read(RECORD_NAME))
        except (ValueError, UnicodeDecodeError) as error:
            raise ModelFileError(f"{root}: {RECORD_NAME} is damaged") from error
        if not isinstance(record, dict) or record.get("format") != PACKAGE_FORMAT:
            raise ModelFileError(foreign_package_message(root))
        name, description = _description(files, root)
        _check_record_hash(files, root, name, description)
        version, weights = record.get("version", 0), record.get("weights") or {}
        spec, metadata = record.get("spec") or {}, record.get("metadata") or {}
        if not (isinstance(version, int) and all(isinstance(part, dict) for part in (weights, spec, metadata))):
            raise ModelFileError(f"{root} is damaged: {RECORD_NAME} is not as napari-unet writes it")
        if version > PACKAGE_VERSION:
            raise ModelFileError(f"{root} was written by a newer napari-unet (package version {version})")
        data = files.read(str(weights.get("source", "")))
        if sha256(data) != weights.get("sha256"):
            raise ModelFileError(f"{root} is damaged: its weights do not match the hash in {RECORD_NAME}")
        try:
            with warnings.catch_warnings():  # torch's warnings on an odd pickle: the refusal below says it all
                warnings.simplefilter("ignore")
                state_dict = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as error:  # any unpickling refusal or corruption: torch's several lines stay out
            raise ModelFileError(
                f"{root}: its weights file {weights.get('source')} holds more than tensors (objects that loading "
                "would have to run), or is damaged; napari-unet never runs code from a model file, so it is not loaded"
            ) from error
    finally:
        files.close()
    state = {"kind": "model", "spec": spec, "weights": state_dict, "metadata": metadata}
    model = model_from_state(state, root).eval()
    _check_processing(model, root, name, description)
    return model
