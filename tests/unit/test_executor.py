"""The embedded executor: ordering, refusal, and the run plumbing through a real runtime process."""

import dataclasses
from pathlib import Path

import pytest
from typer.testing import CliRunner

from earthops.api import KINDS, load_manifests
from earthops.control.cli import app
from earthops.control.local import Executor, Unsupported, order, stored_resources
from earthops.control.status import get_condition
from earthops.core.store import Store

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_order_follows_references_whatever_the_file_order():
    resources = load_manifests([ROOT / "examples/ship-iceberg"])
    shuffled = list(reversed(resources))
    kinds = [r.kind for r in order(shuffled)]
    assert kinds.index("EODataset") < kinds.index("TuningExperiment") < kinds.index("AblationStudy")
    assert kinds.index("TuningExperiment") < kinds.index("ModelDeployment")


def test_order_refuses_dangling_references_and_cycles():
    tuning = load_manifests([ROOT / "examples/ship-iceberg/02-tuning.yaml"])
    with pytest.raises(ValueError, match="references EODataset 'iceberg-chips', which is neither"):
        order(tuning)
    assert order(tuning, {("EODataset", "default", "iceberg-chips")}) == tuning


@pytest.fixture
def unbuilt_deployment(monkeypatch):
    """Every kind has a runtime in this version: play one without (the refusal stays for kinds to come)."""
    monkeypatch.setitem(KINDS, "ModelDeployment", dataclasses.replace(KINDS["ModelDeployment"], runtime=None))


def test_unbuilt_kinds_are_refused_before_anything_runs(tmp_path, unbuilt_deployment):
    executor = Executor(Store.from_uri(tmp_path.as_uri()))
    resources = load_manifests([ROOT / "examples/ship-iceberg"])
    with pytest.raises(Unsupported, match="cannot run ModelDeployment yet .* refused before running") as e:
        executor.check_supported(resources)
    assert "TuningExperiment" not in str(e.value) and "AblationStudy" not in str(e.value)
    assert stored_resources(executor.store) == []
    executor.check_supported([r for r in resources if r.kind in ("EODataset", "TuningExperiment", "AblationStudy")])


@pytest.fixture
def probe_runtime(monkeypatch):
    def use(entrypoint, kind="EODataset"):
        info = dataclasses.replace(KINDS[kind], runtime=f"tests.unit.probe_runtime:{entrypoint}")
        monkeypatch.setitem(KINDS, kind, info)

    monkeypatch.chdir(ROOT)  # the runtime process imports tests.unit.probe_runtime from here
    return use


def test_a_run_goes_through_the_runtime_process_and_is_recorded(tmp_path, probe_runtime):
    probe_runtime("succeed")
    store = Store.from_uri(tmp_path.as_uri())
    seen = []
    executor = Executor(store, poll_interval=0.05, on_progress=lambda state, rt: seen.append(rt))
    [dataset] = load_manifests([ROOT / "examples/ship-iceberg/01-dataset.yaml"])
    outcome = executor.apply(dataset)
    status = outcome.resource["status"]
    assert status["phase"] == "Succeeded", status
    assert status["progress"] == "3/3 scenes" and status["chips"]["train"] == 7
    assert status["runId"].startswith("g1-") and status["observedGeneration"] == 1
    assert get_condition(status["conditions"], "Ready")["status"] == "True"
    run_key = f"datasets/default/iceberg-chips/{status['runId']}"
    assert store.is_published(run_key) and store.read_json(f"{run_key}/stats.json") == {"bands": ["HH", "HV"]}
    assert status["results"] == store.url(run_key)
    assert any(rt is not None for rt in seen), "progress was followed while the process ran"

    again = executor.apply(dataset)  # same generation, already done: idempotent
    assert again.skipped and again.resource["status"]["runId"] == status["runId"]

    changed = dataset.model_copy(update={"spec": dataset.spec.model_copy(update={"bands": ["HH"]})})
    third = executor.apply(changed)
    assert third.resource["metadata"]["generation"] == 2 and third.resource["status"]["runId"].startswith("g2-")

    result = CliRunner().invoke(app, ["get", "eods", "--store", store.uri])
    assert result.exit_code == 0
    assert "iceberg-chips" in result.stdout and "Succeeded" in result.stdout and "NAMESPACE" in result.stdout
    result = CliRunner().invoke(app, ["describe", "eodataset", "iceberg-chips", "--store", store.uri])
    assert result.exit_code == 0 and "Observed Generation:  2" in result.stdout and "Ready" in result.stdout
    result = CliRunner().invoke(app, ["get", "eodatasets", "iceberg-chips", "-o", "json", "--store", store.uri])
    assert '"phase": "Succeeded"' in result.stdout


@pytest.mark.parametrize("entrypoint, fragment", [("crash", "scene 2 is corrupt"), ("exit_hard", "exited with code 9")])
def test_a_crashing_runtime_ends_failed_with_its_cause(tmp_path, probe_runtime, entrypoint, fragment):
    probe_runtime(entrypoint)
    store = Store.from_uri(tmp_path.as_uri())
    [dataset] = load_manifests([ROOT / "examples/ship-iceberg/01-dataset.yaml"])
    status = Executor(store, poll_interval=0.05).apply(dataset).resource["status"]
    assert status["phase"] == "Failed" and fragment in status["message"]
    assert store.runs("datasets/default/iceberg-chips") == [], "nothing half-published"


def test_a_refused_run_ends_failed_with_its_own_reason(tmp_path, probe_runtime):
    """RunFailed, whichever kind raises it, becomes Failed with its CamelCase reason (the protocol's one
    failure type), and nothing is published."""
    probe_runtime("refuse")
    store = Store.from_uri(tmp_path.as_uri())
    [dataset] = load_manifests([ROOT / "examples/ship-iceberg/01-dataset.yaml"])
    status = Executor(store, poll_interval=0.05).apply(dataset).resource["status"]
    assert status["phase"] == "Failed", status
    assert get_condition(status["conditions"], "Ready")["reason"] == "ValidationFailed"
    assert "band B04 has 80% NaN" in status["message"]
    assert store.runs("datasets/default/iceberg-chips") == []


def test_a_published_run_is_replayed_not_redone(tmp_path, probe_runtime):
    """A rerun of a generation whose run folder is published (a restarted driver, a forgotten embedded
    state) reports what the run published, through the protocol's one replay path."""
    probe_runtime("succeed")
    store = Store.from_uri(tmp_path.as_uri())
    [dataset] = load_manifests([ROOT / "examples/ship-iceberg/01-dataset.yaml"])
    first = Executor(store, poll_interval=0.05).apply(dataset).resource["status"]
    run_key = f"datasets/default/iceberg-chips/{first['runId']}"
    shard = store.local_path(f"{run_key}/shards/000.bin")
    before = shard.stat().st_mtime_ns
    store.local_path("datasets/default/iceberg-chips/resource.json").unlink()  # forget the state
    probe_runtime("crash")  # a body that would fail: the replay must not call it
    again = Executor(store, poll_interval=0.05).apply(dataset).resource["status"]
    assert again["phase"] == "Succeeded" and again["runId"] == first["runId"], again
    assert again["message"] == "already published" and again["chips"] == first["chips"]
    assert shard.stat().st_mtime_ns == before


def test_the_runtime_command_refuses_an_entrypoint_that_is_not_a_runtime(tmp_path, probe_runtime):
    probe_runtime("not_a_runtime")
    store = Store.from_uri(tmp_path.as_uri())
    [dataset] = load_manifests([ROOT / "examples/ship-iceberg/01-dataset.yaml"])
    status = Executor(store, poll_interval=0.05).apply(dataset).resource["status"]
    assert status["phase"] == "Failed" and "not an earthops_runtime.entrypoint.Runtime" in status["message"]


def test_a_dependent_of_a_failed_resource_does_not_run(tmp_path, probe_runtime):
    probe_runtime("crash")
    probe_runtime("tune", "TuningExperiment")
    store = Store.from_uri(tmp_path.as_uri())
    executor = Executor(store, poll_interval=0.05)
    dataset, tuning = order(load_manifests([ROOT / "examples/ship-iceberg/01-dataset.yaml",
                                            ROOT / "examples/ship-iceberg/02-tuning.yaml"]))
    executor.apply(dataset)
    status = executor.apply(tuning).resource["status"]
    assert status["phase"] == "Failed" and "runId" not in status
    cond = get_condition(status["conditions"], "DatasetReady")
    assert (cond["status"], cond["reason"]) == ("False", "DatasetNotReady")
    assert cond["message"] == "EODataset 'iceberg-chips' is Failed, not Succeeded"
    assert get_condition(status["conditions"], "Ready")["reason"] == "DatasetNotReady"
    assert store.runs("experiments/default/iceberg-tuning") == []


def test_a_missing_dataset_fails_the_experiment_in_a_one_shot_run(tmp_path, probe_runtime):
    probe_runtime("tune", "TuningExperiment")
    [tuning] = load_manifests([ROOT / "examples/ship-iceberg/02-tuning.yaml"])
    status = Executor(Store.from_uri(tmp_path.as_uri())).apply(tuning).resource["status"]
    assert status["phase"] == "Failed"
    assert get_condition(status["conditions"], "DatasetReady")["message"] == \
        "EODataset 'iceberg-chips' not found in namespace default"


def test_an_experiment_gets_its_datasets_run_as_input_and_its_trials_shown(tmp_path, probe_runtime):
    probe_runtime("succeed")
    probe_runtime("tune", "TuningExperiment")
    store = Store.from_uri(tmp_path.as_uri())
    result = CliRunner().invoke(app, ["run", "-f", str(ROOT / "examples/ship-iceberg/02-tuning.yaml"),
                                      "-f", str(ROOT / "examples/ship-iceberg/01-dataset.yaml"), "--store", store.uri])
    assert result.exit_code == 0, result.output
    [dataset] = stored_resources(store, ["EODataset"])
    [tuning] = stored_resources(store, ["TuningExperiment"])
    status = tuning["status"]
    assert status["phase"] == "Succeeded", status
    run_key = f"experiments/default/iceberg-tuning/{status['runId']}"
    assert store.read_json(f"{run_key}/inputs.json") == {"dataset": dataset["status"]["results"]}
    assert dataset["status"]["results"] == store.url(f"datasets/default/iceberg-chips/{dataset['status']['runId']}")
    cond = get_condition(status["conditions"], "DatasetReady")
    assert (cond["status"], cond["reason"]) == ("True", "DatasetReady")
    # the runtime's results are projected; its live detail is not
    assert status["trials"] == {"pending": 0, "running": 0, "succeeded": 1, "stopped": 1, "failed": 0}
    assert status["bestTrial"] == {"id": "t-0001", "metric": 0.9, "parameters": {"model.dropout": "0.25"}}
    assert status["bestMetric"] == 0.9 and status["registeredModel"]["version"] == "v1"
    assert status["report"] == store.url(run_key) and "detail" not in status
    assert status["progress"] == "2/2 trials"
    # the trial table the run ends with is the runtime's final one (not the last live one), and it
    # says which objective value it shows
    out = result.stderr
    table = out[out.index("TRIAL "):].splitlines()
    assert table[0].split() == ["TRIAL", "STATE", "PARAMETERS", "VAL_ACCURACY", "(LAST", "EPOCH)", "EPOCHS",
                                "DURATION"]
    assert table[1].split() == ["t-0001", "succeeded", "model.dropout=0.25", "0.9", "3/3", "2.5", "s"]
    assert table[2].split() == ["t-0002", "stopped", "model.dropout=0.4", "0.62", "1/3", "1.2", "s"]
    assert table[3].startswith("val_accuracy (maximize): each trial's value at its last epoch")
    # the output is not a terminal: plain lines, one per finished trial (whenever the CLI sees it)
    assert ("trial t-0002 stopped after 1/3 epochs in 1.2 s: model.dropout=0.4; val_accuracy (last epoch) 0.62"
            in out)
    assert "trial t-0001 succeeded after 3/3 epochs in 2.5 s: model.dropout=0.25; val_accuracy (last epoch) 0.9" in out
    assert "running" not in out.split("TuningExperiment default/iceberg-tuning: Succeeded")[1]
    table = CliRunner().invoke(app, ["get", "tex", "--store", store.uri]).stdout
    assert "TRIALS" in table and "BEST" in table and "MODEL" in table and "v1" in table


def test_cli_run_exit_codes(tmp_path, unbuilt_deployment):
    runner = CliRunner()
    bad = runner.invoke(app, ["run", "-f", str(ROOT / "tests/invalid/05-split-sum.yaml"), "--store", tmp_path.as_uri()])
    assert bad.exit_code == 2 and "spec.split.train" in bad.stderr and "05-split-sum.yaml" in bad.stderr
    refused = runner.invoke(app, ["run", "-f", str(ROOT / "examples/ship-iceberg"), "--store", tmp_path.as_uri()])
    assert "ModelDeployment" in refused.stderr and "TuningExperiment" not in refused.stderr
    assert "AblationStudy" not in refused.stderr
    assert refused.exit_code == 3 and "refused before running anything" in refused.stderr
    dry = runner.invoke(app, ["run", "--dry-run", "-f", str(ROOT / "examples/landcover-s2"), "--store", tmp_path.as_uri()])
    assert dry.exit_code == 0 and "1. EODataset default/landcover" in dry.stdout
    empty = runner.invoke(app, ["get", "--store", tmp_path.as_uri()])
    assert empty.exit_code == 0 and "No resources found" in empty.stderr
    unknown = runner.invoke(app, ["get", "datasetz", "--store", tmp_path.as_uri()])
    assert unknown.exit_code == 2 and "accepted:" in unknown.stderr


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--all-namespaces", "--namespace", "a"], "exclude each other"),
        ([], "say which namespaces"),
        (["-n", "a", "--standalone", "--peering", "p"], "exclude each other"),
        (["-n", "a", "--log-level", "loud"], "--log-level"),
        (["-n", "a", "--liveness-port", "70000"], "--liveness-port 70000"),
    ],
)
def test_operator_flags_are_checked(args, fragment):
    result = CliRunner().invoke(app, ["operator", *args])
    assert result.exit_code == 2 and fragment in result.stderr


def _fake_predictor(monkeypatch):
    """local.serving.start runs ``scripts[-1]`` instead of the predictor; the log files it was given."""
    import subprocess
    import sys

    from earthops.control.local import serving

    logs, scripts = [], []
    real = subprocess.Popen

    def popen(argv, **kwargs):
        logs.append(kwargs["stderr"])
        return real([sys.executable, "-c", scripts[-1]], **kwargs)

    monkeypatch.setattr(serving.subprocess, "Popen", popen)
    return serving, logs, scripts


def _ships():
    from earthops.api.resources import ModelDeployment
    from earthops.control.reconcile.inferenceservice import Models, ServedModel

    r = ModelDeployment.model_validate({"apiVersion": "earthops.dev/v1alpha1", "kind": "ModelDeployment",
                                        "metadata": {"name": "ships", "namespace": "default"},
                                        "spec": {"modelRef": {"model": "ships"}}})
    return r, Models(ServedModel("ships", "v1", "file:///s/models/default/ships/v1"))


def test_the_local_predictor_log_is_closed_when_it_stops_or_fails_to_start(tmp_path, monkeypatch):
    serving, logs, scripts = _fake_predictor(monkeypatch)
    scripts.append("import sys; print('oops', file=sys.stderr); sys.exit(3)")
    r, models = _ships()
    with pytest.raises(serving.ServerError, match="exited with code 3"):
        serving.start(r, models, port=0, log_dir=tmp_path)
    assert logs[-1].closed
    scripts.append("print('earthops predictor ready at http://0.0.0.0:1234', flush=True); import time; time.sleep(60)")
    server = serving.start(r, models, port=0, log_dir=tmp_path, timeout=30)
    assert not logs[-1].closed
    server.stop()
    assert logs[-1].closed and not server.alive


def test_a_drift_watch_started_after_stop_still_polls(tmp_path, monkeypatch):
    # serve, stop, serve again on the same Executor: the new server's watch must not see the old stop
    import threading
    import types

    executor = Executor(Store.from_uri(tmp_path.as_uri()))
    executor.stop()
    polls = []
    server = types.SimpleNamespace(alive=True)

    def refresh(s):
        polls.append(s)
        s.alive = len(polls) < 3
        return None

    monkeypatch.setattr(executor, "refresh_drift", refresh)
    watch = threading.Thread(target=executor._watch_drift, args=(server, 0.01, executor._drift_watch))  # as _serve
    watch.start()
    watch.join(10)
    assert len(polls) == 3
    executor.stop()


def test_a_runtime_that_could_not_write_its_status_is_taken_at_its_last_line():
    from earthops.control.local.executor import final_words

    said = '{"phase": "Failed", "reason": "StoreError", "message": "write s3://b/k: the endpoint is unreachable"}'
    assert final_words(["Traceback ...", said]) == ("StoreError", "write s3://b/k: the endpoint is unreachable")
    assert final_words([said, "a line after it"]) is None  # only the very last line counts
    assert final_words(['{"phase": "Succeeded", "reason": "x"}']) is None
    assert final_words(['{"phase": "Failed", "reason": 3}']) is None
    assert final_words(["[1, 2]"]) is None and final_words(["not json"]) is None and final_words([]) is None
