"""The pure ModelDeployment -> InferenceService builder, model resolution, canary staging, and the status
derived from an InferenceService."""

from datetime import UTC, datetime
from pathlib import Path

import pytest

from earthops.api import KINDS, load_manifests
from earthops.api.resources import ModelDeployment
from earthops.control.reconcile.inferenceservice import (
    CANARY_ANNOTATION,
    MODE_ANNOTATION,
    Models,
    ServedModel,
    deployment_status,
    desired_inference_service,
    needs_update,
    observe,
    pinned_models,
    predictor_command,
    resolve_models,
    stage,
    store_registry,
    updated,
)
from earthops.control.status import get_condition
from earthops.core.registry import RegistryError
from tests.infra.peers import KServeSimulator

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
V1 = ServedModel("ships", "v1", "s3://store/root/models/default/ships/v1")
V2 = ServedModel("ships", "v2", "s3://store/root/models/default/ships/v2")
IMAGE = "registry.example/earthops-runtime:1"


def _deployment(**spec) -> ModelDeployment:
    doc = {"apiVersion": "earthops.dev/v1alpha1", "kind": "ModelDeployment",
           "metadata": {"name": "ships", "namespace": "default", "uid": "uid-1", "generation": 1},
           "spec": {"modelRef": {"model": "ships", "version": "v1"}, **spec}}
    return ModelDeployment.model_validate(doc)


def _registry(known=("v1", "v2")):
    def resolve(model, version):
        if model != "ships":
            raise RegistryError(f"no model {model!r} in namespace 'default'; models: ships")
        found = known[-1] if version == "latest" else version
        if found not in known:
            raise RegistryError(f"model 'default/ships' has no version {version!r}; versions: {', '.join(known)}")
        return found, f"s3://store/root/models/default/ships/{found}"
    return resolve


def _no_refs(kind, name):
    return None


def test_a_registry_model_resolves_to_its_version_folder_and_latest_to_the_newest():
    models = resolve_models(_deployment(), _no_refs, _registry(), wait=True)
    assert models.ready and models.primary == V1
    latest = resolve_models(_deployment(modelRef={"model": "ships"}), _no_refs, _registry(), wait=True)
    assert latest.primary == V2
    assert get_condition([{"type": m.condition} for m in latest.met], "ModelReady")


def test_the_store_registry_the_operator_and_the_executor_share(tmp_path):
    from earthops.control.local import Executor
    from earthops.core.store import Store

    store = Store.from_uri(tmp_path.as_uri())
    for version in ("v1", "v2"):
        with store.publish(f"models/default/ships/{version}") as run:
            run.write_json("item.json", {})
    resolve = store_registry(store, "default")
    assert resolve("ships", "latest") == ("v2", store.url("models/default/ships/v2"))
    assert resolve("ships", "v1") == ("v1", store.url("models/default/ships/v1"))
    with pytest.raises(RegistryError, match="no model 'boats'"):
        resolve("boats", "latest")
    executor = Executor(store)  # the embedded executor resolves through the same helper
    assert executor.registry(_deployment())("ships", "latest") == resolve("ships", "latest")


def test_a_missing_model_waits_on_the_cluster_and_fails_embedded():
    waiting = resolve_models(_deployment(modelRef={"model": "ships", "version": "v7"}), _no_refs, _registry(), wait=True)
    assert not waiting.ready
    [blocker] = waiting.blockers
    assert (blocker.condition, blocker.reason, blocker.failed) == ("ModelReady", "ModelNotFound", False)
    assert "has no version 'v7'; versions: v1, v2" in blocker.message and "waiting" in blocker.message
    failed = resolve_models(_deployment(modelRef={"model": "boats"}), _no_refs, _registry(), wait=False)
    assert failed.blockers[0].failed and "no model 'boats'" in failed.blockers[0].message


def test_a_tuning_experiment_is_waited_for_until_it_registers_its_best_model():
    r = _deployment(modelRef={"tuningExperiment": "tune"})
    statuses = {"TuningExperiment": None}
    lookup = lambda kind, name: statuses[kind]  # noqa: E731

    models = resolve_models(r, lookup, _registry(), wait=True)
    assert [(b.condition, b.reason) for b in models.blockers] == [("TuningExperimentReady", "TuningExperimentNotReady")]
    assert "not found" in models.blockers[0].message

    statuses["TuningExperiment"] = {"phase": "Running"}
    assert "is Running, not Succeeded" in resolve_models(r, lookup, _registry(), wait=True).blockers[0].message

    statuses["TuningExperiment"] = {"phase": "Succeeded", "results": "s3://store/root/experiments/default/tune/g1-a"}
    no_model = resolve_models(r, lookup, _registry(), wait=True)
    assert no_model.blockers[0].reason == "ModelNotFound" and "registered no model" in no_model.blockers[0].message

    statuses["TuningExperiment"]["registeredModel"] = {"name": "tune", "version": "v3",
                                                       "uri": "s3://store/root/models/default/tune/v3"}
    models = resolve_models(r, lookup, _registry(), wait=True)
    assert models.ready and models.primary == ServedModel("tune", "v3", "s3://store/root/models/default/tune/v3")
    assert {m.condition for m in models.met} == {"TuningExperimentReady", "ModelReady"}

    statuses["TuningExperiment"] = {"phase": "Failed", "message": "all trials crashed"}
    failed = resolve_models(r, lookup, _registry(), wait=True)
    assert failed.blockers[0].failed and failed.blockers[0].reason == "TuningExperimentFailed"


def test_the_inference_service_runs_the_predictor_command_owned_by_the_deployment():
    r = _deployment(replicas={"min": 2, "max": 5, "metric": "cpu", "target": 60},
                    resources={"cpu": 2, "memory": "4Gi", "gpu": 1},
                    storage={"uri": "s3://store/root", "secretRef": {"name": "store-creds"}},
                    monitoring={"payloadLogging": True})
    isvc = desired_inference_service(r, Models(V1), image=IMAGE, generation=1)
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    meta = isvc["metadata"]
    assert meta["name"] == "ships" and meta["namespace"] == "default"
    assert meta["ownerReferences"][0]["uid"] == "uid-1" and meta["ownerReferences"][0]["controller"] is True
    assert meta["annotations"][MODE_ANNOTATION] == "Standard"
    predictor = isvc["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"], predictor["scaleMetric"], predictor["scaleTarget"]) \
        == (2, 5, "cpu", 60)
    # payload logging is the predictor's own sampled, bounded log (--payload-logging below), not KServe's
    # CloudEvents logger (whole request bodies to a broker that may not exist)
    assert "canaryTrafficPercent" not in predictor and "logger" not in predictor
    with_logger = updated(isvc, isvc)
    with_logger["spec"]["predictor"]["logger"] = {"mode": "all"}  # made by an older operator: removed
    assert needs_update(with_logger, isvc) and "logger" not in updated(with_logger, isvc)["spec"]["predictor"]
    [container] = predictor["containers"]
    assert container["image"] == IMAGE and container["name"] == "kserve-container"
    assert container["command"] == ["python", "-m", "earthops_runtime.serving", "--model-uri", V1.uri,
                                    "--model-name", "ships", "--http_port", "8080",
                                    # scenes by URI only from the deployment's store (the pod holds its credentials)
                                    "--scene-uri-prefix", "s3://store/root/",
                                    # drift monitoring (spec.monitoring's defaults): the version's own stats.json
                                    # as the reference, reports in the deployment's store
                                    "--monitor-reference", V1.uri, "--monitor-window", "500", "--monitor-interval",
                                    "5m", "--monitor-threshold", "0.2", "--monitor-store", "s3://store/root",
                                    "--monitor-deployment", "default/ships", "--payload-logging"]
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}
    assert container["envFrom"] == [{"secretRef": {"name": "store-creds"}}]
    assert "AWS" not in str(container.get("env", ""))  # credentials only by reference
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert predictor["securityContext"]["runAsNonRoot"] is True
    # the root filesystem is read-only: /tmp is an emptyDir and the caches live there
    [scratch] = [m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert predictor["volumes"] == [{"name": scratch, "emptyDir": {}}]
    assert {e["name"]: e["value"] for e in container["env"]}["XDG_CACHE_HOME"].startswith("/tmp/")


def test_mode_defaults_are_left_to_kserve_and_knative_cpu_uses_the_hpa_class():
    isvc = desired_inference_service(_deployment(), Models(V1), image=IMAGE, generation=1)
    assert "scaleMetric" not in isvc["spec"]["predictor"] and "scaleTarget" not in isvc["spec"]["predictor"]
    assert "logger" not in isvc["spec"]["predictor"]
    knative = _deployment(deploymentMode="Knative", replicas={"max": 3, "metric": "memory"})
    annotations = desired_inference_service(knative, Models(V1), image=IMAGE, generation=1)["metadata"]["annotations"]
    assert annotations[MODE_ANNOTATION] == "Knative"
    assert annotations["autoscaling.knative.dev/class"] == "hpa.autoscaling.knative.dev"
    zero = _deployment(deploymentMode="Knative", replicas={"min": 0, "max": 3, "metric": "rps", "target": 20})
    zero_isvc = desired_inference_service(zero, Models(V1), image=IMAGE, generation=1)
    assert zero_isvc["spec"]["predictor"]["minReplicas"] == 0
    assert "autoscaling.knative.dev/class" not in zero_isvc["metadata"]["annotations"]
    grpc = desired_inference_service(_deployment(protocol="grpc-v2"), Models(V1), image=IMAGE, generation=1)
    container = grpc["spec"]["predictor"]["containers"][0]
    assert container["ports"] == [{"name": "h2c", "containerPort": 8081, "protocol": "TCP"}]
    command = container["command"]
    assert command[command.index("--grpc_port") + 1] == "8081"


def _ready(isvc, *, percent=None, previous=None):
    """The InferenceService as stored and as KServe reports it Ready (generation 1 unless given)."""
    isvc = {**isvc, "metadata": {**isvc["metadata"], "generation": isvc["metadata"].get("generation", 1)}}
    traffic = [{"revisionName": "ships-predictor-00002", "latestRevision": True, "percent": percent or 100}]
    if previous:
        traffic.append({"revisionName": previous, "latestRevision": False, "percent": 100 - percent})
    isvc["status"] = {"observedGeneration": isvc["metadata"]["generation"], "url": "http://ships-default.example.com",
                      "conditions": [{"type": "Ready", "status": "True"}],
                      "modelStatus": {"transitionStatus": "UpToDate", "copies": {"failedCopies": 0, "totalCopies": 2}},
                      "components": {"predictor": {"traffic": traffic}}}
    return isvc


def test_a_canary_goes_in_only_once_the_primary_was_rolled_out_then_promotes_and_rolls_back():
    canary = _deployment(deploymentMode="Knative", canary={"modelRef": {"model": "ships", "version": "v2"},
                                                           "trafficPercent": 20})
    models = Models(V1, V2)
    # created with a canary: the primary alone first
    first = desired_inference_service(canary, models, image=IMAGE, generation=1)
    assert stage(canary, models, None) == "primary"
    assert "canaryTrafficPercent" not in first["spec"]["predictor"]
    assert first["spec"]["predictor"]["containers"][0]["command"][4] == V1.uri
    assert stage(canary, models, first) == "primary"  # not Ready yet
    rolled_out = _ready(first)
    second = desired_inference_service(canary, models, image=IMAGE, generation=1, current=rolled_out)
    assert second["spec"]["predictor"]["canaryTrafficPercent"] == 20
    assert second["spec"]["predictor"]["containers"][0]["command"][4] == V2.uri  # the canary is the latest revision
    assert second["metadata"]["annotations"][CANARY_ANNOTATION] == "ships/v2"
    assert needs_update(rolled_out, second)
    # the canary stays while the primary is the same, whatever the readiness
    replaced = updated(rolled_out, second)
    assert not needs_update(replaced, second)
    promote = canary.model_copy(update={"spec": canary.spec.model_copy(
        update={"canary": canary.spec.canary.model_copy(update={"traffic_percent": 100})})})
    promoted = desired_inference_service(promote, models, image=IMAGE, generation=2, current=replaced)
    assert promoted["spec"]["predictor"]["canaryTrafficPercent"] == 100
    # canary removed: the primary again, canaryTrafficPercent gone (an update, though the rest is a subset)
    plain = _deployment(deploymentMode="Knative")
    back = desired_inference_service(plain, Models(V1), image=IMAGE, generation=3, current=replaced)
    assert "canaryTrafficPercent" not in back["spec"]["predictor"] and CANARY_ANNOTATION not in back["metadata"]["annotations"]
    assert needs_update(replaced, back)
    assert CANARY_ANNOTATION not in updated(replaced, back)["metadata"]["annotations"]


def test_fields_kserve_defaults_are_no_difference():
    desired = desired_inference_service(_deployment(), Models(V1), image=IMAGE, generation=1)
    defaulted = updated({"metadata": {**desired["metadata"], "resourceVersion": "7"}}, desired)
    defaulted["spec"]["predictor"]["containers"][0]["readinessProbe"] = {"tcpSocket": {"port": 8080}}
    defaulted["spec"]["predictor"]["deploymentStrategy"] = {"type": "RollingUpdate"}
    assert not needs_update(defaulted, desired)
    defaulted["spec"]["predictor"]["maxReplicas"] = 9
    assert needs_update(defaulted, desired)


def test_models_are_pinned_per_generation():
    desired = desired_inference_service(_deployment(modelRef={"model": "ships"}), Models(V2), image=IMAGE, generation=4)
    assert pinned_models(desired, 4) == Models(V2)
    assert pinned_models(desired, 5) is None and pinned_models(None, 4) is None


def test_a_pinned_generation_keeps_its_drift_reference_and_its_command():
    # the second reconcile (a timer tick) rebuilds the models from the InferenceService's annotation: the
    # referenceDatasetRef's run is kept, so the command is the same and nothing rolls out again
    reference = "s3://store/root/runs/default/Dataset/ref/g1-abc"
    first = desired_inference_service(_deployment(), Models(V1, reference=reference), image=IMAGE, generation=1)
    pinned = pinned_models(first, 1)
    assert pinned == Models(V1, reference=reference)
    second = desired_inference_service(_deployment(), pinned, image=IMAGE, generation=1, current=first)
    command = second["spec"]["predictor"]["containers"][0]["command"]
    assert command[command.index("--monitor-reference") + 1] == reference
    assert not needs_update(updated(first, first), second)


def test_status_from_the_inference_service():
    r = _deployment(deploymentMode="Knative", canary={"modelRef": {"model": "ships", "version": "v2"},
                                                      "trafficPercent": 20})
    models = Models(V1, V2)
    isvc = desired_inference_service(r, models, image=IMAGE, generation=1,
                                     current=_ready(desired_inference_service(r, models, image=IMAGE, generation=1)))
    ready = _ready(isvc, percent=20, previous="ships-predictor-00001")
    observed = observe(ready, models, mode="Knative")
    status = deployment_status(generation=1, previous=None, observed=observed, models=models, run="g1-x", at=T0)
    assert status["phase"] == "Ready" and status["observedGeneration"] == 1
    assert status["url"] == "http://ships-default.example.com" and status["readyReplicas"] == 2
    assert (status["modelVersion"], status["canaryVersion"], status["canaryTrafficPercent"]) == ("ships/v1", "ships/v2", 20)
    assert status["traffic"] == [{"version": "ships/v1", "percent": 80, "role": "primary"},
                                 {"version": "ships/v2", "percent": 20, "role": "canary"}]
    assert status["modelUri"] == V1.uri and status["canaryModelUri"] == V2.uri
    cond = get_condition(status["conditions"], "Ready")
    assert (cond["status"], cond["observedGeneration"]) == ("True", 1)
    KINDS["ModelDeployment"].status.model_validate(status)

    # not there yet, rolling out, failing to load
    pending = deployment_status(generation=1, previous=status, observed=observe(None, models, mode="Knative"),
                                models=models, run="g1-x", at=T0)
    assert pending["phase"] == "Pending" and get_condition(pending["conditions"], "Ready")["reason"] == "InferenceServiceCreating"
    rolling = {**ready, "metadata": {**ready["metadata"], "generation": 2}}
    assert observe(rolling, models, mode="Knative").execution.reason == "RollingOut"
    broken = {**ready, "status": {**ready["status"], "conditions": [{"type": "Ready", "status": "False",
                                                                      "reason": "RevisionFailed", "message": "exit 1"}]}}
    failed = deployment_status(generation=1, previous=None, observed=observe(broken, models, mode="Knative"),
                               models=models, run="g1-x", at=T0)
    assert failed["phase"] == "Failed" and V2.uri in failed["message"] and "exit 1" in failed["message"]
    assert failed["readyReplicas"] == 0
    # in Standard mode Ready=False is a starting Deployment, unless the model failed to load
    standard = {**broken, "status": {**broken["status"], "modelStatus": {"transitionStatus": "InProgress"}}}
    assert observe(standard, models, mode="Standard").execution.state == "Pending"
    load_failed = {**broken, "status": {**broken["status"], "modelStatus": {
        "transitionStatus": "BlockedByFailedLoad",
        "lastFailureInfo": {"reason": "ModelLoadFailed", "message": "no such object"}}}}
    ex = observe(load_failed, models, mode="Standard").execution
    assert (ex.state, ex.reason) == ("Failed", "ModelLoadFailed") and "no such object" in ex.message


def test_status_read_from_what_the_kserve_simulator_writes():
    """The projection reads the fields as KServe writes them (tests/infra/peers.py follows KServe's sources)."""
    isvc = desired_inference_service(_deployment(), Models(V1), image=IMAGE, generation=1)
    isvc["metadata"]["generation"] = 1
    sim = KServeSimulator.__new__(KServeSimulator)
    sim.domain = "example.com"
    written = None

    class FakeApi:
        def get_namespaced_custom_object(self, *a):
            return isvc

        def replace_namespaced_custom_object_status(self, *a):
            nonlocal written
            written = a[-1]
            return a[-1]

    sim.api = FakeApi()
    sim.ready("default", "ships", url="http://127.0.0.1:9999")
    status = deployment_status(generation=1, previous=None, observed=observe(written, Models(V1), mode="Standard"),
                               models=Models(V1), run="g1-x", at=T0)
    assert status["phase"] == "Ready" and status["url"] == "http://127.0.0.1:9999" and status["readyReplicas"] == 1
    assert status["traffic"] == [{"version": "ships/v1", "percent": 100, "role": "primary"}]


def test_the_example_deployments_build():
    for path in ("examples/ship-iceberg/04-deployment.yaml", "examples/landcover-s2/03-deployment.yaml"):
        [r] = [d for d in load_manifests([ROOT / path]) if d.kind == "ModelDeployment"]
        r = r.model_copy(update={"metadata": r.metadata.model_copy(update={"uid": "u"})})
        isvc = desired_inference_service(r, Models(V1, V2 if r.spec.canary else None), image=IMAGE, generation=1)
        assert isvc["spec"]["predictor"]["containers"][0]["command"][:3] == ["python", "-m", "earthops_runtime.serving"]


def test_the_local_command_splits_by_the_canary_percent():
    r = _deployment(deploymentMode="Knative", canary={"modelRef": {"model": "ships", "version": "v2"},
                                                      "trafficPercent": 20})
    argv = predictor_command(r, V1, http_port=18080, canary=V2, canary_percent=20)
    assert argv[argv.index("--canary-model-uri") + 1] == V2.uri and argv[argv.index("--canary-percent") + 1] == "20"
    assert argv[argv.index("--http_port") + 1] == "18080"


def test_names_kserve_cannot_take_are_refused_naming_the_field():
    dotted = _deployment()
    dotted = dotted.model_copy(update={"metadata": dotted.metadata.model_copy(update={"name": "ships.v1"})})
    with pytest.raises(ValueError, match=r"metadata.name 'ships.v1': .*DNS-1035 labels only"):
        desired_inference_service(dotted, Models(V1), image=IMAGE, generation=1)


def test_serve_refuses_bad_arguments_before_starting_anything(tmp_path):
    from typer.testing import CliRunner

    from earthops.control.cli import app

    runner = CliRunner()
    half = runner.invoke(app, ["serve", "ships", "--canary", "v2", "--store", tmp_path.as_uri()])
    assert half.exit_code == 2 and "--canary and --canary-percent go together" in half.stderr
    bad = runner.invoke(app, ["serve", "Ships_1", "--store", tmp_path.as_uri()])
    assert bad.exit_code == 2 and "spec.modelRef.model" in bad.stderr
    missing = runner.invoke(app, ["serve", "ships", "--store", tmp_path.as_uri()])
    assert missing.exit_code == 2 and "no model 'ships' in namespace 'default'" in missing.stderr  # bad input, as `run` says
