"""Stand-ins for the KubeRay and KServe controllers: they write child status the way the real ones do.

Against the envtest API server nothing runs pods, so no RayJob ever starts and no InferenceService
ever becomes ready on its own. These simulators move a child through its lifecycle by writing its
``status`` through the status subresource — a read followed by a PUT with the read resourceVersion,
exactly like the controllers' ``r.Status().Update(ctx, obj)`` — so the earthops operator can be
driven through a full lifecycle and sees the same fields, values and transitions it will see on a
cluster. Only the status is touched (spec and metadata writes through /status are ignored by the
server anyway).

Field names, values and transitions follow the pinned sources (tests/envtest/versions.env):
- KubeRay ``ray-operator/apis/ray/v1/rayjob_types.go`` and ``controllers/ray/rayjob_controller.go``
  (``initRayJobStatusIfNeed``, ``updateRayJobStatus``, ``checkBackoffLimitAndUpdateStatusIfNeeded``).
- KServe ``pkg/apis/serving/v1beta1/inference_service_status.go`` (``PropagateStatus``: Knative
  deployment mode, the default) and the Knative ``TrafficTarget`` / ``Condition`` types.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes.client import ApiException, CustomObjectsApi

JsonDict = dict[str, Any]

# KubeRay values (apis/ray/v1/rayjob_types.go)
JOB_STATUS_NEW = ""
JOB_PENDING, JOB_RUNNING, JOB_STOPPED, JOB_SUCCEEDED, JOB_FAILED = (
    "PENDING",
    "RUNNING",
    "STOPPED",
    "SUCCEEDED",
    "FAILED",
)
DEPLOYMENT_INITIALIZING = "Initializing"
DEPLOYMENT_RUNNING = "Running"
DEPLOYMENT_COMPLETE = "Complete"
DEPLOYMENT_FAILED = "Failed"
REASON_APP_FAILED = "AppFailed"
REASON_SUBMISSION_FAILED = "SubmissionFailed"
REASON_DEADLINE_EXCEEDED = "DeadlineExceeded"
#: The message Ray's job manager reports for a job that exited 0.
RAY_SUCCESS_MESSAGE = "Job finished successfully."


def rfc3339(when: dt.datetime | None = None) -> str:
    """A ``metav1.Time`` as the API server stores it: UTC, whole seconds."""
    when = when or dt.datetime.now(dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _random_suffix(n: int = 5) -> str:
    # k8s.io/apimachinery/pkg/util/rand.String: lowercase consonants and digits, no vowels.
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return "".join(secrets.choice(alphabet) for _ in range(n))


class _StatusWriter:
    """Read-modify-write of one kind's status subresource, retried on a resourceVersion conflict."""

    group: str
    version: str
    plural: str

    def __init__(self, api_client: Any) -> None:
        self.api = CustomObjectsApi(api_client)

    def get(self, namespace: str, name: str) -> JsonDict:
        return self.api.get_namespaced_custom_object(self.group, self.version, namespace, self.plural, name)

    def status(self, namespace: str, name: str) -> JsonDict:
        return dict(self.get(namespace, name).get("status") or {})

    def update_status(
        self, namespace: str, name: str, change: Callable[[JsonDict, JsonDict], JsonDict], attempts: int = 5
    ) -> JsonDict:
        """``change(object, status) -> new status``; PUT to /status with the object's resourceVersion."""
        for attempt in range(attempts):
            obj = self.get(namespace, name)
            obj["status"] = change(obj, dict(obj.get("status") or {}))
            try:
                return self.api.replace_namespaced_custom_object_status(
                    self.group, self.version, namespace, self.plural, name, obj
                )
            except ApiException as e:
                if e.status != 409 or attempt == attempts - 1:  # 409: someone wrote in between
                    raise
        raise AssertionError("unreachable")


class KubeRaySimulator(_StatusWriter):
    """Plays KubeRay's RayJob controller (``ray.io/v1``): New -> Initializing -> Running -> Complete/Failed.

    Each call performs every transition the real controller would pass through to get there, so
    ``job_succeeded`` on a brand-new RayJob also fills ``jobId``, ``rayClusterName`` and ``startTime``.
    """

    group, version, plural = "ray.io", "v1", "rayjobs"

    def job_initializing(self, namespace: str, name: str) -> JsonDict:
        """``initRayJobStatusIfNeed``: ids and cluster name chosen, ``startTime`` set."""
        return self.update_status(namespace, name, self._initialize)

    def job_running(self, namespace: str, name: str, *, message: str = "") -> JsonDict:
        """The RayCluster is ready and the dashboard reports the job RUNNING."""

        def change(obj: JsonDict, status: JsonDict) -> JsonDict:
            status = self._initialize(obj, status)
            return self._job_info(obj, status, JOB_RUNNING, DEPLOYMENT_RUNNING, reason="", message=message)

        return self.update_status(namespace, name, change)

    def job_succeeded(self, namespace: str, name: str, *, message: str = RAY_SUCCESS_MESSAGE) -> JsonDict:
        """The Ray job SUCCEEDED: deployment ``Complete``, ``endTime`` set, ``succeeded`` counted."""
        return self._finish(namespace, name, JOB_SUCCEEDED, DEPLOYMENT_COMPLETE, "", message)

    def job_failed(
        self, namespace: str, name: str, message: str, *, reason: str = REASON_APP_FAILED
    ) -> JsonDict:
        """The job failed: deployment ``Failed`` with ``reason`` (AppFailed: the Ray job itself FAILED;
        SubmissionFailed / DeadlineExceeded: KubeRay gave up) and ``message``; ``failed`` counted."""
        job_status = JOB_FAILED if reason == REASON_APP_FAILED else None
        return self._finish(namespace, name, job_status, DEPLOYMENT_FAILED, reason, message)

    def job_stopped(
        self, namespace: str, name: str, *, message: str = "Job was intentionally stopped."
    ) -> JsonDict:
        """The Ray job was STOPPED (e.g. ``ray job stop``): KubeRay treats it as terminal, ``Complete``."""
        return self._finish(namespace, name, JOB_STOPPED, DEPLOYMENT_COMPLETE, "", message)

    # -- transitions --------------------------------------------------------------------------------

    @staticmethod
    def _initialize(obj: JsonDict, status: JsonDict) -> JsonDict:
        if status.get("jobId") and status.get("rayClusterName") and "jobStatus" in status:
            return status  # already initialized: the real controller does not touch it again
        spec, name = obj.get("spec") or {}, obj["metadata"]["name"]
        if spec.get("submissionMode") != "InteractiveMode" and not status.get("jobId"):
            status["jobId"] = spec.get("jobId") or f"{name}-{_random_suffix()}"
        if not status.get("rayClusterName"):
            selector = (spec.get("clusterSelector") or {}).get("ray.io/cluster")
            status["rayClusterName"] = selector or f"{name}-{_random_suffix()}"
        status.setdefault("jobStatus", JOB_STATUS_NEW)
        status["jobDeploymentStatus"] = DEPLOYMENT_INITIALIZING
        status["startTime"] = rfc3339()
        return status

    @staticmethod
    def _job_info(
        obj: JsonDict, status: JsonDict, job_status: str | None, deployment: str, *, reason: str, message: str
    ) -> JsonDict:
        namespace = obj["metadata"]["namespace"]
        cluster = status["rayClusterName"]
        status["dashboardURL"] = f"{cluster}-head-svc.{namespace}.svc.cluster.local:8265"
        status["rayClusterStatus"] = {
            "state": "ready",
            "head": {"serviceName": f"{cluster}-head-svc"},
            "conditions": [
                {
                    "type": "HeadPodReady",
                    "status": "True",
                    "reason": "HeadPodRunningAndReady",
                    "message": "",
                    "lastTransitionTime": rfc3339(),
                },
                {
                    "type": "RayClusterProvisioned",
                    "status": "True",
                    "reason": "AllPodRunningAndReadyFirstTime",
                    "message": "",
                    "lastTransitionTime": rfc3339(),
                },
            ],
        }
        if job_status is not None:
            status["jobStatus"] = job_status
            info = dict(status.get("rayJobInfo") or {})
            info.setdefault("startTime", rfc3339())
            if job_status in (JOB_SUCCEEDED, JOB_FAILED, JOB_STOPPED):
                info["endTime"] = rfc3339()
            status["rayJobInfo"] = info
        status["jobDeploymentStatus"] = deployment
        # The controller overwrites both from every dashboard poll; empty values are omitted (omitempty).
        for key, value in (("reason", reason), ("message", message)):
            if value:
                status[key] = value
            else:
                status.pop(key, None)
        status["observedGeneration"] = obj["metadata"].get("generation", 1)
        return status

    def _finish(
        self, namespace: str, name: str, job_status: str | None, deployment: str, reason: str, message: str
    ) -> JsonDict:
        def change(obj: JsonDict, status: JsonDict) -> JsonDict:
            status = self._initialize(obj, status)
            status = self._job_info(obj, status, job_status, deployment, reason=reason, message=message)
            # updateRayJobStatus: endTime when the deployment becomes terminal; the counters are
            # incremented once per terminal transition (checkBackoffLimitAndUpdateStatusIfNeeded).
            status["endTime"] = rfc3339()
            status["succeeded"] = int(status.get("succeeded") or 0) + (job_status == JOB_SUCCEEDED)
            status["failed"] = int(status.get("failed") or 0) + (deployment == DEPLOYMENT_FAILED)
            return status

        return self.update_status(namespace, name, change)


class KServeSimulator(_StatusWriter):
    """Plays KServe's InferenceService controller (``serving.kserve.io/v1beta1``, Knative mode).

    ``ready`` publishes a Ready service with its URLs, the predictor's revisions and traffic split
    (a canary splits traffic between the ``latest`` and ``prev`` tagged revisions, as KServe's
    ``canaryTrafficPercent`` does); ``not_ready`` marks it failed with a reason and message.
    Revision names follow Knative: ``<name>-predictor-<5-digit generation>``.
    """

    group, version, plural = "serving.kserve.io", "v1beta1", "inferenceservices"

    #: The conditions KServe maintains in Knative mode (sorted by type, as Knative stores them).
    CONDITIONS = (
        "IngressReady",
        "LatestDeploymentReady",
        "PredictorConfigurationReady",
        "PredictorReady",
        "PredictorRouteReady",
        "Ready",
        "RoutesReady",
    )

    def __init__(self, api_client: Any, *, domain: str = "example.com") -> None:
        super().__init__(api_client)
        self.domain = domain  # Knative's default external domain

    def ready(
        self,
        namespace: str,
        name: str,
        *,
        url: str | None = None,
        canary_percent: int | None = None,
        model_copies: int = 1,
    ) -> JsonDict:
        """Ready: all conditions True, ``url``/``address`` set, traffic on the latest revision.

        ``canary_percent`` (if given, and the spec has changed since the first revision) sends that
        share to the latest revision and the rest to the previously rolled-out one.
        """

        def change(obj: JsonDict, status: JsonDict) -> JsonDict:
            generation = int(obj["metadata"].get("generation", 1))
            latest = self._revision(name, generation)
            predictor = dict((status.get("components") or {}).get("predictor") or {})
            previous = predictor.get("latestRolledoutRevision")
            external = url or f"http://{name}-{namespace}.{self.domain}"
            predictor_url = f"http://{name}-predictor-{namespace}.{self.domain}"
            if canary_percent is not None and previous and previous != latest:
                traffic = [
                    {
                        "tag": "latest",
                        "revisionName": latest,
                        "latestRevision": True,
                        "percent": canary_percent,
                        "url": f"http://latest-{name}-predictor-{namespace}.{self.domain}",
                    },
                    {
                        "tag": "prev",
                        "revisionName": previous,
                        "latestRevision": False,
                        "percent": 100 - canary_percent,
                        "url": f"http://prev-{name}-predictor-{namespace}.{self.domain}",
                    },
                ]
            else:
                traffic = [{"revisionName": latest, "latestRevision": True, "percent": 100}]
                if predictor.get("latestRolledoutRevision") != latest:  # PropagateStatus bookkeeping
                    if predictor.get("latestRolledoutRevision"):
                        predictor["previousRolledoutRevision"] = predictor["latestRolledoutRevision"]
                    predictor["latestRolledoutRevision"] = latest
            predictor.update(
                latestCreatedRevision=latest,
                latestReadyRevision=latest,
                traffic=traffic,
                url=predictor_url,
                address={"url": f"http://{name}-predictor.{namespace}.svc.cluster.local"},
            )
            status.update(
                conditions=self._conditions(status, {t: ("True", "", "") for t in self.CONDITIONS}),
                url=external,
                address={"url": f"http://{name}.{namespace}.svc.cluster.local"},
                components={**(status.get("components") or {}), "predictor": predictor},
                modelStatus={
                    "transitionStatus": "UpToDate",
                    "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"},
                    "copies": {"failedCopies": 0, "totalCopies": model_copies},
                },
                observedGeneration=generation,
                deploymentMode="Knative",
            )
            return status

        return self.update_status(namespace, name, change)

    def not_ready(
        self,
        namespace: str,
        name: str,
        *,
        reason: str = "RevisionFailed",
        message: str = "Revision failed to become ready",
        model_load_failed: bool = True,
    ) -> JsonDict:
        """Not ready: ``Ready``/``PredictorReady`` False with ``reason`` and ``message``.

        With ``model_load_failed`` the model status says so as KServe does when the storage
        initializer or the model server fails to load the model.
        """

        def change(obj: JsonDict, status: JsonDict) -> JsonDict:
            generation = int(obj["metadata"].get("generation", 1))
            latest = self._revision(name, generation)
            # The failed revision's configuration fails; routes keep pointing at the last good
            # revision (or never got one), and the happy condition takes the failing dependent's
            # reason and message.
            failing = ("False", reason, message)
            conditions = dict.fromkeys(
                ("LatestDeploymentReady", "PredictorConfigurationReady", "PredictorReady", "Ready"), failing
            )
            for route in ("IngressReady", "PredictorRouteReady", "RoutesReady"):
                known = next((c for c in status.get("conditions") or [] if c["type"] == route), None)
                conditions[route] = (
                    (known["status"], known.get("reason", ""), known.get("message", ""))
                    if known
                    else ("Unknown", reason, message)
                )
            predictor = dict((status.get("components") or {}).get("predictor") or {})
            predictor["latestCreatedRevision"] = latest
            status.update(
                conditions=self._conditions(status, conditions),
                components={**(status.get("components") or {}), "predictor": predictor},
                observedGeneration=generation,
                deploymentMode="Knative",
            )
            if model_load_failed:
                status["modelStatus"] = {
                    "transitionStatus": "BlockedByFailedLoad",
                    "states": {"activeModelState": "", "targetModelState": "FailedToLoad"},
                    "lastFailureInfo": {
                        "location": f"{latest}-deployment",
                        "reason": "ModelLoadFailed",
                        "message": message,
                        "time": rfc3339(),
                    },
                    "copies": {"failedCopies": 1, "totalCopies": 1},
                }
            return status

        return self.update_status(namespace, name, change)

    # -- helpers ------------------------------------------------------------------------------------

    @staticmethod
    def _revision(name: str, generation: int) -> str:
        return f"{name}-predictor-{generation:05d}"

    #: Knative's ConditionSet for an InferenceService: the happy condition and its dependents are
    #: "terminal" (severity Error, which is the empty string and omitted); all others get Info.
    TERMINAL_CONDITIONS = ("Ready", "PredictorReady", "IngressReady")

    @classmethod
    def _conditions(cls, status: JsonDict, wanted: Mapping[str, tuple[str, str, str]]) -> list[JsonDict]:
        """Knative ``SetCondition``: ``lastTransitionTime`` changes only when the condition changes."""
        old = {c["type"]: c for c in status.get("conditions") or []}
        out = []
        for ctype in sorted(set(old) | set(wanted)):
            if ctype not in wanted:
                out.append(old[ctype])
                continue
            value, reason, message = wanted[ctype]
            cond: JsonDict = {"type": ctype, "status": value}
            if reason:
                cond["reason"] = reason
            if message:
                cond["message"] = message
            if ctype not in cls.TERMINAL_CONDITIONS:
                cond["severity"] = "Info"
            previous = old.get(ctype)
            unchanged = previous is not None and all(
                previous.get(k) == cond.get(k) for k in ("status", "reason", "message", "severity")
            )
            cond["lastTransitionTime"] = previous["lastTransitionTime"] if unchanged else rfc3339()
            out.append(cond)
        return out


__all__ = [
    "KServeSimulator",
    "KubeRaySimulator",
    "rfc3339",
]


def minimal_rayjob(name: str, entrypoint: str = "python -c 'print(1)'") -> JsonDict:
    """The smallest RayJob the real KubeRay CRD accepts, for tests of the server and the simulators."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": name},
        "spec": {
            "entrypoint": entrypoint,
            "rayClusterSpec": {
                "headGroupSpec": {
                    "rayStartParams": {},
                    "template": {"spec": {"containers": [{"name": "ray-head", "image": "rayproject/ray:2.60.0"}]}},
                }
            },
        },
    }
