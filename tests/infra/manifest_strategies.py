"""Hypothesis strategies: manifests of the four kinds around the valid space, for the property-based
test of the in-process validation (tests/unit/test_manifest_properties.py) and the differential test
against the real API server (tests/integration/test_kube_differential.py).

A document is drawn in one of two ways:

* **from the schema**: the kind's ``spec`` drawn with hypothesis-jsonschema from the CRD's own OpenAPI
  schema (what the API server checks; the CEL rules are not in it, so many of these break one);
* **from an example**: one of the kind's manifests in ``examples/`` (valid), with one to three
  mutations — a subtree drawn again from its schema, a value of the wrong type or out of range (text
  for a number, a float for an integer, a negative quantity, an empty name, square brackets), a field
  left out or set to null, an unknown field in ``spec`` or ``metadata`` (misspelt), and, where the kind
  has them, STAC datetimes (dates that do not exist, backward intervals, odd offsets) and bboxes.

Metadata is a name (mostly a DNS subdomain, sometimes not) with optional labels and annotations
(mostly valid keys and values). The documents are plain JSON: they can be sent to the API server as
they are. No namespace is set: the caller's namespace (or ``default``) applies.
"""

from __future__ import annotations

import copy
import functools
import random
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from earthops.api import API_VERSION, KINDS
from earthops.control.crds import crd

ROOT = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------------------------------
# The CRD schema as a JSON Schema that hypothesis-jsonschema reads


@functools.lru_cache(maxsize=None)
def spec_schema(kind: str) -> dict[str, Any]:
    """The ``spec`` schema of a kind's CRD, as the API server has it."""
    return crd(KINDS[kind])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """A structural (OpenAPI v3) schema node as JSON Schema: the same values, with Kubernetes' readings
    made explicit (no unknown fields where properties are listed, int-or-string, exclusive bounds as
    numbers) and free-form objects kept small."""
    if node.get("x-kubernetes-int-or-string"):
        integer: dict[str, Any] = {"type": "integer"}
        text: dict[str, Any] = {"type": "string"}
        for key in ("minimum", "maximum"):
            if key in node:
                integer[key] = node[key]
        if "pattern" in node:
            text["pattern"] = node["pattern"]
        return {"anyOf": [integer, text]}
    if node.get("x-kubernetes-preserve-unknown-fields") and "properties" not in node:
        return {"type": "object", "maxProperties": 2,
                "additionalProperties": {"type": ["string", "integer", "boolean"], "maxLength": 8}}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("description", "default"):
            continue
        if key == "properties":
            out["properties"] = {k: _json_schema(v) for k, v in value.items()}
        elif key == "items":
            out["items"] = _json_schema(value)
        elif key == "additionalProperties":
            out["additionalProperties"] = _json_schema(value) if isinstance(value, dict) else value
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            if value is True:
                bound = "minimum" if key == "exclusiveMinimum" else "maximum"
                out[key] = node[bound]
        elif key in ("minimum", "maximum") and node.get(f"exclusive{key[:3].capitalize()}imum") is True:
            continue
        else:
            out[key] = copy.deepcopy(value)
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if out.get("type") == "array":
        out.setdefault("maxItems", 4)
        out["maxItems"] = min(out["maxItems"], 4)
    if out.get("type") == "object" and "properties" not in out:
        out.setdefault("maxProperties", 2)
    if out.get("type") == "string" and "pattern" not in out and "enum" not in out:
        out["maxLength"] = min(out.get("maxLength", 12), 12)
    return out


def schema_at(kind: str, path: tuple[Any, ...]) -> dict[str, Any] | None:
    """The structural schema at ``path`` (keys and list indexes) under ``spec``; None where unknown."""
    node: dict[str, Any] | None = spec_schema(kind)
    for part in path:
        if node is None:
            return None
        if isinstance(part, int):
            node = node.get("items")
        elif "properties" in node:
            node = node["properties"].get(part)
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return None
    return node


_ALPHABET = "abcxyzABCXYZ019_-./:@ "
_CATEGORIES = {"CATEGORY_DIGIT": "0123456789", "CATEGORY_WORD": "abzAZ09_", "CATEGORY_SPACE": " "}


def _sample_regex(pattern: str, rng: random.Random) -> str:
    """One string that (mostly) matches ``pattern``: a walk of its parse tree with repeats kept short."""
    from re import _parser  # the standard library's own regex parser

    def chars(items: Any) -> list[str]:
        negate = any(op is _parser.NEGATE for op, _ in items)
        out: list[str] = []
        for op, arg in items:
            if op is _parser.LITERAL:
                out.append(chr(arg))
            elif op is _parser.RANGE:
                out.extend(chr(c) for c in range(arg[0], min(arg[1], arg[0] + 40) + 1))
            elif op is _parser.CATEGORY:
                out.extend(_CATEGORIES.get(str(arg), "a"))
        return [c for c in _ALPHABET if c not in out] if negate else out

    def walk(tokens: Any) -> str:
        text = ""
        for op, arg in tokens:
            if op is _parser.LITERAL:
                text += chr(arg)
            elif op is _parser.NOT_LITERAL:
                text += rng.choice([c for c in _ALPHABET if c != chr(arg)])
            elif op is _parser.IN:
                text += rng.choice(chars(arg) or ["a"])
            elif op is _parser.ANY:
                text += rng.choice(_ALPHABET)
            elif op in (_parser.MAX_REPEAT, _parser.MIN_REPEAT):
                low, high, sub = arg
                text += "".join(walk(sub) for _ in range(rng.randint(low, min(high, low + 3))))
            elif op is _parser.SUBPATTERN:
                text += walk(arg[-1])
            elif op is _parser.BRANCH:
                text += walk(rng.choice(arg[1]))
        return text

    return walk(_parser.parse(pattern))


@functools.lru_cache(maxsize=None)
def _pattern_pool(pattern: str) -> st.SearchStrategy[str]:
    """Strings for a schema pattern, drawn from a fixed pool (Hypothesis' own regex strategy is slow
    at the thousands of draws the differential test makes); one in twenty may not match."""
    rng = random.Random(pattern)
    pool = sorted({_sample_regex(pattern, rng) for _ in range(60)})
    return st.sampled_from(pool)


def _strategy(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of a schema node: objects and lists composed here (once per node), everything else drawn
    by hypothesis-jsonschema from the node's JSON Schema (patterns, bounds, enums, int-or-string)."""
    if node.get("type") == "object" and "properties" in node:
        required = set(node.get("required", ()))
        fields = {k: _strategy(v) for k, v in node["properties"].items()}
        return st.fixed_dictionaries({k: v for k, v in fields.items() if k in required},
                                     optional={k: v for k, v in fields.items() if k not in required})
    if node.get("type") == "string" and "pattern" in node and "enum" not in node:
        return _pattern_pool(node["pattern"])
    if node.get("type") == "array" and isinstance(node.get("items"), dict):
        return st.lists(_strategy(node["items"]), min_size=node.get("minItems", 0),
                        max_size=min(node.get("maxItems", 3), max(3, node.get("minItems", 0))))
    return from_schema(_json_schema(node))


@functools.lru_cache(maxsize=None)
def _drawn(kind: str, path: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    node = schema_at(kind, path)
    return _strategy(node) if node is not None else st.none()


def weighted(choices: dict[Any, int]) -> st.SearchStrategy[Any]:
    """One of ``choices`` with about these weights. Hypothesis favours the first and the last element
    of a list it samples from, so the heaviest choice stands at both ends."""
    heaviest = max(choices, key=lambda c: choices[c])
    middle = [c for c, n in choices.items() for _ in range(n if c != heaviest else max(n - 2, 0))]
    return st.sampled_from([heaviest, *middle, heaviest])


@st.composite
def mostly(draw: st.DrawFn, good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
    """``bad`` about once in ten draws, ``good`` otherwise."""
    return draw(good) if draw(_NINE_IN_TEN) else draw(bad)


_NINE_IN_TEN = weighted({True: 9, False: 1})

# --------------------------------------------------------------------------------------------------
# Values around the edges


def _calendar_date() -> st.SearchStrategy[str]:
    years = st.sampled_from([1900, 1970, 1999, 2000, 2019, 2020, 2021, 2024, 2100, 9999, 1])
    return st.builds(lambda y, m, d: f"{y:04d}-{m:02d}-{d:02d}", years, st.integers(1, 12), st.integers(1, 31))


def _instant() -> st.SearchStrategy[str]:
    time = st.builds(lambda h, m, s, f: f"{h:02d}:{m:02d}:{s:02d}{f}", st.integers(0, 24), st.integers(0, 59),
                     st.integers(0, 60), st.sampled_from(["", ".5", ".123456", ".1234567"]))
    zone = st.sampled_from(["Z", "+00:00", "+02:00", "-05:30", "+14:00", "-23:59", "", "z", "+0200"])
    date_time = st.builds(lambda d, sep, t, z: f"{d}{sep}{t}{z}", _calendar_date(), st.sampled_from(["T", "T", "t", " "]),
                          time, zone)
    return st.one_of(_calendar_date(), date_time)


def datetimes() -> st.SearchStrategy[str]:
    """STAC datetimes: instants, intervals with open ends, impossible dates, backward intervals, odd forms."""
    end = st.one_of(_instant(), st.just(".."), st.just(""))
    return st.one_of(_instant(), st.builds(lambda a, b: f"{a}/{b}", end, end),
                     st.sampled_from(["2020-01-01/2020-01-02/2020-01-03", "yesterday", "2020-1-1", "../..", "/"]))


def bboxes() -> st.SearchStrategy[list[float]]:
    lon = st.one_of(st.floats(-180, 180), st.sampled_from([-180.0, 180.0, -181.0, 200.0, 0.0]))
    lat = st.one_of(st.floats(-90, 90), st.sampled_from([-90.0, 90.0, -90.5, 91.0, 0.0]))
    height = st.floats(-1000, 9000)
    four = st.builds(lambda w, s, e, n: [w, s, e, n], lon, lat, lon, lat)
    six = st.builds(lambda w, s, z0, e, n, z1: [w, s, z0, e, n, z1], lon, lat, height, lon, lat, height)
    five = st.builds(lambda w, s, e, n: [w, s, 0.0, e, n], lon, lat, lon, lat)
    return st.one_of(four, four, six, five)


@functools.lru_cache(maxsize=None)
def _wrong_values(kind: str, path: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    return wrong_values(schema_at(kind, path))


def wrong_values(node: dict[str, Any] | None) -> st.SearchStrategy[Any]:
    """Values that a field of this schema may not take (or only just may); each a fresh copy (a later
    mutation may change it in place)."""
    return _wrong_values_of(node).map(copy.deepcopy)


def _wrong_values_of(node: dict[str, Any] | None) -> st.SearchStrategy[Any]:
    kind = (node or {}).get("type")
    if (node or {}).get("x-kubernetes-int-or-string"):
        return st.sampled_from([0, -1, -2, "-1", "0", "0.0", "-500m", "1.5", 1.5, "2Gi", "4Gi", "[x]", True, "", " 2"])
    if kind == "integer":
        lo, hi = node.get("minimum"), node.get("maximum")  # type: ignore[union-attr]
        edges = [v for b in (lo, hi) if b is not None for v in (b - 1, b, b + 1)]
        return st.sampled_from([*edges, "12", "1", 1.5, 2.0, True, False, -1, 0, 2**31, 2**53 + 1, 2**63,
                                "true", [], {}])
    if kind == "number":
        lo, hi = node.get("minimum"), node.get("maximum")  # type: ignore[union-attr]
        edges = [v for b in (lo, hi) if b is not None for v in (b - 0.5, b, b + 0.5, b - 1e-9)]
        return st.sampled_from([*edges, "0.5", "1", True, -1, 0, 1e308, -1e308, 5e-324, [], {}])
    if kind == "boolean":
        return st.sampled_from(["true", "false", "yes", 1, 0, "True", [], {}])
    if kind == "string":
        return st.sampled_from([1, 0.5, True, "", " ", "[red]x[/red]", "[bold]", "x" * 300, "Ünïcode", "a b",
                                "UPPER", "lower-case", "a.b", "-x", "x-", "a/b", "\u00e9", [], {}])
    if kind == "array":
        return st.sampled_from(["x", {}, [None], [""], [], ["a", "a"], [1], ["[x]"], [{}]])
    if kind == "object":
        return st.sampled_from(["x", [], {}, 1, {"name": ""}, {"unknownField": 1}])
    return st.sampled_from([None, "", 1, [], {}])


@functools.lru_cache(maxsize=None)
def _misspelt(key: str) -> st.SearchStrategy[str]:
    variants = {key + "s", key[:-1] if len(key) > 1 else key + "x", key.capitalize() if key[:1].islower() else
                key.lower(), key.replace("a", "e", 1), "extra"}
    variants.discard(key)
    return st.sampled_from(sorted(variants))


# --------------------------------------------------------------------------------------------------
# Metadata


# Built from pieces rather than regular expressions: Hypothesis draws these thousands of times and
# its regex strategy is slow; the pieces cover what the rules look at (case, '-', '_', '.', '/', length).
_WORDS = st.sampled_from(["iceberg", "chips", "s1", "s2", "a", "0", "x9", "land", "cover", "v2", "ship", "zz"])
_MIXED = st.sampled_from(["Team", "a", "B2", "x_y", "app.kubernetes", "z", "0", "Q-1", "k8s", "Name"])


def names() -> st.SearchStrategy[str]:
    good = st.builds(lambda words, dotted: "-".join(words) + (".io" if dotted else ""),
                     st.lists(_WORDS, min_size=1, max_size=3), st.booleans())
    bad = st.sampled_from(["Upper", "under_score", "-lead", "trail-", "", "a" * 254, "dot..dot", "[x]", "a b"])
    return mostly(good, bad)


def _label_keys() -> st.SearchStrategy[str]:
    name = st.builds(lambda parts: "-".join(parts), st.lists(_MIXED, min_size=1, max_size=2))
    prefix = st.builds(lambda words: ".".join(words), st.lists(_WORDS, min_size=1, max_size=2))
    good = st.one_of(name, st.builds(lambda p, n: f"{p}/{n}", prefix, name))
    bad = st.sampled_from(["-bad", "bad-", "Bad.Prefix/x", "/x", "a/b/c", "x" * 64, "", "sp ace", "[x]"])
    return mostly(good, bad)


def _label_values() -> st.SearchStrategy[str]:
    good = st.one_of(st.just(""), st.builds(lambda parts: "_".join(parts), st.lists(_MIXED, min_size=1, max_size=2)))
    bad = st.sampled_from(["-x", "x-", "x" * 64, "sp ace", "a/b", "[x]"])
    return mostly(good, bad)


def metadata() -> st.SearchStrategy[dict[str, Any]]:
    labels = st.dictionaries(_label_keys(), _label_values(), max_size=2)
    annotations = st.dictionaries(_label_keys(), st.text(max_size=12), max_size=2)
    return st.fixed_dictionaries({"name": names()}, optional={"labels": labels, "annotations": annotations})


# --------------------------------------------------------------------------------------------------
# Documents


@functools.lru_cache(maxsize=None)
def examples(kind: str) -> tuple[dict[str, Any], ...]:
    """The kind's example manifests (valid)."""
    docs = []
    for path in sorted((ROOT / "examples").glob("*/*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == kind:
                docs.append(doc)
    return tuple(docs)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into ``value`` (mapping keys and list indexes), the root included."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.extend(_paths(v, (*prefix, i)))
    return out


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        value = value[part]
    return value


def _set(root: dict[str, Any], path: tuple[Any, ...], new: Any) -> None:
    _get(root, path[:-1])[path[-1]] = new


_FILLERS = st.sampled_from([1, "x", True, {}]).map(copy.deepcopy)


@st.composite
def _mutated(draw: st.DrawFn, kind: str, doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` changed one to three times (each change changes something)."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(weighted({1: 6, 2: 2, 3: 1}))):
        where = draw(weighted({"spec": 6, "metadata": 1}))
        tree = doc[where]
        choices = {"redraw": 4, "wrong": 3, "delete": 1, "null": 1, "unknown": 1}
        if where == "metadata":
            del choices["redraw"]
        if kind == "EODataset":
            choices["stac"] = 2
        choice = draw(weighted(choices))
        paths = [p for p in _paths(tree) if p]
        if choice == "unknown" or not paths:
            objects = [p for p in _paths(tree) if isinstance(_get(tree, p), dict)]
            target = _get(tree, draw(st.sampled_from(objects)))
            key = draw(_misspelt(draw(st.sampled_from(sorted(target) or ["field"]))))
            target[key] = draw(_FILLERS)
        elif choice == "stac":
            source = doc["spec"].get("source")
            member = next((source[k] for k in ("stacApi", "catalog") if isinstance(source, dict)
                           and isinstance(source.get(k), dict)), None)
            if member is None:
                member = {"href": "s3://bucket/catalog.json"}
                doc["spec"]["source"] = {"catalog": member}
            if draw(st.booleans()):
                member["datetime"] = draw(datetimes())
            else:
                member["bbox"] = draw(bboxes())
        else:
            path = draw(st.sampled_from(paths))
            last = path[-1]
            if choice in ("delete", "null") and isinstance(last, str):
                if choice == "delete":
                    del _get(tree, path[:-1])[last]
                else:
                    _set(tree, path, None)
            elif choice == "redraw":
                _set(tree, path, draw(_drawn(kind, path)))
            else:
                _set(tree, path, draw(_wrong_values(kind, path if where == "spec" else ("(metadata)",))))
    return doc


def manifests(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    """Manifests of ``kind`` around the valid space (see the module docstring)."""
    spec_schema(kind), examples(kind), _drawn(kind, ())  # built once, before Hypothesis draws
    return _manifests(kind)


def manifest_batches(kind: str, size: int = 12) -> st.SearchStrategy[list[dict[str, Any]]]:
    """Lists of ``size`` manifests of ``kind``: one as :func:`manifests` draws it, and mutations of it
    (cheaper to draw than as many whole manifests: for the thousands of the differential test)."""
    spec_schema(kind), examples(kind), _drawn(kind, ())
    return _batches(kind, size)


@st.composite
def _batches(draw: st.DrawFn, kind: str, size: int) -> list[dict[str, Any]]:
    first = draw(_manifests(kind))
    out = [first]
    for _ in range(size - 1):
        if isinstance(first.get("spec"), dict) and isinstance(first.get("metadata"), dict):
            out.append(draw(_mutated(kind, first)))
    return out


@st.composite
def _manifests(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    meta = draw(metadata())
    way = draw(weighted({"schema": 2, "example": 2, "mutated": 6})) if examples(kind) else "schema"
    if way == "schema":
        spec = draw(_drawn(kind, ()))
        source = spec.get("source")
        if kind == "EODataset" and isinstance(source, dict) and source and draw(weighted({True: 3, False: 1})):
            keep = draw(st.sampled_from(sorted(source)))  # mostly one source, as the contract wants
            spec["source"] = {keep: source[keep]}
            if keep in ("stacApi", "catalog") and draw(st.booleans()):
                source[keep]["datetime"] = draw(datetimes())
        return {"apiVersion": API_VERSION, "kind": kind, "metadata": meta, "spec": spec}
    base = copy.deepcopy(draw(st.sampled_from(examples(kind))))
    if draw(st.booleans()):
        meta["name"] = base["metadata"]["name"]
    base["metadata"] = meta
    if way == "example":
        return base  # an example as it is (renamed, relabelled): the valid space itself
    return draw(_mutated(kind, base))
