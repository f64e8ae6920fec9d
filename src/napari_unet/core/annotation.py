"""What an annotation holds, kept up to date cheaply while the user paints.

An annotation is an integer label image (..., H, W): -1 unannotated (the default
of a new annotation), 0 background the user vouches for, 1, 2, ... cells. This
module answers the questions the Annotate widget shows after every stroke:

- how many cells, and how much of the image is background or still unannotated;
- which pairs of cells touch (training cuts a background gap between them);
- which pairs of cells lie 1-2 px apart with only *unannotated* pixels between them:
  the network then sees no background separating them and learns to merge them.

The last two are found per plane from 8-neighbour pixel pairs. "Bridged" pairs are
those that touch once every cell has grown by one pixel into unannotated pixels
(:func:`grown_into_unannotated`) but not before. :class:`AnnotationStats` keeps the
counts as multisets, so an edit inside a bounding box updates them from a small
window around it (:meth:`AnnotationStats.update_window`) instead of the whole image.

The checks of a label image given for training are in :mod:`.label_checks`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .config import IGNORE_LABEL
from .weights import HALF_NEIGHBOURHOOD, neighbour_views

#: Pixels around an edited box whose counts and highlight can change (see update_window).
WINDOW_MARGIN = 4
#: Highlight values: cell pixels on the gap cut between touching cells, and
#: unannotated pixels that are all that separates two nearby cells.
TOUCHING_GAP, UNANNOTATED_RIM = 1, 2

Plane = tuple[int, ...]


def annotation_dtype(largest_id: int) -> np.dtype:
    """The signed type an annotation is kept in: int16 while ids fit (napari draws
    2-byte labels without converting them), else int32, else int64."""
    for dtype in (np.int16, np.int32):
        if largest_id < np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def new_annotation(shape: tuple[int, ...]) -> np.ndarray:
    """An annotation of ``shape`` with every pixel unannotated (-1)."""
    return np.full(shape, IGNORE_LABEL, annotation_dtype(0))


def as_signed(labels: np.ndarray) -> np.ndarray:
    """``labels`` in a signed integer type that can hold -1 (a copy when converted)."""
    labels = np.asarray(labels)
    if np.issubdtype(labels.dtype, np.signedinteger):
        return labels
    largest = int(labels.max()) if labels.size else 0
    if largest > np.iinfo(np.int64).max:
        labels = compact_ids(labels)
        largest = int(labels.max())
    return labels.astype(annotation_dtype(largest))


def compact_ids(labels: np.ndarray) -> np.ndarray:
    """``labels`` (integers: -1 unannotated, 0 background, cells) as they are when no
    id exceeds their pixel count; otherwise int64 with the cells renumbered 1..n in
    the order of their ids (-1 and 0 stay). Tables indexed by id then stay as small
    as the image: ids such as 2**40, which some software writes, would make them
    terabytes."""
    labels = np.asarray(labels)
    if labels.size == 0 or int(labels.max()) <= labels.size:
        return labels
    values, inverse = np.unique(labels, return_inverse=True)
    cells = values > 0
    renumbered = np.where(cells, np.cumsum(cells), values.astype(np.int64))  # values <= 0 fit int64
    return renumbered[inverse].reshape(labels.shape)


def _pair_keys(labels: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    """``a * 2**32 + b`` (a < b) for every 8-neighbour pair of different cells with
    both pixels inside ``labels[rows, cols]``."""
    region = labels[rows, cols]
    keys = []
    for dy, dx in HALF_NEIGHBOURHOOD:
        a, b = neighbour_views(region, dy, dx)
        touching = (a > 0) & (b > 0) & (a != b)
        if touching.any():
            first, second = a[touching].astype(np.int64), b[touching].astype(np.int64)
            keys.append(np.minimum(first, second) * 2**32 + np.maximum(first, second))
    return np.concatenate(keys) if keys else np.zeros(0, np.int64)


def _count_pairs(labels: np.ndarray, rows: slice, cols: slice) -> Counter:
    keys, counts = np.unique(_pair_keys(labels, rows, cols), return_counts=True)
    return Counter({(int(k >> 32), int(k & 0xFFFFFFFF)): int(c) for k, c in zip(keys, counts)})


#: Cells grow into unannotated pixels that share an edge with them (not just a corner,
#: so background painted between two cells is not bypassed around its ends).
_EDGE_NEIGHBOURS = ndimage.generate_binary_structure(2, 1)


def grown_into_unannotated(labels: np.ndarray) -> np.ndarray:
    """``labels`` (H, W) with every unannotated pixel that shares an edge with a cell
    given that cell's id (the largest such), other unannotated pixels 0."""
    cells = np.where(labels > 0, labels, 0)
    grown = ndimage.maximum_filter(cells, footprint=_EDGE_NEIGHBOURS, mode="constant", cval=0)
    return np.where(labels == IGNORE_LABEL, grown, labels)


def cell_box(labels: np.ndarray, margin: int = WINDOW_MARGIN) -> tuple[slice, slice] | None:
    """The box (H, W slices) holding every cell pixel of ``labels`` grown by ``margin``,
    or None without cells: pairs and highlights lie inside it."""
    cells = labels > 0
    rows, cols = np.flatnonzero(cells.any(axis=1)), np.flatnonzero(cells.any(axis=0))
    if rows.size == 0:
        return None
    h, w = labels.shape
    return (
        slice(max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, h)),
        slice(max(cols[0] - margin, 0), min(cols[-1] + 1 + margin, w)),
    )


def highlight(labels: np.ndarray) -> np.ndarray:
    """uint8 (H, W): :data:`TOUCHING_GAP` on cell pixels next to another cell,
    :data:`UNANNOTATED_RIM` on unannotated pixels that lie between two cells, 0 elsewhere."""
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, np.uint8)
    box = cell_box(labels)
    if box is None:
        return out
    if box != (slice(0, labels.shape[0]), slice(0, labels.shape[1])):
        out[box] = highlight(labels[box])
        return out
    gap = np.zeros(labels.shape, bool)
    for dy, dx in HALF_NEIGHBOURHOOD:
        a, b = neighbour_views(labels, dy, dx)
        touching = (a > 0) & (b > 0) & (a != b)
        gap_a, gap_b = neighbour_views(gap, dy, dx)
        gap_a |= touching
        gap_b |= touching
    grown = grown_into_unannotated(labels)
    cells = np.where(grown > 0, grown, 0)
    largest = ndimage.maximum_filter(cells, size=3, mode="constant", cval=0)
    big = np.iinfo(cells.dtype).max
    smallest = ndimage.minimum_filter(np.where(cells > 0, cells, big), size=3, mode="constant", cval=big)
    # an unannotated pixel a cell grew into, next to a pixel another cell reached (but
    # not beside cells that touch anyway: training cuts those apart)
    bridging = (labels == IGNORE_LABEL) & (cells > 0) & ((largest != cells) | (smallest != cells))
    bridging &= ~ndimage.binary_dilation(gap, structure=np.ones((3, 3), bool))
    out[bridging] = UNANNOTATED_RIM
    out[gap] = TOUCHING_GAP
    return out


@dataclass
class PlaneStats:
    """Counts of one plane: pixels per value, and 8-neighbour pixel pairs per pair of
    cells in the labels (``touching``) and after growing into unannotated pixels
    (``grown``)."""

    values: Counter = field(default_factory=Counter)
    touching: Counter = field(default_factory=Counter)
    grown: Counter = field(default_factory=Counter)

    def touching_pairs(self) -> set[tuple[int, int]]:
        return {pair for pair, n in self.touching.items() if n > 0}

    def bridged_pairs(self) -> set[tuple[int, int]]:
        """Pairs separated only by unannotated pixels (1-2 px of them)."""
        return {pair for pair, n in self.grown.items() if n > 0 and self.touching.get(pair, 0) <= 0}


def _region_counts(labels: np.ndarray, rows: slice, cols: slice) -> tuple[Counter, Counter]:
    return _count_pairs(labels, rows, cols), _count_pairs(grown_into_unannotated(labels), rows, cols)


def _subtract(counter: Counter, other: Counter) -> None:
    for key, n in other.items():
        left = counter.get(key, 0) - n
        if left:
            counter[key] = left
        else:
            counter.pop(key, None)


def _add(counter: Counter, other: Counter) -> None:
    for key, n in other.items():
        total = counter.get(key, 0) + n
        if total:
            counter[key] = total
        else:
            counter.pop(key, None)


def _value_counts(values: np.ndarray) -> Counter:
    values = np.asarray(values)
    if values.size == 0:
        return Counter()
    low, high = int(values.min()), int(values.max())
    if high - low < 1 << 22:  # a histogram: far faster than sorting for label ranges
        flat = values.reshape(-1)
        counts = np.zeros(high - low + 1, np.int64)
        for start in range(0, flat.size, 1 << 22):  # in chunks: bounded temporary memory
            chunk = flat[start : start + (1 << 22)].astype(np.intp) - low
            counts += np.bincount(chunk, minlength=counts.size)
        keys = np.flatnonzero(counts)
        return Counter({int(k) + low: int(counts[k]) for k in keys})
    keys, counts = np.unique(values, return_counts=True)
    return Counter({int(k): int(c) for k, c in zip(keys, counts)})


@dataclass(frozen=True)
class Window:
    """The part of a plane an edit can affect: ``crop`` (the edited box grown by
    :data:`WINDOW_MARGIN`, clipped to the plane) and, inside the crop, ``box`` (the
    edited pixels) and ``inner`` (the box grown by 2 px, where counts and the
    highlight can change and are exact)."""

    crop: tuple[slice, slice]
    box: tuple[slice, slice]
    inner: tuple[slice, slice]

    @classmethod
    def around(cls, rows: tuple[int, int], cols: tuple[int, int], shape: tuple[int, int]) -> Window:
        crop, box, inner = [], [], []
        for (start, stop), size in zip((rows, cols), shape):
            low, high = max(start - WINDOW_MARGIN, 0), min(stop + WINDOW_MARGIN, size)
            crop.append(slice(low, high))
            box.append(slice(start - low, stop - low))
            inner.append(slice(max(start - 2, 0) - low, min(stop + 2, size) - low))
        return cls(tuple(crop), tuple(box), tuple(inner))


class AnnotationStats:
    """Counts of an annotation (..., H, W), per plane, updated edit by edit."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(shape)
        self.planes: dict[Plane, PlaneStats] = {}

    @classmethod
    def of(cls, labels: np.ndarray) -> AnnotationStats:
        """Counts of the whole of ``labels``."""
        labels = np.asarray(labels)
        stats = cls(labels.shape)
        whole = (slice(None), slice(None))
        for index in np.ndindex(*labels.shape[:-2]):
            plane = labels[index]
            box = cell_box(plane)
            touching, grown = (Counter(), Counter()) if box is None else _region_counts(plane[box], *whole)
            stats.planes[index] = PlaneStats(_value_counts(plane), touching, grown)
        return stats

    @classmethod
    def unannotated(cls, shape: tuple[int, ...]) -> AnnotationStats:
        """Counts of an annotation with every pixel -1 (without looking at one)."""
        stats = cls(shape)
        for index in np.ndindex(*shape[:-2]):
            stats.planes[index] = PlaneStats(Counter({IGNORE_LABEL: shape[-2] * shape[-1]}))
        return stats

    def update_window(self, plane: Plane, window: Window, before: np.ndarray, after: np.ndarray) -> None:
        """Apply an edit of ``plane`` inside ``window.box``: ``before`` and ``after`` are
        the plane's pixels in ``window.crop`` before and after the edit."""
        stats = self.planes.setdefault(plane, PlaneStats())
        _subtract(stats.values, _value_counts(before[window.box]))
        _add(stats.values, _value_counts(after[window.box]))
        old_touching, old_grown = _region_counts(before, *window.inner)
        new_touching, new_grown = _region_counts(after, *window.inner)
        _subtract(stats.touching, old_touching)
        _add(stats.touching, new_touching)
        _subtract(stats.grown, old_grown)
        _add(stats.grown, new_grown)

    def fill_unannotated(self, plane: Plane) -> None:
        """Counts after every unannotated pixel of ``plane`` became background."""
        stats = self.planes[plane]
        stats.values[0] += stats.values.pop(IGNORE_LABEL, 0)
        stats.grown = Counter(stats.touching)

    # -- what the widget shows ------------------------------------------------

    def value_total(self, value: int) -> int:
        return sum(stats.values.get(value, 0) for stats in self.planes.values())

    def cell_ids(self) -> dict[Plane, set[int]]:
        return {
            plane: {value for value, n in stats.values.items() if value > 0 and n > 0}
            for plane, stats in self.planes.items()
        }

    def cell_totals(self) -> tuple[int, int]:
        """(cells counted plane by plane, distinct ids over the whole stack): equal
        unless ids repeat between planes, as they do where the user gave a cell one
        id in every plane (a volume's cells in 3D): then the distinct ids lead."""
        per_plane = list(self.cell_ids().values())
        return sum(len(ids) for ids in per_plane), len(set().union(*per_plane))

    def annotated_planes(self) -> tuple[int, int]:
        """(planes with any annotated pixel, planes with no unannotated pixel left)."""
        size = self.shape[-2] * self.shape[-1]
        unannotated = [stats.values.get(IGNORE_LABEL, 0) for stats in self.planes.values()]
        return sum(n < size for n in unannotated), sum(n == 0 for n in unannotated)

    def touching_count(self) -> int:
        return sum(len(stats.touching_pairs()) for stats in self.planes.values())

    def bridged(self) -> list[tuple[Plane, tuple[int, int]]]:
        return [(plane, pair) for plane, stats in self.planes.items() for pair in sorted(stats.bridged_pairs())]

    def summary(self) -> str:
        """A few lines: cells, background and unannotated shares, touching and bridged
        pairs (and, for stacks, how ids are counted and how many planes are annotated)."""
        total = int(np.prod(self.shape)) or 1
        background = self.value_total(0) / total
        unannotated = self.value_total(IGNORE_LABEL) / total
        cells, distinct = self.cell_totals()
        repeated = len(self.shape) > 2 and cells > distinct
        text = f"cells {distinct if repeated else cells}, background {_percent(background)} of the image, "
        text += f"unannotated {_percent(unannotated)}"
        if len(self.shape) > 2:
            if repeated:  # both counts are right: which one holds depends on the network
                rule = (
                    f"ids repeat between planes: one cell each to a 3D network; {cells} cells counted plane by plane, "
                    "as a 2D network sees them"
                )
            else:
                rule = "ids unique across the stack"
            text += f" ({rule})"
            annotated, complete = self.annotated_planes()
            text += f"\nplanes annotated {annotated} of {len(self.planes)} ({complete} complete: no -1 left)"
        text += f"\ntouching pairs {self.touching_count()}"
        bridged = len(self.bridged())
        if bridged:
            text += (
                f"\n⚠ {bridged} pair(s) of cells separated only by unannotated pixels: "
                "paint background (0) between them, or training merges them"
            )
        return text


def _percent(share: float) -> str:
    """A share in whole percent, with a decimal near 0 and 1 (a few painted cells
    leave 99.6% background, not 100%), and never rounded to 0% or 100%."""
    if share in (0, 1) or 0.1 <= share < 0.99:
        return f"{share:.0%}"
    if share < 0.001:
        return "<0.1%"
    return f"{share:.1%}" if share <= 0.999 else ">99.9%"


def box_of(index_arrays: Iterable[np.ndarray]) -> list[tuple[int, int]]:
    """(start, stop) per axis of the smallest box holding the given coordinates."""
    return [(int(np.min(axis)), int(np.max(axis)) + 1) for axis in index_arrays]
