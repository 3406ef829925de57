"""AblationStudy before any trial: components from the spec, layer removal (identity for a
shape-preserving layer, the model's own rebuild, a clear error for a shape-changing one, first and last
layers protected), feature removal (a model for C-1 channels), and every bad input refused by the
runtime with the component's field named and nothing run."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from earthops.api import parse_resource
from earthops.core.store import Store
from earthops_runtime.ablation import plan as pl
from earthops_runtime.ablation import surgery
from earthops_runtime.entrypoint import Reporter, Run
from earthops_runtime.errors import SpecError
from earthops_runtime.models.zoo import build_model
from tests.infra.known_truth import tiny, write_dataset

pytestmark = pytest.mark.unit

TINY = "tests.infra.known_truth:tiny"


def study(components: dict[str, Any], **spec: Any) -> dict[str, Any]:
    base = {"datasetRef": {"name": "known-truth"}, "model": {"name": TINY},
            "training": {"epochs": 1, "batchSize": 16, "device": "cpu"}, "components": components,
            "objective": {"metric": "val_accuracy", "goal": "maximize"}, "repeats": 2}
    base.update(spec)
    return {"apiVersion": "earthops.dev/v1alpha1", "kind": "AblationStudy",
            "metadata": {"name": "kt", "namespace": "default", "generation": 1}, "spec": base}


def test_components_follow_the_policy_and_names_must_differ():
    spec = parse_resource(study({"features": ["signal"], "featureGroups": [{"name": "all-noise", "features": ["noise"]}],
                                 "layers": ["extra"], "layerGroups": [{"name": "convs", "prefix": "ext"}],
                                 "modelVariants": [{"name": "iceberg", "model": {"name": "iceberg-cnn"}}]}), "t").spec
    comps = pl.components(spec)
    assert [(c.name, c.kind) for c in comps] == [("base", "base"), ("signal", "feature"), ("all-noise", "featureGroup"),
                                                 ("extra", "layer"), ("convs", "layerGroup"), ("iceberg", "modelVariant")]
    assert comps[4].prefix == "ext" and comps[2].field == "spec.components.featureGroups[0]"
    assert pl.trial_ids(comps[:2], [0, 1]) == ["base@0", "signal@0", "base@1", "signal@1"]
    assert pl.split_trial("all-noise@12") == ("all-noise", 12)
    groups = parse_resource(study({"featureGroups": [{"name": "g", "features": ["noise"]}]},
                                  policy="leave-one-group-out"), "t").spec
    assert [c.name for c in pl.components(groups)] == ["base", "g"]
    clash = parse_resource(study({"features": ["noise"], "featureGroups": [{"name": "noise", "features": ["signal"]}]}),
                           "t").spec
    with pytest.raises(SpecError, match=r"spec.components.featureGroups\[0\]: component name 'noise' is also"):
        pl.components(clash)


def test_features_unknown_or_leaving_none_are_refused():
    comps = [pl.Component("HX", "feature", "spec.components.features[0]", features=("HX",))]
    with pytest.raises(SpecError, match=r"features\[0\]: feature HX not in the dataset; its features: HH, HV"):
        pl.check_features(comps, ["HH", "HV"])
    everything = [pl.Component("both", "featureGroup", "spec.components.featureGroups[0]", features=("HH", "HV"))]
    with pytest.raises(SpecError, match=r"featureGroups\[0\]: leaving out HH, HV leaves no input feature"):
        pl.check_features(everything, ["HH", "HV"])
    assert pl.kept_features(comps[0], ["HH", "HV"]) == ["HH", "HV"]


def test_a_shape_preserving_layer_becomes_an_identity_and_keeps_the_other_weights():
    torch.manual_seed(0)
    model = tiny(in_channels=2, num_classes=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 2, 8, 8)
    out = surgery.remove(model, ["extra"], example=torch.zeros(2, 2, 8, 8), field="f")
    assert isinstance(out.extra, nn.Identity) and out(x).shape == (4, 2)
    assert all(torch.equal(before[k], v) for k, v in out.state_dict().items())
    nested = surgery.remove(tiny(in_channels=2, num_classes=2), ["extra.0"], example=torch.zeros(2, 2, 8, 8), field="f")
    assert isinstance(nested.extra[0], nn.Identity)


def test_a_shape_changing_layer_is_refused_with_both_shapes():
    model = tiny(in_channels=2, num_classes=2)
    with pytest.raises(SpecError, match=r"f: layer reduce of the model changes shapes, \[2, 8, 8, 8\] in and "
                                        r"\[2, 8, 4, 4\] out, so it cannot become an identity"):
        surgery.remove(model, ["reduce"], example=torch.zeros(2, 2, 8, 8), field="f")


def test_first_last_unknown_layers_and_prefixes():
    model = tiny(in_channels=2, num_classes=2)
    for layer, words in (("stem", "stem is the first layer"), ("head", "head is the last layer"),
                         ("stem.0", "stem.0 is inside the first layer")):
        with pytest.raises(SpecError, match=f"f: {words}"):
            surgery.resolve(model, layers=[layer], field="f")
    with pytest.raises(SpecError, match=r"f: the model has no layer block9; its layers: stem, extra, reduce, pool, "
                                        r"flatten, head \(and .* nested submodules such as stem.0\)"):
        surgery.resolve(model, layers=["block9"], field="f")
    with pytest.raises(SpecError, match="prefix 'conv' matches no removable layer"):
        surgery.resolve(model, prefix="conv", field="f")
    assert surgery.resolve(model, prefix="ex", field="f") == ["extra"]  # not extra.0 too: it goes with extra


def test_iceberg_groups_by_prefix_rebuild_the_model_without_those_layers():
    model = build_model("iceberg-cnn", {"width": 0.25}, in_channels=3, num_classes=2, task="classification",
                        chip_shape=(75, 75))
    convs = surgery.resolve(model, prefix="conv", field="f")
    pools = surgery.resolve(model, prefix="pool", field="f")
    assert convs == ["conv2", "conv3", "conv4"] and pools == ["pool1", "pool2", "pool3", "pool4"]
    assert surgery.resolve(model, prefix="dropout", field="f") == [f"dropout{i}" for i in range(1, 7)]
    x = torch.zeros(2, 3, 75, 75)
    for names in (convs, pools):
        lean = surgery.remove(model, names, example=x, field="f")
        assert lean(x).shape == (2, 2) and not set(names) & set(surgery.children(lean))
        # what the rebuilt model shares with the built one starts from the same weights
        assert torch.equal(lean.conv1[0].weight, model.conv1[0].weight)


def test_a_model_for_fewer_features_has_fewer_input_channels():
    model = build_model(TINY, {}, in_channels=1, num_classes=2, task="classification", chip_shape=(8, 8))
    assert model.stem[0].in_channels == 1


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("kt").as_uri()
    return root, write_dataset(root)


def run_study(dataset: tuple[str, str], doc: dict[str, Any], inputs: dict[str, str] | None = None) -> Any:
    from earthops_runtime.ablation import run

    root, uri = dataset
    store = Store.from_uri(root)
    key = f"ablations/default/{doc['metadata']['name']}/g1-bad"
    reporter = Reporter(store, key, "g1-bad", 1)
    run(Run(resource=parse_resource(doc, "t"), store=store, key=key, reporter=reporter,
            inputs={"dataset": uri} if inputs is None else inputs))
    assert not store.exists(key.replace("ablations/default", "ablations/default") + "/_published.json")
    assert not store.exists(f"ablations/default/{doc['metadata']['name']}/_tune"), "no trial may start"
    return reporter.status


@pytest.mark.parametrize(("components", "field", "words"), [
    ({"features": ["signal", "HX"]}, "spec.components.features[1]", "feature HX not in the dataset; its features: signal, noise"),
    ({"featureGroups": [{"name": "all", "features": ["signal", "noise"]}]}, "spec.components.featureGroups[0]",
     "leaves no input feature"),
    ({"layers": ["block3"]}, "spec.components.layers[0]", "has no layer block3; its layers: stem, extra, reduce"),
    ({"layerGroups": [{"name": "convs", "prefix": "conv"}]}, "spec.components.layerGroups[0].prefix",
     "prefix 'conv' matches no removable layer"),
    ({"layers": ["reduce"]}, "spec.components.layers[0]", "changes shapes, [2, 8, 8, 8] in and [2, 8, 4, 4] out"),
    ({"layers": ["head"]}, "spec.components.layers[0]", "head is the last layer"),
    ({"modelVariants": [{"name": "big", "model": {"name": "iceberg-cnn", "parameters": {"kernelSize": 99}}}]},
     "spec.components.modelVariants[0].model.parameters.kernelSize", "99 is not valid"),
])
def test_bad_components_fail_before_any_trial_naming_the_component(dataset, components, field, words):
    status = run_study(dataset, study(components))
    assert status.phase == "Failed" and status.reason == "InvalidSpec"
    assert status.message.startswith(f"{field}: ") and words in status.message


def test_from_tuning_without_a_usable_experiment_fails_naming_it(dataset):
    doc = study({"features": ["noise"]})
    doc["spec"].pop("training")
    doc["spec"]["fromTuning"] = {"name": "iceberg-tuning"}
    missing = run_study(dataset, doc)
    assert missing.phase == "Failed" and missing.reason == "TuningExperimentNotReady"
    assert "spec.fromTuning: no run of TuningExperiment 'iceberg-tuning'" in missing.message
    unusable = run_study(dataset, doc, inputs={"dataset": dataset[1], "tuning": dataset[0] + "/nothing-here"})
    assert unusable.reason == "TuningExperimentUnusable" and "has no registered best model" in unusable.message
