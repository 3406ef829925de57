"""Runtimes used to test the executor plumbing (process, status.json, publication, status).

They do what a kind's runtime does — report progress, publish a run folder, return results — with
tiny work, through the same entrypoint protocol, so the generic machinery is tested before any kind's
real runtime exists."""

from __future__ import annotations

import os

from earthops_runtime.entrypoint import SUMMARY_FILE, Outcome, Runtime
from earthops_runtime.errors import RunFailed


def _replay(resource, summary):
    return Outcome(summary["results"], "already published")


def _succeed(run):
    total = 3
    run.reporter.report(done=0, total=total)
    results = {"scenes": {"total": 3, "processed": 3}, "chips": {"train": 7, "validation": 2, "test": 1}}
    with run.store.publish(run.key) as out:
        for i in range(total):
            out.write_bytes(f"shards/{i:03d}.bin", bytes([i]) * 10)
            run.reporter.report(done=i + 1)
        out.write_json("stats.json", {"bands": list(run.resource.spec.bands)})
        out.write_json(SUMMARY_FILE, {"results": results})
    return Outcome(results, "3 scenes", done=3, total=3)


def _crash(run):
    run.reporter.report(done=1, total=2)
    raise RuntimeError("scene 2 is corrupt")


def _refuse(run):
    run.reporter.report(done=1, total=2)
    raise RunFailed("ValidationFailed", "band B04 has 80% NaN")


def _exit_hard(run):
    run.reporter.report(done=0, total=1)
    os._exit(9)


def _tune(run):
    """A TuningExperiment's shape: reads its dataset input, reports trials live (detail as
    earthops_runtime.tuning.report.trials_detail makes it), and ends with the final trial table."""
    dataset = run.input("dataset", "spec.datasetRef", "?")

    def detail(first_state, first_epochs, first_value):
        return {"objective": {"metric": "val_accuracy", "goal": "maximize", "value": "last"}, "epochs": 3,
                "trials": [{"id": "t-0001", "state": first_state, "parameters": {"model.dropout": "0.25"},
                            "objective": first_value, "best": first_value, "epochs": first_epochs, "seconds": 2.5,
                            "error": None},
                           {"id": "t-0002", "state": "stopped", "parameters": {"model.dropout": "0.4"},
                            "objective": 0.62, "best": 0.7, "epochs": 1, "seconds": 1.25, "error": None}]}

    run.reporter.report(done=1, total=2, results={"trials": {"running": 1, "stopped": 1}}, stage="running trials",
                        detail=detail("running", 2, 0.81))
    with run.store.publish(run.key) as out:
        out.write_json("inputs.json", dict(run.inputs))
    return Outcome({"trials": {"succeeded": 1, "stopped": 1}, "bestMetric": 0.9,
                    "bestTrial": {"id": "t-0001", "metric": 0.9, "parameters": {"model.dropout": "0.25"}},
                    "registeredModel": {"name": run.resource.name, "version": "v1",
                                        "uri": run.store.url("models/x/v1")},
                    "report": run.store.url(run.key)}, f"trained on {dataset}", done=2, total=2,
                   detail=detail("succeeded", 3, 0.9))


succeed = Runtime(unit="scenes", body=_succeed, replay=_replay)
crash = Runtime(unit="scenes", body=_crash, replay=_replay)
refuse = Runtime(unit="scenes", body=_refuse, replay=_replay)
exit_hard = Runtime(unit="scenes", body=_exit_hard, replay=_replay)
tune = Runtime(unit="trials", body=_tune, replay=_replay)


def not_a_runtime(**kwargs):
    """A plain function where a Runtime is expected: the command refuses it, naming the type."""
