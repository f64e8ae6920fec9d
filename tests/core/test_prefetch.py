import threading

import numpy as np

from napari_unet.core.prefetch import BatchPrefetcher
from napari_unet.core.samples import SampleStream
from napari_unet.core.train_config import AugmentConfig

from .test_data import discs, prep


def stream(seed=0, centres=((20, 20), (40, 44))):
    image, labels = discs(centres=centres)
    return SampleStream(prep([image], [labels]), 60, 2, AugmentConfig(), seed=seed)


def assert_same(a, b):
    for name in ("image", "target", "weights"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.dropout_seeds == b.dropout_seeds


def sample_threads():
    return [t for t in threading.enumerate() if t.name.startswith("napari-unet-samples")]


def test_batches_drawn_ahead_equal_batches_drawn_on_demand_and_the_thread_ends():
    samples = stream()
    with BatchPrefetcher() as prefetch:
        drawn = [prefetch.batch(samples, [2 * s, 2 * s + 1], [[2 * s + 2, 2 * s + 3]]) for s in range(4)]
        assert sample_threads()
    assert not sample_threads()
    for step, batch in enumerate(drawn):
        assert_same(batch, samples.batch([2 * step, 2 * step + 1]))


def test_a_batch_drawn_ahead_from_a_replaced_stream_or_for_other_samples_is_not_used():
    """Live training swaps in a new stream when the annotation changes: the next step
    must draw from it, not use the batch drawn ahead from the old one."""
    old, new = stream(), stream(centres=((30, 30),))
    with BatchPrefetcher() as prefetch:
        prefetch.batch(old, [0, 1], [[2, 3]])
        assert_same(prefetch.batch(new, [2, 3], [[4, 5]]), new.batch([2, 3]))
        assert_same(prefetch.batch(new, [6, 7]), new.batch([6, 7]))
        assert not np.array_equal(new.batch([2, 3]).target, old.batch([2, 3]).target)


def test_without_drawing_ahead_no_thread_starts():
    samples = stream()
    with BatchPrefetcher(0) as prefetch:
        assert_same(prefetch.batch(samples, [0, 1], [[2, 3]]), samples.batch([0, 1]))
        assert not sample_threads()


def test_several_workers_draw_several_batches_ahead_each_equal_to_one_drawn_on_demand():
    samples = stream()
    steps = [[2 * s, 2 * s + 1] for s in range(8)]
    with BatchPrefetcher(3) as prefetch:
        drawn = []
        for step, indices in enumerate(steps):
            drawn.append(prefetch.batch(samples, indices, steps[step + 1 :]))
            assert len(prefetch._ahead) == min(3, len(steps) - step - 1)  # the next three steps' batches, no more
        assert 1 <= len(sample_threads()) <= 3
    assert not sample_threads()
    for indices, batch in zip(steps, drawn):
        assert_same(batch, samples.batch(indices))
