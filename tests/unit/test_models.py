"""The model zoo: shapes for any chip size, named layers, parameters as manifests and tuners give them,
model/task fit, custom factories by import path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from earthops_runtime.errors import SpecError
from earthops_runtime.models import ZOO, accepted_parameters, build_model, model_arguments, model_names
from earthops_runtime.models.iceberg import pool_out
from earthops_runtime.models.unet import padding_for
from earthops_runtime.models.zoo import Param, camel_case, coerce, snake_case
from tests.unit import custom_models

pytestmark = pytest.mark.unit


def _build(name, params=None, *, channels=3, classes=2, task="classification", shape=(75, 75)):
    return build_model(name, params or {}, in_channels=channels, num_classes=classes, task=task, chip_shape=shape)


def _out(model: nn.Module, channels: int, shape: tuple[int, int], batch: int = 2) -> tuple[int, ...]:
    model.eval()
    with torch.inference_mode():
        return tuple(model(torch.randn(batch, channels, *shape)).shape)


def test_the_zoo_lists_its_models():
    assert model_names() == ["iceberg-cnn", "resnet18-ms", "unet-small"] == sorted(ZOO)


# --- iceberg-cnn --------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "kernel", "pool"), [
    ((75, 75), 3, 2), ((75, 75), 5, 3), ((75, 75), 2, 2), ((64, 64), 4, 3), ((7, 9), 5, 3), ((1, 1), 3, 3),
    ((120, 33), 3, 2),
])
def test_iceberg_cnn_gives_logits_for_any_chip_kernel_and_pool(shape, kernel, pool):
    model = _build("iceberg-cnn", {"kernelSize": kernel, "poolSize": pool, "width": 0.25}, classes=3, shape=shape)
    assert _out(model, 3, shape) == (2, 3)


def test_iceberg_cnn_has_the_papers_layers_at_width_one():
    model = _build("iceberg-cnn", {"dropout": 0.3})
    assert [n for n, _ in model.named_children()] == [
        "conv1", "pool1", "dropout1", "conv2", "pool2", "dropout2", "conv3", "pool3", "dropout3", "conv4", "pool4",
        "dropout4", "dense1", "dropout5", "dense2", "dropout6", "head"]
    convs = [getattr(model, f"conv{i}")[0] for i in range(1, 5)]
    assert [c.out_channels for c in convs] == [64, 128, 128, 64]
    assert convs[0].in_channels == 3 and convs[0].kernel_size == (3, 3)
    assert [type(m) for m in model.conv1] == [nn.Conv2d, nn.ReLU]
    assert isinstance(model.pool1, nn.MaxPool2d) and model.dropout1.p == 0.3 and model.dropout5.p == 0.3
    assert (model.dense1[0].out_features, model.dense2[0].out_features, model.head.out_features) == (512, 256, 2)
    assert _out(model, 3, (75, 75), batch=1) == (1, 2)


def test_iceberg_cnn_width_scales_every_layer():
    model = _build("iceberg-cnn", {"width": 0.25})
    assert [getattr(model, f"conv{i}")[0].out_channels for i in range(1, 5)] == [16, 32, 32, 16]
    assert (model.dense1[0].out_features, model.dense2[0].out_features) == (128, 64)


def test_iceberg_cnn_rebuilds_itself_without_a_convolution_a_pool_or_a_dropout():
    model = _build("iceberg-cnn", {"width": 0.25})
    lean = model.without(["conv2", "pool3", "dropout1", "dense2"])
    names = [n for n, _ in lean.named_children()]
    assert "conv2" not in names and "pool3" not in names and "dropout1" not in names and "dense2" not in names
    assert lean.conv3[0].in_channels == model.conv1[0].out_channels  # the channels pass on
    assert _out(lean, 3, (75, 75)) == (2, 2)
    assert _out(lean.without(["pool1", "pool2", "pool4"]), 3, (75, 75)) == (2, 2)
    with pytest.raises(ValueError, match="no child block2"):
        model.without(["block2"])


def test_iceberg_cnn_serves_multilabel_with_one_logit_per_label():
    model = _build("iceberg-cnn", {"width": 0.25}, channels=5, classes=19, task="multilabel", shape=(32, 32))
    assert _out(model, 5, (32, 32)) == (2, 19)


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 7, 37, 75, 76])
@pytest.mark.parametrize("kernel", [1, 2, 3])
def test_pool_out_matches_pytorch(length, kernel):
    if kernel > length:
        return
    pool = nn.MaxPool2d((kernel, 1), stride=2, ceil_mode=True)
    assert pool_out(length, kernel) == pool(torch.zeros(1, 1, length, 1)).shape[2]


# --- resnet18-ms and unet-small -----------------------------------------------------------------


@pytest.mark.parametrize(("channels", "shape", "small"), [(12, (64, 64), False), (4, (13, 17), True), (3, (75, 75), False),
                                                           (2, (8, 8), False)])
def test_resnet18_ms_takes_any_number_of_bands(channels, shape, small):
    model = _build("resnet18-ms", {"width": 8, "smallInput": small}, channels=channels, classes=5, shape=shape)
    assert [n for n, _ in model.named_children()] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert model.stem[0].in_channels == channels
    assert _out(model, channels, shape) == (2, 5)


def test_resnet18_ms_has_resnet18s_blocks():
    model = _build("resnet18-ms", {})
    blocks = [b for i in range(1, 5) for b in getattr(model, f"layer{i}")]
    assert len(blocks) == 8 and [b.conv2.out_channels for b in blocks[::2]] == [64, 128, 256, 512]
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(11.18e6, rel=0.01)  # torchvision's, 2 outputs


@pytest.mark.parametrize(("shape", "depth"), [((64, 64), 3), ((63, 65), 3), ((5, 7), 3), ((31, 1), 2), ((10, 10), 1)])
def test_unet_small_gives_per_pixel_logits_for_any_size(shape, depth):
    model = _build("unet-small", {"width": 4, "depth": depth}, channels=15, classes=6, task="segmentation", shape=shape)
    assert _out(model, 15, shape) == (2, 6, *shape)


def test_unet_small_names_its_stages():
    model = _build("unet-small", {"width": 4}, channels=15, classes=6, task="segmentation", shape=(64, 64))
    assert [n for n, _ in model.named_children()] == ["enc1", "enc2", "enc3", "bottleneck", "dec3", "dec2", "dec1",
                                                      "head"]
    assert model.enc1[0].out_channels == 4 and model.bottleneck.conv[0].out_channels == 32


def test_padding_for_reaches_a_multiple_of_two_to_the_depth():
    assert [padding_for(n, 3) for n in (64, 63, 65, 1)] == [0, 1, 7, 7]


# --- parameters ---------------------------------------------------------------------------------


def test_manifest_keys_map_to_factory_arguments():
    assert snake_case("kernelSize") == "kernel_size" and snake_case("dropout") == "dropout"
    assert snake_case("kernel_size") == "kernel_size" and camel_case("small_input") == "smallInput"
    assert model_arguments("iceberg-cnn", {"kernelSize": 5.0, "poolSize": "3", "dropout": 0.25, "width": 1}) == {
        "kernel_size": 5, "pool_size": 3, "dropout": 0.25, "width": 1.0}
    assert model_arguments("resnet18-ms", {"smallInput": "true", "width": 16.0}) == {"small_input": True, "width": 16}
    assert model_arguments("resnet18-ms", {"smallInput": "False"}) == {"small_input": False}
    assert accepted_parameters("iceberg-cnn") == ["kernelSize", "poolSize", "dropout", "width"]


def test_an_integral_float_builds_the_same_model_as_an_int():
    a = _build("iceberg-cnn", {"kernelSize": 3.0, "width": 0.25})
    assert a.conv1[0].kernel_size == (3, 3) and isinstance(a.conv1[0].kernel_size[0], int)


@pytest.mark.parametrize(("params", "field", "words"), [
    ({"kernelSize": 2.5}, "spec.model.parameters.kernelSize", "2.5 is not valid: expected an integer >= 1 and <= 15"),
    ({"kernelSize": True}, "spec.model.parameters.kernelSize", "expected an integer"),
    ({"kernelSize": "three"}, "spec.model.parameters.kernelSize", "expected an integer"),
    ({"kernelSize": 0}, "spec.model.parameters.kernelSize", ">= 1"),
    ({"dropout": 1.0}, "spec.model.parameters.dropout", "expected a number >= 0 and < 1"),
    ({"width": 0}, "spec.model.parameters.width", "> 0"),
    ({"width": float("nan")}, "spec.model.parameters.width", "not valid"),
    ({"filters": 32}, "spec.model.parameters.filters", "unknown parameter; accepted: kernelSize, poolSize, dropout, width"),
    ({"inChannels": 4}, "spec.model.parameters.inChannels", "set from the dataset"),
    ({"kernelSize": 3, "kernel_size": 3}, "spec.model.parameters.kernel_size", "given twice"),
])
def test_bad_parameters_name_the_field_and_what_is_accepted(params, field, words):
    with pytest.raises(SpecError) as err:
        _build("iceberg-cnn", params)
    assert err.value.field == field and words in str(err.value)


def test_a_flag_accepts_text_and_zero_or_one_but_nothing_else():
    flag = Param(bool)
    assert [coerce(v, flag, "f") for v in ("true", " TRUE", "false", True, 0, 1.0)] == [True, True, False, True, False,
                                                                                        True]
    for bad in ("yes", 2, None):
        with pytest.raises(SpecError, match="expected true or false"):
            coerce(bad, flag, "f")


# --- model and task -----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "task", "other"), [("iceberg-cnn", "segmentation", "unet-small"),
                                                     ("resnet18-ms", "segmentation", "unet-small"),
                                                     ("unet-small", "classification", "iceberg-cnn")])
def test_a_model_for_another_task_is_refused(name, task, other):
    with pytest.raises(SpecError) as err:
        _build(name, task=task)
    assert err.value.field == "spec.model.name"
    assert name in str(err.value) and f"task is {task}" in str(err.value) and other in str(err.value)


def test_an_unknown_model_lists_the_zoo():
    with pytest.raises(SpecError, match="unknown model 'vgg16'.*iceberg-cnn, resnet18-ms, unet-small"):
        _build("vgg16")


# --- custom factories ---------------------------------------------------------------------------


def test_a_custom_factory_gets_the_data_arguments_and_typed_parameters():
    model = _build("tests.unit.custom_models:tiny", {"hidden": 6.0, "pool": "false"}, channels=4, classes=3,
                   shape=(9, 9))
    assert model[0].in_channels == 4 and model[0].out_channels == 6
    assert _out(model, 4, (9, 9)) == (2, 3, 9, 9)  # pool=false: per-pixel logits
    assert accepted_parameters("tests.unit.custom_models:tiny") == ["hidden", "pool", "scale"]


def test_a_custom_factory_gets_only_the_data_arguments_it_takes():
    model = _build("tests.unit.custom_models:channels_only", {"width": 5.0}, channels=2, classes=4)
    assert model[0].out_channels == 5 and _out(model, 2, (6, 6)) == (2, 4)


def test_a_kwargs_factory_gets_everything_unconverted():
    _build("tests.unit.custom_models:anything", {"someFlag": "true", "depth": 2.0}, channels=2, classes=3,
           task="multilabel", shape=(8, 10))
    assert custom_models.SEEN == {"in_channels": 2, "num_classes": 3, "task": "multilabel", "chip_shape": (8, 10),
                                  "some_flag": "true", "depth": 2.0}


@pytest.mark.parametrize(("name", "params", "field", "words"), [
    ("tests.unit.no_such_module:f", {}, "spec.model.name", "cannot import module 'tests.unit.no_such_module'"),
    ("tests.unit.custom_models:missing", {}, "spec.model.name", "has no attribute 'missing'"),
    ("tests.unit.custom_models:NOT_CALLABLE", {}, "spec.model.name", "is a int, not a callable factory"),
    ("tests.unit.custom_models:not_a_module", {}, "spec.model.name", "returned a int, not a torch.nn.Module"),
    ("tests.unit.custom_models:refuses", {}, "spec.model.name", "failed: ValueError: hidden=4 is too small"),
    ("tests.unit.custom_models:tiny", {"depth": 3}, "spec.model.parameters.depth", "accepted: hidden, pool, scale"),
    ("tests.unit.custom_models:tiny", {"hidden": 1.5}, "spec.model.parameters.hidden", "expected an integer"),
])
def test_custom_factory_mistakes_are_spec_errors(name, params, field, words):
    with pytest.raises(SpecError) as err:
        _build(name, params)
    assert err.value.field == field and words in str(err.value)
