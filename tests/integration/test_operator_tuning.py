"""TuningExperiment through the operator on the real API server: it waits for its EODataset, runs as
a RayJob (validated by the real KubeRay CRD) that gets the dataset's published run as input, and
projects the runtime's trial counts, best trial and registered model into its status. KubeRay's part
is played by the simulator and the runtime's by status.json files written into the store."""

import shlex

import pytest

from earthops.core.store import Store
from tests.infra.earthops_kube import (
    apply_example,
    condition,
    succeed_run,
    wait_status,
    write_runtime,
)
from tests.infra.earthops_kube import operator_env as env  # noqa: F401 - the fixture
from tests.infra.operator import running_operator
from tests.infra.peers import KubeRaySimulator
from tests.infra.proc import wait_for

pytestmark = pytest.mark.integration
TEX = "TuningExperiment"
DATASET_RESULTS = {"chips": {"train": 70, "validation": 15, "test": 15},
                   "scenes": {"total": 10, "processed": 10, "failed": 0}}


def _experiment(kube, ns, name="iceberg-tuning", **spec_changes):
    return apply_example(kube, "examples/ship-iceberg/02-tuning.yaml", ns, name, **spec_changes)


def _dataset(kube, ns):
    return apply_example(kube, "examples/ship-iceberg/01-dataset.yaml", ns, "iceberg-chips")


def _wait(kube, ns, op, what, check, name="iceberg-tuning", timeout=30):
    return wait_status(kube, TEX, ns, name, op, what, check, timeout)


def _rayjobs(kube, ns, name="iceberg-tuning"):
    return kube.kubectl("get", "rayjobs", "-n", ns, "-l", f"earthops.dev/kind=tuningexperiment,earthops.dev/name={name}",
                        "-o", "name").stdout.split()


def _argv(job):
    return shlex.split(job["spec"]["entrypoint"])


def test_experiment_waits_for_its_dataset_then_runs_reports_trials_and_registers(kube_controller_manager,
                                                                                 kube_namespace, tmp_path):
    kube, ns = kube_controller_manager, kube_namespace
    store = Store.from_uri((tmp_path / "store").as_uri())
    ray = KubeRaySimulator(kube.admin)
    with running_operator(kube, ns, tmp_path, store.uri) as op:
        created = _experiment(kube, ns)

        # no dataset: Pending, DatasetReady=False, no RayJob
        st = _wait(kube, ns, op, "DatasetNotReady", lambda s: s.get("observedGeneration") == 1)
        assert st["phase"] == "Pending" and "rayJobName" not in st and "runId" not in st
        waiting = condition(st, "DatasetReady")
        assert (waiting["status"], waiting["reason"]) == ("False", "DatasetNotReady")
        assert "EODataset 'iceberg-chips' not found" in waiting["message"]
        ready = condition(st, "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "DatasetNotReady")
        assert _rayjobs(kube, ns) == []

        # the dataset appears but is not Ready yet: still waiting, with its phase named
        _dataset(kube, ns)
        st = _wait(kube, ns, op, "waiting on a Pending dataset",
                   lambda s: "is Pending, not Succeeded" in condition(s, "DatasetReady")["message"])
        assert st["phase"] == "Pending" and _rayjobs(kube, ns) == []

        # the dataset's run succeeds: the experiment's RayJob is created with the dataset's run as input
        dataset = succeed_run(kube, store, "EODataset", ns, "iceberg-chips", op, **DATASET_RESULTS)
        st = _wait(kube, ns, op, "a RayJob once the dataset is Ready", lambda s: s.get("rayJobName"))
        job_name, run = st["rayJobName"], st["runId"]
        assert st["phase"] == "Pending" and run.startswith("g1-")
        ds_ready = condition(st, "DatasetReady")
        assert (ds_ready["status"], ds_ready["reason"]) == ("True", "DatasetReady")
        assert ds_ready["lastTransitionTime"] >= waiting["lastTransitionTime"]
        job = kube.get("ray.io/v1", "RayJob", job_name, ns)  # accepted by the real KubeRay CRD schema
        assert job["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
        argv = _argv(job)
        assert argv[argv.index("--entrypoint") + 1] == "earthops_runtime.tuning:run"
        assert argv[argv.index("--input") + 1] == f"dataset={dataset['results']}"
        assert dataset["results"] == store.url(f"datasets/{ns}/iceberg-chips/{dataset['runId']}")
        assert argv[argv.index("--run-key") + 1] == f"experiments/{ns}/iceberg-tuning/{run}"
        assert job["spec"]["shutdownAfterJobFinishes"] is True and job["spec"]["activeDeadlineSeconds"] == 7200

        # running: progress and trial counts from status.json
        ray.job_running(ns, job_name)
        write_runtime(store, TEX, ns, "iceberg-tuning", run, "Running",
                      progress={"done": 3, "total": 16, "unit": "trials"},
                      results={"trials": {"pending": 11, "running": 2, "succeeded": 2, "stopped": 1, "failed": 0},
                               "bestTrial": {"id": "t-0002", "metric": 0.81, "parameters": {"model.dropout": "0.2"}},
                               "bestMetric": 0.81},
                      detail={"trials": [{"id": "t-0002", "state": "TERMINATED", "metric": 0.81, "epoch": 8}]})
        st = _wait(kube, ns, op, "Running with trial counts", lambda s: s.get("progress") == "3/16 trials")
        assert st["phase"] == "Running" and st["startTime"]
        assert st["trials"] == {"pending": 11, "running": 2, "succeeded": 2, "stopped": 1, "failed": 0}
        assert st["bestTrial"]["id"] == "t-0002" and st["bestMetric"] == 0.81 and "detail" not in st
        printed = kube.kubectl("get", "tex", "-n", ns).stdout
        assert printed.split("\n")[0].split() == ["NAME", "PHASE", "TRIALS", "BEST", "MODEL", "AGE"]
        assert printed.split("\n")[1].split()[:4] == ["iceberg-tuning", "Running", "3/16", "trials"]
        assert "0.81" in printed

        # the dataset is deleted mid-run: the run goes on, even across an operator restart
        kube.kubectl("delete", "eodataset/iceberg-chips", "-n", ns, "--wait=true")
    with running_operator(kube, ns, tmp_path, store.uri) as op:
        write_runtime(store, TEX, ns, "iceberg-tuning", run, "Running", progress={"done": 9, "total": 16, "unit": "trials"},
                      results={"trials": {"pending": 5, "running": 2, "succeeded": 6, "stopped": 3, "failed": 0}})
        st = _wait(kube, ns, op, "progress after the restart", lambda s: s.get("progress") == "9/16 trials")
        assert (st["runId"], st["rayJobName"], st["phase"]) == (run, job_name, "Running")
        assert condition(st, "DatasetReady")["status"] == "True"
        assert _rayjobs(kube, ns) == [f"rayjob.ray.io/{job_name}"]

        # succeeded: best trial, registered model and report in the status
        model_uri = store.url(f"models/{ns}/iceberg-tuning/v1")
        write_runtime(store, TEX, ns, "iceberg-tuning", run, "Succeeded",
                      progress={"done": 16, "total": 16, "unit": "trials"}, message="16 trials; best val_accuracy 0.93",
                      results={"trials": {"pending": 0, "running": 0, "succeeded": 9, "stopped": 6, "failed": 1},
                               "bestTrial": {"id": "t-0011", "metric": 0.93,
                                             "parameters": {"model.dropout": "0.12", "training.learningRate": "0.0031"}},
                               "bestMetric": 0.93,
                               "registeredModel": {"name": "iceberg-tuning", "version": "v1", "uri": model_uri},
                               "report": store.url(f"experiments/{ns}/iceberg-tuning/{run}")})
        ray.job_succeeded(ns, job_name)
        st = _wait(kube, ns, op, "Succeeded", lambda s: s.get("phase") == "Succeeded")
        assert st["bestTrial"] == {"id": "t-0011", "metric": 0.93,
                                   "parameters": {"model.dropout": "0.12", "training.learningRate": "0.0031"}}
        assert st["registeredModel"] == {"name": "iceberg-tuning", "version": "v1", "uri": model_uri}
        assert st["trials"]["failed"] == 1 and st["completionTime"]
        assert st["report"] == st["results"] == store.url(f"experiments/{ns}/iceberg-tuning/{run}")
        ready = condition(st, "Ready")
        assert (ready["status"], ready["observedGeneration"]) == ("True", 1)
        printed = kube.kubectl("get", "tex", "-n", ns, "-o", "wide").stdout
        row = printed.split("\n")[1].split()
        assert row[:6] == ["iceberg-tuning", "Succeeded", "16/16", "trials", "0.93", "v1"], printed
        events = kube.kubectl("get", "events", "-n", ns, "--field-selector",
                              "involvedObject.name=iceberg-tuning").stdout
        assert "DatasetNotReady" in events and "RayJobCreated" in events and "RunSucceeded" in events

        # deleting the experiment deletes its RayJob and ConfigMap (garbage collection)
        kube.kubectl("delete", "tex/iceberg-tuning", "-n", ns, "--wait=true")
        wait_for(lambda: kube.kubectl("get", "rayjobs,configmaps", "-n", ns, "-l", "earthops.dev/name=iceberg-tuning",
                                      "-o", "name").stdout.strip() == "", timeout=60, what="children garbage-collected")


def test_too_many_failed_trials_fail_the_experiment_and_guarded_fields_stay(env):
    kube, ns, store, op = env
    _dataset(kube, ns)
    dataset = succeed_run(kube, store, "EODataset", ns, "iceberg-chips", op, **DATASET_RESULTS)
    _experiment(kube, ns, name="flaky")
    st = _wait(kube, ns, op, "a RayJob", lambda s: s.get("rayJobName"), name="flaky")
    assert condition(st, "DatasetReady")["status"] == "True"  # the dataset was Ready already: no waiting
    job = kube.get("ray.io/v1", "RayJob", st["rayJobName"], ns)
    assert f"dataset={dataset['results']}" in _argv(job)

    # immutable fields are guarded by CEL on the server, naming the field; mutable ones are not
    result = kube.kubectl("patch", "-n", ns, "tex/flaky", "--type=json", "-p",
                          '[{"op": "replace", "path": "/spec/searchSpace/0/values", "value": [3, 7]}]', check=False)
    assert result.returncode != 0
    assert "spec.searchSpace" in result.stderr and "searchSpace is immutable" in result.stderr, result.stderr
    result = kube.kubectl("patch", "-n", ns, "tex/flaky", "--type=merge", "-p",
                          '{"spec": {"datasetRef": {"name": "other"}}}', check=False)
    assert result.returncode != 0 and "datasetRef is immutable" in result.stderr, result.stderr
    assert kube.get("earthops.dev/v1alpha1", TEX, "flaky", ns)["metadata"]["generation"] == 1

    ray = KubeRaySimulator(kube.admin)
    ray.job_running(ns, st["rayJobName"])
    write_runtime(store, TEX, ns, "flaky", st["runId"], "Failed", reason="TooManyFailedTrials",
                  message="4 trials failed, more than maxFailedTrials (2); 5 trials finished are kept",
                  progress={"done": 9, "total": 16, "unit": "trials"},
                  results={"trials": {"pending": 7, "running": 0, "succeeded": 5, "stopped": 0, "failed": 4}})
    ray.job_failed(ns, st["rayJobName"], "Job entrypoint command failed with exit code 1", reason="AppFailed")
    st = _wait(kube, ns, op, "Failed", lambda s: s.get("phase") == "Failed", name="flaky")
    ready = condition(st, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "TooManyFailedTrials")
    assert "more than maxFailedTrials" in st["message"]
    assert st["trials"]["failed"] == 4 and st["trials"]["succeeded"] == 5 and st["progress"] == "9/16 trials"
    events = kube.kubectl("get", "events", "-n", ns, "--field-selector", "involvedObject.name=flaky").stdout
    assert "RunFailed" in events

    # a mutable field changed: a new generation, a new RayJob (with the input), the old one deleted
    kube.kubectl("patch", "-n", ns, "tex/flaky", "--type=merge", "-p", '{"spec": {"maxFailedTrials": 8}}')
    st2 = _wait(kube, ns, op, "generation 2", lambda s: s.get("runId", "").startswith("g2-"), name="flaky")
    assert st2["phase"] == "Pending" and st2["observedGeneration"] == 2
    assert _rayjobs(kube, ns, "flaky") == [f"rayjob.ray.io/{st2['rayJobName']}"]
    assert f"dataset={dataset['results']}" in _argv(kube.get("ray.io/v1", "RayJob", st2["rayJobName"], ns))
