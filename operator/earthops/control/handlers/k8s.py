"""Kubernetes I/O of the handlers: apply children (RayJobs, InferenceServices), read them and Secrets
(kubernetes client).

The handlers' only Kubernetes client. Each function's calls are declared in
:data:`earthops.control.handlers.apicalls.CALLS` (the source of the chart's RBAC); a new call needs its
entry there, and tests/unit/test_rbac.py fails until it has one.
"""

from __future__ import annotations

import base64
from typing import Any

from kubernetes import client, config
from kubernetes.client import ApiException

from earthops.control.handlers.apicalls import CHILDREN

#: Threads kopf runs the (synchronous) handlers and timers in, and connections the one API client keeps
#: open. The handlers wait on the API server, not on the CPU: with kopf's default (CPUs + 4 threads) and
#: a new client, so a new TLS connection, per call, 500 resources went through at ~5.5 a second while
#: the operator used a fifth of a core.
HANDLER_THREADS = 32
_api_client: client.ApiClient | None = None


def login() -> None:
    """In-cluster config in a pod, else the kubeconfig (KUBECONFIG / ~/.kube/config); then the one API
    client of the process (kept-alive connections, up to :data:`HANDLER_THREADS`)."""
    global _api_client
    if _api_client is not None:
        return
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = HANDLER_THREADS
    _api_client = client.ApiClient(configuration)


def _api() -> client.ApiClient:
    login()
    assert _api_client is not None
    return _api_client


def _plural(kind: str, among: tuple[str, ...] = tuple(CHILDREN)) -> tuple[str, str, str]:
    """(group, version, plural) of a child kind; only the declared children are reachable, and a function
    that is for some of them only names them in ``among`` (tests/unit/test_rbac.py reads it: its calls
    are declared for those)."""
    if kind not in among:
        raise ValueError(f"{kind} is not one of {', '.join(among)}")
    child = CHILDREN[kind]
    return child.group, child.version, child.plural


class KindNotServed(LookupError):
    """The API server does not serve a child's kind: its operator (KubeRay, KServe) is not installed."""


def create_if_absent(obj: dict[str, Any]) -> bool:
    """Create ``obj``; True if created, False if it already existed (children are immutable per run).
    :class:`KindNotServed` when the cluster has no such kind (404 on the collection)."""
    ns = obj["metadata"]["namespace"]
    try:
        if obj["kind"] == "ConfigMap":
            client.CoreV1Api(_api()).create_namespaced_config_map(ns, obj, field_manager="earthops")
        else:
            group, version, plural = _plural(obj["kind"])
            client.CustomObjectsApi(_api()).create_namespaced_custom_object(group, version, ns, plural, obj,
                                                                      field_manager="earthops")
        return True
    except ApiException as exc:
        if exc.status == 409:
            return False
        if exc.status == 404 and obj["kind"] in CHILDREN:
            child = CHILDREN[obj["kind"]]
            raise KindNotServed(f"this cluster does not serve {child.plural}.{child.group}/{child.version}: "
                                f"install {'KServe' if child.group == 'serving.kserve.io' else 'KubeRay'}") from None
        raise


def get_custom(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    group, version, plural = _plural(kind)
    try:
        return client.CustomObjectsApi(_api()).get_namespaced_custom_object(group, version, namespace, plural, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def replace_custom(obj: dict[str, Any]) -> bool:
    """Replace a child at the resourceVersion it was read at; False if someone wrote it in between (409:
    the next reconcile reads it again)."""
    group, version, plural = _plural(obj["kind"], among=("InferenceService",))
    try:
        client.CustomObjectsApi(_api()).replace_namespaced_custom_object(
            group, version, obj["metadata"]["namespace"], plural, obj["metadata"]["name"], obj, field_manager="earthops")
        return True
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise


def get_earthops(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """An earthops resource (any of the four kinds), or None if it does not exist."""
    from earthops.api import GROUP, KINDS, VERSION

    try:
        return client.CustomObjectsApi(_api()).get_namespaced_custom_object(GROUP, VERSION, namespace, KINDS[kind].plural, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def list_custom(kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
    group, version, plural = _plural(kind, among=("RayJob",))
    return client.CustomObjectsApi(_api()).list_namespaced_custom_object(
        group, version, namespace, plural, label_selector=selector)["items"]


def delete_custom(kind: str, namespace: str, name: str) -> None:
    group, version, plural = _plural(kind, among=("RayJob",))
    try:
        client.CustomObjectsApi(_api()).delete_namespaced_custom_object(
            group, version, namespace, plural, name, body=client.V1DeleteOptions(propagation_policy="Background"))
    except ApiException as exc:
        if exc.status != 404:
            raise


def delete_config_maps(namespace: str, selector: str, keep: str | None, owner_uid: str | None = None) -> bool:
    """Delete the ConfigMaps matching ``selector`` but ``keep``, and ``keep`` too if it is not owned by
    ``owner_uid`` (a deleted namesake's, not collected yet); whether ``keep`` was such a one."""
    api = client.CoreV1Api(_api())
    stale = False
    for cm in api.list_namespaced_config_map(namespace, label_selector=selector).items:
        if cm.metadata.name == keep:
            if owner_uid is None or any(ref.uid == owner_uid for ref in cm.metadata.owner_references or []):
                continue
            stale = True
        try:
            api.delete_namespaced_config_map(cm.metadata.name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
    return stale


def secret_env(namespace: str, name: str) -> dict[str, str]:
    """The string data of a Secret (for store credentials)."""
    secret = client.CoreV1Api(_api()).read_namespaced_secret(name, namespace)
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
