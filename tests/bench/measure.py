"""How the benchmarks in tests/bench measure a mode: wall seconds and the machine's busy cores meanwhile.

On a shared machine a figure means little without the load beside it: each benchmark prints, per mode,
the busy cores of the whole machine (every process, from ``/proc/stat``) while the mode ran. On an
otherwise idle machine that is about the cores the mode itself uses (1 for a one-worker mode, 2 for two
workers); more is other users' load, and the figures then compare nothing.

Work that the benchmarks compare must also run at the same scheduling priority: Ray starts its worker
processes at niceness 15 (raylet's ``worker_niceness``; ``RAY_worker_niceness`` when set), so a baseline
run in the pytest process (niceness 0) beside any other load measures the kernel's scheduler, not the
code. :func:`ray_worker_niceness` is that niceness, for baselines that run in a child process.
"""

from __future__ import annotations

import os
import time
from typing import Any


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (every core; idle and iowait excluded), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds() -> float:
    """CPU seconds of this process, every thread — in the benchmarks that run an entrypoint in process,
    the driver: Tune's controller, callbacks, reports."""
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def cpu_clock() -> tuple[float, float]:
    """(:func:`process_cpu_seconds`, :func:`busy_seconds` of the whole machine)."""
    return process_cpu_seconds(), busy_seconds()


def measured(fn: Any, *args: Any) -> tuple[float, float, Any]:
    """(wall seconds, busy cores of the machine meanwhile, fn's result)."""
    busy, started = busy_seconds(), time.perf_counter()
    result = fn(*args)
    wall = time.perf_counter() - started
    return wall, (busy_seconds() - busy) / wall, result


def ray_worker_niceness() -> int:
    """The niceness Ray gives its worker processes (15 unless ``RAY_worker_niceness`` says otherwise)."""
    return int(os.environ.get("RAY_worker_niceness", "15"))
