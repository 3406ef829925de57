"""S3's bad minute: the real S3 server (SeaweedFS) stopped for 30 s in the middle of writing a dataset
and of registering a model, then started again on the same port with the same data. One outage
serves both: the dataset runtime (its own process, its own local Ray) is writing chips, and a model
registration in this process is held at its first write inside the publish (the weights) until the
server is down.

Within the store's retry window (``EARTHOPS_STORE_RETRY_SECONDS``, 60 s by default) both ride it out:
the dataset run publishes every chip of every scene (none counted as a failed scene), the model
version is whole. Beyond the window they fail with a StoreError that says the endpoint is
unreachable, and nothing is published: no dataset run, no model version, and the next registration
after the outage takes v1. The server has this module to itself (the session's is not stopped).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from earthops.api import parse_resource
from earthops.control.local.executor import Executor
from earthops.core.store import ENV_RETRY_SECONDS, MARKER, Store, StoreError
from tests.infra.pytest_datasets import example
from tests.infra.s3 import SeaweedS3

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTAGE_S = 30.0
SCENES = 160


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with SeaweedS3(tmp_path_factory.mktemp("s3-outage")) as s3:
        yield s3


@pytest.fixture
def s3(server: SeaweedS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SeaweedS3:
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "EARTHOPS_STORE_CREDENTIALS_DIR", ENV_RETRY_SECONDS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws" / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws" / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("EARTHOPS_CACHE", str(tmp_path / "cache"))
    return server


class Outage:
    """The server stopped for ``seconds`` from a background thread; ``started``/``over`` mark it."""

    def __init__(self, server: SeaweedS3, seconds: float):
        self.server, self.seconds = server, seconds
        self.started, self.down, self.over = threading.Event(), threading.Event(), threading.Event()
        self.error: BaseException | None = None

    def begin(self) -> None:
        if self.started.is_set():
            return
        self.started.set()
        threading.Thread(target=self._run, daemon=True).start()
        while self.server.pid is not None and not self.over.is_set():  # down before the caller goes on
            time.sleep(0.01)
        self.down.set()

    def _run(self) -> None:
        try:
            self.server.outage(self.seconds)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.over.set()
        proc = self.server._proc
        if proc is not None:  # the restarted server dies with the thread that started it: stay with it
            proc.wait()

    def wait(self) -> None:
        assert self.over.wait(self.seconds + 90), "the S3 server did not come back"
        assert self.error is None, self.error


# --- a dataset ------------------------------------------------------------------------------------


def _dataset(name: str) -> Any:
    return parse_resource(example("examples/ship-iceberg/01-dataset.yaml", **{
        "metadata.name": name, "spec.source.sample.count": SCENES}), name)


def _run_dataset(store_uri: str, name: str, outage: Outage, observer_env: dict[str, str],
                 also_ready: Callable[[], bool]) -> tuple[dict, bool]:
    """Apply the dataset (the runtime in its own process, with its own local Ray); the outage begins
    once the first scenes are done and ``also_ready()`` says the other writer is in place too.
    (final status, whether it was still running when the outage began)."""
    # the test's own view of the store waits out the whole outage, whatever the runtime is told
    observer = Store.from_uri(store_uri, env=observer_env)
    running_at_outage: list[bool] = []

    def progress(_: dict[str, Any], status: Any) -> None:
        if status is not None and status.phase == "Running" and (status.progress.done or 0) > 0 \
                and also_ready() and not outage.started.is_set():
            running_at_outage.append(True)
            outage.begin()

    executor = Executor(observer, poll_interval=0.2, on_progress=progress)
    status = executor.apply(_dataset(name)).resource["status"]
    outage.wait()
    return status, bool(running_at_outage)


# --- a model registration -------------------------------------------------------------------------


def _register(store: Store, dataset_uri: str, name: str) -> Any:
    from earthops_runtime.registry import ModelCard, register_model
    from earthops_runtime.training.data import DatasetInfo
    from tests.integration.test_registry import tiny_cnn

    info = DatasetInfo.open(dataset_uri)
    torch.manual_seed(0)
    model = tiny_cnn(in_channels=info.in_channels, num_classes=info.num_classes, width=4)
    card = ModelCard(architecture="tests.integration.test_registry:tiny_cnn", parameters={"width": 4}, task=info.task,
                     classes=list(info.classes), features=list(info.features), chip_shape=info.chip_shape,
                     mean=list(info.mean), std=list(info.std), metrics={"val_accuracy": 0.8},
                     hyperparameters={"seed": 0}, dataset_uri=info.uri, dataset_collection=info.collection,
                     experiment={"kind": "TuningExperiment", "namespace": "default", "name": "t", "runId": "r1",
                                 "uri": f"{store.uri}/experiments/default/t/r1"})
    example_input = torch.zeros((2, info.in_channels, *info.chip_shape))
    return model, info, register_model(store, namespace="default", name=name, model=model, example_input=example_input,
                                 card=card)


class Registration:
    """A model registration in a background thread. Its first write inside the publish (the weights)
    says so (``at_weights``) and waits until the server is down, then goes on into the outage."""

    def __init__(self, store: Store, dataset_uri: str, name: str, outage: Outage, monkeypatch: pytest.MonkeyPatch):
        self.at_weights, self.abandoned = threading.Event(), threading.Event()
        self.returned_after_outage: bool | None = None
        self.value: Any = None
        self.error: BaseException | None = None
        original = Store.write_bytes

        def write_bytes(store_: Store, key: str, data: bytes) -> None:
            if key.endswith("weights.pt") and not self.at_weights.is_set():
                self.at_weights.set()
                while not outage.down.wait(0.1):
                    if self.abandoned.is_set():
                        raise RuntimeError("the outage never began")
            original(store_, key, data)

        monkeypatch.setattr(Store, "write_bytes", write_bytes)

        def run() -> None:
            try:
                self.value = _register(store, dataset_uri, name)
                self.returned_after_outage = outage.over.is_set()
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                self.error = exc

        self.outage = outage
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self) -> None:
        if not self.outage.started.is_set():  # the dataset finished first: the test fails, without a wait
            self.abandoned.set()
        self.thread.join(300)
        assert not self.thread.is_alive(), "the registration did not return"


# --- one outage, both writers ---------------------------------------------------------------------


def test_a_30_s_s3_outage_mid_dataset_and_mid_registration_is_ridden_out(
        s3: SeaweedS3, iceberg_dataset: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from earthops_runtime.registry import load_model
    from earthops_runtime.training.data import DatasetInfo

    uri = f"s3://{s3.create_bucket('ride-out')}/store"
    models = Store.from_uri(f"s3://{s3.create_bucket('register')}/store")
    outage = Outage(s3, OUTAGE_S)
    registration = Registration(models, iceberg_dataset.run_uri, "outage-model", outage, monkeypatch)
    status, mid_run = _run_dataset(uri, "outage-ridden", outage, {**os.environ, ENV_RETRY_SECONDS: "120"},
                                   also_ready=registration.at_weights.is_set)
    registration.join()

    # the dataset: every chip of every scene, published whole
    assert mid_run, "the outage began while the run was writing"
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["scenes"] == {"total": SCENES, "processed": SCENES, "failed": 0}
    chips = status["chips"]
    assert chips["total"] == SCENES == chips["train"] + chips["validation"] + chips["test"]
    store = Store.from_uri(uri)
    run = f"datasets/default/outage-ridden/{status['runId']}"
    marker = store.read_json(f"{run}/{MARKER}")
    assert set(marker["files"]) <= set(k.removeprefix(f"{run}/") for k in store.list(run))  # every listed file is there
    info = DatasetInfo.open(store.url(run))
    assert sum(1 for _ in info.chips("train", shuffle=False)) == chips["train"]

    # the model: v1, whole, loads and predicts as the model that was registered
    assert registration.error is None, registration.error
    assert registration.returned_after_outage, "the registration finished before the server came back"
    model, info, registered = registration.value
    assert registered.version == "v1"
    loaded, item = load_model(Store.from_uri(models.uri), "default", "outage-model")
    x = torch.randn(2, info.in_channels, *info.chip_shape)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))
    assert item["properties"]["earthops:model"]["version"] == "v1"
    assert [link["href"] for link in models.read_json("models/default/outage-model/collection.json")["links"]
            if link["rel"] == "item"] == ["./v1/item.json"]


def test_past_the_retry_window_both_fail_naming_the_store_and_publish_nothing(
        s3: SeaweedS3, iceberg_dataset: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"s3://{s3.create_bucket('too-long')}/store"
    models_uri = f"s3://{s3.create_bucket('register-fail')}/store"
    observer_env = {**os.environ, ENV_RETRY_SECONDS: "120"}
    monkeypatch.setenv(ENV_RETRY_SECONDS, "1")  # the runtime's and the registration's window: shorter than the outage
    outage = Outage(s3, 6.0)
    registration = Registration(Store.from_uri(models_uri), iceberg_dataset.run_uri, "lost-model", outage, monkeypatch)
    status, mid_run = _run_dataset(uri, "outage-failed", outage, observer_env, also_ready=registration.at_weights.is_set)
    registration.join()

    # the dataset: Failed with StoreError, no run published
    assert mid_run
    assert status["phase"] == "Failed"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "StoreError", ready
    assert "unreachable" in status["message"] and ENV_RETRY_SECONDS in status["message"], status["message"]
    store = Store.from_uri(uri, env=observer_env)
    assert store.runs("datasets/default/outage-failed") == []
    run = f"datasets/default/outage-failed/{status['runId']}"
    assert not store.is_published(run)
    assert [k for k in store.list(run) if not k.endswith("status.json")] in ([], [f"{run}/validation.json"])

    # the model: a StoreError naming the store, no version written, and the next registration takes v1
    assert isinstance(registration.error, StoreError), registration.error
    assert "unreachable" in str(registration.error) and models_uri in str(registration.error)
    monkeypatch.delenv(ENV_RETRY_SECONDS)  # the full window again (the outage is over)
    models = Store.from_uri(models_uri)
    assert models.list("models/default/lost-model") == []
    _, _, registered = _register(models, iceberg_dataset.run_uri, "lost-model")
    assert registered.version == "v1"
