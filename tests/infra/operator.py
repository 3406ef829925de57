"""Run ``earthops operator`` for real against the test API server, as the Helm chart's ServiceAccount
(the chart's own least-privilege RBAC, not admin), with its liveness and metrics endpoints."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.infra.kube import Grant, wait_until_allowed
from tests.infra.proc import free_port, spawn, stop, wait_for

ROOT = Path(__file__).resolve().parents[2]
RBAC_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


@dataclass
class OperatorProcess:
    proc: subprocess.Popen[bytes]
    namespace: str
    live_port: int
    metrics_port: int
    log: Path

    def get(self, path: str) -> tuple[int, str]:
        port = self.live_port if path == "/healthz" else self.metrics_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()


def declared_grants(namespace: str, *, all_namespaces: bool, peering: bool) -> list[Grant]:
    """Every (verb, group, resource, namespace) the operator's declared API calls need
    (earthops.control.handlers.apicalls), for an operator watching ``namespace`` or all namespaces."""
    from earthops.control.handlers import apicalls

    grants = []
    for call in apicalls.calls(all_namespaces=all_namespaces, peering=peering):
        where = "" if call.scope == "cluster" or all_namespaces else namespace
        grants += [(verb, call.group, resource, where) for resource in call.resources for verb in call.verbs]
    return grants


def install_chart_rbac(kube: Any, namespace: str) -> str:
    """Render the chart for ``namespace`` and apply its RBAC objects; the ServiceAccount's name, once the
    server allows it every call the operator makes (bindings take effect a moment after they are stored)."""
    from tests.infra.tools import helm

    rendered = subprocess.run(
        [str(helm()), "template", "earthops", str(ROOT / "charts/earthops"), "--namespace", namespace,
         "--set", f"watch.namespaces={{{namespace}}}"],
        capture_output=True, text=True, check=True).stdout
    rbac = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in RBAC_KINDS]
    kube.apply(rbac, namespace=namespace)
    account = next(d["metadata"]["name"] for d in rbac if d["kind"] == "ServiceAccount")
    client = kube.api_client(token=kube.service_account_token(namespace, account, create=False))
    wait_until_allowed(client, declared_grants(namespace, all_namespaces=False, peering=False),
                       what=f"the chart's RBAC for {namespace}/{account}")
    return account


def start_operator(kube: Any, namespace: str, workdir: Path, store_uri: str, account: str,
                   log_name: str = "operator.log") -> OperatorProcess:
    """Start ``earthops operator`` for ``namespace`` as the chart's ServiceAccount ``account`` (its RBAC
    installed: :func:`install_chart_rbac`); returns at once (see :func:`wait_live`)."""
    token = kube.service_account_token(namespace, account, create=False)
    kubeconfig = kube.write_kubeconfig(workdir / "operator.kubeconfig", user=account, token=token)
    live, metrics = free_port(), free_port()
    log = workdir / log_name
    proc = spawn([sys.executable, "-m", "earthops.control.cli", "operator", "--namespace", namespace, "--standalone",
                  "--liveness-port", str(live), "--metrics-port", str(metrics), "--store", store_uri,
                  "--log-format", "text"],
                 log_path=log, env={**os.environ, "KUBECONFIG": str(kubeconfig)})
    return OperatorProcess(proc, namespace, live, metrics, log)


def wait_live(op: OperatorProcess, timeout: float = 60) -> None:
    wait_for(lambda: op.get("/healthz")[0] == 200, timeout=timeout, what="earthops operator", proc=op.proc,
             log_path=op.log)


@contextlib.contextmanager
def running_operator(kube: Any, namespace: str, workdir: Path, store_uri: str) -> Iterator[OperatorProcess]:
    op = start_operator(kube, namespace, workdir, store_uri, install_chart_rbac(kube, namespace))
    try:
        wait_live(op)
        yield op
    finally:
        stop(op.proc)
