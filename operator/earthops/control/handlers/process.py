"""The operator process: kopf with a liveness endpoint, Prometheus metrics, namespace scoping,
peering or standalone, and graceful shutdown on SIGTERM/SIGINT (kopf's own signal handling)."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

import kopf

from earthops.control.reconcile.rayjob import DEFAULT_RUNTIME_IMAGE

log = logging.getLogger("earthops.operator")
#: The liveness and metrics endpoints listen on every interface: kubelet probes and Prometheus reach the
#: pod from outside it.
BIND = "0.0.0.0"


@dataclass(frozen=True)
class OperatorOptions:
    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = False
    standalone: bool = True
    peering: str | None = None
    liveness_port: int = 8080
    metrics_port: int = 9090
    store: str | None = None
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    log_level: str = "info"
    log_format: str = "text"


def _configure(opts: OperatorOptions) -> None:
    import os

    from earthops.core.store import ENV_STORE

    if opts.store:
        os.environ[ENV_STORE] = opts.store
    kopf.configure(
        debug=opts.log_level == "debug",
        verbose=opts.log_level == "debug",
        quiet=opts.log_level in ("warning", "error"),
        log_format=kopf.LogFormat.JSON if opts.log_format == "json" else kopf.LogFormat.FULL,
    )
    logging.getLogger().setLevel(opts.log_level.upper())

    @kopf.on.startup()
    def _settings(settings: kopf.OperatorSettings, **_: Any) -> None:
        from earthops.control.handlers import k8s, rayjobs
        from earthops.control.reconcile.rayjob import OperatorDefaults
        from earthops.core.store import default_uri

        k8s.login()
        rayjobs.configure(OperatorDefaults(runtime_image=opts.runtime_image, store_uri=opts.store or default_uri()))
        # kopf's bookkeeping in annotations under our prefix, not in status: status stays ours
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.earthops.dev")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="kopf.earthops.dev", key="last-handled-configuration"
        )
        if opts.peering:
            # kopf pauses every peer that shares the highest priority; replicas of one Deployment
            # would all freeze, so each process draws its own (the highest one is the active one)
            settings.peering.priority = random.randint(1, 2**31 - 1)
        settings.posting.level = logging.INFO
        settings.watching.server_timeout = 300
        settings.networking.request_timeout = 60
        settings.execution.max_workers = k8s.HANDLER_THREADS

    @kopf.on.probe(id="kinds")
    def _kinds(**_: Any) -> dict[str, list[str]]:
        from earthops.control.handlers.kinds import RAYJOB_KINDS, SERVED_KINDS

        return {"rayjob": RAYJOB_KINDS, "inferenceservice": SERVED_KINDS}


def run_operator(opts: OperatorOptions) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    from prometheus_client import start_http_server

    from earthops.control.handlers import kinds  # noqa: F401 - registers the handlers
    from earthops.control.handlers.metrics import describe_operator

    _configure(opts)
    scope = "*" if opts.all_namespaces else ",".join(opts.namespaces)
    describe_operator("standalone" if opts.standalone else f"peering:{opts.peering}", scope)
    if opts.metrics_port:
        start_http_server(opts.metrics_port, addr=BIND)
    log.info("earthops operator: namespaces=%s, %s", scope, "standalone" if opts.standalone else f"peering {opts.peering}")
    kopf.run(
        standalone=opts.standalone,
        peering_name=None if opts.standalone else opts.peering,
        clusterwide=opts.all_namespaces,
        namespaces=() if opts.all_namespaces else opts.namespaces,
        liveness_endpoint=f"http://{BIND}:{opts.liveness_port}/healthz",
    )
    return 0
