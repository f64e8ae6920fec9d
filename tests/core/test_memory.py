"""Freed memory is kept for reuse while predicting and training on a CPU (glibc's allocator)."""

import subprocess
import sys
import textwrap

import pytest

from napari_unet.core import memory

ON_HEAP = """
import numpy as np

def on_heap(size):
    array = np.ones(size, np.uint8)
    address = array.ctypes.data
    for line in open("/proc/self/maps"):
        span, *rest = line.split()
        start, end = (int(part, 16) for part in span.split("-"))
        if start <= address < end:
            return rest[-1] == "[heap]"
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_blocks_come_back_from_the_heap_inside_and_large_ones_are_returned_after():
    """A 16 MB block (a training step's tensor) comes from its own memory map at first,
    from the heap inside; after the release a 48 MB block is mapped afresh again."""
    script = ON_HEAP + textwrap.dedent(
        """
        from napari_unet.core.memory import release_kept_memory, reuse_freed_memory

        before = on_heap(16 << 20)
        with reuse_freed_memory():
            inside = on_heap(16 << 20), on_heap(48 << 20)
        release_kept_memory()
        print(before, *inside, on_heap(48 << 20))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True", "True", "False"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_training_on_a_cpu_runs_inside_it_and_leaves_it_at_the_end():
    from napari_unet import TrainConfig, UNet
    from napari_unet.core.synthetic import synthetic_nuclei
    from napari_unet.core.train import Trainer

    image, labels = synthetic_nuclei((96, 96), seed=0)
    trainer = Trainer(UNet(base_channels=2, depth=2), [image], [labels], TrainConfig(steps=2, batch_size=1, tile=60))
    users = []
    for _ in trainer.run():
        users.append(memory._MallocState.users)
    assert users and all(count == 1 for count in users)
    assert memory._MallocState.users == 0
