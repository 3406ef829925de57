"""The contract on a real API server: generated CRDs, examples, invalid manifests, the Helm chart."""

import subprocess
from pathlib import Path

import pytest
import yaml

from earthops.api import KINDS, load_manifests
from tests.infra.earthops_kube import post_yaml

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*/*.yaml"))
INVALID = sorted((ROOT / "tests" / "invalid").glob("*.yaml"))


def expectation(path: Path, key: str) -> str:
    text = path.read_bytes().decode("utf-8", errors="replace")
    return next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(f"# {key}:"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_example_is_accepted_and_defaulted_like_the_models(kube_apiserver, kube_namespace, path):
    doc = yaml.safe_load(path.read_text())
    doc["metadata"]["namespace"] = kube_namespace
    [stored] = kube_apiserver.apply(doc)
    model = load_manifests([path])[0]
    # the server filled in the same defaults as the models (so CEL sees the same object)
    assert stored["spec"] == model.wire()["spec"]


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_every_invalid_manifest_is_rejected_by_the_server_naming_the_field(kube_apiserver, kube_namespace, path):
    body = path.read_bytes()
    kind = next((k for k in KINDS if f"kind: {k}\n".encode() in body), "EODataset")
    status, message = post_yaml(kube_apiserver, kube_namespace, kind, body)  # the file's bytes as they are
    assert status in (400, 422), f"{path.name} was accepted by the server ({status})"
    assert expectation(path, "server") in message, message


def test_immutable_fields_cannot_change_after_start_but_budgets_can(kube_apiserver, kube_namespace):
    doc = yaml.safe_load((ROOT / "examples/ship-iceberg/02-tuning.yaml").read_text())
    doc["metadata"]["namespace"] = kube_namespace
    kube_apiserver.apply(doc)
    name = f"tuningexperiment/{doc['metadata']['name']}"
    grow = kube_apiserver.kubectl("patch", "-n", kube_namespace, name, "--type=merge", "-p",
                                  '{"spec": {"maxTrials": 32}}', check=False)
    assert grow.returncode == 0, grow.stderr
    change = kube_apiserver.kubectl("patch", "-n", kube_namespace, name, "--type=merge", "-p",
                                    '{"spec": {"algorithm": {"name": "tpe"}}}', check=False)
    assert change.returncode != 0 and "algorithm is immutable" in change.stderr


def test_printer_columns_and_short_names_work_with_kubectl(kube_apiserver, kube_namespace):
    doc = yaml.safe_load((ROOT / "examples/ship-iceberg/01-dataset.yaml").read_text())
    doc["metadata"]["namespace"] = kube_namespace
    kube_apiserver.apply(doc)
    out = kube_apiserver.kubectl("get", "eods", "-n", kube_namespace).stdout
    assert out.split()[:5] == ["NAME", "PHASE", "PROGRESS", "CHIPS", "AGE"]
    assert "iceberg-chips" in kube_apiserver.kubectl("get", "earthops", "-n", kube_namespace).stdout
    explained = kube_apiserver.kubectl("explain", "eodataset.spec.chips.maxNodataFraction").stdout
    assert "Drop chips with more nodata pixels" in explained


def _helm_template(*args: str) -> str:
    from tests.infra.tools import helm

    return subprocess.run([str(helm()), "template", "earthops", str(ROOT / "charts/earthops"), *args],
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize(
    "values",
    [
        ["--set", "watch.namespaces={NS}"],
        ["--set", "watch.allNamespaces=true"],
        ["--set", "watch.namespaces={NS}", "--set", "store.uri=s3://bucket/x", "--set", "store.credentialsSecret=s3"],
    ],
    ids=["namespaced", "all-namespaces", "s3-store"],
)
def test_rendered_chart_passes_a_server_side_dry_run(kube_apiserver, kube_namespace, values):
    rendered = _helm_template("--namespace", kube_namespace, *[v.replace("NS", kube_namespace) for v in values])
    result = kube_apiserver.kubectl("apply", "--dry-run=server", "--server-side", "-n", kube_namespace,
                                    "-f", "-", input=rendered, check=False)
    assert result.returncode == 0, result.stderr
    kinds = {line.split("/")[0] for line in result.stdout.splitlines()}
    assert {"deployment.apps", "serviceaccount", "service"} <= kinds
