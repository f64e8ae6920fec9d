"""How many CPU threads torch should use, given what else the machine is doing.

torch starts one thread per core, and its threads wait for each other at every
parallel operation. When another program keeps a core busy, the thread that shares
that core runs only part of the time and every operation waits for it: on a 2-core
machine with one busy process, training fell from 6.2 steps/s (1 thread) to 0.36
(2 threads). The policy here avoids that:

- count the cores this process may use (its CPU affinity);
- measure how many of them other processes keep busy, over a fraction of a second
  (from /proc/stat minus this process's own CPU time; the 1-minute load average
  where /proc is missing), and leave those alone;
- leave ``leave_free`` more cores free (napari leaves one for the viewer, which must
  stay responsive while training runs);
- use at least one thread, and no more than ``OMP_NUM_THREADS`` when the user set
  it (the usual limit on clusters and in shared jobs).

``bench/bench_threads.py`` measures steps/s for every thread count, on a quiet
machine and with a busy process, and the ratio this policy keeps.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)

#: Seconds over which other processes' CPU use is measured.
MEASURE_SECONDS = 0.3
#: A core counts as taken when other processes keep it busy at least this much.
BUSY_SHARE = 0.5


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _machine_times() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(value) for value in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    hertz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks[:8]) - idle) / hertz, sum(ticks[:8]) / hertz


def other_busy_cores(seconds: float = MEASURE_SECONDS) -> float:
    """How many cores other processes keep busy, averaged over ``seconds``."""
    start, own_start = _machine_times(), time.process_time()
    if start is None:
        try:
            return max(os.getloadavg()[0] - 1.0, 0.0)  # the load includes this process
        except OSError:
            return 0.0
    time.sleep(seconds)
    end, own_end = _machine_times(), time.process_time()
    wall = end[1] - start[1]
    if wall <= 0:
        return 0.0
    cores = os.cpu_count() or 1
    busy = (end[0] - start[0]) - (own_end - own_start)
    return max(busy / wall * cores, 0.0)


def user_thread_limit() -> int | None:
    """The thread count the user set in ``OMP_NUM_THREADS`` (a positive integer), or None."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def choose_threads(requested: int | None = None, *, leave_free: int = 0, busy: float | None = None) -> int:
    """Threads for torch: ``requested`` when given (>= 1), else the cores neither
    other processes (``busy`` cores, measured when not given) nor ``leave_free``
    need, at most :func:`user_thread_limit`, at least one."""
    if requested:
        return max(int(requested), 1)
    cores = available_cores()
    if busy is None:
        busy = other_busy_cores()
    taken = int(busy + (1 - BUSY_SHARE))  # a core kept busy half the time or more counts as taken
    return max(min(cores - taken - leave_free, cores, user_thread_limit() or cores), 1)


def use_threads(requested: int | None = None, *, leave_free: int = 0) -> int:
    """Set torch's thread count by :func:`choose_threads` (call it in the thread that
    runs the work) and return it."""
    import torch

    threads = choose_threads(requested, leave_free=leave_free)
    torch.set_num_threads(threads)
    limit = "" if requested or user_thread_limit() is None else f", OMP_NUM_THREADS={user_thread_limit()}"
    log.info("using %d torch thread(s) of %d core(s)%s", threads, available_cores(), limit)
    return threads
