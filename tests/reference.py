"""Slow, brute-force reference implementations.

Only tests and benchmarks use these, to validate the fast code in :mod:`napari_unet.core.weights` and
:mod:`napari_unet.core.metrics`. They favour being obviously correct over speed: full-image distance
transforms, explicit loops over objects and boolean masks.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import ndimage

from napari_unet.core.config import IGNORE_LABEL
from napari_unet.core.metrics import MatchStats


def separation_target_reference(labels: np.ndarray) -> np.ndarray:
    """Target uint8 (H, W): cell pixels whose 3x3 neighbourhood has no other cell
    (3x3x3 for volumes (Z, Y, X)).

    Compares every pixel with each of its 8 (26) neighbours through a zero-padded copy.
    """
    labels = np.asarray(labels)
    padded = np.pad(labels, 1)
    cell = labels > 0
    other_cell_near = np.zeros(labels.shape, bool)
    for offset in itertools.product((-1, 0, 1), repeat=labels.ndim):
        neighbour = padded[tuple(slice(1 + d, 1 + d + n) for d, n in zip(offset, labels.shape))]
        other_cell_near |= (neighbour > 0) & (neighbour != labels)
    return (cell & ~other_cell_near).astype(np.uint8)


def weight_map_reference(
    labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0, balance_classes: bool = True, spacing=None
) -> np.ndarray:
    """The separation weight map float32 (H, W) or (Z, Y, X), by one full-image EDT per cell.

    Same definition as :func:`napari_unet.core.weights.weight_map`: all cell
    distances are stacked and sorted per pixel to get ``d1`` and ``d2``; with
    ``spacing`` the transforms are physical, in units of the finest spacing.
    """
    labels = np.asarray(labels)
    sampling = None if spacing is None else np.asarray(spacing, float) / min(spacing)
    annotated = labels != IGNORE_LABEL
    target = separation_target_reference(labels)

    class_weight = np.ones(labels.shape)
    n = annotated.sum()
    n_fg = (annotated & (target == 1)).sum()
    n_bg = (annotated & (target == 0)).sum()
    if balance_classes and n_fg > 0 and n_bg > 0:
        class_weight[target == 1] = n / (2.0 * n_fg)
        class_weight[target == 0] = n / (2.0 * n_bg)

    border = np.zeros(labels.shape)
    cells = [value for value in np.unique(labels) if value > 0]
    if len(cells) >= 2:
        transforms = [ndimage.distance_transform_edt(labels != c, sampling=sampling) for c in cells]
        distances = np.sort(np.stack(transforms), axis=0)
        d1, d2 = distances[0], distances[1]
        border = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2))
        border[target != 0] = 0.0

    weights = class_weight + border
    weights[~annotated] = 0.0
    return weights.astype(np.float32)


def match_instances_reference(
    pred: np.ndarray, truth: np.ndarray, thresholds: tuple[float, ...] = (0.5,)
) -> list[MatchStats]:
    """Instance matching by looping over every object pair with boolean masks.

    Pixels where ``truth == IGNORE_LABEL`` are dropped from both images. Pairs with
    IoU >= threshold are matched greedily by decreasing IoU, which is the unique
    matching for thresholds >= 0.5 (an object can then overlap at most one partner
    with IoU >= 0.5, up to exact ties at 0.5 that do not change the counts); lower
    thresholds raise ``ValueError``. Returns ``MatchStats`` per threshold.
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    keep = truth != IGNORE_LABEL
    pred, truth = pred[keep], truth[keep]
    true_ids = [t for t in np.unique(truth) if t > 0]
    pred_ids = [p for p in np.unique(pred) if p > 0]
    pair_iou = {}
    for t in true_ids:
        t_mask = truth == t
        for p in pred_ids:
            p_mask = pred == p
            pair_iou[(t, p)] = np.sum(t_mask & p_mask) / np.sum(t_mask | p_mask)

    results = []
    for threshold in thresholds:
        if threshold < 0.5:
            raise ValueError("the greedy reference is only valid for thresholds >= 0.5")
        used_true, used_pred, matched = set(), set(), []
        for (t, p), iou in sorted(pair_iou.items(), key=lambda item: -item[1]):
            if iou >= threshold and t not in used_true and p not in used_pred:
                used_true.add(t)
                used_pred.add(p)
                matched.append(iou)
        tp = len(matched)
        fp, fn = len(pred_ids) - tp, len(true_ids) - tp
        results.append(
            MatchStats(
                threshold=threshold,
                tp=tp,
                fp=fp,
                fn=fn,
                precision=tp / (tp + fp) if tp + fp else 0.0,
                recall=tp / (tp + fn) if tp + fn else 0.0,
                f1=2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
                ap=tp / (tp + fp + fn) if tp + fp + fn else 1.0,
                mean_matched_iou=float(np.mean(matched)) if matched else 0.0,
                n_pred=len(pred_ids),
                n_true=len(true_ids),
            )
        )
    return results


def plane_labels_reference(mask: np.ndarray, config, probability: np.ndarray | None = None) -> np.ndarray:
    """Instance labels of one foreground ``mask`` the plain way (the implementation
    ``core.instances`` had before it was made local): whole-image hole filling and
    distance transforms, each step a library call.

    With the foreground ``probability`` the mask was cut from and ``config.split``,
    objects are first split by :func:`split_objects_reference`, and the ids follow
    the objects' first pixels in raster order."""
    from skimage import measure, segmentation

    labels = measure.label(mask, connectivity=1)
    split = bool(config.split) and probability is not None
    if split:
        labels = split_objects_reference(labels, probability, config.threshold, config.split, config.min_piece)
    if config.fill_holes and labels.max() > 0:
        filled = ndimage.binary_fill_holes(labels > 0)
        holes = filled & (labels == 0)
        if holes.any():  # a hole takes the id of the nearest object pixel
            labels = np.where(holes, segmentation.expand_labels(labels, distance=max(mask.shape)), labels)
    if config.min_size > 0:
        sizes = np.bincount(labels.ravel())
        too_small = sizes < config.min_size
        border = np.zeros(mask.shape, bool)
        for axis in range(mask.ndim):  # the array's faces
            border[(slice(None),) * axis + (0,)] = border[(slice(None),) * axis + (-1,)] = True
        at_border = np.isin(np.arange(len(sizes)), labels[border])
        too_small |= at_border & (sizes < config.edge_size_factor * config.min_size)
        too_small[0] = False
        labels = np.where(too_small[labels], 0, labels)
    labels = first_pixel_order(labels) if split else segmentation.relabel_sequential(labels)[0]
    if config.expand > 0:
        labels = segmentation.expand_labels(labels, distance=config.expand)
    return labels.astype(np.int32)


def first_pixel_order(labels: np.ndarray) -> np.ndarray:
    """``labels`` with ids renumbered 1..n by their first pixel in raster order, int32."""
    ids, first = np.unique(labels.ravel(), return_index=True)
    order = ids[np.argsort(first)]
    order = order[order > 0]
    table = np.zeros(int(labels.max()) + 1, np.int32)
    table[order] = np.arange(1, len(order) + 1)
    return table[labels]


def smooth_foreground_reference(foreground: np.ndarray) -> np.ndarray:
    """:func:`napari_unet.core.smoothing.smooth_foreground` over the whole array at once:
    per axis, pad 2 px mirrored (numpy's "symmetric") and sum the five shifted copies
    with the binomial weights in the same order, float32."""
    smooth = np.asarray(foreground, np.float32)
    for axis in range(smooth.ndim):
        pad = [(2, 2) if a == axis else (0, 0) for a in range(smooth.ndim)]
        padded = np.pad(smooth, pad, mode="symmetric")
        n = smooth.shape[axis]
        taps = [padded[(slice(None),) * axis + (slice(o, o + n),)] for o in range(5)]
        smooth = (taps[1] + taps[3]) * 4
        smooth += taps[0]
        smooth += taps[4]
        smooth += 6 * taps[2]
        smooth /= 16
    return smooth


def split_objects_reference(
    labels: np.ndarray, foreground: np.ndarray, threshold: float, depth: float, min_piece: int = 0
) -> np.ndarray:
    """:func:`napari_unet.core.split.split_objects` object by object, by recursion over
    its levels, with every dip measured again from the pixels after each join.

    Seeds: walk the levels up from ``threshold``; at the first level where the region
    holds two or more components that rise ``SEED_DEPTH`` above it, recurse into each
    of them; a region that never divides is one seed, numbered by the level it was
    found at, then by its first pixel. The seeds flood the object (watershed of the
    smoothed probability). Then, over and over: the two neighbouring pieces with the
    shallowest dip (the lower of their maxima less the mean, over the face-neighbour
    pairs that cross between them, of each pair's mean of the probability averaged
    with the smoothing's weights over the object's own pixels) join while it is under
    ``depth``; then the smallest piece under ``min_piece`` pixels joins the neighbour
    of its shallowest dip. Ties go to the lower piece numbers; a joined piece keeps
    the lower number. Ids as the fast code numbers them.
    """
    from skimage.segmentation import watershed

    from napari_unet.core.meeting_lines import BINOMIAL
    from napari_unet.core.split import LEVEL_STEP, SEED_DEPTH

    smooth = smooth_foreground_reference(foreground)
    faces = ndimage.generate_binary_structure(labels.ndim, 1)
    out = labels.astype(np.int32, copy=True)
    next_id = int(labels.max()) + 1

    def seeds_of(region: np.ndarray, first_level: int, found: list) -> None:
        k = first_level
        while threshold + k * LEVEL_STEP + SEED_DEPTH <= 1.0 + 1e-9:
            level = threshold + k * LEVEL_STEP
            pieces, count = ndimage.label(region & (smooth > level), structure=faces)
            rising = [pieces == i for i in range(1, count + 1) if (smooth[pieces == i] >= level + SEED_DEPTH).any()]
            if len(rising) >= 2:
                for piece in rising:
                    seeds_of(piece, k + 1, found)
                return
            if not rising:
                break
            k += 1
        found.append((first_level, int(np.flatnonzero(region)[0]), region))

    def own_mean(region: np.ndarray) -> np.ndarray:
        """The binomial-weighted mean of the probability over the region's own pixels
        within 2 px along each axis, at every pixel (shifted copies, no wrap)."""
        total = np.zeros(region.shape)
        weight = np.zeros(region.shape)
        values = np.asarray(foreground, np.float64)
        for offset in np.ndindex(*(5,) * labels.ndim):
            shifted_region = np.zeros(region.shape, bool)
            shifted_values = np.zeros(region.shape)
            source = tuple(slice(max(0, o - 2), n + min(0, o - 2)) for o, n in zip(offset, region.shape))
            target = tuple(slice(max(0, 2 - o), n + min(0, 2 - o)) for o, n in zip(offset, region.shape))
            shifted_region[target] = region[source]
            shifted_values[target] = values[source]
            w = float(np.prod([BINOMIAL[o] for o in offset]))
            total += np.where(shifted_region, w * shifted_values, 0.0)
            weight += np.where(shifted_region, w, 0.0)
        return np.where(region, total / np.where(region, weight, 1.0), 0.0)

    def dips(pieces: np.ndarray, near: np.ndarray) -> dict:
        """(a, b) -> dip, for the pieces a < b that meet somewhere."""
        crossings: dict = {}
        for axis in range(labels.ndim):
            low = (slice(None),) * axis + (slice(None, -1),)
            high = (slice(None),) * axis + (slice(1, None),)
            here, there = pieces[low], pieces[high]
            meet = (here != there) & (here > 0) & (there > 0)
            means = (near[low][meet] + near[high][meet]) / 2
            for a, b, mean in zip(here[meet].tolist(), there[meet].tolist(), means.tolist()):
                crossings.setdefault((min(a, b), max(a, b)), []).append(mean)
        peak = {p: smooth[pieces == p].max() for p in np.unique(pieces) if p > 0}
        return {(a, b): min(peak[a], peak[b]) - np.mean(line) for (a, b), line in crossings.items()}

    for object_id in range(1, int(labels.max()) + 1):
        region = labels == object_id
        if not region.any():
            continue
        found: list = []
        seeds_of(region, 1, found)
        if len(found) < 2:
            continue
        markers = np.zeros(labels.shape, np.int32)
        for number, (_, _, seed) in enumerate(sorted(found, key=lambda item: item[:2]), start=1):
            markers[seed] = number
        pieces = watershed(-smooth, markers, mask=region, connectivity=1)
        near = own_mean(region)
        while True:
            between = dips(pieces, near)
            if not between:
                break
            (a, b), shallowest = min(between.items(), key=lambda item: (item[1], item[0]))
            if shallowest >= depth:
                sizes = sorted((np.count_nonzero(pieces == p), p) for p in np.unique(pieces) if p > 0)
                small = [p for size, p in sizes if size < min_piece]
                if not small:
                    break
                around = {pair: value for pair, value in between.items() if small[0] in pair}
                (a, b), _ = min(around.items(), key=lambda item: (item[1], sum(item[0]) - small[0]))
            pieces[pieces == b] = a
        for number in [int(p) for p in np.unique(pieces) if p > 0][1:]:
            out[pieces == number] = next_id
            next_id += 1
    return out
