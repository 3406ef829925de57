"""The Helm chart charts/earthops: lint, render with several value sets, and check the rendered objects.

Offline: `helm lint` and `helm template` need no cluster. helm comes from tests.infra.tools (cached
Helm v4; `HELM` overrides). A server-side dry run of the output against a real API server lives with
the envtest suite.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from earthops.control.handlers import apicalls
from tests.infra import proc, tools

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "earthops"
RELEASE = "eo"
NAMESPACE = "earthops-system"
FULLNAME = "eo-earthops"
CLUSTER = "<cluster>"  # scope key of cluster-wide grants

EARTHOPS_KINDS = ("eodatasets", "tuningexperiments", "ablationstudies", "modeldeployments")

# Value sets rendered by most tests: name -> values.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "all-namespaces": {"watch": {"allNamespaces": True}},
    "namespace-list": {"watch": {"namespaces": ["team-a", "team-b"]}},
    "peering-2-replicas": {
        "replicas": 2,
        "peering": {"enabled": True},
        "watch": {"namespaces": ["team-a", "team-b"]},
    },
    "peering-all-namespaces": {
        "replicas": 2,
        "peering": {"enabled": True, "name": "eo-peers"},
        "watch": {"allNamespaces": True},
    },
    "store-secret": {"store": {"uri": "s3://eo-bucket/prod", "credentialsSecret": "eo-s3"}},
    "service-monitor": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}}},
    "metrics-off": {"metrics": {"enabled": False}},
    "everything": {
        "image": {
            "repository": "registry.example.com:5000/eo/operator",
            "tag": "1.2.3",
            "pullPolicy": "Always",
        },
        "imagePullSecrets": [{"name": "regcred"}],
        "log": {"level": "debug", "format": "text"},
        "extraEnv": [{"name": "EXTRA", "value": "1"}],
        "podAnnotations": {"example.com/a": "b"},
        "podLabels": {"team": "eo", "app.kubernetes.io/name": "hijack"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "eo", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {}},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/eo"}},
        "health": {"port": 8081},
        "metrics": {"port": 9100},
    },
}


# ------------------------------------------------------------------------------------------- helpers


_ENV: dict[str, str] = {}


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        binary = tools.helm()
    except tools.ToolUnavailable as exc:
        proc.unavailable(str(exc))
        raise  # unreachable: unavailable() skips or fails
    # Keep helm away from the developer's helm config, repositories and kube context.
    home = tmp_path_factory.mktemp("helm-home")
    _ENV.clear()
    _ENV.update(os.environ)
    _ENV.update(
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_DATA_HOME=str(home / "data"),
        KUBECONFIG=str(home / "kubeconfig"),
    )
    return binary


def run_helm(
    helm: Path, *args: str, values: dict[str, Any] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [str(helm), *args]
    if values is None:
        return subprocess.run(cmd, check=False, capture_output=True, text=True, env=_ENV, timeout=120)
    # Values go through a file (`-f`), not --set: no escaping, and types stay what they are.
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="values-") as fh:
        yaml.safe_dump(values, fh)
        fh.flush()
        return subprocess.run(
            [*cmd, "-f", fh.name], check=False, capture_output=True, text=True, env=_ENV, timeout=120
        )


@functools.cache
def _render_cached(helm: Path, values_json: str, extra: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    result = run_helm(
        helm,
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        *extra,
        values=json.loads(values_json),
    )
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(helm: Path, values: dict[str, Any] | None = None, *extra: str) -> list[dict[str, Any]]:
    docs = _render_cached(helm, json.dumps(values or {}, sort_keys=True), extra)
    return copy.deepcopy(list(docs))


def of_kind(docs: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: Iterable[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["operator"]
    return pod["containers"][0]


def grants(docs: list[dict[str, Any]]) -> dict[str, dict[tuple[str, str], set[str]]]:
    """Effective permissions of the operator's ServiceAccount: scope (namespace or CLUSTER) -> rules."""
    sa = one(docs, "ServiceAccount")["metadata"]
    roles = {("ClusterRole", None, r["metadata"]["name"]): r for r in of_kind(docs, "ClusterRole")}
    roles |= {("Role", r["metadata"]["namespace"], r["metadata"]["name"]): r for r in of_kind(docs, "Role")}
    out: dict[str, dict[tuple[str, str], set[str]]] = {}
    for binding in of_kind(docs, "ClusterRoleBinding") + of_kind(docs, "RoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}
        ]
        ref = binding["roleRef"]
        assert ref["apiGroup"] == "rbac.authorization.k8s.io"
        ns = binding["metadata"].get("namespace")
        key = (ref["kind"], ns if ref["kind"] == "Role" else None, ref["name"])
        assert key in roles, f"{binding['kind']} {binding['metadata']['name']} refers to missing {key}"
        scope = CLUSTER if binding["kind"] == "ClusterRoleBinding" else ns
        for rule in roles[key]["rules"]:
            assert set(rule) == {"apiGroups", "resources", "verbs"}, f"unexpected rule fields {rule}"
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    out.setdefault(scope, {}).setdefault((group, resource), set()).update(rule["verbs"])
    return out


def args_of(docs: list[dict[str, Any]]) -> list[str]:
    c = container(docs)
    assert c["command"] == ["earthops", "operator"]
    return c["args"]


def values_yaml() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text())


# --------------------------------------------------------------------------------------- the chart


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert (chart["name"], chart["version"], chart["appVersion"]) == ("earthops", "0.1.0", "0.1.0")
    assert chart["kubeVersion"] == ">=1.30.0-0"
    assert schema()["$schema"] == "http://json-schema.org/draft-07/schema#"


def test_lint_strict(helm: Path) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_strict_with_values(helm: Path, name: str) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART), values=VALUE_SETS[name])
    assert result.returncode == 0, result.stdout + result.stderr


def test_older_kubernetes_is_refused(helm: Path) -> None:
    result = run_helm(helm, "template", RELEASE, str(CHART), "--kube-version", "1.29.9")
    assert result.returncode != 0
    assert "kubeVersion" in result.stderr or ">=1.30.0-0" in result.stderr, result.stderr


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_object_is_labelled_and_named(helm: Path, name: str) -> None:
    docs = render(helm, VALUE_SETS[name])
    for doc in docs:
        meta = doc["metadata"]
        labels = meta["labels"]
        assert labels["helm.sh/chart"] == "earthops-0.1.0", meta["name"]
        assert labels["app.kubernetes.io/name"] == "earthops"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "earthops"
        assert labels["app.kubernetes.io/version"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", meta["name"]), meta["name"]
        cluster_scoped = doc["kind"] in {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"}
        assert ("namespace" in meta) != cluster_scoped, f"{doc['kind']} {meta['name']}"


# ----------------------------------------------------------------------------------------- the pod


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_pod_is_locked_down(helm: Path, name: str) -> None:
    docs = render(helm, VALUE_SETS[name])
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    c = container(docs)
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "add" not in sc["capabilities"]
    # The one writable place is an emptyDir at /tmp.
    assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {}}]
    assert pod["serviceAccountName"] == FULLNAME
    assert pod["automountServiceAccountToken"] is True
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]


def test_platform_assigned_ids(helm: Path) -> None:
    docs = render(helm, {"runAsUser": None, "runAsGroup": None})
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_probes_call_healthz_on_the_liveness_port(helm: Path, name: str) -> None:
    values = VALUE_SETS[name]
    docs = render(helm, values)
    c = container(docs)
    port = values.get("health", {}).get("port", 8080)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["health"] == port
    assert f"--liveness-port={port}" in c["args"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
        assert c[probe]["periodSeconds"] >= 1 and c[probe]["failureThreshold"] >= 1


def test_default_args(helm: Path) -> None:
    assert args_of(render(helm)) == [
        f"--namespace={NAMESPACE}",
        "--standalone",
        "--liveness-port=8080",
        "--metrics-port=9090",
        "--runtime-image=ghcr.io/earthops/runtime:0.1.0",
        "--log-level=info",
        "--log-format=json",
    ]


@pytest.mark.parametrize(
    ("name", "present", "absent"),
    [
        ("all-namespaces", ["--all-namespaces", "--standalone"], ["--namespace=", "--peering="]),
        (
            "namespace-list",
            ["--namespace=team-a", "--namespace=team-b", "--standalone"],
            ["--all-namespaces", f"--namespace={NAMESPACE}"],
        ),
        (
            "peering-2-replicas",
            ["--namespace=team-a", "--namespace=team-b", f"--peering={FULLNAME}"],
            ["--standalone", "--all-namespaces"],
        ),
        (
            "peering-all-namespaces",
            ["--all-namespaces", "--peering=eo-peers"],
            ["--standalone", "--namespace="],
        ),
        ("store-secret", ["--store=s3://eo-bucket/prod"], []),
        ("metrics-off", ["--liveness-port=8080"], ["--metrics-port="]),
        (
            "everything",
            ["--log-level=debug", "--log-format=text", "--liveness-port=8081", "--metrics-port=9100"],
            ["--store="],
        ),
    ],
)
def test_args_follow_values(helm: Path, name: str, present: list[str], absent: list[str]) -> None:
    args = args_of(render(helm, VALUE_SETS[name]))
    for arg in present:
        assert arg in args, f"{arg} not in {args}"
    for prefix in absent:
        assert not [a for a in args if a.startswith(prefix)], f"{prefix}* in {args}"
    # Exactly one namespace mode and one peering mode.
    assert sum(a == "--all-namespaces" for a in args) + any(a.startswith("--namespace=") for a in args) == 1
    assert sum(a == "--standalone" or a.startswith("--peering=") for a in args) == 1


def test_store_credentials_come_from_the_secret(helm: Path) -> None:
    c = container(render(helm, VALUE_SETS["store-secret"]))
    assert c["envFrom"] == [{"secretRef": {"name": "eo-s3"}}]
    assert "envFrom" not in container(render(helm))


def test_image_env_and_placement(helm: Path) -> None:
    values = VALUE_SETS["everything"]
    docs = render(helm, values)
    c = container(docs)
    pod = one(docs, "Deployment")["spec"]["template"]
    assert c["image"] == "registry.example.com:5000/eo/operator:1.2.3"
    assert c["imagePullPolicy"] == "Always"
    assert {"name": "EXTRA", "value": "1"} in c["env"]
    assert {e["name"] for e in c["env"]} >= {"POD_ID", "HOME", "EXTRA"}
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["spec"]["nodeSelector"] == values["nodeSelector"]
    assert pod["spec"]["tolerations"] == values["tolerations"]
    assert pod["spec"]["affinity"] == values["affinity"]
    assert pod["metadata"]["annotations"] == values["podAnnotations"]
    assert pod["metadata"]["labels"]["team"] == "eo"
    # podLabels cannot take the selector labels away from the pods.
    selector = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert one(docs, "ServiceAccount")["metadata"]["annotations"] == values["serviceAccount"]["annotations"]


def test_image_defaults_to_app_version_and_digest_pins(helm: Path) -> None:
    assert container(render(helm))["image"] == "ghcr.io/earthops/operator:0.1.0"
    digest = "sha256:" + "ab" * 32
    assert (
        container(render(helm, {"image": {"digest": digest}}))["image"]
        == f"ghcr.io/earthops/operator@{digest}"
    )


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_replicas_and_rollout_strategy(helm: Path, name: str) -> None:
    values = VALUE_SETS[name]
    deployment = one(render(helm, values), "Deployment")
    assert deployment["spec"]["replicas"] == values.get("replicas", 1)
    peering = values.get("peering", {}).get("enabled", False)
    # Standalone must never overlap two operators, not even during a rollout.
    assert deployment["spec"]["strategy"]["type"] == ("RollingUpdate" if peering else "Recreate")


# ---------------------------------------------------------------------------------------------- RBAC


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_no_wildcards_anywhere(helm: Path, name: str) -> None:
    for doc in render(helm, VALUE_SETS[name]):
        if doc["kind"] in {"ClusterRole", "Role"}:
            assert "aggregationRule" not in doc
            for rule in doc["rules"]:
                for field in ("apiGroups", "resources", "verbs"):
                    assert all("*" not in item for item in rule[field]), f"wildcard in {doc['kind']}: {rule}"
                assert "resourceNames" not in rule and "nonResourceURLs" not in rule


def _expected(values: dict[str, Any]) -> dict[str, dict[tuple[str, str], set[str]]]:
    """The grants derived from the operator's declared API calls (earthops.control.handlers.apicalls)."""
    all_namespaces = values.get("watch", {}).get("allNamespaces", False)
    declared = apicalls.rules(all_namespaces=all_namespaces, peering=values.get("peering", {}).get("enabled", False))
    if all_namespaces:
        return {CLUSTER: {k: set(v) for k, v in declared["cluster"].items()}}
    namespaced = {k: set(v) for k, v in declared["namespace"].items()}
    return {CLUSTER: {k: set(v) for k, v in declared["cluster"].items()}} | {
        ns: namespaced for ns in values.get("watch", {}).get("namespaces") or [NAMESPACE]
    }


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rbac_grants_exactly_the_declared_calls(helm: Path, name: str) -> None:
    """A grant without a declared call, or a declared call without a grant, fails (in every mode)."""
    values = VALUE_SETS[name]
    assert grants(render(helm, values)) == _expected(values)


def test_role_kind_follows_the_namespace_mode(helm: Path) -> None:
    namespaced = render(helm, VALUE_SETS["namespace-list"])
    assert sorted(r["metadata"]["namespace"] for r in of_kind(namespaced, "Role")) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in of_kind(namespaced, "RoleBinding")) == [
        "team-a",
        "team-b",
    ]
    # Cluster-wide only what kopf reads cluster-wide: the CRDs, and the namespaces it serves.
    assert grants(namespaced)[CLUSTER] == {
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
        ("", "namespaces"): {"list", "watch"},
    }

    cluster = render(helm, VALUE_SETS["all-namespaces"])
    assert not of_kind(cluster, "Role") and not of_kind(cluster, "RoleBinding")
    assert len(of_kind(cluster, "ClusterRole")) == 1 and len(of_kind(cluster, "ClusterRoleBinding")) == 1
    # Cluster-scoped names carry the release namespace: one release per team namespace cannot collide.
    assert one(cluster, "ClusterRole")["metadata"]["name"] == f"{FULLNAME}-{NAMESPACE}"
    # Serving all namespaces, kopf does not observe namespaces.
    assert ("", "namespaces") not in grants(cluster)[CLUSTER]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_secrets_are_read_by_name_only(helm: Path, name: str) -> None:
    """The store Secret named by spec.storage.secretRef is read with get: no list or watch of all Secrets."""
    for scope, rules in grants(render(helm, VALUE_SETS[name])).items():
        if ("", "secrets") in rules:
            assert rules[("", "secrets")] == {"get"}, scope


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_nothing_for_what_no_code_touches(helm: Path, name: str) -> None:
    """RayClusters belong to KubeRay, an InferenceService's Deployments and Knative Services to KServe (the
    operator creates, reads and replaces InferenceServices, never lists or deletes them: the garbage
    collector removes them with their ModelDeployment); kopf posts core events only; no earthops kind is
    ever created, updated or deleted by the operator."""
    for scope, rules in grants(render(helm, VALUE_SETS[name])).items():
        assert not {r for r in rules if r[1] in {"rayclusters", "pods", "jobs", "deployments", "services"}}, scope
        if ("serving.kserve.io", "inferenceservices") in rules:
            assert rules[("serving.kserve.io", "inferenceservices")] == {"create", "get", "update"}, scope
        assert ("events.k8s.io", "events") not in rules, scope
        for (group, resource), verbs in rules.items():
            if group == "earthops.dev" and "/" not in resource:
                assert verbs == {"get", "list", "watch", "patch"}, (scope, resource)


def test_rbac_and_service_account_can_be_brought_by_the_user(helm: Path) -> None:
    docs = render(helm, {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "eo-sa"}})
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "eo-sa"


# ------------------------------------------------------------------------------------------- peering


def test_peering_objects(helm: Path) -> None:
    assert not [d for d in render(helm) if d["apiVersion"].startswith("kopf.dev/")]

    namespaced = render(helm, VALUE_SETS["peering-2-replicas"])
    peerings = of_kind(namespaced, "KopfPeering")
    assert {(p["apiVersion"], p["metadata"]["namespace"], p["metadata"]["name"]) for p in peerings} == {
        ("kopf.dev/v1", "team-a", FULLNAME),
        ("kopf.dev/v1", "team-b", FULLNAME),
    }
    assert not of_kind(namespaced, "ClusterKopfPeering")

    cluster = render(helm, VALUE_SETS["peering-all-namespaces"])
    assert one(cluster, "ClusterKopfPeering")["metadata"]["name"] == "eo-peers"
    assert not of_kind(cluster, "KopfPeering")

    unmanaged = render(helm, {"peering": {"enabled": True, "create": False}})
    assert not [d for d in unmanaged if d["apiVersion"].startswith("kopf.dev/")]
    assert "--peering=eo-earthops" in args_of(unmanaged)


def test_peering_crds_come_with_the_chart(helm: Path) -> None:
    crds = {
        d["metadata"]["name"]: d
        for d in of_kind(render(helm, None, "--include-crds"), "CustomResourceDefinition")
    }
    for name, scope in (("kopfpeerings.kopf.dev", "Namespaced"), ("clusterkopfpeerings.kopf.dev", "Cluster")):
        spec = crds[name]["spec"]
        assert (spec["group"], spec["scope"]) == ("kopf.dev", scope)
        version = spec["versions"][0]
        assert (version["name"], version["served"], version["storage"]) == ("v1", True, True)
        # kopf writes its records into status through the main resource: no status subresource.
        assert "subresources" not in version
        assert version["schema"]["openAPIV3Schema"]["properties"]["status"][
            "x-kubernetes-preserve-unknown-fields"
        ]
    assert not of_kind(render(helm), "CustomResourceDefinition")


def test_earthops_crds_come_with_the_chart(helm: Path) -> None:
    crds = {
        d["metadata"]["name"]: d
        for d in of_kind(render(helm, None, "--include-crds"), "CustomResourceDefinition")
    }
    for plural in EARTHOPS_KINDS:
        spec = crds[f"{plural}.earthops.dev"]["spec"]
        assert spec["group"] == "earthops.dev"
        assert spec["scope"] == "Namespaced"
        assert spec["names"]["plural"] == plural
        assert "earthops" in spec["names"].get("categories", [])
        assert [v["name"] for v in spec["versions"] if v["served"]] == ["v1alpha1"]


# ------------------------------------------------------------------------------------------- metrics


def test_metrics_service(helm: Path) -> None:
    docs = render(helm)
    service = one(docs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container(docs)["ports"]
    assert not of_kind(docs, "ServiceMonitor"), "the ServiceMonitor is opt-in"

    off = render(helm, VALUE_SETS["metrics-off"])
    assert not of_kind(off, "Service") and not of_kind(off, "ServiceMonitor")
    assert "metrics" not in {p["name"] for p in container(off)["ports"]}


def test_service_monitor(helm: Path) -> None:
    docs = render(helm, VALUE_SETS["service-monitor"])
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert (
        monitor["spec"]["selector"]["matchLabels"].items()
        <= one(docs, "Service")["metadata"]["labels"].items()
    )


def test_notes_render(helm: Path) -> None:
    for name, expect in (
        ("defaults", f"Watching: {NAMESPACE}"),
        ("all-namespaces", "Watching: all namespaces"),
        ("peering-2-replicas", 'Peering: "eo-earthops" with 2 replica(s)'),
    ):
        result = run_helm(
            helm,
            "install",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--dry-run=client",
            values=VALUE_SETS[name],
        )
        assert result.returncode == 0, result.stderr
        notes = result.stdout.split("NOTES:", 1)[1]
        assert expect in notes, notes
        assert "kubectl apply --server-side" in notes


# ------------------------------------------------------------------------------------ value checking


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"replicas": 2}, "/replicas"),  # more than one replica without peering
        ({"replicas": "two"}, "/replicas"),
        ({"replicas": -1}, "/replicas"),
        ({"health": {"port": 70000}}, "/health/port"),
        ({"metrics": {"port": 0}}, "/metrics/port"),
        ({"metrics": {"port": "9090"}}, "/metrics/port"),
        ({"bogus": True}, "bogus"),  # unknown top-level key
        ({"image": {"registry": "docker.io"}}, "registry"),  # unknown nested key
        ({"image": {"tag": 1.0}}, "/image/tag"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"log": {"level": "verbose"}}, "/log/level"),
        ({"log": {"format": "xml"}}, "/log/format"),
        ({"watch": {"allNamespaces": True, "namespaces": ["team-a"]}}, "/watch/namespaces"),
        ({"watch": {"namespaces": ["Team_A"]}}, "/watch/namespaces/0"),
        ({"watch": {"namespaces": "team-a"}}, "/watch/namespaces"),
        ({"peering": {"enabled": "yes"}}, "/peering/enabled"),
        ({"runAsUser": 0}, "/runAsUser"),
        ({"store": {"uri": "bucket/prefix"}}, "/store/uri"),
        ({"runtimeImage": "has spaces:1"}, "/runtimeImage"),
        ({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}}, "/metrics/enabled"),
        ({"metrics": {"serviceMonitor": {"interval": "30 seconds"}}}, "/metrics/serviceMonitor/interval"),
        ({"resources": {"requests": {"memory": "lots"}}}, "/resources/requests/memory"),
    ],
)
def test_schema_rejects_bad_values(helm: Path, values: dict[str, Any], key: str) -> None:
    result = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, values=values)
    assert result.returncode != 0, f"accepted {values}"
    assert "schema" in result.stderr, result.stderr
    assert key in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": 3}, "replicas=3 needs peering.enabled=true"),
        ({"health": {"port": 9090}}, "metrics.port and health.port are both 9090"),
        ({"serviceAccount": {"create": False}}, "serviceAccount.name is required"),
    ],
)
def test_templates_refuse_what_the_schema_cannot_say(
    helm: Path, values: dict[str, Any], message: str
) -> None:
    # The template checks also hold when schema validation is skipped.
    result = run_helm(helm, "template", RELEASE, str(CHART), "--skip-schema-validation", values=values)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_every_values_key_has_a_comment() -> None:
    key_line = re.compile(r"^(\s*)(?:- )?([A-Za-z_][\w./-]*|\"[^\"]+\"):(\s|$)")
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        match = key_line.match(line)
        if not match:
            continue
        inline = re.search(r"\s#\s", line)
        previous = next((p for p in reversed(lines[:i]) if p.strip()), "")
        if not inline and not previous.lstrip().startswith("#"):
            undocumented.append(f"values.yaml:{i + 1}: {line.strip()}")
    assert not undocumented, "keys without a comment:\n" + "\n".join(undocumented)


def _key_paths(node: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else key
            yield path
            yield from _key_paths(value, path)


def _schema_has(path: str) -> bool:
    node = schema()
    defs = node["definitions"]
    for part in path.split("."):
        while "$ref" in node or "allOf" in node:
            node = defs[node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node["allOf"][0]
        if part in node.get("properties", {}):
            node = node["properties"][part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return False
    return True


def test_schema_describes_every_value() -> None:
    missing = [p for p in _key_paths(values_yaml()) if not _schema_has(p)]
    assert not missing, f"values.yaml keys the schema does not describe: {missing}"
    extra = set(schema()["properties"]) - set(values_yaml()) - {"global", "kopf-peering"}
    assert not extra, f"schema keys without a default in values.yaml: {extra}"


def test_default_values_satisfy_the_schema() -> None:
    import jsonschema  # installed by `make setup` (ray[default] and pystac[validation] require it)

    jsonschema.Draft7Validator.check_schema(schema())
    jsonschema.Draft7Validator(schema()).validate(values_yaml())


def test_docs_cover_every_top_level_value() -> None:
    doc = (REPO / "docs" / "helm.md").read_text()
    missing = [key for key in values_yaml() if f"`{key}" not in doc]
    assert not missing, f"docs/helm.md does not mention {missing}"


# ------------------------------------------------------------------------------- the STAC API


STAC_API = {"store": {"uri": "s3://bucket/earthops", "credentialsSecret": "earthops-s3"},
            "stacApi": {"enabled": True}}


def stac_api_objects(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    deployments = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == f"{FULLNAME}-stac-api"]
    services = [d for d in of_kind(docs, "Service") if d["metadata"]["name"] == f"{FULLNAME}-stac-api"]
    assert len(deployments) == 1 and len(services) == 1
    return deployments[0], services[0]


def test_stac_api_is_off_by_default(helm: Path) -> None:
    assert not [d for d in render(helm) if d["metadata"]["name"].endswith("-stac-api")]


def test_stac_api_serves_the_store_read_only_and_locked_down(helm: Path) -> None:
    docs = render(helm, STAC_API)
    deployment, service = stac_api_objects(docs)
    pod = deployment["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["earthops", "catalog", "serve"]
    assert c["args"] == ["--host=0.0.0.0", "--port=8000", "--store=s3://bucket/earthops"]
    assert c["image"] == "ghcr.io/earthops/runtime:" + yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert c["envFrom"] == [{"secretRef": {"name": "earthops-s3"}}]
    assert {e["name"]: e["value"] for e in c["env"]} == {"HOME": "/tmp", "EARTHOPS_CACHE": "/tmp/earthops-cache"}
    # restricted pod security, read-only root filesystem, no API token: it reads the store only
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False and sc["runAsNonRoot"] is True and sc["capabilities"] == {"drop": ["ALL"]}
    assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {}}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/_mgmt/ping", "port": "http"}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    # its own selector: the operator's Deployment and Service never select its pods, nor it theirs
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector["app.kubernetes.io/component"] == "stac-api"
    assert service["spec"]["selector"] == selector
    assert all(deployment["spec"]["template"]["metadata"]["labels"][k] == v for k, v in selector.items())
    operator = next(d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == FULLNAME)
    assert operator["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]


def test_stac_api_values(helm: Path) -> None:
    values = {"store": {"uri": "s3://b/ops", "credentialsSecret": ""},
              "stacApi": {"enabled": True, "store": "s3://other/catalog", "credentialsSecret": "reader", "replicas": 3,
                          "port": 9000, "presignSeconds": 3600, "image": "registry.example/eo/runtime:7",
                          "service": {"port": 8080},
                          "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "4Gi"}}}}
    deployment, service = stac_api_objects(render(helm, values))
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    assert deployment["spec"]["replicas"] == 3
    assert c["args"] == ["--host=0.0.0.0", "--port=9000", "--store=s3://other/catalog", "--presign=3600"]
    assert c["image"] == "registry.example/eo/runtime:7"
    assert c["envFrom"] == [{"secretRef": {"name": "reader"}}]
    assert c["ports"] == [{"name": "http", "containerPort": 9000, "protocol": "TCP"}]
    assert c["resources"] == {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "4Gi"}}
    assert service["spec"]["ports"][0]["port"] == 8080


def test_stac_api_needs_a_store(helm: Path) -> None:
    result = run_helm(helm, "template", RELEASE, str(CHART), values={"stacApi": {"enabled": True}})
    assert result.returncode != 0
    assert "stacApi.enabled needs a store" in result.stderr


@pytest.mark.parametrize(("values", "key"), [
    ({"stacApi": {"replicas": -1}}, "/stacApi/replicas"),
    ({"stacApi": {"presignSeconds": 0}}, "/stacApi/presignSeconds"),
    ({"stacApi": {"store": "bucket/prefix"}}, "/stacApi/store"),
    ({"stacApi": {"port": 70000}}, "/stacApi/port"),
    ({"stacApi": {"replica": 2}}, "/stacApi"),
])
def test_stac_api_schema_rejects_bad_values(helm: Path, values: dict[str, Any], key: str) -> None:
    result = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, values=values)
    assert result.returncode != 0 and "schema" in result.stderr and key in result.stderr, result.stderr
