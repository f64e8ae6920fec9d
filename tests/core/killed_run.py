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

from napari_unet.core import stream


def kill_on(module, name, n, after):
    original = getattr(module, name)
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if not after and calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if after and calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(module, name, wrapper)


def main(model, image, out, point, n):
    n = int(n)
    if point == "after-record":
        kill_on(stream, "write_atomic", n, after=True)
    elif point == "before-record":
        kill_on(stream, "write_atomic", n, after=False)
    elif point == "in-label":
        kill_on(stream, "final_chunk", n, after=False)
    elif point == "cleanup":
        kill_on(stream.shutil, "rmtree", n, after=False)
    stream.segment_to(model, image, out, chunk=32, probabilities=True, resume=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
