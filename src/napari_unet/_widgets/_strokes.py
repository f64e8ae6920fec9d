"""What a brush stroke changed, read from napari's undo history of a labels layer;
and the widgets' own edits written as strokes are, so that Ctrl+Z undoes them.

napari reports each edit of a labels layer (a brush dab, a fill, ``data_setitem``)
as an undo-history entry: a masked slice of old values, or fancy indices with old
and new values. The annotation widget counts cells from a small window around the
edits instead of the whole annotation; this module finds that window and the
window's values before and after the edits.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Labels

from ..core.annotation import Window, box_of


def write_as_one_edit(layer: Labels, indices: tuple[np.ndarray, ...], values) -> None:
    """Write ``values`` at ``indices`` (fancy indices, one array per axis) of
    ``layer`` as one undoable step, reported by its paint event like a stroke.
    (Writing into the data or replacing it leaves napari's undo history out of it:
    Ctrl+Z then undid the user's previous stroke instead.)"""
    if indices[0].size:
        with layer.block_history():
            layer.data_setitem(indices, values)


def forget_history(layer: Labels) -> None:
    """Drop napari's undo and redo history of ``layer`` after an edit written
    around it: undoing the stroke before such an edit took that stroke away (the
    user's cell), not the edit."""
    reset = getattr(layer, "_reset_history", None)
    if reset is not None:
        reset()


def history_signature(layer: Labels | None):
    """Where napari's undo and redo histories of ``layer`` stand (None if unknown)."""
    undo, redo = getattr(layer, "_undo_history", None), getattr(layer, "_redo_history", None)
    if undo is None or redo is None:
        return None
    return len(undo), len(redo), id(undo[-1]) if undo else 0, id(redo[-1]) if redo else 0


def edited_window(data: np.ndarray, atoms: list, limit: int) -> tuple[Window, list] | None:
    """The window (in the last two axes) around the pixels that the history entries
    ``atoms`` changed in ``data`` (already written into it), and for each plane the
    edits touched, ``(plane index, values before, values after)`` in that window.
    ``None`` when an entry cannot be placed or the edits' box exceeds ``limit`` pixels
    per plane: count the whole annotation instead."""
    try:
        boxes = [atom_box(atom, data.ndim) for atom in atoms]
    except (AttributeError, TypeError, ValueError, IndexError):
        return None
    box = [(min(b[axis][0] for b in boxes), max(b[axis][1] for b in boxes)) for axis in range(data.ndim)]
    rows, cols = box[-2], box[-1]
    if (rows[1] - rows[0]) * (cols[1] - cols[0]) > limit:
        return None
    window = Window.around(rows, cols, data.shape[-2:])
    lead = tuple(slice(start, stop) for start, stop in box[:-2])
    after = np.array(data[(*lead, *window.crop)])
    before = after.copy()
    origin = [start for start, _ in box[:-2]] + [window.crop[0].start, window.crop[1].start]
    for atom in reversed(atoms):
        revert_atom(before, origin, atom)
    planes = [
        (tuple(o + s for o, (s, _) in zip(offset, box[:-2])), before[offset], after[offset])
        for offset in np.ndindex(*after.shape[:-2])
    ]
    return window, planes


def atom_box(atom, ndim: int) -> list[tuple[int, int]]:
    """(start, stop) per axis of the pixels one napari undo-history entry changed."""
    slices = getattr(atom, "slice_key", None)
    if slices is not None:
        return [(int(s.start), int(s.stop)) for s in slices]
    indices = atom[0]
    if len(indices) != ndim:
        raise ValueError("history entry of another dimensionality")
    return box_of(indices)


def revert_atom(before: np.ndarray, origin: list[int], atom) -> None:
    """Write the values ``atom`` overwrote back into ``before`` (a crop at ``origin``)."""
    slices = getattr(atom, "slice_key", None)
    if slices is not None:
        region = before[tuple(slice(s.start - o, s.stop - o) for s, o in zip(slices, origin))]
        if atom.mask is None:
            region[...] = atom.old_values
        else:
            region[np.broadcast_to(atom.mask, region.shape)] = atom.old_values
        return
    indices, old_values = atom[0], atom[1]
    before[tuple(np.asarray(i) - o for i, o in zip(indices, origin))] = old_values
