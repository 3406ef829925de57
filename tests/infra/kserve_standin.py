"""An executing stand-in for KServe (and Knative) on the test API server: it runs an InferenceService's
predictor container command on this machine and writes the status KServe would, with the URL where
the service answers, so an operator test sends real requests through the URL in the status.

Against the envtest API server nothing runs pods. :class:`InferenceServiceStandIn` follows one
InferenceService: for every spec generation (a Knative revision, ``<name>-predictor-<generation>``)
it runs the predictor container's ``command`` as a local process on a free loopback port (the image
is not used: this machine has the same Python environment; the container's ``env`` and the Secret its
``envFrom`` names become the process's environment), waits for its ready line, and then routes the
service URL — a small loopback reverse proxy playing Knative's router — by the traffic split KServe
makes: with ``canaryTrafficPercent`` the latest revision gets that share and the previously rolled-out
one the rest (deterministic smooth weighted round robin), else the latest gets everything and older
revisions are stopped. The status itself is written by :class:`tests.infra.peers.KServeSimulator`
(the fields, conditions and revision bookkeeping KServe writes), with this URL. A revision whose
process exits before it is ready gets the status KServe writes for a revision that failed.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import os
import re
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes.client import CoreV1Api, CustomObjectsApi

from tests.infra.peers import KServeSimulator
from tests.infra.proc import free_port, spawn, stop

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(rb"earthops predictor ready at (http://\S+)")


@dataclass(eq=False)
class Revision:
    generation: int
    proc: Any
    port: int
    log: Path
    container: dict[str, Any]
    ready: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Router:
    """Knative's router on loopback: forwards each request to a revision picked by weight."""

    def __init__(self) -> None:
        self.weights: list[tuple[str, int]] = []  # (backend URL, percent)
        self._current: dict[str, int] = {}
        self._lock = threading.Lock()
        router = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                backend = router.pick()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                request = urllib.request.Request(f"{backend}{self.path}", data=body, method=self.command, headers=headers)
                try:
                    with urllib.request.urlopen(request, timeout=60) as reply:
                        status, reply_headers, data = reply.status, reply.headers, reply.read()
                except urllib.error.HTTPError as exc:
                    status, reply_headers, data = exc.code, exc.headers, exc.read()
                self.send_response(status)
                for key, value in reply_headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _forward  # noqa: N815 - http.server's names

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="standin-router")
        self._thread.start()

    def route(self, weights: list[tuple[str, int]]) -> None:
        """Route by ``weights`` from now on (the round robin starts over only when they change)."""
        with self._lock:
            weights = [(u, w) for u, w in weights if w > 0]
            if weights != self.weights:
                self.weights = weights
                self._current = {u: 0 for u, _ in self.weights}

    def pick(self) -> str:
        """Smooth weighted round robin (nginx's): deterministic, exact shares over each 100 requests."""
        with self._lock:
            total = sum(w for _, w in self.weights)
            for url, weight in self.weights:
                self._current[url] += weight
            best = max(self.weights, key=lambda uw: self._current[uw[0]])[0]
            self._current[best] -= total
            return best

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class InferenceServiceStandIn:
    """Plays KServe for one InferenceService (see the module docstring); :meth:`follow` in a thread."""

    api_client: Any
    namespace: str
    name: str
    workdir: Path
    revisions: dict[int, Revision] = field(default_factory=dict)
    rolled_out: int | None = None  # the generation that last got all the traffic

    def __post_init__(self) -> None:
        self.api = CustomObjectsApi(self.api_client)
        self.kserve = KServeSimulator(self.api_client)
        self.router = Router()
        self._stop = threading.Event()
        self.errors: list[BaseException] = []

    # -- following the InferenceService ----------------------------------------------------------------

    def get(self) -> dict[str, Any] | None:
        from kubernetes.client import ApiException

        try:
            return self.api.get_namespaced_custom_object("serving.kserve.io", "v1beta1", self.namespace,
                                                         "inferenceservices", self.name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def sync(self) -> None:
        """One step: start the revision of a new spec, and once it is ready route and write the status."""
        isvc = self.get()
        if isvc is None:
            return
        generation = int(isvc["metadata"]["generation"])
        predictor = isvc["spec"]["predictor"]
        if generation not in self.revisions:
            # a spec change that leaves the container as it is (a new canary share) makes no new Knative
            # revision: the running one serves on
            container = predictor["containers"][0]
            same = next((r for r in self.revisions.values() if r.container == container), None)
            self.revisions[generation] = same or self._start(generation, container)
        revision = self.revisions[generation]
        if not revision.ready:
            if revision.proc.poll() is not None:
                if (isvc.get("status") or {}).get("observedGeneration") != generation:
                    tail = revision.log.read_text(errors="replace")[-400:]
                    self.kserve.not_ready(self.namespace, self.name, message=f"container exited: {tail}")
                return
            if READY.search(revision.log.read_bytes()):
                revision.ready = True
            else:
                return
        percent = predictor.get("canaryTrafficPercent")
        previous = self.rolled_out if self.rolled_out != generation else None
        if percent is not None and previous is not None and previous in self.revisions:
            weights = [(revision.url, percent), (self.revisions[previous].url, 100 - percent)]
        else:
            weights, percent = [(revision.url, 100)], None
            self.rolled_out = generation
        self.router.route(weights)
        kept = {id(self.revisions[g]) for g in (generation, previous if percent is not None else None) if g in self.revisions}
        for old, rev in list(self.revisions.items()):  # revisions without traffic are scaled down
            if id(rev) not in kept:
                stop(rev.proc)
                del self.revisions[old]
        status = isvc.get("status") or {}
        traffic = ((status.get("components") or {}).get("predictor") or {}).get("traffic") or []
        written = {(t.get("revisionName"), t.get("percent")) for t in traffic}
        wanted_latest = self.kserve._revision(self.name, generation)
        if status.get("observedGeneration") != generation or (wanted_latest, percent or 100) not in written \
                or status.get("url") != self.router.url:
            self.kserve.ready(self.namespace, self.name, url=self.router.url, canary_percent=percent)

    def _start(self, generation: int, container: dict[str, Any]) -> Revision:
        argv = list(container.get("command") or []) + list(container.get("args") or [])
        assert argv[:3] == ["python", "-m", "earthops_runtime.serving"], argv
        port = free_port()
        argv = [sys.executable, *argv[1:]]
        argv[argv.index("--http_port") + 1] = str(port)
        argv += ["--host", "127.0.0.1"]
        env = {**os.environ, **{e["name"]: e["value"] for e in container.get("env") or [] if "value" in e}}
        for source in container.get("envFrom") or []:
            secret = CoreV1Api(self.api_client).read_namespaced_secret(source["secretRef"]["name"], self.namespace)
            env.update({k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()})
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "runtimes"), str(ROOT / "operator"),
                                             os.environ.get("PYTHONPATH", "")])
        log = self.workdir / f"{self.name}-predictor-{generation:05d}.log"
        return Revision(generation, spawn(argv, log_path=log, env=env, cwd=ROOT), port, log, container)

    def follow(self, interval: float = 0.3) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except BaseException as exc:  # noqa: BLE001 - reported by close()
                self.errors.append(exc)
                return
            self._stop.wait(interval)

    def close(self) -> None:
        self._stop.set()
        for rev in {id(r): r for r in self.revisions.values()}.values():
            stop(rev.proc)
        self.router.close()

    def log_tail(self) -> str:
        return "\n".join(f"--- revision {g}:\n{r.log.read_text(errors='replace')[-1500:]}" for g, r in self.revisions.items())


@contextlib.contextmanager
def kserve_standin(api_client: Any, namespace: str, name: str, workdir: Path) -> Iterator[InferenceServiceStandIn]:
    """Follow the InferenceService ``namespace/name`` in a thread until the block ends; every predictor
    process it started is stopped then."""
    standin = InferenceServiceStandIn(api_client, namespace, name, workdir)
    thread = threading.Thread(target=standin.follow, daemon=True, name=f"standin-{name}")
    thread.start()
    try:
        yield standin
    finally:
        standin.close()
        thread.join(10)
    if standin.errors:
        raise standin.errors[0]



def register_versions(store: Any, namespace: str, run_uri: str, name: str = "iceberg") -> dict[str, str]:
    """Two real versions of a small iceberg-cnn trained on nothing (different weights) on a published
    ship/iceberg dataset run, registered as ``name`` v1 and v2: {version: URI}."""
    import torch

    from earthops_runtime.registry import register_model
    from earthops_runtime.training.data import DatasetInfo
    from tests.integration.test_registry import build, make_card

    dataset = DatasetInfo.open(run_uri)
    chips = dataset.chips("validation", shuffle=False)
    example = torch.stack([x.clone() for (x, _), _ in zip(chips, range(2))])
    uris = {}
    for seed, version in ((0, "v1"), (1, "v2")):
        torch.manual_seed(seed)
        model = build(dataset, "iceberg-cnn", {"width": 0.25})
        card = make_card(dataset, "iceberg-cnn", {"width": 0.25}, accuracy=0.9, store_uri=store.uri)
        registered = register_model(store, namespace=namespace, name=name, model=model, example_input=example,
                                    card=card)
        assert registered.version == version, registered
        uris[version] = store.url(f"models/{namespace}/{name}/{version}")
    return uris
