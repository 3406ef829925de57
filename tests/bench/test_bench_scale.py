"""Scale benchmark: hundreds of resources of mixed kinds applied at once to the real API server.

One operator process (the chart's ServiceAccount and RBAC, namespaced mode, as in production) per size;
``EARTHOPS_BENCH_SCALE`` (default ``100,500``) resources each, in a fresh namespace, created by 16
parallel clients: 40% EODatasets, 25% TuningExperiments on a dataset that is already Ready, 25%
AblationStudies on a Ready dataset and tuning experiment, 10% ModelDeployments waiting for a tuning
experiment that is not there (a status, no child: their child needs a registered model). Measured:

* **to children + status** — seconds from the first create until every RayJob kind has its RayJob and
  a status naming it, and every ModelDeployment a status of its generation;
* **operator peak memory** — the operator process's peak RSS (``VmHWM``);
* **API requests per resource** — every request the operator's ServiceAccount made, counted from the
  API server's audit log (a server of its own for this benchmark, audit policy: service accounts only),
  until all had their child and status, and then per resource per minute at rest (the 3 s timers);
* **operator CPU** — the operator's CPU seconds over those seconds (1.0 = one core busy: kopf's one
  event loop is the limit then), and the machine's busy cores meanwhile (other users' load shows there).

The goal: 500 in under 60 s. KubeRay's part is not played (the RayJobs stay new): this measures the
operator, not the runs.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import CustomObjectsApi

from earthops.api import KINDS
from earthops.core.store import Store
from tests.bench.measure import busy_seconds
from tests.infra import kube as kube_infra
from tests.infra.earthops_kube import succeed_run
from tests.infra.kube import KubeApiServer
from tests.infra.operator import install_chart_rbac, start_operator, wait_live
from tests.infra.proc import stop, wait_for

pytestmark = pytest.mark.bench

ROOT = Path(__file__).resolve().parents[2]
SIZES = [int(n) for n in os.environ.get("EARTHOPS_BENCH_SCALE", "100,500").split(",")]
GOAL_S = 60.0
CLIENTS = 16
REST_S = 30.0
AUDIT_POLICY = {"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived", "ResponseStarted"],
                "rules": [{"level": "Metadata", "userGroups": ["system:serviceaccounts"]}, {"level": "None"}]}
MIX = [("EODataset", 0.40), ("TuningExperiment", 0.25), ("AblationStudy", 0.25), ("ModelDeployment", 0.10)]


def example(path: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / path).read_text())


def documents(n: int, ns: str) -> list[dict[str, Any]]:
    """``n`` resources in the mix, referencing the namespace's Ready ``base`` dataset and tuning experiment."""
    templates = {"EODataset": example("examples/ship-iceberg/01-dataset.yaml"),
                 "TuningExperiment": example("examples/ship-iceberg/02-tuning.yaml"),
                 "AblationStudy": example("examples/ship-iceberg/03-ablation.yaml"),
                 "ModelDeployment": example("examples/ship-iceberg/04-deployment.yaml")}
    templates["TuningExperiment"]["spec"]["datasetRef"] = {"name": "base"}
    templates["AblationStudy"]["spec"].update(datasetRef={"name": "base"}, fromTuning={"name": "base"})
    templates["ModelDeployment"]["spec"].update(modelRef={"tuningExperiment": "not-there"}, monitoring={"enabled": False})
    docs = []
    for kind, share in MIX:
        for i in range(round(n * share)):
            doc = json.loads(json.dumps(templates[kind]))
            doc["metadata"] = {"name": f"{kind.lower()}-{i:04d}", "namespace": ns}
            docs.append(doc)
    return docs[:n]


def converged(kube: KubeApiServer, ns: str, expected: int) -> bool:
    api = CustomObjectsApi(kube.admin)
    jobs = {j["metadata"]["name"] for j in api.list_namespaced_custom_object("ray.io", "v1", ns, "rayjobs")["items"]}
    done = 0
    for kind, _ in MIX:
        for obj in api.list_namespaced_custom_object("earthops.dev", "v1alpha1", ns, KINDS[kind].plural)["items"]:
            status = obj.get("status") or {}
            if obj["metadata"]["name"] == "base" or status.get("observedGeneration") != obj["metadata"]["generation"]:
                continue
            if kind == "ModelDeployment" or status.get("rayJobName") in jobs:
                done += 1
    return done >= expected


def audited(log: Path, user: str, since: float) -> Counter[str]:
    """Requests of ``user`` in the audit log since ``since`` (epoch seconds): 'verb resource' -> count."""
    from datetime import datetime

    counts: Counter[str] = Counter()
    with log.open() as fh:
        for line in fh:
            event = json.loads(line)
            if event["user"]["username"] != user:
                continue
            when = datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
            if when >= since:
                ref = event.get("objectRef") or {}
                counts[f"{event['verb']} {ref.get('resource', event['requestURI'])}"] += 1
    return counts


def proc_stat(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS in KiB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    status = Path(f"/proc/{pid}/status").read_text()
    hwm = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    return cpu, hwm


def one_size(kube: KubeApiServer, audit: Path, n: int, tmp_path: Path) -> dict[str, Any]:
    ns = kube.create_namespace(f"scale-{n}")
    store = Store.from_uri((tmp_path / f"store-{n}").as_uri())
    account = install_chart_rbac(kube, ns)
    op = start_operator(kube, ns, tmp_path, store.uri, account, log_name=f"operator-{n}.log")
    try:
        wait_live(op)
        # the Ready references the mix runs on
        base = example("examples/ship-iceberg/01-dataset.yaml")
        base["metadata"] = {"name": "base", "namespace": ns}
        kube.apply(base)
        succeed_run(kube, store, "EODataset", ns, "base", op, chips={"train": 70, "validation": 15, "test": 15},
                    scenes={"total": 10, "processed": 10, "failed": 0})
        tuning = example("examples/ship-iceberg/02-tuning.yaml")
        tuning["metadata"] = {"name": "base", "namespace": ns}
        tuning["spec"]["datasetRef"] = {"name": "base"}
        kube.apply(tuning)
        succeed_run(kube, store, "TuningExperiment", ns, "base", op,
                    trials={"pending": 0, "running": 0, "succeeded": 12, "stopped": 0, "failed": 0}, bestMetric=0.9)
        cpu0, _ = proc_stat(op.proc.pid)
        docs = documents(n, ns)
        busy0, t0, epoch0 = busy_seconds(), time.perf_counter(), time.time()
        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(kube.apply, docs))
        applied = time.perf_counter() - t0
        wait_for(lambda: converged(kube, ns, n), timeout=900, interval=0.5, what=f"{n} resources with child and status",
                 proc=op.proc, log_path=op.log)
        seconds = time.perf_counter() - t0
        busy = (busy_seconds() - busy0) / seconds
        cpu1, _ = proc_stat(op.proc.pid)
        epoch1 = time.time()
        time.sleep(REST_S)
        cpu2, peak = proc_stat(op.proc.pid)
        user = f"system:serviceaccount:{ns}:{account}"
        converging = audited(audit, user, epoch0)
        at_rest = audited(audit, user, epoch1)
        return {"n": n, "seconds": seconds, "applied": applied, "busy": busy, "peak_mib": peak / 1024,
                "requests": sum(converging.values()) - sum(at_rest.values()), "top": converging.most_common(6),
                "rest_per_min": sum(at_rest.values()) / n / (REST_S / 60), "cpu": (cpu1 - cpu0) / seconds,
                "cpu_rest": (cpu2 - cpu1) / REST_S}
    finally:
        stop(op.proc)
        kube.delete_namespace(ns)


def test_scale_mixed_resources_at_once(tmp_path: Path) -> None:
    policy = tmp_path / "audit-policy.yaml"
    policy.write_text(yaml.safe_dump(AUDIT_POLICY))
    audit = tmp_path / "audit.log"
    args = [f"--audit-policy-file={policy}", f"--audit-log-path={audit}", "--audit-log-format=json"]
    with KubeApiServer(bin_dir=kube_infra.ensure_binaries(), crds=kube_infra.third_party_crds(),
                       controller_manager=False, extra_apiserver_args=args) as kube:
        kube.install_crds(kube_infra.project_crds())
        rows = [one_size(kube, audit, n, tmp_path) for n in SIZES]
    print(f"\nscale: mixed kinds ({', '.join(f'{k} {int(s * 100)}%' for k, s in MIX)}), {CLIENTS} parallel clients, "
          f"one operator (kopf, namespaced, chart RBAC)")
    print(f"{'resources':>9} {'created s':>9} {'child+status s':>14} {'per s':>6} {'peak MiB':>8} {'req/res':>7} "
          f"{'op cores':>8} {'busy cores':>10} {'rest req/res/min':>16} {'rest op cores':>13}")
    for r in rows:
        print(f"{r['n']:>9} {r['applied']:>9.1f} {r['seconds']:>14.1f} {r['n'] / r['seconds']:>6.1f} "
              f"{r['peak_mib']:>8.0f} {r['requests'] / r['n']:>7.1f} {r['cpu']:>8.2f} {r['busy']:>10.2f} "
              f"{r['rest_per_min']:>16.1f} {r['cpu_rest']:>13.2f}")
    for r in rows:
        print(f"  {r['n']}: most requests while converging: {r['top']}")
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        print(f"growth {a['n']} -> {b['n']} ({b['n'] / a['n']:.0f}x resources): time x{b['seconds'] / a['seconds']:.1f}, "
              f"peak memory x{b['peak_mib'] / a['peak_mib']:.2f}, requests per resource "
              f"x{(b['requests'] / b['n']) / (a['requests'] / a['n']):.2f}")
    largest = rows[-1]
    print(f"goal: {largest['n']} in under {GOAL_S:.0f} s: {'met' if largest['seconds'] < GOAL_S else 'NOT met'} "
          f"({largest['seconds']:.1f} s)")
