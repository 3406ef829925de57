"""The operator's declared Kubernetes API calls (earthops.control.handlers.apicalls) are the calls its code
makes: every client call in handlers/k8s.py is declared for its function and every declaration is made
(read from the source), and kopf's part matches what kopf was registered for and the resources kopf
itself names. The chart is checked against the same table in tests/unit/test_chart.py, and on a real API
server in tests/integration/test_rbac_psa.py."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from earthops.api import GROUP, KINDS
from earthops.control.handlers import apicalls, k8s
from earthops.control.reconcile.rayjob import owner_reference, runs_as_rayjob, serves

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
HANDLERS = Path(k8s.__file__).parent
#: kubernetes client method prefix -> RBAC verb
VERBS = {"create": "create", "read": "get", "get": "get", "list": "list", "delete": "delete", "patch": "patch",
         "replace": "update"}
CLIENT_METHOD = re.compile(rf"^({'|'.join(VERBS)})_(?:namespaced_)?([a-z_]+?)(_status)?$")

Call = tuple[str, str, str]  # (API group, resource, verb)


def _declared(site: str) -> set[Call]:
    return {(c.group, r, v) for c in apicalls.CALLS if c.site == site for r in c.resources for v in c.verbs
            if not r.endswith("/finalizers")}


def _children_named(fn: ast.FunctionDef) -> list[str]:
    """The child kinds a k8s.py function reaches: those its ``_plural(kind, among=(...))`` names, else all."""
    for node in ast.walk(fn):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_plural":
            among = next((k.value for k in node.keywords if k.arg == "among"), None)
            if among is not None:
                return list(ast.literal_eval(among))
    return list(apicalls.CHILDREN)


def _client_calls(fn: ast.FunctionDef) -> set[Call]:
    """The (group, resource, verb) of each kubernetes client call in a function of k8s.py."""
    source = ast.unparse(fn)
    found: set[Call] = set()
    for node in ast.walk(fn):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        match = CLIENT_METHOD.match(node.func.attr)
        if not match or ast.unparse(node.func.value) == "client.Configuration":  # the client's settings, no request
            continue
        verb, what, status = VERBS[match[1]], match[2], match[3] or ""
        if what == "custom_object":
            args = " ".join(ast.unparse(a) for a in node.args)
            if "KINDS[" in args and ".plural" in args:  # an earthops kind, by name
                targets = [(GROUP, info.plural) for info in KINDS.values()]
            else:
                assert "_plural(" in source, f"{fn.name}: a custom-object call not through _plural(): {ast.unparse(node)}"
                targets = [(apicalls.CHILDREN[k].group, apicalls.CHILDREN[k].plural) for k in _children_named(fn)]
        else:
            assert "CoreV1Api(" in source, f"{fn.name}: {node.func.attr} of an API class this test cannot map"
            targets = [("", what.replace("_", "") + "s")]
        found |= {(group, resource + ("/status" if status else ""), verb) for group, resource in targets}
    return found


def _functions() -> dict[str, ast.FunctionDef]:
    tree = ast.parse(Path(k8s.__file__).read_text())
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def test_every_client_call_is_declared_and_every_declaration_is_a_call() -> None:
    functions = _functions()
    sites = {c.site.removeprefix("k8s.") for c in apicalls.CALLS if c.site.startswith("k8s.")}
    assert sites <= set(functions), f"declared call sites that k8s.py does not have: {sites - set(functions)}"
    for name, fn in functions.items():
        made, declared = _client_calls(fn), _declared(f"k8s.{name}")
        assert made == declared, (f"k8s.{name}: calls {sorted(made)}, declared {sorted(declared)} "
                                  "(apicalls.CALLS must list exactly the calls a function makes)")
    # the table reaches every function that talks to the API server
    assert {n for n, fn in functions.items() if _client_calls(fn)} == sites


def test_the_scan_sees_calls() -> None:
    """The source scan itself: it finds the calls it must (or every check above would pass vacuously)."""
    calls = _client_calls(_functions()["create_if_absent"])
    assert calls == {("", "configmaps", "create"), ("ray.io", "rayjobs", "create"),
                     ("serving.kserve.io", "inferenceservices", "create")}
    # a function for some children only (_plural(kind, among=...)) is scanned for those
    assert _client_calls(_functions()["list_custom"]) == {("ray.io", "rayjobs", "list")}
    assert _client_calls(_functions()["replace_custom"]) == {("serving.kserve.io", "inferenceservices", "update")}
    assert ("", "secrets", "get") in _client_calls(_functions()["secret_env"])
    planted = ast.parse("def f():\n    client.CoreV1Api(_api()).list_namespaced_secret('ns')\n").body[0]
    assert _client_calls(planted) == {("", "secrets", "list")}


def test_only_k8s_talks_to_the_api_server() -> None:
    """The other handler modules reach Kubernetes through k8s.py (or kopf): no client of their own."""
    for path in sorted(HANDLERS.glob("*.py")):
        if path.name == "k8s.py":
            continue
        text = path.read_text()
        assert not re.search(r"^\s*(from|import) kubernetes\b", text, re.M), path.name
        assert not re.search(r"\b(CoreV1Api|CustomObjectsApi|ApiClient)\b", text), path.name


def test_kopf_watches_exactly_the_declared_kinds() -> None:
    """kopf lists, watches and patches (annotations, status) every kind a handler is registered for."""
    import kopf

    from earthops.control.handlers import kinds  # noqa: F401 - registers the handlers with kopf

    registry = kopf.get_default_registry()
    handlers = [*registry._changing.get_all_handlers(), *registry._spawning.get_all_handlers(),
                *registry._watching.get_all_handlers()]
    watched = {(h.selector.group, h.selector.plural or h.selector.any_name) for h in handlers}
    assert watched == {(GROUP, info.plural) for info in KINDS.values()}
    kopf_calls = _declared("kopf")
    for group, plural in watched:
        assert {(group, plural, "list"), (group, plural, "watch"), (group, plural, "patch"),
                (group, f"{plural}/status", "patch")} <= kopf_calls, plural
    declared_kinds = {(g, r) for g, r, _ in kopf_calls if g == GROUP and "/" not in r}
    assert declared_kinds == watched, "a kind declared as watched by kopf that no handler is registered for"


def test_events_are_declared_where_handlers_post_them() -> None:
    posting = [p.name for p in HANDLERS.glob("*.py") if re.search(r"\bkopf\.(info|warn|event|exception)\(", p.read_text())]
    assert posting, "no handler posts events any more: drop the events entry"
    assert ("", "events", "create") in _declared("kopf")


def test_kopf_framework_resources_are_named_as_kopf_names_them() -> None:
    """CRDs, namespaces and peering: the resources kopf's own code observes (not a guess at their names)."""
    from kopf._cogs.structs import references

    framework = {(c.group, r) for c in apicalls.CALLS if c.site == "kopf" and c.group != GROUP for r in c.resources}
    kopf_names = {(s.group, s.plural or s.any_name) for s in (references.CRDS, references.NAMESPACES,
                                                              references.EVENTS, references.CLUSTER_PEERINGS_K,
                                                              references.NAMESPACED_PEERINGS_K)}
    assert framework == kopf_names


def test_finalizers_only_for_kinds_that_own_children() -> None:
    """update on <kind>/finalizers is what blockOwnerDeletion on the children needs (when the
    OwnerReferencesPermissionEnforcement admission plugin runs): only the kinds that have children."""
    [entry] = [c for c in apicalls.CALLS if any(r.endswith("/finalizers") for r in c.resources)]
    assert entry.site == "k8s.create_if_absent" and entry.verbs == ("update",)
    owners = [kind for kind in KINDS if runs_as_rayjob(kind) or serves(kind)]
    assert entry.resources == tuple(f"{KINDS[k].plural}/finalizers" for k in owners)
    assert apicalls.OWNERS == tuple(KINDS[k].plural for k in owners)
    from earthops.api import load_manifests

    dataset = load_manifests([ROOT / "examples/ship-iceberg/01-dataset.yaml"])[0]
    dataset = dataset.model_copy(update={"metadata": dataset.metadata.model_copy(update={"uid": "u"})})
    assert owner_reference(dataset)["blockOwnerDeletion"] is True


@pytest.mark.parametrize("all_namespaces", [False, True])
@pytest.mark.parametrize("peering", [False, True])
def test_rules_per_mode(all_namespaces: bool, peering: bool) -> None:
    rules = apicalls.rules(all_namespaces=all_namespaces, peering=peering)
    everything = rules["cluster"] | rules["namespace"]
    assert everything[("", "secrets")] == {"get"}
    assert everything[("ray.io", "rayjobs")] == {"create", "get", "list", "delete"}
    assert everything[("", "configmaps")] == {"create", "list", "delete"}
    assert everything[("serving.kserve.io", "inferenceservices")] == {"create", "get", "update"}
    assert not {r for r in everything if r[1] in {"rayclusters", "deployments", "pods"}}
    assert (("", "namespaces") in rules["cluster"]) is (not all_namespaces)
    peerings = {r for r in everything if r[0] == "kopf.dev"}
    if not peering:
        assert not peerings
    else:
        assert peerings == {("kopf.dev", "clusterkopfpeerings" if all_namespaces else "kopfpeerings")}
    if all_namespaces:
        assert rules["namespace"] == {}
    else:
        assert set(rules["cluster"]) <= {("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces")}


def test_docs_explain_every_grant() -> None:
    """docs/helm.md's RBAC table names every declared resource."""
    doc = (ROOT / "docs" / "helm.md").read_text()
    section = doc.split("## RBAC", 1)[1].split("\n## ", 1)[0]
    for call in apicalls.CALLS:
        for resource in call.resources:
            kind, _, sub = resource.partition("/")
            assert f"`{kind}`" in section and (not sub or f"`/{sub}`" in section), resource
