"""The model zoo: models by name, their parameters as manifests write them, and custom factories.

``build_model("iceberg-cnn", {"kernelSize": 5, "dropout": 0.3}, in_channels=3, num_classes=2,
task="classification", chip_shape=(75, 75))`` returns a ``torch.nn.Module``. Names are the zoo's
(:data:`ZOO`) or an import path ``package.module:factory``; the factory is called with keyword
arguments ``in_channels``, ``num_classes``, ``task``, ``chip_shape`` and the parameters.

Parameters arrive from three places that each bend them: manifests write camelCase keys
(``kernelSize``) where factories take snake_case arguments (``kernel_size``); the tuner's search
spaces hand integers over as floats (``3.0``) and categorical choices as text (``"true"``). So every
value is converted to the argument's declared type first (:func:`coerce`: ``3.0`` -> ``3`` but
``2.5`` is refused for an integer, ``"false"`` -> ``False``), and checked against its range. All
mistakes are :class:`~earthops_runtime.data.scene.SpecError` naming the manifest field
(``spec.model.parameters.kernelSize``, ``spec.model.name``) and what is accepted, raised before any
training starts.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from earthops_runtime.errors import SpecError
from earthops_runtime.models.iceberg import iceberg_cnn
from earthops_runtime.models.resnet import resnet18_ms
from earthops_runtime.models.unet import unet_small

TASKS = ("classification", "multilabel", "segmentation")
#: Arguments every factory receives from the dataset (never model parameters of a manifest).
DATA_ARGUMENTS = ("in_channels", "num_classes", "task", "chip_shape")
NAME_FIELD = "spec.model.name"
PARAMETERS_FIELD = "spec.model.parameters"


@dataclass(frozen=True)
class Param:
    """A factory argument: its type (int, float or bool) and the accepted range ``[low, high]``
    (``low_open``/``high_open``: the bound itself is excluded)."""

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        if self.kind is object:
            return "any value"
        if self.kind is bool:
            return "true or false"
        noun = "an integer" if self.kind is int else "a number"
        if self.low is None and self.high is None:
            return noun
        lo = "" if self.low is None else f"{'>' if self.low_open else '>='} {_num(self.low)}"
        hi = "" if self.high is None else f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return f"{noun} {' and '.join(p for p in (lo, hi) if p)}"


@dataclass(frozen=True)
class ZooModel:
    """A zoo entry: the factory, the label tasks it fits and its tunable arguments (snake_case)."""

    factory: Callable[..., nn.Module]
    tasks: tuple[str, ...]
    params: Mapping[str, Param]
    summary: str


ZOO: dict[str, ZooModel] = {
    "iceberg-cnn": ZooModel(
        iceberg_cnn, ("classification", "multilabel"),
        {"kernel_size": Param(int, 1, 15), "pool_size": Param(int, 1, 8), "dropout": Param(float, 0, 1, high_open=True),
         "width": Param(float, 0, 16, low_open=True)},
        "the Maggy paper's SAR chip classifier: 4 conv blocks (64/128/128/64), dense 512/256",
    ),
    "resnet18-ms": ZooModel(
        resnet18_ms, ("classification", "multilabel"),
        {"width": Param(int, 1, 512), "dropout": Param(float, 0, 1, high_open=True), "small_input": Param(bool)},
        "ResNet-18 for any number of bands, from scratch",
    ),
    "unet-small": ZooModel(
        unet_small, ("segmentation",),
        {"width": Param(int, 1, 256), "depth": Param(int, 1, 6), "dropout": Param(float, 0, 1, high_open=True)},
        "a small U-Net: per-pixel class logits for any chip size",
    ),
}


def model_names() -> list[str]:
    """The zoo's model names."""
    return sorted(ZOO)


# --- decisions (pure) ---------------------------------------------------------------------------


def snake_case(key: str) -> str:
    """``kernelSize`` -> ``kernel_size`` (snake_case keys pass unchanged)."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower()


def camel_case(name: str) -> str:
    """``kernel_size`` -> ``kernelSize``: how a manifest writes a factory argument."""
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def coerce(value: Any, param: Param, field: str) -> Any:
    """``value`` as ``param.kind`` (unchanged for ``object``), checked against its range; SpecError
    on ``field`` otherwise.

    Integral floats become integers (search spaces sample ``3.0``), text is parsed (categorical
    choices are text: ``"3"``, ``"0.2"``, ``"true"``), booleans are never numbers and numbers are
    booleans only as 0 and 1."""
    if param.kind is object:
        return value
    want = param.describe()
    bad = SpecError(field, f"{value!r} is not valid: expected {want}")
    if param.kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        if isinstance(value, int | float) and value in (0, 1):
            return bool(value)
        raise bad
    if isinstance(value, bool):
        raise bad
    number: float | int
    if isinstance(value, int | float):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise bad from None
    else:
        raise bad
    if param.kind is int:
        if isinstance(number, float):
            if not number.is_integer():
                raise bad
            number = int(number)
    else:
        number = float(number)
        if number != number or number in (float("inf"), float("-inf")):
            raise bad
    if param.low is not None and (number < param.low or (param.low_open and number == param.low)):
        raise bad
    if param.high is not None and (number > param.high or (param.high_open and number == param.high)):
        raise bad
    return number


def check_task(name: str, tasks: tuple[str, ...], task: str) -> None:
    """SpecError unless a zoo model made for ``tasks`` fits a dataset labelled for ``task``."""
    if task not in TASKS:
        raise SpecError("spec.datasetRef", f"the dataset's label task {task!r} is not one of {', '.join(TASKS)}")
    if task not in tasks:
        fitting = [n for n, m in sorted(ZOO.items()) if task in m.tasks]
        raise SpecError(NAME_FIELD, f"{name} is a {'/'.join(tasks)} model but the dataset's task is {task}; "
                                    f"models for {task}: {', '.join(fitting)} (or a package.module:factory)")


def resolve_parameters(params: Mapping[str, Param], parameters: Mapping[str, Any],
                       accepts_any: bool = False) -> dict[str, Any]:
    """Manifest parameters (camelCase or snake_case keys) -> factory keyword arguments (snake_case,
    converted). ``params``: the factory's declared arguments; with ``accepts_any`` (a factory taking
    ``**kwargs``) undeclared keys pass through unconverted."""
    out: dict[str, Any] = {}
    accepted = ", ".join(camel_case(n) for n in params) or "none"
    for key, value in parameters.items():
        name = snake_case(str(key))
        field = f"{PARAMETERS_FIELD}.{key}"
        if name in DATA_ARGUMENTS:
            raise SpecError(field, f"{name} is set from the dataset, not by a parameter; accepted: {accepted}")
        if name in out:
            raise SpecError(field, f"given twice (as {camel_case(name)} and {name})")
        if name in params:
            out[name] = coerce(value, params[name], field)
        elif accepts_any:
            out[name] = value
        else:
            raise SpecError(field, f"unknown parameter; accepted: {accepted}")
    return out


# --- custom factories ---------------------------------------------------------------------------


def import_factory(path: str) -> Callable[..., Any]:
    """The callable at ``package.module:factory``; SpecError on ``spec.model.name`` otherwise."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure of user code is a spec error
        raise SpecError(NAME_FIELD, f"cannot import module {module_name!r} of {path}: "
                                    f"{type(exc).__name__}: {exc}") from exc
    factory = getattr(module, attr, None)
    if factory is None:
        raise SpecError(NAME_FIELD, f"module {module_name!r} has no attribute {attr!r}")
    if not callable(factory):
        raise SpecError(NAME_FIELD, f"{path} is a {type(factory).__name__}, not a callable factory")
    return factory


def factory_params(factory: Callable[..., Any]) -> tuple[dict[str, Param], set[str], bool]:
    """A custom factory's tunable arguments (typed by annotation or default: int, float, bool; other
    types are passed through unconverted, as ``Param(object)``), the data arguments it takes, and
    whether it takes ``**kwargs``."""
    try:
        sig = inspect.signature(factory, eval_str=True)
    except (NameError, TypeError, ValueError):
        sig = inspect.signature(factory)
    params: dict[str, Param] = {}
    data: set[str] = set()
    accepts_any = False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            accepts_any = True
            continue
        if p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY):
            continue
        if p.name in DATA_ARGUMENTS:
            data.add(p.name)
            continue
        kind = p.annotation if p.annotation in (int, float, bool) else (
            type(p.default) if type(p.default) in (int, float, bool) else object)
        params[p.name] = Param(kind)
    return params, data, accepts_any


# --- building -----------------------------------------------------------------------------------


def custom_factory(name: str) -> Callable[..., Any]:
    """The factory of a model that is not in the zoo (``package.module:factory``)."""
    if ":" not in name:
        raise SpecError(NAME_FIELD, f"unknown model {name!r}: the zoo has {', '.join(model_names())}, "
                                    "or give a factory as package.module:factory")
    return import_factory(name)


def model_arguments(name: str, parameters: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The factory keyword arguments (snake_case, converted and checked) that manifest
    ``parameters`` of model ``name`` give; SpecError for unknown keys and bad values."""
    if name in ZOO:
        return resolve_parameters(ZOO[name].params, parameters or {})
    params, _, accepts_any = factory_params(custom_factory(name))
    return resolve_parameters(params, parameters or {}, accepts_any)


def accepted_parameters(name: str) -> list[str]:
    """The parameter keys (camelCase, as in manifests) that model ``name`` accepts (a custom
    factory's are read from its signature, which imports it)."""
    params = ZOO[name].params if name in ZOO else factory_params(custom_factory(name))[0]
    return [camel_case(n) for n in params]


def build_model(name: str, parameters: Mapping[str, Any] | None = None, *, in_channels: int, num_classes: int,
                task: str, chip_shape: tuple[int, int]) -> nn.Module:
    """The model ``name`` (zoo name or ``package.module:factory``) for the dataset's bands
    (``in_channels``), classes, label task and chip shape; SpecError for any spec mistake."""
    data = {"in_channels": int(in_channels), "num_classes": int(num_classes), "task": task,
            "chip_shape": (int(chip_shape[0]), int(chip_shape[1]))}
    if name in ZOO:
        entry = ZOO[name]
        check_task(name, entry.tasks, task)
        return entry.factory(**data, **model_arguments(name, parameters))
    factory = custom_factory(name)
    _, takes, accepts_any = factory_params(factory)
    kwargs = model_arguments(name, parameters)
    given = data if accepts_any else {k: v for k, v in data.items() if k in takes}
    try:
        model = factory(**given, **kwargs)
    except (TypeError, ValueError) as exc:
        raise SpecError(NAME_FIELD, f"{name}(...) failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise SpecError(NAME_FIELD, f"{name} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)
