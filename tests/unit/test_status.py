"""The one status derivation and the condition semantics."""

from datetime import UTC, datetime, timedelta

import pytest

from earthops.api import KINDS
from earthops.api.runtime import RuntimeStatus
from earthops.status import Blocker, Execution, derive, get_condition, set_condition

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
