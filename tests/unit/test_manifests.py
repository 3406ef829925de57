"""Every example is valid; every invalid manifest is rejected with the field named."""

from pathlib import Path

import pytest
import yaml

from earthops.api import KINDS, ManifestError, load_manifests, parse_resource
from earthops.api.manifests import read_documents

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted(p for p in (ROOT / "examples").iterdir() if p.is_dir())
INVALID = sorted((ROOT / "tests" / "invalid").glob("*.yaml"))


def expectation(path: Path, key: str) -> str:
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        if line.startswith(f"# {key}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{path} has no '# {key}:' line")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_every_example_scenario_is_valid(scenario):
    resources = load_manifests([scenario])
    assert resources, f"{scenario} has no resources"


def test_examples_hold_every_kind():
    kinds = {r.kind for s in SCENARIOS for r in load_manifests([s])}
    assert kinds == set(KINDS)


def test_there_are_at_least_twelve_invalid_manifests():
    assert len(INVALID) >= 12


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_manifest_is_rejected_naming_the_field(path):
    with pytest.raises(ManifestError) as exc:
        load_manifests([path])
    message = str(exc.value)
    assert str(path) in message, "the file is named"
    try:
        [(_, doc)] = read_documents(path)
    except ManifestError:
        doc = None  # not UTF-8 or not YAML (a key twice): the message names the file, line and column
    if doc is not None:
        kind = doc["kind"] if isinstance(doc["kind"], str) else "resource"
        assert f'{kind} "{doc["metadata"]["name"]}"' in message, "the resource is named"
    assert expectation(path, "expect") in message
    assert len(exc.value.problems) == 1 or all(str(path) in p for p in exc.value.problems)


def test_all_problems_of_a_run_are_reported_at_once(tmp_path):
    (tmp_path / "a.yaml").write_text((ROOT / "tests/invalid/03-unknown-sample.yaml").read_text())
    (tmp_path / "b.yaml").write_text((ROOT / "tests/invalid/10-unknown-algorithm.yaml").read_text())
    with pytest.raises(ManifestError) as exc:
        load_manifests([tmp_path])
    assert len(exc.value.problems) == 2


def test_duplicate_resources_are_refused(tmp_path):
    text = (ROOT / "examples/ship-iceberg/01-dataset.yaml").read_text()
    (tmp_path / "one.yaml").write_text(text)
    (tmp_path / "two.yaml").write_text(text)
    with pytest.raises(ManifestError, match="also defined in"):
        load_manifests([tmp_path])


@pytest.mark.parametrize(
    "doc, fragment",
    [
        ({"apiVersion": "earthops.dev/v1", "kind": "EODataset", "metadata": {"name": "x"}}, "accepted: earthops.dev/v1alpha1"),
        ({"apiVersion": "earthops.dev/v1alpha1", "kind": "Dataset", "metadata": {"name": "x"}}, "accepted: EODataset"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_wrong_api_version_kind_or_shape(doc, fragment):
    with pytest.raises(ManifestError, match=fragment):
        parse_resource(doc, "x.yaml")


def test_not_yaml_and_missing_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("a: [unclosed")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifests([tmp_path / "bad.yaml"])
    with pytest.raises(ManifestError, match="no such file"):
        load_manifests([tmp_path / "nope.yaml"])


def test_unknown_field_is_named():
    doc = yaml.safe_load((ROOT / "examples/ship-iceberg/02-tuning.yaml").read_text())
    doc["spec"]["maxTrails"] = 3
    with pytest.raises(ManifestError, match=r"spec\.maxTrails: unknown field"):
        parse_resource(doc, "x.yaml")


def test_defaults_are_filled_like_the_server_does():
    r = load_manifests([ROOT / "examples/ship-iceberg/01-dataset.yaml"])[0]
    assert r.spec.grid.crs == "auto-utm"
    assert r.spec.chips.stride is None and r.spec.chips.max_nodata_fraction == 0.1
    assert r.spec.compute.worker_groups[0].name == "workers"
    wire = r.wire()
    assert wire["spec"]["chips"]["maxNodataFraction"] == 0.1, "camelCase on the wire"


@pytest.mark.parametrize(
    "param, ok",
    [
        ({"name": "model.k", "type": "discrete", "values": [3, 5.5]}, True),
        ({"name": "model.k", "type": "discrete", "values": ["three"]}, False),
        ({"name": "model.k", "type": "discrete", "choices": ["3"]}, False),
        ({"name": "model.opt", "type": "categorical", "choices": ["adam", "sgd"]}, True),
        ({"name": "model.opt", "type": "categorical", "values": [1.0]}, False),
        ({"name": "model.opt", "type": "categorical"}, False),
        ({"name": "training.learningRate", "type": "double", "min": 1e-4, "max": 1e-2, "scale": "log"}, True),
        ({"name": "training.epochs", "type": "int", "min": 1}, False),
        ({"name": "learningRate", "type": "double", "min": 0.1, "max": 1}, False),
    ],
)
def test_search_parameter_rules(param, ok):
    from earthops.api.tuning import SearchParameter

    if ok:
        SearchParameter.model_validate(param)
    else:
        with pytest.raises(ValueError):
            SearchParameter.model_validate(param)
