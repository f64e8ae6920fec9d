import numpy as np
import pytest
from scipy import ndimage

from napari_unet.core.synthetic import (
    default_cell_count,
    synthetic_dataset,
    synthetic_nuclei,
    synthetic_stack,
)
from napari_unet.core.synthetic_volume import synthetic_volume


@pytest.fixture(scope="module")
def default_pair():
    return synthetic_nuclei(seed=0)


def touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Unordered pairs of different cell ids that are 4-adjacent somewhere."""
    pairs = set()
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1], labels[1:])):
        both = (a != b) & (a > 0) & (b > 0)
        pairs |= {(min(p, q), max(p, q)) for p, q in zip(a[both].tolist(), b[both].tolist())}
    return pairs


def check_labels_valid(labels: np.ndarray) -> None:
    n = int(labels.max())
    assert np.array_equal(np.unique(labels), np.arange(n + 1))
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        _, count = ndimage.label(labels[box] == index)  # 4-connectivity
        assert count == 1, f"cell {index} has {count} pieces"


def test_same_seed_same_result_and_different_seed_differs():
    image_a, labels_a = synthetic_nuclei((96, 128), seed=5)
    image_b, labels_b = synthetic_nuclei((96, 128), seed=5)
    image_c, labels_c = synthetic_nuclei((96, 128), seed=6)
    assert np.array_equal(image_a, image_b) and np.array_equal(labels_a, labels_b)
    assert not np.array_equal(image_a, image_c)
    assert not np.array_equal(labels_a, labels_c)


def test_generator_seed_is_accepted():
    first = synthetic_nuclei((64, 64), seed=np.random.default_rng(3))
    second = synthetic_nuclei((64, 64), seed=np.random.default_rng(3))
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])


def test_dtypes_and_shapes(default_pair):
    image, labels = default_pair
    assert image.dtype == np.uint16 and labels.dtype == np.int32
    assert image.shape == labels.shape == (512, 512)
    image, labels = synthetic_nuclei((100, 170), seed=1)
    assert image.shape == labels.shape == (100, 170)


def test_labels_consecutive_and_each_cell_one_component(default_pair):
    check_labels_valid(default_pair[1])


def test_cell_count_in_expected_range(default_pair):
    assert 100 <= default_pair[1].max() <= 150
    _, small = synthetic_nuclei((256, 256), seed=0)
    expected = default_cell_count((256, 256))
    assert 0.75 * expected <= small.max() <= expected


def test_n_cells_is_respected():
    _, labels = synthetic_nuclei((256, 256), seed=2, n_cells=12)
    assert 9 <= labels.max() <= 12


def test_default_image_has_many_touching_pairs(default_pair):
    assert len(touching_pairs(default_pair[1])) >= 20


def test_touching_zero_gives_separate_cells():
    _, labels = synthetic_nuclei((256, 256), seed=0, touching=0.0)
    assert labels.max() > 20
    assert touching_pairs(labels) == set()


def test_no_cell_is_tiny_or_hidden(default_pair):
    areas = np.bincount(default_pair[1].ravel())[1:]
    assert areas.min() >= 20
    # Touching cells overlap only slightly: most cells keep the bulk of a 6..16 px ellipse.
    assert np.median(areas) > 150


def test_foreground_brighter_than_background(default_pair):
    image, labels = default_pair
    foreground = image[labels > 0].mean()
    background = image[labels == 0].mean()
    assert foreground > 1.5 * background


def test_noise_is_present():
    image, labels = synthetic_nuclei((128, 128), seed=4)
    # Shot and read noise: neighbouring background pixels differ.
    background = (labels == 0)[:, :-1] & (labels == 0)[:, 1:]
    diffs = np.diff(image.astype(np.int64), axis=1)[background]
    assert diffs.std() > 2


def test_stack_planes_are_valid_and_distinct():
    images, labels = synthetic_stack(3, (96, 96), seed=1)
    assert images.shape == labels.shape == (3, 96, 96)
    assert images.dtype == np.uint16 and labels.dtype == np.int32
    for plane in labels:
        check_labels_valid(plane)
    assert not np.array_equal(images[0], images[1])
    again, _ = synthetic_stack(3, (96, 96), seed=1)
    assert np.array_equal(images, again)


def test_dataset_seeds_are_distinct_and_prefix_stable():
    three = synthetic_dataset(3, (64, 64), seed=7)
    two = synthetic_dataset(2, (64, 64), seed=7)
    assert len(three) == 3
    for (image_a, labels_a), (image_b, labels_b) in zip(two, three):
        assert np.array_equal(image_a, image_b) and np.array_equal(labels_a, labels_b)
    assert not np.array_equal(three[0][0], three[1][0])
    assert not np.array_equal(three[0][0], synthetic_dataset(1, (64, 64), seed=8)[0][0])


def test_a_synthetic_volume_has_one_connected_id_per_nucleus_and_touching_nuclei():
    image, labels = synthetic_volume((20, 64, 64), n_nuclei=12, seed=2)
    again, _ = synthetic_volume((20, 64, 64), n_nuclei=12, seed=2)
    np.testing.assert_array_equal(image, again)  # seeded
    assert image.dtype == np.uint16 and labels.dtype == np.int32 and image.shape == labels.shape
    ids = np.unique(labels[labels > 0])
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
    assert len(ids) >= 8
    for index in ids:
        assert ndimage.label(labels == index)[1] == 1  # one connected object, one id across planes
    faces = [(a, b) for axis in range(3) for a, b in zip(*_neighbours(labels, axis)) if a != b]
    assert faces  # some nuclei touch
    inside, outside = image[labels > 0].mean(), image[labels == 0].mean()
    assert inside > outside + 50  # nuclei are bright on a dark background


def _neighbours(labels, axis):
    moved = np.moveaxis(labels, axis, 0)
    lower, upper = moved[:-1], moved[1:]
    both = (lower > 0) & (upper > 0)
    return lower[both], upper[both]
