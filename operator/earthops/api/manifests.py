"""Reading manifests: YAML files and folders -> validated resources, with errors that say where.

This is the one validation path of a manifest, whoever runs it (``earthops run``, ``--dry-run``, the
embedded executor's stored state, the operator's objects), and it refuses what the API server refuses
for ``kubectl create --validate=strict``:

* the file must be UTF-8 text and YAML without a key twice in one mapping (the API server refuses
  both when it reads the file; kubectl's client-side conversion to JSON would keep the last key
  silently); plain scalars are read as the server's YAML reader reads them (timestamps and ``12:30``
  stay text; ``1e3`` and ``0o17`` are numbers, ``y`` and ``n`` booleans), and keys that YAML reads as numbers or
  booleans are their text, as in the JSON the server makes of them;
* a value that JSON cannot carry (NaN, infinity, binary) is refused, as the server refuses it;
* types are strict: no string where the schema says integer or boolean, as on the server (pydantic's
  strict JSON mode); a null field counts as left out, as the server prunes it;
* unknown fields are refused in ``metadata`` (typed as ObjectMeta is) and everywhere in ``spec``;
* then the contract's checks, the CEL rules included.

Every problem is one line naming the file (and the document, in a file with several), the resource,
the field path, the value and what is accepted.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from earthops.api.resources import API_VERSION, KINDS, Resource


class ManifestError(ValueError):
    """One or more manifests are invalid. `problems` has one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# --------------------------------------------------------------------------------------------------
# YAML as kubectl reads it


class _Loader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping (naming both lines) and keeps
    timestamps as text."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *anchor` merges may be overridden by the mapping's own keys
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get((type(key), key))
                except TypeError:
                    continue  # an unhashable key: the base constructor reports it
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} in a mapping (first given at line {first}): each key "
                        "may appear once (the API server refuses duplicates)", key_node.start_mark)
                seen[(type(key), key)] = line
        return super().construct_mapping(node, deep=deep)


# Plain scalars are read as the API server's YAML reader (go-yaml v2, by way of sigs.k8s.io/yaml)
# reads them, not as YAML 1.1 would: no timestamps and no base-60 numbers (12:30 stays text), but
# 1e3, -.5 and 09 are floats, 0o17 an integer, y and n booleans.
_YAML11 = {"tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:value"}
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _YAML11]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_GO_YAML = "tag:earthops.dev,2026:go-yaml"
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))
_Loader.add_implicit_resolver(f"{_GO_YAML}:float", re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
                              list("-+.0123456789"))
_Loader.add_implicit_resolver(f"{_GO_YAML}:int", re.compile(r"^[-+]?0o[0-7]+$"), list("-+0"))
_Loader.add_implicit_resolver(f"{_GO_YAML}:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN"))
_Loader.add_constructor(f"{_GO_YAML}:float", lambda loader, node: float(loader.construct_scalar(node)))
_Loader.add_constructor(f"{_GO_YAML}:int", lambda loader, node: int(loader.construct_scalar(node), 0))
_Loader.add_constructor(f"{_GO_YAML}:bool", lambda loader, node: loader.construct_scalar(node) in ("y", "Y"))


def _decode(path: Path, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        raise ManifestError([f"{path}:{line}:{column}: not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line}, "
                             f"column {column}; manifests must be UTF-8 (as the API server reads them)"]) from None
    return text.removeprefix("\ufeff")


def _yaml_problem(path: Path, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else f"{path}"
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    return f"{where}: not valid YAML: {f'{context}: ' if context else ''}{problem}"


def read_documents(path: Path) -> list[tuple[str, Any]]:
    """The YAML documents of one file, each with where it is (``file`` or ``file (document N)``);
    empty documents are left out. Raises :class:`ManifestError` naming the file and line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError([f"{path}: cannot read the file: {exc.strerror or exc}"]) from None
    text = _decode(path, data)
    try:
        docs = list(yaml.load_all(text, Loader=_Loader))  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise ManifestError([_yaml_problem(path, exc)]) from None
    except RecursionError:
        raise ManifestError([f"{path}: not valid YAML: nested too deeply"]) from None
    return [(f"{path}" if len(docs) == 1 else f"{path} (document {i})", doc)
            for i, doc in enumerate(docs, 1) if doc is not None]


# --------------------------------------------------------------------------------------------------
# JSON: what kubectl can send


def _path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out or "(document)"


def _key_text(key: Any) -> Any:
    """A mapping key as the JSON object key kubectl writes for it."""
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        return "null"
    if isinstance(key, int):
        return str(key)
    if isinstance(key, float) and math.isfinite(key):
        return repr(key)
    return key


#: Values (YAML aliases expanded) a document may hold: a few aliases can stand for billions of them.
MAX_VALUES = 1_000_000


class _TooLarge(Exception):
    pass


def _as_json(value: Any, parts: tuple[Any, ...], problems: list[str], budget: list[int] | None = None) -> Any:
    """``value`` with JSON object keys; what JSON cannot carry is added to ``problems``. Raises
    :class:`_TooLarge` past :data:`MAX_VALUES` values or when nested beyond recursion."""
    budget = budget if budget is not None else [MAX_VALUES]
    budget[0] -= 1
    if budget[0] < 0 or len(parts) > 200:
        raise _TooLarge
    if isinstance(value, Mapping):  # a dict, or a read-only view of one (kopf's bodies)
        out = {}
        for key, item in value.items():
            text = _key_text(key)
            if not isinstance(text, str):
                problems.append(f"{_path(parts)}: key {key!r} is not text (a JSON object key must be)")
                continue
            out[text] = _as_json(item, (*parts, text), problems, budget)
        return out
    if isinstance(value, (list, tuple)):
        return [_as_json(item, (*parts, i), problems, budget) for i, item in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        problems.append(f"{_path(parts)}: {value!r} is not a number JSON can carry (the API server refuses NaN "
                        "and infinity); accepted: a finite number")
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    problems.append(f"{_path(parts)}: a YAML {type(value).__name__} value is not a JSON value; accepted: text, "
                    "numbers, booleans, lists and mappings")
    return None


# --------------------------------------------------------------------------------------------------
# Validation errors as lines


def _describe(doc: dict[str, Any]) -> str:
    kind = doc.get("kind")
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    kind_text = kind if isinstance(kind, str) and kind else "resource"
    name_text = name if isinstance(name, str) and name else "?"
    return f'{kind_text} "{name_text}"'


_BRANCH_LABELS = {"int", "str", "constrained-str", "constrained-int", "float", "bool", "list[str]", "dict[str,str]",
                  "none"}


def _field_parts(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(part for part in loc
                 if isinstance(part, int) or not (str(part).startswith(("function-", "tagged-union[", "json-or-python["))
                                                  or part in _BRANCH_LABELS))


def _value_at(data: Any, parts: Iterable[str]) -> Any:
    for part in parts:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _model_at(model: Any, parts: tuple[Any, ...]) -> Any:
    """The pydantic model at a field path (following camelCase names, list items and optionals)."""
    for part in parts:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = next((f for name, f in model.model_fields.items() if part in (name, f.alias)), None)
        if field is None:
            return None
        model = _inner_model(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    meta = getattr(annotation, "__origin__", None)
    return _inner_model(meta) if meta is not None and meta is not annotation else None


def _accepted_fields(resource: type[Resource[Any, Any]], parts: tuple[Any, ...], unknown: str) -> str:
    model = _model_at(resource, parts[:-1])
    if model is None:
        return ""
    names = sorted(f.alias or name for name, f in model.model_fields.items())
    close = difflib.get_close_matches(unknown, names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{hint}; accepted fields here: {', '.join(names)}"


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _problems(resource: type[Resource[Any, Any]], doc: dict[str, Any], exc: ValidationError) -> list[str]:
    by_path: dict[str, list[str]] = {}
    for err in exc.errors(include_url=False):
        parts = _field_parts(err["loc"])
        kind = err["type"]
        ctx = err.get("ctx") or {}
        value = err.get("input")
        tail = ""
        if kind == "extra_forbidden":
            msg = "unknown field"
            tail = _accepted_fields(resource, parts, str(parts[-1]) if parts else "")
            value = value if not isinstance(value, (dict, list)) else None
        elif kind == "cel_rule":
            msg = err["msg"]
            if ctx.get("field"):
                field = [p for p in str(ctx["field"]).split(".") if p]
                value = _value_at(value, field)
                parts = (*parts, *field)
            else:
                value = None
        else:
            msg = err["msg"].removeprefix("Value error, ")
        if kind in ("missing", "stac_query", "quantity"):
            value = None  # nothing to show, or the message shows it
        got = f" (got {_show(value)})" if value is not None and not isinstance(value, dict) else ""
        if kind in _STRICT_TYPES and _looks_like(err.get("input"), kind):
            tail += "; text is not converted (as on the API server): write the value without quotes"
        by_path.setdefault(_path(parts), []).append((kind, f"{msg}{got}{tail}"))
    out = []
    for path, found in by_path.items():
        # a union (int or text): the branches whose type the value does not have say nothing useful
        relevant = [m for k, m in found if not k.endswith("_type")] or [m for _, m in found]
        unique = list(dict.fromkeys(relevant))
        out.append(f"{path}: {' or '.join(unique)}")
    return out


_STRICT_TYPES = {"int_type", "float_type", "bool_type"}


def _looks_like(value: Any, kind: str) -> bool:
    """Whether ``value`` is text that reads as the number or boolean the field wants (quoted by mistake)."""
    if not isinstance(value, str):
        return False
    if kind == "bool_type":
        return value.strip().lower() in ("true", "false")
    try:
        return math.isfinite(int(value) if kind == "int_type" else float(value))
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------------
# Documents -> resources


def parse_resource(doc: Any, where: str = "<input>") -> Resource[Any, Any]:
    """Validate one manifest document. Raises :class:`ManifestError` naming `where`, the resource
    and each wrong field with its value and what is accepted."""
    if not isinstance(doc, Mapping):
        raise ManifestError([f"{where}: expected a mapping (a Kubernetes object), got {type(doc).__name__}"])
    json_problems: list[str] = []
    try:
        doc = _as_json(doc, (), json_problems)
    except _TooLarge:
        raise ManifestError([f"{where}: the document is nested deeper than 200 levels or holds more than "
                             f"{MAX_VALUES} values (YAML aliases expanded)"]) from None
    who = f"{where}: {_describe(doc)}"
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if not isinstance(kind, str):
        got = "nothing" if kind is None else f"{_show(kind)} ({type(kind).__name__})"
        raise ManifestError([f"{who}: kind: expected a kind name (text), got {got}; accepted: {', '.join(KINDS)}"])
    if api_version != API_VERSION:
        got = "nothing" if api_version is None else _show(api_version)
        raise ManifestError([f"{who}: apiVersion: {got} is not served; accepted: {API_VERSION}"])
    if kind not in KINDS:
        raise ManifestError([f"{who}: kind: {kind!r} is unknown; accepted: {', '.join(KINDS)}"])
    if json_problems:
        raise ManifestError([f"{who}: {p}" for p in json_problems])
    resource = KINDS[kind].resource
    try:
        return resource.model_validate_json(json.dumps(doc), strict=True)
    except ValidationError as exc:
        raise ManifestError([f"{who}: {p}" for p in _problems(resource, doc, exc)]) from None
    except RecursionError:
        raise ManifestError([f"{who}: the document is nested too deeply"]) from None


def _files(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.suffix in {".yaml", ".yml"} and f.is_file()))
        elif p.is_file():
            out.append(p)
        else:
            raise ManifestError([f"{p}: no such file or folder"])
    unique: dict[Path, Path] = {}
    for f in out:  # a file named twice (or named and in a folder named) is read once
        unique.setdefault(f.resolve(), f)
    return list(unique.values())


def load_manifests(paths: Iterable[str | Path]) -> list[Resource[Any, Any]]:
    """Every resource in the given files and folders (a folder: its `*.yaml`/`*.yml` files, sorted).

    All documents are checked before any error is raised, so one run reports every problem. Duplicate
    resources (same kind, namespace and name) are an error too. Each resource remembers where it was
    written (:attr:`Resource.source`)."""
    resources: list[Resource[Any, Any]] = []
    problems: list[str] = []
    seen: dict[tuple[str, str, str], str] = {}
    for path in _files(paths):
        try:
            documents = read_documents(path)
        except ManifestError as exc:
            problems.extend(exc.problems)
            continue
        for where, doc in documents:
            try:
                res = parse_resource(doc, where)
            except ManifestError as exc:
                problems.extend(exc.problems)
                continue
            if res.key in seen:
                problems.append(f"{where}: {res.kind} {res.namespace}/{res.name} is also defined in {seen[res.key]}")
                continue
            seen[res.key] = where
            res._source = where
            resources.append(res)
    if problems:
        raise ManifestError(problems)
    return resources
