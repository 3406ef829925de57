"""The search space: ``spec.searchSpace`` -> a Ray Tune param space, and a trial's config -> what to train.

Pure (no Ray import until :func:`param_space` is called): the translation rules are unit-tested on
their own.

A trial config is flat and keyed by the search-space names, exactly as written in the manifest
(``{"training.learningRate": 0.001, "model.kernelSize": 3}``); :func:`apply_config` turns it into the
model parameters and the :class:`~earthops.api.tuning.Training` of that trial.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from earthops.api.tuning import SearchParameter, Training, TuningExperimentSpec
from earthops_runtime.errors import SpecError

#: Grid points above which a grid is refused (it could never be run).
MAX_GRID_POINTS = 100_000


def _field(i: int) -> str:
    return f"spec.searchSpace[{i}]"


def number(value: float) -> int | float:
    """Integral floats as ``int`` (``3.0`` -> ``3``): discrete values and int steps reach factories as ints."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def grid_values(p: SearchParameter, i: int = 0) -> list[Any]:
    """The values a grid search takes for ``p``: discrete values, categorical choices, or
    ``min, min+step, ..., <= max`` for int/double with a step. Others: :class:`SpecError`."""
    if p.type == "discrete":
        return [number(v) for v in p.values or []]
    if p.type == "categorical":
        return list(p.choices or [])
    if p.step is None:
        raise SpecError(_field(i), f"{p.name}: grid search needs a step for {p.type} parameters (or use a discrete "
                        "parameter with values)")
    lo, hi, step = float(p.min), float(p.max), float(p.step)  # type: ignore[arg-type]
    count = int(math.floor((hi - lo) / step + 1e-9)) + 1
    if count > MAX_GRID_POINTS:
        raise SpecError(_field(i), f"{p.name}: {count} grid points (min {lo:g}, max {hi:g}, step {step:g}); "
                        f"at most {MAX_GRID_POINTS}")
    values = [lo + k * step for k in range(count)]
    if p.type == "int":
        return sorted({int(round(v)) for v in values})
    return [round(v, 12) for v in values]


def grid_points(space: Sequence[SearchParameter]) -> list[dict[str, Any]]:
    """Every grid point (first parameter varies slowest), as flat trial configs."""
    axes = [grid_values(p, i) for i, p in enumerate(space)]
    total = math.prod(len(a) for a in axes)
    if total > MAX_GRID_POINTS:
        raise SpecError("spec.searchSpace", f"the grid has {total} points; at most {MAX_GRID_POINTS} (use maxTrials "
                        "with random or tpe for large spaces)")
    names = [p.name for p in space]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes)]


def domain(p: SearchParameter, i: int = 0) -> Any:
    """The Ray Tune sampling domain of one parameter."""
    from ray import tune

    if p.type == "discrete":
        return tune.choice([number(v) for v in p.values or []])
    if p.type == "categorical":
        return tune.choice(list(p.choices or []))
    lo, hi = float(p.min), float(p.max)  # type: ignore[arg-type]
    log = p.scale == "log"
    if p.type == "double":
        if p.step is not None:
            return tune.qloguniform(lo, hi, p.step) if log else tune.quniform(lo, hi, p.step)
        if lo == hi:
            return tune.choice([lo])
        return tune.loguniform(lo, hi) if log else tune.uniform(lo, hi)
    # int: bounds rounded inwards, max included
    ilo, ihi = int(math.ceil(lo)), int(math.floor(hi))
    if ilo > ihi:
        raise SpecError(_field(i), f"{p.name}: no integer between min {lo:g} and max {hi:g}")
    if p.step is not None:
        q = int(round(p.step))
        if q < 1 or abs(q - p.step) > 1e-9:
            raise SpecError(_field(i), f"{p.name}: an int parameter needs an integer step >= 1, got {p.step:g}")
        if q > 1:
            # Ray's q*randint include the upper bound; values are multiples of q
            return tune.qlograndint(ilo, ihi, q) if log else tune.qrandint(ilo, ihi, q)
    if ilo == ihi:
        return tune.choice([ilo])
    # Ray's randint/lograndint exclude the upper bound
    return tune.lograndint(ilo, ihi + 1) if log else tune.randint(ilo, ihi + 1)


def param_space(spec: TuningExperimentSpec) -> dict[str, Any]:
    """The Ray Tune param space: sampling domains, or ``grid_search`` lists for the grid algorithm."""
    if spec.algorithm.name == "grid":
        from ray import tune

        return {p.name: tune.grid_search(grid_values(p, i)) for i, p in enumerate(spec.search_space)}
    return {p.name: domain(p, i) for i, p in enumerate(spec.search_space)}


def mutations(spec: TuningExperimentSpec) -> dict[str, Any]:
    """PBT's ``hyperparam_mutations``: the ``training.*`` parameters only. Model parameters change the
    architecture (a kernel size), so an exploited checkpoint could not be loaded with another value: a
    trial keeps the model parameters of the trial it copies."""
    return {p.name: domain(p, i) for i, p in enumerate(spec.search_space) if p.name.startswith("training.")}


def _training_fields() -> dict[str, str]:
    """camelCase name -> attribute name of every Training field."""
    return {(f.alias or name): name for name, f in Training.model_fields.items()}


def apply_config(spec: TuningExperimentSpec, config: Mapping[str, Any]) -> tuple[dict[str, Any], Training]:
    """``(model parameters, training)`` of a trial: ``training.<field>`` values override ``spec.training``,
    ``model.<param>`` values ``spec.model.parameters``. Unknown training fields and values Training refuses
    raise :class:`SpecError` naming the search-space entry."""
    index = {p.name: i for i, p in enumerate(spec.search_space)}
    params = dict(spec.model.parameters)
    training_wire = spec.training.model_dump(mode="json", by_alias=True)
    fields = _training_fields()
    for name, value in config.items():
        where = _field(index[name]) if name in index else f"trial config {name!r}"
        area, _, key = name.partition(".")
        if area == "model":
            params[key] = value
        elif area == "training":
            if key not in fields:
                raise SpecError(where, f"{name}: Training has no field {key!r}; fields: {sorted(fields)}")
            training_wire[key] = value
        else:
            raise SpecError(where, f"{name}: expected training.<field> or model.<parameter>")
    try:
        training = Training.model_validate(training_wire)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"])
            problems.append(f"training.{loc}={err.get('input')!r}: {err['msg']}")
        names = [f"training.{'.'.join(str(x) for x in e['loc'])}" for e in exc.errors()]
        where = next((_field(index[n]) for n in names if n in index), "spec.training")
        raise SpecError(where, "; ".join(problems)) from None
    return params, training


def as_text(value: Any) -> str:
    """A parameter value for people and for status fields (``0.00123``, ``3``, ``adam``)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def validate_space(spec: TuningExperimentSpec) -> None:
    """Check the whole space before any trial starts: grid needs steps or values, training fields
    exist, every value in range keeps Training valid (checked at the bounds)."""
    if spec.algorithm.name == "grid":
        grid_points(spec.search_space)
    else:
        for i, p in enumerate(spec.search_space):
            domain(p, i)
    fields = _training_fields()
    for i, p in enumerate(spec.search_space):
        area, _, key = p.name.partition(".")
        if area == "training" and key not in fields:
            raise SpecError(_field(i), f"{p.name}: Training has no field {key!r}; fields: {sorted(fields)}")
        if area != "training":
            continue
        for value in _corners(p):
            apply_config(spec, {p.name: value})


def validate_model_space(spec: TuningExperimentSpec, check: Callable[[dict[str, Any]], Any]) -> None:
    """Check the model's parameters before any trial starts: ``check`` (the zoo's argument check) gets
    ``spec.model.parameters`` alone, then with each ``model.*`` search parameter at its corners, so an
    unknown parameter or a value the model refuses names the search-space entry, not a failed trial."""
    base = dict(spec.model.parameters)
    check(base)
    for i, p in enumerate(spec.search_space):
        area, _, key = p.name.partition(".")
        if area != "model":
            continue
        values = _corners(p)
        if p.type == "double" and p.step is None:  # draws are not integral: try one (an int argument refuses it)
            values.append(p.min + 0.37 * (p.max - p.min))  # type: ignore[operator]
        for value in values:
            try:
                check({**base, key: value})
            except SpecError as exc:
                raise SpecError(_field(i), f"{p.name} = {as_text(value)}: {exc.detail}") from None


def _corners(p: SearchParameter) -> list[Any]:
    if p.type == "discrete":
        return [number(v) for v in p.values or []]
    if p.type == "categorical":
        return list(p.choices or [])
    if p.type == "int":
        return [int(math.ceil(p.min)), int(math.floor(p.max))]  # type: ignore[arg-type]
    return [p.min, p.max]
