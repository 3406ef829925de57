"""AblationStudy through the operator on the real API server: it waits for its EODataset and its
TuningExperiment, runs as a RayJob (validated by the real KubeRay CRD) that gets both published runs as
inputs, projects the runtime's trial counts, base metric and most important component into its status,
and fails, naming the reason, when its tuning experiment failed or the runtime refuses a component.
KubeRay's part is played by the simulator and the runtime's by status.json files written into the store."""

import shlex

import pytest

from tests.infra.earthops_kube import apply_example, condition, succeed_run, wait_status, write_runtime
from tests.infra.earthops_kube import operator_env as env  # noqa: F401 - the fixture
from tests.infra.peers import KubeRaySimulator
from tests.infra.pytest_datasets import example

pytestmark = pytest.mark.integration
ABL = "AblationStudy"
DATASET_RESULTS = {"chips": {"train": 70, "validation": 15, "test": 15},
                   "scenes": {"total": 10, "processed": 10, "failed": 0}}


def _wait(kube, ns, op, what, check, name="iceberg-ablation", timeout=30):
    return wait_status(kube, ABL, ns, name, op, what, check, timeout)


def _argv(job):
    return shlex.split(job["spec"]["entrypoint"])


def _inputs(argv):
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--input"]


def test_study_waits_for_dataset_and_tuning_then_runs_and_reports(env):
    kube, ns, store, op = env
    created = apply_example(kube, "examples/ship-iceberg/03-ablation.yaml", ns)
    st = _wait(kube, ns, op, "waiting for its references", lambda s: s.get("observedGeneration") == 1)
    assert st["phase"] == "Pending" and "rayJobName" not in st
    assert condition(st, "Ready")["status"] == "False"
    assert condition(st, "DatasetReady")["reason"] == "DatasetNotReady"
    assert condition(st, "TuningExperimentReady")["reason"] == "TuningExperimentNotReady"

    apply_example(kube, "examples/ship-iceberg/01-dataset.yaml", ns)
    dataset = succeed_run(kube, store, "EODataset", ns, "iceberg-chips", op, **DATASET_RESULTS)
    st = _wait(kube, ns, op, "the dataset Ready, still waiting for the tuning experiment",
               lambda s: condition(s, "DatasetReady")["status"] == "True")
    assert st["phase"] == "Pending" and "rayJobName" not in st
    assert condition(st, "TuningExperimentReady")["status"] == "False"

    apply_example(kube, "examples/ship-iceberg/02-tuning.yaml", ns)
    tuning = succeed_run(kube, store, "TuningExperiment", ns, "iceberg-tuning", op,
                         trials={"pending": 0, "running": 0, "succeeded": 12, "stopped": 0, "failed": 0})
    st = _wait(kube, ns, op, "a RayJob once both are done", lambda s: s.get("rayJobName"))
    job_name, run = st["rayJobName"], st["runId"]
    assert condition(st, "TuningExperimentReady")["status"] == "True"
    job = kube.get("ray.io/v1", "RayJob", job_name, ns)  # accepted by the real KubeRay CRD schema
    assert job["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    argv = _argv(job)
    assert argv[argv.index("--entrypoint") + 1] == "earthops_runtime.ablation:run"
    assert _inputs(argv) == [f"dataset={dataset['results']}", f"tuning={tuning['results']}"]
    assert argv[argv.index("--run-key") + 1] == f"ablations/{ns}/iceberg-ablation/{run}"
    assert job["spec"]["activeDeadlineSeconds"] == 7200

    ray = KubeRaySimulator(kube.admin)
    ray.job_running(ns, job_name)
    write_runtime(store, ABL, ns, "iceberg-ablation", run, "Running", progress={"done": 5, "total": 21, "unit": "trials"},
                  results={"trialsTotal": 21, "trialsDone": 5, "trialsFailed": 0, "tuningTrial": "t-0007"})
    st = _wait(kube, ns, op, "Running with trial counts", lambda s: s.get("progress") == "5/21 trials")
    assert (st["phase"], st["trialsTotal"], st["trialsDone"], st["tuningTrial"]) == ("Running", 21, 5, "t-0007")

    report = store.url(f"ablations/{ns}/iceberg-ablation/{run}/report.html")
    top = {"component": "HV", "delta": -0.12, "std": 0.02, "ciLow": -0.17, "ciHigh": -0.07, "pValue": 0.01,
           "significant": True}
    write_runtime(store, ABL, ns, "iceberg-ablation", run, "Succeeded", progress={"done": 21, "total": 21, "unit": "trials"},
                  message="21 of 21 trials succeeded", results={"trialsTotal": 21, "trialsDone": 21, "trialsFailed": 0,
                                                                 "baseMetric": 0.91, "mostImportant": top,
                                                                 "report": report})
    ray.job_succeeded(ns, job_name)
    st = _wait(kube, ns, op, "Succeeded", lambda s: s.get("phase") == "Succeeded")
    assert st["mostImportant"] == top and st["baseMetric"] == 0.91 and st["report"] == report
    assert st["results"] == store.url(f"ablations/{ns}/iceberg-ablation/{run}")
    assert condition(st, "Ready")["status"] == "True"
    printed = kube.kubectl("get", "abl", "-n", ns, "-o", "wide").stdout.splitlines()
    assert printed[0].split()[:7] == ["NAME", "PHASE", "TRIALS", "BASE", "TOP", "DELTA", "FAILED"]
    assert printed[1].split()[:7] == ["iceberg-ablation", "Succeeded", "21/21", "trials", "0.91", "HV", "-0.12"]


def test_a_failed_tuning_experiment_fails_the_study_and_a_refused_component_is_named(env):
    kube, ns, store, op = env
    apply_example(kube, "examples/ship-iceberg/01-dataset.yaml", ns)
    succeed_run(kube, store, "EODataset", ns, "iceberg-chips", op, **DATASET_RESULTS)
    apply_example(kube, "examples/ship-iceberg/02-tuning.yaml", ns)
    ray = KubeRaySimulator(kube.admin)
    tex = wait_status(kube, "TuningExperiment", ns, "iceberg-tuning", op, "its RayJob", lambda s: s.get("rayJobName"))
    ray.job_running(ns, tex["rayJobName"])
    write_runtime(store, "TuningExperiment", ns, "iceberg-tuning", tex["runId"], "Failed", reason="TooManyFailedTrials",
                  message="3 trials failed, more than maxFailedTrials 2")
    ray.job_failed(ns, tex["rayJobName"], "Job entrypoint command failed with exit code 1", reason="AppFailed")
    wait_status(kube, "TuningExperiment", ns, "iceberg-tuning", op, "Failed", lambda s: s.get("phase") == "Failed")

    apply_example(kube, "examples/ship-iceberg/03-ablation.yaml", ns)
    st = _wait(kube, ns, op, "Failed on the failed experiment", lambda s: s.get("phase") == "Failed")
    ready = condition(st, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "TuningExperimentFailed")
    assert "TuningExperiment 'iceberg-tuning' failed (3 trials failed" in ready["message"]
    assert "rayJobName" not in st or not st["rayJobName"]

    # the runtime refuses a component (before any trial): Failed, the reason and the field named
    bad = example("examples/ship-iceberg/03-ablation.yaml", **{"metadata.name": "bad-feature", "metadata.namespace": ns,
                                                               "spec.training": {"epochs": 1},
                                                               "spec.components": {"features": ["HH", "HX"]}})
    del bad["spec"]["fromTuning"]
    kube.apply(bad)
    st = _wait(kube, ns, op, "a RayJob", lambda s: s.get("rayJobName"), name="bad-feature")
    ray.job_running(ns, st["rayJobName"])
    write_runtime(store, ABL, ns, "bad-feature", st["runId"], "Failed", reason="InvalidSpec",
                  message="spec.components.features[1]: feature HX not in the dataset; its features: HH, HV, band_avg")
    ray.job_failed(ns, st["rayJobName"], "Job entrypoint command failed with exit code 1", reason="AppFailed")
    st = _wait(kube, ns, op, "Failed", lambda s: s.get("phase") == "Failed", name="bad-feature")
    ready = condition(st, "Ready")
    assert ready["reason"] == "InvalidSpec" and ready["message"].startswith("spec.components.features[1]: feature HX")
