"""The CRDs are generated from earthops.api and nothing else; check them like a reviewer would."""

from pathlib import Path

import pytest
import yaml

from earthops.api import KINDS
from earthops.control import crds as gen

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("folder", ["crds", "charts/earthops/crds"])
def test_committed_crds_do_not_drift_from_the_models(folder):
    expected = {gen.file_name(i): gen.render(i) for i in KINDS.values()}
    found = {p.name: p.read_text() for p in (ROOT / folder).glob("earthops.dev_*.yaml")}
    assert set(found) == set(expected), f"{folder}: files differ; run `make crds`"
    for name, text in expected.items():
        assert found[name] == text, f"{folder}/{name} drifted from the models: run `make crds`"


def _walk(node, path="$"):
    yield path, node
    for key, child in (node.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.fixture(params=list(KINDS), scope="module")
def crd(request):
    return yaml.safe_load(gen.render(KINDS[request.param]))


def test_crd_names_and_scope(crd):
    info = KINDS[crd["spec"]["names"]["kind"]]
    assert crd["metadata"]["name"] == f"{info.plural}.earthops.dev"
    assert crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["names"]["categories"] == ["earthops"]
    assert crd["spec"]["names"]["shortNames"]
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[0] == "Phase" and columns[-1] == "Age"


def test_schema_is_structural(crd):
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node and "$defs" not in node, path
        assert "nullable" not in node and node.get("default", 0) is not None, path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string") is True, f"{path}: anyOf only for int-or-string"
        if path.count(".") > 1 or path.endswith("[]"):
            assert (
                "type" in node
                or node.get("x-kubernetes-preserve-unknown-fields")
                or node.get("x-kubernetes-int-or-string")
            ), f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path


def test_every_field_has_a_description(crd):
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing = [
        p for p, node in _walk(schema)
        if p.count(".") >= 2 and not p.endswith("[]") and "{" not in p and not node.get("description")
        and not p.startswith("$.metadata")
    ]
    assert not missing, f"fields without a description: {missing}"


def test_status_lets_kopf_write_its_bookkeeping(crd):
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["properties"]["kopf"]["x-kubernetes-preserve-unknown-fields"] is True
    for _, node in _walk(status):
        assert "default" not in node, "status has no defaults: the operator writes every field it means"


def test_cel_rules_and_immutable_fields_are_on_the_server_schema():
    tex = yaml.safe_load(gen.render(KINDS["TuningExperiment"]))
    spec = tex["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = {r["rule"] for r in spec["x-kubernetes-validations"]}
    assert "self.maxConcurrentTrials <= self.maxTrials" in rules
    assert "self.searchSpace == oldSelf.searchSpace" in rules
    space = spec["properties"]["searchSpace"]
    assert space["x-kubernetes-list-type"] == "map" and space["x-kubernetes-list-map-keys"] == ["name"]
    assert space["items"]["x-kubernetes-validations"]


def test_defaults_match_the_models():
    """Defaults the server fills in equal the models' defaults, so CEL sees the same object."""
    from earthops.api.tuning import TuningExperimentSpec

    tex = yaml.safe_load(gen.render(KINDS["TuningExperiment"]))
    props = tex["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    model_defaults = TuningExperimentSpec.model_validate(
        {"datasetRef": {"name": "d"}, "model": {"name": "m"}, "searchSpace": [{"name": "model.x", "type": "categorical", "choices": ["a"]}]}
    ).wire()
    for field in ("training", "earlyStopping", "algorithm", "maxTrials", "maxConcurrentTrials", "compute"):
        assert props[field]["default"] == model_defaults[field], field


def test_cli_prints_the_same_crds(tmp_path):
    from typer.testing import CliRunner

    from earthops.control.cli import app

    result = CliRunner().invoke(app, ["crds"])
    assert result.exit_code == 0, result.output
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert sorted(d["spec"]["names"]["kind"] for d in docs) == sorted(KINDS)
    result = CliRunner().invoke(app, ["crds", "--out", str(tmp_path)])
    assert result.exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(gen.file_name(i) for i in KINDS.values())
