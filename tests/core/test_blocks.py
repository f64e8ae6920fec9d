import numpy as np
import pytest
from scipy import ndimage

from napari_unet import InstanceConfig
from napari_unet.core.blocks import ChunkGrid, labels_by_chunks
from napari_unet.core.instances import mask_to_labels

CONFIGS = [
    InstanceConfig(),
    InstanceConfig(min_size=0, expand=1),
    InstanceConfig(expand=1),
    InstanceConfig(min_size=40),
    InstanceConfig(fill_holes=False),
    InstanceConfig(min_size=12, edge_size_factor=2.5),
]


def random_mask(kind, rng, shape):
    if kind == "noise":
        return rng.random(shape) < rng.uniform(0.2, 0.8)
    if kind == "blobs":
        return ndimage.gaussian_filter(rng.random(shape), rng.uniform(0.5, 3)) > 0.5
    if kind == "rings":
        smooth = ndimage.gaussian_filter(rng.random(shape), 1.5)
        return (smooth > np.percentile(smooth, 30)) & (smooth < np.percentile(smooth, 80))
    mask = rng.random(shape) < 0.7
    mask[::7] = True
    mask[:, ::5] = True
    return mask


def ring(mask, centre, outer, inner):
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    distance = np.hypot(yy - centre[0], xx - centre[1])
    mask[(distance <= outer) & (distance > inner)] = True


def disc(mask, centre, radius):
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    mask[np.hypot(yy - centre[0], xx - centre[1]) <= radius] = True


def border_and_corner_objects(chunk=30, n=4):
    """A plane of n x n chunks with objects across every face and every corner of the
    chunk grid and of the image: discs, rings whose holes cross faces and corners, a
    hole shared by two objects across a corner, and objects that only pass the size
    filter once their pieces in four chunks are added up."""
    size = chunk * n
    mask = np.zeros((size, size), bool)
    for y in range(0, size + 1, chunk):
        for x in range(0, size + 1, chunk):
            if (y, x) == (2 * chunk, 2 * chunk):
                pass  # the shared hole below goes here
            elif (y // chunk + x // chunk) % 3 == 0:
                ring(mask, (y, x), 8, 3)  # a hole around a chunk corner (or the image's)
            elif (y // chunk + x // chunk) % 3 == 1:
                disc(mask, (y, x), 5)
            else:
                mask[y - 2 : y + 2, x - 2 : x + 2] = True  # 16 px split over 4 chunks
            if y < size:
                disc(mask, (y + chunk // 2, x), 3)  # across a vertical face
            if x < size:
                ring(mask, (y, x + chunk // 2), 5, 2)  # a hole across a horizontal face
    # a hole shared by two objects whose boundary crosses a chunk corner
    c = chunk * 2
    mask[c - 8 : c + 8, c - 8 : c + 8] = True
    mask[c - 5 : c + 5, c - 5 : c + 5] = False
    mask[c - 8 : c + 8, c] = False  # cut the frame into two objects...
    mask[c - 5 : c + 5, c] = True  # ...joined by a wall that stays inside the hole
    mask[c - 8 : c - 5, c] = False
    mask[c + 5 : c + 8, c] = False
    return mask


@pytest.mark.parametrize("config", [*CONFIGS, InstanceConfig(min_size=17), InstanceConfig(min_size=15)])
def test_objects_across_faces_and_corners_equal_the_whole_plane(config):
    mask = border_and_corner_objects()
    grid = ChunkGrid(mask.shape, (30, 30))
    assert grid.grid == (4, 4)
    expected = mask_to_labels(mask, config)
    assert expected.max() > 20
    np.testing.assert_array_equal(labels_by_chunks(mask, 30, config), expected)


@pytest.mark.parametrize("kind", ["noise", "blobs", "rings", "grid"])
def test_random_masks_and_chunk_sizes_equal_the_whole_plane(kind):
    """Labels, numbering included, equal mask_to_labels for uneven chunk grids (the
    last row and column smaller, chunks as thin as 1 px)."""
    rng = np.random.default_rng(["noise", "blobs", "rings", "grid"].index(kind))
    for _ in range(6):
        shape = tuple(int(n) for n in rng.integers(20, 90, 2))
        mask = random_mask(kind, rng, shape)
        chunk = (int(rng.integers(1, 30)), int(rng.integers(3, 30)))
        for config in CONFIGS:
            np.testing.assert_array_equal(
                labels_by_chunks(mask, chunk, config), mask_to_labels(mask, config), err_msg=f"{shape} {chunk}"
            )


def test_larger_grows_agree_away_from_ties():
    mask = border_and_corner_objects()
    config = InstanceConfig(expand=3)
    chunked, whole = labels_by_chunks(mask, 30, config), mask_to_labels(mask, config)
    assert np.mean(chunked == whole) > 0.995
