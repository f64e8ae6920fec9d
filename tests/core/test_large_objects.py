import numpy as np

from napari_unet import InstanceConfig
from napari_unet.core.instances import mask_to_labels
from napari_unet.core.large_objects import CLUMP_LIMIT, LARGE_OBJECT, halved_log_odds


def sure_pair(shape=(40, 56), gap_probability=0.93):
    """Two touching discs of radius 8 (about 200 px each, 400 together) whose
    foreground probability is 0.9999 inside and ``gap_probability`` along the column
    where they meet: a network sure of both all the way across (log-odds 9.2 and 2.6)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    left, right = np.hypot(yy - 20, xx - 20) <= 8.5, np.hypot(yy - 20, xx - 35) <= 8.5
    mask = left | right
    probability = np.where(mask, 0.9999, 0.001).astype(np.float32)
    probability[:, 27:29][mask[:, 27:29]] = gap_probability
    return mask, probability


def test_halving_the_log_odds_keeps_one_half_and_the_order_and_spreads_the_sure_values():
    p = np.array([0.0, 0.001, 0.3, 0.5, 0.9, 0.99, 0.9999, 1.0])
    halved = halved_log_odds(p)
    assert halved[3] == 0.5 and np.all(np.diff(halved) > 0) and halved[0] == 0.0 and halved[-1] == 1.0
    np.testing.assert_allclose(halved_log_odds(1 - p), 1 - halved, atol=1e-6)
    assert halved[6] - halved[5] > 0.08  # 0.990 against 0.909, where the probabilities differ by 0.0099


def test_an_object_far_larger_than_the_cells_learned_splits_where_the_log_odds_dip():
    mask, probability = sure_pair()
    size = int(mask.sum()) // 2
    plain = mask_to_labels(mask, InstanceConfig(min_size=10), probability)
    assert plain.max() == 1  # 0.9999 against 0.93: no dip of 0.1 in the probability
    split = mask_to_labels(mask, InstanceConfig(min_size=10, object_size=size), probability)
    assert split.max() == 2 and split[20, 20] != split[20, 35] and (split > 0).sum() == mask.sum()
    learned_larger = InstanceConfig(min_size=10, object_size=int(mask.sum() / LARGE_OBJECT) + 1)
    assert mask_to_labels(mask, learned_larger, probability).max() == 1  # not LARGE_OBJECT times larger: as it is
    learned_tiny = InstanceConfig(min_size=10, object_size=int(mask.sum() / CLUMP_LIMIT) - 1)
    assert mask_to_labels(mask, learned_tiny, probability).max() == 1  # no clump of a few cells: as it is


def test_a_large_object_without_a_dip_in_its_log_odds_stays_whole():
    mask, probability = sure_pair(gap_probability=0.9999)
    rng = np.random.default_rng(0)
    probability[mask] = 1 - 10 ** rng.uniform(-4.2, -3.8, mask.sum())  # texture: log-odds 8.7-9.7
    labels = mask_to_labels(mask, InstanceConfig(min_size=10, object_size=int(mask.sum()) // 2), probability)
    assert labels.max() == 1


def test_volumes_split_alike():
    mask, probability = sure_pair()
    volume, chances = np.stack([mask] * 5), np.stack([probability] * 5)
    labels = mask_to_labels(volume, InstanceConfig(min_size=10, object_size=int(volume.sum()) // 2), chances)
    assert labels.max() == 2 and len(np.unique(labels[:, 20, 20])) == 1
