"""pytest plugin: small published EO datasets built once per session by the real EODataset runtime.

Training, tuning and registry tests need a dataset run (shards, ``stats.json``, STAC collection). These
fixtures build the repository's own examples, made smaller, with the embedded executor on the
session's local Ray, into a session store, and hand out the published run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class BuiltDataset:
    """A published EODataset run in a session store."""

    store_uri: str  # the store root the dataset's resource state and run live in
    namespace: str
    name: str
    run_uri: str  # the published run folder (input of training)
    state: dict[str, Any]  # the resource as the executor recorded it (status included)


def example(path: str, **changes: Any) -> dict[str, Any]:
    """An example manifest with dotted-path changes (``spec.source.sample.count=240``)."""
    doc = yaml.safe_load((ROOT / path).read_text())
    for dotted, value in changes.items():
        node = doc
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return doc


def build(store_uri: str, doc: dict[str, Any], ray_address: str) -> BuiltDataset:
    from earthops.api import KINDS, parse_resource
    from earthops.control.local import Executor
    from earthops.core.store import Store

    resource = parse_resource(doc, "test dataset")
    state = Executor(Store.from_uri(store_uri), ray_address=ray_address, poll_interval=0.2).apply(resource).resource
    status = state.get("status") or {}
    assert status.get("phase") == KINDS[resource.kind].ready_phase, f"test dataset {resource.name} did not build: {status}"
    return BuiltDataset(store_uri, resource.namespace, resource.name, status["results"], state)


@pytest.fixture(scope="session")
def datasets_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The session store the dataset fixtures publish into (a file:// URI)."""
    return tmp_path_factory.mktemp("datasets-store").as_uri()


@pytest.fixture(scope="session")
def iceberg_dataset(ray_local: Any, datasets_store: str) -> BuiltDataset:
    """The paper's ship/iceberg S1 chips (75x75, HH, HV, band_avg; classification), 240 scenes."""
    doc = example("examples/ship-iceberg/01-dataset.yaml", **{"spec.source.sample.count": 240})
    return build(datasets_store, doc, ray_local.get_runtime_context().gcs_address)


@pytest.fixture(scope="session")
def landcover_dataset(ray_local: Any, datasets_store: str) -> BuiltDataset:
    """Synthetic S2 land cover (12 bands + NDVI/NDWI/NBR, 64x64 chips; segmentation), 2 scenes."""
    doc = example("examples/landcover-s2/01-dataset.yaml", **{"spec.source.sample.count": 2})
    doc["spec"].pop("compute", None)
    return build(datasets_store, doc, ray_local.get_runtime_context().gcs_address)
