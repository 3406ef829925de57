"""The search index of a run: ``index.parquet``, every STAC item of the run in one stac-geoparquet file.

Written with pyarrow directly (the ``stac-geoparquet`` package pins a psutil that conflicts with ours)
and read by :mod:`earthops_runtime.catalog.search` with core DuckDB (no ``spatial`` extension: none can
be downloaded), so every column a search filters on is a plain Parquet column.

Schema (stac-geoparquet 1.0 where practical; GeoParquet 1.1 ``geo`` metadata):

=================== ===================================== ==============================================
column              type                                  content
=================== ===================================== ==============================================
``type``            string                                ``"Feature"``
``stac_version``    string
``stac_extensions`` list<string>
``id``              string                                item id
``collection``      string                                collection id (null when the item has none)
``datetime``        timestamp[us, tz=UTC]                 null for items with only a start/end range
``start_datetime``  timestamp[us, tz=UTC]                 always present (null when absent)
``end_datetime``    timestamp[us, tz=UTC]                 always present (null when absent)
``bbox``            struct<xmin,ymin,xmax,ymax: double>   the GeoParquet 1.1 bbox covering column
``geometry``        binary                                ISO WKB, WGS84 (OGC:CRS84), null if none
``<property>``      bool / int64 / double / string /      one column per top-level item property
                    list<scalar> / string (JSON)          (``eo:cloud_cover``, ``platform``, ...);
                                                          objects and mixed-type values are JSON text,
                                                          named in the file metadata
``assets``          string (JSON)                         the assets object (stac-geoparquet: a struct)
``links``           string (JSON)                         the links array (stac-geoparquet: a struct)
=================== ===================================== ==============================================

Relative hrefs in ``assets`` and ``links`` are relative to the **index file's folder** (the run
folder), so the index moves with the run; :mod:`search` resolves them against the index's URL.

Rows are sorted by the Hilbert key of the bbox centre (a 2^16 x 2^16 grid over lon/lat) and written
in row groups of :data:`ROW_GROUP_SIZE`: neighbouring items share row groups, so the min/max
statistics of the ``bbox`` fields let a bbox query skip most row groups.

Limits: a property whose value is an explicit ``null`` comes back absent; 3-D bboxes keep x/y only; a
property named like a core column (``id``, ``bbox``, ...) is kept in the JSON column
``earthops:properties``.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from earthops_runtime.catalog.encoding import COMPRESSION, dictionary_columns, leaves
from earthops_runtime.catalog.rowstore import ROWS_NAME, rows_bytes
from earthops_runtime.catalog.textindex import TEXT_NAME, text_index_bytes
from earthops_runtime.stac.query import item_time

INDEX_NAME = "index.parquet"
ROW_GROUP_SIZE = 10_000
HILBERT_ORDER = 16
#: File-level metadata key of earthops' own facts (format version, JSON-encoded property columns).
META_KEY = b"earthops:index"
FORMAT_VERSION = 1
STAC_GEOPARQUET_VERSION = "1.0.0"
EXTRA_PROPERTIES = "earthops:properties"
TIME_COLUMNS = ("datetime", "start_datetime", "end_datetime")
CORE_COLUMNS = ("type", "stac_version", "stac_extensions", "id", "collection", *TIME_COLUMNS, "bbox",
                "geometry", "assets", "links", EXTRA_PROPERTIES)
TIMESTAMP = pa.timestamp("us", tz="UTC")
BBOX = pa.struct([("xmin", pa.float64()), ("ymin", pa.float64()), ("xmax", pa.float64()),
                  ("ymax", pa.float64())])
#: Columns without useful min/max statistics (large, never range-filtered).
NO_STATISTICS = ("geometry", "assets", "links", EXTRA_PROPERTIES)


class IndexBuildError(ValueError):
    """An item cannot be put into the index (the message names the item and the field)."""


# --------------------------------------------------------------------------------------------------
# WKB (ISO, little endian): GeoJSON geometry <-> bytes

_WKB_TYPES = {"Point": 1, "LineString": 2, "Polygon": 3, "MultiPoint": 4, "MultiLineString": 5,
              "MultiPolygon": 6, "GeometryCollection": 7}
_WKB_NAMES = {v: k for k, v in _WKB_TYPES.items()}


def geometry_to_wkb(geometry: Mapping[str, Any]) -> bytes:
    """ISO WKB of a GeoJSON geometry (2-D, or 3-D when the coordinates have z)."""
    out = io.BytesIO()
    _write_wkb(out, geometry)
    return out.getvalue()


def _dims(coords: Any) -> int:
    while isinstance(coords, (list, tuple)) and coords and isinstance(coords[0], (list, tuple)):
        coords = coords[0]
    return 3 if isinstance(coords, (list, tuple)) and len(coords) >= 3 else 2


def _write_wkb(out: io.BytesIO, geom: Mapping[str, Any]) -> None:
    kind = geom.get("type")
    if kind not in _WKB_TYPES:
        raise IndexBuildError(f"geometry type {kind!r} is not GeoJSON")
    if kind == "GeometryCollection":
        parts = geom.get("geometries") or []
        out.write(struct.pack("<BII", 1, 7, len(parts)))
        for part in parts:
            _write_wkb(out, part)
        return
    coords = geom.get("coordinates")
    dims = _dims(coords)
    code = _WKB_TYPES[kind] + (1000 if dims == 3 else 0)
    out.write(struct.pack("<BI", 1, code))

    def point(c: Sequence[float]) -> None:
        out.write(struct.pack(f"<{dims}d", *[float(v) for v in c[:dims]]))

    def line(cs: Sequence[Sequence[float]]) -> None:
        out.write(struct.pack("<I", len(cs)))
        for c in cs:
            point(c)

    def polygon(rings: Sequence[Sequence[Sequence[float]]]) -> None:
        out.write(struct.pack("<I", len(rings)))
        for ring in rings:
            line(ring)

    if kind == "Point":
        point(coords)
    elif kind == "LineString":
        line(coords)
    elif kind == "Polygon":
        polygon(coords)
    else:  # Multi*: each member is a full WKB geometry
        single = {"MultiPoint": "Point", "MultiLineString": "LineString", "MultiPolygon": "Polygon"}[kind]
        out.write(struct.pack("<I", len(coords)))
        for member in coords:
            _write_wkb(out, {"type": single, "coordinates": member})


def wkb_to_geometry(data: bytes) -> dict[str, Any]:
    """GeoJSON geometry of ISO WKB (either byte order, 2-D or Z)."""
    geom, _ = _read_wkb(memoryview(data), 0)
    return geom


def _read_wkb(buf: memoryview, pos: int) -> tuple[dict[str, Any], int]:
    order = "<" if buf[pos] == 1 else ">"
    (code,) = struct.unpack_from(f"{order}I", buf, pos + 1)
    pos += 5
    if code & 0x80000000:  # EWKB z flag (PostGIS)
        code, dims = code & 0xFFFF, 3
    else:
        dims = 3 if 1000 <= code < 2000 else 2
        code %= 1000
    kind = _WKB_NAMES.get(code)
    if kind is None:
        raise IndexBuildError(f"WKB geometry type {code} is not supported")

    def point(p: int) -> tuple[list[float], int]:
        return list(struct.unpack_from(f"{order}{dims}d", buf, p)), p + 8 * dims

    def line(p: int) -> tuple[list[list[float]], int]:
        (n,) = struct.unpack_from(f"{order}I", buf, p)
        p += 4
        flat = struct.unpack_from(f"{order}{n * dims}d", buf, p)
        return [list(flat[i:i + dims]) for i in range(0, n * dims, dims)], p + 8 * n * dims

    def rings(p: int) -> tuple[list[Any], int]:
        (n,) = struct.unpack_from(f"{order}I", buf, p)
        p += 4
        out = []
        for _ in range(n):
            ring, p = line(p)
            out.append(ring)
        return out, p

    if kind == "Point":
        coords, pos = point(pos)
    elif kind == "LineString":
        coords, pos = line(pos)
    elif kind == "Polygon":
        coords, pos = rings(pos)
    else:
        (n,) = struct.unpack_from(f"{order}I", buf, pos)
        pos += 4
        members = []
        for _ in range(n):
            member, pos = _read_wkb(buf, pos)
            members.append(member)
        if kind == "GeometryCollection":
            return {"type": kind, "geometries": members}, pos
        coords = [m["coordinates"] for m in members]
    return {"type": kind, "coordinates": coords}, pos


_BOX_WKB = np.dtype([("order", "u1"), ("type", "<u4"), ("rings", "<u4"), ("points", "<u4"),
                     ("xy", "<f8", (10,))])


def box_wkb_array(xmin: np.ndarray, ymin: np.ndarray, xmax: np.ndarray, ymax: np.ndarray) -> pa.BinaryArray:
    """WKB polygons of many boxes at once (counter-clockwise rings), as an Arrow binary array:
    for synthetic or gridded items where building GeoJSON per row would dominate."""
    n = len(xmin)
    rec = np.zeros(n, dtype=_BOX_WKB)
    rec["order"], rec["type"], rec["rings"], rec["points"] = 1, 3, 1, 5
    xy = rec["xy"]
    for i, (xs, ys) in enumerate(((xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax), (xmin, ymin))):
        xy[:, 2 * i] = xs
        xy[:, 2 * i + 1] = ys
    offsets = np.arange(n + 1, dtype=np.int32) * _BOX_WKB.itemsize
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(rec.tobytes())])


# --------------------------------------------------------------------------------------------------
# Ordering


def hilbert_key(lon: np.ndarray, lat: np.ndarray, order: int = HILBERT_ORDER) -> np.ndarray:
    """Hilbert curve distance of lon/lat points on a ``2^order`` square grid (vectorised)."""
    n = 1 << order
    x = np.clip(((np.asarray(lon, dtype="f8") + 180.0) / 360.0 * n).astype(np.int64), 0, n - 1)
    y = np.clip(((np.asarray(lat, dtype="f8") + 90.0) / 180.0 * n).astype(np.int64), 0, n - 1)
    d = np.zeros(x.shape, dtype=np.int64)
    s = n >> 1
    while s > 0:
        rx = (x & s) > 0
        ry = (y & s) > 0
        d += s * s * ((3 * rx.astype(np.int64)) ^ ry.astype(np.int64))
        # rotate the quadrant
        flip = ~ry & rx
        x = np.where(flip, n - 1 - x, x)
        y = np.where(flip, n - 1 - y, y)
        swap = ~ry
        x, y = np.where(swap, y, x), np.where(swap, x, y)
        s >>= 1
    return d


def spatial_order(bbox: pa.StructArray | pa.ChunkedArray) -> np.ndarray:
    """Row order by the Hilbert key of the bbox centres (rows without a bbox last)."""
    if isinstance(bbox, pa.ChunkedArray):
        bbox = bbox.combine_chunks()
    fields = {name: bbox.field(name).to_numpy(zero_copy_only=False) for name in ("xmin", "ymin", "xmax", "ymax")}
    lon = np.nan_to_num((fields["xmin"] + fields["xmax"]) / 2, nan=180.0)
    lat = np.nan_to_num((fields["ymin"] + fields["ymax"]) / 2, nan=90.0)
    key = hilbert_key(lon, lat)
    if bbox.null_count:
        key = np.where(bbox.is_null().to_numpy(zero_copy_only=False), np.iinfo(np.int64).max, key)
    return np.argsort(key, kind="stable")


# --------------------------------------------------------------------------------------------------
# Items -> table


def parse_datetime(value: Any, *, what: str = "datetime") -> datetime | None:
    """An item's RFC 3339 timestamp (or datetime) as an aware UTC datetime, read as the search reads it
    (:func:`earthops_runtime.stac.query.item_time`); None stays None, anything unreadable is an error
    here (an index must not silently drop an item's time)."""
    if value is None:
        return None
    dt = item_time(value)
    if dt is None:
        raise IndexBuildError(f"{what}: {value!r} is not an RFC 3339 date-time")
    return dt


def format_datetime(dt: datetime | None) -> str | None:
    """RFC 3339 in UTC with ``Z``, microseconds only when there are some (as pystac writes it)."""
    if dt is None:
        return None
    dt = dt.astimezone(UTC)
    text = dt.replace(tzinfo=None).isoformat(timespec="microseconds" if dt.microsecond else "seconds")
    return text + "Z"


def _scalar_type(values: list[Any]) -> pa.DataType | None:
    """The Arrow type of a list of JSON scalars (None ignored), or None when not one scalar kind."""
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return pa.null()
    if kinds == {bool}:
        return pa.bool_()
    if kinds == {int}:
        return pa.int64() if all(-(2**63) <= v < 2**63 for v in values if v is not None) else None
    if kinds <= {int, float} and bool not in kinds:
        return pa.float64()
    if kinds == {str}:
        return pa.string()
    return None


def _property_column(values: list[Any]) -> tuple[pa.Array, bool]:
    """(column, is_json) for one property's values across the items (None = absent)."""
    scalar = _scalar_type(values)
    if scalar is not None:
        return pa.array(values, type=scalar), False
    present = [v for v in values if v is not None]
    if all(isinstance(v, list) for v in present):
        inner = _scalar_type([x for v in present for x in v])
        if inner is not None and inner != pa.null() and not any(x is None for v in present for x in v):
            return pa.array(values, type=pa.list_(inner)), False
    return pa.array([None if v is None else json.dumps(v, separators=(",", ":")) for v in values],
                    type=pa.string()), True


def items_table(items: Sequence[Mapping[str, Any]]) -> tuple[pa.Table, list[str]]:
    """STAC item dicts -> (unsorted index table, names of JSON-encoded property columns).

    Hrefs are taken as they are: pass items whose relative hrefs are relative to the index folder."""
    n = len(items)
    ids, collections, versions, extensions, assets, links, geoms, extras = [], [], [], [], [], [], [], []
    times: dict[str, list[datetime | None]] = {k: [] for k in TIME_COLUMNS}
    boxes: list[dict[str, float] | None] = []
    props: dict[str, list[Any]] = {}
    for i, item in enumerate(items):
        item_id = item.get("id")
        if not isinstance(item_id, str) or not item_id:
            raise IndexBuildError(f"item #{i}: no id")
        if item.get("type", "Feature") != "Feature":
            raise IndexBuildError(f"item {item_id}: type {item.get('type')!r} is not Feature")
        ids.append(item_id)
        collections.append(item.get("collection"))
        versions.append(item.get("stac_version"))
        extensions.append(list(item.get("stac_extensions") or []))
        assets.append(json.dumps(item.get("assets") or {}, separators=(",", ":")))
        links.append(json.dumps(item.get("links") or [], separators=(",", ":")))
        geometry = item.get("geometry")
        geoms.append(geometry_to_wkb(geometry) if geometry else None)
        bbox = item.get("bbox")
        if bbox:
            if len(bbox) not in (4, 6):
                raise IndexBuildError(f"item {item_id}: bbox {bbox!r} has not 4 or 6 numbers")
            half = len(bbox) // 2
            boxes.append({"xmin": float(bbox[0]), "ymin": float(bbox[1]),
                          "xmax": float(bbox[half]), "ymax": float(bbox[half + 1])})
        else:
            boxes.append(None)
        properties = dict(item.get("properties") or {})
        for key in TIME_COLUMNS:
            times[key].append(parse_datetime(properties.pop(key, None), what=f"item {item_id}: {key}"))
        clash = {k: properties.pop(k) for k in list(properties) if k in CORE_COLUMNS}
        extras.append(json.dumps(clash, separators=(",", ":")) if clash else None)
        for key, value in properties.items():
            column = props.get(key)
            if column is None:
                column = props[key] = [None] * i
            column.append(value)
        for column in props.values():
            if len(column) < i + 1:
                column.append(None)
    columns: dict[str, pa.Array] = {
        "type": pa.array(["Feature"] * n, type=pa.string()),
        "stac_version": pa.array(versions, type=pa.string()),
        "stac_extensions": pa.array(extensions, type=pa.list_(pa.string())),
        "id": pa.array(ids, type=pa.string()),
        "collection": pa.array(collections, type=pa.string()),
        **{k: pa.array(v, type=TIMESTAMP) for k, v in times.items()},
        "bbox": pa.array(boxes, type=BBOX),
        "geometry": pa.array(geoms, type=pa.binary()),
    }
    json_columns = []
    for key, values in props.items():
        columns[key], is_json = _property_column(values)
        if is_json:
            json_columns.append(key)
    columns["assets"] = pa.array(assets, type=pa.string())
    columns["links"] = pa.array(links, type=pa.string())
    if any(e is not None for e in extras):
        columns[EXTRA_PROPERTIES] = pa.array(extras, type=pa.string())
    return pa.table(columns), json_columns


# --------------------------------------------------------------------------------------------------
# Writing


def _geo_metadata(geometry_types: Iterable[str]) -> dict[str, Any]:
    return {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {"geometry": {
            "encoding": "WKB",
            "geometry_types": sorted(set(geometry_types)),
            # no "crs": GeoParquet's default, OGC:CRS84 (lon/lat WGS84), which is what STAC uses
            "covering": {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}},
        }},
    }


def sorted_table(table: pa.Table) -> pa.Table:
    """The index table in its stored order (:func:`spatial_order`): row numbers of the file are
    positions in this table (the free-text index refers to them)."""
    missing = [c for c in ("id", "collection", *TIME_COLUMNS, "bbox", "geometry", "assets", "links")
               if c not in table.column_names]
    if missing:
        raise IndexBuildError(f"index table lacks the columns {missing}")
    return table.take(pa.array(spatial_order(table.column("bbox")))) if table.num_rows else table


def index_bytes(table: pa.Table, *, json_columns: Sequence[str] = (), geometry_types: Iterable[str] = ("Polygon",),
                row_group_size: int = ROW_GROUP_SIZE, presorted: bool = False) -> bytes:
    """The Parquet bytes of an index table: rows sorted by :func:`spatial_order` (unless
    ``presorted``: :func:`sorted_table` already applied), row groups of ``row_group_size``,
    GeoParquet and earthops metadata in the footer."""
    if not presorted:
        table = sorted_table(table)
    meta = dict(table.schema.metadata or {})
    meta[b"geo"] = json.dumps(_geo_metadata(geometry_types)).encode()
    meta[b"stac-geoparquet"] = json.dumps({"version": STAC_GEOPARQUET_VERSION}).encode()
    meta[META_KEY] = json.dumps({"version": FORMAT_VERSION, "json_properties": sorted(json_columns),
                                 "hrefs": "relative to the folder of this file"}).encode()
    table = table.replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    stats = _statistics_columns(table.schema)
    pq.write_table(table, sink, row_group_size=row_group_size, compression=COMPRESSION,
                   write_statistics=stats, use_dictionary=dictionary_columns(table))
    return sink.getvalue().to_pybytes()


def _statistics_columns(schema: pa.Schema) -> list[str]:
    """Parquet leaf paths that get min/max statistics (pyarrow matches leaves, not struct names:
    the bbox statistics are what prunes row groups)."""
    return [path for path, name, _ in leaves(schema) if name not in NO_STATISTICS]


def write_index(store: Any, key: str, items: Sequence[Mapping[str, Any]], *,
                row_group_size: int = ROW_GROUP_SIZE) -> int:
    """Write the index of ``items`` (STAC item dicts, relative hrefs relative to the folder of ``key``)
    to ``key`` of ``store``, and its free-text index (``text.parquet``) and row store (``rows.arrow``)
    beside it (write them into a run being published: they appear together). Returns the number of rows."""
    table, json_columns = items_table(items)
    types = {it["geometry"]["type"] for it in items if it.get("geometry")} or {"Polygon"}
    return write_index_table(store, key, table, json_columns=json_columns, geometry_types=types,
                             row_group_size=row_group_size)


def write_index_table(store: Any, key: str, table: pa.Table, *, json_columns: Sequence[str] = (),
                      geometry_types: Iterable[str] = ("Polygon",), row_group_size: int = ROW_GROUP_SIZE) -> int:
    """Write an index built column-wise (large or synthetic sets; see :func:`box_wkb_array`) and its
    free-text index (:mod:`earthops_runtime.catalog.textindex`) and row store
    (:mod:`earthops_runtime.catalog.rowstore`) beside it: the table must follow the schema above.
    Returns the number of rows."""
    for name, wanted in (("bbox", BBOX), *((t, TIMESTAMP) for t in TIME_COLUMNS)):
        if name in table.column_names and table.schema.field(name).type != wanted:
            raise IndexBuildError(f"column {name} is {table.schema.field(name).type}, expected {wanted}")
    table = sorted_table(table)
    store.write_bytes(key, index_bytes(table, json_columns=json_columns, geometry_types=geometry_types,
                                       row_group_size=row_group_size, presorted=True))
    folder = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
    store.write_bytes(folder + TEXT_NAME, text_index_bytes(table, json_columns=frozenset(json_columns),
                                                           core=frozenset(CORE_COLUMNS)))
    store.write_bytes(folder + ROWS_NAME, rows_bytes(table))
    return table.num_rows


def json_properties(schema: pa.Schema) -> set[str]:
    """The JSON-encoded property columns named in an index file's metadata."""
    raw = (schema.metadata or {}).get(META_KEY)
    if not raw:
        return set()
    return set(json.loads(raw).get("json_properties", []))


__all__ = [
    "BBOX", "CORE_COLUMNS", "INDEX_NAME", "IndexBuildError", "ROW_GROUP_SIZE", "TIMESTAMP", "box_wkb_array", "format_datetime",
    "geometry_to_wkb", "hilbert_key", "index_bytes", "sorted_table", "items_table", "json_properties", "parse_datetime",
    "spatial_order", "wkb_to_geometry", "write_index", "write_index_table",
]
