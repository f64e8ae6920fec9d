import threading

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_unet import InstanceConfig
from napari_unet.core import instances, smoothing
from napari_unet.core.instances import first_pixels, mask_to_labels, objects_counted, probabilities_to_labels
from tests.reference import plane_labels_reference


def as_probabilities(foreground):
    return np.stack([1 - foreground, foreground]).astype(np.float32)


def test_components_threshold_min_size_and_holes():
    fg = np.zeros((40, 40))
    fg[2:12, 2:12] = 0.9  # object with a hole
    fg[5:7, 5:7] = 0.1
    fg[20:30, 20:30] = 0.7
    fg[35:37, 35:37] = 0.9  # 4 px: too small
    fg[15, 2:12] = 0.4  # below threshold
    config = InstanceConfig(threshold=0.5, min_size=5, fill_holes=True, expand=0)
    labels = probabilities_to_labels(as_probabilities(fg), config)
    assert labels.max() == 2
    assert (labels[2:12, 2:12] == 1).all()  # hole filled
    assert (labels[20:30, 20:30] == 2).all()
    assert labels[35, 35] == 0 and labels[15, 5] == 0
    unfilled = probabilities_to_labels(as_probabilities(fg), InstanceConfig(min_size=5, fill_holes=False, expand=0))
    assert unfilled[5, 5] == 0


def test_objects_at_the_border_need_edge_size_factor_times_the_minimum():
    """Pieces of cells that the image's border cuts need more pixels than whole
    objects inside: here two 6x5 px objects (30 px), one inside and one against each
    face of a plane and of a volume, with a minimum of 25 px."""
    mask = np.zeros((40, 40), bool)
    mask[17:23, 17:22] = True  # inside
    mask[0:6, 5:10] = mask[34:40, 30:35] = mask[10:16, 0:5] = mask[25:31, 35:40] = True  # one at each face
    plain, stricter = InstanceConfig(min_size=25), InstanceConfig(min_size=25, edge_size_factor=1.25)
    assert mask_to_labels(mask, plain).max() == 5
    kept = mask_to_labels(mask, stricter)
    assert kept.max() == 1 and kept[17:23, 17:22].all()  # 30 < 1.25 * 25: only the inner one stays
    assert mask_to_labels(mask, InstanceConfig(min_size=24, edge_size_factor=1.25)).max() == 5  # 30 >= 30
    volume = np.zeros((12, 20, 20), bool)
    volume[4:7, 8:11, 8:11] = volume[0:3, 2:5, 2:5] = volume[9:12, 14:17, 14:17] = True  # 27 voxels each
    assert mask_to_labels(volume, InstanceConfig(min_size=20)).max() == 3
    assert mask_to_labels(volume, InstanceConfig(min_size=20, edge_size_factor=1.5)).max() == 1  # the z faces


def test_expand_grows_without_merging():
    fg = np.zeros((20, 30))
    fg[5:15, 2:10] = 1
    fg[5:15, 12:20] = 1  # 2 px gap
    labels = probabilities_to_labels(as_probabilities(fg), InstanceConfig(min_size=0, expand=2))
    assert labels.max() == 2
    assert set(np.unique(labels[10, 9:13])) == {1, 2}


def test_stacks_label_each_plane():
    fg = np.zeros((3, 10, 10))
    fg[1, 2:5, 2:5] = 1
    labels = probabilities_to_labels(np.stack([1 - fg, fg], axis=1), InstanceConfig(min_size=0, expand=0))
    assert labels.shape == (3, 10, 10) and labels[0].max() == 0 and labels[1].max() == 1


@pytest.mark.parametrize("kind", ["noise", "blobs", "rings", "grid"])
def test_equals_the_plain_whole_image_formulation(kind):
    """Local hole filling and the one-pass 1-px grow give exactly what whole-image
    binary_fill_holes + expand_labels give, ties included (holes shared by several
    objects, pixels between objects)."""
    rng = np.random.default_rng(["noise", "blobs", "rings", "grid"].index(kind))
    configs = [
        InstanceConfig(),
        InstanceConfig(min_size=0, expand=1),
        InstanceConfig(expand=1),
        InstanceConfig(expand=3, min_size=3),
        InstanceConfig(fill_holes=False),
        InstanceConfig(min_size=12, edge_size_factor=2.5),
    ]
    for _ in range(25):
        shape = tuple(rng.integers(5, 70, 2))
        if kind == "noise":
            mask = rng.random(shape) < rng.uniform(0.2, 0.8)
        elif kind == "blobs":
            mask = ndimage.gaussian_filter(rng.random(shape), rng.uniform(0.5, 3)) > 0.5
        elif kind == "rings":
            smooth = ndimage.gaussian_filter(rng.random(shape), 1.5)
            mask = (smooth > np.percentile(smooth, 30)) & (smooth < np.percentile(smooth, 80))
        else:
            mask = rng.random(shape) < 0.7
            mask[::7] = True
            mask[:, ::5] = True
        for config in configs:
            np.testing.assert_array_equal(mask_to_labels(mask, config), plane_labels_reference(mask, config))


@pytest.mark.parametrize("kind", ["noise", "blobs", "rings"])
def test_volumes_equal_the_plain_whole_volume_formulation(kind):
    """The same rules in 3D (6-connected objects and holes, 1-voxel grow) give what
    the library calls give on the whole volume, ties included."""
    rng = np.random.default_rng(10 + ["noise", "blobs", "rings"].index(kind))
    configs = [
        InstanceConfig(),
        InstanceConfig(min_size=0, expand=1),
        InstanceConfig(expand=1),
        InstanceConfig(expand=2),
        InstanceConfig(min_size=12, edge_size_factor=2.5),
    ]
    for _ in range(8):
        shape = tuple(rng.integers(4, 24, 3))
        if kind == "noise":
            mask = rng.random(shape) < rng.uniform(0.2, 0.8)
        elif kind == "blobs":
            mask = ndimage.gaussian_filter(rng.random(shape), rng.uniform(0.5, 2)) > 0.5
        else:
            smooth = ndimage.gaussian_filter(rng.random(shape), 1.2)
            mask = (smooth > np.percentile(smooth, 30)) & (smooth < np.percentile(smooth, 80))
        for config in configs:
            np.testing.assert_array_equal(mask_to_labels(mask, config), plane_labels_reference(mask, config))


def test_a_volume_gives_one_id_per_object_across_planes():
    fg = np.zeros((6, 20, 20))
    fg[1:5, 2:8, 2:8] = 1  # one object through four planes
    fg[1:5, 12:18, 10:16] = 1  # another
    fg[2, 14:16, 12:14] = 0  # a cavity inside it
    fg[3, 12:18, 11] = 0  # a cut through one plane: 2D sees two pieces there, 3D one object
    labels = probabilities_to_labels(np.stack([1 - fg, fg]), InstanceConfig(min_size=0, expand=0), ndim=3)
    assert labels.shape == fg.shape and labels.max() == 2
    assert set(np.unique(labels[1:5, 2:8, 2:8])) == {1}
    assert set(np.unique(labels[1:5, 12:18, 10:16])) == {2, 0} and labels[2, 14, 13] == 2  # cavity filled
    planewise = probabilities_to_labels(np.stack([1 - fg, fg], axis=1), InstanceConfig(min_size=0, expand=0))
    assert planewise[1].max() == 2 and planewise[3].max() == 3  # plane by plane, ids restart in every plane


def test_holes_are_filled_one_by_one_or_all_at_once_with_the_same_result(monkeypatch):
    """A few holes are filled each in its own window; the thousands of holes in the
    speckled foreground of a barely trained network by one transform of the whole
    image (hole by hole took seconds there). Both give what the reference gives."""
    windows = []
    nearest = instances._nearest_objects
    monkeypatch.setattr(instances, "_nearest_objects", lambda *args: (windows.append(args[-1]), nearest(*args))[1])
    speckled = np.random.default_rng(3).random((80, 90)) < 0.6
    few = np.ones((80, 90), bool)
    few[10:13, 10:14] = False
    few[40:42, 60] = False
    config = InstanceConfig(min_size=0)
    for mask in (speckled, few):
        np.testing.assert_array_equal(mask_to_labels(mask, config), plane_labels_reference(mask, config))
    whole_image = (slice(0, 80), slice(0, 90))
    assert windows[0] == whole_image  # the speckled mask: one transform
    assert len(windows) == 3 and whole_image not in windows[1:]  # the two holes: one window each


@pytest.mark.parametrize("shape", [(120, 140), (20, 40, 50)])
def test_a_second_thread_smooths_and_finds_plateaus_and_holes_with_the_same_labels(monkeypatch, shape):
    """Large masks (and volumes) share the work with a helper thread (half of the
    smoothing for the split, then the peaks' plateaus and the holes) while this one labels and splits the
    objects: same labels as the serial order, and the helper did run; a process
    limited to one thread never starts it."""
    rng = np.random.default_rng(5)
    probability = ndimage.gaussian_filter(rng.random(shape), 2)
    probability = (probability - probability.min()) / (probability.max() - probability.min())
    mask = (probability > 0.45) & (rng.random(shape) > 0.02)  # pinholes inside the objects
    configs = [InstanceConfig(), InstanceConfig(split=0.0), InstanceConfig(min_size=0, expand=1)]
    serial = [mask_to_labels(mask, config, probability) for config in configs]
    assert serial[0].max() > serial[1].max() and instances.find_holes(mask) is not None  # splits and holes
    threads = []
    find, smooth_blocks = instances.find_holes, smoothing._smooth_blocks
    monkeypatch.setattr(
        instances, "find_holes", lambda m: (threads.append(("holes", threading.get_ident())), find(m))[1]
    )
    monkeypatch.setattr(
        smoothing,
        "_smooth_blocks",
        lambda *a: (threads.append(("smooth", threading.get_ident())), smooth_blocks(*a))[1],
    )
    plateaus = instances.peak_plateaus
    monkeypatch.setattr(
        instances,
        "peak_plateaus",
        lambda *a: (threads.append(("plateaus", threading.get_ident())), plateaus(*a))[1],
    )
    monkeypatch.setattr(instances, "PARALLEL_PIXELS", 0)
    monkeypatch.setattr(smoothing, "BLOCK_PIXELS", 64)  # several blocks to share
    torch_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for config, expected in zip(configs, serial):
            np.testing.assert_array_equal(mask_to_labels(mask, config, probability), expected)
        helper = {job for job, thread in threads if thread != threading.get_ident()}
        assert helper == {"holes", "smooth", "plateaus"} and ("smooth", threading.get_ident()) in threads
        threads.clear()
        torch.set_num_threads(1)
        np.testing.assert_array_equal(mask_to_labels(mask, configs[0], probability), serial[0])
        assert threads and all(thread == threading.get_ident() for _, thread in threads)
    finally:
        torch.set_num_threads(torch_threads)


@pytest.mark.parametrize("shape", [(40, 50), (9, 20, 24)])
def test_first_pixels_are_the_first_occurrences_in_raster_order(shape):
    rng = np.random.default_rng(len(shape))
    coarse = rng.integers(0, 30, tuple(max(2, n // 4) for n in shape))
    labels = ndimage.zoom(coarse, [n / c for n, c in zip(shape, coarse.shape)], order=0)[tuple(slice(n) for n in shape)]
    labels = rng.permutation(40)[labels].astype(np.int32)  # any numbering, some ids absent
    first = first_pixels(labels, 45)
    ids, where = np.unique(labels.ravel(), return_index=True)
    expected = np.full(46, labels.size, np.int64)
    expected[ids[ids > 0]] = where[ids > 0]
    np.testing.assert_array_equal(first, expected)


def test_object_counts_are_said_in_words():
    """ "small40.tif: 1 objects" (a new user's walk)."""
    assert objects_counted([1]) == "1 object"
    assert objects_counted([0]) == "0 objects"
    assert objects_counted([1, 0]) == "1 object in 2 planes"
    assert objects_counted([3, 4], unit_ndim=3) == "7 objects in 2 volumes"
