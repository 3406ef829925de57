"""STAC item search over the store: every published run's ``index.parquet``, queried with core DuckDB.

:func:`search` answers what a STAC API ``/search`` answers (collections, ids, bbox, datetime, CQL2
filter, limit) without a server:

* **Discovery** (:func:`index_keys`): the ``index.parquet`` of every *published* run under
  ``datasets/<ns>/<name>/<run-id>/`` and ``models/<ns>/<model>/<version>/`` (runs being written are
  invisible, as everywhere in the store). On S3 the files are copied once into a local cache keyed
  by the run's publication marker (published runs are immutable): DuckDB's ``httpfs`` cannot be
  downloaded here, so DuckDB only ever reads local files.
* **bbox and datetime** are plain column predicates on ``bbox.xmin/ymin/xmax/ymax`` and the three
  timestamp columns, so DuckDB prunes row groups by their statistics (the index is Hilbert-sorted).
  The item's bbox pre-selects; the item's geometry (WKB, decoded here) decides, so a bbox query
  answers "geometry intersects bbox" as a STAC API does. A bbox with west > east crosses the
  antimeridian. An item matches a datetime interval when its datetime (or its
  ``start_datetime``/``end_datetime`` range) intersects it.
* **CQL2** (JSON dict, JSON text or CQL2 text) is parsed with ``cql2``. The top-level ``AND`` terms
  that ``cql2`` translates to SQL DuckDB can bind (comparisons, LIKE, IN, BETWEEN, IS NULL, CASEI,
  array and temporal operators over index columns) run in DuckDB; the rest (spatial operators: core
  DuckDB has no geometry functions; ``properties.``-prefixed names; properties no index has) are
  evaluated on each remaining candidate with ``Expr.matches``. A property an item lacks makes a
  comparison unknown, hence false, in both paths (SQL NULL semantics).
* Results are STAC item dicts, newest first (then collection, id), relative hrefs resolved against the
  index's URL.

Errors in the arguments raise :class:`SearchError`, whose ``parameter`` names the argument.

DuckDB's extension auto-install and auto-load are switched off, so a query never tries the network.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import os
import posixpath
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, time
from typing import Any

from earthops.core.store import MARKER
from earthops_runtime.cache import cache_root
from earthops_runtime.catalog.index import (
    CORE_COLUMNS,
    EXTRA_PROPERTIES,
    INDEX_NAME,
    TIME_COLUMNS,
    format_datetime,
    json_properties,
    wkb_to_geometry,
)

#: Store areas whose runs may carry an index.
AREAS = ("datasets", "models")
#: Rows fetched from DuckDB at a time when candidates are filtered here.
BATCH_ROWS = 2048
FILE_COLUMN = "__earthops_index_file"

_KNOWN_OPS = frozenset({
    "and", "or", "not", "=", "<>", "<", "<=", ">", ">=", "like", "between", "in", "isnull", "casei", "accenti",
    "s_intersects", "s_equals", "s_disjoint", "s_touches", "s_within", "s_overlaps", "s_crosses", "s_contains",
    "t_after", "t_before", "t_contains", "t_disjoint", "t_during", "t_equals", "t_finishedby", "t_finishes",
    "t_intersects", "t_meets", "t_metby", "t_overlappedby", "t_overlaps", "t_startedby", "t_starts",
    "a_equals", "a_contains", "a_containedby", "a_overlaps",
    "+", "-", "*", "/", "%", "^", "div",
})
_PROPERTY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_:.\-]*$")


class SearchError(ValueError):
    """A search argument is invalid; ``parameter`` names it (``bbox``, ``datetime``, ``filter``, ...)."""

    def __init__(self, parameter: str, message: str):
        self.parameter = parameter
        self.message = message
        super().__init__(f"{parameter}: {message}")


# --------------------------------------------------------------------------------------------------
# Arguments


def parse_bbox(bbox: Any) -> tuple[float, float, float, float]:
    """``[west, south, east, north]`` (or 6 numbers with heights, ignored) in WGS84 degrees; a
    ``"W,S,E,N"`` string is accepted too. West > east means the box crosses the antimeridian."""
    if isinstance(bbox, str):
        parts = [p.strip() for p in bbox.split(",")]
    else:
        try:
            parts = list(bbox)
        except TypeError:
            raise SearchError("bbox", f"{bbox!r} is not a list of numbers") from None
    try:
        values = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise SearchError("bbox", f"{bbox!r}: expected 4 numbers west,south,east,north") from None
    if len(values) not in (4, 6):
        raise SearchError("bbox", f"{bbox!r}: expected 4 numbers west,south,east,north (or 6 with heights), "
                          f"got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise SearchError("bbox", f"{bbox!r}: numbers must be finite")
    half = len(values) // 2
    w, s, e, n = values[0], values[1], values[half], values[half + 1]
    if not (-180 <= w <= 180 and -180 <= e <= 180):
        raise SearchError("bbox", f"{bbox!r}: longitudes must lie in [-180, 180]")
    if not (-90 <= s <= 90 and -90 <= n <= 90):
        raise SearchError("bbox", f"{bbox!r}: latitudes must lie in [-90, 90]")
    if s > n:
        raise SearchError("bbox", f"{bbox!r}: south {s} is north of north {n}")
    return w, s, e, n


_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _instant(text: str, *, end: bool) -> datetime:
    text = text.strip()
    if _DATE_ONLY.match(text):
        try:
            day = date.fromisoformat(text)
        except ValueError as exc:
            raise SearchError("datetime", f"{text!r}: {exc}") from None
        # a date names the whole day
        return datetime.combine(day, time.max if end else time.min, tzinfo=UTC)
    if not re.search(r"(Z|z|[+-]\d{2}:?\d{2})$", text):
        raise SearchError("datetime", f"{text!r} has no time zone (RFC 3339: add Z or an offset)")
    try:
        dt = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1] in "Zz" else text)
    except ValueError:
        raise SearchError("datetime", f"{text!r} is not an RFC 3339 date-time "
                          "(e.g. 2020-01-01T00:00:00Z, 2020-01-01, or an interval A/B with .. for open)") from None
    return dt.astimezone(UTC)


def parse_interval(value: Any) -> tuple[datetime | None, datetime | None]:
    """An RFC 3339 instant or interval (``A``, ``A/B``, ``A/..``, ``../B``, ``/B``) as (start, end)
    in UTC, None for an open end. A date (``2020-06-01``) stands for its whole day."""
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
        return dt.astimezone(UTC), dt.astimezone(UTC)
    if not isinstance(value, str) or not value.strip():
        raise SearchError("datetime", f"{value!r}: expected an RFC 3339 date-time or interval A/B")
    text = value.strip()
    if "/" not in text:
        return _instant(text, end=False), _instant(text, end=True)
    if text.count("/") != 1:
        raise SearchError("datetime", f"{value!r}: an interval has one '/' (A/B, with .. for an open end)")
    a, b = (p.strip() for p in text.split("/"))
    start = None if a in ("", "..") else _instant(a, end=False)
    end = None if b in ("", "..") else _instant(b, end=True)
    if start is not None and end is not None and start > end:
        raise SearchError("datetime", f"{value!r}: the start is after the end")
    return start, end


def parse_filter(value: Any) -> Any:
    """A CQL2 filter (JSON dict, CQL2-JSON text or CQL2 text) as a validated ``cql2.Expr``."""
    if isinstance(value, Mapping):
        return _parse_filter("json", json.dumps(value, sort_keys=True))
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            json.loads(value)
        except json.JSONDecodeError as exc:
            raise SearchError("filter", f"not valid CQL2-JSON: {exc}") from None
        return _parse_filter("json", value.strip())
    if isinstance(value, str) and value.strip():
        return _parse_filter("text", value.strip())
    raise SearchError("filter", f"{value!r}: expected CQL2 text or CQL2-JSON")


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
    otherwise reach DuckDB as function calls or identifiers."""
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


# --------------------------------------------------------------------------------------------------
# Discovery


def index_keys(store: Any, areas: Sequence[str] = AREAS) -> list[str]:
    """Keys of the ``index.parquet`` of every published run (``<area>/<ns>/<name>/<run>/``)."""
    from earthops_runtime.catalog.dataset import published_files

    return published_files(store, INDEX_NAME, areas)


def _local_files(store: Any, keys: Sequence[str]) -> dict[str, str]:
    """Local path -> store URL of each index. Remote indexes are copied once into the cache, keyed by
    URL and publication time (a run republished under the same key gets a new entry)."""
    out: dict[str, str] = {}
    for key in keys:
        url = store.url(key)
        if store.is_local:
            out[os.fspath(store.local_path(key))] = url
            continue
        run_key = key.rsplit("/", 1)[0]
        published = store.read_json(f"{run_key}/{MARKER}").get("published", "")
        digest = hashlib.sha256(f"{url}\n{published}".encode()).hexdigest()[:32]
        path = cache_root("index") / f"{digest}.parquet"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
            tmp.write_bytes(store.read_bytes(key))
            os.replace(tmp, path)
        out[os.fspath(path)] = url
    return out


# --------------------------------------------------------------------------------------------------
# DuckDB

_db_lock = threading.Lock()
_db: Any = None


def _cursor() -> Any:
    """A cursor on one process-wide in-memory database (its Parquet metadata cache survives queries;
    a new database per query costs ~20 ms)."""
    global _db
    with _db_lock:
        if _db is None:
            import duckdb

            db = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False,
                                                    "autoload_known_extensions": False})
            db.execute("SET GLOBAL parquet_metadata_cache = true")
            _db = db
        return _db.cursor()


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _source(paths: Iterable[str]) -> str:
    files = ", ".join(_sql_string(p) for p in paths)
    return f"read_parquet([{files}], union_by_name = true, filename = {_sql_string(FILE_COLUMN)})"


def _bbox_sql(box: tuple[float, float, float, float], params: dict[str, Any]) -> str:
    w, s, e, n = box
    params.update(bw=w, bs=s, be=e, bn=n)
    lat = "bbox.ymin <= $bn AND bbox.ymax >= $bs"
    if w <= e:
        return f"(bbox.xmin <= $be AND bbox.xmax >= $bw AND {lat})"
    # crosses the antimeridian: [w, 180] or [-180, e]
    return f"((bbox.xmax >= $bw OR bbox.xmin <= $be) AND {lat})"


def _datetime_sql(start: datetime | None, end: datetime | None, params: dict[str, Any]) -> str:
    terms = []
    if end is not None:
        params["t1"] = end
        terms.append("coalesce(start_datetime, datetime) <= $t1")
    if start is not None:
        params["t0"] = start
        terms.append("coalesce(end_datetime, datetime) >= $t0")
    return " AND ".join(terms) if terms else "TRUE"


def _conjuncts(expr: Any) -> list[dict[str, Any]]:
    node = expr.to_json()
    if isinstance(node, dict) and str(node.get("op", "")).lower() == "and":
        return list(node["args"])
    return [node]


def _split_filter(cur: Any, source: str, expr: Any) -> tuple[list[str], Any]:
    """(SQL terms DuckDB binds, residual cql2 expression or None) of a filter."""
    import cql2

    sql_terms: list[str] = []
    residual: list[dict[str, Any]] = []
    for node in _conjuncts(expr):
        try:
            term = cql2.parse_json(json.dumps(node)).to_sql()
            cur.sql(f"SELECT 1 FROM {source} WHERE {term}")  # binds (names, types, functions), runs nothing
            sql_terms.append(f"({term})")
        except Exception:  # noqa: BLE001 - not translatable or not bindable: evaluate it here
            residual.append(node)
    if not residual:
        return sql_terms, None
    rest = residual[0] if len(residual) == 1 else {"op": "and", "args": residual}
    return sql_terms, cql2.parse_json(json.dumps(rest))


# --------------------------------------------------------------------------------------------------
# Geometry test (exact: item geometry vs the query box)


def _segment_hits_box(x0: float, y0: float, x1: float, y1: float, box: tuple[float, float, float, float]) -> bool:
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


def _lines_hit(lines: Iterable[Sequence[Sequence[float]]], box: tuple[float, float, float, float]) -> bool:
    for line in lines:
        if len(line) == 1 and _point_in(line[0], box):
            return True
        for a, b in zip(line, line[1:], strict=False):
            if _segment_hits_box(a[0], a[1], b[0], b[1], box):
                return True
    return False


def _point_in(p: Sequence[float], box: tuple[float, float, float, float]) -> bool:
    return box[0] <= p[0] <= box[2] and box[1] <= p[1] <= box[3]


def _polygon_hits(rings: Sequence[Sequence[Sequence[float]]], box: tuple[float, float, float, float]) -> bool:
    if not rings:
        return False
    if _lines_hit(rings, box):
        return True
    # no boundary crosses the box: the box lies wholly inside the polygon or wholly outside it
    x, y = box[0], box[1]
    return _in_ring(x, y, rings[0]) and not any(_in_ring(x, y, hole) for hole in rings[1:])


def geometry_intersects_box(geometry: Mapping[str, Any] | None, box: tuple[float, float, float, float]) -> bool:
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


def _boxes(box: tuple[float, float, float, float]) -> list[tuple[float, float, float, float]]:
    w, s, e, n = box
    return [box] if w <= e else [(w, s, 180.0, n), (-180.0, s, e, n)]


# --------------------------------------------------------------------------------------------------
# Rows -> items


def _resolve(href: str, base: str) -> str:
    """``href`` relative to the folder URL ``base`` (``file:///...``, ``s3://...``) made absolute."""
    if "://" in href or href.startswith("/") or not href:
        return href
    scheme, sep, path = base.partition("://")
    if not sep:
        return posixpath.normpath(posixpath.join(base, href))
    host, _, rest = path.partition("/")
    joined = posixpath.normpath(posixpath.join("/" + rest, href))
    return f"{scheme}://{host}{joined}"


def _json_columns(path: str) -> frozenset[str]:
    st = os.stat(path)
    return _json_columns_of(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1024)
def _json_columns_of(path: str, size: int, mtime_ns: int) -> frozenset[str]:
    """The JSON-encoded property columns of an index file (its footer read once per file version)."""
    import pyarrow.parquet as pq

    return frozenset(json_properties(pq.read_schema(path)))


class _Rows:
    """Turns index rows into STAC item dicts (per-file JSON columns and href bases)."""

    def __init__(self, files: Mapping[str, str]):
        self.base = {path: url.rsplit("/", 1)[0] for path, url in files.items()}
        self.json_columns = {path: _json_columns(path) for path in files}

    def item(self, row: dict[str, Any]) -> dict[str, Any]:
        path = row.pop(FILE_COLUMN)
        base = self.base[path]
        json_cols = self.json_columns[path]
        properties: dict[str, Any] = {}
        for key in TIME_COLUMNS:
            value = row.get(key)
            if value is not None or key == "datetime":
                properties[key] = format_datetime(value)
        for key, value in row.items():
            if key in CORE_COLUMNS or value is None:
                continue
            properties[key] = json.loads(value) if key in json_cols and isinstance(value, str) else value
        if row.get(EXTRA_PROPERTIES):
            properties.update(json.loads(row[EXTRA_PROPERTIES]))
        links = json.loads(row["links"] or "[]")
        for link in links:
            if isinstance(link.get("href"), str):
                link["href"] = _resolve(link["href"], base)
        assets = json.loads(row["assets"] or "{}")
        for asset in assets.values():
            if isinstance(asset.get("href"), str):
                asset["href"] = _resolve(asset["href"], base)
        box = row.get("bbox")
        item: dict[str, Any] = {
            "type": "Feature",
            "stac_version": row.get("stac_version"),
            "stac_extensions": list(row.get("stac_extensions") or []),
            "id": row["id"],
            "geometry": wkb_to_geometry(row["geometry"]) if row.get("geometry") is not None else None,
        }
        if box is not None:
            item["bbox"] = [box["xmin"], box["ymin"], box["xmax"], box["ymax"]]
        item.update(properties=properties, links=links, assets=assets)
        if row.get("collection") is not None:
            item["collection"] = row["collection"]
        return item


# --------------------------------------------------------------------------------------------------
# Search


def search(store: Any, *, collections: Sequence[str] | str | None = None, ids: Sequence[str] | None = None,
           bbox: Any = None, datetime: Any = None, filter: Any = None,  # noqa: A002 - STAC API names
           limit: int | None = None) -> list[dict[str, Any]]:
    """STAC items of every published index in ``store`` that match all the given criteria.

    ``collections``/``ids``: any of these; ``bbox``: ``[w, s, e, n]`` (geometry intersects);
    ``datetime``: RFC 3339 instant or interval (``A/B``, ``..`` open); ``filter``: CQL2 (dict, JSON
    text or text); ``limit``: at most this many (newest first). Raises :class:`SearchError` (before
    anything is read) for a bad argument."""
    query = _Query.of(collections=collections, ids=ids, bbox=bbox, datetime=datetime, filter=filter, limit=limit)
    return list(query.run(_local_files(store, index_keys(store))))


def search_files(files: Mapping[str, str], *, collections: Sequence[str] | str | None = None,
                 ids: Sequence[str] | None = None, bbox: Any = None, datetime: Any = None,
                 filter: Any = None, limit: int | None = None) -> list[dict[str, Any]]:  # noqa: A002
    """:func:`search` over given index files (local path -> URL the hrefs resolve against)."""
    return list(iter_search(files, collections=collections, ids=ids, bbox=bbox, datetime=datetime,
                            filter=filter, limit=limit))


def iter_search(files: Mapping[str, str], *, collections: Sequence[str] | str | None = None,
                ids: Sequence[str] | None = None, bbox: Any = None, datetime: Any = None,
                filter: Any = None, limit: int | None = None) -> Iterator[dict[str, Any]]:  # noqa: A002
    """The items of :func:`search_files`, one at a time (arguments are checked before the first)."""
    query = _Query.of(collections=collections, ids=ids, bbox=bbox, datetime=datetime, filter=filter, limit=limit)
    return query.run(files)


class _Query:
    """Checked search arguments."""

    def __init__(self, collections: list[str] | None, ids: list[str] | None,
                 box: tuple[float, float, float, float] | None, start: datetime | None, end: datetime | None,
                 expr: Any, limit: int | None):
        self.collections, self.ids, self.box, self.start, self.end = collections, ids, box, start, end
        self.expr, self.limit = expr, limit

    @classmethod
    def of(cls, *, collections: Any, ids: Any, bbox: Any, datetime: Any, filter: Any,  # noqa: A002
           limit: Any) -> _Query:
        box = parse_bbox(bbox) if bbox is not None else None
        start, end = parse_interval(datetime) if datetime is not None else (None, None)
        expr = parse_filter(filter) if filter is not None else None
        if isinstance(collections, str):
            collections = [collections]
        if isinstance(ids, str):
            ids = [ids]
        for name, values in (("collections", collections), ("ids", ids)):
            if values is not None and not all(isinstance(v, str) and v for v in values):
                raise SearchError(name, f"{values!r}: expected a list of non-empty strings")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise SearchError("limit", f"{limit!r}: expected a positive integer")
        return cls(None if collections is None else list(collections), None if ids is None else list(ids),
                   box, start, end, expr, limit)

    def run(self, files: Mapping[str, str]) -> Iterator[dict[str, Any]]:
        if not files or self.collections == [] or self.ids == []:
            return iter(())
        return _run(files, self.collections, self.ids, self.box, self.start, self.end, self.expr, self.limit)


def _in_list(column: str, values: Sequence[str], prefix: str, params: dict[str, Any]) -> str:
    names = []
    for i, value in enumerate(values):
        params[f"{prefix}{i}"] = value
        names.append(f"${prefix}{i}")
    return f"{column} IN ({', '.join(names)})"


def _run(files: Mapping[str, str], collections: Sequence[str] | None, ids: Sequence[str] | None,
         box: tuple[float, float, float, float] | None, start: datetime | None, end: datetime | None,
         expr: Any, limit: int | None, *, python_filter: bool = False) -> Iterator[dict[str, Any]]:
    import duckdb

    cur = _cursor()
    try:
        source = _source(files)
        params: dict[str, Any] = {}
        where: list[str] = []
        if collections is not None:
            where.append(_in_list("collection", collections, "c", params))
        if ids is not None:
            where.append(_in_list("id", ids, "i", params))
        if box is not None:
            where.append(_bbox_sql(box, params))
        if start is not None or end is not None:
            where.append(_datetime_sql(start, end, params))
        if expr is None:
            sql_terms, residual = [], None
        elif python_filter:
            sql_terms, residual = [], expr
        else:
            sql_terms, residual = _split_filter(cur, source, expr)
        where += sql_terms
        order = "ORDER BY coalesce(datetime, start_datetime) DESC NULLS LAST, collection, id"
        exact_in_sql = residual is None and box is None
        query = (f"SELECT * FROM {source} WHERE {' AND '.join(where) or 'TRUE'} {order}"
                 + (f" LIMIT {int(limit)}" if exact_in_sql and limit is not None else ""))
        rows = _Rows(files)
        try:
            reader = cur.sql(query, params=params).to_arrow_reader(BATCH_ROWS)
            # ORDER BY is blocking: every WHERE term has run once the first batch is there
            first = _next_batch(reader)
        except duckdb.Error:
            if not sql_terms:
                raise
            # a filter term that binds but fails on the data (a cast): all of it in Python instead
            yield from _run(files, collections, ids, box, start, end, expr, limit, python_filter=True)
            return
        batches = itertools.chain([first], reader) if first is not None else iter(())
        yield from _take(batches, rows, box, residual, limit)
    finally:
        cur.close()


def _next_batch(reader: Any) -> Any:
    try:
        return reader.read_next_batch()
    except StopIteration:
        return None


def _take(batches: Iterable[Any], rows: _Rows, box: tuple[float, float, float, float] | None, residual: Any,
          limit: int | None) -> Iterator[dict[str, Any]]:
    boxes = _boxes(box) if box is not None else []
    n = 0
    for batch in batches:
        for row in batch.to_pylist():
            # the bbox pre-selected in SQL; the geometry decides (skipped when the bbox lies inside)
            exact = not boxes or _bbox_inside(row.get("bbox"), boxes)
            item = rows.item(row)
            if not exact and not any(geometry_intersects_box(item["geometry"], b) for b in boxes):
                continue
            if residual is not None and not _matches(residual, item):
                continue
            yield item
            n += 1
            if limit is not None and n >= limit:
                return


def _bbox_inside(bbox: Mapping[str, float] | None, boxes: Sequence[tuple[float, float, float, float]]) -> bool:
    """Whether an item's bbox lies inside a query box (then its geometry surely meets it)."""
    if bbox is None:
        return False
    return any(b[0] <= bbox["xmin"] and bbox["xmax"] <= b[2] and b[1] <= bbox["ymin"] and bbox["ymax"] <= b[3]
               for b in boxes)


def _matches(expr: Any, item: dict[str, Any]) -> bool:
    try:
        return bool(expr.matches(item))
    except Exception:  # noqa: BLE001 - "could not reduce to boolean": a missing property or a type clash
        return False


def feature_collection(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of STAC items (what ``earthops search -o json`` prints)."""
    return {"type": "FeatureCollection", "features": list(items), "numberReturned": len(items)}


__all__ = ["AREAS", "SearchError", "feature_collection", "geometry_intersects_box", "index_keys", "iter_search",
           "parse_bbox", "parse_filter", "parse_interval", "search", "search_files"]
