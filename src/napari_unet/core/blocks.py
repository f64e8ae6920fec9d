"""Instance labels of a plane chunk by chunk, equal to the whole-plane result.

:func:`napari_unet.core.instances.mask_to_labels` labels a foreground mask in one
piece. Here the mask is cut into a grid of chunks and labelled in two passes that
each hold one chunk (plus a 1-px halo) at a time, with the same result pixel for
pixel, numbering included:

1. :func:`summarize` labels each chunk's foreground and background 4-connected
   components on their own and keeps a small summary: component sizes, the first
   pixel of each object (raster order), background components' boxes, whether
   components touch the image border, which background and foreground components touch, and
   the component ids along the chunk's four faces.
2. :func:`merge` joins ids that touch across chunk faces (connected components of the
   graph of face pairs, i.e. a union-find), for the foreground and for the background.
   A background component that does not reach the image border is a hole: a hole
   bordered by one object takes that object's id (its nearest object pixels all
   belong to objects that touch the hole), one bordered by several is split by a
   distance transform over the same window as the whole-image code, so ties go the
   same way. Sizes are summed over chunks (filled holes included), small objects
   dropped and the rest numbered 1..n by their first pixel in raster order.
3. :func:`final_chunk` relabels one chunk through the merged tables and grows the
   objects by ``expand`` px using a halo of the neighbouring chunks' labels, so the
   grow's tie order at chunk faces is the whole-image one (exact for ``expand <= 1``,
   the default; larger grows may break distance ties differently at chunk faces).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage import segmentation

from .config import InstanceConfig
from .instances import _grow_one_pixel, first_pixels, kept_by_size

_CROSS = ndimage.generate_binary_structure(2, 1)
_FACES = ("top", "bottom", "left", "right")


@dataclass(frozen=True)
class ChunkGrid:
    """A plane of ``shape`` (H, W) cut into chunks of ``chunk`` (h, w) (the last row
    and column of chunks may be smaller)."""

    shape: tuple[int, int]
    chunk: tuple[int, int]

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(math.ceil(n / c) for n, c in zip(self.shape, self.chunk))

    def region(self, i: int, j: int) -> tuple[slice, slice]:
        (ch, cw), (height, width) = self.chunk, self.shape
        return slice(i * ch, min((i + 1) * ch, height)), slice(j * cw, min((j + 1) * cw, width))

    def chunks(self) -> Iterator[tuple[int, int]]:
        """Chunk positions (i, j) in raster order."""
        rows, cols = self.grid
        for i in range(rows):
            for j in range(cols):
                yield i, j

    def intersecting(self, rows: slice, cols: slice) -> Iterator[tuple[int, int]]:
        """The chunks that a window of the plane overlaps."""
        (ch, cw), (n_rows, n_cols) = self.chunk, self.grid
        for i in range(max(rows.start // ch, 0), min((rows.stop - 1) // ch + 1, n_rows)):
            for j in range(max(cols.start // cw, 0), min((cols.stop - 1) // cw + 1, n_cols)):
                yield i, j


def label_chunk(mask: np.ndarray) -> tuple[np.ndarray, int, np.ndarray, int]:
    """4-connected components of a chunk's foreground and of its background:
    (foreground ids, count, background ids, count), numbered in raster order."""
    fg, n_fg = ndimage.label(mask, structure=_CROSS)
    bg, n_bg = ndimage.label(~mask, structure=_CROSS)
    return fg, n_fg, bg, n_bg


@dataclass
class ChunkSummary:
    """What the merge needs of one chunk (small: per-component numbers and the faces).

    ``fg_sizes``/``bg_sizes``: pixels per component (index 0 unused); ``fg_first``: the
    flat plane index of each object's first pixel; ``fg_border``/``bg_border``: whether
    a component touches the image border; ``bg_box``: its box (y0, y1, x0, x1) in the
    plane; ``touching``: (background id, foreground id) pairs that are 4-neighbours in
    the chunk; ``faces``: foreground and background ids along the four faces.
    """

    fg_sizes: np.ndarray
    fg_first: np.ndarray
    fg_border: np.ndarray
    bg_sizes: np.ndarray
    bg_border: np.ndarray
    bg_box: np.ndarray
    touching: np.ndarray
    faces: dict[str, np.ndarray] = field(default_factory=dict)

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {name: getattr(self, name) for name in ("fg_sizes", "fg_first", "fg_border", "bg_sizes", "bg_border")}
        arrays.update(bg_box=self.bg_box, touching=self.touching)
        arrays.update({f"face_{name}": value for name, value in self.faces.items()})
        return arrays

    @classmethod
    def from_arrays(cls, arrays) -> ChunkSummary:
        faces = {name[5:]: np.asarray(arrays[name]) for name in arrays if name.startswith("face_")}
        names = ("fg_sizes", "fg_first", "fg_border", "bg_sizes", "bg_border", "bg_box", "touching")
        return cls(**{name: np.asarray(arrays[name]) for name in names}, faces=faces)


def _pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Unique (a, b) pairs where both are non-zero, as an (n, 2) int64 array."""
    both = (a > 0) & (b > 0)
    if not both.any():
        return np.zeros((0, 2), np.int64)
    first, second = a[both].astype(np.int64), b[both].astype(np.int64)
    base = int(second.max()) + 1
    return np.stack(np.divmod(np.unique(first * base + second), base), axis=1)  # sorted like unique(axis=0)


def summarize(mask: np.ndarray, grid: ChunkGrid, i: int, j: int, labelled=None) -> ChunkSummary:
    """Pass 1 for chunk (i, j) of ``grid`` with foreground ``mask`` (its pixels);
    ``labelled``: what :func:`label_chunk` returns for ``mask``, if already known."""
    fg, n_fg, bg, n_bg = labelled if labelled is not None else label_chunk(mask)
    rows, cols = grid.region(i, j)
    height, width = grid.shape
    first = first_pixels(fg, n_fg)
    local_y, local_x = np.divmod(first, mask.shape[1])
    fg_first = (local_y + rows.start) * width + local_x + cols.start
    fg_first[0] = -1
    sides = ((0, rows.start == 0), (-1, rows.stop == height)), ((0, cols.start == 0), (-1, cols.stop == width))

    def on_border(ids: np.ndarray, count: int) -> np.ndarray:
        """(count + 1,) bool: which of a chunk's components touch the image border."""
        border = np.zeros(count + 1, bool)
        for axis, ends in enumerate(sides):
            for index, reached in ends:
                if reached:
                    border[np.take(ids, index, axis=axis)] = True
        border[0] = False
        return border

    box = np.zeros((n_bg + 1, 4), np.int64)
    for index, window in enumerate(ndimage.find_objects(bg), start=1):
        if window is not None:
            box[index] = (window[0].start + rows.start, window[0].stop + rows.start,
                          window[1].start + cols.start, window[1].stop + cols.start)  # fmt: skip
    touching = np.concatenate(
        [
            _pairs(bg[:, 1:], fg[:, :-1]),
            _pairs(bg[:, :-1], fg[:, 1:]),
            _pairs(bg[1:], fg[:-1]),
            _pairs(bg[:-1], fg[1:]),
        ]
    )
    touching = np.unique(touching, axis=0) if len(touching) else touching
    faces = {}
    for prefix, ids in (("fg", fg), ("bg", bg)):
        for name, edge in zip(_FACES, (ids[0], ids[-1], ids[:, 0], ids[:, -1])):
            faces[f"{prefix}_{name}"] = edge.astype(np.int32)
    return ChunkSummary(
        fg_sizes=np.bincount(fg.ravel(), minlength=n_fg + 1).astype(np.int64),
        fg_first=fg_first.astype(np.int64),
        fg_border=on_border(fg, n_fg),
        bg_sizes=np.bincount(bg.ravel(), minlength=n_bg + 1).astype(np.int64),
        bg_border=on_border(bg, n_bg),
        bg_box=box,
        touching=touching.astype(np.int64),
        faces=faces,
    )


@dataclass
class Patch:
    """A hole shared by several objects, filled pixel by pixel: in the plane window
    ``rows, cols``, the pixels where ``hole`` is set get ``ids`` (final ids)."""

    rows: slice
    cols: slice
    hole: np.ndarray
    ids: np.ndarray


@dataclass
class LabelTables:
    """The merge's result for one plane: per chunk, final ids of its local foreground
    components (``fg[(i, j)]``, index 0 is 0) and of its background components
    (``bg``: the owner of a hole that one object borders, else 0), the shared holes'
    patches and the number of objects."""

    grid: ChunkGrid
    config: InstanceConfig
    fg: dict[tuple[int, int], np.ndarray]
    bg: dict[tuple[int, int], np.ndarray]
    patches: list[Patch]
    n_objects: int


#: Returns the (foreground ids, background ids) of chunk (i, j), as label_chunk numbers them.
ChunkLabels = Callable[[int, int], tuple[np.ndarray, np.ndarray]]


def _overlap(target: tuple[slice, slice], source: tuple[slice, slice]):
    """Where two windows of a plane overlap: (slices into ``target``, slices into
    ``source``), or ``None`` if they do not."""
    r0, r1 = max(target[0].start, source[0].start), min(target[0].stop, source[0].stop)
    c0, c1 = max(target[1].start, source[1].start), min(target[1].stop, source[1].stop)
    if r0 >= r1 or c0 >= c1:
        return None
    into_target = (slice(r0 - target[0].start, r1 - target[0].start), slice(c0 - target[1].start, c1 - target[1].start))
    into_source = (slice(r0 - source[0].start, r1 - source[0].start), slice(c0 - source[1].start, c1 - source[1].start))
    return into_target, into_source


def _joined(summaries, order, name: str) -> np.ndarray:
    """A per-component field of every chunk's summary, chunks in ``order``, without index 0."""
    return np.concatenate([getattr(summaries[c], name)[1:] for c in order])


def _offsets(counts: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _components(n_nodes: int, edges: list[np.ndarray]) -> tuple[int, np.ndarray]:
    """Connected components of ``n_nodes`` nodes joined by (n, 2) edge arrays."""
    edges = np.concatenate(edges) if edges else np.zeros((0, 2), np.int64)
    graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(n_nodes, n_nodes))
    return connected_components(graph, directed=False)


def merge(
    summaries: dict[tuple[int, int], ChunkSummary],
    grid: ChunkGrid,
    config: InstanceConfig,
    chunk_labels: ChunkLabels,
) -> LabelTables:
    """Pass 2: join the chunks' ids into the plane's objects (see the module docstring).

    ``chunk_labels(i, j)`` relabels a chunk from its mask; it is only called for the
    chunks around holes that several objects share.
    """
    order = list(grid.chunks())
    fg_start = dict(zip(order, _offsets([len(summaries[c].fg_sizes) - 1 for c in order])))
    bg_start = dict(zip(order, _offsets([len(summaries[c].bg_sizes) - 1 for c in order])))
    n_fg = int(sum(len(summaries[c].fg_sizes) - 1 for c in order))
    n_bg = int(sum(len(summaries[c].bg_sizes) - 1 for c in order))

    def fg_node(chunk, ids):
        return fg_start[chunk] + ids - 1

    def bg_node(chunk, ids):
        return bg_start[chunk] + ids - 1

    fg_edges, bg_edges, touching = [], [], []
    for chunk in order:
        inside = summaries[chunk].touching
        if len(inside):
            touching.append(np.stack([bg_node(chunk, inside[:, 0]), fg_node(chunk, inside[:, 1])], 1))
        i, j = chunk
        for other, mine, theirs in (((i, j + 1), "right", "left"), ((i + 1, j), "bottom", "top")):
            if other not in summaries:
                continue
            near, far = summaries[chunk].faces, summaries[other].faces
            a_fg, b_fg = near[f"fg_{mine}"], far[f"fg_{theirs}"]
            a_bg, b_bg = near[f"bg_{mine}"], far[f"bg_{theirs}"]
            pairs = _pairs(a_fg, b_fg)
            fg_edges.append(np.stack([fg_node(chunk, pairs[:, 0]), fg_node(other, pairs[:, 1])], 1))
            pairs = _pairs(a_bg, b_bg)
            bg_edges.append(np.stack([bg_node(chunk, pairs[:, 0]), bg_node(other, pairs[:, 1])], 1))
            pairs = _pairs(a_bg, b_fg)
            touching.append(np.stack([bg_node(chunk, pairs[:, 0]), fg_node(other, pairs[:, 1])], 1))
            pairs = _pairs(b_bg, a_fg)
            touching.append(np.stack([bg_node(other, pairs[:, 0]), fg_node(chunk, pairs[:, 1])], 1))

    n_objects, fg_root = _components(n_fg, fg_edges)
    sizes = np.bincount(fg_root, weights=_joined(summaries, order, "fg_sizes"), minlength=n_objects).astype(np.int64)
    firsts = _joined(summaries, order, "fg_first")
    by_root = np.lexsort((firsts, fg_root))
    is_first = np.ones(len(by_root), bool)
    is_first[1:] = fg_root[by_root][1:] != fg_root[by_root][:-1]
    root_first = np.empty(n_objects, np.int64)
    root_first[fg_root[by_root][is_first]] = firsts[by_root][is_first]

    bg_owner = np.full(n_bg, -1, np.int64)  # background node -> object root of its single-owner hole
    patches: list[tuple[slice, slice, np.ndarray, np.ndarray]] = []  # owners are object roots here
    if config.fill_holes and n_bg and n_fg:
        n_regions, bg_root = _components(n_bg, bg_edges)
        border = np.bincount(bg_root, weights=_joined(summaries, order, "bg_border"), minlength=n_regions) > 0
        region_sizes = np.bincount(bg_root, weights=_joined(summaries, order, "bg_sizes"), minlength=n_regions)
        pairs = np.concatenate(touching) if touching else np.zeros((0, 2), np.int64)
        pairs = np.unique(np.stack([bg_root[pairs[:, 0]], fg_root[pairs[:, 1]]], 1), axis=0) if len(pairs) else pairs
        pairs = pairs[~border[pairs[:, 0]]]  # holes only
        regions, n_owners = np.unique(pairs[:, 0], return_counts=True)
        single = regions[n_owners == 1]
        owner_of = np.full(n_regions, -1, np.int64)
        owner_of[pairs[np.isin(pairs[:, 0], single), 0]] = pairs[np.isin(pairs[:, 0], single), 1]
        np.add.at(sizes, owner_of[single], region_sizes[single].astype(np.int64))
        bg_owner = owner_of[bg_root]
        shared = regions[n_owners > 1]
        if len(shared):
            boxes = _joined(summaries, order, "bg_box")
            patches = _fill_shared_holes(shared, bg_root, fg_root, boxes, grid, chunk_labels, fg_node, bg_node)
            for *_, owners in patches:
                np.add.at(sizes, owners, 1)

    at_border = np.bincount(fg_root, weights=_joined(summaries, order, "fg_border"), minlength=n_objects) > 0
    keep = kept_by_size(np.concatenate([[0], sizes]), np.concatenate([[False], at_border]), config)[1:]
    kept = np.flatnonzero(keep)
    final = np.zeros(n_objects, np.int32)
    final[kept[np.argsort(root_first[kept], kind="stable")]] = np.arange(1, len(kept) + 1, dtype=np.int32)

    fg_tables, bg_tables = {}, {}
    for chunk in order:
        start, count = fg_start[chunk], len(summaries[chunk].fg_sizes) - 1
        fg_tables[chunk] = np.concatenate([[0], final[fg_root[start : start + count]]]).astype(np.int32)
        start, count = bg_start[chunk], len(summaries[chunk].bg_sizes) - 1
        owners = bg_owner[start : start + count]
        owned = np.zeros(len(owners), np.int32)  # (a plane without objects has no final ids to index)
        owned[owners >= 0] = final[owners[owners >= 0]]
        bg_tables[chunk] = np.concatenate([[0], owned]).astype(np.int32)
    final_patches = [Patch(rows, cols, hole, final[owners]) for rows, cols, hole, owners in patches]
    return LabelTables(grid, config, fg_tables, bg_tables, final_patches, len(kept))


def _fill_shared_holes(shared, bg_root, fg_root, boxes, grid, chunk_labels, fg_node, bg_node):
    """Split each hole that several objects border by nearest object pixel, over the
    window that :func:`napari_unet.core.instances.fill_holes` uses (the hole's box grown
    by its diagonal). Returns (rows, cols, hole mask, owner root per hole pixel)."""
    height, width = grid.shape
    top = np.full(bg_root.max() + 1, np.iinfo(np.int64).max)
    bottom = np.zeros(bg_root.max() + 1, np.int64)
    left, right = top.copy(), bottom.copy()
    np.minimum.at(top, bg_root, boxes[:, 0])
    np.maximum.at(bottom, bg_root, boxes[:, 1])
    np.minimum.at(left, bg_root, boxes[:, 2])
    np.maximum.at(right, bg_root, boxes[:, 3])
    shared = shared[np.argsort(top[shared], kind="stable")]  # top to bottom, so the cache below stays small
    cache: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
    most = 2 * grid.grid[1] + 2  # about two rows of chunks

    def global_ids(chunk):
        if chunk in cache:
            cache.move_to_end(chunk)
            return cache[chunk]
        fg, bg = chunk_labels(*chunk)
        to_object = np.concatenate([[0], fg_root[fg_node(chunk, np.arange(1, fg.max(initial=0) + 1))] + 1])
        to_region = np.concatenate([[-1], bg_root[bg_node(chunk, np.arange(1, bg.max(initial=0) + 1))]])
        cache[chunk] = (to_object.astype(np.int32)[fg], to_region.astype(np.int32)[bg])
        if len(cache) > most:
            cache.popitem(last=False)
        return cache[chunk]

    patches = []
    for region in shared:
        y0, y1, x0, x1 = int(top[region]), int(bottom[region]), int(left[region]), int(right[region])
        reach = math.ceil(math.hypot(y1 - y0 + 2, x1 - x0 + 2)) + 1
        rows = slice(max(y0 - reach, 0), min(y1 + reach, height))
        cols = slice(max(x0 - reach, 0), min(x1 + reach, width))
        objects = np.zeros((rows.stop - rows.start, cols.stop - cols.start), np.int64)
        hole = np.zeros(objects.shape, bool)
        for chunk in grid.intersecting(rows, cols):
            ids, regions = global_ids(chunk)
            target, source = _overlap((rows, cols), grid.region(*chunk))
            objects[target] = ids[source]
            hole[target] = regions[source] == region
        _, (near_y, near_x) = ndimage.distance_transform_edt(objects == 0, return_indices=True)
        owners = objects[near_y[hole], near_x[hole]] - 1
        patches.append((rows, cols, hole, owners))
    return patches


def pregrow_chunk(mask: np.ndarray, tables: LabelTables, i: int, j: int) -> np.ndarray:
    """Chunk (i, j)'s final labels before the grow, int32, from its ``mask``."""
    fg, _ = ndimage.label(mask, structure=_CROSS)
    labels = tables.fg[(i, j)][fg]
    holes = tables.bg[(i, j)]
    if tables.config.fill_holes and holes.any():  # most chunks hold no hole of one owner
        bg, _ = ndimage.label(~mask, structure=_CROSS)
        labels += holes[bg]
    rows, cols = tables.grid.region(i, j)
    for patch in tables.patches:
        overlap = _overlap((rows, cols), (patch.rows, patch.cols))
        if overlap is None:
            continue
        target, source = overlap
        full = np.zeros(patch.hole.shape, np.int32)
        full[patch.hole] = patch.ids
        np.copyto(labels[target], full[source], where=patch.hole[source])
    return labels


def halo_width(config: InstanceConfig) -> int:
    return max(config.expand, 0)


def final_chunk(pregrow: Callable[[int, int], np.ndarray], tables: LabelTables, i: int, j: int) -> np.ndarray:
    """Chunk (i, j)'s final labels int32: its pre-grow labels (``pregrow(i, j)``)
    grown by ``expand`` px with a halo taken from the neighbouring chunks."""
    grid, expand = tables.grid, tables.config.expand
    rows, cols = grid.region(i, j)
    if expand <= 0:
        return pregrow(i, j)
    height, width = grid.shape
    window = (slice(max(rows.start - expand, 0), min(rows.stop + expand, height)),
              slice(max(cols.start - expand, 0), min(cols.stop + expand, width)))  # fmt: skip
    padded = np.zeros((window[0].stop - window[0].start, window[1].stop - window[1].start), np.int32)
    for other in grid.intersecting(*window):
        if expand == 1 and other[0] != i and other[1] != j:
            continue  # a 1-px grow only looks at 4-neighbours: corners are never needed
        target, source = _overlap(window, grid.region(*other))
        padded[target] = pregrow(*other)[source]
    if expand == 1:
        _grow_one_pixel(padded)
    else:
        padded = segmentation.expand_labels(padded, distance=expand).astype(np.int32)
    top, left = rows.start - window[0].start, cols.start - window[1].start
    return padded[top : top + rows.stop - rows.start, left : left + cols.stop - cols.start]


def labels_by_chunks(mask: np.ndarray, chunk: int | tuple[int, int], config: InstanceConfig) -> np.ndarray:
    """Instance labels of a whole ``mask`` computed chunk by chunk (what the streamed
    segmentation does, with everything in memory): equal to ``mask_to_labels``."""
    chunk = (chunk, chunk) if isinstance(chunk, int) else tuple(chunk)
    grid = ChunkGrid(mask.shape, chunk)
    summaries = {c: summarize(mask[grid.region(*c)], grid, *c) for c in grid.chunks()}

    def chunk_labels(i, j):
        fg, _, bg, _ = label_chunk(mask[grid.region(i, j)])
        return fg, bg

    tables = merge(summaries, grid, config, chunk_labels)
    cache: dict[tuple[int, int], np.ndarray] = {}

    def pregrow(i, j):
        if (i, j) not in cache:
            cache[(i, j)] = pregrow_chunk(mask[grid.region(i, j)], tables, i, j)
        return cache[(i, j)]

    labels = np.zeros(mask.shape, np.int32)
    for c in grid.chunks():
        labels[grid.region(*c)] = final_chunk(pregrow, tables, *c)
    return labels
