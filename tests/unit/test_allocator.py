"""The trial process keeps the memory a training step frees (earthops_runtime.training.allocator).

Ray's worker processes handed every batch's buffers back to the kernel (see the module docstring);
here a process is put in the same state by fixing malloc's mmap threshold (which, like Ray's workers,
stops glibc from learning a higher one), and the page faults of a loop that allocates and frees a
4 MiB buffer are counted before and after :func:`retain_freed_memory`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

PROBE = r"""
import ctypes, ctypes.util, json, resource
import numpy as np
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD fixed at glibc's default: no dynamic threshold

def faults():
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(100):
        buffer = np.ones(1 << 20, np.float32)
        del buffer
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

before = faults()
from earthops_runtime.training.allocator import retain_freed_memory
applied = retain_freed_memory()
again = retain_freed_memory()
faults()  # the heap grows once
after = faults()
print(json.dumps({"before": before, "after": after, "applied": applied, "again": again}))
"""


def test_freed_buffers_stay_mapped_for_the_next_step():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["applied"] is True and got["again"] is True
    # 100 buffers of 1024 pages each: every one faulted in before, nearly none after
    assert got["before"] > 50_000, got
    assert got["after"] < got["before"] / 20, got
