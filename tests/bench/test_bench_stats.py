"""Statistics benchmark: one DatasetStats update of a large batch against a plain float64 numpy pass.

The update computes exact float64 moments per feature and split plus a mergeable pixel sample for
percentiles and histograms; the reference is the least any exact pass must do — ``astype(float64)``
then ``mean`` and ``var`` per feature. The ratio (update / reference) says what the extra bookkeeping
costs; a per-value Python loop or a full sort would show as a ratio in the hundreds. (This was a
wall-clock bound in the unit suite, which flakes on a loaded machine; here it is measured, not asserted.)
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from earthops_runtime.data.stats import DatasetStats

pytestmark = pytest.mark.bench
REPEATS = 5


def _best(fn) -> float:
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def test_bench_stats_update_against_a_float64_pass() -> None:
    x = np.random.default_rng(16).random((256, 14, 64, 64), dtype=np.float32)  # 14.7 M values
    names = [f"f{i}" for i in range(14)]
    stats = DatasetStats(seed=0)
    stats.update("train", x[:8], names)  # warm the sample buffers

    def reference() -> None:
        v = x.astype(np.float64)
        v.mean(axis=(0, 2, 3))
        v.var(axis=(0, 2, 3))

    update = _best(lambda: stats.update("train", x, names))
    ref = _best(reference)
    print(f"\nstats update of (256, 14, 64, 64): {update * 1e3:.1f} ms; float64 mean+var pass {ref * 1e3:.1f} ms; "
          f"ratio {update / ref:.2f} (best of {REPEATS})")
