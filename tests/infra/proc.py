"""Child processes for test servers that cannot outlive the test run.

Every server a test starts goes through :func:`spawn`: the child gets ``PR_SET_PDEATHSIG`` so the
kernel kills it when the pytest process dies for any reason (including SIGKILL), and it runs in its
own process group so :func:`stop` can take down anything it forked.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with(parent_pid: int):
    def preexec() -> None:  # runs in the child between fork and exec
        os.setsid()
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout+stderr appended to ``log_path``; it dies when this process dies —
    exactly: when the thread that called this ends (the kernel's parent-death signal follows the
    thread), so a child spawned from a helper thread needs that thread to live as long as it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [os.fspath(a) for a in argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            preexec_fn=_die_with(os.getpid()),
        )


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the child's process group, then SIGKILL it if it has not exited within ``timeout``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(log_path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def denied_access(log: str) -> list[str]:
    """The lines of a log that show the API server refusing access (``Forbidden``, an HTTP 403), the
    leading ``[time]`` of each line not counted (``21:17:33,403`` is a time, not a status)."""
    return [line for line in log.splitlines()
            if "Forbidden" in line or re.search(r"\b403\b", re.sub(r"^\[[^]]*\]", "", line))]


def wait_for(
    ready: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
    interval: float = 0.1,
) -> None:
    """Poll ``ready()`` until it is true; fail with the server's log tail if it exits or times out.

    An exception from ``ready()`` counts as not ready yet; the last one is named if time runs out."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        if proc is not None and proc.poll() is not None:
            tail = log_tail(log_path) if log_path else ""
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready:\n{tail}")
        try:
            if ready():
                return
        except Exception as exc:  # noqa: BLE001 - not ready yet, whatever the reason; kept for the message
            last_error = exc
        if time.monotonic() > deadline:
            tail = log_tail(log_path) if log_path else ""
            cause = f" (last error: {type(last_error).__name__}: {str(last_error)[:500]})" if last_error else ""
            raise TimeoutError(f"{what} was not ready after {timeout:.0f} s{cause}:\n{tail}")
        time.sleep(interval)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> None:
    """A piece of real test infrastructure could not be started.

    Locally the dependent tests are skipped with the reason; in CI (``CI=true``) the run fails, so a
    missing server never turns into a silent skip.
    """
    import pytest

    if in_ci():
        pytest.fail(f"test infrastructure unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"test infrastructure unavailable: {reason}")


def unique_name(test_name: str, prefix: str = "t-", random_bytes: int = 3) -> str:
    """A DNS-label-safe, unique name that still says which test made it (namespaces, buckets, ids)."""
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"{prefix}{slug or 'test'}-{secrets.token_hex(random_bytes)}"
