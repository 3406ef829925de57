"""The earthops store over a real S3 server (SeaweedFS on loopback, authentication on).

Everything the store writes is checked again through an independent S3 client (``s3_server.filesystem()``)
so the tests see the bucket as another reader would, not through the store's own view.
Fixtures come from ``tests.infra.pytest_s3``: ``s3_server``, ``s3_bucket``, ``s3_env``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from earthops.core.store import MARKER, Store, StoreError
from tests.infra.proc import free_port

pytestmark = pytest.mark.integration

RUN_PARENT = "datasets/default/iceberg"
CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION")


def raw_keys(s3_server, bucket: str) -> list[str]:
    """Every object in the bucket, read by an independent client (bucket-relative keys)."""
    fs = s3_server.filesystem()
    return sorted(p.removeprefix(f"{bucket}/") for p in fs.find(bucket))


def run_files(store: Store, run_key: str) -> list[str]:
    """The files of a run as listed by the store, without the publication marker."""
    return [k for k in store.list(run_key) if k != f"{run_key}/{MARKER}"]


def assert_names_uri_and_cause(exc: StoreError, uri: str, cause: str) -> None:
    message = str(exc)
    assert uri in message, f"the message does not name {uri}: {message!r}"
    assert re.search(cause, message, re.IGNORECASE), f"the message does not say /{cause}/: {message!r}"
    assert "Traceback" not in message and "\n" not in message.strip(), f"not one clear line: {message!r}"


@pytest.fixture
def store_uri(s3_bucket: str) -> str:
    return f"s3://{s3_bucket}/earthops"


@pytest.fixture
def store(s3_env: dict[str, str], store_uri: str) -> Store:
    return Store.from_uri(store_uri)


# --- the server the tests run against ---------------------------------------------------------------


def test_the_s3_server_is_loopback_only_and_requires_authentication(s3_server, s3_bucket):
    import urllib.error
    import urllib.request

    import psutil  # a dependency of ray[default]
    proc = psutil.Process(s3_server.pid)
    connections = getattr(proc, "net_connections", None) or proc.connections  # psutil < 6 has only the latter
    listening = [c.laddr for c in connections(kind="inet") if c.status == "LISTEN"]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening

    s3_server.filesystem().pipe(f"{s3_bucket}/k", b"secret data")
    with pytest.raises(urllib.error.HTTPError) as err:  # anonymous
        urllib.request.urlopen(f"{s3_server.endpoint_url}/{s3_bucket}/k", timeout=10)
    assert err.value.code == 403
    wrong = s3_server.filesystem(secret="wrong")
    with pytest.raises(PermissionError):
        wrong.cat(f"{s3_bucket}/k")


# --- objects ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["earthops", "team/eo/store", ""], ids=["prefix", "nested", "bucket-root"])
def test_write_read_list_round_trip(s3_server, s3_bucket, s3_env, prefix):
    uri = f"s3://{s3_bucket}/{prefix}".rstrip("/")
    store = Store.from_uri(uri)
    assert store.uri == uri
    assert store.url("datasets/a/b/status.json") == f"{uri}/datasets/a/b/status.json"

    every_byte = bytes(range(256)) * 64
    big = os.urandom(12 * 1024 * 1024 + 7)  # larger than s3fs' and SeaweedFS' chunk sizes
    store.write_bytes("datasets/ns/a/blob.bin", every_byte)
    store.write_bytes("datasets/ns/a/big.bin", big)
    store.write_json("datasets/ns/a/status.json", {"phase": "Running", "progress": {"done": 3, "total": 10}})
    store.write_json("models/ns/m/1/card.json", ["x", 1.5, None])

    assert store.read_bytes("datasets/ns/a/blob.bin") == every_byte
    assert store.read_bytes("datasets/ns/a/big.bin") == big
    assert store.read_json("datasets/ns/a/status.json") == {"phase": "Running", "progress": {"done": 3, "total": 10}}
    assert store.read_json("models/ns/m/1/card.json") == ["x", 1.5, None]

    # a single object is replaced as a whole
    store.write_json("datasets/ns/a/status.json", {"phase": "Succeeded"})
    assert store.read_json("datasets/ns/a/status.json") == {"phase": "Succeeded"}

    assert store.exists("datasets/ns/a/blob.bin")
    assert store.exists("datasets/ns/a")
    assert not store.exists("datasets/ns/a/missing.bin")
    assert store.list("datasets") == [
        "datasets/ns/a/big.bin",
        "datasets/ns/a/blob.bin",
        "datasets/ns/a/status.json",
    ]
    assert store.list() == store.list("datasets") + ["models/ns/m/1/card.json"]
    assert store.list("datasets/nothing-here") == []

    # the objects really are at bucket/prefix/key, as another S3 client sees them
    root = f"{prefix}/" if prefix else ""
    assert raw_keys(s3_server, s3_bucket) == [
        f"{root}datasets/ns/a/big.bin",
        f"{root}datasets/ns/a/blob.bin",
        f"{root}datasets/ns/a/status.json",
        f"{root}models/ns/m/1/card.json",
    ]
    assert json.loads(s3_server.filesystem().cat(f"{s3_bucket}/{root}datasets/ns/a/status.json")) == {
        "phase": "Succeeded"
    }

    # a fresh Store (another process, say) reads the same
    assert Store.from_uri(uri).read_bytes("datasets/ns/a/blob.bin") == every_byte


def test_download_streams_an_object_to_a_local_file(store, tmp_path):
    import os

    data = os.urandom(12 * 1024 * 1024 + 3)  # several of s3fs's blocks
    store.write_bytes("datasets/ns/big/run-1/rows.arrow", data)
    store.download("datasets/ns/big/run-1/rows.arrow", tmp_path / "rows.arrow")
    assert (tmp_path / "rows.arrow").read_bytes() == data
    with pytest.raises(StoreError, match="not found"):
        store.download("datasets/ns/big/run-1/absent", tmp_path / "absent")


def test_delete_removes_a_prefix(s3_server, s3_bucket, store, store_uri):
    store.write_bytes("datasets/ns/a/run-1/x.bin", b"x")
    store.write_bytes("datasets/ns/a/run-1/sub/y.bin", b"y")
    store.write_bytes("datasets/ns/b/run-1/z.bin", b"z")

    store.delete("datasets/ns/a")
    store.delete("datasets/ns/a")  # deleting what is gone is no error
    store.delete("never/written")

    # gone for another S3 client ...
    assert raw_keys(s3_server, s3_bucket) == ["earthops/datasets/ns/b/run-1/z.bin"]
    # ... and for the store
    assert not store.exists("datasets/ns/a/run-1/x.bin")
    with pytest.raises(StoreError, match=re.escape(f"{store_uri}/datasets/ns/a/run-1/x.bin")):
        store.read_bytes("datasets/ns/a/run-1/x.bin")
    assert store.list() == ["datasets/ns/b/run-1/z.bin"]
    assert store.list("datasets/ns/b") == ["datasets/ns/b/run-1/z.bin"]
    # list() returns object keys only, never a folder name, whatever the server keeps of emptied folders
    assert store.list("datasets/ns/a") == []
    assert store.list("datasets/ns") == ["datasets/ns/b/run-1/z.bin"]

    store.delete("datasets")
    assert store.list("datasets") == []
    assert store.list() == []


# --- atomic publication ----------------------------------------------------------------------------


def test_publish_makes_a_run_visible_only_when_complete(s3_server, s3_bucket, store, store_uri):
    run_key = f"{RUN_PARENT}/run-1"
    reader = Store.from_uri(store_uri)  # another reader of the same bucket

    with store.publish(run_key) as run:
        run.write_json("stats.json", {"mean": [1.0, 2.0]})
        run.write_bytes("chips/shard-000.bin", b"\x00" * 4096)
        run.write_bytes("chips/shard-001.bin", b"\x01" * 4096)
        # in progress: nothing of the run is visible
        assert not reader.is_published(run_key)
        assert reader.runs(RUN_PARENT) == []
        assert reader.list(RUN_PARENT) == []
        assert not reader.exists(f"{run_key}/stats.json")
        assert reader.list() == []

    assert reader.is_published(run_key)
    assert reader.runs(RUN_PARENT) == ["run-1"]
    assert reader.read_json(f"{run_key}/stats.json") == {"mean": [1.0, 2.0]}
    assert reader.read_bytes(f"{run_key}/chips/shard-001.bin") == b"\x01" * 4096
    assert run_files(reader, run_key) == [
        f"{run_key}/chips/shard-000.bin",
        f"{run_key}/chips/shard-001.bin",
        f"{run_key}/stats.json",
    ]
    # no staging debris left in the bucket
    assert not [k for k in raw_keys(s3_server, s3_bucket) if ".staging" in k or ".tmp-" in k]


def test_failed_publish_leaves_nothing_visible_and_no_debris(s3_server, s3_bucket, store):
    run_key = f"{RUN_PARENT}/run-1"
    store.write_json("catalog.json", {"type": "Catalog"})  # something else in the bucket, untouched
    before = raw_keys(s3_server, s3_bucket)

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with store.publish(run_key) as run:
            run.write_json("stats.json", {"mean": 1})
            run.write_bytes("chips/shard-000.bin", b"half-written")
            raise Boom("the preparation failed half way")

    assert not store.is_published(run_key)
    assert store.runs(RUN_PARENT) == []
    assert store.list(RUN_PARENT) == []
    assert not store.exists(f"{run_key}/stats.json")
    assert raw_keys(s3_server, s3_bucket) == before  # no staging debris, nothing else touched


def test_failed_republish_keeps_the_previous_publication(store):
    run_key = f"{RUN_PARENT}/run-1"
    with store.publish(run_key) as run:
        run.write_json("stats.json", {"version": 1})

    with pytest.raises(RuntimeError):
        with store.publish(run_key) as run:
            run.write_json("stats.json", {"version": 2})
            raise RuntimeError("failed")

    assert store.is_published(run_key)
    assert store.read_json(f"{run_key}/stats.json") == {"version": 1}
    assert run_files(store, run_key) == [f"{run_key}/stats.json"]


def test_runs_lists_published_runs_oldest_first(store):
    for run_id in ("run-b", "run-c", "run-a"):  # published in this order
        with store.publish(f"{RUN_PARENT}/{run_id}") as run:
            run.write_json("status.json", {"run": run_id})
    with pytest.raises(ValueError):
        with store.publish(f"{RUN_PARENT}/run-failed") as run:
            run.write_json("status.json", {})
            raise ValueError("failed")
    with store.publish(f"{RUN_PARENT}/run-in-progress") as run:
        run.write_json("status.json", {})
        assert store.runs(RUN_PARENT) == ["run-b", "run-c", "run-a"]
    assert store.runs(RUN_PARENT) == ["run-b", "run-c", "run-a", "run-in-progress"]
    assert store.runs("datasets/default/other") == []


def test_a_published_run_is_immutable(store):
    """Publishing a run key again is refused and the published run stays whole and visible."""
    run_key = f"{RUN_PARENT}/run-1"
    with store.publish(run_key) as run:
        run.write_json("stats.json", {"version": 1})
        run.write_bytes("chips/shard-000.bin", b"old")
    with pytest.raises(StoreError, match="already published; published runs are immutable"):
        with store.publish(run_key) as run:
            run.write_json("stats.json", {"version": 2})
    assert store.is_published(run_key)
    assert store.read_json(f"{run_key}/stats.json") == {"version": 1}
    assert run_files(store, run_key) == [f"{run_key}/chips/shard-000.bin", f"{run_key}/stats.json"]
    assert [k for k in store.fs.find(store.uri) if "/.staging/" in k] == [], "no staging debris"


def test_an_interrupted_publication_leaves_nothing_visible_and_a_retry_is_clean(store):
    """A copy interrupted half-way leaves files without the marker; the retry replaces them all."""
    run_key = f"{RUN_PARENT}/run-2"
    target = f"{store.uri.removeprefix('s3://')}/{run_key}"
    store.fs.pipe_file(f"{target}/chips/stale-from-a-killed-attempt.bin", b"x")
    store.write_json(f"{run_key}/status.json", {"phase": "Running"})
    assert not store.is_published(run_key) and store.runs(RUN_PARENT) == []
    with store.publish(run_key) as run:
        run.write_bytes("chips/shard-000.bin", b"new")
    assert run_files(store, run_key) == [f"{run_key}/chips/shard-000.bin", f"{run_key}/status.json"]


# --- rasters: a COG in the bucket, read by GDAL through /vsis3/ -----------------------------------


def make_cog(path: Path):
    import numpy as np
    import rasterio
    from affine import Affine

    rows, cols = 512, 640
    yy, xx = np.mgrid[0:rows, 0:cols]
    data = np.stack([(yy * cols + xx) % 65521, (xx * 7 + yy * 3) % 10000]).astype("uint16")
    profile = {
        "driver": "COG",
        "width": cols,
        "height": rows,
        "count": 2,
        "dtype": "uint16",
        "crs": "EPSG:32633",
        "transform": Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4100000.0),  # 10 m UTM 33N
        "blocksize": 256,
        "compress": "DEFLATE",
        "overview_resampling": "NEAREST",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return data, profile


def test_cog_in_the_store_is_read_by_gdal_over_vsis3(s3_server, s3_bucket, s3_env, store, tmp_path):
    import rasterio
    from rasterio.windows import Window

    data, profile = make_cog(tmp_path / "scene.tif")
    run_key = f"{RUN_PARENT}/run-1"
    with store.publish(run_key) as run:
        run.write_bytes("chips/scene.tif", (tmp_path / "scene.tif").read_bytes())
    url = store.url(f"{run_key}/chips/scene.tif")
    assert url.startswith(f"s3://{s3_bucket}/")
    vsis3 = "/vsis3/" + url.removeprefix("s3://")

    # GDAL gets the endpoint and credentials only from the environment (AWS_S3_ENDPOINT, AWS_HTTPS, ...)
    assert os.environ["AWS_S3_ENDPOINT"] == s3_server.host
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), rasterio.open(vsis3) as ds:
        assert ds.driver == "GTiff"
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert (ds.width, ds.height, ds.count) == (profile["width"], profile["height"], 2)
        assert ds.crs.to_epsg() == 32633
        assert ds.transform == profile["transform"]
        assert ds.block_shapes == [(256, 256), (256, 256)]
        assert ds.overviews(1), "a COG carries overviews"

        window = Window(col_off=300, row_off=200, width=70, height=45)  # crosses block edges
        chunk = ds.read(window=window)
        assert (chunk == data[:, 200:245, 300:370]).all()
        assert ds.read(2, window=Window(0, 0, 3, 2)).tolist() == data[1, 0:2, 0:3].tolist()

        # a decimated read is served from the overview, nearest neighbour
        factor = ds.overviews(1)[0]
        small = ds.read(1, out_shape=(profile["height"] // factor, profile["width"] // factor))
        assert (small == data[0, ::factor, ::factor]).all()

    # the same object is also readable by s3:// URL (rasterio turns it into /vsis3/)
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), rasterio.open(url) as ds:
        assert (ds.read(1, window=Window(10, 20, 5, 5)) == data[0, 20:25, 10:15]).all()


# --- failures: StoreError naming the URI and the cause ---------------------------------------------


@pytest.mark.parametrize(
    "variable, value",
    [("AWS_SECRET_ACCESS_KEY", "not-the-secret"), ("AWS_ACCESS_KEY_ID", "nobody")],
    ids=["wrong-secret", "unknown-key"],
)
def test_wrong_credentials_give_a_clear_store_error(s3_env, store_uri, monkeypatch, variable, value):
    cause = r"credential|signature|access key|access denied"
    store_ok = Store.from_uri(store_uri)
    store_ok.write_json("datasets/ns/a/status.json", {"phase": "Running"})

    monkeypatch.setenv(variable, value)
    store = Store.from_uri(store_uri)
    with pytest.raises(StoreError) as err:
        store.write_bytes("datasets/ns/a/status.json", b"{}")
    assert_names_uri_and_cause(err.value, store_uri, cause)
    with pytest.raises(StoreError) as err:
        store.read_json("datasets/ns/a/status.json")
    assert_names_uri_and_cause(err.value, store_uri, cause)
    for probe in (lambda: store.list("datasets"), lambda: store.exists("datasets/ns/a/status.json")):
        with pytest.raises(StoreError) as err:
            probe()
        assert_names_uri_and_cause(err.value, store_uri, cause)

    assert store_ok.read_json("datasets/ns/a/status.json") == {"phase": "Running"}  # untouched


def test_missing_bucket_on_write_and_read_gives_a_clear_store_error(s3_env, s3_bucket):
    uri = f"s3://{s3_bucket}-missing/earthops"
    store = Store.from_uri(uri)
    with pytest.raises(StoreError) as err:
        store.write_json("datasets/ns/a/status.json", {"phase": "Running"})
    assert_names_uri_and_cause(err.value, uri, r"bucket .*does not exist|no such bucket")
    assert f"{s3_bucket}-missing" in str(err.value)
    with pytest.raises(StoreError) as err:
        store.read_bytes("datasets/ns/a/status.json")
    assert_names_uri_and_cause(err.value, uri, r"bucket .*does not exist|no such bucket")


@pytest.mark.parametrize(
    "operation",
    ["exists", "list", "is_published", "runs"],
)
def test_missing_bucket_is_an_error_for_readers_too(s3_env, s3_bucket, operation):
    """A misspelt bucket must not look like an empty store: a reader polling for a run would wait forever."""
    uri = f"s3://{s3_bucket}-missing/earthops"
    store = Store.from_uri(uri)
    call = {
        "exists": lambda: store.exists("datasets/ns/a/status.json"),
        "list": lambda: store.list("datasets"),
        "is_published": lambda: store.is_published(f"{RUN_PARENT}/run-1"),
        "runs": lambda: store.runs(RUN_PARENT),
    }[operation]
    with pytest.raises(StoreError) as err:
        call()
    assert_names_uri_and_cause(err.value, uri, r"bucket .*does not exist|no such bucket")


def test_unreachable_endpoint_gives_a_clear_store_error(s3_env, store_uri, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("EARTHOPS_STORE_RETRY_SECONDS", "2")
    store = Store.from_uri(store_uri)
    assert store.fs.retries == 6  # 0.1 x 1.7^i s after each failed try: 0.1 + 0.17 + ... >= 2 s after six
    with pytest.raises(StoreError) as err:
        store.write_json("datasets/ns/a/status.json", {})
    assert_names_uri_and_cause(err.value, store_uri, r"unreachable \(retried for 2 s")


@pytest.mark.parametrize("value", ["-1", "soon", "nan", "inf"])
def test_a_retry_window_that_is_not_seconds_is_refused_naming_the_variable(s3_env, store_uri, monkeypatch, value):
    monkeypatch.setenv("EARTHOPS_STORE_RETRY_SECONDS", value)
    with pytest.raises(StoreError, match=f"EARTHOPS_STORE_RETRY_SECONDS={value!r}: expected a number of seconds >= 0"):
        Store.from_uri(store_uri)


def test_only_transient_failures_are_retried():
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    from earthops.core.store import transient

    def answer(status: int, code: str) -> ClientError:
        return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")

    assert transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert transient(answer(503, "ServiceUnavailable")) and transient(answer(500, "InternalError"))
    assert transient(answer(400, "SlowDown"))
    assert not transient(answer(403, "AccessDenied")) and not transient(answer(404, "NoSuchBucket"))
    assert not transient(NoCredentialsError()) and not transient(ValueError("bad"))


# --- credentials from a mounted Secret (EARTHOPS_STORE_CREDENTIALS_DIR) ----------------------------


def mount_secret(folder: Path, values: dict[str, str]) -> Path:
    """Lay the folder out as the kubelet mounts a Secret: KEY -> ..data/KEY -> ..<timestamp>/KEY."""
    version = folder / "..2026_11_24_12_00_00.000000001"
    version.mkdir(parents=True)
    for key, value in values.items():
        (version / key).write_text(value)
    (folder / "..data").symlink_to(version.name)
    for key in values:
        (folder / key).symlink_to(f"..data/{key}")
    return folder


def test_credentials_from_a_mounted_secret(s3_server, s3_env, store_uri, monkeypatch, tmp_path):
    for name in CREDENTIAL_VARS + ("AWS_DEFAULT_REGION",):
        monkeypatch.delenv(name, raising=False)
    secret = mount_secret(
        tmp_path / "secret",
        {
            "AWS_ACCESS_KEY_ID": s3_server.access_key,
            "AWS_SECRET_ACCESS_KEY": s3_server.secret_key + "\n",  # `kubectl create secret --from-file` keeps it
            "AWS_ENDPOINT_URL": s3_server.endpoint_url,
            "AWS_REGION": s3_server.region,
        },
    )
    monkeypatch.setenv("EARTHOPS_STORE_CREDENTIALS_DIR", str(secret))

    store = Store.from_uri(store_uri)
    with store.publish(f"{RUN_PARENT}/run-1") as run:
        run.write_json("stats.json", {"ok": True})
    assert store.read_json(f"{RUN_PARENT}/run-1/stats.json") == {"ok": True}
    assert store.runs(RUN_PARENT) == ["run-1"]


def test_mounted_secret_wins_over_the_environment(s3_server, s3_env, store_uri, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "stale-secret-from-the-environment")
    secret = mount_secret(
        tmp_path / "secret",
        {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key},
    )
    monkeypatch.setenv("EARTHOPS_STORE_CREDENTIALS_DIR", str(secret))

    store = Store.from_uri(store_uri)  # endpoint and region still from the environment
    store.write_bytes("a.bin", b"abc")
    assert store.read_bytes("a.bin") == b"abc"


def test_mounted_secret_with_a_wrong_secret_gives_a_clear_store_error(
    s3_server, s3_env, store_uri, monkeypatch, tmp_path
):
    secret = mount_secret(
        tmp_path / "secret",
        {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": "rotated-away"},
    )
    monkeypatch.setenv("EARTHOPS_STORE_CREDENTIALS_DIR", str(secret))
    store = Store.from_uri(store_uri)
    with pytest.raises(StoreError) as err:
        store.write_bytes("a.bin", b"abc")
    assert_names_uri_and_cause(err.value, store_uri, r"credential|signature|access key|access denied")


def test_missing_secret_folder_is_a_store_error(s3_env, store_uri, monkeypatch, tmp_path):
    monkeypatch.setenv("EARTHOPS_STORE_CREDENTIALS_DIR", str(tmp_path / "not-mounted"))
    with pytest.raises(StoreError, match="not-mounted"):
        Store.from_uri(store_uri)
