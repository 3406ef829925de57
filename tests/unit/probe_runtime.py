"""Entrypoints used to test the executor plumbing (process, status.json, publication, status).

They do what a kind's runtime does — report progress, publish a run folder, report results — with
tiny work, so the generic machinery is tested before any kind's real runtime exists."""

from __future__ import annotations

import os


def succeed(*, resource, store, run_key, reporter, ray_address):
    total = 3
    reporter.report("Running", done=0, total=total, unit="scenes")
    with store.publish(run_key) as run:
        for i in range(total):
            run.write_bytes(f"shards/{i:03d}.bin", bytes([i]) * 10)
            reporter.report(done=i + 1)
        run.write_json("stats.json", {"bands": list(resource.spec.bands)})
    reporter.report("Succeeded", message="3 scenes", results={"scenes": {"total": 3, "processed": 3},
                                                               "chips": {"train": 7, "validation": 2, "test": 1}})


def crash(*, resource, store, run_key, reporter, ray_address):
    reporter.report("Running", done=1, total=2, unit="scenes")
    raise RuntimeError("scene 2 is corrupt")


def exit_hard(*, resource, store, run_key, reporter, ray_address):
    reporter.report("Running", done=0, total=1, unit="scenes")
    os._exit(9)
