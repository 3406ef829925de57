"""Keep the memory a training step frees for the next step, instead of handing it back to the kernel.

A training step allocates and frees the same few-megabyte buffers (batches, activations, gradients)
hundreds of times an epoch. glibc's malloc normally learns this: a freed block larger than its mmap
threshold raises the threshold, so later blocks of that size come from the heap and stay mapped. In
the processes trials actually run in that learning did not hold: in a Ray worker the ablation
benchmark's trial took ~185,000 minor page faults per epoch (a few hundred in a plain ``python``
process) and its epochs were 1.45x slower, all of it CPU time of the training thread; a
multiprocessing child running the same loop took 3-6 million faults for four trials. Every batch's
buffers were mapped, zero-filled by the kernel and unmapped again.

:func:`retain_freed_memory` sets the thresholds explicitly (``mallopt``): blocks up to
:data:`MMAP_THRESHOLD_BYTES` come from the heap, and up to :data:`TRIM_THRESHOLD_BYTES` of free heap
top is kept mapped. A training process then keeps up to that much freed memory for reuse, and trains at
the speed of a plain process. It is a no-op where the C library is not glibc (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

#: Blocks smaller than this come from the heap (glibc's ceiling for its own dynamic threshold).
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
#: Free memory at the heap's top kept mapped for the next step.
TRIM_THRESHOLD_BYTES = 128 * 1024 * 1024
#: glibc's ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


@functools.cache
def retain_freed_memory() -> bool:
    """Set malloc's thresholds for this process (once); True where glibc took them."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
