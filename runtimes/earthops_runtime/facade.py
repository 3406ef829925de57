"""What the control plane's CLI calls in the data plane directly — the one door besides the entrypoint.

``earthops search`` and ``earthops samples`` answer on the user's machine without starting a run, so
the CLI (:mod:`earthops.control.cli`) imports this module, lazily, inside those two commands; an
import-linter contract allows exactly that import and no other from the control plane into
:mod:`earthops_runtime`. Nothing here imports torch, ray or kserve.
"""

from __future__ import annotations

from earthops_runtime.catalog.search import SearchError, feature_collection, search
from earthops_runtime.samples import SampleFetchError, bigearthnet_catalog, fetch_bigearthnet

__all__ = ["SampleFetchError", "SearchError", "bigearthnet_catalog", "feature_collection", "fetch_bigearthnet",
           "search"]
