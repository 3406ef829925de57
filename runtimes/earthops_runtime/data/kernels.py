"""Compiled (numba) kernels of the preparation's hot loops, each one pass over the data.

Why compiled: the exact moments of :mod:`earthops_runtime.data.stats` in numpy take six passes over
every value (a float64 copy, the shift, the sum, the dot, min, max) and were ~40 % of a preparation
worker's time (``tests/bench/test_bench_prepare.py``); one compiled pass that reads the float32 values
once and accumulates in float64 registers does the same arithmetic at the speed of reading them.

Accuracy: per row, values are summed in blocks of :data:`BLOCK` (float64, about the mean: the caller
passes a shift), and the block sums are added to the row's total: the rounding error of a row's sum
grows like ``sqrt(BLOCK) + sqrt(P / BLOCK)`` units in the last place (numpy's pairwise summation: about
``sqrt(128) + log2(P)``), so results agree with a float64 numpy pass to ~1e-14 relative.

Compiled on first use per dtype and cached on disk next to this file (``NUMBA_CACHE_DIR`` moves it,
e.g. in a read-only image); the first call in a fresh process without a cache costs about a second.
"""

from __future__ import annotations

import math

import numba
import numpy as np

#: Values per inner block of a row's sums (see the module docstring).
BLOCK = 256


@numba.njit(cache=True, nogil=True)
def row_moments(rows: np.ndarray, shift: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                s1: np.ndarray, s2: np.ndarray, count: np.ndarray, rmin: np.ndarray, rmax: np.ndarray,
                below: np.ndarray, above: np.ndarray) -> None:  # pragma: no cover - compiled
    """For each row ``r`` of ``rows`` (R, P), over its finite values ``v``: ``s1[r] = sum(v - shift[r])``,
    ``s2[r] = sum((v - shift[r]) ** 2)``, ``count[r]``, ``rmin[r]``, ``rmax[r]`` (inf / -inf when
    none), and how many are below ``lo[r]`` and above ``hi[r]`` (pass -inf / inf for no range).
    Non-finite values (NaN = nodata, +-inf) are left out of everything."""
    n_rows, p = rows.shape
    for r in range(n_rows):
        c = shift[r]
        low, high = lo[r], hi[r]
        t1 = 0.0
        t2 = 0.0
        k = 0
        nb = 0
        na = 0
        mn = math.inf
        mx = -math.inf
        for start in range(0, p, BLOCK):
            b1 = 0.0
            b2 = 0.0
            for j in range(start, min(start + BLOCK, p)):
                v = np.float64(rows[r, j])
                if v - v == 0.0:  # finite (NaN and inf give NaN)
                    d = v - c
                    b1 += d
                    b2 += d * d
                    k += 1
                    if v < mn:
                        mn = v
                    if v > mx:
                        mx = v
                    if v < low:
                        nb += 1
                    elif v > high:
                        na += 1
            t1 += b1
            t2 += b2
        s1[r] = t1
        s2[r] = t2
        count[r] = k
        rmin[r] = mn
        rmax[r] = mx
        below[r] = nb
        above[r] = na


@numba.njit(cache=True, nogil=True)
def value_counts(values: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """``out[v] += 1`` for every value of ``values`` (small unsigned integers, e.g. uint8 class maps):
    numpy's bincount would first copy them to int64 (8x the mask's memory)."""
    for v in values:
        out[v] += 1
