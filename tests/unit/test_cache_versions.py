"""Per-file-version caches (earthops_runtime.cache.per_file_version): what a query opens once per file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from earthops_runtime.cache import per_file_version

pytestmark = pytest.mark.unit


def test_a_file_is_read_once_per_version(tmp_path: Path) -> None:
    calls: list[str] = []

    @per_file_version(maxsize=4)
    def size_of(path: str) -> int:
        calls.append(path)
        return len(Path(path).read_bytes())

    f = tmp_path / "a.bin"
    f.write_bytes(b"12345")
    assert size_of(str(f)) == size_of(str(f)) == 5
    assert len(calls) == 1
    # rewritten in place with the same size: a new modification time is a new version
    f.write_bytes(b"abcde")
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert size_of(str(f)) == 5 and len(calls) == 2
    f.write_bytes(b"123")  # a new size
    assert size_of(str(f)) == 3 and len(calls) == 3
    size_of.cache_clear()  # type: ignore[attr-defined]
    assert size_of(str(f)) == 3 and len(calls) == 4
    with pytest.raises(FileNotFoundError):
        size_of(str(tmp_path / "missing.bin"))
    assert size_of.__name__ == "size_of"


def test_the_least_recently_used_version_goes_first(tmp_path: Path) -> None:
    calls: list[str] = []

    @per_file_version(maxsize=2)
    def name(path: str) -> str:
        calls.append(path)
        return Path(path).name

    paths = []
    for n in "abc":
        (tmp_path / n).write_text(n)
        paths.append(str(tmp_path / n))
    a, b, c = paths
    name(a), name(b), name(a), name(c)  # c evicts b, the least recently used
    assert calls == [a, b, c]
    name(a)
    assert calls == [a, b, c]
    name(b)
    assert calls == [a, b, c, b]
