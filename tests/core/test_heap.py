"""Freed memory is kept for reuse during CPU training (glibc's allocator)."""

import subprocess
import sys
import textwrap

import pytest

from napari_unet.core.heap import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_blocks_of_training_size_come_back_from_the_heap():
    """A 16 MB block comes from its own memory map before, from the heap after."""
    script = textwrap.dedent(
        """
        import numpy as np
        from napari_unet.core.heap import keep_freed_memory

        def on_heap(array):
            address = array.ctypes.data
            for line in open("/proc/self/maps"):
                span, *rest = line.split()
                start, end = (int(part, 16) for part in span.split("-"))
                if start <= address < end:
                    return rest[-1] == "[heap]"

        print(on_heap(np.ones(16 << 20, np.uint8)), keep_freed_memory(), on_heap(np.ones(16 << 20, np.uint8)))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True", "True"]
    assert keep_freed_memory() is keep_freed_memory()
