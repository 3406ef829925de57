"""The store on a local folder (the S3 side is tested against SeaweedFS in integration)."""

import os
import threading

import pytest

from earthops.core.store import MARKER, Store, StoreError, credentials, default_uri

pytestmark = pytest.mark.unit


@pytest.fixture
def store(tmp_path):
    return Store.from_uri(tmp_path.as_uri())


def test_round_trip_list_delete(store):
    store.write_json("datasets/ns/a/resource.json", {"x": 1})
    store.write_bytes("datasets/ns/b/blob", b"\x00\x01")
    assert store.read_json("datasets/ns/a/resource.json") == {"x": 1}
    assert store.list("datasets") == ["datasets/ns/a/resource.json", "datasets/ns/b/blob"]
    assert store.children("datasets/ns") == ["a", "b"]
    store.delete("datasets/ns/a")
    assert not store.exists("datasets/ns/a/resource.json")
    assert store.list("nothing") == [] and store.children("nothing") == []


def test_errors_name_the_uri(store):
    with pytest.raises(StoreError, match=r"read file://.*/missing.json: not found"):
        store.read_bytes("missing.json")
    store.write_bytes("bad.json", b"{")
    with pytest.raises(StoreError, match="not valid JSON"):
        store.read_json("bad.json")
    with pytest.raises(StoreError, match="invalid key"):
        store.read_bytes("a/../../etc/passwd")


def test_download_copies_an_object_to_a_local_file(store, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 7)
    store.write_bytes("datasets/ns/big/blob", data)
    dest = tmp_path / "copy" / "blob"
    dest.parent.mkdir()
    store.download("datasets/ns/big/blob", dest)
    assert dest.read_bytes() == data
    with pytest.raises(StoreError, match=r"read file://.*/missing: not found"):
        store.download("missing", tmp_path / "copy" / "missing")


def test_publish_is_atomic(store):
    seen_during = []
    with store.publish("datasets/ns/d/run-1") as run:
        run.write_bytes("part-0", b"a")
        seen_during = (store.runs("datasets/ns/d"), store.list("datasets"))
        run.write_bytes("part-1", b"b")
    assert seen_during == ([], [])
    assert store.runs("datasets/ns/d") == ["run-1"] and store.is_published("datasets/ns/d/run-1")
    assert store.read_json(f"datasets/ns/d/run-1/{MARKER}")["files"] == ["part-0", "part-1"]


def test_failed_publish_leaves_nothing(store, tmp_path):
    with pytest.raises(ValueError):
        with store.publish("datasets/ns/d/run-2") as run:
            run.write_bytes("part-0", b"a")
            raise ValueError("boom")
    assert store.runs("datasets/ns/d") == []
    assert store.list("") == []
    assert not any((tmp_path / ".staging").iterdir()) if (tmp_path / ".staging").exists() else True


def test_status_written_in_place_moves_along_and_runs_are_immutable(store):
    store.write_json("experiments/ns/e/g1/status.json", {"phase": "Running"})  # written before publication
    with store.publish("experiments/ns/e/g1") as run:
        run.write_bytes("new", b"2")
    assert store.list("experiments/ns/e/g1") == [f"experiments/ns/e/g1/{MARKER}", "experiments/ns/e/g1/new",
                                                 "experiments/ns/e/g1/status.json"]
    with pytest.raises(StoreError, match="published runs are immutable"):
        with store.publish("experiments/ns/e/g1") as run:
            run.write_bytes("newer", b"3")
    assert "experiments/ns/e/g1/newer" not in store.list("experiments")


def test_single_objects_are_replaced_atomically(store):
    store.write_bytes("status.json", b"0" * 100_000)
    stop, torn = threading.Event(), []

    def reader():
        while not stop.is_set():
            data = store.read_bytes("status.json")
            if len(set(data)) != 1 or len(data) != 100_000:
                torn.append(len(data))

    t = threading.Thread(target=reader)
    t.start()
    for i in range(200):
        store.write_bytes("status.json", str(i % 10).encode() * 100_000)
    stop.set()
    t.join()
    assert torn == []
    assert not [p for p in os.listdir(store.local_path("")) if ".tmp-" in p]


def test_uri_handling(tmp_path, monkeypatch):
    monkeypatch.setenv("EARTHOPS_STORE", (tmp_path / "s").as_uri())
    assert default_uri() == (tmp_path / "s").as_uri()
    assert Store.from_uri().uri == (tmp_path / "s").as_uri()
    with pytest.raises(StoreError, match="unsupported scheme 'gs'"):
        Store.from_uri("gs://bucket/x")
    with pytest.raises(StoreError, match="credentials in the URI are refused"):
        Store.from_uri("s3://AKIA:secret@bucket/x")
    with pytest.raises(StoreError, match="no bucket"):
        Store.from_uri("s3://")


def test_credentials_from_a_mounted_secret_override_the_environment(tmp_path):
    (tmp_path / "AWS_ACCESS_KEY_ID").write_text("from-secret\n")
    (tmp_path / "AWS_SECRET_ACCESS_KEY").write_text("s3cr3t")
    env = {"AWS_ACCESS_KEY_ID": "from-env", "AWS_REGION": "eu-north-1", "EARTHOPS_STORE_CREDENTIALS_DIR": str(tmp_path)}
    assert credentials(env) == {"AWS_ACCESS_KEY_ID": "from-secret", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_REGION": "eu-north-1"}
    with pytest.raises(StoreError, match="no such folder"):
        credentials({"EARTHOPS_STORE_CREDENTIALS_DIR": str(tmp_path / "nope")})


def test_an_empty_run_still_publishes(store):
    with store.publish("datasets/ns/empty/g1"):
        pass
    assert store.runs("datasets/ns/empty") == ["g1"]
