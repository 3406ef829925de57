"""A throw-away kind cluster for the end-to-end tests (tests/e2e), with KubeRay, KServe and earthops.

``kind`` comes from ``$KIND``, else ``PATH``, else it is built once with
``go install sigs.k8s.io/kind@v0.30.0`` into
``${EARTHOPS_CACHE:-${XDG_CACHE_HOME:-~/.cache}/earthops}/tools/kind/v0.30.0/kind`` (only when a
cluster is actually created, so a machine without Docker never builds it). ``helm`` and ``kubectl`` come
from :mod:`tests.infra.tools`.

Everything installed into the cluster is pinned (see docs/e2e.md):

- node image ``kindest/node:v1.34.0`` (kind v0.30.0's default, by digest; ``KIND_NODE_IMAGE`` overrides)
- KubeRay operator chart ``kuberay-operator`` 1.4.2 (https://ray-project.github.io/kuberay-helm/)
- cert-manager chart v1.17.2 (https://charts.jetstack.io): the KServe chart issues its webhook
  certificate through cert-manager ``Certificate``/``Issuer`` objects, so KServe cannot start without it
- KServe charts ``oci://ghcr.io/kserve/charts/kserve-crd`` and ``.../kserve`` v0.15.2 in
  ``RawDeployment`` mode (plain Deployments/Services; no Knative, no Istio) with ingress creation off
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock

from tests.infra.tools import ToolUnavailable, helm, kubectl, tools_dir

KIND_VERSION = "v0.30.0"
KIND_NODE_IMAGE = (
    "kindest/node:v1.34.0@sha256:7416a61b42b1662ca6ca89f02028ac133a309a2a30ba309614e8ec94d976dc5a"
)

KUBERAY_CHART_REPO = "https://ray-project.github.io/kuberay-helm/"
KUBERAY_CHART_VERSION = "1.4.2"
CERT_MANAGER_CHART_REPO = "https://charts.jetstack.io"
CERT_MANAGER_CHART_VERSION = "v1.17.2"
KSERVE_CRD_CHART = "oci://ghcr.io/kserve/charts/kserve-crd"
KSERVE_CHART = "oci://ghcr.io/kserve/charts/kserve"
KSERVE_CHART_VERSION = "v0.15.2"

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "earthops"
EXAMPLES_DIR = REPO_ROOT / "examples"
OPERATOR_DOCKERFILE = REPO_ROOT / "operator" / "Dockerfile"
OPERATOR_IMAGE_REPOSITORY = "earthops/operator-e2e"

_HELM_WAIT = "10m"


class CommandFailed(RuntimeError):
    """A command run against the cluster failed; the message has the command and its output tail."""


def docker_available(timeout: float = 30.0) -> tuple[bool, str]:
    """Whether a Docker engine answers ``docker info``; when not, a reason fit for a skip message."""
    docker = shutil.which("docker")
    if docker is None:
        return False, "no Docker engine on this machine: the `docker` CLI is not on PATH"
    try:
        result = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        return False, f"no Docker engine on this machine: `docker info` did not answer within {timeout:.0f} s"
    except OSError as exc:
        return False, f"no Docker engine on this machine: cannot run `docker info`: {exc}"
    if result.returncode != 0:
        err = " ".join((result.stderr or result.stdout).split()) or f"exit status {result.returncode}"
        return False, f"no Docker engine on this machine: {err}"
    return True, f"Docker engine {result.stdout.strip()}"


def kind_binary() -> Path:
    """``$KIND``, else ``kind`` on PATH, else kind v0.30.0 built with ``go install`` into the cache."""
    override = os.environ.get("KIND")
    if override:
        path = Path(override).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ToolUnavailable(f"KIND={override!r} is not an executable file")
        return path.resolve()
    on_path = shutil.which("kind")
    if on_path:
        return Path(on_path)
    target = tools_dir() / "kind" / KIND_VERSION / "kind"
    if target.is_file() and os.access(target, os.X_OK):
        return target
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").is_file() else None)
    if go is None:
        raise ToolUnavailable(f"no kind: set KIND, put kind on PATH, or install Go to build kind {KIND_VERSION}")
    with FileLock(tools_dir() / ".lock"):
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".kind-build-", dir=target.parent) as gobin:
                env = {**os.environ, "GOBIN": gobin, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}
                result = subprocess.run(
                    [go, "install", f"sigs.k8s.io/kind@{KIND_VERSION}"],
                    capture_output=True, text=True, timeout=900, env=env, check=False,
                )
                if result.returncode != 0:
                    raise ToolUnavailable(
                        f"`go install sigs.k8s.io/kind@{KIND_VERSION}` failed (exit {result.returncode}); set "
                        f"KIND to a kind executable instead:\n{_tail(result.stderr or result.stdout)}"
                    )
                os.replace(Path(gobin) / "kind", target)
    return target


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run(argv: Sequence[str | os.PathLike[str]], *, timeout: float = 600, cwd: Path | None = None,
        env: Mapping[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output; on failure raise :class:`CommandFailed` with the output tail."""
    args = [os.fspath(a) for a in argv]
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                                env={**os.environ, **env} if env else None, check=False)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise CommandFailed(f"`{' '.join(args)}` ran past {timeout:.0f} s:\n{_tail(out)}") from exc
    if check and result.returncode != 0:
        raise CommandFailed(
            f"`{' '.join(args)}` failed (exit {result.returncode}):\n{_tail(result.stderr + result.stdout)}"
        )
    return result


def example_resources() -> list[dict[str, Any]]:
    """Every object in ``examples/<scenario>/*.yaml``, in apply order (scenario, then file name)."""
    docs: list[dict[str, Any]] = []
    for path in sorted(EXAMPLES_DIR.glob("*/*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


class KindCluster:
    """A kind cluster with a unique name and its own kubeconfig; use it as a context manager.

    The cluster is deleted when the ``with`` block ends, whether it ends normally or by an exception,
    and also when creation itself fails half-way.
    """

    def __init__(self, name: str | None = None, *, node_image: str | None = None) -> None:
        self.name = name or f"earthops-e2e-{uuid.uuid4().hex[:8]}"
        self.node_image = node_image or os.environ.get("KIND_NODE_IMAGE") or KIND_NODE_IMAGE
        self._tmp = tempfile.TemporaryDirectory(prefix=f"{self.name}-")
        self.workdir = Path(self._tmp.name)
        self.kubeconfig = self.workdir / "kubeconfig"
        self.kind = kind_binary()
        self._created = False

    # -- life cycle --------------------------------------------------------------------------------
    def __enter__(self) -> KindCluster:
        try:
            self.create()
        except BaseException:
            self.delete()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def create(self) -> None:
        self._created = True  # from here on a delete is due, even if `kind create` fails half-way
        run([self.kind, "create", "cluster", "--name", self.name, "--image", self.node_image,
             "--kubeconfig", self.kubeconfig, "--wait", "180s"], timeout=600)

    def delete(self) -> None:
        try:
            if self._created:
                run([self.kind, "delete", "cluster", "--name", self.name, "--kubeconfig", self.kubeconfig],
                    timeout=300, check=False)
                self._created = False
        finally:
            self._tmp.cleanup()

    # -- tools bound to this cluster ----------------------------------------------------------------
    def kubectl(self, *args: str | os.PathLike[str], timeout: float = 300,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([kubectl(), "--kubeconfig", self.kubeconfig, *args], timeout=timeout, check=check)

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def helm(self, *args: str | os.PathLike[str], timeout: float = 900,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        # A private Helm home: repository indexes and OCI credentials of the user are neither read nor touched.
        env = {
            "HELM_CACHE_HOME": str(self.workdir / "helm" / "cache"),
            "HELM_CONFIG_HOME": str(self.workdir / "helm" / "config"),
            "HELM_DATA_HOME": str(self.workdir / "helm" / "data"),
        }
        return run([helm(), "--kubeconfig", self.kubeconfig, *args], timeout=timeout, env=env, check=check)

    def helm_json(self, *args: str) -> Any:
        return json.loads(self.helm(*args, "-o", "json").stdout)

    def _helm_install(self, release: str, chart: str | os.PathLike[str], namespace: str, *,
                      version: str | None = None, repo: str | None = None,
                      values: Mapping[str, Any] | None = None) -> None:
        argv: list[str | os.PathLike[str]] = [
            "upgrade", "--install", release, chart, "--namespace", namespace, "--create-namespace",
            "--wait", "--timeout", _HELM_WAIT,
        ]
        if version:
            argv += ["--version", version]
        if repo:
            argv += ["--repo", repo]
        if values:
            values_file = self.workdir / f"values-{release}.json"
            values_file.write_text(json.dumps(values))  # JSON is YAML
            argv += ["--values", values_file]
        self.helm(*argv)

    # -- platform -----------------------------------------------------------------------------------
    def install_kuberay(self, namespace: str = "kuberay-system") -> None:
        """KubeRay operator (RayCluster/RayJob/RayService CRDs come with the chart)."""
        self._helm_install("kuberay-operator", "kuberay-operator", namespace,
                           version=KUBERAY_CHART_VERSION, repo=KUBERAY_CHART_REPO)

    def install_cert_manager(self, namespace: str = "cert-manager") -> None:
        self._helm_install("cert-manager", "cert-manager", namespace, version=CERT_MANAGER_CHART_VERSION,
                           repo=CERT_MANAGER_CHART_REPO, values={"crds": {"enabled": True}})

    def install_kserve(self, namespace: str = "kserve") -> None:
        """cert-manager, then KServe's CRDs and controller in RawDeployment mode."""
        self.install_cert_manager()
        self._helm_install("kserve-crd", KSERVE_CRD_CHART, namespace, version=KSERVE_CHART_VERSION)
        self._helm_install(
            "kserve", KSERVE_CHART, namespace, version=KSERVE_CHART_VERSION,
            values={"kserve": {"controller": {
                "deploymentMode": "RawDeployment",
                "gateway": {"disableIngressCreation": True},
            }}},
        )

    # -- earthops -----------------------------------------------------------------------------------
    def build_and_load_operator_image(self, tag: str) -> str:
        """``docker build -f operator/Dockerfile .`` and ``kind load docker-image``; returns the image ref."""
        image = f"{OPERATOR_IMAGE_REPOSITORY}:{tag}"
        run(["docker", "build", "-f", OPERATOR_DOCKERFILE, "-t", image, "."], cwd=REPO_ROOT, timeout=1800,
            env={"DOCKER_BUILDKIT": "1"})  # the Dockerfile uses RUN --mount
        run([self.kind, "load", "docker-image", image, "--name", self.name], timeout=600)
        return image

    def install_chart(self, namespace: str, values: Mapping[str, Any], release: str = "earthops") -> None:
        self._helm_install(release, CHART_DIR, namespace, values=values)

    def uninstall_chart(self, namespace: str, release: str = "earthops") -> None:
        self.helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout", _HELM_WAIT)

    def apply_examples(self) -> list[dict[str, Any]]:
        """``kubectl apply`` every example manifest, scenario by scenario; returns the applied objects."""
        for scenario in sorted(p for p in EXAMPLES_DIR.iterdir() if p.is_dir()):
            self.kubectl("apply", "-f", scenario)
        return example_resources()

    # -- waiting and diagnostics -----------------------------------------------------------------------
    def wait_deployments_available(self, namespace: str, selector: str | None = None,
                                   timeout: float = 300) -> None:
        """Wait for the Deployments in ``namespace`` (all, or those matching ``selector``) to be Available."""
        which = ["-l", selector] if selector else ["--all"]
        result = self.kubectl("wait", "--for=condition=Available", "deployment", *which, "-n", namespace,
                              f"--timeout={int(timeout)}s", timeout=timeout + 30, check=False)
        if result.returncode != 0:
            raise CommandFailed(f"deployments in {namespace} ({selector or 'all'}) not Available after "
                                f"{timeout:.0f} s:\n{result.stderr}\n{self.diagnose(namespace)}")

    def poll(self, what: str, fetch: Any, done: Any, timeout: float = 180, interval: float = 2.0) -> Any:
        """Call ``fetch()`` until ``done(value)``; return the value, or raise TimeoutError with the last one."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = fetch()
                if done(last):
                    return last
            except CommandFailed as exc:
                last = exc
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not reached after {timeout:.0f} s; last seen: {last!r}")
            time.sleep(interval)

    def diagnose(self, namespace: str) -> str:
        """Pods, recent events and operator logs in ``namespace``, for failure messages."""
        parts = []
        for args in (["get", "pods", "-A", "-o", "wide"],
                     ["get", "events", "-n", namespace, "--sort-by=.lastTimestamp"],
                     ["logs", "-n", namespace, "-l", "app.kubernetes.io/component=operator", "--tail=80",
                      "--all-containers"]):
            result = self.kubectl(*args, check=False, timeout=60)
            parts.append(f"$ kubectl {' '.join(args)}\n{_tail(result.stdout + result.stderr, 80)}")
        return "\n\n".join(parts)
