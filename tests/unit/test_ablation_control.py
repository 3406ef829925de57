"""AblationStudy in the control plane: its references (dataset and fromTuning; a failed tuning
experiment fails the study instead of holding it), the exit code of input failures, and the ranked
table `earthops describe ablationstudy` prints."""

from pathlib import Path

import pytest

from earthops.api import KINDS, load_manifests
from earthops.control.display import ablation_ranking
from earthops.control.reconcile.inputs import resolve_inputs
from earthops.control.status import Execution, derive, invalid_input

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
DATASET = "s3://store/datasets/default/iceberg-chips/g1-0123abcd"
TUNING = "s3://store/experiments/default/iceberg-tuning/g1-4567cdef"


@pytest.fixture
def study():
    return load_manifests([ROOT / "examples/ship-iceberg/03-ablation.yaml"])[0]


def _lookup(statuses):
    return lambda kind, name: statuses.get((kind, name))


def test_both_references_become_inputs(study):
    resolved = resolve_inputs(study, _lookup({("EODataset", "iceberg-chips"): {"phase": "Succeeded", "results": DATASET},
                                              ("TuningExperiment", "iceberg-tuning"): {"phase": "Succeeded",
                                                                                       "results": TUNING}}), wait=True)
    assert resolved.ready and resolved.inputs == {"dataset": DATASET, "tuning": TUNING}
    assert {m.condition for m in resolved.met} == {"DatasetReady", "TuningExperimentReady"}
    assert KINDS["AblationStudy"].runtime == "earthops_runtime.ablation:run"


@pytest.mark.parametrize("wait", [True, False])
def test_a_running_tuning_experiment_holds_the_study_and_a_failed_one_fails_it(study, wait):
    ready = {("EODataset", "iceberg-chips"): {"phase": "Succeeded", "results": DATASET}}
    running = resolve_inputs(study, _lookup({**ready, ("TuningExperiment", "iceberg-tuning"): {"phase": "Running"}}),
                             wait=wait)
    [blocker] = running.blockers
    assert (blocker.reason, blocker.failed) == ("TuningExperimentNotReady", not wait)
    failed = resolve_inputs(study, _lookup({**ready, ("TuningExperiment", "iceberg-tuning"): {
        "phase": "Failed", "message": "3 trials failed"}}), wait=wait)
    [blocker] = failed.blockers
    assert (blocker.condition, blocker.reason, blocker.failed) == ("TuningExperimentReady", "TuningExperimentFailed", True)
    assert "TuningExperiment 'iceberg-tuning' failed (3 trials failed)" in blocker.message
    status = derive(KINDS["AblationStudy"], generation=1, previous=None, execution=Execution("Pending"),
                    blockers=failed.blockers, met=failed.met)
    assert status["phase"] == "Failed" and invalid_input(status)
    # a failed dataset still holds a resource in the operator (its owner may run it again)
    dataset = resolve_inputs(study, _lookup({("EODataset", "iceberg-chips"): {"phase": "Failed"}}), wait=True)
    assert [b.failed for b in dataset.blockers] == [False, False]


def test_input_failures_are_told_from_work_failures():
    def status(reason, phase="Failed"):
        return {"phase": phase, "conditions": [{"type": "Ready", "status": "False", "reason": reason}]}

    for reason in ("InvalidSpec", "TuningExperimentFailed", "DatasetNotReady", "TuningExperimentUnusable"):
        assert invalid_input(status(reason)), reason
    for reason in ("TooManyFailedTrials", "RuntimeError", "NoResults"):
        assert not invalid_input(status(reason)), reason
    assert not invalid_input(status("InvalidSpec", phase="Succeeded"))


def test_the_ranked_table():
    summary = {"objective": {"metric": "val_accuracy", "goal": "maximize"}, "repeats": 3,
               "base": {"mean": 0.91, "n": 3},
               "ranking": [{"rank": 1, "component": "HV", "kind": "feature", "n": 3, "delta": -0.1234567,
                            "ciLow": -0.2, "ciHigh": -0.05, "pHolm": 0.012, "significant": True, "permutation": 0.08},
                           {"rank": 2, "component": "dropout", "kind": "layerGroup", "n": 3, "delta": -0.01,
                            "ciLow": -0.04, "ciHigh": 0.02, "pHolm": 0.6, "significant": False}]}
    lines = ablation_ranking(summary).splitlines()
    assert lines[0] == "Ranked components (val_accuracy, maximize; base 0.91 over 3 seeds):"
    assert lines[1].split() == ["RANK", "COMPONENT", "KIND", "PAIRS", "DELTA", "95%", "INTERVAL", "P", "(HOLM)",
                                "EXCLUDES", "0", "PERMUTATION"]
    assert lines[2].split() == ["1", "HV", "feature", "3", "-0.1235", "[-0.2,", "-0.05]", "0.012", "yes", "0.08"]
    assert lines[3].split() == ["2", "dropout", "layerGroup", "3", "-0.01", "[-0.04,", "0.02]", "0.6", "no"]
    one = ablation_ranking({**summary, "repeats": 1, "ranking": [{"rank": 1, "component": "HV", "kind": "feature",
                                                                 "n": 1, "delta": -0.1}]})
    assert "n/a" in one and "one repeat: no interval or p-value" in one
