"""The model registry's pure parts: model card -> MLM item and collection, version numbering, the
rows and text of `earthops get models` / `describe model`."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from earthops.control import display
from earthops.core import registry
from earthops.core.registry import RegistryError
from earthops_runtime.catalog.index import items_table
from earthops_runtime.catalog.model import (
    CLASSIFICATION_SCHEMA,
    EXPORTED,
    MLM_SCHEMA,
    TORCHSCRIPT,
    Artifact,
    ModelCard,
    check_card,
    class_objects,
    footprint,
    index_entry,
    model_collection,
    model_item,
    output_dim_order,
    rebuild_arguments,
    validate,
)
from earthops_runtime.stac.conventions import ConventionError

pytestmark = pytest.mark.unit

WHEN = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
COLLECTION_URL = "s3://bucket/earthops/datasets/default/iceberg-chips/g1-ab12cd34/stac/collection.json"
DATASET = {"extent": {"spatial": {"bbox": [[-52.5, 46.0, -48.0, 49.5]]}}}


def card(**changes) -> ModelCard:
    fields = dict(
        architecture="iceberg-cnn", parameters={"kernelSize": 3, "dropout": 0.2}, task="classification",
        classes=["ship", "iceberg"], features=["HH", "HV", "band_avg"], chip_shape=(75, 75),
        mean=[-20.5, -26.0, -23.25], std=[4.0, 3.5, 3.0], metrics={"val_accuracy": 0.91, "val_loss": 0.25},
        hyperparameters={"optimizer": "adam", "lr": 0.001, "batchSize": 32},
        dataset_uri="s3://bucket/earthops/datasets/default/iceberg-chips/g1-ab12cd34",
        dataset_collection=COLLECTION_URL,
        experiment={"kind": "TuningExperiment", "namespace": "default", "name": "iceberg-tune", "runId": "r7",
                    "uri": "s3://bucket/earthops/experiments/default/iceberg-tune/r7"})
    fields.update(changes)
    return ModelCard(**fields)


def item(c: ModelCard | None = None, *, artifact: Artifact | None = None, output_shape=(2, 2), version="v3",
         dataset=DATASET, created=WHEN) -> dict:
    return model_item(c or card(), namespace="default", name="iceberg", version=version, created=created,
                      artifact=artifact or Artifact("model.pt2", EXPORTED, True), output_shape=output_shape,
                      total_parameters=1234, framework_version="2.13.0", dataset_collection=dataset)


# --- the item ----------------------------------------------------------------------------------------


def test_the_card_becomes_an_mlm_item():
    doc = item()
    props = doc["properties"]
    assert doc["stac_extensions"] == [MLM_SCHEMA, CLASSIFICATION_SCHEMA]
    assert MLM_SCHEMA.endswith("/mlm/v1.4.0/schema.json")
    assert doc["id"] == "iceberg-v3" and doc["collection"] == "earthops-models-default-iceberg"
    assert props["datetime"] == "2025-03-01T12:00:00Z"
    assert {k: props[k] for k in ("mlm:name", "mlm:architecture", "mlm:tasks", "mlm:framework",
                                  "mlm:framework_version", "mlm:total_parameters", "mlm:pretrained")} == {
        "mlm:name": "iceberg", "mlm:architecture": "iceberg-cnn",
        "mlm:tasks": ["classification", "scene-classification"],
        "mlm:framework": "PyTorch", "mlm:framework_version": "2.13.0", "mlm:total_parameters": 1234,
        "mlm:pretrained": False}
    assert props["mlm:accelerator"] is None and props["mlm:hyperparameters"] == card().hyperparameters
    assert props["earthops:metrics"] == {"val_accuracy": 0.91, "val_loss": 0.25}
    assert props["earthops:parameters"] == {"kernelSize": 3, "dropout": 0.2}
    assert props["earthops:model"] == {"namespace": "default", "name": "iceberg", "version": "v3"}
    assert props["earthops:dataset"] == card().dataset_uri and props["earthops:experiment"]["runId"] == "r7"


def test_the_input_names_the_bands_shape_and_normalisation():
    (model_input,) = item()["properties"]["mlm:input"]
    assert model_input["bands"] == ["HH", "HV", "band_avg"]
    assert model_input["input"] == {"shape": [-1, 3, 75, 75], "dim_order": ["batch", "channel", "height", "width"],
                                    "data_type": "float32"}
    assert model_input["value_scaling"] == [
        {"type": "z-score", "mean": -20.5, "stddev": 4.0}, {"type": "z-score", "mean": -26.0, "stddev": 3.5},
        {"type": "z-score", "mean": -23.25, "stddev": 3.0}]


def test_a_program_exported_for_one_batch_size_says_so():
    doc = item(artifact=Artifact("model.pt2", EXPORTED, False, "exported for batch size 2 only: ..."))
    assert doc["properties"]["mlm:input"][0]["input"]["shape"][0] == 2
    assert doc["properties"]["mlm:output"][0]["result"]["shape"] == [2, 2]
    assert doc["assets"]["model"]["description"].startswith("exported for batch size 2")


def test_the_output_has_the_classes_and_the_measured_shape():
    (output,) = item()["properties"]["mlm:output"]
    assert output["tasks"] == ["classification", "scene-classification"]
    assert output["result"] == {"shape": [-1, 2], "dim_order": ["batch", "class"], "data_type": "float32"}
    assert output["classification:classes"] == [{"value": 0, "name": "ship", "title": "ship"},
                                                 {"value": 1, "name": "iceberg", "title": "iceberg"}]


def test_segmentation_outputs_class_maps():
    c = card(task="segmentation", classes=["water", "land", "cloud"])
    props = item(c, output_shape=(2, 3, 75, 75))["properties"]
    assert props["mlm:tasks"] == ["segmentation", "semantic-segmentation"]
    assert props["mlm:output"][0]["result"]["dim_order"] == ["batch", "class", "height", "width"]
    assert props["mlm:output"][0]["result"]["shape"] == [-1, 3, 75, 75]
    with pytest.raises(ValueError, match="should output 4 dimensions"):
        output_dim_order("segmentation", 2)
    assert item(card(task="multilabel"))["properties"]["earthops:task"] == "multilabel"


def test_class_names_become_classification_identifiers_and_keep_their_spelling():
    assert class_objects(["open water", "snow/ice", "???"]) == [
        {"value": 0, "name": "open_water", "title": "open water"},
        {"value": 1, "name": "snow_ice", "title": "snow/ice"},
        {"value": 2, "name": "class_2", "title": "???"}]


def test_assets_and_links():
    doc = item()
    assets = doc["assets"]
    assert assets["model"]["href"] == "./model.pt2" and assets["model"]["mlm:artifact_type"] == "torch.export.save"
    assert assets["model"]["roles"][0] == "mlm:model" and [b["name"] for b in assets["model"]["bands"]] == [
        "HH", "HV", "band_avg"]
    assert assets["weights"] == {"href": "./weights.pt", "type": "application/octet-stream; framework=pytorch",
                                 "roles": ["mlm:weights", "weights", "data"], "title": assets["weights"]["title"]}
    assert "mlm:artifact_type" not in assets["weights"]  # mlm v1.4: only on the mlm:model asset
    assert assets["stats"]["href"] == "./stats.json"
    links = {link["rel"]: link["href"] for link in doc["links"]}
    assert links == {"root": "../../../../catalog.json", "parent": "../collection.json",
                     "collection": "../collection.json", "derived_from": COLLECTION_URL,
                     "via": "s3://bucket/earthops/experiments/default/iceberg-tune/r7"}
    via = next(link for link in doc["links"] if link["rel"] == "via")
    assert via["title"] == "TuningExperiment iceberg-tune r7"


def test_torchscript_artifacts_and_missing_lineage():
    doc = item(card(dataset_collection=None, experiment={}),
               artifact=Artifact("model.ts", TORCHSCRIPT, True, "torch.export failed (...)"))
    assert doc["assets"]["model"]["href"] == "./model.ts"
    assert doc["assets"]["model"]["mlm:artifact_type"] == "torch.jit.save"
    assert {link["rel"] for link in doc["links"]} == {"root", "parent", "collection"}


def test_the_footprint_is_the_datasets_extent_else_the_world():
    assert item()["bbox"] == [-52.5, 46.0, -48.0, 49.5]
    assert item()["geometry"]["coordinates"][0][0] == [-52.5, 46.0]
    assert item(dataset=None)["bbox"] == [-180.0, -90.0, 180.0, 90.0]
    assert footprint({"extent": {}}) == footprint(None)
    geometry, bbox = footprint({"extent": {"spatial": {"bbox": [[170.0, -10.0, 0.0, -170.0, 10.0, 5.0]]}}})
    assert bbox == [170.0, -10.0, -170.0, 10.0]
    assert geometry["type"] == "MultiPolygon" and len(geometry["coordinates"]) == 2


def test_items_are_valid_stac_and_index_with_a_self_link():
    doc = item()
    validate(doc, "item.json")
    entry = index_entry(doc)
    assert entry["links"][0] == {"rel": "self", "href": "./item.json", "type": "application/geo+json"}
    assert doc["links"][0]["rel"] == "root"  # the item itself is not changed
    table, json_columns = items_table([entry])
    assert table.column("mlm:architecture").to_pylist() == ["iceberg-cnn"]  # a plain column: CQL2 filters run in SQL
    assert {"mlm:input", "mlm:output", "earthops:metrics"} <= set(json_columns)
    broken = {**doc, "bbox": "everywhere"}
    with pytest.raises(ConventionError, match="broken.json: not valid STAC"):
        validate(broken, "broken.json")


def test_rebuild_arguments_come_back_from_the_item():
    assert rebuild_arguments(item()) == {"name": "iceberg-cnn", "parameters": {"kernelSize": 3, "dropout": 0.2},
                                         "in_channels": 3, "num_classes": 2, "task": "classification",
                                         "chip_shape": (75, 75)}
    wide = item(card(task="multilabel", classes=["a", "b"]), output_shape=(2, 5))
    assert rebuild_arguments(wide)["num_classes"] == 5


@pytest.mark.parametrize(("changes", "field"), [
    ({"mean": [0.0, 1.0]}, "card.mean"), ({"std": [1.0, 0.0, 1.0]}, "card.std"), ({"features": []}, "card.features"),
    ({"task": "detection"}, "card.task"), ({"classes": []}, "card.classes"),
    ({"chip_shape": (0, 75)}, "card.chip_shape"),
    ({"architecture": ""}, "card.architecture"), ({"dataset_uri": ""}, "card.dataset_uri"),
])
def test_a_card_whose_parts_disagree_is_refused(changes, field):
    with pytest.raises(ValueError, match=field):
        check_card(card(**changes))


def test_registration_time_must_be_aware():
    with pytest.raises(ValueError, match="timezone-aware"):
        item(created=datetime(2025, 1, 1))


# --- the collection ----------------------------------------------------------------------------------


def test_the_collection_lists_every_version():
    v1 = item(version="v1", created=WHEN)
    v2 = item(card(architecture="resnet18-ms"), version="v2", created=WHEN + timedelta(days=2),
              dataset={"extent": {"spatial": {"bbox": [[-60.0, 40.0, -50.0, 47.0]]}}})
    doc = model_collection("default", "iceberg", {"v1": v1, "v2": v2})
    validate(doc, "collection.json")
    assert doc["id"] == "earthops-models-default-iceberg" and doc["stac_extensions"] == [MLM_SCHEMA]
    assert [(link["rel"], link["href"]) for link in doc["links"]] == [
        ("root", "../../../catalog.json"), ("parent", "../../../catalog.json"),
        ("item", "./v1/item.json"), ("item", "./v2/item.json")]
    assert doc["extent"]["spatial"]["bbox"] == [[-60.0, 40.0, -48.0, 49.5]]
    assert doc["extent"]["temporal"]["interval"] == [["2025-03-01T12:00:00Z", "2025-03-03T12:00:00Z"]]
    assert doc["summaries"]["mlm:architecture"] == ["iceberg-cnn", "resnet18-ms"]
    assert doc["summaries"]["mlm:tasks"] == ["classification", "scene-classification"]
    with pytest.raises(ValueError, match="at least one version"):
        model_collection("default", "iceberg", {})


# --- versions and names (earthops.core.registry) ------------------------------------------------------------


def test_versions_are_numbered_and_never_reused():
    assert registry.next_version([]) == "v1"
    assert registry.next_version(["v1", "v2", "v10", "tmp"]) == "v11"
    assert registry.next_version(["v3"]) == "v4"  # gaps are not filled
    assert registry.sort_versions(["v10", "v2", "v1", "latest", "v0"]) == ["v1", "v2", "v10"]
    assert registry.pick_version(["v2", "v10"], "latest", model="m") == "v10"
    assert registry.pick_version(["v2", "v10"], "v2", model="m") == "v2"
    with pytest.raises(RegistryError, match="no version 'v3'; versions: v2, v10"):
        registry.pick_version(["v10", "v2"], "v3", model="m")
    with pytest.raises(RegistryError, match="expected v1, v2"):
        registry.pick_version(["v1"], "V1", model="m")
    with pytest.raises(RegistryError, match="no registered version"):
        registry.pick_version([], "latest", model="m")


@pytest.mark.parametrize(("namespace", "name"), [("Default", "m"), ("default", "../m"), ("default", ""),
                                                 ("default", "m_1"), ("a" * 64, "m")])
def test_names_must_be_kubernetes_names(namespace, name):
    with pytest.raises(RegistryError, match="not a valid"):
        registry.check_names(namespace, name)


def test_rows_and_labels_for_the_cli():
    doc = item()
    row = registry.summarize(doc, namespace="default", name="iceberg", version="v3", uri="s3://b/m/v3")
    assert row == {"namespace": "default", "name": "iceberg", "version": "v3", "uri": "s3://b/m/v3",
                   "created": "2025-03-01T12:00:00Z", "architecture": "iceberg-cnn", "task": "classification",
                   "metrics": {"val_accuracy": 0.91, "val_loss": 0.25}, "dataset": card().dataset_uri,
                   "experiment": card().experiment, "objective": {}}
    assert display.dataset_label(row["dataset"]) == "iceberg-chips/g1-ab12cd34"
    assert display.dataset_label("file:///data/other/place") == "other/place"
    assert display.dataset_label(None) == ""
    assert display.experiment_label(row["experiment"]) == "iceberg-tune/r7"
    assert display.metrics_text({"val_accuracy": 0.912345, "epochs": 12}) == "val_accuracy=0.9123 epochs=12"


def test_describe_shows_input_normalisation_classes_and_lineage():
    text = display.describe_model(item(), namespace="default", name="iceberg", version="v3", uri="s3://b/m/v3")
    lines = text.splitlines()
    assert "Version:        v3" in lines and "Architecture:   iceberg-cnn" in lines
    assert "Artifact:       ./model.pt2 (torch.export.save)" in lines
    assert any(line.split() == ["band_avg", "-23.25", "3"] for line in lines)
    assert "  Classes:      0=ship, 1=iceberg" in lines
    assert "    lr: 0.001" in lines and "Metrics:        val_accuracy=0.91 val_loss=0.25" in lines


def test_tables_show_the_objective_and_validation_metrics_first():
    # the store writes JSON with sorted keys: the card's own order is gone by the time a reader sees it
    stored = json.loads(json.dumps(item(card(metrics={"val_f1": 0.97, "val_accuracy": 0.99, "lr": 0.0012,
                                                      "epoch_seconds": 16.4, "train_loss": 0.05, "val_loss": 0.04},
                                             objective={"metric": "val_accuracy", "goal": "maximize",
                                                        "value": "last"})), sort_keys=True))
    row = registry.summarize(stored, namespace="default", name="iceberg", version="v3", uri="s3://b/m/v3")
    assert list(row["metrics"]) == ["val_accuracy", "val_f1", "val_loss", "epoch_seconds", "lr", "train_loss"]
    assert display.metrics_text(registry.headline_metrics(row)) == "val_accuracy=0.99 val_f1=0.97 val_loss=0.04"
    # a model registered before the objective was recorded: validation metrics still come first
    del stored["properties"]["earthops:objective"]
    row = registry.summarize(stored, namespace="default", name="iceberg", version="v3", uri="s3://b/m/v3")
    assert list(registry.headline_metrics(row)) == ["val_accuracy", "val_f1", "val_loss"]


def test_describe_shows_the_tuned_model_arguments_and_the_weight_count():
    doc = item(card(parameters={"width": 0.5, "kernelSize": 5, "poolSize": 2, "dropout": 0.12},
                    objective={"metric": "val_accuracy", "goal": "maximize", "value": "last"},
                    experiment={**card().experiment, "trial": "a1_00003"}), output_shape=(2, 2))
    doc["properties"]["mlm:total_parameters"] = 271554
    lines = display.describe_model(doc, namespace="default", name="iceberg", version="v3", uri="s3://b/m/v3").splitlines()
    assert "Weights:        271,554 parameters" in lines and not any(x.startswith("Parameters:") for x in lines)
    assert "Objective:      val_accuracy 0.91 (maximize, last epoch of trial a1_00003)" in lines
    hyper = lines[lines.index("Hyperparameters:"):]
    assert hyper[1] == "  Model:" and {"    kernelSize: 5", "    poolSize: 2", "    dropout: 0.12"} <= set(hyper)
    assert "  Training:" in hyper and "    optimizer: adam" in hyper


def test_the_control_plane_registry_imports_no_heavy_library():
    code = ("import json, sys; import earthops.core.registry; "
            "print(json.dumps([m for m in ('torch', 'numpy', 'pystac', 'ray') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
