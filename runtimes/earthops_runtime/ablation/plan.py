"""The study's components and trials, checked against the dataset and the model before any trial.

:func:`components` turns ``spec.components`` into the list of components the policy asks for (one
trial per component and seed); :func:`check_features` and :func:`resolve_layers` refuse what cannot
work — a feature the dataset does not have, a study that would leave no input feature, a layer or
prefix the model does not have, a removal that breaks shapes — each as a :class:`SpecError` naming the
component's field and listing what exists.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from earthops.api.ablation import AblationStudySpec
from earthops_runtime.errors import SpecError

#: The component every other one is compared with (all features, all layers, the base model).
BASE = "base"


@dataclass(frozen=True)
class Component:
    """One thing left out (or swapped, for a model variant): what its trials train without."""

    name: str
    kind: str  # base, feature, featureGroup, layer, layerGroup, modelVariant
    field: str  # where the spec names it
    features: tuple[str, ...] = ()  # features left out
    layers: tuple[str, ...] = ()  # layers removed (resolved from a list or a prefix)
    prefix: str | None = None
    model: dict[str, Any] | None = None  # a variant's model: {"name": ..., "parameters": {...}}
    members: tuple[str, ...] = field(default=())  # what the report lists for it

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "field": self.field, "features": list(self.features),
                "layers": list(self.layers), "prefix": self.prefix, "model": self.model}


def components(spec: AblationStudySpec) -> list[Component]:
    """The base and the components the policy gives, in the spec's order; SpecError for two with one name."""
    c = spec.components
    out = [Component(BASE, "base", "spec.model")]
    loco = spec.policy == "leave-one-component-out"
    if loco:
        out += [Component(f, "feature", f"spec.components.features[{i}]", features=(f,), members=(f,))
                for i, f in enumerate(c.features)]
    out += [Component(g.name, "featureGroup", f"spec.components.featureGroups[{i}]", features=tuple(g.features),
                      members=tuple(g.features)) for i, g in enumerate(c.feature_groups)]
    if loco:
        out += [Component(n, "layer", f"spec.components.layers[{i}]", layers=(n,), members=(n,))
                for i, n in enumerate(c.layers)]
    out += [Component(g.name, "layerGroup", f"spec.components.layerGroups[{i}]", layers=tuple(g.layers or ()),
                      prefix=g.prefix) for i, g in enumerate(c.layer_groups)]
    out += [Component(v.name, "modelVariant", f"spec.components.modelVariants[{i}]",
                      model={"name": v.model.name, "parameters": dict(v.model.parameters)}, members=(v.model.name,))
            for i, v in enumerate(c.model_variants)]
    seen: dict[str, str] = {}
    for comp in out:
        if comp.name in seen:
            raise SpecError(comp.field, f"component name {comp.name!r} is also the name of {seen[comp.name]}; "
                                        "every component needs its own name (rename the group or variant)"
                            + (" ('base' is the study's reference)" if comp.name == BASE else ""))
        seen[comp.name] = comp.field if comp.name != BASE else "the base trials"
    return out


def check_features(comps: Sequence[Component], available: Sequence[str]) -> None:
    """SpecError for a feature the dataset does not have, or a component that leaves none."""
    listed = ", ".join(available)
    for comp in comps:
        unknown = [f for f in comp.features if f not in available]
        if unknown:
            raise SpecError(comp.field, f"{'features' if len(unknown) > 1 else 'feature'} {', '.join(unknown)} "
                                        f"not in the dataset; its features: {listed}")
        if comp.features and not [f for f in available if f not in comp.features]:
            raise SpecError(comp.field, f"leaving out {', '.join(comp.features)} leaves no input feature "
                                        f"(the dataset has {listed}); leave at least one in")


def kept_features(comp: Component, available: Sequence[str]) -> list[str]:
    """The features a component's trials train on, in the dataset's order."""
    return [f for f in available if f not in comp.features]


def resolve_layers(comps: Sequence[Component], model: Any, *, example: Any, check: Any, model_name: str
                   ) -> list[Component]:
    """The components with their layers resolved (a prefix -> names) and their removal tried on a copy
    of the base model (``model``, built on the CPU) with the dummy batch ``example``; ``check(model,
    field)`` then verifies the output. SpecError names the component's field."""
    from earthops_runtime.ablation import surgery

    out = []
    for comp in comps:
        if comp.kind not in ("layer", "layerGroup"):
            out.append(comp)
            continue
        names = surgery.resolve(model, layers=list(comp.layers) if comp.layers else None, prefix=comp.prefix,
                                field=comp.field + (".prefix" if comp.prefix else ".layers" if comp.kind == "layerGroup"
                                                    else ""), model_name=model_name)
        trial_model = surgery.remove(copy.deepcopy(model), names, example=example, field=comp.field,
                                     model_name=model_name)
        check(trial_model, comp.field)
        out.append(replace(comp, layers=tuple(names), members=tuple(names)))
    return out


def trial_ids(comps: Sequence[Component], seeds: Sequence[int]) -> list[str]:
    """``<component>@<seed>`` for every component (the base first) and seed, seed-major so the first
    trials to start pair up."""
    return [f"{c.name}@{s}" for s in seeds for c in comps]


def split_trial(trial: str) -> tuple[str, int]:
    name, _, seed = trial.rpartition("@")
    return name, int(seed)


__all__ = ["BASE", "Component", "check_features", "components", "kept_features", "resolve_layers", "split_trial",
           "trial_ids"]
