"""How `earthops run` refuses bad input: exit 2, one plain-text line per problem naming the file, the
resource and the field, never a traceback — for every manifest in tests/invalid, for references to the
wrong kind or to nothing, and for a store that cannot be reached."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from earthops.control.cli import app

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
INVALID = sorted((ROOT / "tests" / "invalid").glob("*.yaml"))


def expectation(path: Path) -> str:
    text = path.read_bytes().decode("utf-8", errors="replace")
    return next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("# expect:"))


def dry_run(tmp_path: Path, *files: Path, store: str | None = None, env: dict[str, str] | None = None):
    args = ["run", "--dry-run", *[a for f in files for a in ("-f", str(f))], "--store",
            store or (tmp_path / "store").as_uri()]
    return CliRunner().invoke(app, args, env=env)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_every_invalid_manifest_exits_2_with_its_field_as_plain_text(tmp_path, path):
    result = dry_run(tmp_path, path)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert str(path) in result.stderr
    # as it is: square brackets (values, regular expressions, [-90, 90]) are not eaten as markup
    assert expectation(path) in result.stderr, result.stderr
    assert all(line.startswith("invalid: ") for line in result.stderr.splitlines())


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


DATASET = """apiVersion: earthops.dev/v1alpha1
kind: EODataset
metadata: {{name: {name}}}
spec:
  source: {{sample: {{name: synthetic-s1-iceberg}}}}
  bands: [HH]
"""
TUNING = """apiVersion: earthops.dev/v1alpha1
kind: TuningExperiment
metadata: {{name: {name}}}
spec:
  datasetRef: {{name: {dataset}}}
  model: {{name: iceberg-cnn}}
  searchSpace: [{{name: training.learningRate, type: double, min: 0.001, max: 0.1}}]
"""


def test_a_reference_to_the_wrong_kind_names_its_field_the_kind_and_what_was_found(tmp_path):
    tuning = write(tmp_path / "tuning.yaml", TUNING.format(name="tune", dataset="tune"))
    ablation = write(tmp_path / "ablation.yaml", """apiVersion: earthops.dev/v1alpha1
kind: AblationStudy
metadata: {name: study}
spec:
  datasetRef: {name: chips}
  model: {name: iceberg-cnn}
  fromTuning: {name: chips}
  components: {features: [HH]}
---
""" + DATASET.format(name="chips"))
    result = dry_run(tmp_path, tuning, ablation)
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.stderr.splitlines()
    [dataset_ref] = [line for line in lines if "spec.datasetRef.name" in line]
    assert dataset_ref.startswith(f"invalid: {tuning}: TuningExperiment \"tune\": spec.datasetRef.name: ")
    assert "references EODataset 'tune'" in dataset_ref
    assert f'found TuningExperiment "tune" ({tuning}) instead, but spec.datasetRef.name must name an EODataset' \
        in dataset_ref
    [from_tuning] = [line for line in lines if "spec.fromTuning.name" in line]
    assert from_tuning.startswith(f"invalid: {ablation} (document 1): AblationStudy \"study\": spec.fromTuning.name: ")
    assert f'found EODataset "chips" ({ablation} (document 2)) instead' in from_tuning
    assert "must name a TuningExperiment" in from_tuning


def test_a_reference_to_nothing_names_its_field(tmp_path):
    deployment = write(tmp_path / "deployment.yaml", """apiVersion: earthops.dev/v1alpha1
kind: ModelDeployment
metadata: {name: serve}
spec:
  modelRef: {tuningExperiment: no-such-experiment}
""")
    result = dry_run(tmp_path, deployment)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert (f"invalid: {deployment}: ModelDeployment \"serve\": spec.modelRef.tuningExperiment: references "
            "TuningExperiment 'no-such-experiment', which is neither in the given manifests nor in the store; "
            "nothing named 'no-such-experiment' is in namespace default") in result.stderr


@pytest.mark.parametrize("dry", [True, False])
def test_an_unreachable_store_exits_2_naming_it(tmp_path, dry):
    dataset = write(tmp_path / "dataset.yaml", DATASET.format(name="chips"))
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
           "EARTHOPS_STORE_RETRY_SECONDS": "0.5"}  # the default window (60 s) for a test of the message
    args = ["run", *(["--dry-run"] if dry else []), "-f", str(dataset), "--store", "s3://bucket/prefix"]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output and result.stdout == ""
    assert result.stderr.startswith("error: --store s3://bucket/prefix: cannot read the resources already run there")
    assert "unreachable (retried for 0.5 s, EARTHOPS_STORE_RETRY_SECONDS)" in result.stderr


def test_a_store_that_cannot_be_opened_exits_2(tmp_path):
    result = dry_run(tmp_path, write(tmp_path / "d.yaml", DATASET.format(name="chips")), store="ftp://host/x")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "error: --store: store ftp://host/x: unsupported scheme 'ftp'; accepted: file://, s3://" in result.stderr


def test_yaml_aliases_that_expand_forever_or_enormously_are_refused(tmp_path):
    head = "apiVersion: earthops.dev/v1alpha1\nkind: EODataset\nmetadata: {name: a}\n"
    recursive = write(tmp_path / "recursive.yaml", head + "spec: &a {x: *a}\n")
    levels = ["x0: &x0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [
        f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 10)}]" for i in range(1, 8)]  # 10**8 values
    bomb = write(tmp_path / "bomb.yaml", head + "\n".join(levels) + "\n")
    for path in (recursive, bomb):
        result = dry_run(tmp_path, path)
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert f"invalid: {path}: the document is nested deeper than 200 levels or holds more than" in result.stderr


@pytest.mark.parametrize(("change", "outcome"), [
    ({"maxTrials": "12"}, "spec.maxTrials: Input should be a valid integer (got '12'); text is not converted"),
    ({"maxFailedTrials": 2.0}, ""),  # the server's schema takes a whole float as an integer ...
    ({"maxTrials": 12.0}, "spec.maxConcurrentTrials: maxConcurrentTrials must be <= maxTrials (the API "
     "server cannot evaluate this rule with maxTrials written as a decimal number"),  # ... its CEL rules cannot
    ({"maxTrials": 2.0**53}, "spec.maxTrials: Input should be a valid integer"),
    ({"maxFailedTrials": 2**64}, "spec.maxFailedTrials: Input should be a valid integer"),
    ({"timeout": None}, ""),  # null: left out
    ({"datasetRef": None}, "spec.datasetRef: Field required"),
])
def test_numbers_and_nulls_are_read_as_the_api_server_reads_them(tmp_path, change, outcome):
    import yaml

    from earthops.api import ManifestError, parse_resource

    doc = yaml.safe_load((ROOT / "examples/ship-iceberg/02-tuning.yaml").read_text())
    doc["spec"].update(change)
    try:
        parse_resource(doc, "x.yaml")
        problems = ""
    except ManifestError as exc:
        problems = str(exc)
    assert (outcome in problems) if outcome else problems == "", problems


def test_a_null_in_a_map_of_constrained_strings_is_left_out_as_the_api_server_prunes_it():
    """``assets: {B04: null}``: the server prunes the null value of a non-nullable map entry and
    accepts the document (found by the differential test); so does the in-process path."""
    import yaml

    from earthops.api import parse_resource

    doc = yaml.safe_load((ROOT / "examples/stac-api/01-dataset.yaml").read_text())
    doc["spec"]["source"]["stacApi"]["assets"] = {"B02": "blue", "B04": None}
    resource = parse_resource(doc, "x.yaml")
    assert resource.spec.source.stac_api.assets == {"B02": "blue"}
