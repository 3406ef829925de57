"""The one STAC query semantics of earthops: what a search means, whoever runs it.

``earthops search`` (:mod:`earthops_runtime.catalog.search`: DuckDB over the store's GeoParquet
indexes) and ingestion (:mod:`earthops_runtime.data.sources`: a static catalog filtered in process,
or the request sent to a STAC API) parse their arguments here and decide here whether an item
matches and in which order items come, so one query gives the same items on every path. The rules
are those of the STAC API specification and of pgstac, the backend large STAC APIs run on. bbox and
datetime are parsed by the contract's :mod:`earthops.api.stac` (:func:`parse_bbox`,
:func:`parse_interval`, :class:`SearchError`): the EODataset contract checks a spec's search with the
same functions, so there is one implementation of them.

* **bbox**: ``[west, south, east, north]``, or 6 numbers with heights ``[w, s, zmin, e, n, zmax]``
  (heights ignored), or a ``"W,S,E,N"`` string; WGS84 degrees, finite, longitudes in [-180, 180],
  latitudes in [-90, 90], south <= north. West > east crosses the antimeridian: the box is split at
  +/-180 into two (:func:`split_box`).
* An item matches a bbox when its **geometry** meets the closed box (touching counts), as pgstac's
  ``st_intersects``; an item without geometry matches no bbox. Planar lon/lat, exact: segment
  clipping and point-in-polygon (:func:`geometry_intersects_box`), no geometry library.
* **datetime**: an RFC 3339 instant ``A`` or an interval ``A/B``, ``..`` or empty for an open end. A
  date-time must carry its time zone (``Z`` or an offset): one without is refused, naming the value,
  since it would name another instant on every machine. A date (``2020-06-01``) stands for its whole
  day, 00:00:00Z as a start, 23:59:59.999999Z as an end. A calendar date that does not exist, an
  instant outside the years 1-9999 in UTC and an interval whose start is after its end are refused.
* An item's **time** is ``[start_datetime, end_datetime]`` when it has both, else its ``datetime``
  instant (pgstac's rule, :func:`item_interval`); it matches when that closed interval meets the
  query's. An item with neither matches no datetime query. Item timestamps are data, not arguments:
  they are read leniently (one without a time zone as UTC, as the index does).
* **filter**: CQL2 as a dict, CQL2-JSON text or CQL2 text, parsed and validated with ``cql2``.
  Unknown operators or functions and property names outside ``[A-Za-z0-9_:.-]`` are refused (the SQL
  ``cql2`` writes would carry them as function calls or identifiers). A comparison with a property the
  item lacks is unknown, hence no match (SQL's NULL).
* **order** (:data:`ORDER`, :func:`sort_key`): the start of the item's time, newest first, undated
  items last; then collection, then id, both descending: pgstac's default (``datetime DESC`` with its
  key columns appended in the same direction).
* **q** (free text, :mod:`earthops_runtime.stac.text`): terms, quoted phrases, AND/OR/NOT over ids and
  string properties; with a ``q``, results come by relevance (highest first), then in :data:`ORDER`.
  Relevance needs corpus statistics (how many items hold each token): :meth:`Query.select` takes
  them from the items it is given, the search index from its inverted index of the same items.
* **sortby** (the sort extension): fields (``id``, ``collection``, ``datetime`` — the start of the item's
  time —, another property, ``properties.`` prefix optional), each ascending or descending, missing
  values last; they come before relevance and :data:`ORDER`, which break their ties.
* ``collections`` / ``ids``: any of these (an empty list matches nothing); ``limit``: a positive integer.

A bad argument raises :class:`SearchError`, whose ``parameter`` names it.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from earthops.api.stac import Box, SearchError, parse_bbox, parse_instant, parse_interval
from earthops_runtime.stac.text import TextQuery, corpus_df, item_terms, score

#: The result order: (what, descending). ``datetime`` is the start of the item's time
#: (:func:`item_interval`); missing values come last. SQL builders write their ORDER BY from this.
ORDER: tuple[tuple[str, bool], ...] = (("datetime", True), ("collection", True), ("id", True))

_KNOWN_OPS = frozenset({
    "and", "or", "not", "=", "<>", "<", "<=", ">", ">=", "like", "between", "in", "isnull", "casei", "accenti",
    "s_intersects", "s_equals", "s_disjoint", "s_touches", "s_within", "s_overlaps", "s_crosses", "s_contains",
    "t_after", "t_before", "t_contains", "t_disjoint", "t_during", "t_equals", "t_finishedby", "t_finishes",
    "t_intersects", "t_meets", "t_metby", "t_overlappedby", "t_overlaps", "t_startedby", "t_starts",
    "a_equals", "a_contains", "a_containedby", "a_overlaps",
    "+", "-", "*", "/", "%", "^", "div",
})
_PROPERTY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_:.\-]*$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def split_box(box: Box) -> list[Box]:
    """The box as boxes with west <= east: itself, or its two halves when it crosses the antimeridian."""
    w, s, e, n = box
    return [box] if w <= e else [(w, s, 180.0, n), (-180.0, s, e, n)]


def item_bbox(item: Mapping[str, Any]) -> Box | None:
    """An item's bbox as ``(w, s, e, n)`` (heights of a 6-number bbox dropped); None without one."""
    bbox = item.get("bbox")
    if not bbox or len(bbox) not in (4, 6):
        return None
    half = len(bbox) // 2
    return float(bbox[0]), float(bbox[1]), float(bbox[half]), float(bbox[half + 1])


# --------------------------------------------------------------------------------------------------
# datetime


def format_interval(start: datetime | None, end: datetime | None) -> str:
    """``start/end`` as a STAC API takes it (UTC, microseconds, ``..`` for an open end)."""
    def bound(moment: datetime | None) -> str:
        return ".." if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    return f"{bound(start)}/{bound(end)}"


_RFC3339 = r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})"
_API_DATETIME = re.compile(rf"^(?:{_RFC3339}|(?:{_RFC3339}|\.\.)?/(?:{_RFC3339}|\.\.)?)$")


def check_api_datetime(value: Any) -> None:
    """The STAC API's ``datetime``: an RFC 3339 date-time (with seconds and a zone) or an interval of
    them with ``..`` (or nothing) for at most one open end. Dates alone, offsets without a colon and
    an interval open at both ends are refused (the API conformance suite asks so)."""
    text = value.strip() if isinstance(value, str) else value
    accepted = "an RFC 3339 date-time such as 2021-06-01T10:00:00Z, or an interval A/B with '..' for one open end"
    if not isinstance(text, str) or not _API_DATETIME.match(text):
        raise SearchError("datetime", f"{value!r}: expected {accepted}")
    if "/" in text and all(end in ("", "..") for end in text.split("/")):
        raise SearchError("datetime", f"{value!r}: both ends open; expected {accepted}")


def item_time(value: Any) -> datetime | None:
    """An item's timestamp property as an aware UTC datetime; None when absent or unreadable (such an
    item has no time: it matches no datetime query and sorts last)."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        moment = value
    else:
        text = str(value).strip()
        try:
            moment = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "Zz" else text)
        except ValueError:
            return None
    if moment.tzinfo is None:  # data written without a zone: UTC, as the index reads it
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def item_interval(item: Mapping[str, Any]) -> tuple[datetime | None, datetime | None]:
    """The item's time: ``(start_datetime, end_datetime)`` when it has both, else ``(datetime,
    datetime)``; ``(None, None)`` when it has neither."""
    props = item.get("properties") or {}
    start, end = item_time(props.get("start_datetime")), item_time(props.get("end_datetime"))
    if start is not None and end is not None:
        return start, end
    moment = item_time(props.get("datetime"))
    return moment, moment


# --------------------------------------------------------------------------------------------------
# CQL2


def parse_filter(value: Any) -> Any:
    """A CQL2 filter (dict, CQL2-JSON text or CQL2 text) as a validated ``cql2.Expr``."""
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise SearchError("filter", f"not valid CQL2-JSON: {exc}") from None
    if isinstance(value, Mapping):
        try:
            text = json.dumps(_between_args(value), sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise SearchError("filter", f"not valid CQL2-JSON: {exc}") from None
        return _parse_filter("json", text)
    if isinstance(value, str) and value.strip():
        return _parse_filter("text", value.strip())
    raise SearchError("filter", f"{value!r}: expected CQL2 text or CQL2-JSON")


def _between_args(node: Any) -> Any:
    """CQL2-JSON with ``between``'s bounds as one array (``[prop, [lo, hi]]``, the filter extension's
    draft form, which clients and the API conformance suite still send) made the standard
    ``[prop, lo, hi]``."""
    if isinstance(node, list):
        return [_between_args(v) for v in node]
    if not isinstance(node, Mapping):
        return node
    out = {k: _between_args(v) for k, v in node.items()}
    args = out.get("args")
    if str(out.get("op", "")).lower() == "between" and isinstance(args, list) and len(args) == 2 \
            and isinstance(args[1], list) and len(args[1]) == 2:
        out["args"] = [args[0], *args[1]]
    return out


@functools.lru_cache(maxsize=256)
def _parse_filter(kind: str, text: str) -> Any:
    """Parsed and validated once per distinct filter (``Expr.validate`` takes ~50 ms); expressions
    are only read afterwards, so sharing them is safe."""
    import cql2

    try:
        expr = cql2.parse_json(text) if kind == "json" else cql2.parse_text(text)
        expr.validate()
    except Exception as exc:  # cql2.ParseError, cql2.ValidationError
        first = str(exc).strip().splitlines()
        raise SearchError("filter", f"not valid CQL2: {' '.join(line.strip() for line in first)[:400]}") from None
    _check_names(expr.to_json())
    return expr


def _check_names(node: Any) -> None:
    """Refuse unknown functions and odd property names: the SQL that ``cql2`` writes for them would
    otherwise carry them as function calls or identifiers."""
    if isinstance(node, list):
        for v in node:
            _check_names(v)
    elif isinstance(node, dict):
        op = node.get("op")
        if op is not None and str(op).lower() not in _KNOWN_OPS:
            raise SearchError("filter", f"unknown CQL2 operator or function {op!r}")
        prop = node.get("property")
        if prop is not None and not (isinstance(prop, str) and _PROPERTY_NAME.match(prop)):
            raise SearchError("filter", f"property name {prop!r} is not accepted "
                              "(letters, digits, '_', ':', '.', '-')")
        for key, v in node.items():
            if key not in ("op", "property"):
                _check_names(v)


def expr_matches(expr: Any, item: Mapping[str, Any]) -> bool:
    """Whether a ``cql2.Expr`` holds for an item; unknown (a missing property, a type clash) is no."""
    try:
        return bool(expr.matches(dict(item)))
    except Exception:  # noqa: BLE001 - cql2 "could not reduce to boolean": SQL's NULL
        return False


# --------------------------------------------------------------------------------------------------
# Geometry: does a GeoJSON geometry meet a closed box (w <= e)?


def _segment_hits_box(x0: float, y0: float, x1: float, y1: float, box: Box) -> bool:
    """Liang-Barsky: whether the segment meets the closed box."""
    w, s, e, n = box
    t0, t1 = 0.0, 1.0
    dx, dy = x1 - x0, y1 - y0
    for p, q in ((-dx, x0 - w), (dx, e - x0), (-dy, y0 - s), (dy, n - y0)):
        if p == 0:
            if q < 0:
                return False
        else:
            r = q / p
            if p < 0:
                t0 = max(t0, r)
            else:
                t1 = min(t1, r)
            if t0 > t1:
                return False
    return True


def _in_ring(x: float, y: float, ring: Sequence[Sequence[float]]) -> bool:
    inside = False
    for (ax, ay, *_), (bx, by, *_) in zip(ring, ring[1:], strict=False):
        if (ay > y) != (by > y) and x < ax + (y - ay) * (bx - ax) / (by - ay):
            inside = not inside
    return inside


def _point_in(p: Sequence[float], box: Box) -> bool:
    return box[0] <= p[0] <= box[2] and box[1] <= p[1] <= box[3]


def _lines_hit(lines: Iterable[Sequence[Sequence[float]]], box: Box) -> bool:
    for line in lines:
        if len(line) == 1 and _point_in(line[0], box):
            return True
        for a, b in zip(line, line[1:], strict=False):
            if _segment_hits_box(a[0], a[1], b[0], b[1], box):
                return True
    return False


def _polygon_hits(rings: Sequence[Sequence[Sequence[float]]], box: Box) -> bool:
    if not rings:
        return False
    if _lines_hit(rings, box):
        return True
    # no boundary meets the box: the box lies wholly inside the polygon or wholly outside it
    x, y = box[0], box[1]
    return _in_ring(x, y, rings[0]) and not any(_in_ring(x, y, hole) for hole in rings[1:])


def geometry_intersects_box(geometry: Mapping[str, Any] | None, box: Box) -> bool:
    """Whether a GeoJSON geometry meets the closed box ``(w, s, e, n)`` (w <= e), planar lon/lat."""
    if not geometry:
        return False
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    if kind == "Point":
        return _point_in(coords, box)
    if kind == "MultiPoint":
        return any(_point_in(p, box) for p in coords)
    if kind == "LineString":
        return _lines_hit([coords], box)
    if kind == "MultiLineString":
        return _lines_hit(coords, box)
    if kind == "Polygon":
        return _polygon_hits(coords, box)
    if kind == "MultiPolygon":
        return any(_polygon_hits(p, box) for p in coords)
    if kind == "GeometryCollection":
        return any(geometry_intersects_box(g, box) for g in geometry.get("geometries", []))
    return False


# --------------------------------------------------------------------------------------------------
# Geometry against geometry (``intersects``), planar lon/lat, exact


_GEOMETRY_TYPES = ("Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon",
                   "GeometryCollection")


def parse_geometry(value: Any) -> dict[str, Any]:
    """A GeoJSON geometry (dict or JSON text) for ``intersects``, checked: type, coordinate structure,
    finite lon/lat in range. Raises :class:`SearchError` naming ``intersects``."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise SearchError("intersects", f"not GeoJSON: {exc}") from None
    if not isinstance(value, Mapping) or value.get("type") not in _GEOMETRY_TYPES:
        raise SearchError("intersects", f"{value!r}: expected a GeoJSON geometry ({', '.join(_GEOMETRY_TYPES)})")

    def position(p: Any) -> None:
        if not (isinstance(p, (list, tuple)) and len(p) in (2, 3)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p)):
            raise SearchError("intersects", f"position {p!r}: expected [longitude, latitude] numbers")
        if not (-180 <= p[0] <= 180 and -90 <= p[1] <= 90):
            raise SearchError("intersects", f"position {p!r}: longitude in [-180, 180], latitude in [-90, 90]")

    def nested(c: Any, depth: int, least: int = 1) -> None:
        if depth == 0:
            position(c)
            return
        if not isinstance(c, (list, tuple)) or len(c) < least:
            raise SearchError("intersects", f"{value.get('type')} coordinates {c!r} are not well formed")
        for part in c:
            nested(part, depth - 1, 2 if depth - 1 == 1 and value.get("type") in ("LineString", "MultiLineString") else 1)

    kind = value["type"]
    if kind == "GeometryCollection":
        parts = value.get("geometries")
        if not isinstance(parts, list):
            raise SearchError("intersects", "a GeometryCollection needs 'geometries'")
        return {"type": kind, "geometries": [parse_geometry(dict(g)) if isinstance(g, Mapping) else parse_geometry(g)
                                             for g in parts]}
    depth = {"Point": 0, "MultiPoint": 1, "LineString": 1, "MultiLineString": 2, "Polygon": 2, "MultiPolygon": 3}[kind]
    nested(value.get("coordinates"), depth)
    return {"type": kind, "coordinates": value["coordinates"]}


def _parts(geometry: Mapping[str, Any]) -> tuple[list[Any], list[Any], list[Any]]:
    """(points, segments, polygons as ring lists) of a GeoJSON geometry."""
    points: list[Any] = []
    segments: list[Any] = []
    polygons: list[Any] = []

    def lines(ls: Any) -> None:
        for line in ls:
            points.extend(line)
            segments.extend(zip(line, line[1:]))

    def walk(g: Mapping[str, Any]) -> None:
        kind, c = g.get("type"), g.get("coordinates")
        if kind == "Point":
            points.append(c)
        elif kind == "MultiPoint":
            points.extend(c)
        elif kind == "LineString":
            lines([c])
        elif kind == "MultiLineString":
            lines(c)
        elif kind == "Polygon":
            lines(c)
            polygons.append(c)
        elif kind == "MultiPolygon":
            for rings in c:
                lines(rings)
                polygons.append(rings)
        elif kind == "GeometryCollection":
            for part in g.get("geometries", []):
                walk(part)

    walk(geometry)
    return points, segments, polygons


def _orient(a: Sequence[float], b: Sequence[float], c: Sequence[float]) -> float:
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])


def _on_segment(p: Sequence[float], a: Sequence[float], b: Sequence[float]) -> bool:
    return (_orient(a, b, p) == 0 and min(a[0], b[0]) <= p[0] <= max(a[0], b[0])
            and min(a[1], b[1]) <= p[1] <= max(a[1], b[1]))


def _segments_meet(a: Sequence[float], b: Sequence[float], c: Sequence[float], d: Sequence[float]) -> bool:
    o1, o2, o3, o4 = _orient(a, b, c), _orient(a, b, d), _orient(c, d, a), _orient(c, d, b)
    if ((o1 > 0 and o2 < 0) or (o1 < 0 and o2 > 0)) and ((o3 > 0 and o4 < 0) or (o3 < 0 and o4 > 0)):
        return True
    return _on_segment(c, a, b) or _on_segment(d, a, b) or _on_segment(a, c, d) or _on_segment(b, c, d)


def _in_polygon(p: Sequence[float], rings: Sequence[Sequence[Sequence[float]]]) -> bool:
    return bool(rings) and _in_ring(p[0], p[1], rings[0]) and not any(_in_ring(p[0], p[1], h) for h in rings[1:])


def geometries_intersect(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two GeoJSON geometries share a point (planar lon/lat; touching counts): a boundary
    meets the other's, a point lies on the other, or a part lies inside the other's polygon."""
    pa_, sa, ga = _parts(a)
    pb, sb, gb = _parts(b)
    if any(_segments_meet(s[0], s[1], t[0], t[1]) for s in sa for t in sb):
        return True
    for points, others, polygons in ((pa_, pb, gb), (pb, pa_, ga)):
        for p in points:
            if any(p[0] == q[0] and p[1] == q[1] for q in others):
                return True
            if any(_in_polygon(p, rings) for rings in polygons):
                return True
    return any(_on_segment(p, s[0], s[1]) for p in pa_ for s in sb) or \
        any(_on_segment(p, s[0], s[1]) for p in pb for s in sa)


def geometry_bounds(geometry: Mapping[str, Any]) -> Box:
    """The bounding box of a GeoJSON geometry."""
    points, _, _ = _parts(geometry)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))


# --------------------------------------------------------------------------------------------------
# Order


@functools.total_ordering
class _Descending:
    """Wraps a value so that an ascending sort puts larger values first."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and self.value == other.value

    def __lt__(self, other: _Descending) -> bool:
        return self.value > other.value

    __hash__ = None  # type: ignore[assignment]


def parse_sortby(value: Any) -> tuple[tuple[str, bool], ...]:
    """The sort extension's ``sortby`` — ``"-datetime,+id"`` (GET), ``["-datetime", "id"]`` or
    ``[{"field": "datetime", "direction": "desc"}]`` (POST) — as ``((field, descending), ...)``."""
    if isinstance(value, str):
        value = [v for v in value.split(",")]
    if not isinstance(value, (list, tuple)) or not value:
        raise SearchError("sortby", f"{value!r}: expected fields such as '-datetime,+id' or "
                          "[{'field': 'datetime', 'direction': 'desc'}]")
    out = []
    for entry in value:
        if isinstance(entry, Mapping):
            field, direction = entry.get("field"), str(entry.get("direction", "asc")).lower()
            if direction not in ("asc", "desc"):
                raise SearchError("sortby", f"direction {entry.get('direction')!r}: accepted: asc, desc")
            desc = direction == "desc"
        elif isinstance(entry, str):
            entry = entry.strip()
            desc = entry.startswith("-")
            field = entry[1:] if entry[:1] in "+-" else entry
        else:
            raise SearchError("sortby", f"{entry!r}: expected a field name or {{field, direction}}")
        if not isinstance(field, str) or not field:
            raise SearchError("sortby", f"{entry!r}: no field named")
        field = field.strip().removeprefix("properties.")
        if not _PROPERTY_NAME.match(field):
            raise SearchError("sortby", f"field {field!r} is not accepted (letters, digits, '_', ':', '.', '-')")
        if field in ("bbox", "geometry", "assets", "links", "type", "stac_version", "stac_extensions"):
            raise SearchError("sortby", f"field {field!r} cannot be sorted on")
        out.append((field, desc))
    return tuple(out)


def sort_value(item: Mapping[str, Any], field: str) -> Any:
    """The value an item is sorted by for a ``sortby`` field (None when it has none)."""
    if field in ("id", "collection"):
        return item.get(field)
    if field == "datetime":
        return item_interval(item)[0]
    value = (item.get("properties") or {}).get(field)
    if field in ("start_datetime", "end_datetime"):
        return item_time(value)
    return value


def sort_key(item: Mapping[str, Any]) -> tuple[Any, ...]:
    """The key that sorts items (ascending, ``sorted(items, key=sort_key)``) in :data:`ORDER`."""
    start, _ = item_interval(item)
    micros = 0 if start is None else (start - _EPOCH) // _MICROSECOND
    collection = item.get("collection")
    return (start is None, -micros,
            _Descending((collection is not None, str(collection or ""), str(item.get("id") or ""))))


# --------------------------------------------------------------------------------------------------
# Query


@dataclass(frozen=True)
class Query:
    """Checked search arguments and what they select. Build with :meth:`parse`."""

    collections: tuple[str, ...] | None = None
    ids: tuple[str, ...] | None = None
    bbox: Box | None = None
    start: datetime | None = None
    end: datetime | None = None
    expr: Any = None  # cql2.Expr
    filter_json: Mapping[str, Any] | None = None  # the filter as CQL2-JSON, as given when it was a dict
    limit: int | None = None
    text: TextQuery | None = None
    sortby: tuple[tuple[str, bool], ...] = ()
    intersects: Mapping[str, Any] | None = None

    @classmethod
    def parse(cls, *, collections: Any = None, ids: Any = None, bbox: Any = None, datetime: Any = None,
              filter: Any = None, limit: Any = None, q: Any = None, sortby: Any = None,
              intersects: Any = None, strict: bool = False) -> Query:  # noqa: A002 - STAC API names
        """Raises :class:`SearchError` naming the first bad argument. ``strict``: the STAC API's own
        reading of ``datetime`` (RFC 3339 date-times only, not both ends open) and of ``bbox`` (an
        array, not a comma-separated text, in a POST body: the caller passes it as given)."""
        if bbox is not None and intersects is not None:
            raise SearchError("intersects", "give either bbox or intersects, not both")
        if strict and isinstance(bbox, str):
            raise SearchError("bbox", f"{bbox!r}: a bbox is an array of numbers [west, south, east, north]")
        if strict and datetime is not None:
            check_api_datetime(datetime)
        box = parse_bbox(bbox) if bbox is not None else None
        geometry = parse_geometry(intersects) if intersects is not None else None
        start, end = parse_interval(datetime)
        text = TextQuery.parse(q) if q is not None else None
        expr = parse_filter(filter) if filter is not None else None
        filter_json = None
        if expr is not None:
            filter_json = json.loads(json.dumps(filter)) if isinstance(filter, Mapping) else expr.to_json()
        names: dict[str, tuple[str, ...] | None] = {}
        for name, values in (("collections", collections), ("ids", ids)):
            if values is None:
                names[name] = None
                continue
            listed = [values] if isinstance(values, str) else list(values) if isinstance(values, Iterable) else None
            if listed is None or not all(isinstance(v, str) and v for v in listed):
                raise SearchError(name, f"{values!r}: expected a list of non-empty strings")
            names[name] = tuple(listed)
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise SearchError("limit", f"{limit!r}: expected a positive integer")
        order = parse_sortby(sortby) if sortby is not None else ()
        return cls(names["collections"], names["ids"], box, start, end, expr, filter_json, limit, text, order,
                   geometry)

    @property
    def boxes(self) -> list[Box]:
        """The bbox as boxes with west <= east (two across the antimeridian); none without a bbox."""
        return [] if self.bbox is None else split_box(self.bbox)

    @property
    def space_box(self) -> Box | None:
        """The box that pre-selects items in space: the bbox, or the bounds of ``intersects``."""
        if self.intersects is not None:
            return geometry_bounds(self.intersects)
        return self.bbox

    @property
    def has_interval(self) -> bool:
        return self.start is not None or self.end is not None

    def matches(self, item: Mapping[str, Any]) -> bool:
        """Whether the item satisfies every criterion."""
        return (self.matches_names(item) and self.matches_time(item) and self.matches_space(item)
                and self.matches_filter(item) and self.matches_text(item))

    def matches_text(self, item: Mapping[str, Any]) -> bool:
        return self.text is None or self.text.matches(item)

    def matches_names(self, item: Mapping[str, Any]) -> bool:
        if self.collections is not None and item.get("collection") not in self.collections:
            return False
        return self.ids is None or item.get("id") in self.ids

    def matches_time(self, item: Mapping[str, Any]) -> bool:
        if not self.has_interval:
            return True
        lo, hi = item_interval(item)
        if lo is None or hi is None:
            return False
        return (self.end is None or lo <= self.end) and (self.start is None or hi >= self.start)

    def matches_space(self, item: Mapping[str, Any]) -> bool:
        """Whether the item's geometry meets the bbox. The item's own bbox (when it does not cross the
        antimeridian) settles the easy cases: inside a box, the geometry meets it; disjoint from every
        box, so is the geometry."""
        if self.intersects is not None:
            geometry = item.get("geometry")
            if not geometry:
                return False
            own, (w, s, e, n) = item_bbox(item), geometry_bounds(self.intersects)
            if own is not None and own[0] <= own[2] and (own[0] > e or own[2] < w or own[1] > n or own[3] < s):
                return False
            try:
                return geometries_intersect(geometry, self.intersects)
            except (TypeError, ValueError, IndexError, KeyError, AttributeError, ZeroDivisionError):
                return False
        if self.bbox is None:
            return True
        geometry = item.get("geometry")
        if not geometry:
            return False
        boxes = self.boxes
        own = item_bbox(item)
        if own is not None and own[0] <= own[2]:
            w, s, e, n = own
            if any(b[0] <= w and e <= b[2] and b[1] <= s and n <= b[3] for b in boxes):
                return True
            if all(w > b[2] or e < b[0] or s > b[3] or n < b[1] for b in boxes):
                return False
        try:
            return any(geometry_intersects_box(geometry, b) for b in boxes)
        except (TypeError, ValueError, IndexError, KeyError, AttributeError, ZeroDivisionError):
            return False  # a malformed geometry meets nothing

    def matches_filter(self, item: Mapping[str, Any]) -> bool:
        return self.expr is None or expr_matches(self.expr, item)

    def select(self, items: Iterable[Mapping[str, Any]]) -> list[Any]:
        """The matching items in :data:`ORDER` (by relevance first with a ``q``, the given items being
        the corpus), at most ``limit`` of them."""
        corpus = list(items)
        found = [it for it in corpus if self.matches(it)]
        if self.text is None:
            found.sort(key=sort_key)
        else:
            tokens = self.text.tokens
            df, n_docs = corpus_df(corpus, tokens)
            found.sort(key=lambda it: (-score(tokens, item_terms(it), df, n_docs), sort_key(it)))
        for field, desc in reversed(self.sortby):  # stable sorts: the first field decides last
            present = [it for it in found if sort_value(it, field) is not None]
            present.sort(key=lambda it: sort_value(it, field), reverse=desc)
            found = present + [it for it in found if sort_value(it, field) is None]
        return found if self.limit is None else found[: self.limit]

    def search_body(self) -> dict[str, Any]:
        """The criteria as the fields of a STAC API ``POST /search`` body (``limit`` left out: an API
        takes it as the page size)."""
        body: dict[str, Any] = {}
        if self.collections is not None:
            body["collections"] = list(self.collections)
        if self.ids is not None:
            body["ids"] = list(self.ids)
        if self.bbox is not None:
            body["bbox"] = list(self.bbox)
        if self.intersects is not None:
            body["intersects"] = dict(self.intersects)
        if self.has_interval:
            body["datetime"] = format_interval(self.start, self.end)
        if self.filter_json is not None:
            body["filter"] = dict(self.filter_json)
            body["filter-lang"] = "cql2-json"
        if self.text is not None:
            body["q"] = self.text.q
        if self.sortby:
            body["sortby"] = [{"field": f, "direction": "desc" if d else "asc"} for f, d in self.sortby]
        return body


__all__ = ["ORDER", "Box", "Query", "SearchError", "expr_matches", "format_interval", "geometry_intersects_box",
           "item_bbox", "item_interval", "item_time", "parse_bbox", "parse_filter", "parse_geometry", "parse_instant",
           "parse_interval", "parse_sortby", "geometries_intersect", "geometry_bounds", "check_api_datetime", "sort_key", "sort_value", "split_box"]
