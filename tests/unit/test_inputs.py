"""Inputs of a run: resolving references to published runs, and the runtime command's --input flags."""

import subprocess
import sys
from pathlib import Path

import pytest

from earthops.api import load_manifests
from earthops.control.reconcile.inputs import resolve_inputs
from earthops.core.inputs import input_args, parse_input_args

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
RUN = "s3://store/datasets/default/iceberg-chips/g1-0123abcd"


@pytest.fixture
def tuning():
    return load_manifests([ROOT / "examples/ship-iceberg/02-tuning.yaml"])[0]


def _lookup(statuses):
    return lambda kind, name: statuses.get((kind, name))


def test_a_ready_dataset_is_resolved_to_its_published_run(tuning):
    resolved = resolve_inputs(tuning, _lookup({("EODataset", "iceberg-chips"): {"phase": "Succeeded", "results": RUN}}),
                              wait=True)
    assert resolved.ready and resolved.inputs == {"dataset": RUN}
    [met] = resolved.met
    assert met.condition == "DatasetReady" and RUN in met.message


@pytest.mark.parametrize("status, message", [
    (None, "EODataset 'iceberg-chips' not found in namespace default"),
    ({}, "EODataset 'iceberg-chips' is not started, not Succeeded"),
    ({"phase": "Running"}, "EODataset 'iceberg-chips' is Running, not Succeeded"),
    ({"phase": "Failed", "results": RUN}, "EODataset 'iceberg-chips' is Failed, not Succeeded"),
    ({"phase": "Succeeded"}, "EODataset 'iceberg-chips' is Succeeded but names no published run"),
])
@pytest.mark.parametrize("wait", [True, False])
def test_a_dataset_that_is_not_ready_blocks(tuning, status, message, wait):
    resolved = resolve_inputs(tuning, _lookup({("EODataset", "iceberg-chips"): status}), wait=wait)
    assert not resolved.ready and resolved.inputs == {} and resolved.met == ()
    [blocker] = resolved.blockers
    assert (blocker.condition, blocker.reason) == ("DatasetReady", "DatasetNotReady")
    assert blocker.message.startswith(message)
    assert blocker.failed is not wait  # the operator waits; a one-shot embedded run fails
    assert blocker.message.endswith("; waiting for it") is wait


def test_a_dataset_references_nothing():
    dataset = load_manifests([ROOT / "examples/ship-iceberg/01-dataset.yaml"])[0]
    assert resolve_inputs(dataset, _lookup({}), wait=False).inputs == {}


def test_input_flags_round_trip():
    args = input_args({"tuning": "file:///s/experiments/x/g1", "dataset": RUN})
    assert args == ["--input", f"dataset={RUN}", "--input", "tuning=file:///s/experiments/x/g1"]
    assert parse_input_args(args[1::2]) == {"dataset": RUN, "tuning": "file:///s/experiments/x/g1"}
    assert parse_input_args(None) == {}
    assert parse_input_args(["dataset=s3://b/k=v"]) == {"dataset": "s3://b/k=v"}  # only the first = splits
    for bad in (["dataset"], ["=s3://b"], ["dataset="], ["dataset=a", "dataset=b"]):
        with pytest.raises(ValueError, match="--input"):
            parse_input_args(bad)


def test_the_runtime_command_refuses_a_malformed_input(tmp_path):
    resource = ROOT / "examples/ship-iceberg/01-dataset.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "earthops_runtime", "run", "--entrypoint", "tests.unit.probe_runtime:succeed",
         "--resource", str(resource), "--store", tmp_path.as_uri(), "--run-key", "k", "--run-id", "g1-x",
         "--input", "dataset"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2 and "--input 'dataset': expected key=URI" in result.stderr
