"""Run ``segment_to`` in this process and SIGKILL it at a chosen point (for the
crash-safety tests): ``python killed_run.py MODEL IMAGE OUT POINT N``.

POINT says where: ``after-record`` (right after the N-th record file is written),
``before-record`` (after a chunk's arrays are written, before its record), ``in-label``
(while relabelling the N-th chunk), ``cleanup`` (after the store is marked complete,
before the scratch data is removed).
"""

import os
import signal
import sys

from napari_unet.core import chunk_work, store, stream


def kill_on(modules, name, n, after):
    """Count the calls of ``name`` in all ``modules`` together; kill at the ``n``-th."""
    calls = [0]

    def killing(original):
        def wrapper(*args, **kwargs):
            calls[0] += 1
            if not after and calls[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            result = original(*args, **kwargs)
            if after and calls[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        return wrapper

    for module in modules:
        setattr(module, name, killing(getattr(module, name)))


def main(model, image, out, point, n):
    n = int(n)
    if point == "after-record":  # chunk records are written by chunk_work, pyramid records by store
        kill_on([chunk_work, store], "write_atomic", n, after=True)
    elif point == "before-record":
        kill_on([chunk_work, store], "write_atomic", n, after=False)
    elif point == "in-label":
        kill_on([chunk_work], "final_chunk", n, after=False)
    elif point == "cleanup":
        kill_on([stream.shutil], "rmtree", n, after=False)
    stream.segment_to(model, image, out, chunk=32, probabilities=True, resume=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
