"""The search space: translation to Ray Tune domains, grids, trial configs -> model parameters + Training."""

from __future__ import annotations

from typing import Any

import pytest

from earthops.api.tuning import TuningExperimentSpec
from earthops_runtime.errors import SpecError
from earthops_runtime.tuning import space

pytestmark = pytest.mark.unit


def spec(search: list[dict[str, Any]], **extra: Any) -> TuningExperimentSpec:
    doc = {"datasetRef": {"name": "d"}, "model": {"name": "iceberg-cnn", "parameters": {"width": 0.25}},
           "training": {"epochs": 3, "learningRate": 0.001}, "searchSpace": search, **extra}
    return TuningExperimentSpec.model_validate(doc)


def unchecked(search: list[dict[str, Any]], algorithm: str = "random") -> TuningExperimentSpec:
    """A spec with a search space that the contract refuses (it checks these rules before anything
    runs): the runtime's own checks still hold for a spec that reaches it unchecked."""
    from earthops.api.tuning import Algorithm, SearchParameter

    empty = {"min": None, "max": None, "scale": "linear", "step": None, "values": None, "choices": None}
    parameters = [SearchParameter.model_construct(**{**empty, **p}) for p in search]
    return spec([{"name": "model.x", "type": "discrete", "values": [1]}]).model_copy(
        update={"search_space": parameters, "algorithm": Algorithm.model_construct(name=algorithm, seed=0)})


def sample(domain: Any, n: int = 400) -> list[Any]:
    return [domain.sample() for _ in range(n)]


def test_double_linear_and_log():
    from ray.tune.search.sample import Float

    s = spec([{"name": "model.dropout", "type": "double", "min": 0.1, "max": 0.5},
              {"name": "training.learningRate", "type": "double", "min": 1e-4, "max": 1e-2, "scale": "log"}])
    ps = space.param_space(s)
    assert isinstance(ps["model.dropout"], Float)
    assert isinstance(ps["model.dropout"].sampler, Float._Uniform)
    assert isinstance(ps["training.learningRate"].sampler, Float._LogUniform)
    vals = sample(ps["training.learningRate"])
    assert all(1e-4 <= v <= 1e-2 for v in vals)
    # log scale: about half the samples below the geometric mean 1e-3
    assert 0.35 < sum(v < 1e-3 for v in vals) / len(vals) < 0.65


def test_double_with_step_is_quantized():
    s = spec([{"name": "model.dropout", "type": "double", "min": 0.0, "max": 0.5, "step": 0.1}])
    vals = sample(space.param_space(s)["model.dropout"])
    assert all(abs(v * 10 - round(v * 10)) < 1e-9 and 0 <= v <= 0.5 for v in vals)


def test_int_includes_max_and_log_and_step():
    s = spec([{"name": "model.kernelSize", "type": "int", "min": 2, "max": 4},
              {"name": "training.batchSize", "type": "int", "min": 8, "max": 256, "scale": "log"},
              {"name": "training.epochs", "type": "int", "min": 2, "max": 10, "step": 2}])
    ps = space.param_space(s)
    ks = set(sample(ps["model.kernelSize"]))
    assert ks == {2, 3, 4}  # max included
    bs = sample(ps["training.batchSize"])
    assert all(isinstance(v, int) and 8 <= v <= 256 for v in bs)
    assert sum(v < 45 for v in bs) / len(bs) > 0.35  # log: small values are common
    ep = set(sample(ps["training.epochs"]))
    assert ep <= {2, 4, 6, 8, 10} and {4, 6, 8} <= ep


def test_int_step_must_be_integral():
    search = [{"name": "model.kernelSize", "type": "int", "min": 2, "max": 4, "step": 0.5}]
    with pytest.raises(ValueError, match="int parameters need a whole-number step >= 1"):
        spec(search)
    with pytest.raises(SpecError, match=r"spec.searchSpace\[0\].*integer step"):
        space.param_space(unchecked(search))


def test_discrete_integral_values_are_ints_and_categorical_strings():
    s = spec([{"name": "model.kernelSize", "type": "discrete", "values": [2, 3, 5]},
              {"name": "model.dropout", "type": "discrete", "values": [0.1, 0.25]},
              {"name": "training.optimizer", "type": "categorical", "choices": ["adam", "sgd"]}])
    ps = space.param_space(s)
    ks = set(sample(ps["model.kernelSize"], 100))
    assert ks == {2, 3, 5} and all(type(v) is int for v in ks)
    assert set(sample(ps["model.dropout"], 100)) == {0.1, 0.25}
    assert set(sample(ps["training.optimizer"], 100)) == {"adam", "sgd"}


def test_grid_values_and_points():
    s = spec([{"name": "model.kernelSize", "type": "discrete", "values": [3, 5]},
              {"name": "training.learningRate", "type": "double", "min": 0.001, "max": 0.003, "step": 0.001},
              {"name": "training.optimizer", "type": "categorical", "choices": ["adam"]}],
             algorithm={"name": "grid"})
    ps = space.param_space(s)
    assert ps["model.kernelSize"] == {"grid_search": [3, 5]}
    assert ps["training.learningRate"] == {"grid_search": [0.001, 0.002, 0.003]}
    points = space.grid_points(s.search_space)
    assert len(points) == 6
    assert points[0] == {"model.kernelSize": 3, "training.learningRate": 0.001, "training.optimizer": "adam"}
    assert points[-1]["model.kernelSize"] == 5 and points[-1]["training.learningRate"] == 0.003


def test_grid_int_with_step():
    s = spec([{"name": "model.kernelSize", "type": "int", "min": 1, "max": 7, "step": 2}], algorithm={"name": "grid"})
    assert space.grid_values(s.search_space[0]) == [1, 3, 5, 7]


@pytest.mark.parametrize("ptype", ["double", "int"])
def test_grid_without_step_is_refused(ptype: str):
    search = [{"name": "model.kernelSize", "type": "discrete", "values": [3]},
              {"name": "model.dropout", "type": ptype, "min": 0, "max": 1}]
    with pytest.raises(ValueError, match="grid search needs a step on every double and int parameter"):
        spec(search, algorithm={"name": "grid"})
    with pytest.raises(SpecError, match=r"spec.searchSpace\[1\]: model.dropout: grid search needs a step"):
        space.validate_space(unchecked(search, "grid"))


def test_apply_config_sets_training_and_model():
    s = spec([{"name": "training.learningRate", "type": "double", "min": 1e-4, "max": 1e-2},
              {"name": "model.kernelSize", "type": "discrete", "values": [3, 5]}])
    params, training = space.apply_config(s, {"training.learningRate": 0.005, "model.kernelSize": 5})
    assert params == {"width": 0.25, "kernelSize": 5}
    assert training.learning_rate == 0.005 and training.epochs == 3
    assert s.training.learning_rate == 0.001  # the spec itself is unchanged


def test_apply_config_unknown_training_field():
    search = [{"name": "training.learnRate", "type": "double", "min": 1e-4, "max": 1e-2}]
    with pytest.raises(ValueError, match=r"searchSpace.0.name\n.*String should match pattern.*learningRate"):
        spec(search)
    s = unchecked(search)
    with pytest.raises(SpecError) as exc:
        space.apply_config(s, {"training.learnRate": 0.01})
    text = str(exc.value)
    assert "spec.searchSpace[0]" in text and "'learnRate'" in text and "learningRate" in text and "batchSize" in text
    with pytest.raises(SpecError, match="learnRate"):
        space.validate_space(s)


def test_apply_config_out_of_bounds_training_value():
    s = spec([{"name": "training.learningRate", "type": "double", "min": 1e-4, "max": 20}])
    with pytest.raises(SpecError, match=r"spec.searchSpace\[0\]: training.learningRate=20"):
        space.apply_config(s, {"training.learningRate": 20.0})
    with pytest.raises(SpecError, match="learningRate"):
        space.validate_space(s)  # the bounds are checked before any trial runs
    bad_choice = spec([{"name": "training.optimizer", "type": "categorical", "choices": ["adam", "lion"]}])
    with pytest.raises(SpecError, match="lion"):
        space.validate_space(bad_choice)


def test_optuna_accepts_every_domain():
    """Every domain the translation makes converts to an Optuna distribution (tpe, bayesian, bohb)."""
    from ray.tune.search.optuna import OptunaSearch

    s = spec([{"name": "model.dropout", "type": "double", "min": 0.1, "max": 0.5},
              {"name": "model.width", "type": "double", "min": 0.25, "max": 1.0, "step": 0.25},
              {"name": "training.learningRate", "type": "double", "min": 1e-4, "max": 1e-2, "scale": "log"},
              {"name": "model.kernelSize", "type": "int", "min": 2, "max": 5},
              {"name": "training.batchSize", "type": "int", "min": 8, "max": 64, "scale": "log"},
              {"name": "training.epochs", "type": "int", "min": 2, "max": 10, "step": 2},
              {"name": "model.poolSize", "type": "discrete", "values": [2, 3]},
              {"name": "training.optimizer", "type": "categorical", "choices": ["adam", "sgd"]}])
    dists = OptunaSearch.convert_search_space(space.param_space(s))
    assert set(dists) == {p.name for p in s.search_space}


def test_as_text():
    assert space.as_text(0.001234567) == "0.00123457"
    assert space.as_text(3) == "3" and space.as_text("adam") == "adam" and space.as_text(True) == "true"


@pytest.mark.parametrize(("model", "search", "field", "fragment"), [
    ({"name": "iceberg-cnn", "parameters": {"width": 0.25}},
     [{"name": "model.kernelSize", "type": "double", "min": 2, "max": 5}], "spec.searchSpace[0]",
     "model.kernelSize = 3.11"),  # a double over kernelSize: 2.0 is fine, but the draws are not integers
    ({"name": "iceberg-cnn", "parameters": {"width": 0.25}},
     [{"name": "model.filters", "type": "discrete", "values": [8, 16]}], "spec.searchSpace[0]", "filters"),
    ({"name": "iceberg-cnn", "parameters": {"widht": 0.25}},
     [{"name": "model.dropout", "type": "double", "min": 0.1, "max": 0.5}], "spec.model.parameters.widht",
     "kernelSize"),
    ({"name": "resnet50", "parameters": {}},
     [{"name": "model.dropout", "type": "double", "min": 0.1, "max": 0.5}], "spec.model.name", "iceberg-cnn"),
    ({"name": "unet-small", "parameters": {}},
     [{"name": "model.dropout", "type": "double", "min": 0.1, "max": 0.5}], "spec.model.name", "segmentation"),
])
def test_model_mistakes_fail_before_any_trial_naming_the_field(model, search, field, fragment):
    from earthops_runtime.tuning.experiment import check_model

    s = TuningExperimentSpec.model_validate({"datasetRef": {"name": "d"}, "model": model, "searchSpace": search})
    with pytest.raises(SpecError) as err:
        check_model(s, "classification")
    assert err.value.field == field and fragment in str(err.value), str(err.value)


def test_a_valid_model_space_passes_the_check():
    from earthops_runtime.tuning.experiment import check_model

    check_model(spec([{"name": "model.kernelSize", "type": "discrete", "values": [2, 3, 5]},
                      {"name": "model.dropout", "type": "double", "min": 0.01, "max": 0.5}]), "classification")
