"""Every Kubernetes API call the operator makes: the one source of truth of its RBAC.

:data:`CALLS` lists, per call site, the API group, resources and verbs it uses and where it needs them:

- ``k8s.<function>``: the calls of :mod:`earthops.control.handlers.k8s`, the handlers' only Kubernetes
  client. tests/unit/test_rbac.py reads that module's source and checks that these entries are exactly
  the client calls each function makes (an undeclared call, or a declared call no code makes, fails).
- ``kopf``: what kopf does for the handlers registered with it (watching the kinds, patching its
  annotations and the status, posting events) and for itself (discovering resources, namespaces,
  peering); the same test checks the watched kinds against kopf's registry after importing the handlers.

The Helm chart's (Cluster)Roles (charts/earthops/templates/rbac.yaml) grant exactly :func:`rules`:
tests/unit/test_chart.py renders each namespace mode and compares, and tests/integration/test_rbac_psa.py
makes the calls with the chart's ServiceAccount on a real API server and asks it what else is granted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from earthops.api import GROUP, KINDS
from earthops.control.reconcile.rayjob import runs_as_rayjob, serves

#: Where a grant applies: in each watched namespace (cluster-wide when watching all of them), or cluster-wide.
Scope = Literal["namespace", "cluster"]
#: In which namespace mode the call is made.
Mode = Literal["any", "namespaced", "all-namespaces"]
CLUSTER: Scope = "cluster"
NAMESPACE: Scope = "namespace"


@dataclass(frozen=True)
class ApiResource:
    group: str
    version: str
    plural: str


#: The children the operator creates, by kind: the only resources :mod:`~earthops.control.handlers.k8s`'s
#: custom-object functions reach besides the earthops kinds.
CHILDREN: dict[str, ApiResource] = {"RayJob": ApiResource("ray.io", "v1", "rayjobs"),
                                    "InferenceService": ApiResource("serving.kserve.io", "v1beta1", "inferenceservices")}

EARTHOPS = tuple(info.plural for info in KINDS.values())
#: The kinds whose children (RayJobs, InferenceServices) are owned by the resource (``blockOwnerDeletion``).
OWNERS = tuple(info.plural for kind, info in KINDS.items() if runs_as_rayjob(kind) or serves(kind))


@dataclass(frozen=True)
class ApiCall:
    group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    site: str
    why: str
    scope: Scope = NAMESPACE
    mode: Mode = "any"
    peering: bool = False


CALLS: tuple[ApiCall, ...] = (
    # -- kopf, for the handlers of each kind (rayjobs.register, serving.register)
    ApiCall(GROUP, EARTHOPS, ("list", "watch"), "kopf", "watch the four kinds (create/update/resume handlers, timers)"),
    ApiCall(GROUP, EARTHOPS, ("patch",), "kopf", "keep handler progress in kopf.earthops.dev/* annotations"),
    ApiCall(GROUP, tuple(f"{p}/status" for p in EARTHOPS), ("patch",), "kopf", "write the status the handlers derive"),
    ApiCall("", ("events",), ("create",), "kopf", "kopf.info / kopf.warn: events on the resource"),
    # -- the handlers' own calls (handlers/k8s.py)
    ApiCall(GROUP, EARTHOPS, ("get",), "k8s.get_earthops", "read a referenced resource's status (a dataset)"),
    ApiCall("", ("configmaps",), ("create",), "k8s.create_if_absent", "create the run's resource ConfigMap"),
    ApiCall("ray.io", ("rayjobs",), ("create",), "k8s.create_if_absent", "create the run's RayJob"),
    ApiCall("serving.kserve.io", ("inferenceservices",), ("create",), "k8s.create_if_absent",
            "create a ModelDeployment's InferenceService"),
    ApiCall(GROUP, tuple(f"{p}/finalizers" for p in OWNERS), ("update",), "k8s.create_if_absent",
            "children own blockOwnerDeletion references to it (OwnerReferencesPermissionEnforcement)"),
    ApiCall("ray.io", ("rayjobs",), ("get",), "k8s.get_custom", "follow the run's RayJob"),
    ApiCall("serving.kserve.io", ("inferenceservices",), ("get",), "k8s.get_custom",
            "follow a ModelDeployment's InferenceService"),
    ApiCall("serving.kserve.io", ("inferenceservices",), ("update",), "k8s.replace_custom",
            "roll a new model, canary share or scale out (the InferenceService's spec replaced)"),
    ApiCall("ray.io", ("rayjobs",), ("list",), "k8s.list_custom", "find older runs' RayJobs of a resource"),
    ApiCall("ray.io", ("rayjobs",), ("delete",), "k8s.delete_custom", "stop an older run (spec changed)"),
    ApiCall("", ("configmaps",), ("list", "delete"), "k8s.delete_config_maps", "remove older runs' ConfigMaps"),
    ApiCall("", ("secrets",), ("get",), "k8s.secret_env", "read the store Secret named by spec.storage.secretRef"),
    # -- kopf, for itself (kopf._core.reactor.observation, kopf._core.engines.peering)
    ApiCall("apiextensions.k8s.io", ("customresourcedefinitions",), ("list", "watch"), "kopf",
            "notice CRDs of the served kinds installed or changed", scope=CLUSTER),
    ApiCall("", ("namespaces",), ("list", "watch"), "kopf",
            "notice watched namespaces created or deleted (not when serving all)", scope=CLUSTER, mode="namespaced"),
    ApiCall("kopf.dev", ("kopfpeerings",), ("list", "watch", "patch"), "kopf",
            "peering: record this replica, see the others", mode="namespaced", peering=True),
    ApiCall("kopf.dev", ("clusterkopfpeerings",), ("list", "watch", "patch"), "kopf",
            "peering: record this replica, see the others", scope=CLUSTER, mode="all-namespaces", peering=True),
)

Rules = dict[tuple[str, str], frozenset[str]]


def calls(*, all_namespaces: bool, peering: bool) -> list[ApiCall]:
    """The calls made in one namespace mode, with or without peering."""
    mode = "all-namespaces" if all_namespaces else "namespaced"
    return [c for c in CALLS if c.mode in ("any", mode) and (peering or not c.peering)]


def merge(entries: Iterable[ApiCall]) -> Rules:
    """(API group, resource) -> verbs."""
    out: dict[tuple[str, str], set[str]] = {}
    for c in entries:
        for resource in c.resources:
            out.setdefault((c.group, resource), set()).update(c.verbs)
    return {k: frozenset(v) for k, v in out.items()}


def rules(*, all_namespaces: bool, peering: bool) -> dict[Scope, Rules]:
    """What the operator's ServiceAccount must be granted: cluster-wide, and in each watched namespace
    (all of it cluster-wide when watching all namespaces)."""
    made = calls(all_namespaces=all_namespaces, peering=peering)
    if all_namespaces:
        return {CLUSTER: merge(made), NAMESPACE: {}}
    return {CLUSTER: merge(c for c in made if c.scope == CLUSTER),
            NAMESPACE: merge(c for c in made if c.scope == NAMESPACE)}
