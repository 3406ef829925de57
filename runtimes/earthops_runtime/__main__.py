"""``python -m earthops_runtime run ...``: the one command that runs a resource's work.

KubeRay runs it as the RayJob entrypoint; the embedded executor runs it as a local process. It reads
the resource, loads the kind's :class:`~earthops_runtime.entrypoint.Runtime` (``module:attribute``,
named by the control plane in ``earthops.api.KINDS``), runs it through the entrypoint protocol with
the published runs it references (``--input key=URI`` -> ``inputs={key: uri}``, resolved by the
control plane) and makes sure a ``status.json`` says how the run ended, even when the runtime crashes.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback
from pathlib import Path

from earthops.api import parse_resource
from earthops.core.inputs import parse_input_args
from earthops.core.store import Store, StoreError
from earthops_runtime.entrypoint import Reporter, Run, Runtime, execute


def _load(entrypoint: str) -> Runtime:
    module_name, _, name = entrypoint.partition(":")
    if not module_name or not name:
        raise SystemExit(f"--entrypoint {entrypoint!r}: expected module:attribute")
    runtime = getattr(importlib.import_module(module_name), name)
    if not isinstance(runtime, Runtime):
        raise TypeError(f"--entrypoint {entrypoint!r} is a {type(runtime).__name__}, not an "
                        "earthops_runtime.entrypoint.Runtime")
    return runtime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m earthops_runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one resource's work")
    run.add_argument("--entrypoint", required=True, help="module:function of the kind's entrypoint")
    run.add_argument("--resource", required=True, type=Path, help="the resource as JSON or YAML")
    run.add_argument("--store", required=True, help="store root URI")
    run.add_argument("--run-key", required=True, help="the run folder, relative to the store root")
    run.add_argument("--run-id", required=True)
    run.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: local Ray)")
    run.add_argument("--input", action="append", default=[], metavar="KEY=URI",
                     help="a published run the resource references, e.g. dataset=s3://... (repeatable); "
                     "the entrypoint gets them as inputs={key: uri}")
    args = parser.parse_args(argv)
    try:
        inputs = parse_input_args(args.input)
    except ValueError as exc:
        parser.error(str(exc))

    import yaml

    resource = parse_resource(yaml.safe_load(args.resource.read_text()), str(args.resource))
    store = Store.from_uri(args.store)
    reporter = Reporter(store, args.run_key, args.run_id, resource.metadata.generation)
    try:
        runtime = _load(args.entrypoint)
        execute(runtime, Run(resource=resource, store=store, key=args.run_key, reporter=reporter, inputs=inputs,
                             ray_address=args.ray_address))
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        _report_failure(reporter, "StoreError", str(exc))
        return 1
    except Exception as exc:  # noqa: BLE001 - any crash must end in a Failed status, with its cause
        traceback.print_exc()
        _report_failure(reporter, type(exc).__name__, f"{type(exc).__name__}: {exc}")
        return 1
    if reporter.status.phase not in ("Succeeded", "Failed"):
        _report_failure(reporter, "NoResults", "the entrypoint returned without reporting success")
        return 1
    return 0 if reporter.status.phase == "Succeeded" else 1


def _report_failure(reporter: Reporter, reason: str, message: str) -> None:
    try:
        reporter.report("Failed", reason=reason, message=message)
    except Exception as exc:  # noqa: BLE001 - the store itself may be what failed
        print(f"error: could not write status.json: {exc}", file=sys.stderr)
        print(json.dumps({"phase": "Failed", "reason": reason, "message": message}), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
