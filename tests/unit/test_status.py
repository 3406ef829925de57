"""The one status derivation and the condition semantics."""

from datetime import UTC, datetime, timedelta

import pytest

from earthops.api import KINDS
from earthops.api.runtime import RuntimeStatus
from earthops.control.status import Blocker, Execution, Met, derive, get_condition, set_condition

pytestmark = pytest.mark.unit
T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
DS = KINDS["EODataset"]


def rt(phase, **kw):
    return RuntimeStatus(phase=phase, run_id="g1-abc", generation=kw.pop("generation", 1), updated_at=T0, **kw)


def test_last_transition_time_moves_only_when_status_changes():
    c = set_condition([], "Ready", "False", "Pending", "waiting", at=T0)
    c = set_condition(c, "Ready", "False", "Running", "busy", at=T0 + timedelta(minutes=5))
    ready = get_condition(c, "Ready")
    assert ready["lastTransitionTime"] == "2026-11-24T12:00:00Z" and ready["reason"] == "Running"
    c = set_condition(c, "Ready", "True", "Succeeded", at=T0 + timedelta(minutes=9), generation=2)
    ready = get_condition(c, "Ready")
    assert ready["lastTransitionTime"] == "2026-11-24T12:09:00Z" and ready["observedGeneration"] == 2
    assert len(c) == 1


@pytest.mark.parametrize(
    "execution, runtime, phase, reason",
    [
        (Execution("Pending"), None, "Pending", "Pending"),
        (Execution("Running"), None, "Running", "Running"),
        (Execution("Pending"), rt("Running"), "Running", "Running"),
        (Execution("Succeeded"), rt("Succeeded"), "Succeeded", "Succeeded"),
        (Execution("Succeeded"), rt("Running"), "Failed", "NoResults"),
        (Execution("Succeeded"), None, "Failed", "NoResults"),
        (Execution("Running"), rt("Failed", reason="InvalidSource", message="no scenes"), "Failed", "InvalidSource"),
        (Execution("Failed", "DeadlineExceeded", "too slow"), rt("Running"), "Failed", "DeadlineExceeded"),
        (Execution("Succeeded"), rt("Succeeded", generation=0), "Failed", "NoResults"),  # stale status.json ignored
    ],
)
def test_phase_from_execution_and_runtime(execution, runtime, phase, reason):
    status = derive(DS, generation=1, previous=None, execution=execution, runtime=runtime, at=T0)
    assert status["phase"] == phase
    ready = get_condition(status["conditions"], "Ready")
    assert ready["reason"] == reason
    assert ready["status"] == ("True" if phase == "Succeeded" else "False")
    assert status["observedGeneration"] == 1


def test_deployments_are_ready_not_succeeded():
    status = derive(KINDS["ModelDeployment"], generation=3, previous=None, execution=Execution("Succeeded"),
                    runtime=rt("Succeeded", generation=3), at=T0)
    assert status["phase"] == "Ready"
    assert get_condition(status["conditions"], "Ready")["status"] == "True"


def test_results_and_progress_are_projected():
    runtime = rt("Running", progress={"done": 3, "total": 10, "unit": "scenes"},
                 results={"scenes": {"total": 10, "processed": 3}})
    status = derive(DS, generation=1, previous=None, execution=Execution("Running", start_time=T0), runtime=runtime, at=T0)
    assert status["progress"] == "3/10 scenes"
    assert status["scenes"]["processed"] == 3 and status["runId"] == "g1-abc"
    assert status["startTime"] == "2026-11-24T12:00:00Z"


def test_a_runtime_reporting_unknown_fields_fails_clearly():
    runtime = rt("Succeeded", results={"chips": {"train": "many"}})
    status = derive(DS, generation=1, previous=None, execution=Execution("Succeeded"), runtime=runtime, at=T0)
    assert status["phase"] == "Failed"
    assert get_condition(status["conditions"], "Ready")["reason"] == "InvalidRuntimeStatus"
    assert "chips.train" in status["message"]


def test_blockers_hold_the_resource_with_a_named_condition():
    blocker = Blocker("DatasetReady", "DatasetNotReady", "EODataset 'iceberg-chips' is Running")
    status = derive(KINDS["TuningExperiment"], generation=1, previous=None, execution=Execution("Pending"),
                    blockers=(blocker,), at=T0)
    assert status["phase"] == "Pending"
    assert get_condition(status["conditions"], "DatasetReady")["reason"] == "DatasetNotReady"
    assert get_condition(status["conditions"], "Ready")["reason"] == "DatasetNotReady"
    failed = derive(KINDS["TuningExperiment"], generation=1, previous=status, execution=Execution("Pending"),
                    blockers=(Blocker("DatasetReady", "DatasetFailed", "it failed", failed=True),), at=T0)
    assert failed["phase"] == "Failed"


TEX = KINDS["TuningExperiment"]


def test_a_met_dependency_turns_its_condition_true_and_stays_through_the_run():
    waiting = derive(TEX, generation=1, previous=None, execution=Execution("Pending"),
                     blockers=(Blocker("DatasetReady", "DatasetNotReady", "EODataset 'chips' not found"),), at=T0)
    started = derive(TEX, generation=1, previous=waiting, execution=Execution("Pending", "RayClusterStarting"),
                     met=(Met("DatasetReady", "EODataset 'chips' is Succeeded"),), at=T0 + timedelta(minutes=2))
    cond = get_condition(started["conditions"], "DatasetReady")
    assert (cond["status"], cond["reason"], cond["lastTransitionTime"]) == ("True", "DatasetReady", "2026-11-24T12:02:00Z")
    assert started["phase"] == "Pending" and get_condition(started["conditions"], "Ready")["reason"] == "RayClusterStarting"
    running = derive(TEX, generation=1, previous=started, execution=Execution("Running"), runtime=rt("Running"), at=T0)
    assert get_condition(running["conditions"], "DatasetReady")["status"] == "True"


def test_tuning_results_are_projected_and_live_detail_is_not():
    results = {"trials": {"pending": 10, "running": 2, "succeeded": 3, "stopped": 1, "failed": 0},
               "bestTrial": {"id": "t-0003", "metric": 0.91, "parameters": {"model.dropout": "0.2"}},
               "bestMetric": 0.91, "registeredModel": {"name": "iceberg", "version": "v2", "uri": "s3://b/models/v2"},
               "report": "s3://b/experiments/default/iceberg/g1-abc"}
    runtime = rt("Succeeded", progress={"done": 16, "total": 16, "unit": "trials"}, results=results,
                 detail={"trials": [{"id": "t-0003", "state": "TERMINATED", "parameters": {}, "metric": 0.91, "epoch": 8}]})
    status = derive(TEX, generation=1, previous=None, execution=Execution("Succeeded"), runtime=runtime, at=T0)
    assert status["phase"] == "Succeeded" and status["progress"] == "16/16 trials"
    assert {k: status[k] for k in results} == results
    assert "detail" not in status and "trials" not in status.get("conditions", [{}])[0]


@pytest.mark.parametrize("results, fragment", [
    ({"best_metric": 0.9}, "does not have: best_metric (accepted: bestMetric, bestTrial, registeredModel, report, trials)"),
    ({"phase": "Succeeded", "trials": {"running": 1}}, "does not have: phase"),  # common fields are the control plane's
    ({"bestTrial": {"id": "t1"}}, "bestTrial.metric"),
])
def test_a_tuning_runtime_with_a_misnamed_result_fails_clearly(results, fragment):
    runtime = rt("Running", results=results)
    status = derive(TEX, generation=1, previous=None, execution=Execution("Running"), runtime=runtime, at=T0)
    assert status["phase"] == "Failed" and fragment in status["message"], status["message"]
    assert get_condition(status["conditions"], "Ready")["reason"] == "InvalidRuntimeStatus"
    assert "trials" not in status
