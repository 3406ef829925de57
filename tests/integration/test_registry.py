"""The model registry end to end: real models registered on a real published dataset run, in a local
store and in a real S3 server; loaded back in both forms, found by the STAC search, listed by the CLI.

The dataset is the session's ship/iceberg run (``iceberg_dataset``). Version v1 is a small custom
model (built by import path, as a user's own model would be), v2 the zoo's ``iceberg-cnn`` at a
quarter of its width.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from earthops.control.cli import app
from earthops.core.registry import RegistryError, list_models
from earthops.core.store import Store, StoreError
from earthops_runtime.catalog.model import EXPORTED, MLM_SCHEMA, TORCHSCRIPT, collection_id
from earthops_runtime.catalog.search import search
from earthops_runtime.data.stats import normalization
from earthops_runtime.models import build_model
from earthops_runtime.registry import ModelCard, load_model, register_model
from earthops_runtime.stac.conventions import validate_core
from earthops_runtime.training.data import DatasetInfo

pytestmark = pytest.mark.integration

NS = "default"
MODEL = "iceberg"
TINY = "tests.integration.test_registry:tiny_cnn"
BRANCHY = "tests.integration.test_registry:branchy_cnn"


class TinyCNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.norm = nn.BatchNorm2d(width)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(torch.relu(self.norm(self.conv(x))))
        return self.head(x.mean(dim=(2, 3)))


class BranchyCNN(TinyCNN):
    """Data-dependent control flow: torch.export refuses it, a TorchScript trace records one branch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = super().forward(x)
        return scores if x.sum() > -1e9 else -scores


def tiny_cnn(*, in_channels: int, num_classes: int, width: int = 8) -> nn.Module:
    return TinyCNN(in_channels, num_classes, width)


def branchy_cnn(*, in_channels: int, num_classes: int, width: int = 8) -> nn.Module:
    return BranchyCNN(in_channels, num_classes, width)


# --- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(iceberg_dataset):
    return DatasetInfo.open(iceberg_dataset.run_uri)


@pytest.fixture(scope="module")
def example(dataset):
    """Two real, normalised validation chips."""
    chips = dataset.chips("validation", shuffle=False)
    return torch.stack([x.clone() for (x, _), _ in zip(chips, range(2))])


def make_card(dataset: DatasetInfo, architecture: str, parameters: dict, *, accuracy: float, store_uri: str,
              run_id: str = "r1") -> ModelCard:
    return ModelCard(
        architecture=architecture, parameters=parameters, task=dataset.task, classes=list(dataset.classes),
        features=list(dataset.features), chip_shape=dataset.chip_shape, mean=list(dataset.mean),
        std=list(dataset.std), metrics={"val_accuracy": accuracy, "val_loss": 0.41},
        hyperparameters={"optimizer": "adam", "lr": 1e-3, "seed": 7},
        dataset_uri=dataset.uri, dataset_collection=dataset.collection,
        experiment={"kind": "TuningExperiment", "namespace": NS, "name": "iceberg-tune", "runId": run_id,
                    "uri": f"{store_uri}/experiments/{NS}/iceberg-tune/{run_id}"})


def build(dataset: DatasetInfo, architecture: str, parameters: dict) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(architecture, parameters, in_channels=dataset.in_channels, num_classes=dataset.num_classes,
                        task=dataset.task, chip_shape=dataset.chip_shape)
    model.train()  # as a trainer leaves it: registration must export the eval-mode model, not this
    return model


@pytest.fixture(scope="module")
def registry(tmp_path_factory, dataset, example):
    """A store with two versions of the model: v1 the custom tiny model, v2 iceberg-cnn (width 0.25)."""
    store = Store.from_uri(tmp_path_factory.mktemp("registry-store").as_uri())
    models = {"v1": build(dataset, TINY, {"width": 8}), "v2": build(dataset, "iceberg-cnn", {"width": 0.25})}
    cards = {"v1": make_card(dataset, TINY, {"width": 8}, accuracy=0.81, store_uri=store.uri),
             "v2": make_card(dataset, "iceberg-cnn", {"width": 0.25}, accuracy=0.9, store_uri=store.uri,
                             run_id="r2")}
    registered = {v: register_model(store, namespace=NS, name=MODEL, model=models[v], example_input=example,
                                    card=cards[v]) for v in ("v1", "v2")}
    return store, models, cards, registered


# --- registration ------------------------------------------------------------------------------------


def test_two_registrations_publish_v1_and_v2_and_versions_are_immutable(registry, dataset, example):
    store, models, _, registered = registry
    assert [r.version for r in registered.values()] == ["v1", "v2"]
    for version, r in registered.items():
        key = f"models/{NS}/{MODEL}/{version}"
        assert r.uri == store.url(key) and r.item_href == store.url(f"{key}/item.json")
        assert store.is_published(key)
        files = {k.rsplit("/", 1)[1] for k in store.list(key)}
        assert files == {"weights.pt", "model.pt2", "item.json", "stats.json", "index.parquet", "text.parquet", "rows.arrow", "_published.json"}
    # the training statistics are the dataset's, byte for byte the same document
    stats = Store.from_uri(dataset.uri).read_json("stats.json")
    assert store.read_json(f"models/{NS}/{MODEL}/v1/stats.json") == stats
    # a published version cannot be published again...
    before = store.read_bytes(f"models/{NS}/{MODEL}/v1/item.json")
    with pytest.raises(StoreError, match="immutable"), store.publish(f"models/{NS}/{MODEL}/v1") as run:
        run.write_json("item.json", {})
    assert store.read_bytes(f"models/{NS}/{MODEL}/v1/item.json") == before
    # the caller's model is left as it was (training mode, its own device)
    assert models["v2"].training


def test_a_registration_that_loses_the_race_for_a_number_takes_the_next(tmp_path, dataset, example, monkeypatch):
    import earthops_runtime.registry as reg

    store = Store.from_uri(tmp_path.as_uri())
    model = build(dataset, TINY, {"width": 4})
    card = make_card(dataset, TINY, {"width": 4}, accuracy=0.5, store_uri=store.uri)
    first = register_model(store, namespace=NS, name="race", model=model, example_input=example, card=card)
    assert first.version == "v1"
    answers = iter(["v1"])  # a stale answer: what a racing registration computed before v1 appeared
    real = reg.next_version
    monkeypatch.setattr(reg, "next_version", lambda existing: next(answers, None) or real(existing))
    second = register_model(store, namespace=NS, name="race", model=model, example_input=example, card=card)
    assert second.version == "v2"
    collection = store.read_json(f"models/{NS}/race/collection.json")
    items = [link["href"] for link in collection["links"] if link["rel"] == "item"]
    assert items == ["./v1/item.json", "./v2/item.json"]


def test_the_item_describes_the_model_with_the_mlm_extension(registry, dataset, iceberg_dataset):
    store, models, cards, _ = registry
    item = store.read_json(f"models/{NS}/{MODEL}/v2/item.json")
    props = item["properties"]
    assert MLM_SCHEMA in item["stac_extensions"]
    assert item["id"] == f"{MODEL}-v2" and item["collection"] == collection_id(NS, MODEL)
    assert props["mlm:name"] == MODEL and props["mlm:architecture"] == "iceberg-cnn"
    assert props["mlm:tasks"] == ["classification", "scene-classification"]
    assert props["mlm:framework"] == "PyTorch" and props["mlm:framework_version"] == torch.__version__.split("+")[0]
    assert props["mlm:total_parameters"] == sum(p.numel() for p in models["v2"].parameters())
    assert props["mlm:pretrained"] is False
    assert props["mlm:hyperparameters"] == {"optimizer": "adam", "lr": 1e-3, "seed": 7}
    assert props["earthops:metrics"] == {"val_accuracy": 0.9, "val_loss": 0.41}
    assert props["earthops:parameters"] == {"width": 0.25}

    (model_input,) = props["mlm:input"]
    assert model_input["bands"] == ["HH", "HV", "band_avg"]
    assert model_input["input"] == {"shape": [-1, 3, 75, 75], "dim_order": ["batch", "channel", "height", "width"],
                                    "data_type": "float32"}
    stats = Store.from_uri(dataset.uri).read_json("stats.json")
    mean, std = normalization(stats, "train", ["HH", "HV", "band_avg"])
    scaling = model_input["value_scaling"]
    assert [s["type"] for s in scaling] == ["z-score"] * 3
    assert [s["mean"] for s in scaling] == pytest.approx(mean.tolist())
    assert [s["stddev"] for s in scaling] == pytest.approx(std.tolist())

    (output,) = props["mlm:output"]
    assert output["result"]["shape"] == [-1, 2] and output["result"]["dim_order"] == ["batch", "class"]
    assert [(c["value"], c["title"]) for c in output["classification:classes"]] == [(0, "ship"), (1, "iceberg")]

    assets = item["assets"]
    assert assets["model"]["mlm:artifact_type"] == EXPORTED and "mlm:model" in assets["model"]["roles"]
    assert [b["name"] for b in assets["model"]["bands"]] == model_input["bands"]
    assert "mlm:weights" in assets["weights"]["roles"] and assets["stats"]["href"] == "./stats.json"

    links = {link["rel"]: link["href"] for link in item["links"]}
    summary = Store.from_uri(iceberg_dataset.run_uri).read_json("summary.json")
    assert links["derived_from"] == summary["results"]["collection"] == dataset.collection
    assert links["via"] == cards["v2"].experiment["uri"]
    # the footprint is where the training data lies
    dataset_collection = Store.from_uri(dataset.collection.rsplit("/", 1)[0]).read_json("collection.json")
    assert item["bbox"] == pytest.approx(dataset_collection["extent"]["spatial"]["bbox"][0])


def test_the_store_catalog_links_the_model_collection_and_validates(registry):
    store, *_ = registry
    root = store.read_json("catalog.json")
    assert {"rel": "child", "href": f"./models/{NS}/{MODEL}/collection.json", "type": "application/json",
            "title": f"Model {NS}/{MODEL}"} in root["links"]
    collection = store.read_json(f"models/{NS}/{MODEL}/collection.json")
    assert collection["summaries"]["mlm:architecture"] == [TINY, "iceberg-cnn"]
    # catalog -> collection -> both items, against the STAC core schemas (offline)
    assert validate_core(store.local_path("catalog.json")) == 4


# --- loading -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_exported_program_and_the_weights_give_the_same_outputs(registry, example, version):
    store, models, _, _ = registry
    with torch.no_grad():
        expected = copy.deepcopy(models[version]).eval()(example)
        rebuilt, item = load_model(store, NS, MODEL, version)
        exported, same_item = load_model(store, NS, MODEL, version, exported=True)
        assert item == same_item and item["properties"]["earthops:model"]["version"] == version
        assert not rebuilt.training
        torch.testing.assert_close(rebuilt(example), expected)
        torch.testing.assert_close(exported(example), expected, rtol=1e-4, atol=1e-5)
        # any batch size: the item says -1, the program agrees
        assert exported(torch.cat([example, example, example[:1]])).shape == (5, 2)


def test_latest_is_the_highest_version_and_unknown_names_say_what_exists(registry):
    store, *_ = registry
    _, item = load_model(store, NS, MODEL, exported=True)
    assert item["properties"]["earthops:model"]["version"] == "v2"
    with pytest.raises(RegistryError, match=r"no model 'nope'.*models: iceberg"):
        load_model(store, NS, "nope")
    with pytest.raises(RegistryError, match=r"no version 'v7'; versions: v1, v2"):
        load_model(store, NS, MODEL, "v7")
    with pytest.raises(RegistryError, match="expected v1, v2"):
        load_model(store, NS, MODEL, "7")


def test_a_model_torch_export_refuses_is_registered_as_torchscript(tmp_path, dataset, example):
    store = Store.from_uri(tmp_path.as_uri())
    model = build(dataset, BRANCHY, {"width": 4}).eval()
    card = make_card(dataset, BRANCHY, {"width": 4}, accuracy=0.6, store_uri=store.uri)
    registered = register_model(store, namespace=NS, name="branchy", model=model, example_input=example, card=card)
    assert {k.rsplit("/", 1)[1] for k in store.list(f"models/{NS}/branchy/v1")} >= {"model.ts", "weights.pt"}
    item = store.read_json(f"models/{NS}/branchy/v1/item.json")
    asset = item["assets"]["model"]
    assert asset["href"] == "./model.ts" and asset["mlm:artifact_type"] == TORCHSCRIPT
    assert "torch.export failed" in asset["description"]
    with torch.no_grad():
        traced, _ = load_model(store, NS, "branchy", registered.version, exported=True)
        rebuilt, _ = load_model(store, NS, "branchy", registered.version)
        torch.testing.assert_close(traced(example), model(example), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(rebuilt(example), model(example))


# --- discovery -----------------------------------------------------------------------------------------


def test_the_stac_search_finds_registered_models(registry, monkeypatch):
    store, *_ = registry
    hits = search(store, filter="mlm:architecture = 'iceberg-cnn'")
    assert [h["id"] for h in hits] == [f"{MODEL}-v2"]
    assert hits[0]["assets"]["model"]["href"] == store.url(f"models/{NS}/{MODEL}/v2/model.pt2")
    assert next(link["href"] for link in hits[0]["links"] if link["rel"] == "self") == \
        store.url(f"models/{NS}/{MODEL}/v2/item.json")
    assert [h["id"] for h in search(store, collections=[collection_id(NS, MODEL)])] == [f"{MODEL}-v2", f"{MODEL}-v1"]
    monkeypatch.setenv("EARTHOPS_STORE", store.uri)
    result = CliRunner().invoke(app, ["search", "--filter", "mlm:architecture = 'iceberg-cnn'", "-o", "json"])
    assert result.exit_code == 0, result.output
    assert [f["id"] for f in json.loads(result.output)["features"]] == [f"{MODEL}-v2"]


def test_earthops_get_models_lists_the_registry(registry, monkeypatch):
    store, *_ = registry
    monkeypatch.setenv("EARTHOPS_STORE", store.uri)
    runner = CliRunner()
    table = runner.invoke(app, ["get", "models"])
    assert table.exit_code == 0, table.output
    header, *rows = table.output.strip().splitlines()
    assert header.split() == ["NAMESPACE", "NAME", "VERSION", "ARCHITECTURE", "TASK", "METRICS", "DATASET",
                              "EXPERIMENT", "AGE"]
    assert [r.split()[:5] for r in rows] == [[NS, MODEL, "v1", TINY, "classification"],
                                             [NS, MODEL, "v2", "iceberg-cnn", "classification"]]
    assert "val_accuracy=0.9" in rows[1] and "iceberg-tune/r2" in rows[1] and "iceberg-chips/" in rows[1]

    listed = json.loads(runner.invoke(app, ["get", "models", MODEL, "-n", NS, "-o", "json"]).output)
    assert listed["items"] == list_models(store, NS, MODEL)
    names = runner.invoke(app, ["get", "models", "-o", "name"]).output.split()
    assert names == [f"model/{MODEL}/v1", f"model/{MODEL}/v2"]

    missing = runner.invoke(app, ["get", "models", "nope"])
    assert missing.exit_code == 1 and f"models: {NS}/{MODEL}" in missing.output

    described = runner.invoke(app, ["describe", "model", MODEL])
    assert described.exit_code == 0, described.output
    assert "Version:        v2" in described.output and "0=ship, 1=iceberg" in described.output
    assert runner.invoke(app, ["describe", "model", f"{MODEL}/v9"]).exit_code == 1


# --- S3 ----------------------------------------------------------------------------------------------


def test_registration_into_an_s3_store(s3_env, s3_bucket, dataset, example, tmp_path, monkeypatch):
    monkeypatch.setenv("EARTHOPS_CACHE", str(tmp_path / "cache"))
    store = Store.from_uri(f"s3://{s3_bucket}/earthops")
    model = build(dataset, TINY, {"width": 4}).eval()
    card = make_card(dataset, TINY, {"width": 4}, accuracy=0.7, store_uri=store.uri)
    for expected in ("v1", "v2"):
        registered = register_model(store, namespace=NS, name="s3-model", model=model, example_input=example,
                                    card=card)
        assert registered.version == expected
        assert registered.uri == f"s3://{s3_bucket}/earthops/models/{NS}/s3-model/{expected}"
    assert [(r["name"], r["version"]) for r in list_models(store)] == [("s3-model", "v1"), ("s3-model", "v2")]
    with torch.no_grad():
        exported, item = load_model(Store.from_uri(store.uri), NS, "s3-model", exported=True)
        torch.testing.assert_close(exported(example), model(example), rtol=1e-4, atol=1e-5)
    assert item["properties"]["earthops:model"]["version"] == "v2"
    hits = search(store, filter=f"\"mlm:architecture\" = '{TINY}'")
    assert [h["id"] for h in hits] == ["s3-model-v2", "s3-model-v1"]
    assert store.read_json("catalog.json")["links"][-1]["href"] == f"./models/{NS}/s3-model/collection.json"
