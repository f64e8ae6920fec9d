import pytest
import torch

from napari_unet import UNet
from napari_unet.core import geometry


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_valid_sizes_are_exactly_what_the_network_accepts(depth):
    model = UNet(base_channels=1, depth=depth).eval()
    smallest = geometry.smallest_input(depth)
    for size in range(smallest - 4, smallest + 3 * 2**depth):
        ok = geometry.is_valid_size(size, depth)
        x = torch.zeros(1, 1, size, size)
        if ok:
            with torch.no_grad():
                out = model(x)
            assert out.shape[-1] == geometry.output_size(size, depth) == size - geometry.margin(depth)
        else:
            with pytest.raises(geometry.InvalidTileSize):
                geometry.output_size(size, depth)


def test_paper_numbers():
    assert geometry.output_size(572, 4) == 388
    assert geometry.output_size(700, 4) == 516
    assert geometry.output_size(1084, 4) == 900
    assert geometry.valid_sizes(4, 600)[-3:] == [556, 572, 588]


def test_invalid_size_names_the_nearest_valid_sizes():
    with pytest.raises(geometry.InvalidTileSize, match="556 or 572"):
        geometry.output_size(570, 4)
    with pytest.raises(geometry.InvalidTileSize, match="188"):
        geometry.output_size(10, 4)


@pytest.mark.parametrize("n", [1, 100, 388, 389, 512, 1000])
def test_input_size_for_output_is_the_smallest_that_covers(n):
    size = geometry.input_size_for_output(n, 4)
    assert geometry.output_size(size, 4) >= n
    assert size - 16 < geometry.smallest_input(4) or geometry.output_size(size - 16, 4) < n


def test_tiles_step_on_the_pooling_grid():
    plan = geometry.plan_tiles((1000, 900), 572, 4)
    assert plan.stride == (384, 384)  # 388 rounded down to a multiple of 16
    assert plan.grid == (3, 3)


def brute_force_best(image, depth, budget):
    best = None
    floor = geometry.input_size_for_output(2**depth, depth)
    for th in geometry.valid_sizes(depth, max(floor, geometry.input_size_for_output(image[0], depth))):
        for tw in geometry.valid_sizes(depth, max(floor, geometry.input_size_for_output(image[1], depth))):
            if th * tw > budget or min(th, tw) < geometry.input_size_for_output(2**depth, depth):
                continue
            plan = geometry.plan_tiles(image, (th, tw), depth)
            if best is None or plan.computed_pixels < best:
                best = plan.computed_pixels
    return best


@pytest.mark.parametrize("image", [(512, 512), (2048, 2048), (300, 1200), (37, 5), (2, 2), (300, 1)])
@pytest.mark.parametrize("budget", [300_000, 600_000, 2_000_000])
def test_best_tile_minimises_computed_pixels_within_budget(image, budget):
    plan = geometry.best_tile(image, 4, budget)
    assert plan.tile[0] * plan.tile[1] <= budget
    assert plan.computed_pixels == brute_force_best(image, 4, budget)
    covered = [g * s for g, s in zip(plan.grid, plan.stride)]
    assert covered[0] >= image[0] and covered[1] >= image[1]


def test_best_tile_output_ratio_for_common_sizes():
    assert geometry.best_tile((512, 512), 4, 600_000).output_ratio <= 1.3
    assert geometry.best_tile((2048, 2048), 4, 600_000).output_ratio <= 1.15


def test_budget_below_smallest_tile_is_a_clear_error():
    with pytest.raises(geometry.InvalidTileSize, match="allow more memory"):
        geometry.best_tile((512, 512), 4, 1000)


@pytest.mark.parametrize(
    ("shape", "spacing", "ndim"),
    [
        ((256, 256), None, 2),
        ((3, 256, 256), None, 2),  # the built-in stack sample: three unrelated planes
        ((20, 64, 64), None, 2),  # cubic voxels: the CPU default 3D network sees 20 planes each side
        ((21, 64, 64), None, 3),
        ((8, 64, 64), (2.0, 1.0, 1.0), 2),  # z twice as coarse: it sees 8
        ((9, 64, 64), (2.0, 1.0, 1.0), 3),
        ((2, 21, 64, 64), None, 3),  # a leading channel or time axis does not count
    ],
)
def test_stacks_deeper_than_the_3d_networks_context_are_volumes(shape, spacing, ndim):
    assert geometry.is_volume(shape, spacing) == (ndim == 3)
