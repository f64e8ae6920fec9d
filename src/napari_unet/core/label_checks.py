"""Checks of a label image given for training, shared by the widgets and the command line.

Each answers with what to tell the user, or None: images given where labels are
expected (:func:`image_like_reason`, an error), values no label may take
(:func:`out_of_range_message`, an error), and label images that train but most
likely not as the user means them (warnings): binary masks, unsigned images whose
largest value stands for "unannotated", volumes whose cells change id from one
plane to the next, and ids given as the image too (:func:`ids_as_image_warning`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .config import IGNORE_LABEL


def out_of_range_message(labels: np.ndarray, name: str, lowest: int = IGNORE_LABEL) -> str | None:
    """The error for ``labels`` (called ``name``) holding a value below ``lowest``: -1
    for annotations (-1 unannotated, 0 background, 1.. cells), 0 for segmentations."""
    if not labels.size or labels.min() >= lowest:
        return None
    allowed = "0 (background), 1.. (cells) and -1 (unannotated)" if lowest < 0 else "0 (background) and 1.. (cells)"
    return f"{name}: the value {int(labels.min())} is not a label; labels are {allowed}"


def labels_warning(labels: np.ndarray, name: str = "the labels") -> str | None:
    """What to tell the user about a label image that trains, but most likely not as
    they mean it: :func:`binary_mask_warning`, else :func:`unsigned_max_warning`."""
    return binary_mask_warning(labels, name) or unsigned_max_warning(labels, name)


def binary_mask_warning(labels: np.ndarray, name: str = "the labels") -> str | None:
    """A warning when every cell has the same id and it covers separate regions: a
    binary mask (0/1, 0/255), which trains touching cells as one object (no gap is cut
    between them, and their border gets no weight)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return None
    top = labels.max()
    if top <= 0 or np.count_nonzero(labels == top) != np.count_nonzero(labels > 0):  # not a single id
        return None
    regions = ndimage.label(labels == top)[1]
    if regions < 2:
        return None
    return (
        f"{name} give all {regions} separate regions the same id {int(top)}: this looks like a binary mask, and "
        f"training learns cells that touch as one object. Give each cell its own id (0 background, 1, 2, ...; "
        f"in Python skimage.measure.label(mask) does it where cells do not touch)"
    )


def unsigned_max_warning(labels: np.ndarray, name: str = "the labels", use: str = "trained") -> str | None:
    """A warning when an unsigned label image reaches its type's largest value.

    255 in a uint8 (65535 in a uint16) file usually stands for "unannotated" in a
    format that cannot hold -1; trained (or scored: ``use``) as it is, it becomes one
    giant cell.
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.unsignedinteger) or labels.size == 0:
        return None
    top = np.iinfo(labels.dtype).max
    if int(labels.max()) != top:
        return None
    share = np.count_nonzero(labels == top) / labels.size
    return (
        f"{name} are {labels.dtype} and {share:.0%} of their pixels hold {top}, the largest {labels.dtype} value: "
        f"if {top} means 'unannotated', it is {use} as one giant cell. Save unannotated pixels as -1 in a "
        f"signed integer file (int16 or int32), or mark them -1 in the Annotate widget"
    )


def ids_changing_between_planes(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """``(z, a, b)`` for each cell ``a`` of plane ``z`` of a volume (Z, Y, X) that
    shares at least half of the larger of the two cross-sections with a cell
    ``b != a`` of plane ``z + 1``, where both cross-sections are at least half of
    their cells' largest: one cell painted with a new id on the next plane, most
    likely. Two different cells stacked along z meet cap to cap or cap to body, and
    a cap is a small part of its cell's largest cross-section (the densely annotated
    3D nuclei of the real-data benchmark and the 3D sample have no such pair)."""
    ids = np.unique(labels[labels > 0])
    if ids.size == 0:
        return []
    largest = np.zeros(ids.size, np.int64)
    sections = []
    for plane in labels:
        plane_ids, plane_areas = np.unique(plane[plane > 0], return_counts=True)
        np.maximum.at(largest, np.searchsorted(ids, plane_ids), plane_areas)
        sections.append((plane_ids, plane_areas))
    found = []
    for z in range(labels.shape[0] - 1):
        upper, lower = labels[z], labels[z + 1]
        shared = (upper > 0) & (lower > 0) & (upper != lower)
        if not shared.any():
            continue
        pairs, overlaps = np.unique(np.stack([upper[shared], lower[shared]]), axis=1, return_counts=True)
        area_a = _section(sections[z], pairs[0])
        area_b = _section(sections[z + 1], pairs[1])
        same_place = 2 * overlaps >= np.maximum(area_a, area_b)
        wide = (2 * area_a >= largest[np.searchsorted(ids, pairs[0])]) & (
            2 * area_b >= largest[np.searchsorted(ids, pairs[1])]
        )
        found += [(z, int(a), int(b)) for a, b in pairs[:, same_place & wide].T]
    return found


def _section(plane_sections: tuple[np.ndarray, np.ndarray], cells: np.ndarray) -> np.ndarray:
    """The areas in one plane of ``cells`` (each present there)."""
    plane_ids, plane_areas = plane_sections
    return plane_areas[np.searchsorted(plane_ids, cells)]


def ids_changing_between_planes_warning(labels: np.ndarray, name: str = "the labels") -> str | None:
    """What to tell the user about :func:`ids_changing_between_planes` before 3D training."""
    found = ids_changing_between_planes(labels)
    if not found:
        return None
    z, a, b = found[0]
    more = f" (and {len(found) - 1} more such pair(s))" if len(found) > 1 else ""
    return (
        f"{name}: cell {a} on plane {z} and cell {b} on plane {z + 1} cover the same place{more}. A 3D network "
        f"takes them for two cells touching across the planes and is trained to cut them apart. If they are one "
        f"cell, give it one id in every plane (pick its id with napari's colour picker before painting the next "
        f"plane), or train the 2D network"
    )


def image_like_reason(labels: np.ndarray) -> str | None:
    """Why ``labels`` looks like an intensity image rather than a label image, or None.

    Labels are integers whose neighbouring pixels mostly agree (objects cover many
    pixels); an image has fractional values, or neighbours that mostly differ.
    """
    labels = np.asarray(labels)
    if labels.size == 0 or labels.dtype == bool:
        return None
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.issubdtype(labels.dtype, np.number):
            return f"it holds {labels.dtype} values"
        finite = labels[np.isfinite(labels)] if np.issubdtype(labels.dtype, np.floating) else labels
        if finite.size != labels.size or not np.array_equal(finite, np.round(finite)):
            return f"it holds fractional {labels.dtype} values"
    if labels.shape[-1] < 2:
        return None
    sample = labels.reshape(-1, labels.shape[-1])[:, :4096]  # plenty of pixel pairs, bounded work
    same = np.count_nonzero(sample[:, 1:] == sample[:, :-1]) / max(sample[:, 1:].size, 1)
    if same < 0.5:
        return f"only {same:.0%} of horizontally neighbouring pixels share a value (labels: most do)"
    return None


#: A label image given as the image is told apart only with at least this many cells.
IDS_AS_IMAGE_CELLS = 3


def ids_as_image_warning(image: np.ndarray, labels: np.ndarray, name: str) -> str | None:
    """The warning for an ``image`` (C, *spatial) that holds ids rather than a
    picture of the cells: one channel of integers, one value of its own on each of the
    (at least :data:`IDS_AS_IMAGE_CELLS`) cells of ``labels`` (*spatial) and one on
    their background. No microscope image is constant over its cells; a labels file
    given for both image and labels is, and so is a label file opened as an image
    layer. ``None`` otherwise (most images: at the first two neighbouring pixels of a
    cell that differ)."""
    if image.shape[0] != 1 or not (np.issubdtype(image.dtype, np.integer) or image.dtype == bool):
        return None
    values = image[0]
    for axis in range(labels.ndim):  # constant across every pair of neighbours of one id
        before = (slice(None),) * axis + (slice(None, -1),)
        after = (slice(None),) * axis + (slice(1, None),)
        same = (labels[before] == labels[after]) & (labels[before] != IGNORE_LABEL)
        if np.any(values[before][same] != values[after][same]):
            return None
    annotated = labels != IGNORE_LABEL
    ids, ids_values = np.unique(np.stack([labels[annotated], values[annotated]]), axis=1)
    cells = ids > 0
    if np.count_nonzero(cells) < IDS_AS_IMAGE_CELLS or len(np.unique(ids)) != len(ids):
        return None  # few cells, or an id with several values (pieces of another annotation)
    if len(np.unique(ids_values[cells])) != np.count_nonzero(cells):
        return None  # cells sharing a value: a drawing of cells, not ids
    return (
        f"the image of {name} looks like a label image: each of its {np.count_nonzero(cells)} annotated cells has "
        "one value of its own in it, as ids do. Train on the microscope image (were the labels given as the image "
        "too?)"
    )


def looks_like_image_message(name: str, reason: str) -> str:
    """The one message for an image given where labels are expected."""
    return (
        f"{name}: labels must be integers with few distinct values; this looks like an image ({reason}). "
        "Give the annotation instead: 0 background, 1, 2, ... one id per cell, -1 unannotated"
    )
