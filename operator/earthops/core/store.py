"""The store: one abstraction over fsspec for every artifact earthops writes or reads.

A store is a URI root: ``file:///...`` (the default: a folder in the user's home) or
``s3://bucket/prefix``. Keys are ``/``-separated paths relative to the root, laid out as in DESIGN.md
(``datasets/<ns>/<name>/<run-id>/...``).

Atomic publication: a run folder is written under a hidden staging prefix and only becomes visible
when :meth:`Store.publish` finishes. On a local disk the staging folder is renamed into place (one
atomic ``rename``). S3 has no rename, so the objects are copied server-side and a ``_published.json``
marker, listing every file, is written last; a run without its marker does not exist for readers
(:meth:`runs`, :meth:`is_published`). Single objects (``status.json``) are replaced atomically: a
temporary file and ``os.replace`` locally, one PUT on S3.

Transient S3 failures (the endpoint unreachable, a 5xx, a dropped connection) are retried with
backoff for up to ``EARTHOPS_STORE_RETRY_SECONDS`` (default 60) before they become a
:class:`StoreError`: a run rides out S3's bad minute instead of failing at its first refused
connection, and a misconfigured endpoint is reported after that long.

Credentials come from the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL``, ``AWS_REGION``), or from a mounted Secret folder named by
``EARTHOPS_STORE_CREDENTIALS_DIR`` holding files with those names. Never from a spec.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import fsspec

from earthops.api.runtime import STATUS_FILE  # the run's progress file, written in place while it runs
from earthops.core.errors import StoreError

ENV_STORE = "EARTHOPS_STORE"
ENV_CREDENTIALS_DIR = "EARTHOPS_STORE_CREDENTIALS_DIR"
ENV_RETRY_SECONDS = "EARTHOPS_STORE_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 60.0
MARKER = "_published.json"
STAGING = ".staging"
_CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION")


def default_uri() -> str:
    """``$EARTHOPS_STORE``, else ``~/.local/share/earthops/store`` (``$XDG_DATA_HOME`` honoured)."""
    if os.environ.get(ENV_STORE):
        return os.environ[ENV_STORE]
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return (base / "earthops" / "store").resolve().as_uri()


def credentials(env: dict[str, str] | None = None) -> dict[str, str]:
    """S3 settings from a mounted Secret folder (if named) over the environment."""
    env = dict(os.environ if env is None else env)
    out = {k: env[k] for k in _CREDENTIAL_KEYS if env.get(k)}
    folder = env.get(ENV_CREDENTIALS_DIR)
    if folder:
        path = Path(folder)
        if not path.is_dir():
            raise StoreError(f"{ENV_CREDENTIALS_DIR}={folder}: no such folder (expected a mounted Secret)")
        for key in _CREDENTIAL_KEYS:
            if (path / key).is_file():
                out[key] = (path / key).read_text().strip()
    if env.get("AWS_ENDPOINT_URL_S3"):
        out.setdefault("AWS_ENDPOINT_URL", env["AWS_ENDPOINT_URL_S3"])
    return out


def retry_seconds(env: dict[str, str] | None = None) -> float:
    """How long transient S3 failures are retried: ``EARTHOPS_STORE_RETRY_SECONDS`` (a number >= 0) of
    ``env`` when it has one, else of this process's environment (``env`` is often credentials alone)."""
    raw = (env or {}).get(ENV_RETRY_SECONDS) or os.environ.get(ENV_RETRY_SECONDS, "")
    if not raw.strip():
        return DEFAULT_RETRY_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise StoreError(f"{ENV_RETRY_SECONDS}={raw!r}: expected a number of seconds >= 0")
    return value


def backoff_attempts(seconds: float) -> int:
    """Attempts of an S3 call whose backoff sleeps (s3fs's: 0.1 s x 1.7^i, at most 15 s each, one
    after every failed attempt) add up to at least ``seconds``; at least one attempt."""
    attempts, waited = 0, 0.0
    while attempts == 0 or waited < seconds:
        waited += min(1.7 ** attempts * 0.1, 15.0)
        attempts += 1
    return attempts


def transient(exc: BaseException) -> bool:
    """Whether an S3 failure may pass if tried again: the endpoint unreachable or timing out, a
    connection dropped, a 5xx or throttling answer. Never a 4xx (credentials, a missing bucket)."""
    from botocore.exceptions import ClientError, ConnectionClosedError, ConnectTimeoutError, EndpointConnectionError

    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError)):
        return True
    if isinstance(exc, ClientError):
        response = getattr(exc, "response", None) or {}
        status = int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
        code = str((response.get("Error") or {}).get("Code") or "")
        return status >= 500 or code in ("SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError")
    return False


def s3_filesystem(creds: dict[str, str], env: dict[str, str] | None = None) -> fsspec.AbstractFileSystem:
    """An s3fs filesystem for these settings (see :func:`credentials`): the one way earthops opens S3.
    Its calls retry :func:`transient` failures for :func:`retry_seconds` (``env``: the environment)."""
    import s3fs
    import s3fs.core

    client_kwargs: dict[str, Any] = {}
    if creds.get("AWS_ENDPOINT_URL"):
        client_kwargs["endpoint_url"] = creds["AWS_ENDPOINT_URL"]
    if creds.get("AWS_REGION"):
        client_kwargs["region_name"] = creds["AWS_REGION"]
    s3fs.core.set_custom_error_handler(transient)  # s3fs asks it about every error it does not retry itself
    fs = s3fs.S3FileSystem(
        key=creds.get("AWS_ACCESS_KEY_ID"),
        secret=creds.get("AWS_SECRET_ACCESS_KEY"),
        token=creds.get("AWS_SESSION_TOKEN"),
        client_kwargs=client_kwargs,
        # no listing cache: status.json and run folders change under us
        use_listings_cache=False,
        skip_instance_cache=True,
        # one try per call in botocore: s3fs repeats the call (below), so the backoff is one schedule
        config_kwargs={"retries": {"total_max_attempts": 1, "mode": "standard"}, "connect_timeout": 5,
                       "read_timeout": 30},
    )
    fs.retries = backoff_attempts(retry_seconds(env))
    return fs


_SHARED_S3: dict[tuple[Any, ...], fsspec.AbstractFileSystem] = {}
_SHARED_LOCK = threading.Lock()


def shared_s3_filesystem(creds: dict[str, str]) -> fsspec.AbstractFileSystem:
    """The S3 filesystem for these settings, built once per process and reused while they stay the same:
    a new client costs 0.2-0.5 s before its first answer (the operator's timers and a dataset's scene
    reads would otherwise pay it per call). Not shared across fork: the pid is in the key."""
    key = (os.getpid(), *sorted(creds.items()))
    with _SHARED_LOCK:
        fs = _SHARED_S3.get(key)
        if fs is None:
            fs = _SHARED_S3[key] = s3_filesystem(creds)
        return fs


def _retry_window() -> str:
    try:
        return f"{retry_seconds():g} s"
    except StoreError:
        return "an invalid time"


def _explain(exc: BaseException) -> str:
    """A short cause for people: botocore's codes rather than a traceback."""
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    for needle, cause in (
        ("invalidaccesskeyid", "the access key is not known to the server (check the credentials)"),
        ("signaturedoesnotmatch", "the secret key does not match (check the credentials)"),
        ("signature we calculated does not match", "the secret key does not match (check the credentials)"),
        ("accessdenied", "access denied (check the credentials and the bucket policy)"),
        ("forbidden", "access denied (check the credentials and the bucket policy)"),
        ("nosuchbucket", "the bucket does not exist"),
        ("could not connect", f"the endpoint is unreachable (retried for {_retry_window()}, {ENV_RETRY_SECONDS})"),
        ("connect timeout", f"the endpoint is unreachable (retried for {_retry_window()}, {ENV_RETRY_SECONDS})"),
        ("nocredentialserror", "no credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a Secret"),
        ("unable to locate credentials", "no credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a Secret"),
    ):
        if needle in lowered.replace(" ", "") or needle in lowered:
            return f"{cause} [{type(exc).__name__}: {text.splitlines()[0][:200]}]"
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"


class Store:
    """A store root. Create with :meth:`from_uri`."""

    def __init__(self, uri: str, fs: fsspec.AbstractFileSystem, root: str):
        self.uri = uri.rstrip("/")
        self.fs = fs
        self._root = root.rstrip("/")
        self.is_local = fs.protocol in ("file", "local") or "file" in getattr(fs, "protocol", ())
        self._bucket_ok = False

    @classmethod
    def from_uri(cls, uri: str | None = None, *, env: dict[str, str] | None = None, shared: bool = False) -> Store:
        """Open the store at ``uri`` (default: :func:`default_uri`). Local folders are created.

        ``shared``: reuse this process's S3 client for the same endpoint and credentials
        (:func:`shared_s3_filesystem`) — for long-lived callers that open the same stores again and
        again (the operator's timers); a one-off command gets its own."""
        uri = uri or default_uri()
        parsed = urlparse(uri)
        if parsed.scheme in ("", "file"):
            path = Path(parsed.path if parsed.scheme else uri).expanduser().resolve()
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"store {uri}: cannot create the folder: {exc}") from exc
            return cls(path.as_uri(), fsspec.filesystem("file"), str(path))
        if parsed.scheme == "s3":
            if parsed.username or parsed.password:
                raise StoreError(f"store {parsed.scheme}://...@{parsed.hostname}: credentials in the URI are refused; "
                                 "use the environment or a Secret")
            if not parsed.netloc:
                raise StoreError(f"store {uri}: no bucket named (expected s3://bucket/prefix)")
            root = f"{parsed.netloc}{parsed.path}".rstrip("/")
            creds = credentials(env)
            return cls(f"s3://{root}", shared_s3_filesystem(creds) if shared else s3_filesystem(creds, env), root)
        raise StoreError(f"store {uri}: unsupported scheme {parsed.scheme!r}; accepted: file://, s3://")

    # --- keys -------------------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        key = key.strip("/")
        if any(part in ("..", "") for part in key.split("/")) and key:
            raise StoreError(f"store {self.uri}: invalid key {key!r}")
        return f"{self._root}/{key}" if key else self._root

    def url(self, key: str) -> str:
        """The full URI of ``key``."""
        return f"{self.uri}/{key.strip('/')}" if key.strip("/") else self.uri

    def local_path(self, key: str) -> Path:
        """The file-system path of ``key`` (local stores only), e.g. for libraries that want paths."""
        if not self.is_local:
            raise StoreError(f"store {self.uri}: not a local folder")
        return Path(self._path(key))

    @contextlib.contextmanager
    def errors(self, what: str, key: str) -> Iterator[None]:
        """Any failure of the block as a :class:`StoreError` naming ``what``, the key's URL and the cause
        (for writers that stream to ``self.fs`` themselves, e.g. Parquet shards)."""
        try:
            yield
        except StoreError:
            raise
        except FileNotFoundError as exc:
            if self.is_local:
                raise StoreError(f"{what} {self.url(key)}: not found") from exc
            # s3fs also says FileNotFound for a missing bucket: tell the two apart
            bucket = self._root.split("/", 1)[0]
            try:
                bucket_exists = self.fs.exists(bucket)
            except Exception:  # noqa: BLE001 - the original error is the one to report
                bucket_exists = True
            if not bucket_exists:
                raise StoreError(f"{what} {self.url(key)}: the bucket {bucket!r} does not exist") from exc
            raise StoreError(f"{what} {self.url(key)}: not found") from exc
        except Exception as exc:
            raise StoreError(f"{what} {self.url(key)}: {_explain(exc)}") from exc

    # --- objects ----------------------------------------------------------------------------------

    def read_bytes(self, key: str) -> bytes:
        with self.errors("read", key):
            return self.fs.cat_file(self._path(key))

    def download(self, key: str, dest: os.PathLike[str] | str) -> None:
        """Copy one object to a local file, streamed (an object of gigabytes is never held in memory
        whole, as :meth:`read_bytes` would)."""
        with self.errors("read", key):
            self.fs.get_file(self._path(key), os.fspath(dest))

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write one object atomically (readers see the old or the new content, never a part)."""
        path = self._path(key)
        with self.errors("write", key):
            if self.is_local:
                os.makedirs(posixpath.dirname(path), exist_ok=True)
                tmp = f"{path}.tmp-{uuid.uuid4().hex}"
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            else:
                self.fs.pipe_file(path, data)

    def read_json(self, key: str) -> Any:
        data = self.read_bytes(key)
        try:
            return json.loads(data)
        except json.JSONDecodeError as exc:
            raise StoreError(f"read {self.url(key)}: not valid JSON: {exc}") from exc

    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, json.dumps(obj, indent=2, sort_keys=True, default=str).encode() + b"\n")

    def exists(self, key: str) -> bool:
        with self.errors("stat", key):
            found = bool(self.fs.exists(self._path(key)))
        if not found:
            self._check_bucket("stat", key)
        return found

    def _check_bucket(self, what: str, key: str) -> None:
        """An empty answer from S3 may mean a missing bucket: that is an error, not "nothing there"
        (a reader polling a misspelt bucket would otherwise wait forever). Checked once per store."""
        if self.is_local or self._bucket_ok:
            return
        bucket = self._root.split("/", 1)[0]
        with self.errors(what, key):
            self.fs.invalidate_cache()
            exists = self.fs.exists(bucket)
        if not exists:
            raise StoreError(f"{what} {self.url(key)}: the bucket {bucket!r} does not exist")
        self._bucket_ok = True

    def list(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` (recursively), relative to the root, sorted. Staging is hidden."""
        base = self._path(prefix)
        with self.errors("list", prefix):
            if not self.fs.exists(base):
                self._check_bucket("list", prefix)
                return []
            found = [p for p, info in self.fs.find(base, detail=True).items() if info.get("type") == "file"]
        keys = []
        for p in found:
            rel = p.removeprefix(self._root).lstrip("/")
            if rel.startswith(STAGING + "/") or ".tmp-" in rel.rsplit("/", 1)[-1]:
                continue
            keys.append(rel)
        return sorted(keys)

    def children(self, prefix: str) -> list[str]:
        """Names of the folders directly under ``prefix`` (sorted); staging is hidden."""
        base = self._path(prefix)
        with self.errors("list", prefix):
            if not self.fs.exists(base):
                self._check_bucket("list", prefix)
                return []
            entries = self.fs.ls(base, detail=True)
        return sorted(
            posixpath.basename(e["name"].rstrip("/"))
            for e in entries
            if e["type"] == "directory" and posixpath.basename(e["name"].rstrip("/")) != STAGING
        )

    def delete(self, prefix: str) -> None:
        """Delete ``prefix`` and everything under it (no error if absent)."""
        path = self._path(prefix)
        with self.errors("delete", prefix):
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)

    # --- runs -------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def publish(self, run_key: str) -> Iterator[Store]:
        """Write a run folder atomically: ``with store.publish("datasets/ns/ds/run-1") as run: ...``.

        ``run`` is a :class:`Store` rooted at a staging folder. On success its content appears at
        ``run_key`` at once; on an exception nothing appears and the staging folder is removed.
        Published runs are immutable: publishing the same key twice is refused (a run id names one
        generation of one spec, so a rerun of it is a no-op for the caller to skip), which is also
        what keeps readers from ever seeing a mix of two publications on S3."""
        run_key = run_key.strip("/")
        if self.is_published(run_key):
            raise StoreError(f"publish {self.url(run_key)}: already published; published runs are immutable")
        staging_key = f"{STAGING}/{uuid.uuid4().hex}"
        staging = Store(self.url(staging_key), self.fs, self._path(staging_key))
        if self.is_local:
            os.makedirs(self._path(staging_key))  # a run that writes nothing still publishes (its marker)
        try:
            yield staging
            self._promote(staging_key, run_key)
        finally:
            with contextlib.suppress(Exception):
                self.delete(staging_key)

    def _promote(self, staging_key: str, run_key: str) -> None:
        files = [k.removeprefix(f"{staging_key}/") for k in self._find_all(staging_key)]
        manifest = {"published": datetime.now(UTC).isoformat(), "files": sorted(files)}
        target = self._path(run_key)
        with self.errors("publish", run_key):
            if self.is_local:
                # files the run wrote in place before publishing (its status.json) move along
                if os.path.isdir(target) and not os.path.exists(posixpath.join(target, MARKER)):
                    for name in os.listdir(target):
                        moved = posixpath.join(self._path(staging_key), name)
                        if os.path.exists(moved):  # the run published its own copy: that one wins
                            self.fs.rm(posixpath.join(target, name), recursive=True)
                        else:
                            os.rename(posixpath.join(target, name), moved)
                # the marker goes in before the rename: the rename is the one atomic step
                with open(posixpath.join(self._path(staging_key), MARKER), "w") as f:
                    json.dump(manifest, f, indent=2)
                os.makedirs(posixpath.dirname(target), exist_ok=True)
                try:
                    if os.path.isdir(target):
                        os.rmdir(target)  # emptied above; a concurrent writer's file makes this fail loudly
                    os.rename(self._path(staging_key), target)
                except OSError:
                    self._refuse_if_published(run_key)
                    raise
            else:
                # no rename on S3: clear what an interrupted attempt left (it was never visible,
                # having no marker) but the run's status.json, copy the files, write the marker last
                self._refuse_if_published(run_key)  # by another writer of the same run while this one ran
                leftovers = [p for p, info in self.fs.find(target, detail=True).items()
                             if info.get("type") == "file" and not p.endswith(f"/{STATUS_FILE}")]
                if leftovers:
                    self.fs.rm(leftovers)
                for rel in files:
                    self.fs.copy(f"{self._path(staging_key)}/{rel}", f"{target}/{rel}")
                marker = json.dumps(manifest, indent=2).encode()
                try:  # only one writer's marker: a conditional PUT (If-None-Match, S3 since 2024)
                    self.fs.pipe_file(f"{target}/{MARKER}", marker, IfNoneMatch="*")
                except Exception as exc:
                    self._refuse_if_published(run_key)
                    if "NotImplemented" not in str(exc):
                        raise
                    self.fs.pipe_file(f"{target}/{MARKER}", marker)  # a server without conditional writes

    def _refuse_if_published(self, run_key: str) -> None:
        """Two executors racing on one run (one generation of one spec): the second to publish is told."""
        self.fs.invalidate_cache()
        if self.fs.exists(f"{self._path(run_key)}/{MARKER}"):
            raise StoreError(f"publish {self.url(run_key)}: already published by another writer of the same run; "
                             "published runs are immutable")

    def _find_all(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        with self.errors("list", prefix):
            return [p.removeprefix(self._root).lstrip("/") for p in self.fs.find(base)]

    def is_published(self, run_key: str) -> bool:
        """Whether ``run_key`` is a completely published run."""
        return self.exists(f"{run_key.strip('/')}/{MARKER}")

    def runs(self, prefix: str) -> list[str]:
        """Published run ids under ``prefix`` (e.g. ``datasets/ns/name``), oldest first."""
        dated = []
        for run_id in self.children(prefix):
            key = f"{prefix.strip('/')}/{run_id}/{MARKER}"
            if self.exists(key):
                dated.append((self.read_json(key).get("published", ""), run_id))
        return [run_id for _, run_id in sorted(dated)]


def run_prefix(area: str, namespace: str, name: str) -> str:
    """``<area>/<ns>/<name>``, e.g. ``datasets/default/iceberg``."""
    return f"{area}/{namespace}/{name}"
