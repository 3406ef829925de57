"""Reading manifests: YAML files and folders -> validated resources, with errors that say where."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from earthops.api.resources import API_VERSION, KINDS, Resource


class ManifestError(ValueError):
    """One or more manifests are invalid. `problems` has one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in {"function-after[_unique()]", "function-after[check()]"} or str(part).startswith(("function-", "tagged-union[")):
            continue  # pydantic's wrappers of a validator, not a field
        elif part in {"int", "str", "constrained-str", "float", "bool"}:
            continue  # union branch labels
        else:
            out += ("." if out else "") + str(part)
    return out or "(document)"


def _describe(doc: dict[str, Any]) -> str:
    kind = doc.get("kind", "?")
    name = (doc.get("metadata") or {}).get("name", "?") if isinstance(doc.get("metadata"), dict) else "?"
    return f'{kind} "{name}"'


def parse_resource(doc: Any, where: str = "<input>") -> Resource[Any, Any]:
    """Validate one manifest document. Raises :class:`ManifestError` naming `where`, the resource
    and each wrong field with what is accepted."""
    if not isinstance(doc, dict):
        raise ManifestError([f"{where}: expected a mapping (a Kubernetes object), got {type(doc).__name__}"])
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if api_version != API_VERSION:
        raise ManifestError([f"{where}: {_describe(doc)}: apiVersion {api_version!r} is not served; accepted: {API_VERSION}"])
    if kind not in KINDS:
        raise ManifestError([f"{where}: kind {kind!r} is unknown; accepted: {', '.join(KINDS)}"])
    try:
        return KINDS[kind].resource.model_validate(doc)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            value = ""
            if err["type"] not in {"missing", "cel_rule", "extra_forbidden"} and not isinstance(err.get("input"), dict | list):
                value = f" (got {err.get('input')!r})"
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            else:
                msg = err["msg"].removeprefix("Value error, ")
            path = _field_path(err["loc"])
            if err["type"] == "cel_rule" and (err.get("ctx") or {}).get("field"):
                path = f"{path}.{err['ctx']['field']}" if path != "(document)" else err["ctx"]["field"]
            problems.append(f"{where}: {_describe(doc)}: {path}: {msg}{value}")
        raise ManifestError(problems) from None


def _files(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.suffix in {".yaml", ".yml"} and f.is_file()))
        elif p.is_file():
            out.append(p)
        else:
            raise ManifestError([f"{p}: no such file or folder"])
    return out


def load_manifests(paths: Iterable[str | Path]) -> list[Resource[Any, Any]]:
    """Every resource in the given files and folders (a folder: its `*.yaml`/`*.yml` files, sorted).

    All documents are checked before any error is raised, so one run reports every problem. Duplicate
    resources (same kind, namespace and name) are an error too."""
    resources: list[Resource[Any, Any]] = []
    problems: list[str] = []
    seen: dict[tuple[str, str, str], str] = {}
    for path in _files(paths):
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as exc:
            problems.append(f"{path}: not valid YAML: {exc}")
            continue
        for i, doc in enumerate(d for d in docs if d is not None):
            where = f"{path}" if len(docs) == 1 else f"{path} (document {i + 1})"
            try:
                res = parse_resource(doc, where)
            except ManifestError as exc:
                problems.extend(exc.problems)
                continue
            if res.key in seen:
                problems.append(f"{where}: {res.kind} {res.namespace}/{res.name} is also defined in {seen[res.key]}")
                continue
            seen[res.key] = where
            resources.append(res)
    if problems:
        raise ManifestError(problems)
    return resources
