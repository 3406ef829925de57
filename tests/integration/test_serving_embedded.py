"""ModelDeployment and `earthops serve` on this machine: the real predictor started by the command line
on 127.0.0.1, its URL and example request printed, real requests, a canary split by the deployment's
percent, Ctrl-C and SIGTERM shut it down cleanly, a killed command line leaves no predictor behind.

The models are two real versions registered on the session's ship/iceberg dataset."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from earthops.core.store import Store
from earthops_runtime import facade
from tests.infra.kserve_standin import register_versions
from tests.infra.proc import wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
NS = "default"
URL = re.compile(r"serving at (http://127\.0\.0\.1:\d+)")


@pytest.fixture(scope="module")
def models(tmp_path_factory, iceberg_dataset):
    store = Store.from_uri(tmp_path_factory.mktemp("serving-store").as_uri())
    return store, register_versions(store, NS, iceberg_dataset.run_uri)


def _cli(*args: str, store: Store, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "earthops.control.cli", *args, "--store", store.uri], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _start(*args: str, store: Store, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The command line in the background, once it printed where the model answers."""
    proc = subprocess.Popen([sys.executable, "-m", "earthops.control.cli", *args, "--store", store.uri, "--port", "0"],
                            cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    wait_for(lambda: URL.search(log.read_text(errors="replace")) is not None, timeout=180,
             what="the local model server's URL", proc=proc, log_path=log)
    return proc, URL.search(log.read_text())[1]


def _infer(url: str, name: str, request: dict, n: int = 1) -> list[dict]:
    out = []
    for _ in range(n):
        req = urllib.request.Request(f"{url}/v2/models/{name}/infer", data=json.dumps(request).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as reply:
            out.append(json.loads(reply.read()))
    return out


def _predictors(uri: str) -> list[str]:
    """Predictor processes serving ``uri`` (their command line names it)."""
    found = subprocess.run(["pgrep", "-f", f"earthops_runtime.serving --model-uri {uri}"], capture_output=True, text=True)
    return found.stdout.split()


def _deployment(tmp_path: Path, **spec) -> Path:
    path = tmp_path / "deployment.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "earthops.dev/v1alpha1", "kind": "ModelDeployment",
                                    "metadata": {"name": "ships", "namespace": NS},
                                    "spec": {"modelRef": {"model": "iceberg", "version": "v1"}, **spec}}))
    return path


def test_run_predict_once_serves_a_test_chip_and_records_the_deployment(models, tmp_path):
    store, uris = models
    result = _cli("run", "-f", str(_deployment(tmp_path)), "--port", "0", "--predict-once", store=store)
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    assert "ModelDeployment default/ships: Ready: serving iceberg/v1 at http://127.0.0.1:" in result.stderr + out
    assert re.search(r"curl -s -X POST http://127\.0\.0\.1:\d+/v2/models/ships/infer .* -d @\S+\.json", out), out
    assert re.search(r"ships: prediction for test chip \S+ \(true class: (ship|iceberg)\): model version v1; ", out), out
    assert _predictors(uris["v1"]) == []
    # get and describe show what was served; once stopped it is no longer Ready
    table = _cli("get", "mdep", "-o", "wide", store=store).stdout
    assert table.split("\n")[0].split() == ["NAMESPACE", "NAME", "PHASE", "URL", "MODEL", "CANARY", "READY",
                                            "CANARY-MODEL", "DRIFT", "AGE"]
    assert table.split("\n")[1].split()[:4] == ["default", "ships", "Pending", "iceberg/v1"]
    described = _cli("describe", "mdep", "ships", store=store).stdout
    assert "modelVersion: iceberg/v1" in described and "Stopped" in described and uris["v1"] in described


def test_serve_until_interrupted_with_a_canary_split_by_its_percent(models, tmp_path):
    store, uris = models
    sample = facade.test_request(uris["v1"])
    path = _deployment(tmp_path, deploymentMode="Knative",
                       canary={"modelRef": {"model": "iceberg", "version": "v2"}, "trafficPercent": 25})
    log = tmp_path / "run.log"
    proc, url = _start("run", "-f", str(path), store=store, log=log)
    try:
        # while it serves, `get` shows the URL and the split
        shown = json.loads(_cli("get", "mdep", "ships", "-o", "json", store=store).stdout)["status"]
        assert shown["phase"] == "Ready" and shown["url"] == url and shown["canaryTrafficPercent"] == 25
        assert shown["traffic"] == [{"version": "iceberg/v1", "percent": 75, "role": "primary"},
                                    {"version": "iceberg/v2", "percent": 25, "role": "canary"}]
        versions = [r["model_version"] for r in _infer(url, "ships", sample["request"], 20)]
        assert versions.count("v2") == 5 and versions.count("v1") == 15, versions
        assert len(_predictors(uris["v1"])) == 1
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    assert code == 0, log.read_text()
    assert _predictors(uris["v1"]) == []
    assert "serving until interrupted (Ctrl-C)" in log.read_text()
    assert json.loads(_cli("get", "mdep", "ships", "-o", "json", store=store).stdout)["status"]["phase"] == "Pending"


def test_serve_a_registered_model_sigterm_and_a_killed_command_line(models, tmp_path):
    store, uris = models
    sample = facade.test_request(uris["v2"])
    log = tmp_path / "serve.log"
    proc, url = _start("serve", "iceberg", store=store, log=log)  # the latest version: v2
    assert f"curl -s -X POST {url}/v2/models/iceberg/infer" in log.read_text()
    assert _infer(url, "iceberg", sample["request"])[0]["model_version"] == "v2"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()
    assert _predictors(uris["v2"]) == []

    # SIGKILL gives the command line no chance to stop it: the predictor dies with it all the same
    proc, url = _start("serve", "iceberg/v1", store=store, log=tmp_path / "killed.log")
    [pid] = _predictors(uris["v1"])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_for(lambda: not _predictors(uris["v1"]), timeout=30, what=f"predictor {pid} gone with its command line")


def test_bad_model_references_say_what_exists(models, tmp_path):
    store, _ = models
    missing = _cli("serve", "iceberg/v9", store=store)
    assert missing.returncode == 2 and "has no version 'v9'; versions: v1, v2" in missing.stderr
    unknown = _cli("run", "-f", str(_deployment(tmp_path, modelRef={"model": "boats"})), store=store)
    assert unknown.returncode == 2, unknown.stderr  # the input's fault: a model that is not there
    assert "no model 'boats'" in unknown.stderr and "models: iceberg" in unknown.stderr
