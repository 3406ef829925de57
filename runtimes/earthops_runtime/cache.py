"""Cache entries for data the runtime fetches or generates (samples, synthetic scenes).

An entry is a folder with a marker file listing what it was built from (its identity) and every file
with its size. It is valid only when the marker matches and every file is there with its size; else it
is rebuilt under a file lock in a temporary folder beside it and renamed into place, so a killed build
never leaves a half entry and two processes never build the same entry at once."""

from __future__ import annotations

import functools
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock

MARKER = ".earthops-cache.json"

T = TypeVar("T")


def per_file_version(maxsize: int) -> Callable[[Callable[[str], T]], Callable[[str], T]]:
    """Decorator: ``fn(path)`` computed once per version of the local file at ``path`` (its size and
    modification time: a file rewritten in place is a new version), the ``maxsize`` most recently used
    kept in memory. For what a query reads from a file's footer or opens once (index row groups, text
    indexes, row stores). A missing file raises :class:`FileNotFoundError` from ``os.stat``."""

    def wrap(fn: Callable[[str], T]) -> Callable[[str], T]:
        @functools.lru_cache(maxsize=maxsize)
        def of_version(path: str, size: int, mtime_ns: int) -> T:
            return fn(path)

        @functools.wraps(fn)
        def get(path: str) -> T:
            st = os.stat(path)
            return of_version(path, st.st_size, st.st_mtime_ns)

        get.cache_clear = of_version.cache_clear  # type: ignore[attr-defined]
        return get

    return wrap


def cache_root(part: str) -> Path:
    """``$EARTHOPS_CACHE/<part>``, else ``${XDG_CACHE_HOME:-~/.cache}/earthops/<part>``: the one rule for
    where the runtime caches what it fetches or builds (``samples``, ``index``)."""
    explicit = os.environ.get("EARTHOPS_CACHE")
    if explicit:
        return Path(explicit).expanduser() / part
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "earthops" / part


def default_cache_dir() -> Path:
    """Where samples and synthetic scenes are cached: :func:`cache_root` ``("samples")``."""
    return cache_root("samples")


def _files(tree: Path) -> dict[str, int]:
    return {p.relative_to(tree).as_posix(): p.stat().st_size
            for p in sorted(tree.rglob("*")) if p.is_file() and p.name != MARKER}


def write_marker(tree: Path, identity: Mapping[str, Any]) -> None:
    marker = {**identity, "created": datetime.now(UTC).isoformat(), "files": _files(tree)}
    tmp = tree / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(marker, indent=1, sort_keys=True))
    os.replace(tmp, tree / MARKER)


def valid(entry: Path, identity: Mapping[str, Any], required: Iterable[str] = ()) -> bool:
    """Whether ``entry`` was built for ``identity`` and is complete (``required`` files included)."""
    try:
        if entry.is_symlink() or not entry.is_dir():
            return False
        marker = json.loads((entry / MARKER).read_text())
        if any(marker.get(k) != v for k, v in identity.items()):
            return False
        files = marker["files"]
        if not files or any(r not in files for r in required):
            return False
        for rel, size in files.items():
            path = entry / rel
            if path.is_symlink() or path.stat().st_size != size:
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def cached_entry(cache: Path, name: str, identity: Mapping[str, Any], build: Callable[[Path], Any],
                 required: Iterable[str] = ()) -> Path:
    """The entry ``cache/name``: returned at once when valid, else built by ``build(folder)``."""
    required = tuple(required)
    final = cache / name
    if valid(final, identity, required):
        return final
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(cache / f".{name}.lock"):
        if valid(final, identity, required):  # built by another process while we waited
            return final
        for stale in cache.glob(f".{name}.tmp-*"):  # left by killed runs; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        work = cache / f".{name}.tmp-{uuid.uuid4().hex[:12]}"
        tree = work / name
        tree.mkdir(parents=True)
        try:
            build(tree)
            write_marker(tree, identity)
            if final.exists() or final.is_symlink():  # invalid entry: move it aside, then replace
                os.rename(final, work / "replaced")
            os.rename(tree, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final
