"""The base of every contract model: camelCase on the wire, docstrings as descriptions, CEL rules.

A cross-field rule is written once, as a CEL expression on the model class (`cel_rules`). The CRD
generator puts it into `x-kubernetes-validations` so the API server enforces it, and the model's own
validator evaluates the very same expression, so the embedded mode (no API server) rejects the same
manifests with the same message. Transition rules (`oldSelf`) only exist on the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
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


def _cel_evaluate(rule: str, value: Any) -> bool:
    import cel  # small compiled CEL implementation; imported lazily, only when a model has rules

    result = cel.evaluate(rule, {"self": value})
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

    @model_validator(mode="after")
    def _check_cel_rules(self) -> ApiModel:
        rules = [r for r in type(self).cel_rules if not r.transition]
        if rules:
            wire = self.model_dump(mode="json", by_alias=True, exclude_none=True)
            for r in rules:
                if not _cel_evaluate(r.rule, wire):
                    # the field to blame travels in the context; manifests.py adds it to the path
                    raise PydanticCustomError(
                        "cel_rule", "{message}", {"message": r.message, "field": (r.field_path or "").lstrip(".")}
                    )
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        target = handler.resolve_ref_schema(json_schema)
        rules = [r.to_schema() for r in cls.__dict__.get("cel_rules", ())]
        if rules:
            target["x-kubernetes-validations"] = rules
        return json_schema

    def wire(self) -> dict[str, Any]:
        """The object as it is on the wire (camelCase keys, unset optional fields left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


T = TypeVar("T")


def _unique(items: list[T]) -> list[T]:
    seen: set[Any] = set()
    for item in items:
        if item in seen:
            raise PydanticCustomError("unique", "duplicate value '{value}': values must be unique", {"value": item})
        seen.add(item)
    return items


#: A list of unique strings (`x-kubernetes-list-type: set` on the server).
StringSet = Annotated[
    list[str],
    AfterValidator(_unique),
    Field(json_schema_extra={"x-kubernetes-list-type": "set"}),
]


def keyed_list(key: str) -> Any:
    """Annotation for a list of objects keyed by `key` (`x-kubernetes-list-type: map`)."""

    def check(items: list[Any]) -> list[Any]:
        _unique([getattr(i, key) for i in items])
        return items

    return Field(json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": [key]}), AfterValidator(check)
