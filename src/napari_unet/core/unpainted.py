"""Cells left unpainted in an annotation that calls them background.

The most common way to train on the wrong thing: a user paints a few cells into a
label layer that is 0 everywhere else (napari's own "new labels" layer, or
"rest is background" pressed after a few cells). Every unpainted cell is then
background the user seems to vouch for, and the network learns to ignore cells.

Nothing in the labels alone tells that apart from complete ground truth, so the
image is asked: its pixels on the painted cells' side of an Otsu threshold (bright
cells on a dark background, or dark on bright, whichever the painted cells are) are
"cell-like", and :func:`unpainted_cells` measures how much of that lies in pixels
painted 0, away from the painted cells, in regions at least half as large as the
median painted cell. On complete annotations of the real-data benchmark (DSB 2018
nuclei, cells3d planes and volume, E. coli in phase contrast) and the synthetic
samples, 0.87-0.99 of the cell-like pixels are cells and no such region is left; with
1-10 random cells kept and the rest 0, 0.00-0.65 are, and all but four of 56 cases
are flagged: the four are frames of few bacteria, where fewer than two cell-sized
regions are left unpainted (bench/bench_unpainted.py). cells3d plane 20, below most
nuclei, is suspected: its labels cover small cores of the blurred nuclei the image
shows there (0.16 of the cell-like pixels). So a stack is suspected only when a
quarter or more of its checked planes are (:data:`SUSPECTED_PLANES`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from .config import IGNORE_LABEL

#: Warn when at most this share of the cell-like pixels painted 0 or as cells is cells ...
PAINTED_SHARE = 0.6
#: ... and at least this many cell-sized cell-like regions are painted 0.
UNPAINTED_REGIONS = 2
#: Only images annotated nearly everywhere are checked: with many unannotated (-1)
#: pixels the user paints background on purpose, around the cells they chose.
ANNOTATED_SHARE = 0.95
#: A stack is suspected when at least this share of its checked planes is: in a plane
#: or two at the ends of a volume's cells, out-of-focus light from the cells beyond
#: looks like cells that a complete annotation leaves out (the volume sample: 1 of 28
#: planes, cells3d's every 5th plane: 1 of 12), while cells painted on 0 by mistake
#: leave most planes that have cells suspected.
SUSPECTED_PLANES = 0.25
#: The gray values are smoothed by this many pixels before the threshold.
SMOOTHING = 1.0
#: A painted cell's rim that the threshold adds to it stays its own (pixels).
CELL_RIM = 2


@dataclass(frozen=True)
class Unpainted:
    """How much of what looks like cells in an image is painted as cells."""

    painted_cells: int
    #: Cell-like regions painted 0, at least half the median painted cell's size.
    regions: int
    #: Cells' share of the cell-like pixels annotated as cells or background.
    painted_share: float

    @property
    def suspicious(self) -> bool:
        return self.painted_share <= PAINTED_SHARE and self.regions >= UNPAINTED_REGIONS


@dataclass(frozen=True)
class CellLook:
    """What the painted cells of a volume's annotated planes look like, for its planes
    painted 0 all over: the smoothed gray value that parts them from the background,
    whether they are the brighter side, and their median area (px)."""

    threshold: float
    brighter: bool
    area: float


def cell_look(pairs) -> CellLook | None:
    """:class:`CellLook` of the planes ``pairs`` ((image, labels) each, 2D) together;
    ``None`` without painted cells and background, or on a flat image."""
    smooth = [ndimage.gaussian_filter(np.asarray(image, np.float32), SMOOTHING) for image, _ in pairs]
    cells = np.concatenate([plane[labels > 0] for plane, (_, labels) in zip(smooth, pairs)])
    background = np.concatenate([plane[labels == 0] for plane, (_, labels) in zip(smooth, pairs)])
    values = np.concatenate([cells, background])
    if not cells.size or not background.size or values.min() == values.max():
        return None
    areas = np.concatenate([np.unique(labels[labels > 0], return_counts=True)[1] for _, labels in pairs])
    return CellLook(float(threshold_otsu(values)), bool(cells.mean() > background.mean()), float(np.median(areas)))


def unpainted_cells(image: np.ndarray, labels: np.ndarray, look: CellLook | None = None) -> Unpainted | None:
    """Compare ``labels`` (any shape: -1 unannotated, 0 background, 1.. cells) with
    the single-channel ``image`` of the same shape; ``None`` where there is nothing
    to compare (no cell, few annotated pixels, or a flat image). Labels without a
    cell are compared with the cells of other planes, ``look``, where given: a
    volume's planes left unannotated were saved as 0 (no warning) instead of -1."""
    annotated = labels != IGNORE_LABEL
    cells = labels > 0
    background = labels == 0
    borrowed = look is not None and not cells.any()
    if not (cells.any() or borrowed) or not background.any() or annotated.mean() < ANNOTATED_SHARE:
        return None
    smooth = ndimage.gaussian_filter(np.asarray(image, np.float32), SMOOTHING)
    cell_sizes = np.unique(labels[cells], return_counts=True)[1]  # any ids, however large
    if borrowed:
        threshold, cells_brighter, cell_area = look.threshold, look.brighter, look.area
    else:
        if smooth.min() == smooth.max():
            return None
        threshold = threshold_otsu(smooth)
        cells_brighter = smooth[cells].mean() > smooth[background].mean()
        cell_area = np.median(cell_sizes)
    cell_like = smooth > threshold if cells_brighter else smooth < threshold
    painted = int(np.count_nonzero(cell_like & cells))
    near_cells = ndimage.binary_dilation(cells, iterations=CELL_RIM)
    left = cell_like & background & ~near_cells
    regions, _ = ndimage.label(left)
    region_sizes = np.bincount(regions.ravel())[1:]
    large = int(np.count_nonzero(region_sizes >= 0.5 * cell_area))
    share = painted / max(painted + int(np.count_nonzero(cell_like & background)), 1)
    return Unpainted(painted_cells=len(cell_sizes), regions=large, painted_share=share)


def unpainted_cells_warning(found: list[Unpainted], checked: int, name: str) -> str | None:
    """One warning for the suspicious results among ``found`` (of ``checked`` planes
    or volumes of the pair called ``name``), or ``None``; none where fewer than
    :data:`SUSPECTED_PLANES` of ``found`` are suspicious."""
    suspicious = [result for result in found if result.suspicious]
    if not suspicious or len(suspicious) < SUSPECTED_PLANES * len(found):
        return None
    regions = sum(result.regions for result in suspicious)
    cells = sum(result.painted_cells for result in suspicious)
    empty = sum(result.painted_cells == 0 for result in suspicious)
    where = f" in {len(suspicious)} of its {checked} annotated planes" if checked > 1 else ""
    painted = f"the {cells} painted cells" if cells else "its painted cells"
    of_which = f" ({empty} of these planes hold no cell at all: a plane left unannotated is -1, not 0)" if empty else ""
    return (
        f"{name}: {regions} regions as bright (or as dark) as {painted} and at least half their "
        f"size are painted 0, background{where}{of_which}: the network learns that they are not cells. Paint every "
        f"cell, or leave what you did not paint unannotated (-1): napari's 'new labels' layer starts at 0 "
        f"everywhere, the Annotate widget's annotations at -1"
    )
