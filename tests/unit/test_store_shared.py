"""The operator reuses one S3 client per (URI, credentials) across its timer ticks, and reads a storage
Secret at most once per SECRET_TTL_S instead of on every tick."""

from __future__ import annotations

import pytest

from earthops.api import parse_resource
from earthops.core.store import Store

pytestmark = pytest.mark.unit

CREDS = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b", "AWS_ENDPOINT_URL": "http://127.0.0.1:1"}


def test_shared_stores_reuse_one_client_per_credentials() -> None:
    one = Store.from_uri("s3://bucket/a", env=CREDS, shared=True)
    two = Store.from_uri("s3://bucket/b", env=dict(CREDS), shared=True)
    assert one.fs is two.fs, "same endpoint and credentials: one client"
    other = Store.from_uri("s3://bucket/a", env={**CREDS, "AWS_SECRET_ACCESS_KEY": "c"}, shared=True)
    assert other.fs is not one.fs, "other credentials: another client"
    assert Store.from_uri("s3://bucket/a", env=CREDS).fs is not one.fs, "a one-off store gets its own"


def test_the_operator_reads_the_secret_once_per_ttl_and_reuses_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    from earthops.control.handlers import k8s, rayjobs

    reads: list[tuple[str, str]] = []

    def secret_env(namespace: str, name: str) -> dict[str, str]:
        reads.append((namespace, name))
        return dict(CREDS)

    monkeypatch.setattr(k8s, "secret_env", secret_env)
    monkeypatch.setattr(rayjobs, "_secrets", {})
    clock = [1000.0]
    monkeypatch.setattr(rayjobs.time, "monotonic", lambda: clock[0])
    resource = parse_resource({
        "apiVersion": "earthops.dev/v1alpha1", "kind": "TuningExperiment",
        "metadata": {"name": "t", "namespace": "team"},
        "spec": {"datasetRef": {"name": "d"}, "model": {"name": "iceberg-cnn"},
                 "searchSpace": [{"name": "training.learningRate", "type": "double", "min": 0.001, "max": 0.1}],
                 "objective": {"metric": "val_accuracy", "goal": "maximize"}, "maxTrials": 2,
                 "storage": {"uri": "s3://bucket/earthops", "secretRef": {"name": "s3"}}},
    }, "test")
    stores = [rayjobs.store_for(resource) for _ in range(5)]
    assert reads == [("team", "s3")]
    assert all(s.fs is stores[0].fs for s in stores)
    clock[0] += rayjobs.SECRET_TTL_S + 1
    rayjobs.store_for(resource)
    assert len(reads) == 2, "after the TTL the Secret is read again (a rotated Secret is picked up)"
