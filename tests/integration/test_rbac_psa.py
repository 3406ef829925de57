"""The chart's RBAC and the pods' security, on the real API server.

RBAC: the chart's ServiceAccount, bound by the chart's rendered (Cluster)Roles, makes the operator's
declared API calls (earthops.control.handlers.apicalls) — the handlers' own through handlers/k8s.py
itself, kopf's through the same REST calls kopf makes — and the server says it may do nothing else
(SelfSubjectRulesReview, SelfSubjectAccessReview). The operator lifecycle tests run the whole operator
with the same credentials (tests/infra/operator.py).

Pod Security: in a namespace enforcing the ``restricted`` standard, the pods KubeRay makes from the
operator's RayJob, and the chart's operator pod, are admitted; the same pods without their
securityContext are refused (the PodSecurity admission plugin is on by default in kube-apiserver).
"""

from __future__ import annotations

import copy
import json
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiException, Configuration, CoreV1Api

from earthops.api import parse_resource
from earthops.control.handlers import apicalls, k8s
from earthops.control.reconcile.rayjob import OperatorDefaults, desired_children
from tests.infra import proc, tools
from tests.infra.earthops_kube import apply_example, wait_status
from tests.infra.kube import AUTHZ, KubeApiServer, can, project_crds, rest, wait_until_allowed
from tests.infra.operator import declared_grants, running_operator
from tests.infra.proc import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "earthops"
RELEASE = "eo"
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
DATASET = "examples/stac-api/01-dataset.yaml"  # output.storage.secretRef: eo-datasets-s3
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}

Rules = dict[tuple[str, str], set[str]]


# ------------------------------------------------------------------------------------------ helpers


def render_chart(namespace: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    """``helm template`` of the chart, released in ``namespace``."""
    try:
        helm = tools.helm()
    except tools.ToolUnavailable as exc:
        proc.unavailable(str(exc))
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as fh:
        yaml.safe_dump(values, fh)
        fh.flush()
        out = subprocess.run([str(helm), "template", RELEASE, str(CHART), "--namespace", namespace, "-f", fh.name],
                             capture_output=True, text=True, check=True, timeout=120).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def install_rbac(kube: KubeApiServer, namespace: str, values: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """Apply the chart's ServiceAccount and RBAC objects; (a token of the ServiceAccount, the objects)."""
    rbac = [d for d in render_chart(namespace, values) if d["kind"] in RBAC_KINDS]
    kube.apply(rbac, namespace=namespace)
    account = next(d["metadata"]["name"] for d in rbac if d["kind"] == "ServiceAccount")
    return kube.service_account_token(namespace, account, create=False), rbac


def remove_cluster_objects(kube: KubeApiServer, objects: list[dict[str, Any]]) -> None:
    for doc in objects:
        if doc["kind"].startswith("Cluster"):
            try:
                kube.delete(doc["apiVersion"], doc["kind"], doc["metadata"]["name"])
            except ApiException as exc:
                if exc.status != 404:
                    raise


def rules_review(kube: KubeApiServer, token: str, namespace: str) -> Rules:
    """What the token's user may do in ``namespace`` (cluster-wide grants included), per the server."""
    reply = rest(kube.api_client(token=token), "POST", f"{AUTHZ}/selfsubjectrulesreviews",
                 body={"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
                       "spec": {"namespace": namespace}})
    assert not reply["status"].get("incomplete"), reply["status"]
    out: Rules = {}
    for rule in reply["status"]["resourceRules"]:
        assert not rule.get("resourceNames"), rule
        for group in rule.get("apiGroups", []):
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def beyond(granted: Rules, baseline: Rules) -> Rules:
    """``granted`` less what every authenticated account may do anyway (``baseline``)."""
    out = {key: verbs - baseline.get(key, set()) for key, verbs in granted.items()}
    return {key: verbs for key, verbs in out.items() if verbs}


def expected(all_namespaces: bool, peering: bool) -> tuple[Rules, Rules]:
    """(in a watched namespace, in any other namespace) from the declared calls."""
    declared = apicalls.rules(all_namespaces=all_namespaces, peering=peering)
    cluster = {k: set(v) for k, v in declared["cluster"].items()}
    watched = {**cluster, **{k: set(v) for k, v in declared["namespace"].items()}}
    return watched, cluster


def status_of(client: Any, method: str, path: str, query: dict[str, Any], body: Any = None,
              content_type: str | None = None) -> int:
    """The HTTP status of one request (a watch's body is a stream of events, not one JSON document)."""
    headers = {"Accept": "application/json", **({"Content-Type": content_type} if content_type else {})}
    method, url, headers, body, _ = client.param_serialize(method=method, resource_path=path,
                                                           query_params=list(query.items()), header_params=headers,
                                                           body=body, auth_settings=["BearerToken"])
    response = client.call_api(method, url, header_params=headers, body=body, _request_timeout=30)
    response.read()
    return int(response.status)


@pytest.fixture
def as_account(monkeypatch: pytest.MonkeyPatch):
    """Make handlers/k8s.py (its one API client, made from the default configuration in the operator
    process) talk to the server with a given token."""

    def use(kube: KubeApiServer, token: str) -> None:
        api = kube.api_client(token=token)
        monkeypatch.setattr(Configuration, "_default", api.configuration)
        monkeypatch.setattr(k8s, "_api_client", api)

    return use


def the_dataset(kube: KubeApiServer, namespace: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The example EODataset (its store Secret too) and the children the operator makes for its first run."""
    kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "eo-datasets-s3"},
                "stringData": {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "key"}}, namespace=namespace)
    stored = apply_example(kube, DATASET, namespace)
    resource = parse_resource({k: stored[k] for k in ("apiVersion", "kind", "metadata", "spec")})
    children = desired_children(resource, run="g1-rbac", run_key="k", generation=1,
                                defaults=OperatorDefaults(store_uri="file:///store"))
    return stored, children


# --------------------------------------------------------------------------------------------- RBAC


@pytest.mark.parametrize("all_namespaces", [False, True], ids=["namespaced", "all-namespaces"])
def test_the_chart_grants_exactly_the_declared_calls(kube_apiserver: KubeApiServer, kube_namespace: str,
                                                     all_namespaces: bool) -> None:
    kube, ns = kube_apiserver, kube_namespace
    values = {"peering": {"enabled": True},
              "watch": {"allNamespaces": True} if all_namespaces else {"namespaces": [ns]}}
    token, objects = install_rbac(kube, ns, values)
    try:
        sa = kube.api_client(token=token)
        baseline = rules_review(kube, kube.service_account_token(ns, "nobody"), ns)  # bound to nothing
        in_watched, elsewhere = expected(all_namespaces, peering=True)
        # every declared call is allowed (once the server's authorizer has the new bindings) ...
        wait_until_allowed(sa, declared_grants(ns, all_namespaces=all_namespaces, peering=True),
                           what="the chart's RBAC in effect")
        # ... and nothing more
        assert beyond(rules_review(kube, token, ns), baseline) == in_watched
        assert beyond(rules_review(kube, token, "default"), baseline) == (in_watched if all_namespaces else elsewhere)
        # what the issue found granted, and more that no code does
        refused = [("list", "", "secrets", ""), ("list", "", "secrets", ns), ("watch", "", "secrets", ns),
                   ("get", "ray.io", "rayclusters", ns), ("list", "ray.io", "rayclusters", ns),
                   ("list", "serving.kserve.io", "inferenceservices", ns),
                   ("delete", "serving.kserve.io", "inferenceservices", ns),
                   ("patch", "serving.kserve.io", "inferenceservices", ns),
                   ("create", "events.k8s.io", "events", ns), ("patch", "", "events", ns),
                   ("update", "", "configmaps", ns), ("get", "", "configmaps", ns), ("watch", "ray.io", "rayjobs", ns),
                   ("update", "ray.io", "rayjobs", ns), ("create", "", "pods", ns), ("create", "batch", "jobs", ns),
                   ("create", "earthops.dev", "eodatasets", ns), ("update", "earthops.dev", "eodatasets", ns),
                   ("delete", "earthops.dev", "eodatasets", ns), ("update", "earthops.dev", "eodatasets/status", ns),
                   ("update", "earthops.dev", "modeldeployments/status", ns),
                   ("deletecollection", "", "configmaps", ns), ("escalate", "rbac.authorization.k8s.io", "roles", ns)]
        if not all_namespaces:
            refused += [("get", "", "secrets", "default"), ("create", "ray.io", "rayjobs", "default"),
                        ("create", "serving.kserve.io", "inferenceservices", "default"),
                        ("list", "earthops.dev", "eodatasets", "")]
        for verb, group, resource, where in refused:
            assert not can(sa, verb, group, resource, where), (verb, group, resource, where or "<all namespaces>")
    finally:
        remove_cluster_objects(kube, objects)


def test_the_operator_calls_succeed_with_the_chart_service_account(kube_apiserver: KubeApiServer,
                                                                  kube_namespace: str, as_account: Any) -> None:
    """handlers/k8s.py's calls, and kopf's, made with the chart's credentials (namespaced, with peering)."""
    kube, ns = kube_apiserver, kube_namespace
    kube.install_crds(CHART / "charts" / "kopf-peering" / "crds" / "kopf-peering.yaml")
    rendered = render_chart(ns, {"peering": {"enabled": True}, "watch": {"namespaces": [ns]}})
    [peering] = [d for d in rendered if d["kind"] == "KopfPeering"]
    kube.apply(peering)
    token, objects = install_rbac(kube, ns, {"peering": {"enabled": True}, "watch": {"namespaces": [ns]}})
    try:
        sa = kube.api_client(token=token)
        # the namespaced Role's and the ClusterRole's bindings: each takes effect a moment after it is stored
        wait_until_allowed(sa, declared_grants(ns, all_namespaces=False, peering=True),
                           what="the chart's RBAC in effect")
        dataset, (config_map, rayjob) = the_dataset(kube, ns)
        name = dataset["metadata"]["name"]
        selector = f"earthops.dev/kind=eodataset,earthops.dev/name={name}"
        as_account(kube, token)

        # the handlers' own calls, through the operator's own functions
        assert k8s.get_earthops("EODataset", ns, name)["metadata"]["uid"] == dataset["metadata"]["uid"]
        assert k8s.secret_env(ns, "eo-datasets-s3") == {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "key"}
        assert k8s.create_if_absent(config_map) is True
        assert k8s.create_if_absent(rayjob) is True  # accepted by the KubeRay CRD: securityContexts and all
        assert k8s.create_if_absent(rayjob) is False  # exists: 409
        assert k8s.get_custom("RayJob", ns, rayjob["metadata"]["name"])["spec"]["submitterPodTemplate"]
        assert [j["metadata"]["name"] for j in k8s.list_custom("RayJob", ns, selector)] == [rayjob["metadata"]["name"]]
        k8s.delete_config_maps(ns, selector, keep=None)
        k8s.delete_custom("RayJob", ns, rayjob["metadata"]["name"])
        assert k8s.get_custom("RayJob", ns, rayjob["metadata"]["name"]) is None
        assert not CoreV1Api(kube.admin).list_namespaced_config_map(ns, label_selector=selector).items

        # kopf's calls, as kopf makes them (list then watch, merge patches, a core event)
        path = f"/apis/earthops.dev/v1alpha1/namespaces/{ns}/eodatasets"
        listed = rest(sa, "GET", path)
        assert [d["metadata"]["name"] for d in listed["items"]] == [name]
        watch = {"watch": "true", "resourceVersion": listed["metadata"]["resourceVersion"], "timeoutSeconds": 1}
        assert status_of(sa, "GET", path, watch) == 200
        merge = "application/merge-patch+json"
        rest(sa, "PATCH", f"{path}/{name}", body={"metadata": {"annotations": {"kopf.earthops.dev/x": "{}"}}},
             content_type=merge)
        patched = rest(sa, "PATCH", f"{path}/{name}/status", body={"status": {"phase": "Pending"}}, content_type=merge)
        assert patched["status"]["phase"] == "Pending"
        involved = {"apiVersion": dataset["apiVersion"], "kind": "EODataset", "name": name, "namespace": ns,
                    "uid": dataset["metadata"]["uid"]}
        rest(sa, "POST", f"/api/v1/namespaces/{ns}/events",
             body={"metadata": {"generateName": "kopf-event-"}, "involvedObject": involved, "type": "Normal",
                   "reason": "Logging", "message": "rbac test", "source": {"component": "kopf"}})
        for cluster_path in ("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", "/api/v1/namespaces"):
            listed = rest(sa, "GET", cluster_path, query={"limit": 1})
            assert status_of(sa, "GET", cluster_path, {**watch, "resourceVersion": listed["metadata"]["resourceVersion"]}) == 200
        peerings = f"/apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings"
        assert [p["metadata"]["name"] for p in rest(sa, "GET", peerings)["items"]] == [peering["metadata"]["name"]]
        rest(sa, "PATCH", f"{peerings}/{peering['metadata']['name']}",
             body={"status": {"replica-1": {"priority": 1, "lifetime": 60}}}, content_type=merge)

        # and what it must not do, refused for real
        with pytest.raises(ApiException) as refused:
            CoreV1Api(sa).list_namespaced_secret(ns)
        assert refused.value.status == 403
    finally:
        remove_cluster_objects(kube, objects)


def test_the_operator_runs_with_the_chart_rbac_and_is_never_refused(kube_apiserver: KubeApiServer,
                                                                   kube_namespace: str, tmp_path: Path) -> None:
    """The whole operator with the chart's credentials: it starts a run, posts its event, and its log has
    no refusal (kopf only warns when it may not post an event or observe namespaces or CRDs)."""
    kube, ns = kube_apiserver, kube_namespace
    store = (tmp_path / "store").as_uri()
    with running_operator(kube, ns, tmp_path, store) as op:
        apply_example(kube, "examples/ship-iceberg/01-dataset.yaml", ns, "chips")
        wait_status(kube, "EODataset", ns, "chips", op, "a RayJob", lambda s: s.get("rayJobName"))

        def event_posted() -> bool:
            events = CoreV1Api(kube.admin).list_namespaced_event(ns).items
            return any(e.reason == "RayJobCreated" and e.involved_object.name == "chips" for e in events)

        wait_for(event_posted, timeout=30, what="the RayJobCreated event", proc=op.proc, log_path=op.log)
    log = op.log.read_text()
    for refusal_sign in ("Forbidden", "403", "Not enough permissions", "Failed to post an event"):
        assert refusal_sign not in log, f"{refusal_sign!r} in the operator log:\n{log[-3000:]}"


def test_blocking_owner_references_need_the_finalizers_grant(kube_apiserver: KubeApiServer, as_account: Any) -> None:
    """Where OwnerReferencesPermissionEnforcement runs (OpenShift), creating a child whose owner reference
    sets blockOwnerDeletion needs update on the owner's finalizers: the chart grants it, and without it
    the operator's create is refused. A server of its own, with that admission plugin on."""
    args = ["--enable-admission-plugins=OwnerReferencesPermissionEnforcement"]
    with KubeApiServer(bin_dir=kube_apiserver.bin_dir, controller_manager=False, extra_apiserver_args=args) as kube:
        kube.install_crds(project_crds())
        ns = kube.create_namespace("team")
        token, objects = install_rbac(kube, ns, {"watch": {"namespaces": [ns]}})
        sa = kube.api_client(token=token)
        wait_until_allowed(sa, declared_grants(ns, all_namespaces=False, peering=False),
                           what="the chart's RBAC in effect")
        _, (config_map, _) = the_dataset(kube, ns)
        assert config_map["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] is True
        as_account(kube, token)
        assert k8s.create_if_absent(config_map) is True

        [role] = [d for d in objects if d["kind"] == "Role"]
        role = copy.deepcopy(role)
        role["rules"] = [r for r in role["rules"] if not any(x.endswith("/finalizers") for x in r["resources"])]
        kube.apply(role)
        wait_for(lambda: not can(sa, "update", "earthops.dev", "eodatasets/finalizers", ns), timeout=30,
                 what="the Role without finalizers in effect")
        second = copy.deepcopy(config_map)
        second["metadata"]["name"] += "-2"
        with pytest.raises(ApiException) as refused:
            k8s.create_if_absent(second)
        assert refused.value.status == 403 and "blockOwnerDeletion" in refusal(refused.value)


# ------------------------------------------------------------------------------------- Pod Security


def kuberay_pods(rayjob: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The pods KubeRay (v1.6, controllers/ray/common/pod.go and job.go) makes from the RayJob, with what
    it adds that Pod Security judges: the autoscaler sidecar of the head (autoscalerOptions.securityContext)
    and the wait-gcs-ready init container of workers (a copy of the Ray container's securityContext)."""
    cluster = rayjob["spec"]["rayClusterSpec"]
    templates = {"head": copy.deepcopy(cluster["headGroupSpec"]["template"]),
                 **{f"worker-{g['groupName']}": copy.deepcopy(g["template"]) for g in cluster["workerGroupSpecs"]},
                 "submitter": copy.deepcopy(rayjob["spec"]["submitterPodTemplate"])}
    ray = templates["head"]["spec"]["containers"][0]
    if cluster.get("enableInTreeAutoscaling"):
        autoscaler = {"name": "autoscaler", "image": ray["image"], "command": ["ray"],
                      **({"securityContext": cluster["autoscalerOptions"]["securityContext"]}
                         if "securityContext" in cluster.get("autoscalerOptions", {}) else {})}
        templates["head"]["spec"]["containers"].append(autoscaler)
    for role, template in templates.items():
        if role.startswith("worker-"):
            worker = template["spec"]["containers"][0]
            template["spec"]["initContainers"] = [
                {"name": "wait-gcs-ready", "image": worker["image"], "command": ["/bin/bash", "-c"],
                 **({"securityContext": worker["securityContext"]} if "securityContext" in worker else {})}]
    return {role: {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{rayjob['metadata']['name']}-{role}"},
                   "spec": t["spec"]} for role, t in templates.items()}


def without_security_context(pod: dict[str, Any], *, pod_level: bool = True) -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    if pod_level:
        pod["spec"].pop("securityContext", None)
    for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
        c.pop("securityContext", None)
    return pod


@pytest.fixture
def restricted_namespace(kube_apiserver: KubeApiServer, kube_namespace: str) -> Iterator[str]:
    kube_apiserver.create_namespace(kube_namespace, labels=RESTRICTED)
    yield kube_namespace


def refusal(exc: ApiException) -> str:
    """The server's message in a refusal."""
    return str(json.loads(exc.body or "{}").get("message", exc.body))


def admit(kube: KubeApiServer, namespace: str, pod: dict[str, Any]) -> None:
    """Create ``pod`` in ``namespace`` with dry-run=All: every admission check, nothing stored."""
    CoreV1Api(kube.admin).create_namespaced_pod(namespace, pod, dry_run="All")


def test_rayjob_pods_are_admitted_by_a_restricted_namespace(kube_apiserver: KubeApiServer,
                                                           restricted_namespace: str) -> None:
    kube, ns = kube_apiserver, restricted_namespace
    _, (_, rayjob) = the_dataset(kube, ns)
    tuning = apply_example(kube, "examples/ship-iceberg/02-tuning.yaml", ns)
    compute = tuning["spec"]["compute"]
    for group in compute["workerGroups"]:  # let the GPU group grow: KubeRay adds its autoscaler sidecar
        group["maxReplicas"] = group.get("replicas", 1) + 2
    tuning = kube.apply({**{k: tuning[k] for k in ("apiVersion", "kind")},
                         "metadata": {"name": tuning["metadata"]["name"], "namespace": ns},
                         "spec": {**tuning["spec"], "compute": compute}})[0]
    _, tuning_job = desired_children(parse_resource({k: tuning[k] for k in ("apiVersion", "kind", "metadata", "spec")}),
                                     run="g1-psa", run_key="k", generation=1,
                                     defaults=OperatorDefaults(store_uri="file:///store"),
                                     inputs={"dataset": "file:///store/datasets/x/g1"})
    assert tuning_job["spec"]["rayClusterSpec"]["enableInTreeAutoscaling"] is True
    pods = {**kuberay_pods(rayjob), **{f"tuning-{k}": v for k, v in kuberay_pods(tuning_job).items()}}
    assert {"head", "submitter", "tuning-head", "tuning-submitter"} <= set(pods)
    assert [r for r in pods if r.startswith("worker-")] and [r for r in pods if r.startswith("tuning-worker-")]
    for pod in pods.values():
        admit(kube, ns, pod)  # raises 403 Forbidden, naming the pod and why, if Pod Security refuses it

    # the same pods as before the securityContexts: refused, as is one with only the pod-level half
    for role, pod in pods.items():
        for bare in (without_security_context(pod), without_security_context(pod, pod_level=False)):
            with pytest.raises(ApiException) as refused:
                admit(kube, ns, bare)
            assert refused.value.status == 403, role
            assert 'violates PodSecurity "restricted:latest"' in refusal(refused.value), role


def test_the_operator_pod_is_admitted_by_a_restricted_namespace(kube_apiserver: KubeApiServer,
                                                               restricted_namespace: str) -> None:
    kube, ns = kube_apiserver, restricted_namespace
    for values in ({}, {"runAsUser": None, "runAsGroup": None}, {"store": {"credentialsSecret": "s3"}}):
        [deployment] = [d for d in render_chart(ns, values) if d["kind"] == "Deployment"]
        template = deployment["spec"]["template"]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "operator", "labels": template["metadata"]["labels"]},
               "spec": template["spec"]}
        admit(kube, ns, pod)
        with pytest.raises(ApiException) as refused:
            admit(kube, ns, without_security_context(pod))
        assert refused.value.status == 403
        assert 'violates PodSecurity "restricted:latest"' in refusal(refused.value)


#: KServe's own fields of a predictor (ComponentExtensionSpec and the predictor's framework slots): the rest
#: of it is the pod spec that KServe's Standard mode puts in the predictor's Deployment as it is.
KSERVE_PREDICTOR_FIELDS = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "scaleMetricType",
                           "containerConcurrency", "timeout", "canaryTrafficPercent", "logger", "batcher",
                           "annotations", "labels", "deploymentStrategy", "autoScaling", "model", "workerSpec"}


def predictor_pod(isvc: dict[str, Any]) -> dict[str, Any]:
    """The pod KServe (Standard mode) runs for the InferenceService's predictor: its pod spec fields."""
    predictor = isvc["spec"]["predictor"]
    spec = {k: copy.deepcopy(v) for k, v in predictor.items() if k not in KSERVE_PREDICTOR_FIELDS}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{isvc['metadata']['name']}-predictor"},
            "spec": spec}


def the_inference_service(namespace: str, **spec: Any) -> dict[str, Any]:
    """The operator's InferenceService for the example ModelDeployment (its model resolved, a Secret for the store)."""
    from earthops.control.reconcile.inferenceservice import Models, ServedModel, desired_inference_service

    doc = yaml.safe_load((ROOT / "examples/ship-iceberg/04-deployment.yaml").read_text())
    doc["metadata"].update(namespace=namespace, uid="uid-1", generation=1)
    doc["spec"].update(spec)
    model = ServedModel("iceberg-tuning", "v1", "s3://store/models/default/iceberg-tuning/v1")
    return desired_inference_service(parse_resource(doc), Models(model), image="ghcr.io/earthops/runtime:test",
                                     generation=1)


def test_the_predictor_pod_is_admitted_by_a_restricted_namespace(kube_apiserver: KubeApiServer,
                                                                 restricted_namespace: str) -> None:
    kube, ns = kube_apiserver, restricted_namespace
    variants = {"cpu": {}, "gpu, grpc, secret": {"resources": {"cpu": 2, "memory": "4Gi", "gpu": 1},
                                                  "protocol": "grpc-v2", "storage": {"secretRef": {"name": "s3"}}}}
    for what, spec in variants.items():
        isvc = the_inference_service(ns, **spec)
        pod = predictor_pod(isvc)
        admit(kube, ns, pod)
        with pytest.raises(ApiException) as refused:
            admit(kube, ns, without_security_context(pod))
        assert refused.value.status == 403, what
        assert 'violates PodSecurity "restricted:latest"' in refusal(refused.value), what


def test_every_pod_runs_non_root_on_a_read_only_root_filesystem(kube_apiserver: KubeApiServer,
                                                               kube_namespace: str) -> None:
    """Beyond ``restricted`` (which does not judge the root filesystem): every container of the operator's,
    KubeRay's and KServe's pods has a read-only root filesystem and drops every capability, with /tmp
    its one writable folder, an emptyDir (KubeRay's autoscaler sidecar gets KubeRay's own /tmp/ray)."""
    ns = kube_namespace
    _, (_, rayjob) = the_dataset(kube_apiserver, ns)
    [deployment] = [d for d in render_chart(ns, {}) if d["kind"] == "Deployment"]
    pods = {"operator": {"spec": deployment["spec"]["template"]["spec"]},
            "predictor": predictor_pod(the_inference_service(ns)), **kuberay_pods(rayjob)}
    for role, pod in pods.items():
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, role
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, role
        emptydirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert (sc["readOnlyRootFilesystem"], sc["allowPrivilegeEscalation"], sc["capabilities"]) \
                == (True, False, {"drop": ["ALL"]}), (role, c["name"])
            if c["name"] in ("autoscaler", "wait-gcs-ready"):
                continue  # KubeRay's own containers: it mounts the sidecar's log folder; the init check writes nothing
            assert any(m["mountPath"] == "/tmp" and m["name"] in emptydirs for m in c.get("volumeMounts", [])), \
                (role, c["name"])
