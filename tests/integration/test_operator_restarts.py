"""The operator SIGKILLed at random points of its work, 20 times in one test, on the real API server.

A mix of resources (EODatasets, a TuningExperiment and an AblationStudy chained on one of them, a
ModelDeployment waiting for a TuningExperiment that is not there) is created, changed and deleted while
the operator process (the chart's ServiceAccount, as in production) is killed: as soon as it creates a
child (between creating it and patching the status), or after a random delay (during a spec change,
a deletion, a status patch). KubeRay's part and the runtime's are played all along, whether the
operator runs or not, by a thread that lets every RayJob run and succeed (tests/infra/peers.py, the
run's ``status.json`` written into the store).

Afterwards, with one last operator: exactly one RayJob and one ConfigMap per resource, those of its
current generation; no child whose owner is gone; and every status equal to the one an uninterrupted
operator gives the same final resources in another namespace.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import watch
from kubernetes.client import ApiException, CoreV1Api, CustomObjectsApi

from earthops.api import KINDS, parse_resource
from earthops.control.reconcile.rayjob import LABEL_KIND, LABEL_NAME, child_name, runs_as_rayjob
from earthops.core.runs import run_id
from earthops.core.store import Store
from tests.infra.earthops_kube import API, status, wait_status, write_runtime
from tests.infra.earthops_kube import operator_env as env  # noqa: F401 - the fixture
from tests.infra.operator import install_chart_rbac, start_operator, wait_live
from tests.infra.peers import KubeRaySimulator
from tests.infra.proc import stop, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KILLS = 20
SEED = 19
RESULTS = {
    "EODataset": {"chips": {"train": 70, "validation": 15, "test": 15},
                  "scenes": {"total": 10, "processed": 10, "failed": 0}},
    "TuningExperiment": {"trials": {"pending": 0, "running": 0, "succeeded": 12, "stopped": 0, "failed": 0},
                         "bestMetric": 0.91},
    "AblationStudy": {"trialsTotal": 21, "trialsDone": 21, "trialsFailed": 0, "baseMetric": 0.9},
}
BY_LABEL = {kind.lower(): kind for kind in KINDS}


def manifest(path: str, name: str | None = None, **spec: Any) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / path).read_text())
    if name:
        doc["metadata"]["name"] = name
    doc["spec"].update(spec)
    return doc


def initial_resources() -> list[dict[str, Any]]:
    deployment = manifest("examples/ship-iceberg/04-deployment.yaml", modelRef={"tuningExperiment": "not-there"})
    deployment["spec"]["monitoring"] = {"enabled": False}
    return [manifest("examples/ship-iceberg/01-dataset.yaml"),
            *(manifest("examples/ship-iceberg/01-dataset.yaml", f"chips-{x}") for x in "abc"),
            manifest("examples/ship-iceberg/02-tuning.yaml"),
            manifest("examples/ship-iceberg/03-ablation.yaml"),
            deployment]


class RayPlayer(threading.Thread):
    """KubeRay and the runtime, played: every RayJob of the namespace runs, reports success into the
    store and completes, a tick or two after it appears (operator up or down)."""

    def __init__(self, kube: Any, namespace: str, store: Store, seed: int) -> None:
        super().__init__(daemon=True, name=f"ray-player-{namespace}")
        self.kube, self.ns, self.store = kube, namespace, store
        self.ray = KubeRaySimulator(kube.admin)
        self.rng = random.Random(seed)
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        api = CustomObjectsApi(self.kube.admin)
        while not self.halt.is_set():
            try:
                for job in api.list_namespaced_custom_object("ray.io", "v1", self.ns, "rayjobs")["items"]:
                    self.advance(job)
            except ApiException as exc:
                if exc.status not in (404, 409):  # deleted or changed under us: next tick
                    self.error = exc
                    return
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                self.error = exc
                return
            self.halt.wait(self.rng.uniform(0.05, 0.3))

    def advance(self, job: dict[str, Any]) -> None:
        status, name = job.get("status") or {}, job["metadata"]["name"]
        if status.get("jobDeploymentStatus") == "Complete" or self.rng.random() < 0.3:
            return
        if status.get("jobDeploymentStatus") != "Running":
            self.ray.job_running(self.ns, name)
            return
        labels = job["metadata"]["labels"]
        kind = BY_LABEL[labels[LABEL_KIND]]
        argv = shlex.split(job["spec"]["entrypoint"])
        run = argv[argv.index("--run-id") + 1]
        write_runtime(self.store, kind, self.ns, labels[LABEL_NAME], run, "Succeeded", results=RESULTS[kind])
        self.ray.job_succeeded(self.ns, name)


def children(kube: Any, ns: str) -> dict[str, list[dict[str, Any]]]:
    """The earthops children in ``ns``: RayJobs, ConfigMaps and InferenceServices with earthops' labels."""
    api = CustomObjectsApi(kube.admin)
    selector = LABEL_KIND
    return {
        "RayJob": api.list_namespaced_custom_object("ray.io", "v1", ns, "rayjobs", label_selector=selector)["items"],
        "InferenceService": api.list_namespaced_custom_object("serving.kserve.io", "v1beta1", ns, "inferenceservices",
                                                              label_selector=selector)["items"],
        "ConfigMap": [c.to_dict() for c in CoreV1Api(kube.admin).list_namespaced_config_map(
            ns, label_selector=selector).items],
    }


def resources(kube: Any, ns: str) -> dict[tuple[str, str], dict[str, Any]]:
    api = CustomObjectsApi(kube.admin)
    out = {}
    for kind, info in KINDS.items():
        for obj in api.list_namespaced_custom_object("earthops.dev", "v1alpha1", ns, info.plural)["items"]:
            out[(kind, obj["metadata"]["name"])] = obj
    return out


def settled(obj: dict[str, Any]) -> bool:
    """The resource's status is final for its current generation."""
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"]["generation"]:
        return False
    if obj["kind"] == "ModelDeployment":
        return status.get("phase") == "Pending"  # waits for a TuningExperiment that is not there
    return status.get("phase") == KINDS[obj["kind"]].ready_phase


def state_at_kill(kube: Any, ns: str) -> set[str]:
    """What the operator was in the middle of when it was killed (read from the server right after)."""
    found = set()
    objs = resources(kube, ns)
    for job in children(kube, ns)["RayJob"]:
        labels = job["metadata"]["labels"]
        owner = objs.get((BY_LABEL[labels[LABEL_KIND]], labels[LABEL_NAME]))
        if owner and (owner.get("status") or {}).get("rayJobName") != job["metadata"]["name"]:
            found.add("child created, status not patched")
    for obj in objs.values():
        if (obj.get("status") or {}).get("observedGeneration") not in (None, obj["metadata"]["generation"]):
            found.add("spec change not reconciled")
        elif obj.get("status") and not settled(obj):
            found.add("run followed, not finished")
    return found


def apply_all(kube: Any, ns: str, docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        kube.apply({**doc, "metadata": {**doc["metadata"], "namespace": ns}})


def wait_settled(kube: Any, ns: str, op: Any, expected: set[tuple[str, str]], timeout: float = 120) -> None:
    def done() -> bool:
        objs = resources(kube, ns)
        return set(objs) == expected and all(settled(o) for o in objs.values())

    try:
        wait_for(done, timeout=timeout, what=f"every resource of {ns} settled", proc=op.proc, log_path=op.log)
    except TimeoutError as exc:
        objs = resources(kube, ns)
        unsettled = {f"{k[0]}/{k[1]} gen {o['metadata']['generation']}": o.get("status")
                     for k, o in objs.items() if not settled(o)}
        raise AssertionError(f"not settled: {json.dumps(unsettled, indent=1)[:3000]}; resources "
                             f"{sorted(objs)} != {sorted(expected)}" if set(objs) != expected else
                             f"not settled: {json.dumps(unsettled, indent=1)[:3000]}") from exc


#: The run of an input a chained resource names in its input condition (``EODataset 'x' is Succeeded: <run>``).
INPUT_RUN = re.compile(r"(datasets/<ns>/[^/\s'\"]+/g<gen>-)[0-9a-f]+")


def normalized(obj: dict[str, Any], ns: str) -> dict[str, Any]:
    """The status without what differs between two equal runs: times, the namespace, the generation,
    and which run of an input a chained resource took. A run is pinned to its own generation: a tuning
    experiment that started while its dataset was at an earlier spec keeps the dataset run it read (its
    results came from it), where the uninterrupted operator, given the final resources at once, waits for
    the last one; which of the two happens depends on the kills' timing, not on a fault (checked apart:
    the run named is a run of that dataset that succeeded)."""
    status = {k: v for k, v in (obj.get("status") or {}).items() if not k.endswith("Time")}
    status["conditions"] = sorted(({k: v for k, v in c.items() if k != "lastTransitionTime"}
                                   for c in status.get("conditions") or []), key=lambda c: c["type"])
    text = json.dumps(status, sort_keys=True).replace(ns, "<ns>")
    text = re.sub(r"\bg\d+-", "g<gen>-", text)
    text = re.sub(r'"observedGeneration": \d+', '"observedGeneration": "<gen>"', text)
    text = INPUT_RUN.sub(r"\1<run>", text)
    return json.loads(text)


def input_runs(obj: dict[str, Any]) -> list[str]:
    """The input runs a resource's conditions name (store URIs)."""
    return [m for c in (obj.get("status") or {}).get("conditions") or []
            for m in re.findall(r"is Succeeded: (\S+)", c.get("message") or "")]


@pytest.mark.slow
def test_the_operator_killed_20_times_converges_to_what_an_uninterrupted_run_gives(
        kube_controller_manager: Any, kube_namespace: str, tmp_path: Path) -> None:
    kube, ns = kube_controller_manager, kube_namespace
    store = Store.from_uri((tmp_path / "store").as_uri())
    rng = random.Random(SEED)
    account = install_chart_rbac(kube, ns)
    player = RayPlayer(kube, ns, store, SEED)
    player.start()
    docs = {(d["kind"], d["metadata"]["name"]): d for d in initial_resources()}
    # what happens to the resources while the operator is up, one per restart
    actions = ["create all", "change chips-a", "none", "change iceberg-chips", "change chips-b", "delete chips-c",
               "change chips-a", "create chips-d", "change iceberg-tuning", "none", "delete chips-d",
               "change chips-b", "create chips-c", "change chips-a", "delete iceberg-ablation", "change chips-c",
               "create iceberg-ablation", "change iceberg-chips", "change chips-b", "none"]
    assert len(actions) == KILLS
    hits: dict[str, int] = {}
    api = CustomObjectsApi(kube.admin)
    try:
        for i, action in enumerate(actions):
            op = start_operator(kube, ns, tmp_path, store.uri, account, log_name=f"operator-{i}.log")
            verb, _, name = action.partition(" ")
            if verb == "create" and name == "all":
                apply_all(kube, ns, list(docs.values()))
            elif verb == "create":
                kind = "AblationStudy" if name == "iceberg-ablation" else "EODataset"
                path = "examples/ship-iceberg/03-ablation.yaml" if kind == "AblationStudy" \
                    else "examples/ship-iceberg/01-dataset.yaml"
                docs[(kind, name)] = manifest(path, name)
                apply_all(kube, ns, [docs[(kind, name)]])
            elif verb == "delete":
                kind = "AblationStudy" if name == "iceberg-ablation" else "EODataset"
                del docs[(kind, name)]
                kube.delete(API, kind, name, ns)
            elif verb == "change":
                kind = "TuningExperiment" if name == "iceberg-tuning" else "EODataset"
                doc = docs[(kind, name)]
                if kind == "EODataset":
                    doc["spec"]["source"]["sample"]["seed"] = 100 + i
                else:
                    doc["spec"]["maxTrials"] = 12 + i
                apply_all(kube, ns, [doc])
            # kill as soon as it creates a child, or at a random moment of its work
            if rng.random() < 0.5:
                seen = {j["metadata"]["name"] for j in children(kube, ns)["RayJob"]}
                stream = watch.Watch()
                for event in stream.stream(api.list_namespaced_custom_object, "ray.io", "v1", ns, "rayjobs",
                                           timeout_seconds=int(rng.uniform(3, 7))):
                    if event["type"] == "ADDED" and event["object"]["metadata"]["name"] not in seen:
                        break
                stream.stop()
            else:
                time.sleep(rng.uniform(0.3, 5))
            os.kill(op.proc.pid, signal.SIGKILL)
            op.proc.wait()
            for state in state_at_kill(kube, ns) or {"idle"}:
                hits[state] = hits.get(state, 0) + 1
            assert player.error is None, player.error

        op = start_operator(kube, ns, tmp_path, store.uri, account, log_name="operator-final.log")
        try:
            wait_live(op)
            wait_settled(kube, ns, op, set(docs))
        finally:
            stop(op.proc)
    finally:
        player.halt.set()
        player.join()
    assert player.error is None, player.error
    print(f"\nkilled {KILLS} times; in the middle of: {hits}")
    assert sum(v for k, v in hits.items() if k != "idle") >= KILLS // 2, hits

    # exactly one child of each kind per resource, of its current generation; none of a deleted one
    objs = resources(kube, ns)
    expected_jobs = set()
    for (kind, _name), obj in objs.items():
        if runs_as_rayjob(kind):
            resource = parse_resource({k: obj[k] for k in ("apiVersion", "kind", "metadata", "spec")})
            expected_jobs.add(child_name(resource, run_id(obj["metadata"]["generation"], resource)))
    uids = {o["metadata"]["uid"] for o in objs.values()}

    def no_orphans() -> bool:  # the garbage collector removes a deleted resource's children
        found = children(kube, ns)
        owned = [c for cs in found.values() for c in cs]
        owners = {((c["metadata"].get("owner_references") or c["metadata"].get("ownerReferences"))[0]["uid"])
                  for c in owned}
        return owners <= uids
    wait_for(no_orphans, timeout=60, what="the children of deleted resources collected")
    found = children(kube, ns)
    assert {j["metadata"]["name"] for j in found["RayJob"]} == expected_jobs
    assert len(found["RayJob"]) == len(expected_jobs)
    assert sorted(c["metadata"]["name"] for c in found["ConfigMap"]) == sorted(f"{n}-resource" for n in expected_jobs)
    assert found["InferenceService"] == []  # the deployment still waits for its model

    # the same final resources, once, with an operator that is never interrupted
    reference = kube.create_namespace()
    account_ref = install_chart_rbac(kube, reference)
    player_ref = RayPlayer(kube, reference, store, SEED + 1)
    player_ref.start()
    op = start_operator(kube, reference, tmp_path, store.uri, account_ref, log_name="operator-reference.log")
    try:
        wait_live(op)
        apply_all(kube, reference, list(docs.values()))
        wait_settled(kube, reference, op, set(docs))
    finally:
        stop(op.proc)
        player_ref.halt.set()
        player_ref.join()
        kube.delete_namespace(reference)
    assert player_ref.error is None, player_ref.error
    uninterrupted = resources(kube, reference)
    for key, obj in resources(kube, ns).items():
        assert normalized(obj, ns) == normalized(uninterrupted[key], reference), key
        for uri in input_runs(obj):  # whichever run of its input it took, that run succeeded (as played here)
            run_key = uri.removeprefix(store.uri).strip("/")
            assert uri.startswith(store.uri) and store.read_json(f"{run_key}/status.json")["phase"] == "Succeeded", \
                (key, uri)


def test_a_resource_recreated_under_its_name_gets_children_of_its_own(env: Any) -> None:  # noqa: F811
    """Deleted and created again with the same spec (a GitOps re-sync) before the garbage collector has
    removed the old one's children: their names are the new one's too (one per generation and spec), so
    the operator must not take them for its own — they go when the collector gets to them. Found by the
    restart test above: the new resource ended Failed (RayJobMissing). A finalizer holds the old RayJob
    and ConfigMap here until the new resource has been seen, so the race is the same every run."""
    kube, ns, store, op = env
    hold = {"metadata": {"finalizers": ["earthops.dev/test-hold"]}}
    first = kube.apply({**manifest("examples/ship-iceberg/01-dataset.yaml", "chips"),
                        "metadata": {"name": "chips", "namespace": ns}})[0]
    st = wait_for_status(kube, ns, op, lambda s: s.get("rayJobName"))
    job_name = st["rayJobName"]
    api, core = CustomObjectsApi(kube.admin), CoreV1Api(kube.admin)
    api.patch_namespaced_custom_object("ray.io", "v1", ns, "rayjobs", job_name, hold)
    core.patch_namespaced_config_map(f"{job_name}-resource", ns, hold)
    kube.delete(API, "EODataset", "chips", ns)
    wait_for(lambda: api.get_namespaced_custom_object("ray.io", "v1", ns, "rayjobs", job_name)["metadata"]
             .get("deletionTimestamp"), timeout=60, what="the old RayJob being collected")
    second = kube.apply({**manifest("examples/ship-iceberg/01-dataset.yaml", "chips"),
                         "metadata": {"name": "chips", "namespace": ns}})[0]
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    # the operator has handled the new resource: taken the old children for its own (the bug), or waits
    wait_for(lambda: status(kube, "EODataset", ns, "chips").get("rayJobName") or "still being removed" in op.log.read_text(),
             timeout=60, what="the operator handling the new resource", proc=op.proc, log_path=op.log)
    release = {"metadata": {"finalizers": None}}
    api.patch_namespaced_custom_object("ray.io", "v1", ns, "rayjobs", job_name, release)
    core.patch_namespaced_config_map(f"{job_name}-resource", ns, release)

    def owned_by_the_new_one() -> bool:
        job = api.get_namespaced_custom_object("ray.io", "v1", ns, "rayjobs", job_name)
        cm = core.read_namespaced_config_map(f"{job_name}-resource", ns)
        return (job["metadata"]["ownerReferences"][0]["uid"] == second["metadata"]["uid"]
                and cm.metadata.owner_references[0].uid == second["metadata"]["uid"])

    wait_for(owned_by_the_new_one, timeout=60, what="a RayJob and ConfigMap of the new resource", proc=op.proc,
             log_path=op.log)
    st = wait_for_status(kube, ns, op, lambda s: s.get("rayJobName") == job_name)
    assert st["phase"] == "Pending", st
    KubeRaySimulator(kube.admin).job_running(ns, job_name)
    write_runtime(store, "EODataset", ns, "chips", st["runId"], "Succeeded", results=RESULTS["EODataset"])
    KubeRaySimulator(kube.admin).job_succeeded(ns, job_name)
    assert wait_for_status(kube, ns, op, lambda s: s.get("phase") in ("Succeeded", "Failed"))["phase"] == "Succeeded"


def wait_for_status(kube: Any, ns: str, op: Any, check: Any) -> dict[str, Any]:
    return wait_status(kube, "EODataset", ns, "chips", op, "the dataset's status", check, timeout=60)
