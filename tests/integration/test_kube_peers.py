"""The KubeRay and KServe stand-ins drive real RayJob / InferenceService objects through their lifecycle."""

from __future__ import annotations

import pytest
from kubernetes import watch
from kubernetes.client import CustomObjectsApi

from tests.infra.kube import KubeApiServer
from tests.infra.peers import KServeSimulator, KubeRaySimulator, minimal_rayjob

pytestmark = pytest.mark.integration


def inference_service(
    name: str, storage_uri: str = "s3://models/iceberg/1", canary: int | None = None
) -> dict:
    predictor: dict = {"model": {"modelFormat": {"name": "pytorch"}, "storageUri": storage_uri}}
    if canary is not None:
        predictor["canaryTrafficPercent"] = canary
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {"predictor": predictor},
    }


def read(kube: KubeApiServer, api_version: str, kind: str, name: str, namespace: str) -> dict:
    """Read back from the server, never from what a simulator returned."""
    return kube.get(api_version, kind, name, namespace)


def test_rayjob_runs_then_succeeds(kube_apiserver: KubeApiServer, kube_namespace: str) -> None:
    kube_apiserver.apply(minimal_rayjob("train"), namespace=kube_namespace)
    ray = KubeRaySimulator(kube_apiserver.admin)
    assert read(kube_apiserver, "ray.io/v1", "RayJob", "train", kube_namespace).get("status") in (None, {})

    ray.job_running(kube_namespace, "train")
    running = read(kube_apiserver, "ray.io/v1", "RayJob", "train", kube_namespace)
    status = running["status"]
    assert status["jobDeploymentStatus"] == "Running"
    assert status["jobStatus"] == "RUNNING"
    assert status["rayClusterName"].startswith("train-")
    assert status["jobId"].startswith("train-")
    assert status["startTime"].endswith("Z")
    assert (
        status["dashboardURL"]
        == f"{status['rayClusterName']}-head-svc.{kube_namespace}.svc.cluster.local:8265"
    )
    assert "endTime" not in status
    assert running["metadata"]["generation"] == 1  # a status write is not a spec change

    ray.job_succeeded(kube_namespace, "train")
    done = read(kube_apiserver, "ray.io/v1", "RayJob", "train", kube_namespace)["status"]
    assert (done["jobDeploymentStatus"], done["jobStatus"]) == ("Complete", "SUCCEEDED")
    assert done["rayClusterName"] == status["rayClusterName"]  # chosen once, kept
    assert done["startTime"] == status["startTime"]
    assert done["endTime"] >= done["startTime"]
    assert (done["succeeded"], done["failed"]) == (1, 0)
    assert done["message"] == "Job finished successfully."


def test_rayjob_fails_with_a_message(kube_apiserver: KubeApiServer, kube_namespace: str) -> None:
    kube_apiserver.apply(minimal_rayjob("broken"), namespace=kube_namespace)
    ray = KubeRaySimulator(kube_apiserver.admin)
    ray.job_initializing(kube_namespace, "broken")
    initializing = read(kube_apiserver, "ray.io/v1", "RayJob", "broken", kube_namespace)["status"]
    assert initializing["jobDeploymentStatus"] == "Initializing"
    assert initializing.get("jobStatus", "") == ""  # JobStatusNew is the empty string

    ray.job_failed(kube_namespace, "broken", "Traceback: ValueError: no chips")
    failed = read(kube_apiserver, "ray.io/v1", "RayJob", "broken", kube_namespace)["status"]
    assert (failed["jobDeploymentStatus"], failed["jobStatus"]) == ("Failed", "FAILED")
    assert failed["reason"] == "AppFailed"
    assert failed["message"] == "Traceback: ValueError: no chips"
    assert (failed["succeeded"], failed["failed"]) == (0, 1)
    assert "endTime" in failed


def test_a_watch_sees_the_status_change(kube_apiserver: KubeApiServer, kube_namespace: str) -> None:
    """Operators learn about child status from watch events, as kopf will."""
    created = kube_apiserver.apply(minimal_rayjob("watched"), namespace=kube_namespace)[0]
    KubeRaySimulator(kube_apiserver.admin).job_running(kube_namespace, "watched")
    stream = watch.Watch().stream(
        CustomObjectsApi(kube_apiserver.admin).list_namespaced_custom_object,
        "ray.io",
        "v1",
        kube_namespace,
        "rayjobs",
        resource_version=created["metadata"]["resourceVersion"],
        timeout_seconds=10,
    )
    events = []
    for event in stream:
        events.append((event["type"], event["object"].get("status", {}).get("jobDeploymentStatus")))
        if events[-1] == ("MODIFIED", "Running"):
            break
    assert ("MODIFIED", "Running") in events


def test_inference_service_becomes_ready_then_splits_canary_traffic(
    kube_apiserver: KubeApiServer, kube_namespace: str
) -> None:
    kube_apiserver.apply(inference_service("iceberg"), namespace=kube_namespace)
    kserve = KServeSimulator(kube_apiserver.admin)

    kserve.ready(kube_namespace, "iceberg", url=f"http://iceberg.{kube_namespace}.example.com")
    isvc = read(kube_apiserver, "serving.kserve.io/v1beta1", "InferenceService", "iceberg", kube_namespace)
    status = isvc["status"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert conditions["PredictorReady"]["status"] == "True"
    assert "severity" not in conditions["Ready"] and conditions["RoutesReady"]["severity"] == "Info"
    assert status["url"] == f"http://iceberg.{kube_namespace}.example.com"
    assert status["address"]["url"] == f"http://iceberg.{kube_namespace}.svc.cluster.local"
    predictor = status["components"]["predictor"]
    assert predictor["traffic"] == [
        {"revisionName": "iceberg-predictor-00001", "latestRevision": True, "percent": 100}
    ]
    assert predictor["latestRolledoutRevision"] == "iceberg-predictor-00001"
    assert status["modelStatus"]["states"]["activeModelState"] == "Loaded"

    # A new model version rolled out as a 10 % canary: a new spec generation -> a new revision.
    kube_apiserver.apply(
        inference_service("iceberg", "s3://models/iceberg/2", canary=10), namespace=kube_namespace
    )
    kserve.ready(kube_namespace, "iceberg", canary_percent=10)
    canary = read(kube_apiserver, "serving.kserve.io/v1beta1", "InferenceService", "iceberg", kube_namespace)
    assert canary["metadata"]["generation"] == 2
    traffic = {
        t["tag"]: (t["revisionName"], t["percent"])
        for t in canary["status"]["components"]["predictor"]["traffic"]
    }
    assert traffic == {"latest": ("iceberg-predictor-00002", 10), "prev": ("iceberg-predictor-00001", 90)}
    ready_since = {c["type"]: c["lastTransitionTime"] for c in canary["status"]["conditions"]}
    assert ready_since["Ready"] == conditions["Ready"]["lastTransitionTime"]  # stayed Ready throughout


def test_inference_service_not_ready(kube_apiserver: KubeApiServer, kube_namespace: str) -> None:
    kube_apiserver.apply(inference_service("sick"), namespace=kube_namespace)
    KServeSimulator(kube_apiserver.admin).not_ready(
        kube_namespace, "sick", reason="RevisionMissing", message="model weights not found"
    )
    status = read(kube_apiserver, "serving.kserve.io/v1beta1", "InferenceService", "sick", kube_namespace)[
        "status"
    ]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False",
        "RevisionMissing",
        "model weights not found",
    )
    assert status["modelStatus"]["transitionStatus"] == "BlockedByFailedLoad"
    assert status["modelStatus"]["lastFailureInfo"]["reason"] == "ModelLoadFailed"
    assert "url" not in status
