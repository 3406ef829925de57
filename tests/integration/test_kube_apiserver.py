"""The real API server the integration tests run against: reachable, CRDs served, RBAC and GC real."""

from __future__ import annotations

import json

import pytest
from kubernetes.client import ApiException, CoreV1Api

from tests.infra.kube import KubeApiServer, permitted, versions
from tests.infra.peers import minimal_rayjob
from tests.infra.proc import unavailable, wait_for

pytestmark = pytest.mark.integration

THIRD_PARTY_CRDS = {
    "rayjobs.ray.io": ("ray.io", "v1", "RayJob"),
    "rayclusters.ray.io": ("ray.io", "v1", "RayCluster"),
    "inferenceservices.serving.kserve.io": ("serving.kserve.io", "v1beta1", "InferenceService"),
}


def test_server_is_reachable_and_reports_the_pinned_version(kube_apiserver: KubeApiServer) -> None:
    assert kube_apiserver.raw_get("/readyz") == "ok"
    assert kube_apiserver.raw_get("/livez") == "ok"
    assert json.loads(kube_apiserver.raw_get("/version"))["gitVersion"] == versions()["KUBERNETES_VERSION"]
    # The kubeconfig it writes works for kubectl (the one built beside it, if there is one).
    try:
        out = kube_apiserver.kubectl("get", "namespace", "default", "-o", "name")
    except FileNotFoundError:
        unavailable("no kubectl beside kube-apiserver (KUBEBUILDER_ASSETS without it)")
    assert out.stdout.strip() == "namespace/default"


@pytest.mark.parametrize("crd_name", sorted(THIRD_PARTY_CRDS))
def test_third_party_crds_are_established_and_served(kube_apiserver: KubeApiServer, crd_name: str) -> None:
    crd = kube_apiserver.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", crd_name)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    group, version, kind = THIRD_PARTY_CRDS[crd_name]
    resource = kube_apiserver.resource(f"{group}/{version}", kind)
    assert resource["namespaced"] is True
    # Status is a subresource: what the simulators in tests/infra/peers.py rely on.
    served = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    assert "status" in served["subresources"]


def test_server_side_apply_is_idempotent_and_tracks_field_managers(
    kube_apiserver: KubeApiServer, kube_namespace: str
) -> None:
    first = kube_apiserver.apply(minimal_rayjob("ssa"), namespace=kube_namespace, field_manager="earthops")[0]
    again = kube_apiserver.apply(minimal_rayjob("ssa"), namespace=kube_namespace, field_manager="earthops")[0]
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]  # no-op apply
    assert {m["manager"] for m in again["metadata"]["managedFields"]} == {"earthops"}
    assert again["metadata"]["generation"] == 1


def test_a_token_without_permissions_is_refused_until_bound(kube_apiserver: KubeApiServer) -> None:
    """RBAC is real: a static-token user and a ServiceAccount get 403 until a RoleBinding grants them."""
    # A server of its own (same binaries): static token users are fixed when kube-apiserver starts.
    users = {"alice": ["earthops-users"]}
    with KubeApiServer(bin_dir=kube_apiserver.bin_dir, users=users, controller_manager=False) as kube:
        namespace = kube.create_namespace("rbac")
        kube.apply(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}}, namespace=namespace
        )
        sa_token = kube.service_account_token(namespace, "operator")
        users = {"alice": kube.api_client(user="alice"), "serviceaccount": kube.api_client(token=sa_token)}

        for who, client in users.items():
            with pytest.raises(ApiException) as refused:
                CoreV1Api(client).list_namespaced_config_map(namespace)
            assert refused.value.status == 403, who

        with pytest.raises(ApiException) as unknown:
            CoreV1Api(kube.api_client(token="not-a-token")).list_namespaced_config_map(namespace)
        assert unknown.value.status == 401

        kube.apply(
            [
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "Role",
                    "metadata": {"name": "configmap-reader"},
                    "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
                },
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "RoleBinding",
                    "metadata": {"name": "configmap-readers"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "Role",
                        "name": "configmap-reader",
                    },
                    "subjects": [
                        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "earthops-users"},
                        {"kind": "ServiceAccount", "name": "operator", "namespace": namespace},
                    ],
                },
            ],
            namespace=namespace,
        )
        for who, client in users.items():
            # the authorizer sees a new binding a moment after it is stored (longer on a loaded machine)
            wait_for(lambda client=client: permitted(lambda: CoreV1Api(client).list_namespaced_config_map(namespace)),
                     timeout=60, what=f"the RoleBinding in effect for {who}")
            names = [c.metadata.name for c in CoreV1Api(client).list_namespaced_config_map(namespace).items]
            assert "settings" in names, who
            with pytest.raises(ApiException) as still_refused:  # the Role grants reading only
                CoreV1Api(client).delete_namespaced_config_map("settings", namespace)
            assert still_refused.value.status == 403, who


def test_deleting_an_owner_deletes_its_children(
    kube_controller_manager: KubeApiServer, kube_namespace: str
) -> None:
    """The controller manager's garbage collector follows ownerReferences, as on a cluster."""
    kube = kube_controller_manager
    owner = kube.apply(minimal_rayjob("owner"), namespace=kube_namespace)[0]
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned",
            "namespace": kube_namespace,
            "ownerReferences": [
                {
                    "apiVersion": "ray.io/v1",
                    "kind": "RayJob",
                    "name": "owner",
                    "uid": owner["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "data": {"k": "v"},
    }
    kube.apply(child)
    kube.delete("ray.io/v1", "RayJob", "owner", kube_namespace)

    core = CoreV1Api(kube.admin)

    def child_gone() -> bool:
        try:
            core.read_namespaced_config_map("owned", kube_namespace)
        except ApiException as e:
            return e.status == 404
        return False

    wait_for(child_gone, timeout=30, what="garbage collection of the owned ConfigMap")


def test_deleting_a_namespace_removes_it_and_its_contents(kube_controller_manager: KubeApiServer) -> None:
    kube = kube_controller_manager
    namespace = kube.create_namespace()
    kube.apply(minimal_rayjob("doomed"), namespace=namespace)
    kube.delete_namespace(namespace, wait=True, timeout=60)
    with pytest.raises(ApiException) as gone:
        kube.get("ray.io/v1", "RayJob", "doomed", namespace)
    assert gone.value.status == 404
