"""No secret value ever appears where people and tools can read it: a canary secret is planted as the S3
credentials — a SeaweedFS server of the test's own whose access key and secret key are the canary — and
every spec, status, event, child object, log line, report, STAC item and store object is searched for it.

* Embedded: ``earthops run -f`` (its own local Ray) builds a dataset and tunes a model on it into ``s3://`` with the canary
  credentials in ``AWS_*`` (as a user runs it); then ``get``/``describe``/``get models``/``search``.
  Searched: their output, every object in the bucket (status files, STAC collections and items,
  reports, model cards, Parquet indexes, checkpoints), the applied resources' recorded state.
* Operator: the credentials in a Secret that the resources name (``storage.secretRef``); the operator
  (chart ServiceAccount) reads it to follow the run in the bucket. Searched: every earthops resource,
  RayJob, ConfigMap, InferenceService and event of the namespace (specs, statuses, annotations) and the
  operator's log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import CoreV1Api, CustomObjectsApi

from earthops.api import KINDS
from earthops.core.store import Store
from tests.infra.earthops_kube import API, wait_status, write_runtime
from tests.infra.operator import running_operator
from tests.infra.peers import KubeRaySimulator
from tests.infra.pytest_datasets import example
from tests.infra.s3 import SeaweedS3

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ACCESS_KEY = "canaryAccessKey7Q2"
SECRET_KEY = "canary-secret-value-do-not-leak-5f9e1c"


@pytest.fixture(scope="module")
def canary_s3(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with SeaweedS3(tmp_path_factory.mktemp("canary-s3"), access_key=ACCESS_KEY, secret_key=SECRET_KEY) as s3:
        yield s3


def leaks(text: str | bytes) -> list[str]:
    """Which canary values ``text`` holds (in any of the forms they could be written in)."""
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
    import base64

    forms = {"secret key": SECRET_KEY, "access key": ACCESS_KEY,
             "secret key (base64)": base64.b64encode(SECRET_KEY.encode()).decode(),
             "secret key (hex, as Ray Tune writes pickles into JSON)": SECRET_KEY.encode().hex(),
             "access key (hex)": ACCESS_KEY.encode().hex()}
    return [what for what, value in forms.items() if value.encode() in raw or value.upper().encode() in raw]


def bucket_objects(s3: SeaweedS3, bucket: str) -> dict[str, bytes]:
    fs = s3.filesystem()
    return {key: fs.cat_file(key) for key in fs.find(bucket)}


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "earthops.control.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env, "COLUMNS": "200"}, timeout=600, cwd=ROOT)


@pytest.mark.slow
def test_no_credential_in_any_output_report_stac_item_or_store_object_embedded(canary_s3: SeaweedS3,
                                                                              tmp_path: Path) -> None:
    bucket = canary_s3.create_bucket("canary-embedded")
    store = f"s3://{bucket}/team"
    env = {**canary_s3.env(), "EARTHOPS_STORE": store}
    dataset = example("examples/ship-iceberg/01-dataset.yaml", **{"spec.source.sample.count": 60})
    tuning = example("examples/ship-iceberg/02-tuning.yaml", **{
        "spec.model.parameters.width": 0.25, "spec.training.epochs": 1, "spec.maxTrials": 2,
        "spec.maxConcurrentTrials": 1, "spec.earlyStopping.gracePeriod": 1, "spec.earlyStopping.minTrials": 1})
    files = []
    for name, doc in (("dataset", dataset), ("tuning", tuning)):
        files += ["-f", str(tmp_path / f"{name}.yaml")]
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    # its own local Ray (not the session's): the workers get the credentials from the environment, as a
    # RayJob's pods get them from the Secret
    outputs = {"run": cli("run", *files, env=env)}
    assert outputs["run"].returncode == 0, outputs["run"].stdout[-3000:] + outputs["run"].stderr[-3000:]
    outputs |= {"get": cli("get", "-o", "yaml", env=env), "describe": cli("describe", "tex", "iceberg-tuning", env=env),
                "models": cli("get", "models", "-o", "json", env=env),
                "model": cli("describe", "model", "iceberg-tuning", env=env),
                "search": cli("search", "-o", "json", env=env)}
    for what, out in outputs.items():
        assert out.returncode == 0, (what, out.stderr[-2000:])
        assert not leaks(out.stdout + out.stderr), (what, leaks(out.stdout + out.stderr))

    objects = bucket_objects(canary_s3, bucket)
    kinds = {Path(k).suffix for k in objects}
    # what the run published: status files, STAC collection and items, reports, the model's card and weights
    assert {".json", ".parquet"} <= kinds and any(k.endswith("status.json") for k in objects)
    assert any("/models/" in k for k in objects) and any("collection.json" in k for k in objects)
    for key, data in objects.items():
        assert not leaks(data), (key, leaks(data))
    print(f"\nembedded: {len(objects)} store objects and {len(outputs)} command outputs searched, no canary")


def test_no_credential_in_any_spec_status_event_child_or_operator_log(canary_s3: SeaweedS3, kube_apiserver: Any,
                                                                     kube_namespace: str, tmp_path: Path) -> None:
    kube, ns = kube_apiserver, kube_namespace
    bucket = canary_s3.create_bucket("canary-operator")
    creds = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
             "AWS_ENDPOINT_URL": canary_s3.endpoint_url, "AWS_REGION": canary_s3.region}
    kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "team-s3", "namespace": ns},
                "stringData": creds})
    storage = {"uri": f"s3://{bucket}/team", "secretRef": {"name": "team-s3"}}
    dataset = example("examples/ship-iceberg/01-dataset.yaml", **{"spec.output.storage": storage,
                                                                    "metadata.namespace": ns})
    deployment = example("examples/ship-iceberg/04-deployment.yaml", **{"spec.storage": storage,
                                                                         "metadata.namespace": ns})
    with running_operator(kube, ns, tmp_path, (tmp_path / "store").as_uri()) as op:
        kube.apply(dataset)
        kube.apply(deployment)
        st = wait_status(kube, "EODataset", ns, "iceberg-chips", op, "a RayJob", lambda s: s.get("rayJobName"))
        ray = KubeRaySimulator(kube.admin)
        ray.job_running(ns, st["rayJobName"])
        # the runtime's status.json in the bucket: the operator reads it with the Secret's credentials
        store = Store.from_uri(storage["uri"], env=creds)
        write_runtime(store, "EODataset", ns, "iceberg-chips", st["runId"], "Succeeded",
                      results={"chips": {"train": 7, "validation": 2, "test": 1}})
        ray.job_succeeded(ns, st["rayJobName"])
        st = wait_status(kube, "EODataset", ns, "iceberg-chips", op, "Succeeded from the bucket",
                         lambda s: s.get("phase") == "Succeeded")
        assert st["results"].startswith(f"s3://{bucket}/team/")
        wait_status(kube, "ModelDeployment", ns, "iceberg-classifier", op, "a status",
                    lambda s: s.get("observedGeneration") == 1)
    api = CustomObjectsApi(kube.admin)
    searched: dict[str, Any] = {}
    for kind, info in KINDS.items():
        for obj in api.list_namespaced_custom_object(API.split("/")[0], API.split("/")[1], ns, info.plural)["items"]:
            searched[f"{kind}/{obj['metadata']['name']}"] = obj
    for group, version, plural in (("ray.io", "v1", "rayjobs"), ("serving.kserve.io", "v1beta1", "inferenceservices")):
        for obj in api.list_namespaced_custom_object(group, version, ns, plural)["items"]:
            searched[f"{plural}/{obj['metadata']['name']}"] = obj
    core = CoreV1Api(kube.admin)
    for cm in core.list_namespaced_config_map(ns).items:
        searched[f"configmap/{cm.metadata.name}"] = cm.to_dict()
    for event in core.list_namespaced_event(ns).items:
        searched[f"event/{event.metadata.name}"] = event.to_dict()
    assert any(k.startswith("rayjobs/") for k in searched) and any(k.startswith("event/") for k in searched)
    rayjob = next(v for k, v in searched.items() if k.startswith("rayjobs/"))
    assert "team-s3" in json.dumps(rayjob)  # the pods get the Secret by name (envFrom), never its values
    for what, obj in searched.items():
        text = json.dumps(obj, default=str)
        assert not leaks(text), (what, leaks(text))
    log = op.log.read_text()
    assert not leaks(log), leaks(log)
    print(f"\noperator: {len(searched)} objects and {len(log.splitlines())} log lines searched, no canary")
