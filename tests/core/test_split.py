from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_unet import InstanceConfig, segment
from napari_unet.core import seeded_split, smoothing
from napari_unet.core.errors import ConfigError
from napari_unet.core.instances import mask_to_labels, probabilities_to_labels
from napari_unet.core.regions import pack_boxes
from napari_unet.core.smoothing import smooth_foreground
from napari_unet.core.split import split_objects
from tests.reference import (
    first_pixel_order,
    plane_labels_reference,
    smooth_foreground_reference,
    split_objects_reference,
)

from .lazy import joined_discs, threshold_model


def disc(shape, centre, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def two_touching(dip: float, shape=(40, 60)) -> np.ndarray:
    """Foreground probability of two overlapping discs at 0.95 whose neck sits at
    ``0.95 - dip`` (and never below 0.6, so the mask is one object)."""
    fg = np.zeros(shape, np.float32)
    fg[disc(shape, (20, 20), 10) | disc(shape, (20, 38), 10)] = 0.95
    fg[:, 27:32] = np.where(fg[:, 27:32] > 0, 0.95 - dip, 0)
    return fg


def probabilities(fg):
    return np.stack([1 - fg, fg]).astype(np.float32)


def test_touching_cells_split_at_a_dip_deep_enough():
    fg = two_touching(dip=0.3)
    assert probabilities_to_labels(probabilities(fg), InstanceConfig(split=0)).max() == 1  # the paper's components
    labels = probabilities_to_labels(probabilities(fg), InstanceConfig(split=0.1))
    assert labels.max() == 2
    assert labels[20, 20] == 1 and labels[20, 38] == 2  # numbered in raster order
    np.testing.assert_array_equal(labels > 0, fg > 0.5)  # no pixel gained or lost
    assert np.all(labels[:, :27][labels[:, :27] > 0] == 1) and np.all(labels[:, 32:][labels[:, 32:] > 0] == 2)


def test_a_dip_shallower_than_split_keeps_one_object():
    fg = two_touching(dip=0.1)
    assert probabilities_to_labels(probabilities(fg), InstanceConfig(split=0.2)).max() == 1
    assert probabilities_to_labels(probabilities(fg), InstanceConfig(split=0.05)).max() == 2


def test_a_split_that_would_leave_a_piece_under_min_piece_keeps_the_object_whole():
    fg = two_touching(dip=0.3)
    halves = probabilities_to_labels(probabilities(fg), InstanceConfig(split=0.1))
    smaller = int(np.bincount(halves.ravel())[1:].min())
    for min_piece, count in ((smaller, 2), (smaller + 1, 1)):
        labels = probabilities_to_labels(probabilities(fg), InstanceConfig(split=0.1, min_piece=min_piece))
        assert labels.max() == count
        np.testing.assert_array_equal(labels > 0, fg > 0.5)


def test_a_bright_bridge_across_a_deep_meeting_line_does_not_keep_two_cells_together():
    """The dip is measured along the whole line where the pieces meet: a 3-px bridge
    at 0.91 across a neck at 0.6 leaves the highest pass only 0.08 below the cells'
    0.95 (smoothed), but the line's mean far lower, so the cells split. A neck at
    0.91 all along keeps them one."""
    fg = two_touching(dip=0.35)
    fg[18:21, 27:32] = 0.91
    assert 0.85 < smooth_foreground(fg)[19, 29] < 0.9
    labels = probabilities_to_labels(probabilities(fg), InstanceConfig(split=0.1, min_size=0))
    assert labels.max() == 2 and labels[20, 20] != labels[20, 38]
    np.testing.assert_array_equal(labels > 0, fg > 0.5)
    fg = two_touching(dip=0.04)
    assert probabilities_to_labels(probabilities(fg), InstanceConfig(split=0.1, min_size=0)).max() == 1


def test_a_small_piece_joins_its_neighbour_while_the_others_split():
    """A piece under min_piece joins the neighbour it dips least towards; the two
    large cells still split."""
    shape = (40, 70)
    fg = np.zeros(shape, np.float32)
    fg[disc(shape, (20, 15), 10) | disc(shape, (20, 35), 10) | disc(shape, (20, 50), 5)] = 0.95
    fg[:, 24:27] = np.where(fg[:, 24:27] > 0, 0.6, 0)  # between the large cells
    fg[:, 44:46] = np.where(fg[:, 44:46] > 0, 0.6, 0)  # before the small one
    config = InstanceConfig(split=0.1, min_size=0)
    assert probabilities_to_labels(probabilities(fg), config).max() == 3
    labels = probabilities_to_labels(probabilities(fg), replace(config, min_piece=120))
    assert labels.max() == 2 and labels[20, 15] != labels[20, 35] and labels[20, 50] == labels[20, 35]
    np.testing.assert_array_equal(labels > 0, fg > 0.5)


def test_three_peaks_joined_at_two_levels_give_three_pieces():
    shape = (40, 70)
    fg = np.zeros(shape, np.float32)
    fg[disc(shape, (20, 15), 10) | disc(shape, (20, 33), 10) | disc(shape, (20, 51), 10)] = 0.95
    fg[:, 23:26] = np.where(fg[:, 23:26] > 0, 0.8, 0)  # a shallow neck between the first two
    fg[:, 41:44] = np.where(fg[:, 41:44] > 0, 0.6, 0)  # a deep one before the third
    assert probabilities_to_labels(probabilities(fg), InstanceConfig(min_size=0, split=0)).max() == 1
    labels = probabilities_to_labels(probabilities(fg), InstanceConfig(split=0.1, min_size=0))
    assert [labels[20, 15], labels[20, 33], labels[20, 51]] == [1, 2, 3]
    assert probabilities_to_labels(probabilities(fg), InstanceConfig(split=0.2, min_size=0)).max() == 2


def test_noise_in_one_cell_does_not_split_it():
    rng = np.random.default_rng(0)
    fg = np.where(disc((50, 50), (25, 25), 15), 0.9, 0.05) + rng.normal(0, 0.03, (50, 50))
    labels = probabilities_to_labels(probabilities(np.clip(fg, 0, 1)), InstanceConfig(split=0.1))
    assert labels.max() == 1


@pytest.mark.parametrize("block_pixels", [1, 7, 300, smoothing.BLOCK_PIXELS])
def test_smoothing_by_blocks_equals_the_whole_array_formulation_exactly(monkeypatch, block_pixels):
    """Blocks of any size (one row or plane at a time, a remainder block, one block
    for everything) give the whole-array sums bit for bit, on 1-4 px wide axes too,
    and so does sharing the blocks with a helper thread."""
    monkeypatch.setattr(smoothing, "BLOCK_PIXELS", block_pixels)
    rng = np.random.default_rng(block_pixels)
    with ThreadPoolExecutor(max_workers=1) as helper:
        for shape in [(37, 53), (5, 300), (3, 2), (4, 1), (1, 9), (13, 17, 19), (2, 1, 1), (6, 3, 4)]:
            fg = rng.random(shape).astype(np.float32)
            expected = smooth_foreground_reference(fg)
            np.testing.assert_array_equal(smooth_foreground(fg), expected, err_msg=str(shape))
            np.testing.assert_array_equal(smooth_foreground(fg, helper), expected, err_msg=f"{shape}, helper")


@pytest.mark.parametrize("seed", range(6))
def test_split_equals_the_recursive_reference(seed):
    """Random smooth probability fields: the vectorised peak tree gives the same
    pieces as a recursion over each object's levels."""
    rng = np.random.default_rng(seed)
    fg = ndimage.gaussian_filter(rng.random((70, 80)), 3)
    fg = (fg - fg.min()) / (fg.max() - fg.min())
    labels, _ = ndimage.label(fg > 0.4)
    for depth in (0.05, 0.1, 0.2):
        fast = split_objects(labels, fg, 0.4, depth)
        np.testing.assert_array_equal(
            first_pixel_order(fast), first_pixel_order(split_objects_reference(labels, fg, 0.4, depth))
        )
        assert fast.max() > labels.max()  # every field here has objects to split
        np.testing.assert_array_equal(fast > 0, labels > 0)


@pytest.mark.parametrize("seed", range(2))
def test_split_of_volumes_equals_the_recursive_reference(seed):
    rng = np.random.default_rng(seed)
    fg = ndimage.gaussian_filter(rng.random((16, 30, 34)), 2.5)
    fg = (fg - fg.min()) / (fg.max() - fg.min())
    labels, _ = ndimage.label(fg > 0.4)
    fast = split_objects(labels, fg, 0.4, 0.05)
    assert fast.max() > labels.max()
    np.testing.assert_array_equal(
        first_pixel_order(fast), first_pixel_order(split_objects_reference(labels, fg, 0.4, 0.05))
    )


def dipping_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """A smooth random foreground probability in [0, 1] (float32) whose objects at
    0.4-0.5 hold several peaks, some split by dips and some not."""
    field = ndimage.gaussian_filter(rng.random(shape), sigma)
    return ((field - field.min()) / (field.max() - field.min())).astype(np.float32)


#: Post-processings with the split: default, deep dips only with a piece minimum,
#: a 1-px grow, no hole filling, the paper's threshold at 0.4.
SPLIT_CONFIGS = [
    InstanceConfig(min_size=0),
    InstanceConfig(split=0.2, min_piece=25, min_size=12),
    InstanceConfig(split=0.05, expand=1, min_size=4),
    InstanceConfig(split=0.1, fill_holes=False, min_size=0),
    InstanceConfig(threshold=0.4, split=0.1, min_size=8, min_piece=6),
]


@pytest.mark.parametrize("shape", [(64, 90), (131, 77), (12, 26, 30)])
def test_labels_with_the_split_equal_the_plain_formulation(shape):
    """The whole post-processing with the split (threshold, components, split at
    dips, holes, minimum size, order by first pixel, grow) gives what library
    calls and the recursive split give, pixel and id for pixel and id, in 2D and
    3D, with pinholes inside objects to be filled."""
    rng = np.random.default_rng(sum(shape))
    for _ in range(3):
        probability = dipping_field(rng, shape, sigma=rng.uniform(2.0, 3.5))
        pinholes = rng.random(shape) < 0.01
        for config in SPLIT_CONFIGS:
            mask = (probability > config.threshold) & ~pinholes
            fast = mask_to_labels(mask, config, probability)
            assert fast.max() > mask_to_labels(mask, replace(config, split=0.0)).max() or config.split == 0.2
            np.testing.assert_array_equal(fast, plane_labels_reference(mask, config, probability), err_msg=str(config))


def test_volumes_split_into_one_id_per_object_across_planes():
    shape = (12, 30, 50)
    fg = np.zeros(shape, np.float32)
    fg[disc(shape, (6, 15, 15), 8) | disc(shape, (6, 15, 31), 8)] = 0.95
    fg[:, :, 22:25] = np.where(fg[:, :, 22:25] > 0, 0.6, 0)
    labels = probabilities_to_labels(probabilities(fg), InstanceConfig(split=0.1), ndim=3)
    assert labels.max() == 2
    assert len(np.unique(labels[:, :, :22][labels[:, :, :22] > 0])) == 1  # one id through every plane
    assert labels[6, 15, 15] != labels[6, 15, 31]


def test_a_mask_alone_keeps_its_components_and_split_must_be_a_depth():
    fg = two_touching(dip=0.3)
    assert mask_to_labels(fg > 0.5, InstanceConfig(split=0.1)).max() == 1
    assert mask_to_labels(fg > 0.5, InstanceConfig(split=0.1), fg).max() == 2
    with pytest.raises(ConfigError, match="split"):
        InstanceConfig(split=1.0)
    with pytest.raises(ConfigError, match="split"):
        InstanceConfig(split=-0.1)


def test_segment_takes_instance_settings_other_than_the_models():
    model, image = threshold_model(steepness=8.0), joined_discs()
    assert segment(model, image).max() == 2  # the model's default split
    assert segment(model, image, instances=InstanceConfig(split=0)).max() == 1
    assert model.spec.instances.split == InstanceConfig().split  # the model is left as it was


@pytest.mark.parametrize("ndim", [2, 3])
def test_packed_boxes_keep_a_pixel_apart_inside_a_canvas_near_their_total_size(ndim):
    """The split's canvas: every box gets its own shape inside the canvas, no two
    overlap or touch (a pixel at least between them), and the canvas stays within a
    small multiple of the boxes' total size (mixed sizes, one large box)."""
    rng = np.random.default_rng(ndim)
    shapes = [tuple(int(n) for n in rng.integers(3, 25, ndim)) for _ in range(120)] + [(40,) * ndim]
    places, canvas = pack_boxes(shapes)
    owner, cover = np.zeros(canvas, np.int32), np.zeros(canvas, np.int32)
    for number, (place, shape) in enumerate(zip(places, shapes), start=1):
        assert tuple(s.stop - s.start for s in place) == shape
        assert all(s.start >= 0 and s.stop <= n for s, n in zip(place, canvas))
        owner[place] = number
        cover[place] += 1
    assert cover.max() == 1
    for axis in range(ndim):
        here = (slice(None),) * axis + (slice(1, None),)
        there = (slice(None),) * axis + (slice(None, -1),)
        assert not ((owner[here] > 0) & (owner[there] > 0) & (owner[here] != owner[there])).any()
    total = sum(int(np.prod(shape)) for shape in shapes)
    assert np.prod(canvas) <= (2 if ndim == 2 else 4) * total  # the rows-only 3D packing before: 5.6x


@pytest.mark.parametrize("shape", [(200, 240), (24, 60, 72)])
def test_seeds_found_in_two_halves_of_a_canvas_at_once_give_the_same_labels(monkeypatch, shape):
    """With a free second thread, the split by shape and the second look at large
    objects find the seeds of the two halves of their canvas at once: the same labels
    as one thread, and the canvas was cut."""
    from napari_unet.core import instances

    rng = np.random.default_rng(3)
    probability = ndimage.gaussian_filter(rng.random(shape), 2.5)
    probability = (probability - probability.min()) / (probability.max() - probability.min())
    mask = probability > 0.45
    config = InstanceConfig(min_size=0, min_piece=4, min_fill=0.97, neck=0.5, object_size=100)
    monkeypatch.setattr(instances, "PARALLEL_PIXELS", 0)
    monkeypatch.setattr(seeded_split, "PARALLEL_CANVAS", 0)
    cuts = []
    middle_cut = seeded_split._middle_cut
    monkeypatch.setattr(seeded_split, "_middle_cut", lambda places: cuts.append(middle_cut(places)) or cuts[-1])
    torch_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = mask_to_labels(mask, config, probability)
        assert not cuts
        plain = mask_to_labels(mask, replace(config, min_fill=0.0, object_size=0), probability)
        assert serial.max() > plain.max()  # the splits cut objects
        torch.set_num_threads(2)
        np.testing.assert_array_equal(mask_to_labels(mask, config, probability), serial)
        assert any(cut is not None for cut in cuts)
    finally:
        torch.set_num_threads(torch_threads)
