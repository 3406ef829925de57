"""What `earthops run` prints about a run when its output is not a terminal (a CI log, `make demo | cat`):
plain lines per stage and per finished trial, a progress line whenever nothing else was printed for a
while (a fake clock here), the trial table, and the line that ends a run."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from earthops.api.runtime import RuntimeStatus
from earthops.control import display

pytestmark = pytest.mark.unit

OBJECTIVE = {"metric": "val_accuracy", "goal": "maximize", "value": "last", "column": "val_accuracy_last", "ranks": True}


def trial(id_: str, state: str, value: float | None, epochs: int, seconds: float, **params: str) -> dict:
    return {"id": id_, "state": state, "parameters": params, "objective": value, "best": value, "epochs": epochs,
            "seconds": seconds, "error": None}


def status(stages: list[str], done: int, trials: list[dict], message: str = "") -> RuntimeStatus:
    return RuntimeStatus(phase="Running", run_id="g1-x", stage=stages[-1], stages=stages, message=message,
                         progress={"done": done, "total": 12, "unit": "trials"}, updated_at=datetime.now(UTC),
                         detail={"objective": OBJECTIVE, "epochs": 6, "trials": trials})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_per_stage_per_finished_trial_and_progress_when_quiet():
    clock, lines = Clock(), []
    log = display.RunLog(lines.append, every=20, clock=clock)
    log.start("TuningExperiment default/iceberg-tuning")
    assert lines == ["TuningExperiment default/iceberg-tuning: started"]
    clock.now += 5
    log.update(None)  # the runtime has not written its status yet
    assert len(lines) == 1
    clock.now += 15
    log.update(None)
    assert lines[-1] == "TuningExperiment default/iceberg-tuning: starting, 20 s so far"

    running = [trial("a_00000", "running", 0.8, 1, 9.5, **{"model.kernelSize": "3"})]
    # two stages since the last read (the first was short): a line for each, once
    stages = ["checking the search space, the dataset and the model", "running trials"]
    log.update(status(stages, 0, running, "0/12 trials done (1 running)"))
    log.update(status(stages, 0, running, "0/12 trials done (1 running)"))
    assert lines[-2:] == ["TuningExperiment default/iceberg-tuning: checking the search space, the dataset and the model",
                          "TuningExperiment default/iceberg-tuning: running trials"]
    assert sum("running trials" in line for line in lines) == 1
    finished = [trial("a_00000", "stopped", 0.9958, 2, 31.0, **{"model.kernelSize": "3", "model.dropout": "0.12"}),
                trial("a_00001", "running", None, 0, 0.0)]
    log.update(status(stages, 1, finished))
    log.update(status(stages, 1, finished))  # seen again: not printed again
    assert lines[-1] == ("  trial a_00000 stopped after 2/6 epochs in 31 s: model.kernelSize=3 model.dropout=0.12; "
                         "val_accuracy (last epoch) 0.9958")
    assert sum("a_00000" in line for line in lines) == 1 and not any("a_00001" in line for line in lines)

    # a long quiet stretch, polled every half second: a progress line at least every `every` seconds
    before = len(lines)
    stamps = []
    for _ in range(2 * 300):
        clock.now += 0.5
        log.update(status(stages, 1, finished, "1/12 trials done (1 running)"))
        if len(lines) > before:
            stamps.append(clock.now)
            before = len(lines)
    assert len(stamps) == 300 // 20
    assert lines[-1] == "TuningExperiment default/iceberg-tuning: 1/12 trials, 5 min 20 s so far, 1/12 trials done (1 running)"


def test_the_trial_table_says_which_objective_value_it_shows():
    header, rows, note = display.trial_table({"objective": OBJECTIVE, "epochs": 6, "trials": [
        trial("a_00000", "stopped", 0.9958, 2, 31.0, **{"model.kernelSize": "3"})]})
    assert header == ["TRIAL", "STATE", "PARAMETERS", "VAL_ACCURACY (LAST EPOCH)", "EPOCHS", "DURATION"]
    assert rows == [["a_00000", "stopped", "model.kernelSize=3", "0.9958", "2/6", "31 s"]]
    assert note == "val_accuracy (maximize): each trial's value at its last epoch (val_accuracy_last in the report); " \
                   "it ranks the trials"
    assert display.trial_table({"trials": []}) is None and display.trial_table(None) is None


def test_the_line_that_ends_a_run_names_its_duration_and_the_step_times_in_its_message():
    done = {"phase": "Succeeded", "startTime": "2026-01-01T10:00:00Z", "completionTime": "2026-01-01T10:00:25Z",
            "message": "1600 chips from 1600 scenes (scene processing 11.4 s)", "observedGeneration": 1}
    assert display.run_line("EODataset default/c", done) == (
        "EODataset default/c: Succeeded, the run took 25 s: 1600 chips from 1600 scenes (scene processing 11.4 s)")
    assert display.run_line("EODataset default/c", done, skipped=True) == \
        "EODataset default/c: unchanged (Succeeded for generation 1)"
    assert [display.duration_text(s) for s in (8.25, 25, 185, 3725, None)] == \
        ["8.2 s", "25 s", "3 min 05 s", "1 h 02 min", ""]


def test_describe_shows_the_run_duration_and_the_chips_per_split():
    doc = {"apiVersion": "earthops.dev/v1alpha1", "kind": "EODataset",
           "metadata": {"name": "c", "namespace": "default", "generation": 1}, "spec": {},
           "status": {"phase": "Succeeded", "startTime": "2026-01-01T10:00:00Z",
                      "completionTime": "2026-01-01T10:00:25Z",
                      "chips": {"train": 1113, "validation": 244, "test": 243, "total": 1600}}}
    lines = display.describe(doc).splitlines()
    assert "  Run Duration:         25 s" in lines
    assert "  Chips:                1600 (train 1113, validation 244, test 243)" in lines
