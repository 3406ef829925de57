"""Differential test of the contract: the same generated manifests go to the real API server (a
server-side dry-run create with strict field validation, as ``kubectl create --dry-run=server
--validate=strict``) and to the in-process validation (:func:`earthops.api.parse_resource`, what
``earthops run`` and the embedded executor use). Both must accept and refuse the same documents; a
disagreement is a bug on one side, to fix in the contract.

The documents come from :mod:`tests.infra.manifest_strategies` (Hypothesis, with hypothesis-jsonschema
drawing from the CRDs' own schemas): at least ``EARTHOPS_DIFFERENTIAL_DOCUMENTS`` (default 2000)
distinct documents per kind, the same ones on every run (derandomized). One API server session serves
all of them; requests go out in parallel.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, Verbosity, given, settings

from earthops.api import API_VERSION, KINDS, ManifestError, load_manifests, parse_resource
from tests.infra.earthops_kube import post_yaml
from tests.infra.kube import rest
from tests.infra.manifest_strategies import manifest_batches

pytestmark = pytest.mark.integration

DOCUMENTS = int(os.environ.get("EARTHOPS_DIFFERENTIAL_DOCUMENTS", "2000"))
#: A refusal names the resource, then the field path (or the document's kind or apiVersion).
NAMES_A_FIELD = re.compile(r'^generated\.yaml: \S+ "[^"]*": (spec|metadata|kind|apiVersion)([.\[][^:]*)?: \S')


class _Enough(Exception):
    """Raised by the collecting test once it has its documents: Hypothesis stops generating."""


def generate(kind: str, count: int) -> list[dict[str, Any]]:
    """``count`` distinct documents of ``kind`` (canonical JSON decides what is distinct)."""
    seen: dict[str, dict[str, Any]] = {}

    @settings(max_examples=count, phases=[Phase.generate], database=None, deadline=None, derandomize=True,
              verbosity=Verbosity.quiet, suppress_health_check=list(HealthCheck))
    @given(manifest_batches(kind))
    def collect(batch: list[dict[str, Any]]) -> None:
        for doc in batch:
            seen.setdefault(json.dumps(doc, sort_keys=True), doc)
        if len(seen) >= count:
            raise _Enough

    with contextlib.suppress(_Enough):
        collect()
    return list(seen.values())[:count]


def in_process(doc: dict[str, Any]) -> tuple[bool, str]:
    """(accepted, problems) from the in-process validation; any other exception fails the test."""
    try:
        parse_resource(doc, "generated.yaml")
    except ManifestError as exc:
        unnamed = [p for p in exc.problems if not NAMES_A_FIELD.match(p)]
        assert not unnamed, f"a refusal that names no field: {unnamed} for {json.dumps(doc)}"
        return False, "\n".join(exc.problems)
    return True, ""


def on_server(client: Any, path: str, doc: dict[str, Any]) -> tuple[bool, str]:
    """(accepted, message) of a server-side dry-run create with strict field validation."""
    from kubernetes.client import ApiException

    try:
        rest(client, "POST", path, body=doc, query={"dryRun": "All", "fieldValidation": "Strict"})
    except ApiException as exc:
        if exc.status not in (400, 422):
            raise
        try:
            return False, json.loads(exc.body or "{}").get("message") or str(exc.body)
        except ValueError:
            return False, str(exc.body)
    return True, ""


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_api_server_and_the_models_accept_and_refuse_the_same_documents(kube_apiserver, kube_namespace, kind,
                                                                             record_property):
    docs = generate(kind, DOCUMENTS)
    assert len(docs) >= DOCUMENTS, f"only {len(docs)} distinct {kind} documents were generated"
    assert all(d["apiVersion"] == API_VERSION and d["kind"] == kind for d in docs)
    ours = [in_process(d) for d in docs]
    path = kube_apiserver.object_path(API_VERSION, kind, namespace=kube_namespace)
    client = kube_apiserver.admin
    with ThreadPoolExecutor(max_workers=8) as pool:
        theirs = list(pool.map(lambda d: on_server(client, path, d), docs))
    accepted = sum(ok for ok, _ in ours)
    record_property("documents", len(docs))
    record_property("accepted", accepted)
    print(f"{kind}: {len(docs)} documents, {accepted} accepted in-process")  # noqa: T201
    disagreements = [(d, o, t) for d, o, t in zip(docs, ours, theirs) if o[0] != t[0]]
    disagreements.sort(key=lambda x: len(json.dumps(x[0])))
    report = "\n\n".join(
        f"{json.dumps(d)}\n  in-process: {'accepted' if o[0] else o[1]}\n  API server: {'accepted' if t[0] else t[1]}"
        for d, o, t in disagreements[:8])
    assert not disagreements, f"{len(disagreements)} of {len(docs)} {kind} documents disagree:\n\n{report}"
    # the generated documents reach both sides of the valid space
    assert 0.05 * len(docs) < accepted < 0.95 * len(docs), f"{accepted} of {len(docs)} accepted"


#: Plain YAML scalars where YAML readers differ (PyYAML reads YAML 1.1, the API server go-yaml v2),
#: as a sample count, a band name and a resource name.
SCALARS = ["1e3", "1E3", "1e+3", "-1e3", "0x10", "0o17", "017", "0b11", "1_000", "+5", "1.", "5.0", ".5e1", "y", "Y",
           "n", "N", "yes", "no", "on", "off", "true", "True", "FALSE", "~", "null", "Null", "2020-01-01",
           "2020-01-01T00:00:00Z", "12:30", "1:2:3", "09", "-.5", "1.5e3", "1_000.5", "0x_1F", ".inf", "-.Inf",
           ".nan", "99999999999999999999", "'1e3'", "x1e3", "=", "<<"]
YAML_DOC = """apiVersion: earthops.dev/v1alpha1
kind: EODataset
metadata: {{name: {name}}}
spec:
  source: {{sample: {{name: synthetic-s1-iceberg, count: {count}}}}}
  bands: [{band}]
"""


@pytest.mark.parametrize("field", ["count", "band", "name"])
def test_yaml_scalars_are_read_as_the_api_server_reads_them(kube_apiserver, kube_namespace, tmp_path, field):
    disagreements = []
    for scalar in SCALARS:
        values = {"name": "x", "count": "3", "band": "HH", field: scalar}
        path = tmp_path / "scalar.yaml"
        path.write_text(YAML_DOC.format(**values))
        status, message = post_yaml(kube_apiserver, kube_namespace, "EODataset", path.read_bytes())
        try:
            load_manifests([path])
            ours = ""
        except ManifestError as exc:
            ours = "\n".join(exc.problems)
        if (status < 300) != (ours == ""):
            disagreements.append(f"{field}: {scalar}: API server {message or 'accepted'}; in-process {ours or 'accepted'}")
    assert not disagreements, "\n".join(disagreements)
