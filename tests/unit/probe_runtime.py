"""Entrypoints used to test the executor plumbing (process, status.json, publication, status).

They do what a kind's runtime does — report progress, publish a run folder, report results — with
tiny work, so the generic machinery is tested before any kind's real runtime exists."""

from __future__ import annotations

import os


def succeed(*, resource, store, run_key, reporter, ray_address, inputs):
    total = 3
    reporter.report("Running", done=0, total=total, unit="scenes")
    with store.publish(run_key) as run:
        for i in range(total):
            run.write_bytes(f"shards/{i:03d}.bin", bytes([i]) * 10)
            reporter.report(done=i + 1)
        run.write_json("stats.json", {"bands": list(resource.spec.bands)})
    reporter.report("Succeeded", message="3 scenes", results={"scenes": {"total": 3, "processed": 3},
                                                               "chips": {"train": 7, "validation": 2, "test": 1}})


def crash(*, resource, store, run_key, reporter, ray_address, inputs):
    reporter.report("Running", done=1, total=2, unit="scenes")
    raise RuntimeError("scene 2 is corrupt")


def exit_hard(*, resource, store, run_key, reporter, ray_address, inputs):
    reporter.report("Running", done=0, total=1, unit="scenes")
    os._exit(9)


def tune(*, resource, store, run_key, reporter, ray_address, inputs):
    """A TuningExperiment's shape: reads its dataset input, reports trials live and the best trial."""
    dataset = inputs["dataset"]
    trials = [{"id": "t-0001", "state": "RUNNING", "parameters": {"model.dropout": 0.25}, "metric": 0.81, "epoch": 2},
              {"id": "t-0002", "state": "STOPPED", "parameters": {"model.dropout": 0.4}, "metric": 0.62, "epoch": 1}]
    reporter.report("Running", done=1, total=2, unit="trials", results={"trials": {"running": 1, "stopped": 1}},
                    detail={"trials": trials})
    with store.publish(run_key) as run:
        run.write_json("inputs.json", dict(inputs))
    trials[0].update(state="TERMINATED", metric=0.9, epoch=3)
    reporter.report("Succeeded", done=2, total=2, message=f"trained on {dataset}", detail={"trials": trials},
                    results={"trials": {"succeeded": 1, "stopped": 1}, "bestMetric": 0.9,
                             "bestTrial": {"id": "t-0001", "metric": 0.9, "parameters": {"model.dropout": "0.25"}},
                             "registeredModel": {"name": resource.name, "version": "v1", "uri": store.url("models/x/v1")},
                             "report": store.url(run_key)})
