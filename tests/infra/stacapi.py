"""A real STAC API server for the tests: stac-fastapi-pgstac on a throwaway PostgreSQL + PostGIS.

This is the backend large public STAC APIs run on, so ingestion is tested against the real thing:
pystac-client's POST ``/search`` with collections, bbox, datetime, CQL2-JSON filters and paging.

What :class:`StacApiServer` starts, all on 127.0.0.1 and in one temporary folder:

1. a PostgreSQL 15 cluster: ``initdb`` (trust auth, no sync), then ``postgres`` itself (not
   ``pg_ctl``, which would daemonize it out of our reach) on a port of ours with ``fsync``,
   ``synchronous_commit`` and ``full_page_writes`` off and its Unix socket in our folder;
2. pgstac: ``pypgstac`` migrations, and pgstac's ``context`` setting on (else no ``numberMatched``);
3. the API: ``python -m uvicorn stac_fastapi.pgstac.app:create_app --factory`` with the ``PG*``
   variables (``PGPASSWORD`` too: the settings require one even with trust auth); ready when ``/``
   answers.

PostgreSQL refuses to run as root. When the tests run as root, ``initdb`` and ``postgres`` run as the
``postgres`` user (created by the Debian package; ``tests/stacapi/setup.sh`` makes sure it exists)
through ``setpriv --pdeathsig keep``: a credential change clears the parent-death signal, ``keep``
sets it again, so the kernel still kills the server when the test process dies. Every process is
started with :func:`tests.infra.proc.spawn` (own process group, ``PR_SET_PDEATHSIG``) and stopped
with :func:`tests.infra.proc.stop`.

The server and pypgstac run in their own venv (``tests/stacapi/requirements.txt``), built by
``bash tests/stacapi/setup.sh`` (``make stacapi``) at
``${EARTHOPS_CACHE:-${XDG_CACHE_HOME:-~/.cache}/earthops}/stacapi-venv-<sha256(requirements)[:16]>``;
:func:`missing` says what is not installed. Overrides: ``EARTHOPS_STACAPI_VENV``,
``EARTHOPS_STACAPI_PG_BIN``, ``EARTHOPS_STACAPI_PG_USER``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.infra.proc import free_port, log_tail, spawn, stop, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
STACAPI_DIR = REPO_ROOT / "tests" / "stacapi"
REQUIREMENTS = STACAPI_DIR / "requirements.txt"
SETUP_SCRIPT = STACAPI_DIR / "setup.sh"
ADMIN_SCRIPT = STACAPI_DIR / "pgstac_admin.py"
VENV_MARKER = ".earthops-stacapi-venv"
PG_MAJOR = 15
SETUP_HINT = "run `make stacapi` (bash tests/stacapi/setup.sh; installs PostgreSQL+PostGIS with apt as root)"
_MAX_SOCKET_DIR = 90  # sun_path is 108 bytes; PostgreSQL appends /.s.PGSQL.<port>
#: ``<tmp>/earthops-stacapi-<pid of the test process>-<random>``: the pid says whose it is.
WORKDIR_PREFIX = "earthops-stacapi-"


def cache_dir() -> Path:
    explicit = os.environ.get("EARTHOPS_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "earthops"


def requirements_hash() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]


def venv_dir() -> Path:
    """The server venv: ``$EARTHOPS_STACAPI_VENV``, else the cache entry named by the requirements."""
    explicit = os.environ.get("EARTHOPS_STACAPI_VENV")
    if explicit:
        return Path(explicit)
    return cache_dir() / f"stacapi-venv-{requirements_hash()}"


def pg_bin_dir() -> Path:
    return Path(os.environ.get("EARTHOPS_STACAPI_PG_BIN") or f"/usr/lib/postgresql/{PG_MAJOR}/bin")


def pg_os_user() -> str | None:
    """The user PostgreSQL runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    return os.environ.get("EARTHOPS_STACAPI_PG_USER") or "postgres"


def missing() -> str | None:
    """Why the server cannot start here (what is not installed), or None when everything is in place."""
    problems = []
    pg_bin = pg_bin_dir()
    for tool in ("postgres", "initdb", "pg_isready", "pg_config"):
        if not os.access(pg_bin / tool, os.X_OK):
            problems.append(f"PostgreSQL {PG_MAJOR} ({pg_bin / tool} not found)")
            break
    else:
        share = subprocess.run([pg_bin / "pg_config", "--sharedir"], capture_output=True, text=True, check=False).stdout.strip()
        if not (Path(share) / "extension" / "postgis.control").is_file():
            problems.append(f"PostGIS for PostgreSQL {PG_MAJOR} ({share}/extension/postgis.control not found)")
    user = pg_os_user()
    if user is not None:
        try:
            pwd.getpwnam(user)
        except KeyError:
            problems.append(f"the non-root user {user!r} that runs PostgreSQL when the tests run as root")
        if shutil.which("setpriv") is None:
            problems.append("setpriv (util-linux), to run PostgreSQL as that user")
    venv = venv_dir()
    marker = venv / VENV_MARKER
    if not os.access(venv / "bin" / "python", os.X_OK):
        problems.append(f"the server venv {venv}")
    elif not os.environ.get("EARTHOPS_STACAPI_VENV"):  # ours: built from these pins, completely
        if not marker.is_file():
            problems.append(f"the server venv {venv} (incomplete)")
        elif marker.read_text().strip() != requirements_hash():
            problems.append(f"the server venv {venv} (built from other requirements)")
    if not problems:
        return None
    return "missing " + "; ".join(problems) + f": {SETUP_HINT}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tmp_base() -> Path:
    base = Path(tempfile.gettempdir())
    return base if len(str(base)) < 40 else Path("/tmp")  # keep the socket path short


def sweep_stale_workdirs(tmp_root: Path | None = None) -> list[Path]:
    """Remove server folders whose test process is gone (SIGKILLed: no cleanup ran; its servers
    died with it through PR_SET_PDEATHSIG, only files remain)."""
    removed = []
    for path in Path(tmp_root or _tmp_base()).glob(f"{WORKDIR_PREFIX}*"):
        m = re.match(rf"{re.escape(WORKDIR_PREFIX)}(\d+)-", path.name)
        if m and not _pid_alive(int(m.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def minimal_collection(collection_id: str, items: Sequence[Mapping[str, Any]] = (),
                       description: str | None = None) -> dict[str, Any]:
    """A valid STAC collection for ``items`` (extent computed from their bbox and datetimes)."""
    bboxes = [it["bbox"] for it in items if it.get("bbox")]
    spatial = ([min(b[0] for b in bboxes), min(b[1] for b in bboxes), max(b[2] for b in bboxes),
                max(b[3] for b in bboxes)] if bboxes else [-180.0, -90.0, 180.0, 90.0])
    times = sorted(t for it in items for t in (it["properties"].get("datetime"),
                                               it["properties"].get("start_datetime"),
                                               it["properties"].get("end_datetime")) if t)
    temporal = [times[0], times[-1]] if times else [None, None]
    return {
        "type": "Collection",
        "stac_version": "1.1.0",
        "id": collection_id,
        "description": description or f"test collection {collection_id}",
        "license": "other",
        "extent": {"spatial": {"bbox": [spatial]}, "temporal": {"interval": [temporal]}},
        "links": [],
    }


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        return dict(obj)
    to_dict = getattr(obj, "to_dict", None)  # pystac objects
    if to_dict is None:
        raise TypeError(f"expected a STAC dict or pystac object, got {type(obj).__name__}")
    return to_dict(include_self_link=False, transform_hrefs=False)


class StacApiServer:
    """A throwaway stac-fastapi-pgstac server on 127.0.0.1.

    >>> with StacApiServer() as api:
    ...     api.load(collections=[minimal_collection("c", items)], items=items)
    ...     pystac_client.Client.open(api.url).search(collections=["c"]).item_collection()
    """

    def __init__(self, root: Path | None = None, *, start_timeout: float = 60.0,
                 venv: Path | None = None, pg_bin: Path | None = None) -> None:
        self._given_root = Path(root) if root is not None else None
        self.root: Path | None = None
        self.start_timeout = start_timeout
        self.venv = Path(venv) if venv is not None else venv_dir()
        self.pg_bin = Path(pg_bin) if pg_bin is not None else pg_bin_dir()
        self.pg_user = pg_os_user()
        self.pg_port: int | None = None
        self.port: int | None = None
        #: Seconds from nothing to a ready API, and the parts: initdb, postgres, migrate, api.
        self.start_seconds: float | None = None
        self.timings: dict[str, float] = {}
        self._pg: subprocess.Popen[bytes] | None = None
        self._api: subprocess.Popen[bytes] | None = None
        self._loads = 0

    # -- addresses ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("StacApiServer is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def _log(self, name: str) -> Path:
        assert self.root is not None
        return self.root / "logs" / f"{name}.log"

    def pg_env(self) -> dict[str, str]:
        """libpq variables of the database, plus a minimal environment for the server's processes."""
        assert self.root is not None and self.pg_port is not None
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root / "home"),
            "LANG": "C.UTF-8",
            "TMPDIR": str(self.root / "tmp"),
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.pg_port),
            "PGUSER": "postgres",
            "PGDATABASE": "postgres",
            "PGPASSWORD": "unused-trust-auth",  # stac-fastapi-pgstac requires one
            "PGCONNECT_TIMEOUT": "5",
        }

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> StacApiServer:
        if self._api is not None:
            return self
        problem = missing() if (self.venv == venv_dir() and self.pg_bin == pg_bin_dir()) else None
        if problem:
            raise FileNotFoundError(problem)
        t0 = time.monotonic()
        try:
            self._make_root()
            self._initdb()
            self._start_postgres()
            self._migrate()
            self._start_api()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        if self._api is not None:
            stop(self._api, timeout=5.0)
            self._api = None
        if self._pg is not None:
            # SIGTERM to the group: backends end their sessions, the postmaster shuts down (throwaway
            # data, fsync off: anything slower than 10 s is killed).
            stop(self._pg, timeout=10.0)
            self._pg = None
        if self.root is not None and self._given_root is None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> StacApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- data --------------------------------------------------------------------------------------
    def load(self, *, collections: Iterable[Any] = (), items: Iterable[Any] = ()) -> None:
        """Upsert collections, then items (STAC dicts or pystac objects) with pypgstac's loader.

        Every item needs a ``collection`` that exists (loaded now or before). Asset hrefs are stored
        as given: make them absolute (``s3://...``)."""
        assert self.root is not None, "not started"
        self._loads += 1
        folder = self.root / "loads" / str(self._loads)
        folder.mkdir(parents=True)
        paths = {}
        for name, objs in (("collections", collections), ("items", items)):
            paths[name] = folder / f"{name}.ndjson"
            with open(paths[name], "w") as f:
                f.writelines(json.dumps(_as_dict(obj), separators=(",", ":")) + "\n" for obj in objs)
        self._admin("load", str(paths["collections"]), str(paths["items"]))

    def delete_collection(self, *collection_ids: str) -> None:
        """Delete collections and their items (one pypgstac process for all)."""
        if collection_ids:
            self._admin("delete-collection", *collection_ids)

    # -- internals ---------------------------------------------------------------------------------
    def _make_root(self) -> None:
        if self._given_root is not None:
            self.root = self._given_root
            self.root.mkdir(parents=True, exist_ok=True)
        else:
            sweep_stale_workdirs()
            self.root = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-", dir=_tmp_base()))
        for sub in ("logs", "home", "tmp", "sock", "loads"):
            (self.root / sub).mkdir(exist_ok=True)
        if len(str(self.root / "sock")) > _MAX_SOCKET_DIR:
            raise RuntimeError(f"{self.root} is too deep for PostgreSQL's Unix socket path")
        if self.pg_user is not None:  # the cluster's files belong to the user PostgreSQL runs as
            pw = pwd.getpwnam(self.pg_user)
            for path in (self.root, self.root / "sock"):
                os.chown(path, pw.pw_uid, pw.pw_gid)
            self.root.chmod(0o755)  # root: still ours to read; the data folder itself stays 0700

    def _as_pg_user(self, argv: Sequence[str | os.PathLike[str]]) -> list[str]:
        argv = [os.fspath(a) for a in argv]
        if self.pg_user is None:
            return argv
        # `keep`: the uid change clears PR_SET_PDEATHSIG; setpriv sets the inherited one again.
        return ["setpriv", f"--reuid={self.pg_user}", f"--regid={self.pg_user}", "--init-groups",
                "--pdeathsig", "keep", "--", *argv]

    def _initdb(self) -> None:
        assert self.root is not None
        t0 = time.monotonic()
        log = self._log("initdb")
        argv = self._as_pg_user([self.pg_bin / "initdb", "-D", self.root / "pgdata", "-U", "postgres",
                                 "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync",
                                 "--no-instructions"])
        with open(log, "ab") as out:
            result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False,
                                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
                                    cwd=self.root, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed (exit {result.returncode}):\n{log_tail(log)}")
        self.timings["initdb"] = time.monotonic() - t0

    def _postgres_argv(self) -> list[str]:
        assert self.root is not None and self.pg_port is not None
        settings = {
            "port": self.pg_port,
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": self.root / "sock",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "jit": "off",
            "max_connections": 50,
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        argv: list[str] = [os.fspath(self.pg_bin / "postgres"), "-D", os.fspath(self.root / "pgdata")]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        return self._as_pg_user(argv)

    def _pg_ready(self) -> bool:
        result = subprocess.run([self.pg_bin / "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.pg_port),
                                 "-t", "1"], capture_output=True, timeout=10, check=False)
        return result.returncode == 0

    def _start_postgres(self) -> None:
        t0 = time.monotonic()
        log = self._log("postgres")
        for attempt in range(1, 4):  # a port picked by free_port() may be taken in between
            self.pg_port = free_port()
            self._pg = spawn(self._postgres_argv(), log_path=log, env=self.pg_env(), cwd=self.root)
            try:
                wait_for(self._pg_ready, timeout=self.start_timeout, what="PostgreSQL", proc=self._pg,
                         log_path=log, interval=0.05)
                break
            except RuntimeError:
                stop(self._pg)
                self._pg = None
                if attempt < 3 and "could not bind" in log_tail(log, 50).lower():
                    continue
                raise
        self.timings["postgres"] = time.monotonic() - t0

    def _admin(self, *args: str) -> None:
        assert self.root is not None
        log = self._log("admin")
        with open(log, "ab") as out:
            result = subprocess.run([self.python, ADMIN_SCRIPT, *args], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=self.pg_env(), cwd=self.root, timeout=300, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"pgstac_admin.py {args[0]} failed (exit {result.returncode}):\n{log_tail(log)}")

    def _migrate(self) -> None:
        t0 = time.monotonic()
        self._admin("init")
        self.timings["migrate"] = time.monotonic() - t0

    def _api_ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/", timeout=2) as resp:
            return resp.status == 200 and json.loads(resp.read()).get("type") == "Catalog"

    def _start_api(self) -> None:
        assert self.root is not None
        t0 = time.monotonic()
        log = self._log("api")
        env = {
            **self.pg_env(),
            "STAC_FASTAPI_TITLE": "earthops test STAC API",
            "STAC_FASTAPI_DESCRIPTION": "stac-fastapi-pgstac started by tests/infra/stacapi.py",
            "STAC_FASTAPI_LANDING_ID": "earthops-test-stac-api",
            "STAC_FASTAPI_VERSION": "0",
            "DB_MIN_CONN_SIZE": "1",
            "DB_MAX_CONN_SIZE": "4",
            "PYTHONUNBUFFERED": "1",
        }
        for attempt in range(1, 4):
            self.port = free_port()
            argv = [self.python, "-m", "uvicorn", "stac_fastapi.pgstac.app:create_app", "--factory",
                    "--host", "127.0.0.1", "--port", str(self.port), "--no-access-log", "--log-level", "warning"]
            self._api = spawn(argv, log_path=log, env=env, cwd=self.root)
            try:
                wait_for(self._api_ready, timeout=self.start_timeout, what="stac-fastapi-pgstac", proc=self._api,
                         log_path=log, interval=0.05)
                break
            except RuntimeError:
                stop(self._api)
                self._api = None
                if attempt < 3 and "address already in use" in log_tail(log, 50).lower():
                    continue
                raise
        self.timings["api"] = time.monotonic() - t0

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in (self._pg, self._api) if p is not None]


def _main() -> int:  # python -m tests.infra.stacapi: start one, print its URL and timings, stop it
    with StacApiServer() as api:
        print(f"STAC API at {api.url}, ready in {api.start_seconds:.2f} s "
              f"({', '.join(f'{k} {v:.2f} s' for k, v in api.timings.items())})")
        with contextlib.suppress(KeyboardInterrupt):
            if os.environ.get("STACAPI_HOLD"):
                time.sleep(float(os.environ["STACAPI_HOLD"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
