"""A real Kubernetes API server for tests: etcd + kube-apiserver (+ kube-controller-manager) on loopback.

This is the envtest pattern: no kubelet, no scheduler, no pods — just the real API machinery, so CRD
schemas, CEL rules, server-side apply, the status subresource, RBAC, owner references and (with the
controller manager) garbage collection behave exactly as on a cluster.

Binaries come from ``KUBEBUILDER_ASSETS`` if it holds ``kube-apiserver`` and ``etcd``, else from the
cache that ``tests/envtest/build.sh`` fills (built from source with Go, versions pinned in
``tests/envtest/versions.env``), building them on first use.

    with KubeApiServer(crds=third_party_crds()) as kube:
        api = kubernetes.client.CoreV1Api(kube.api_client())
        kube.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}}])

Every process goes through :func:`tests.infra.proc.spawn`, so it dies with the test process even on
SIGKILL; the temporary directory such a death leaves behind is swept by the next start.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import yaml

from tests.infra.proc import free_port, log_tail, spawn, stop, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
ENVTEST_DIR = REPO_ROOT / "tests" / "envtest"
VERSIONS_FILE = ENVTEST_DIR / "versions.env"
BUILD_SCRIPT = ENVTEST_DIR / "build.sh"

REQUIRED_BINARIES = ("kube-apiserver", "etcd")
ALL_BINARIES = (*REQUIRED_BINARIES, "kube-controller-manager", "kubectl")

#: Prefix of every server's temporary directory; the owning test process id follows it.
WORKDIR_PREFIX = "earthops-kube-"

#: A directory holding this file was kept on purpose (EARTHOPS_KEEP_KUBE_DIR=1): never swept.
KEEP_MARKER = ".keep"

ADMIN_USER = "admin"
DEFAULT_FIELD_MANAGER = "earthops-tests"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"


class EnvtestUnavailable(RuntimeError):
    """The binaries or CRDs could not be found or built (the message says what failed and why)."""


class CRDRejected(ValueError):
    """The API server refused a CustomResourceDefinition (invalid schema, CEL rule that does not compile...)."""


# --------------------------------------------------------------------------------------------------
# versions, cache and binaries
# --------------------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    """The pinned versions from ``tests/envtest/versions.env`` (KUBERNETES_VERSION, ETCD_VERSION, ...)."""
    pins: dict[str, str] = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pins[key.strip()] = value.strip()
    return pins


def cache_dir() -> Path:
    """``${EARTHOPS_CACHE:-${XDG_CACHE_HOME:-~/.cache}/earthops}/envtest`` — the same rule as build.sh."""
    root = os.environ.get("EARTHOPS_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = os.path.join(xdg, "earthops")
    return Path(root) / "envtest"


def _cached_binaries_dir() -> Path:
    return cache_dir() / versions()["KUBERNETES_VERSION"]


def _cached_binaries_complete(path: Path) -> bool:
    pins = versions()
    stamp = f"kubernetes={pins['KUBERNETES_VERSION']} etcd={pins['ETCD_VERSION']}"
    try:
        if (path / ".stamp").read_text().strip() != stamp:
            return False
    except FileNotFoundError:
        return False
    return all(os.access(path / b, os.X_OK) for b in ALL_BINARIES)


def _has_required(path: Path) -> bool:
    return all(os.access(path / b, os.X_OK) for b in REQUIRED_BINARIES)


def _run_build(what: str) -> None:
    """Run ``build.sh what`` under a lock, so parallel test processes build once and wait for it."""
    if os.environ.get("EARTHOPS_ENVTEST_BUILD", "1") == "0":
        raise EnvtestUnavailable(
            f"the envtest {what} are not in {cache_dir()} and EARTHOPS_ENVTEST_BUILD=0 forbids building "
            f"them (run `make envtest` or tests/envtest/build.sh, or set KUBEBUILDER_ASSETS)"
        )
    if shutil.which("go") is None:
        raise EnvtestUnavailable(
            f"no envtest {what} in {cache_dir()} and no `go` on PATH to build them with "
            f"(install Go, or set KUBEBUILDER_ASSETS to a directory with kube-apiserver and etcd)"
        )
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    log = cache / "build.log"
    with open(cache / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds the cache full
        with open(log, "ab") as out:
            result = subprocess.run(
                ["bash", str(BUILD_SCRIPT), what], stdout=out, stderr=subprocess.STDOUT, check=False
            )
    if result.returncode != 0:
        raise EnvtestUnavailable(
            f"tests/envtest/build.sh {what} failed with exit code {result.returncode}; "
            f"log {log}:\n{log_tail(log, 30)}"
        )


def ensure_binaries() -> Path:
    """The directory holding ``kube-apiserver`` and ``etcd`` (and, when built by us, the others).

    Order: ``KUBEBUILDER_ASSETS`` if it has both required binaries; else the version cache; else run
    ``tests/envtest/build.sh`` (slow the first time: ~minutes on 2 cores). Raises
    :class:`EnvtestUnavailable` naming what failed.
    """
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and _has_required(Path(assets)):
        return Path(assets)
    cached = _cached_binaries_dir()
    if not _cached_binaries_complete(cached):
        _run_build("binaries")
    if not _cached_binaries_complete(cached):
        raise EnvtestUnavailable(f"tests/envtest/build.sh ran but {cached} is still incomplete")
    return cached


def third_party_crds() -> list[Path]:
    """The pinned KubeRay (RayJob, RayCluster) and KServe (InferenceService) CRD files, fetched if needed."""
    pins = versions()
    dirs = [
        cache_dir() / "crds" / f"kuberay-{pins['KUBERAY_VERSION']}",
        cache_dir() / "crds" / f"kserve-{pins['KSERVE_VERSION']}",
    ]
    if not all((d / ".complete").exists() for d in dirs):
        _run_build("crds")
    return sorted(p for d in dirs for p in d.glob("*.yaml"))


def project_crds() -> list[Path]:
    """earthops' own generated CRDs (``crds/*.yaml`` at the repository root), if that folder exists."""
    return sorted((REPO_ROOT / "crds").glob("*.yaml"))


# --------------------------------------------------------------------------------------------------
# REST helpers shared with tests/infra/peers.py
# --------------------------------------------------------------------------------------------------


def rest(
    api_client: Any,
    method: str,
    path: str,
    *,
    body: Any = None,
    query: Mapping[str, Any] | None = None,
    content_type: str | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """One raw API request (``path`` like ``/apis/ray.io/v1/namespaces/x/rayjobs``); JSON reply as a dict.

    The typed client has no call for server-side apply of arbitrary kinds, so apply and discovery go
    through here. Non-2xx replies raise ``kubernetes.client.ApiException`` (and its subclasses).
    """
    from kubernetes.client import ApiException

    headers = {"Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    method, url, headers, body, _ = api_client.param_serialize(
        method=method,
        resource_path=path,
        query_params=list((query or {}).items()),
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api_client.call_api(method, url, header_params=headers, body=body, _request_timeout=timeout)
    raw = response.read()
    text = raw.decode("utf-8", errors="replace") if raw else ""
    if not 200 <= response.status <= 299:
        raise ApiException.from_response(http_resp=response, body=text, data=None)
    return json.loads(text) if text else {}


# -- RBAC takes effect a moment after it is stored -----------------------------------------------------
#
# The API server's RBAC authorizer reads Roles, ClusterRoles and their bindings from informer caches: a
# binding that was just created (or a Role just changed) is seen a moment later — milliseconds on a quiet
# machine, seconds under a loaded test suite. A test that needs a grant waits for it, never assumes it.

AUTHZ = "/apis/authorization.k8s.io/v1"

#: (verb, API group, resource[/subresource], namespace; "" = every namespace or cluster-scoped)
Grant = tuple[str, str, str, str]


def can(client: Any, verb: str, group: str, resource: str, namespace: str = "") -> bool:
    """SelfSubjectAccessReview; ``namespace=""``: in every namespace (or a cluster-scoped resource)."""
    resource, _, subresource = resource.partition("/")
    attributes = {"verb": verb, "group": group, "resource": resource, "subresource": subresource,
                  "namespace": namespace}
    reply = rest(client, "POST", f"{AUTHZ}/selfsubjectaccessreviews",
                 body={"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                       "spec": {"resourceAttributes": attributes}})
    return bool(reply["status"]["allowed"])


def wait_until_allowed(client: Any, grants: Sequence[Grant], *, what: str, timeout: float = 60.0) -> None:
    """Wait until the server's authorizer allows every grant to ``client``'s user (see above)."""
    def allowed() -> bool:
        missing = [g for g in grants if not can(client, *g)]
        if missing:
            raise PermissionError(f"not yet allowed: {missing}")
        return True

    wait_for(allowed, timeout=timeout, what=what)


def permitted(call: Any) -> bool:
    """Run ``call()``: True when it succeeds, False when the server refuses it (403 Forbidden); any
    other error is raised (to poll a real call with :func:`~tests.infra.proc.wait_for` until a new
    binding lets it through)."""
    from kubernetes.client import ApiException

    try:
        call()
    except ApiException as e:
        if e.status == 403:
            return False
        raise
    return True


def group_version_path(api_version: str) -> str:
    """``v1`` -> ``/api/v1``; ``ray.io/v1`` -> ``/apis/ray.io/v1``."""
    return f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"


# libyaml's loader parses the MB-sized CRDs ~10x faster than the pure-Python one (0.3 s vs 4 s).
_YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_yaml_file(path: Path) -> list[dict[str, Any]]:
    """Parse a (multi-document) YAML file. Files in our cache (the MB-sized third-party CRDs) are
    parsed once and kept as JSON beside them: JSON loads in ~20 ms, YAML takes 0.3-1.5 s each."""
    json_copy = path.with_name(path.name + ".json")
    in_cache = cache_dir() in path.resolve().parents
    if in_cache and json_copy.exists() and json_copy.stat().st_mtime >= path.stat().st_mtime:
        return list(json.loads(json_copy.read_text()))
    with open(path) as f:
        docs = [d for d in yaml.load_all(f, Loader=_YamlLoader) if d]
    if in_cache:
        tmp = json_copy.with_name(f"{json_copy.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(docs))
        os.replace(tmp, json_copy)  # atomic: a concurrent reader sees the old state or the whole file
    return docs


def load_manifests(docs_or_paths: Any) -> list[dict[str, Any]]:
    """Flatten a manifest dict, a YAML file path (multi-document allowed), or an iterable of those."""
    if isinstance(docs_or_paths, Mapping):
        return [dict(docs_or_paths)]
    if isinstance(docs_or_paths, (str, os.PathLike)):
        return _load_yaml_file(Path(docs_or_paths))
    out: list[dict[str, Any]] = []
    for item in docs_or_paths:
        out.extend(load_manifests(item))
    return out


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def sweep_stale_workdirs(tmp_root: Path | None = None) -> list[Path]:
    """Remove server directories whose owning test process is gone (it was SIGKILLed: no cleanup ran).

    The processes themselves already died with their parent (PR_SET_PDEATHSIG); only files remain.
    """
    root = Path(tmp_root or tempfile.gettempdir())
    removed = []
    for path in root.glob(f"{WORKDIR_PREFIX}*"):
        m = re.match(rf"{re.escape(WORKDIR_PREFIX)}(\d+)-", path.name)
        if m and not _pid_alive(int(m.group(1))) and not (path / KEEP_MARKER).exists():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


# --------------------------------------------------------------------------------------------------
# certificates
# --------------------------------------------------------------------------------------------------


def _write_pki(certs: Path) -> None:
    """A throwaway CA, a serving certificate for 127.0.0.1/localhost, and a service-account key.

    Our own CA (rather than kube-apiserver's --cert-dir self-signed pair) gives clients one stable
    trust anchor with exact SANs. EC P-256 keys take milliseconds to generate (RSA takes ~100 ms).
    """
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    now = _now()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "earthops-test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    serving_key = ec.generate_private_key(ec.SECP256R1())
    serving = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(serving_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("10.0.0.1")),  # the `kubernetes` Service IP
                    x509.DNSName("localhost"),
                    x509.DNSName("kubernetes"),
                    x509.DNSName("kubernetes.default"),
                    x509.DNSName("kubernetes.default.svc"),
                    x509.DNSName("kubernetes.default.svc.cluster.local"),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    certs.mkdir(parents=True, exist_ok=True)
    (certs / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (certs / "apiserver.crt").write_bytes(serving.public_bytes(serialization.Encoding.PEM))
    (certs / "apiserver.key").write_bytes(key_pem(serving_key))
    # kube-apiserver signs ServiceAccount tokens with sa.key and verifies them with sa.pub.
    sa_key = ec.generate_private_key(ec.SECP256R1())
    (certs / "sa.key").write_bytes(key_pem(sa_key))
    (certs / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    for key in ("apiserver.key", "sa.key"):
        (certs / key).chmod(0o600)


# --------------------------------------------------------------------------------------------------
# the server
# --------------------------------------------------------------------------------------------------


class KubeApiServer:
    """etcd + kube-apiserver (+ optionally kube-controller-manager) on 127.0.0.1, in a temp directory.

    Authentication is by bearer token: :attr:`token` is an admin in ``system:masters``; ``users``
    adds static users (name -> groups) whose tokens are in :attr:`tokens`, and
    :meth:`service_account_token` mints tokens for ServiceAccounts at any time. Authorization is
    ``Node,RBAC``, so a token without RoleBindings is refused.

    ``crds`` are installed (and Established) before :meth:`start` returns and before the controller
    manager starts, so its garbage collector watches their kinds from the beginning (kinds added later
    are picked up at its next discovery resync, ~30 s).
    """

    def __init__(
        self,
        *,
        bin_dir: Path | None = None,
        crds: Sequence[Path] = (),
        users: Mapping[str, Sequence[str]] | None = None,
        controller_manager: bool = True,
        start_timeout: float = 90.0,
        keep_workdir: bool | None = None,
        extra_apiserver_args: Sequence[str] = (),
    ) -> None:
        self.bin_dir = Path(bin_dir) if bin_dir else None
        self.crds = list(crds)
        self.users = {name: list(groups) for name, groups in (users or {}).items()}
        self.controller_manager = controller_manager
        self.start_timeout = start_timeout
        self.keep_workdir = (
            keep_workdir if keep_workdir is not None else os.environ.get("EARTHOPS_KEEP_KUBE_DIR") == "1"
        )
        self.extra_apiserver_args = list(extra_apiserver_args)

        self.workdir: Path | None = None
        self.url = ""
        self.token = ""
        self.tokens: dict[str, str] = {}
        self.etcd_url = ""
        self.start_seconds: float | None = None  #: wall time from start() until /readyz (before CRDs)
        self.timings: dict[str, float] = {}  #: seconds per start phase: apiserver, crds, controller-manager
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._resources: dict[str, dict[str, dict[str, Any]]] = {}  # apiVersion -> kind -> resource
        self._admin_client: Any = None

    # -- paths --------------------------------------------------------------------------------------

    def _path(self, *parts: str) -> Path:
        assert self.workdir is not None, "the server is not started"
        return self.workdir.joinpath(*parts)

    @property
    def kubeconfig(self) -> Path:
        """A kubeconfig for the admin user (current context ``earthops-test``)."""
        return self._path("kubeconfig")

    @property
    def ca_file(self) -> Path:
        return self._path("certs", "ca.crt")

    def log_path(self, component: str) -> Path:
        return self._path("logs", f"{component}.log")

    # -- lifecycle ----------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Self:
        """Start everything and wait until /readyz is ok and the CRDs are Established; stops on failure."""
        bin_dir = self.bin_dir = self.bin_dir or ensure_binaries()
        sweep_stale_workdirs()
        # The owner pid in the name lets a later run recognise (and sweep) a directory left behind
        # by a SIGKILLed test process; the random suffix makes it unique for /proc matching.
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-"))
        if self.keep_workdir:
            (self.workdir / KEEP_MARKER).touch()
        try:
            began = time.monotonic()
            self._write_config()
            for attempt in range(3):  # a free port can be taken between free_port() and bind()
                try:
                    self._start_etcd_and_apiserver(bin_dir)
                    break
                except RuntimeError as e:
                    if attempt == 2 or "address already in use" not in str(e):
                        raise
                    self._stop_processes()
            self.timings["apiserver"] = self.start_seconds = time.monotonic() - began
            if self.crds:
                t = time.monotonic()
                self.install_crds(self.crds)
                self.timings["crds"] = time.monotonic() - t
            if self.controller_manager:
                t = time.monotonic()
                self._start_controller_manager(bin_dir)
                self.timings["controller-manager"] = time.monotonic() - t
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop all processes (controller manager first) and remove the temporary directory."""
        if self._admin_client is not None:
            with contextlib.suppress(Exception):
                self._admin_client.close()
            self._admin_client = None
        self._stop_processes()
        if self.workdir is not None and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _stop_processes(self) -> None:
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            proc = self._procs.pop(name, None)
            if proc is not None:
                stop(proc)

    def _write_config(self) -> None:
        certs = self._path("certs")
        _write_pki(certs)
        self.token = secrets.token_urlsafe(32)
        self.tokens = {ADMIN_USER: self.token}
        # Static token file, read once at start: token,user,uid,"group1,group2".
        lines = [f'{self.token},{ADMIN_USER},{ADMIN_USER},"system:masters"']
        for user, groups in self.users.items():
            if user == ADMIN_USER or any(c in user for c in ',"\n'):
                raise ValueError(f"invalid test user name {user!r}")
            self.tokens[user] = secrets.token_urlsafe(32)
            lines.append(f'{self.tokens[user]},{user},{user},"{",".join(groups)}"')
        token_file = self._path("tokens.csv")
        token_file.write_text("\n".join(lines) + "\n")
        token_file.chmod(0o600)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        proc = spawn(argv, log_path=self.log_path(name), cwd=self.workdir)
        self._procs[name] = proc
        return proc

    def _start_etcd_and_apiserver(self, bin_dir: Path) -> None:
        etcd_port, api_port = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{etcd_port}"
        self.url = f"https://127.0.0.1:{api_port}"
        data = self._path("etcd-data")
        shutil.rmtree(data, ignore_errors=True)
        self._spawn(
            "etcd",
            [
                str(bin_dir / "etcd"),
                f"--data-dir={data}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                # Port 0: the peer port is never used by a one-member cluster, so let the kernel pick.
                "--listen-peer-urls=http://127.0.0.1:0",
                "--unsafe-no-fsync",  # throwaway data: no fsync makes writes (CRD installs) much faster
                "--log-level=warn",
            ],
        )
        certs = self._path("certs")
        self._spawn(
            "kube-apiserver",
            [
                str(bin_dir / "kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",  # it retries until etcd listens: no need to wait
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--tls-cert-file={certs / 'apiserver.crt'}",
                f"--tls-private-key-file={certs / 'apiserver.key'}",
                f"--client-ca-file={certs / 'ca.crt'}",
                f"--token-auth-file={self._path('tokens.csv')}",
                "--authorization-mode=Node,RBAC",
                "--anonymous-auth=false",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={certs / 'sa.pub'}",
                f"--service-account-signing-key-file={certs / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--allow-privileged=true",
                # ServiceAccount admission rejects pods in namespaces whose `default` ServiceAccount
                # does not exist yet; nothing here runs pods, and envtest disables it too.
                "--disable-admission-plugins=ServiceAccount",
                "--endpoint-reconciler-type=none",  # no `kubernetes` Endpoints churn: one fake master
                "--profiling=false",
                "--v=1",
                *self.extra_apiserver_args,
            ],
        )
        self._write_kubeconfig(self.kubeconfig, self.token, ADMIN_USER)

        # Not proc.wait_for: it would only notice kube-apiserver exiting, and etcd dying first would
        # look like a slow start until the timeout.
        deadline = time.monotonic() + self.start_timeout
        while True:
            for name in ("etcd", "kube-apiserver"):
                code = self._procs[name].poll()
                if code is not None:
                    raise RuntimeError(
                        f"{name} exited with code {code} before kube-apiserver was ready:\n"
                        f"{log_tail(self.log_path(name))}"
                    )
            with contextlib.suppress(Exception):
                if self.raw_get("/readyz") == "ok":
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"kube-apiserver was not ready after {self.start_timeout:.0f} s:\n"
                    f"{log_tail(self.log_path('kube-apiserver'))}"
                )
            time.sleep(0.1)

    def _start_controller_manager(self, bin_dir: Path) -> None:
        binary = bin_dir / "kube-controller-manager"
        if not os.access(binary, os.X_OK):
            raise EnvtestUnavailable(
                f"{binary} is missing (KUBEBUILDER_ASSETS without it? pass controller_manager=False)"
            )
        proc = self._spawn(
            "kube-controller-manager",
            [
                str(binary),
                f"--kubeconfig={self.kubeconfig}",
                # Only what API-level tests need: owner-reference garbage collection, namespace
                # deletion (empties and removes the namespace), and the `default` ServiceAccounts.
                "--controllers=garbagecollector,namespace,serviceaccount",
                "--leader-elect=false",
                "--use-service-account-credentials=false",
                "--secure-port=0",  # no HTTPS endpoint of its own; nothing scrapes it
                "--concurrent-gc-syncs=5",
                "--v=1",
            ],
        )
        # Started once its ServiceAccount controller has made `default` in the default namespace.
        # The garbage collector may still be syncing its informers then; it misses nothing meanwhile
        # (its dependency graph is built from the informers' full lists, not only from events).
        from kubernetes.client import CoreV1Api

        core = CoreV1Api(self.admin)
        wait_for(
            lambda: core.read_namespaced_service_account("default", "default") is not None,
            timeout=self.start_timeout,
            what="kube-controller-manager",
            proc=proc,
            log_path=self.log_path("kube-controller-manager"),
        )

    # -- clients ------------------------------------------------------------------------------------

    def _write_kubeconfig(self, path: Path, token: str, user: str) -> None:
        ca = base64.b64encode(self.ca_file.read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "earthops-test", "cluster": {"server": self.url, "certificate-authority-data": ca}}
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "earthops-test", "context": {"cluster": "earthops-test", "user": user}}],
            "current-context": "earthops-test",
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)

    def write_kubeconfig(self, path: Path, *, user: str = ADMIN_USER, token: str | None = None) -> Path:
        """A kubeconfig for ``user`` (one of :attr:`tokens`) or for an explicit ``token``."""
        self._write_kubeconfig(Path(path), token or self.tokens[user], user if token is None else "token")
        return Path(path)

    def api_client(self, *, user: str = ADMIN_USER, token: str | None = None) -> Any:
        """A new ``kubernetes.client.ApiClient`` for ``user`` (default: admin) or an explicit ``token``."""
        from kubernetes.client import ApiClient, Configuration

        config = Configuration()
        config.host = self.url
        config.ssl_ca_cert = str(self.ca_file)
        config.api_key = {"BearerToken": token or self.tokens[user]}
        config.api_key_prefix = {"BearerToken": "Bearer"}
        return ApiClient(config)

    @property
    def admin(self) -> Any:
        """One shared admin ApiClient (closed by :meth:`stop`)."""
        if self._admin_client is None:
            self._admin_client = self.api_client()
        return self._admin_client

    def dynamic(self, api_client: Any = None) -> Any:
        """A ``kubernetes.dynamic.DynamicClient`` (its discovery cache lives in the server's temp dir)."""
        from kubernetes.dynamic import DynamicClient

        return DynamicClient(api_client or self.api_client(), cache_file=str(self._path("discovery.json")))

    def raw_get(self, path: str, *, token: str | None = None) -> str:
        """GET ``path`` (e.g. ``/readyz``) and return the body text; raises on non-2xx."""
        import ssl
        import urllib.request

        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {token or self.token}"}
        )
        context = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(request, context=context, timeout=5) as response:
            return response.read().decode()

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the kubectl built beside kube-apiserver against this server (admin kubeconfig)."""
        binary = (self.bin_dir or ensure_binaries()) / "kubectl"
        return subprocess.run(
            [str(binary), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=check,
            input=input,
            timeout=120,
        )

    # -- users --------------------------------------------------------------------------------------

    def service_account_token(
        self, namespace: str, name: str, *, expiration_seconds: int = 3600, create: bool = True
    ) -> str:
        """A bearer token for ServiceAccount ``namespace/name`` (TokenRequest API), creating it if asked.

        Its user is ``system:serviceaccount:<namespace>:<name>``: bind Roles to it to test RBAC.
        """
        if create:
            self.apply(
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": name, "namespace": namespace},
                }
            )
        reply = rest(
            self.admin,
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            body={
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": expiration_seconds},
            },
        )
        return str(reply["status"]["token"])

    # -- resources ----------------------------------------------------------------------------------

    def resource(self, api_version: str, kind: str) -> dict[str, Any]:
        """The discovery entry (``name`` = plural, ``namespaced``, ``verbs``...) of ``kind``.

        Discovery is cached per group-version and refreshed on a miss (a CRD just installed).
        """
        from kubernetes.client import ApiException

        for refresh in (False, True):
            if refresh or api_version not in self._resources:
                try:
                    listing = rest(self.admin, "GET", group_version_path(api_version))
                except ApiException as e:
                    if e.status not in (404, 503):  # 404/503: the group-version is not served (yet)
                        raise
                    listing = {"resources": []}
                self._resources[api_version] = {
                    r["kind"]: r for r in listing.get("resources", []) if "/" not in r["name"]
                }
            found = self._resources[api_version].get(kind)
            if found:
                return found
        raise LookupError(f"the API server does not serve kind {kind} in {api_version}")

    def object_path(self, api_version: str, kind: str, name: str = "", namespace: str | None = None) -> str:
        """The REST path of a collection (no ``name``) or of one object."""
        res = self.resource(api_version, kind)
        path = group_version_path(api_version)
        if res["namespaced"]:
            path += f"/namespaces/{namespace or 'default'}"
        path += f"/{res['name']}"
        return f"{path}/{name}" if name else path

    def apply(
        self,
        docs_or_paths: Any,
        *,
        server_side: bool = True,
        field_manager: str = DEFAULT_FIELD_MANAGER,
        namespace: str | None = None,
        force: bool = True,
        api_client: Any = None,
    ) -> list[dict[str, Any]]:
        """Apply manifests (dicts, YAML paths, or iterables of them); returns the objects as stored.

        Server-side apply by default (CRDs of MBs exceed the client-side last-applied annotation
        limit). ``server_side=False`` creates, or replaces an existing object. ``namespace`` fills
        in namespaced objects that have none. ``api_client`` applies as another user.
        """
        client = api_client or self.admin
        applied = []
        for doc in load_manifests(docs_or_paths):
            # Our own copy of the top level and metadata: filling in the namespace must not change
            # the caller's manifest.
            doc = {**doc, "metadata": dict(doc.get("metadata") or {})}
            meta = doc["metadata"]
            res = self.resource(doc["apiVersion"], doc["kind"])
            if res["namespaced"]:
                meta.setdefault("namespace", namespace or "default")
            else:
                meta.pop("namespace", None)
            path = self.object_path(doc["apiVersion"], doc["kind"], meta["name"], meta.get("namespace"))
            if server_side:
                applied.append(
                    rest(
                        client,
                        "PATCH",
                        path,
                        body=doc,
                        query={"fieldManager": field_manager, "force": "true" if force else "false"},
                        content_type="application/apply-patch+yaml",
                    )
                )
            else:
                applied.append(self._create_or_replace(client, path, doc, field_manager))
        return applied

    @staticmethod
    def _create_or_replace(client: Any, path: str, doc: dict[str, Any], field_manager: str) -> dict[str, Any]:
        from kubernetes.client import ApiException

        collection = path.rsplit("/", 1)[0]
        try:
            return rest(client, "POST", collection, body=doc, query={"fieldManager": field_manager})
        except ApiException as e:
            if e.status != 409:
                raise
        current = rest(client, "GET", path)
        doc = {
            **doc,
            "metadata": {**doc["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]},
        }
        return rest(client, "PUT", path, body=doc, query={"fieldManager": field_manager})

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return rest(self.admin, "GET", self.object_path(api_version, kind, name, namespace))

    def delete(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None = None,
        *,
        propagation: str = "Background",
    ) -> dict[str, Any]:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        return rest(self.admin, "DELETE", self.object_path(api_version, kind, name, namespace), body=body)

    def install_crds(self, paths: Any, *, timeout: float = 60.0) -> list[str]:
        """Server-side apply CRDs, then wait until each is Established and its kind is discoverable."""
        docs = []
        for doc in load_manifests(paths):
            if doc.get("kind") != "CustomResourceDefinition":
                continue
            # Drop server-populated fields generators leave in (`creationTimestamp: null`, status).
            doc = {k: v for k, v in doc.items() if k != "status"}
            doc["metadata"] = {k: v for k, v in doc["metadata"].items() if k != "creationTimestamp"}
            docs.append(doc)
        from kubernetes.client import ApiException

        for doc in docs:
            try:
                self.apply(doc, field_manager="earthops-tests-crds")
            except ApiException as e:  # say which CRD and why, not a page of HTTP headers
                try:
                    reason = json.loads(e.body or "{}").get("message") or e.body
                except ValueError:
                    reason = e.body
                raise CRDRejected(
                    f"the API server rejected CRD {doc['metadata'].get('name')}: {reason}"
                ) from None
        names = [d["metadata"]["name"] for d in docs]
        crd_path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"

        def established(doc: dict[str, Any]) -> bool:
            crd = rest(self.admin, "GET", f"{crd_path}/{doc['metadata']['name']}")
            conditions = {c["type"]: c["status"] for c in (crd.get("status") or {}).get("conditions") or []}
            if conditions.get("Established") != "True":
                return False
            group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
            served = [v["name"] for v in doc["spec"]["versions"] if v.get("served", True)]
            for version in served:  # discovery lags Established by a moment
                self.resource(f"{group}/{version}", kind)
            return True

        for doc in docs:
            wait_for(lambda doc=doc: established(doc), timeout=timeout, what=f"CRD {doc['metadata']['name']}")
        return names

    def create_namespace(self, name: str | None = None, *, labels: Mapping[str, str] | None = None) -> str:
        name = name or f"test-{secrets.token_hex(4)}"
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": dict(labels or {})},
            }
        )
        return name

    def delete_namespace(self, name: str, *, wait: bool = False, timeout: float = 60.0) -> None:
        """Delete a namespace; with ``wait`` (needs the controller manager) until it is gone."""
        from kubernetes.client import ApiException

        try:
            self.delete("v1", "Namespace", name)
        except ApiException as e:
            if e.status != 404:
                raise
            return
        if wait:

            def gone() -> bool:
                try:
                    self.get("v1", "Namespace", name)
                except ApiException as e:
                    return e.status == 404
                return False

            wait_for(gone, timeout=timeout, what=f"deletion of namespace {name}")

    def __repr__(self) -> str:
        return f"KubeApiServer(url={self.url!r}, workdir={str(self.workdir)!r})"
