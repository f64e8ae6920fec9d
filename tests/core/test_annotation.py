import numpy as np
import pytest

from napari_unet.core.annotation import (
    TOUCHING_GAP,
    UNANNOTATED_RIM,
    AnnotationStats,
    Window,
    as_signed,
    compact_ids,
    highlight,
    new_annotation,
)
from napari_unet.core.metrics import touching_pairs
from napari_unet.core.synthetic import synthetic_nuclei


def discs(shape, centres, radius, fill=-1):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.full(shape, fill, np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = i
    return labels


def same_counts(a: AnnotationStats, b: AnnotationStats) -> None:
    assert a.planes.keys() == b.planes.keys()
    for plane in a.planes:
        assert +a.planes[plane].values == +b.planes[plane].values
        assert +a.planes[plane].touching == +b.planes[plane].touching
        assert +a.planes[plane].grown == +b.planes[plane].grown


def test_summary_states_cells_background_and_unannotated_shares():
    labels = new_annotation((100, 100))
    labels[:10, :] = 0  # 10% background
    labels[50:55, 50:55] = 1
    labels[80:85, 80:85] = 2
    text = AnnotationStats.of(labels).summary()
    assert text.startswith("cells 2, background 10% of the image, unannotated 90%")
    assert "touching pairs 0" in text and "⚠" not in text


def test_cells_separated_only_by_unannotated_pixels_are_found():
    # three cells in a row: 1 and 2 with a 1-px unannotated rim, 2 and 3 with background between
    labels = np.full((20, 40), -1, np.int32)
    labels[5:15, 2:10] = 1
    labels[5:15, 11:19] = 2
    labels[5:15, 19:21] = 0
    labels[5:15, 21:30] = 3
    stats = AnnotationStats.of(labels)
    assert stats.bridged() == [((), (1, 2))]
    assert "1 pair(s) of cells separated only by unannotated pixels" in stats.summary()
    shown = highlight(labels)
    assert (shown[5:15, 10] == UNANNOTATED_RIM).all() and not (shown == TOUCHING_GAP).any()
    labels[5:15, 10] = 0  # background painted in the rim: no longer bridged
    assert AnnotationStats.of(labels).bridged() == []


def test_a_two_pixel_rim_counts_and_touching_cells_do_not():
    labels = np.full((20, 40), -1, np.int32)
    labels[5:15, 2:10] = 1
    labels[5:15, 12:20] = 2  # columns 10 and 11 unannotated
    labels[5:15, 20:28] = 3  # touches 2
    stats = AnnotationStats.of(labels)
    assert [pair for _, pair in stats.bridged()] == [(1, 2)]
    assert stats.touching_count() == 1
    assert (highlight(labels)[5:15, 19:21] == TOUCHING_GAP).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_edits_in_a_window_give_the_same_counts_as_recounting(seed):
    rng = np.random.default_rng(seed)
    _, truth = synthetic_nuclei((96, 128), seed=seed)
    labels = np.where(rng.random(truth.shape) < 0.5, truth, -1).astype(np.int32)
    stats = AnnotationStats.of(labels)
    for _ in range(40):
        top, left = rng.integers(0, 90), rng.integers(0, 120)
        rows, cols = (int(top), int(top + rng.integers(1, 12))), (int(left), int(left + rng.integers(1, 12)))
        rows, cols = (rows[0], min(rows[1], 96)), (cols[0], min(cols[1], 128))
        window = Window.around(rows, cols, labels.shape)
        before = labels[window.crop].copy()
        labels[rows[0] : rows[1], cols[0] : cols[1]] = rng.choice([-1, 0, 1, 2, 200])
        stats.update_window((), window, before, labels[window.crop])
        same_counts(stats, AnnotationStats.of(labels))
        crop_highlight = highlight(labels[window.crop])[window.inner]
        assert np.array_equal(crop_highlight, highlight(labels)[window.crop][window.inner])
    assert {pair for pair in stats.planes[()].touching_pairs()} == touching_pairs(np.maximum(labels, 0))


def test_filling_the_rest_with_background_matches_recounting():
    labels = discs((60, 60), [(20, 20), (20, 34), (45, 45)], 6)  # 1 px apart
    stats = AnnotationStats.of(labels)
    assert len(stats.bridged()) == 1
    stats.fill_unannotated(())
    same_counts(stats, AnnotationStats.of(np.where(labels == -1, 0, labels)))


def test_stack_counts_say_how_ids_are_counted():
    unique = np.stack([discs((30, 30), [(10, 10)], 4, fill=0), discs((30, 30), [(20, 20)], 4, fill=0) * 2])
    assert "cells 2" in AnnotationStats.of(unique).summary()
    assert "ids unique across the stack" in AnnotationStats.of(unique).summary()
    repeated = np.stack([discs((30, 30), [(10, 10)], 4, fill=0)] * 3)
    text = AnnotationStats.of(repeated).summary()
    assert text.startswith("cells 1,")  # one disc, given its id on all three planes: one cell in 3D
    assert "ids repeat between planes: one cell each to a 3D network; 3 cells counted plane by plane" in text


def test_stack_counts_say_how_many_planes_are_annotated():
    """A volume annotated on some planes: a plane with any annotated pixel counts, and
    one with no -1 left is complete."""
    stack = np.full((5, 30, 30), -1, np.int32)
    stack[1] = discs((30, 30), [(10, 10)], 4, fill=0)  # complete
    stack[3, 5:15, 5:15] = 1  # a cell painted, the rest of the plane unannotated
    stats = AnnotationStats.of(stack)
    assert stats.annotated_planes() == (2, 1)
    assert "planes annotated 2 of 5 (1 complete: no -1 left)" in stats.summary()
    assert "planes annotated" not in AnnotationStats.of(stack[1]).summary()


def test_ids_beyond_the_pixel_count_are_renumbered_in_their_order():
    labels = np.array([[-1, 0, 7], [7, 1 << 40, 3]], np.int64)
    np.testing.assert_array_equal(compact_ids(labels), [[-1, 0, 2], [2, 3, 1]])
    small = np.array([[-1, 0, 6], [2, 2, 3]], np.int32)
    assert compact_ids(small) is small  # ids within the pixel count stay as they are


def test_unsigned_labels_are_converted_to_a_signed_type_that_holds_their_ids():
    assert as_signed(np.array([[0, 65535]], np.uint16)).dtype == np.int32
    assert as_signed(np.array([[0, 200]], np.uint8)).dtype == np.int16
    huge = np.array([[0, 1 << 40]], np.uint64)
    np.testing.assert_array_equal(as_signed(huge), huge.astype(np.int64))  # not wrapped into int32
    np.testing.assert_array_equal(as_signed(np.array([[0, 1 << 63, 5]], np.uint64)), [[0, 2, 1]])


def test_shares_are_never_rounded_to_none_or_all():
    """A few painted cells in a large background read 99.6%, not 100% of the image."""
    labels = np.zeros((100, 100), np.int32)
    labels[:6, :6] = 1  # 0.36% cell, 99.64% background
    assert "background 99.6% of the image" in AnnotationStats.of(labels).summary()
    labels[:1, :1] = -1
    labels[1:, :] = 0  # one unannotated pixel: 0.01%, and five cell pixels
    text = AnnotationStats.of(labels).summary()
    assert "background >99.9% of the image, unannotated <0.1%" in text
    assert "background 100%" in AnnotationStats.of(np.zeros((10, 10), np.int32)).summary()
