"""Faults at the store's edges: two executors racing on one run, and a full disk.

* **Racing** — two writers publish the same run key (one generation of one spec) at the same moment,
  each with its own content, on a local folder and on S3 (SeaweedFS): one publication is visible, whole
  (every file from one writer, none from the other), and the other writer is told so.
* **Disk full** — the local store's writes fail with ``ENOSPC`` (injected at the filesystem boundary,
  ``open`` in the store module: no filesystem here can be filled safely): a clear error naming the path
  and the cause, nothing published, no staging debris.
"""

from __future__ import annotations

import builtins
import errno
import threading
from pathlib import Path
from typing import Any

import pytest

import earthops.core.store as store_module
from earthops.core.store import STAGING, Store, StoreError

pytestmark = pytest.mark.integration

RUN = "datasets/team/chips/g1-0123abcd"
FILES = [f"chips/part-{i:03d}.parquet" for i in range(12)] + ["stats.json", "stac/collection.json"]


def race(store: Store, *, together: bool) -> tuple[dict[str, Any], dict[str, BaseException]]:
    """Two writers publish RUN, each writing FILES with its own name in them; both pass the "not yet
    published" check before either promotes. ``together``: they promote at the same moment; else the
    second promotes once the first has published (a slower executor of the same run)."""
    both_writing = threading.Barrier(2, timeout=60)
    first_done = threading.Event()
    done: dict[str, Any] = {}
    failed: dict[str, BaseException] = {}

    def writer(name: str) -> None:
        try:
            with store.publish(RUN) as run:
                for key in FILES:
                    run.write_bytes(key, f"{name}:{key}".encode())
                both_writing.wait()
                if name == "second" and not together:
                    first_done.wait(60)
            done[name] = True
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            failed[name] = exc
        finally:
            if name == "first":
                first_done.set()

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("first", "second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return done, failed


def assert_one_publication(store: Store, done: dict[str, Any], failed: dict[str, BaseException], *,
                           whole: bool = True) -> None:
    """One writer published, the other was told; ``whole``: every file is the winner's."""
    assert store.is_published(RUN)
    assert len(done) == 1, (done, failed)
    [winner] = done
    [(loser, exc)] = failed.items()
    assert loser != winner and isinstance(exc, StoreError), repr(exc)
    assert "already published by another writer" in str(exc), str(exc)
    if whole:
        contents = {key: store.read_bytes(f"{RUN}/{key}").decode() for key in FILES}
        assert {text.split(":", 1)[0] for text in contents.values()} == {winner}, f"a mix of two runs: {contents}"
    assert store.runs("datasets/team/chips") == [RUN.rsplit("/", 1)[1]]
    assert not [k for k in store.list() if k.startswith(STAGING)]


@pytest.mark.parametrize("together", [True, False], ids=["at-once", "one-after-the-other"])
def test_two_writers_racing_on_one_run_publish_one_whole_run_locally(tmp_path: Path, together: bool) -> None:
    store = Store.from_uri((tmp_path / "store").as_uri())
    assert_one_publication(store, *race(store, together=together))


@pytest.mark.parametrize("together", [True, False], ids=["at-once", "one-after-the-other"])
def test_two_writers_racing_on_one_run_publish_one_run_on_s3(s3_env: dict[str, str], s3_bucket: str,
                                                             together: bool) -> None:
    """On S3 (no rename) the marker is written once (a conditional PUT) and a writer that finds the run
    published when it promotes touches nothing. Two copying at the very same moment may still leave the
    run's files a mix of the two equivalent runs (same generation, same spec): only the marker is atomic."""
    store = Store.from_uri(f"s3://{s3_bucket}/root")
    assert_one_publication(store, *race(store, together=together), whole=not together)


def test_a_full_disk_is_a_clear_error_naming_the_path_and_nothing_is_published(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store.from_uri((tmp_path / "store").as_uri())
    budget = {"bytes": 40}  # the disk fills during the run's third file

    class FullDisk:
        def __init__(self, f: Any) -> None:
            self.f = f

        def write(self, data: bytes) -> int:
            budget["bytes"] -= len(data)
            if budget["bytes"] < 0:
                raise OSError(errno.ENOSPC, "No space left on device", self.f.name)
            return self.f.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.f, name)

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

    def open_on_a_full_disk(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = builtins.open(path, mode, *args, **kwargs)
        return FullDisk(f) if "w" in mode else f

    monkeypatch.setattr(store_module, "open", open_on_a_full_disk, raising=False)
    with pytest.raises(StoreError) as raised:
        with store.publish(RUN) as run:
            for key in FILES:
                run.write_bytes(key, b"0123456789abcdef")
    message = str(raised.value)
    assert "No space left on device" in message, message
    assert "chips/part-002.parquet" in message and str(tmp_path / "store") in message, message
    monkeypatch.undo()
    assert not store.is_published(RUN) and store.runs("datasets/team/chips") == []
    assert store.list() == []
    assert not list((tmp_path / "store").rglob("*.tmp-*")), "a temporary file left behind"
