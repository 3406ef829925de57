"""ModelDeployment through the operator on the real API server with the real KServe InferenceService CRD:
it waits for its TuningExperiment's registered model, becomes an InferenceService (validated by
KServe's CRD) whose predictor command really runs on this machine (tests/infra/kserve_standin.py plays
KServe and Knative's router), and the test sends real Open Inference Protocol requests through the URL
in the deployment's status: ready, canary 20% (exactly 4 in 20 requests answered by the canary) ->
100% -> a modelRef change rolls the new version out -> deletion removes the InferenceService.

The models are two real versions registered on the session's ship/iceberg dataset; the dataset's and
the experiment's runs are played as in the other operator tests (status.json in the store, KubeRay's
part by the simulator)."""

from __future__ import annotations

import json
import urllib.request

import pytest

from earthops.core.store import Store
from earthops_runtime import facade
from tests.infra.earthops_kube import apply_example, condition, succeed_run, wait_status
from tests.infra.kserve_standin import kserve_standin, register_versions
from tests.infra.operator import running_operator
from tests.infra.proc import denied_access, log_tail, wait_for

pytestmark = pytest.mark.integration
KIND, NAME = "ModelDeployment", "iceberg-classifier"


def _infer(url: str, request: dict, n: int = 1) -> list[dict]:
    replies = []
    for _ in range(n):
        req = urllib.request.Request(f"{url}/v2/models/{NAME}/infer", data=json.dumps(request).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as reply:
            assert reply.status == 200
            replies.append(json.loads(reply.read()))
    return replies


def _patch(kube, ns, patch: dict) -> None:
    kube.kubectl("patch", "-n", ns, f"modeldeployment/{NAME}", "--type=merge", "-p", json.dumps(patch))


def test_deployment_lifecycle_with_a_real_predictor(kube_controller_manager, kube_namespace, tmp_path,
                                                    iceberg_dataset):
    kube, ns = kube_controller_manager, kube_namespace
    store = Store.from_uri((tmp_path / "store").as_uri())
    uris = register_versions(store, ns, iceberg_dataset.run_uri)
    sample = facade.test_request(uris["v1"])
    with running_operator(kube, ns, tmp_path, store.uri) as op:
        def wait(what, check, timeout=60):
            return wait_status(kube, KIND, ns, NAME, op, what, check, timeout)

        apply_example(kube, "examples/ship-iceberg/01-dataset.yaml", ns, "iceberg-chips")
        apply_example(kube, "examples/ship-iceberg/02-tuning.yaml", ns, "iceberg-tuning")
        created = apply_example(kube, "examples/ship-iceberg/04-deployment.yaml", ns, NAME)

        # the experiment has no model yet: Pending, waiting for it, no InferenceService
        st = wait("TuningExperimentNotReady", lambda s: condition(s, "Ready").get("reason") == "TuningExperimentNotReady")
        assert st["phase"] == "Pending" and condition(st, "TuningExperimentReady")["status"] == "False"
        assert kube.kubectl("get", "inferenceservices", "-n", ns, "-o", "name").stdout.strip() == ""

        dataset = succeed_run(kube, store, "EODataset", ns, "iceberg-chips", op,
                              chips={"train": 1, "validation": 1, "test": 1})
        # the deployment's drift reference (monitoring.referenceDatasetRef): the played run has the real statistics
        Store.from_uri(dataset["results"]).write_json("stats.json",
                                                      Store.from_uri(iceberg_dataset.run_uri).read_json("stats.json"))
        succeed_run(kube, store, "TuningExperiment", ns, "iceberg-tuning", op,
                    registeredModel={"name": "iceberg", "version": "v1", "uri": uris["v1"]})

        with kserve_standin(kube.admin, ns, NAME, tmp_path) as standin:
            st = wait("Ready", lambda s: s.get("phase") == "Ready", timeout=180)
            isvc = kube.get("serving.kserve.io/v1beta1", "InferenceService", NAME, ns)  # accepted by KServe's CRD
            assert isvc["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
            assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
            predictor = isvc["spec"]["predictor"]
            assert (predictor["minReplicas"], predictor["maxReplicas"], predictor["scaleMetric"]) == (1, 3, "cpu")
            assert predictor["containers"][0]["command"][:6] == ["python", "-m", "earthops_runtime.serving",
                                                                 "--model-uri", uris["v1"], "--model-name"]
            assert st["url"] == standin.router.url and st["modelVersion"] == "iceberg/v1" and st["readyReplicas"] == 1
            assert condition(st, "Ready")["status"] == "True" and st["observedGeneration"] == 1
            assert condition(st, "ModelReady")["status"] == "True"
            [reply] = _infer(st["url"], sample["request"])
            assert reply["model_name"] == NAME and reply["model_version"] == "v1"
            printed = kube.kubectl("get", "mdep", "-n", ns).stdout.splitlines()
            assert printed[0].split() == ["NAME", "PHASE", "URL", "MODEL", "CANARY", "READY", "AGE"]
            assert printed[1].split()[:4] == [NAME, "Ready", st["url"], "iceberg/v1"]

            # canary 20%: the canary model becomes the latest revision; 4 in 20 requests answer with it
            _patch(kube, ns, {"spec": {"deploymentMode": "Knative",
                                       "canary": {"modelRef": {"model": "iceberg", "version": "v2"},
                                                  "trafficPercent": 20}}})
            st = wait("canary 20%", lambda s: s.get("canaryTrafficPercent") == 20 and s.get("phase") == "Ready",
                      timeout=180)
            assert st["canaryVersion"] == "iceberg/v2" and st["modelVersion"] == "iceberg/v1"
            assert st["traffic"] == [{"version": "iceberg/v1", "percent": 80, "role": "primary"},
                                     {"version": "iceberg/v2", "percent": 20, "role": "canary"}]
            isvc = kube.get("serving.kserve.io/v1beta1", "InferenceService", NAME, ns)
            assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 20
            assert isvc["spec"]["predictor"]["containers"][0]["command"][4] == uris["v2"]
            versions = [r["model_version"] for r in _infer(st["url"], sample["request"], 20)]
            assert versions.count("v2") == 4 and versions.count("v1") == 16, versions

            # 100% promotes it: every request answered by the canary
            _patch(kube, ns, {"spec": {"canary": {"trafficPercent": 100}}})
            st = wait("canary 100%", lambda s: s.get("canaryTrafficPercent") == 100, timeout=120)
            assert {r["model_version"] for r in _infer(st["url"], sample["request"], 5)} == {"v2"}

            # the modelRef changes to v2 and the canary goes: v2 is rolled out alone
            _patch(kube, ns, {"spec": {"modelRef": {"model": "iceberg", "version": "v2", "tuningExperiment": None},
                                       "canary": None}})
            st = wait("v2 alone", lambda s: s.get("modelVersion") == "iceberg/v2" and "canaryVersion" not in s
                      and s.get("phase") == "Ready", timeout=180)
            assert st["traffic"] == [{"version": "iceberg/v2", "percent": 100, "role": "primary"}]
            assert {r["model_version"] for r in _infer(st["url"], sample["request"], 3)} == {"v2"}
            events = kube.kubectl("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={NAME}").stdout
            assert "InferenceServiceCreated" in events and "RollingOut" in events

            # deleting the deployment deletes its InferenceService (garbage collection)
            kube.kubectl("delete", f"modeldeployment/{NAME}", "-n", ns, "--wait=true")
            wait_for(lambda: kube.kubectl("get", "inferenceservices", "-n", ns, "-o", "name").stdout.strip() == "",
                     timeout=60, what="the InferenceService garbage-collected")
        log = log_tail(op.log, 400)
        assert not denied_access(log), log


def test_a_model_that_fails_to_load_fails_the_deployment_naming_its_uri(kube_apiserver, kube_namespace, tmp_path,
                                                                       iceberg_dataset):
    kube, ns = kube_apiserver, kube_namespace
    store = Store.from_uri((tmp_path / "store").as_uri())
    uris = register_versions(store, ns, iceberg_dataset.run_uri)
    # v2's files are damaged after registration: its item is there, its program is not a program
    store.write_bytes(f"models/{ns}/iceberg/v2/model.pt2", b"not a program")
    with running_operator(kube, ns, tmp_path, store.uri) as op, kserve_standin(kube.admin, ns, NAME, tmp_path):
        doc = {"apiVersion": "earthops.dev/v1alpha1", "kind": KIND, "metadata": {"name": NAME, "namespace": ns},
               "spec": {"modelRef": {"model": "iceberg"}}}  # the newest version: v2
        kube.apply(doc)
        st = wait_status(kube, KIND, ns, NAME, op, "Failed", lambda s: s.get("phase") == "Failed", timeout=180)
        ready = condition(st, "Ready")
        assert ready["status"] == "False" and ready["reason"] == "ModelLoadFailed", ready
        assert uris["v2"] in st["message"] and st["modelVersion"] == "iceberg/v2" and st["readyReplicas"] == 0
        events = kube.kubectl("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={NAME}").stdout
        assert "ModelLoadFailed" in events

        # pinning the good version rolls it out and the deployment recovers
        _patch(kube, ns, {"spec": {"modelRef": {"version": "v1"}}})
        st = wait_status(kube, KIND, ns, NAME, op, "Ready on v1", lambda s: s.get("phase") == "Ready", timeout=180)
        assert st["modelVersion"] == "iceberg/v1" and condition(st, "Ready")["observedGeneration"] == 2
