"""CustomResourceDefinitions generated from the contract models, and nothing else.

pydantic writes JSON Schema (2020-12, with ``$ref`` and ``anyOf`` for optionals); Kubernetes wants a
*structural* OpenAPI v3 schema: everything inlined, a type on every node, nullability by omission,
``exclusiveMinimum`` as a flag, free-form objects marked ``x-kubernetes-preserve-unknown-fields``.
:func:`structural` does that conversion; :func:`crd` wraps a kind's spec and status into a CRD.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from earthops.api.resources import CATEGORY, GROUP, KINDS, VERSION, KindInfo

_DROP = {"title", "$defs", "discriminator", "examples"}


def _defaults_of_factories(model: Any) -> dict[str, Any]:
    """JSON defaults of fields whose default is a factory (pydantic leaves them out of the schema).

    Giving them to the API server makes it fill in the same defaults as the models do, so a CEL rule
    sees the same object on the server as in embedded mode."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if field.default_factory is not None:
            value = field.default_factory()
            dumped = value.model_dump(mode="json", by_alias=True, exclude_none=True) if hasattr(value, "model_dump") else value
            if isinstance(dumped, list):
                dumped = [v.model_dump(mode="json", by_alias=True, exclude_none=True) if hasattr(v, "model_dump") else v for v in dumped]
            out[field.alias or name] = dumped
    return out


def _model_defaults(root: type[Any]) -> dict[str, dict[str, Any]]:
    """Factory defaults of every model reachable from ``root``, by the model's schema name."""
    seen: dict[str, dict[str, Any]] = {}

    def visit(model: Any) -> None:
        if model.__name__ in seen:
            return
        seen[model.__name__] = _defaults_of_factories(model)
        for field in model.model_fields.values():
            for arg in _walk_types(field.annotation):
                if isinstance(arg, type) and hasattr(arg, "model_fields"):
                    visit(arg)

    visit(root)
    return seen


def _walk_types(tp: Any) -> list[Any]:
    args = getattr(tp, "__args__", None) or ()
    meta = getattr(tp, "__origin__", None)
    out = [tp]
    for a in args:
        out.extend(_walk_types(a))
    if meta is not None:
        out.extend(_walk_types(meta))
    return out


_FIRST = ("description", "type")


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    """description and type first, for people reading the YAML."""
    return {**{k: node[k] for k in _FIRST if k in node}, **{k: v for k, v in node.items() if k not in _FIRST}}


def structural(schema: dict[str, Any], *, keep_defaults: bool = True, root_model: Any = None) -> dict[str, Any]:
    """Turn a pydantic JSON Schema into a Kubernetes structural schema."""
    defs = schema.get("$defs", {})
    factory_defaults = _model_defaults(root_model) if root_model is not None and keep_defaults else {}

    def conv(node: dict[str, Any], def_name: str | None = None) -> dict[str, Any]:
        node = dict(node)
        if "$ref" in node:
            name = node.pop("$ref").rsplit("/", 1)[-1]
            target = conv(defs[name], name)
            # the field's own description and default win over the referenced model's
            return {**target, **{k: v for k, v in conv(node).items() if k != "type" or "type" not in target}}
        if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
            branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
            if len(branches) == 1:
                merged = conv(branches[0])
                rest = conv(node)
                return {**merged, **{k: v for k, v in rest.items() if k != "type"}}
            # a union of scalar types (e.g. bool | int | float | str): any JSON value, checked by CEL
            node = {k: v for k, v in node.items()}
            node["x-kubernetes-preserve-unknown-fields"] = True
            return _ordered({k: v for k, v in node.items() if k not in _DROP and (k != "default" or keep_defaults)})
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _DROP:
                continue
            if key == "default" and not keep_defaults:
                continue
            if key == "const":
                out["enum"] = [value]
            elif key == "exclusiveMinimum":
                out["minimum"], out["exclusiveMinimum"] = value, True
            elif key == "exclusiveMaximum":
                out["maximum"], out["exclusiveMaximum"] = value, True
            elif key == "properties":
                out["properties"] = {k: conv(v) for k, v in value.items()}
            elif key == "items":
                out["items"] = conv(value)
            elif key == "additionalProperties":
                if value is True or value == {}:
                    out["x-kubernetes-preserve-unknown-fields"] = True
                elif isinstance(value, dict):
                    out["additionalProperties"] = conv(value)
                # additionalProperties: false is the structural default once properties are given
            else:
                out[key] = copy.deepcopy(value)
        if def_name and def_name in factory_defaults:
            props = out.get("properties", {})
            for field_name, default in factory_defaults[def_name].items():
                if field_name in props and "default" not in props[field_name]:
                    props[field_name]["default"] = default
        if "properties" in out or out.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("type", "object")
        if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
            out["x-kubernetes-preserve-unknown-fields"] = True
        if "default" in out and out["default"] is None:
            del out["default"]  # "no value" is expressed by leaving the field out
        return _ordered(out)

    return conv(schema, schema.get("title"))


def crd(info: KindInfo) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    spec_schema = structural(info.spec.model_json_schema(by_alias=True, mode="validation"), root_model=info.spec)
    status_schema = structural(info.status.model_json_schema(by_alias=True, mode="validation"), keep_defaults=False)
    status_schema.setdefault("properties", {})["kopf"] = {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "description": "Bookkeeping of the kopf framework that runs the operator.",
    }
    schema = {
        "description": f"{info.kind}: {(info.spec.__doc__ or '').strip()}",
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of this object: earthops.dev/v1alpha1."},
            "kind": {"type": "string", "description": f"Kind of this object: {info.kind}."},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{info.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "earthops"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": list(info.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [c.to_crd() for c in info.printer_columns],
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_Dumper.add_representer(str, _str_presenter)

HEADER = "# Generated by `earthops crds` from earthops.api. Do not edit: change the models and run `make crds`.\n"


def render(info: KindInfo) -> str:
    return HEADER + yaml.dump(crd(info), Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


def file_name(info: KindInfo) -> str:
    return f"{GROUP}_{info.plural}.yaml"


def write(folder: Path) -> list[Path]:
    """Write every CRD into ``folder`` and remove stale earthops CRD files there."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for info in KINDS.values():
        path = folder / file_name(info)
        path.write_text(render(info))
        written.append(path)
    for stale in folder.glob(f"{GROUP}_*.yaml"):
        if stale not in written:
            stale.unlink()
    return written
