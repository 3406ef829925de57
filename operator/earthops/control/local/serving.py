"""The predictor on this machine: ``earthops serve`` and ``earthops run -f`` on a ModelDeployment.

It runs the very command an InferenceService's container runs
(:func:`earthops.control.reconcile.inferenceservice.predictor_command`: ``python -m
earthops_runtime.serving``) as a child process bound to 127.0.0.1, waits for its ready line, and
stops it — SIGTERM, then SIGKILL — when asked or when this process ends (on Linux the child also gets
SIGKILL if this process dies without stopping it). A canary is split by the predictor itself, by the
deployment's percent (on a cluster KServe's revisions split instead).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from earthops.api import Resource
from earthops.control.reconcile.inferenceservice import Models, Observed, predictor_command
from earthops.control.status import Execution

HOST = "127.0.0.1"
#: The line the predictor prints once every version is loaded and warmed up (earthops_runtime.serving).
READY = re.compile(r"earthops predictor ready at (?P<url>http://\S+)")
#: How long a predictor may take to load and warm up its models.
START_TIMEOUT_S = 300.0


class ServerError(RuntimeError):
    """The predictor did not start, or stopped by itself; the message has the end of its log."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the predictor gets SIGKILL when the process that started it dies (no orphaned server)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class LocalServer:
    """One running predictor process."""

    name: str
    models: Models
    canary_percent: int | None
    proc: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""
    started: float = field(default_factory=time.time)
    #: What the executor needs to record its status when it stops (resource, state, generation, run id).
    state: Any = None
    #: The log file the predictor writes to, and the thread copying its stdout there: closed once it ended.
    log: IO[bytes] | None = None
    reader: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (KServe's server shuts down cleanly), then SIGKILL; waits for the process, then
        closes its log (also when it had already exited)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.close_log()

    def close_log(self) -> None:
        """Once the process ended: let the reader copy the rest of its stdout, then close the log."""
        if self.reader is not None:
            self.reader.join(5)
        if self.log is not None:
            self.log.close()

    def observed(self) -> Observed:
        """The deployment's execution state and status fields, as :func:`~earthops.control.reconcile.
        inferenceservice.observe` gives them for an InferenceService."""
        primary, canary = self.models.primary, self.models.canary
        assert primary is not None
        percent = self.canary_percent if canary is not None else None
        fields: dict[str, Any] = {"url": self.url, "modelName": self.name, "modelVersion": primary.label,
                                  "modelUri": primary.uri, "readyReplicas": 1 if self.alive else 0}
        traffic = [{"version": primary.label, "percent": 100 - (percent or 0), "role": "primary"}]
        if canary is not None:
            fields.update(canaryVersion=canary.label, canaryModelUri=canary.uri, canaryTrafficPercent=percent)
            traffic.append({"version": canary.label, "percent": percent or 0, "role": "canary"})
        fields["traffic"] = traffic
        if not self.alive:
            return Observed(Execution("Failed", "PredictorExited", f"the predictor exited with code "
                                      f"{self.proc.returncode}: {self.log_tail()}"), fields)
        what = primary.label if canary is None else f"{primary.label} and canary {canary.label} ({percent}%)"
        return Observed(Execution("Succeeded", "", f"serving {what} at {self.url} on this machine"), fields)

    def stopped(self) -> Observed:
        """What the status says once the server was stopped on purpose."""
        fields = {k: v for k, v in self.observed().fields.items() if k not in ("url", "traffic")}
        fields["readyReplicas"] = 0
        return Observed(Execution("Pending", "Stopped", f"the local server at {self.url} was stopped; "
                                  "earthops run -f or earthops serve starts it again"), fields)


def start(resource: Resource[Any, Any], models: Models, *, port: int = 8080, log_dir: Path | None = None,
          timeout: float = START_TIMEOUT_S, env: dict[str, str] | None = None) -> LocalServer:
    """Start the predictor of ``resource`` (a ModelDeployment) on 127.0.0.1:``port`` (0: a free port) and
    wait until it is ready; :class:`ServerError` with its log's end if it exits first."""
    if models.primary is None:
        raise ValueError(f"ModelDeployment {resource.namespace}/{resource.name}: its model is not resolved")
    canary = resource.spec.canary
    argv = predictor_command(resource, models.primary, http_port=port, canary=models.canary,
                             canary_percent=canary.traffic_percent if canary and models.canary else None,
                             reference=models.reference)
    argv = [sys.executable, *argv[1:], "--host", HOST]
    log_dir = log_dir or Path(tempfile.gettempdir())
    log_path = log_dir / f"earthops-serve-{resource.namespace}-{resource.name}-{os.getpid()}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})},
                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    server = LocalServer(resource.name, models, canary.traffic_percent if canary else None, proc, log_path, log=log)
    found: list[str] = []

    def read_stdout() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:  # the ready line, then whatever it prints: into the log
            line = raw.decode(errors="replace")
            try:
                log.write(raw)
                log.flush()
            except ValueError:  # closed: the server was stopped
                break
            match = READY.search(line)
            if match and not found:
                found.append(match["url"])

    reader = threading.Thread(target=read_stdout, name=f"predictor-{resource.name}", daemon=True)
    server.reader = reader
    reader.start()
    deadline = time.monotonic() + timeout
    while not found:
        if proc.poll() is not None:
            server.close_log()
            raise ServerError(f"the predictor exited with code {proc.returncode} before it was ready "
                              f"(log: {log_path}): {server.log_tail()}")
        if time.monotonic() > deadline:
            server.stop()
            raise ServerError(f"the predictor was not ready within {timeout:.0f} s (log: {log_path}): {server.log_tail()}")
        time.sleep(0.1)
    server.url = found[0].rstrip("/").replace("0.0.0.0", HOST)
    return server


def example_curl(server: LocalServer, request_file: Path | None) -> str:
    """A curl command that asks the server for a prediction (of the request in ``request_file``), or its
    metadata when there is no request to send."""
    if request_file is None:
        return f"curl -s {server.url}/v2/models/{server.name}"
    return (f"curl -s -X POST {server.url}/v2/models/{server.name}/infer -H 'Content-Type: application/json' "
            f"-d @{request_file}")


def predict(server: LocalServer, request: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """One v2 (Open Inference Protocol) prediction; the reply's JSON, or :class:`ServerError` naming the
    HTTP status and the server's message."""
    body = json.dumps(request).encode()
    req = urllib.request.Request(f"{server.url}/v2/models/{server.name}/infer", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as reply:
            return dict(json.loads(reply.read()))
    except urllib.error.HTTPError as exc:
        raise ServerError(f"the predictor answered {exc.code}: {exc.read().decode(errors='replace')[:500]}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ServerError(f"the predictor at {server.url} did not answer: {exc}") from None


def serve_until_interrupted(servers: list[LocalServer], on_exit: Callable[[LocalServer], None],
                            poll: float = 0.5) -> LocalServer | None:
    """Wait until Ctrl-C (or SIGTERM) or until a server exits by itself (returned); ``on_exit`` is called
    for it. SIGTERM is read as Ctrl-C so both end in the same clean shutdown."""
    previous = signal.signal(signal.SIGTERM, _interrupt) if threading.current_thread() is threading.main_thread() else None
    try:
        while True:
            for server in servers:
                if not server.alive:
                    on_exit(server)
                    return server
            time.sleep(poll)
    except KeyboardInterrupt:
        return None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
