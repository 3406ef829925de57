"""The base of every contract model: camelCase on the wire, docstrings as descriptions, CEL rules.

A cross-field rule is written once, as a CEL expression on the model class (`cel_rules`). The CRD
generator puts it into `x-kubernetes-validations` so the API server enforces it, and the model's own
validator evaluates the very same expression, so the embedded mode (no API server) rejects the same
manifests with the same message. Transition rules (`oldSelf`) only exist on the server. The rules may
use the functions of Kubernetes' CEL libraries that the in-process CEL lacks only where this module
provides them with Kubernetes' meaning (``_KUBERNETES_FUNCTIONS``); a rule that cannot be evaluated
fails, as on the server. A rule on a model holds for its subclasses too, on both sides.

Like the server, the models read a null field as a field left out (the server prunes nulls of fields
that are not nullable) and ``2.0`` as an integer where one is due (``ApiModel._as_the_server_reads``).
Strict types (no text where a number is due) are applied where manifests
come in: :func:`earthops.api.manifests.parse_resource`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, ClassVar, TypeVar, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ModelWrapValidatorHandler,
    StringConstraints,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema


@dataclass(frozen=True)
class Rule:
    """A CEL validation rule on a schema object (`self` is the object)."""

    rule: str
    message: str
    #: JSONPath-like path of the field to blame, relative to the object (e.g. `.max`).
    field_path: str | None = None
    #: True for transition rules (they use `oldSelf`): enforced by the API server only.
    transition: bool = False

    def to_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out


def _split(text: str, separator: str) -> list[str]:
    return text.split(separator)


#: Functions of the Kubernetes CEL libraries that the rules use and the in-process CEL lacks, with
#: Kubernetes' meaning (``'a/b'.split('/')`` of the strings extension).
_KUBERNETES_FUNCTIONS: dict[str, Any] = {"split": _split}


@functools.lru_cache(maxsize=None)
def _cel_program(rule: str) -> Any:
    import cel  # small compiled CEL implementation; imported lazily, only when a model has rules

    return cel.compile(rule)


def _cel_evaluate(rule: str, value: Any) -> bool:
    """Evaluate one rule with ``self`` bound to ``value`` (the object as on the wire). A rule that
    cannot be evaluated (an overflow, a type the rule does not expect) fails, as it does on the
    API server."""
    import cel

    context = cel.Context()
    for name, function in _KUBERNETES_FUNCTIONS.items():
        context.add_function(name, function)
    context.add_variable("self", value)
    try:
        result = _cel_program(rule).execute(context)
    except Exception:  # noqa: BLE001 - the CEL library raises RuntimeError, TypeError, OverflowError...
        return False
    if not isinstance(result, bool):
        raise TypeError(f"CEL rule {rule!r} returned {result!r}, not a bool")
    return result


class ApiModel(BaseModel):
    """Base of all contract models."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=False,
    )

    #: Cross-field rules of this object, enforced by the API server and by this model.
    cel_rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="wrap")
    @classmethod
    def _as_the_server_checks(cls, data: Any, handler: ModelWrapValidatorHandler[ApiModel]) -> ApiModel:
        """Read the object as the API server reads it, check its fields, then its CEL rules."""
        data, floats = cls._as_the_server_reads(data)
        model = handler(data)
        model._check_cel_rules(floats)
        return model

    @classmethod
    def _as_the_server_reads(cls, data: Any) -> tuple[Any, frozenset[str]]:
        """The object as the API server reads it, before the schema checks it: a field given as null
        is a field left out (the server prunes nulls of fields that are not nullable, before
        defaulting), and so is a null value in a map of strings; a whole number written as a float
        (``2.0``) is an integer where the schema wants one, as long as a float holds it exactly
        (below 2**53), and an integer beyond 64 bits is not one (the server reads it as a float).
        Also returns the integer fields that were written as floats (see :meth:`_check_cel_rules`)."""
        if not isinstance(data, dict):
            return data, frozenset()
        shapes = _field_shapes(cls)
        out, floats = {}, set()
        for key, value in data.items():
            shape = shapes.get(key)
            if value is None and shape is not None:
                continue
            if shape == "int":
                read = _server_integer(value)
                if isinstance(value, float) and isinstance(read, int):
                    floats.add(key)
                value = read
            elif shape == "str-map" and isinstance(value, dict):
                value = {k: v for k, v in value.items() if v is not None}
            out[key] = value
        return out, frozenset(floats)

    def _check_cel_rules(self, floats: frozenset[str] = frozenset()) -> None:
        """Evaluate the CEL rules on the object as on the wire. An integer field written as a float
        (``2.0``) passes the server's schema, but a rule that reads it fails there ("invalid data,
        expected int, got float64"): so here, where such a field breaks a rule that holds otherwise."""
        rules = [r for r in type(self).cel_rules if not r.transition]
        if not rules:
            return
        wire = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        fields = type(self).model_fields
        written = {(fields[f].alias or f) if f in fields else f: f for f in floats}
        poisoned = {**wire, **{k: {"floatWhereAnIntegerIsDue": wire[k]} for k in written if k in wire}}
        for r in rules:
            if _cel_evaluate(r.rule, poisoned):
                continue
            message = r.message
            if written and _cel_evaluate(r.rule, wire):
                message += (f" (the API server cannot evaluate this rule with {', '.join(sorted(written))} written as "
                            "a decimal number: write whole numbers without a decimal point)")
            # the field to blame travels in the context; manifests.py adds it to the path
            raise PydanticCustomError("cel_rule", "{message}", {"message": message,
                                                                "field": (r.field_path or "").lstrip(".")})

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        target = handler.resolve_ref_schema(json_schema)
        rules = [r.to_schema() for r in cls.cel_rules]  # inherited rules hold for a subclass too
        if rules:
            target["x-kubernetes-validations"] = rules
        return json_schema

    def wire(self) -> dict[str, Any]:
        """The object as it is on the wire (camelCase keys, unset optional fields left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _core_types(annotation: Any) -> list[Any]:
    """The types a field annotation admits (Annotated and unions unwrapped; None left out)."""
    if get_origin(annotation) is Annotated:
        return _core_types(get_args(annotation)[0])
    if get_origin(annotation) in (Union, UnionType):
        return [t for arg in get_args(annotation) for t in _core_types(arg)]
    return [] if annotation is type(None) else [annotation]


@functools.cache
def _field_shapes(model: type[BaseModel]) -> dict[str, str]:
    """Wire name (and attribute name) -> ``int`` (an integer field, or integer-or-text), ``str-map`` (a
    map of strings) or ``other``, for every field of ``model``."""
    shapes = {}
    for name, field in model.model_fields.items():
        types = _core_types(field.annotation)
        if int in types and float not in types:
            shape = "int"
        elif len(types) == 1 and get_origin(types[0]) is dict and all(
                _core_types(t) == [str] for t in get_args(types[0])):  # constrained strings too
            shape = "str-map"
        else:
            shape = "other"
        for wire in (name, field.alias):
            if wire:
                shapes[wire] = shape
    return shapes


def _server_integer(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2.0**53:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        return float(value)
    return value


T = TypeVar("T")


def unique(items: list[T]) -> list[T]:
    """Refuses a list with a value twice (a list of type `set` on the server)."""
    seen: set[Any] = set()
    for item in items:
        if item in seen:
            raise PydanticCustomError("unique", "duplicate value '{value}': values must be unique", {"value": item})
        seen.add(item)
    return items


#: A list of unique, non-empty strings (`x-kubernetes-list-type: set` on the server).
StringSet = Annotated[
    list[Annotated[str, StringConstraints(min_length=1)]],
    AfterValidator(unique),
    Field(json_schema_extra={"x-kubernetes-list-type": "set"}),
]


def keyed_list(key: str) -> Any:
    """Annotation for a list of objects keyed by `key` (`x-kubernetes-list-type: map`)."""

    def check(items: list[Any]) -> list[Any]:
        unique([getattr(i, key) for i in items])
        return items

    return Field(json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": [key]}), AfterValidator(check)
