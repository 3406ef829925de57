"""Chips of a batch chosen by index (a split's chips of a block), used by the consumers of a batch
(shard writer, statistics) so that none of them gathers a copy of the chosen chips first."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def chip_rows(rows: np.ndarray | Sequence[int], n: int) -> np.ndarray:
    """``rows`` as a 1-d ``intp`` array of indices into a batch of ``n`` chips; a ``ValueError``
    naming ``rows`` for anything else."""
    a = np.asarray(rows)
    if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
        raise ValueError(f"rows: expected a 1-d array of chip indices, got {a.dtype} {a.shape}")
    a = a.astype(np.intp, copy=False)
    if a.size and (a.min() < 0 or a.max() >= n):
        raise ValueError(f"rows: indices must be in [0, {n}) (the chips of the batch); "
                         f"found {int(a.min())}..{int(a.max())}")
    return a
