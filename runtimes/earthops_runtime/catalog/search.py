"""STAC item search over the store: every published run's ``index.parquet``, queried with core DuckDB.

:func:`search` answers what a STAC API ``/search`` answers (collections, ids, bbox, datetime, CQL2
filter, limit) without a server:

* **Discovery** (:func:`index_keys`): the ``index.parquet`` of every *published* run under
  ``datasets/<ns>/<name>/<run-id>/`` and ``models/<ns>/<model>/<version>/`` (runs being written are
  invisible, as everywhere in the store). On S3 the files are copied once into a local cache keyed
  by the run's publication marker (published runs are immutable): DuckDB's ``httpfs`` cannot be
  downloaded here, so DuckDB only ever reads local files.
* **What a query means** is :mod:`earthops_runtime.stac.query`, the semantics ingestion uses too:
  arguments are parsed into a :class:`~earthops_runtime.stac.query.Query` there (RFC 3339 with a
  time zone, a date is its whole day, bbox west > east crosses the antimeridian, CQL2 checked), and
  the exact tests on a candidate (its geometry meets the bbox; the filter terms left to Python) are
  the Query's. DuckDB only pre-selects, with the parsed values:
* **bbox and datetime** are plain column predicates on ``bbox.xmin/ymin/xmax/ymax`` and the three
  timestamp columns. The item's bbox pre-selects; the item's geometry (WKB, decoded here) decides. The
  datetime predicate is the Query's item time written in SQL: ``[start_datetime, end_datetime]`` when
  the item has both, else its ``datetime``, meeting the interval. **Row groups are chosen here**
  (:class:`RowGroups`, :func:`ruled_out`): the statistics of every file version are read once, a
  query keeps the row groups they do not rule out (the index is Hilbert-sorted, so a bbox keeps few),
  reads their bbox and time columns, then every column of the row groups where some row may match
  (string columns stored with a dictionary read as one: a third of the decoding saved), and hands
  DuckDB those rows as Arrow tables (with the file name and row number columns its reader would
  add), where the same SQL decides. More than :data:`CHOSEN_ROWS_MAX` rows (a large bbox, a
  datetime alone over a long archive), more than :data:`CHOSEN_GROUPS_SHARE` of the row groups (a
  small index), or no bbox or datetime: the files are streamed through DuckDB's reader instead.
  DuckDB would skip the same row groups itself, but it weighs every row group's statistics on every
  query: over a 10M-item index that was a third of a query's time.
* **CQL2**: the top-level ``AND`` terms that ``cql2`` translates to SQL DuckDB can bind (comparisons,
  LIKE, IN, BETWEEN, IS NULL, CASEI, array and temporal operators over index columns) run in DuckDB;
  the rest (spatial operators: core DuckDB has no geometry functions; ``properties.``-prefixed names;
  properties no index has) are evaluated on each remaining candidate as the Query does. A property an
  item lacks makes a comparison unknown, hence false, in both paths (SQL NULL semantics).
* **q** (free text, :mod:`earthops_runtime.stac.text`): each index's inverted index (``text.parquet``,
  read by :class:`~earthops_runtime.catalog.textindex.TextIndex`, which also chooses its row groups
  by their term and block statistics) gives the items holding each term and how often; the
  query tree is evaluated on those row sets (numpy; a bitmap for sets of millions of rows),
  relevance computed from the counts and the document frequencies summed over every index searched,
  and the candidates (file, row, relevance) joined to the index rows in DuckDB, where the other
  criteria prune and order them (relevance first). For a page whose order SQL decides alone (a
  limit; no sortby, bbox geometry, residual filter or long phrase) only the candidates that can be on
  it are joined: relevance at least the page's last, and of a large tie on relevance (a frequent
  term) those at least as new as the page's last; few candidates are joined with their own rows
  (read here), not with every row of the files. Phrases of three or more tokens are pre-selected by
  their bigrams and checked exactly on the item. An index published before text indexes existed
  gets one built once into the cache.
* **Row stores** (:mod:`earthops_runtime.catalog.rowstore`, ``rows.arrow`` beside each index): a
  query without a filter or sortby over row groups chosen here registers only the narrow columns
  (:data:`NARROW_COLUMNS`, read with the candidates' bbox and times) and the row numbers; SQL decides
  on them, and the rows it hands over are taken whole from the row stores (a page: its own rows, not
  whole row groups decoded). Free text there with only a bbox and a datetime ranks the rows their
  bbox and times let through (a superset: no statement selects them first); the join applies the
  criteria, and a page whose most relevant candidates fail them runs again with the rows SQL selects.
* **A page** (a limit): when SQL decides every criterion, it applies the limit itself; when Python
  decides one (the geometry, a residual filter, a long phrase), SQL hands over only the first
  :func:`overfetch` rows of its order (free text: of the most relevant candidates), a top-N rather
  than a whole sort, and a page Python leaves short while more rows could follow runs again over
  every row.
* Results are STAC item dicts in the Query's order (:data:`~earthops_runtime.stac.query.ORDER`:
  newest first, then collection, then id, descending, as pgstac), written as the SQL ORDER BY;
  relative hrefs resolved against the index's URL.

Errors in the arguments raise :class:`SearchError` (the query module's, re-exported here), whose
``parameter`` names the argument.

DuckDB's extension auto-install and auto-load are switched off, so a query never tries the network.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import posixpath
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from earthops.core.store import MARKER
from earthops_runtime.cache import cache_root, per_file_version
from earthops_runtime.catalog import rowstore, textindex
from earthops_runtime.catalog.index import (
    CORE_COLUMNS,
    EXTRA_PROPERTIES,
    INDEX_NAME,
    TIME_COLUMNS,
    format_datetime,
    json_properties,
    wkb_to_geometry,
)
from earthops_runtime.stac import text as free_text
from earthops_runtime.stac.query import (
    ORDER,
    Box,
    Query,
    SearchError,
    expr_matches,
    geometry_intersects_box,
    parse_bbox,
    parse_filter,
    parse_interval,
)

#: Store areas whose runs may carry an index.
AREAS = ("datasets", "models")
#: Rows fetched from DuckDB at a time when candidates are filtered here.
BATCH_ROWS = 2048
FILE_COLUMN = "__earthops_index_file"
ROW_COLUMN = "file_row_number"
SCORE_COLUMN = "__earthops_score"

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
        beside = ((f"{run_key}/{textindex.TEXT_NAME}", _cached_text_path(path)),
                  (f"{run_key}/{rowstore.ROWS_NAME}", _cached_rows_path(path)))
        for source, dest in (*beside, (key, path)):  # the index last: it marks a copy complete
            if not dest.is_file() and (source == key or store.exists(source)):
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}-{threading.get_ident()}")
                try:
                    store.download(source, tmp)  # streamed: a 10M-item row store is gigabytes
                except BaseException:
                    tmp.unlink(missing_ok=True)  # no part of a copy is left in the cache
                    raise
                os.replace(tmp, dest)
        out[os.fspath(path)] = url
    return out


def _cached_text_path(index_path: os.PathLike[str] | str) -> Any:
    from pathlib import Path

    path = Path(index_path)
    return path.with_name(path.stem + ".text.parquet")


def _cached_rows_path(index_path: os.PathLike[str] | str) -> Any:
    from pathlib import Path

    path = Path(index_path)
    return path.with_name(path.stem + ".rows.arrow")


def row_store_of(index_path: str) -> rowstore.RowStore | None:
    """The row store of a local index file (``rows.arrow`` beside it in the store, or beside its cached
    copy), None when it has none (published before row stores existed) or one that does not match it
    (another row count or other columns)."""
    from pathlib import Path

    path = Path(index_path)
    rows = rowstore.row_store(os.fspath(path.with_name(rowstore.ROWS_NAME) if path.name == INDEX_NAME
                                        else _cached_rows_path(path)))
    if rows is None:
        return None
    groups = row_groups(index_path)
    if rows.rows != int(groups.rows.sum()) or rows.schema.names != groups.names:
        return None
    return rows


def text_file(index_path: str) -> str:
    """The free-text index of a local index file: beside it in the store (``text.parquet``), beside its
    cached copy (``<digest>.text.parquet``), or else (a run published before text indexes existed)
    built once from the index into the cache."""
    from pathlib import Path

    path = Path(index_path)
    beside = path.with_name(textindex.TEXT_NAME) if path.name == INDEX_NAME else _cached_text_path(path)
    if beside.is_file():
        return os.fspath(beside)
    st = os.stat(index_path)
    digest = hashlib.sha256(f"{index_path}\n{st.st_size}\n{st.st_mtime_ns}".encode()).hexdigest()[:32]
    built = cache_root("text") / f"{digest}.parquet"
    if not built.is_file():
        import pyarrow.parquet as pq

        table = pq.read_table(index_path)
        data = textindex.text_index_bytes(table, json_columns=_json_columns(index_path),
                                          core=frozenset(CORE_COLUMNS))
        built.parent.mkdir(parents=True, exist_ok=True)
        tmp = built.with_name(f"{built.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        tmp.write_bytes(data)
        os.replace(tmp, built)
    return os.fspath(built)


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


def _source(paths: Iterable[str], *, row_numbers: bool = False) -> str:
    files = ", ".join(_sql_string(p) for p in paths)
    return (f"read_parquet([{files}], union_by_name = true, filename = {_sql_string(FILE_COLUMN)}"
            + (", file_row_number = true)" if row_numbers else ")"))


# --------------------------------------------------------------------------------------------------
# Row groups chosen here

#: Free-text candidates tied with the last of a page above which their item times are read to cut them.
TIES_READ_TIMES = 4096
#: Rows of the chosen row groups above which a query streams the files through DuckDB instead.
CHOSEN_ROWS_MAX = 250_000
#: Row groups are chosen here only when those chosen are at most this share of all: DuckDB reads a row
#: group it keeps faster than Arrow + DuckDB do, and weighs the statistics of every row group (about
#: 10 us each) — measured: 1M items (100 row groups, ~2 kept) 11.4 ms by DuckDB against 15.7 ms
#: chosen here; 10M items (1,000 row groups, ~4 kept) 46.3 ms against 30.4 ms.
CHOSEN_GROUPS_SHARE = 0.01
_BOX_STATS = (("xmin", "min"), ("ymin", "min"), ("xmax", "max"), ("ymax", "max"))


class RowGroups:
    """The row-group statistics of one index file version that a bbox and a datetime prune by: the
    metadata (read once), per row group the least ``bbox.xmin``/``ymin`` and greatest ``xmax``/``ymax``,
    the earliest and latest instant of its item times (microseconds; NaN where unknown) and its first
    row's number."""

    def __init__(self, path: str):
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.metadata = md = pq.read_metadata(path)
        n = md.num_row_groups
        columns = {md.schema.column(i).path: i for i in range(md.num_columns)}
        self.rows = np.array([md.row_group(g).num_rows for g in range(n)], dtype=np.int64)
        self.first_row = np.concatenate([[0], np.cumsum(self.rows)[:-1]]).astype(np.int64)
        self.box = {key: self._bound(columns.get(f"bbox.{key}"), agg) for key, agg in _BOX_STATS}
        # an item's time starts no earlier than the least datetime or start_datetime, ends no later than
        # the greatest datetime or end_datetime; a column with no value in the row group says nothing
        self.time_lo = self._time_bound(columns, ("datetime", "start_datetime"), "min")
        self.time_hi = self._time_bound(columns, ("datetime", "end_datetime"), "max")
        # string columns stored with a dictionary are read as one (indices into it; what a query decodes
        # of them is then the dictionary, not a string per row: a third of a row group's decoding)
        schema = md.schema.to_arrow_schema()
        #: the file's column names
        self.names = schema.names
        self.dictionary = [
            field.name for field in schema
            if (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)) and n
            and field.name in columns and md.row_group(0).column(columns[field.name]).has_dictionary_page]

    def _values(self, column: int | None, agg: str) -> list[float | None]:
        """Per row group: the min or max of ``column`` (a float; a datetime as microseconds), None when
        the column holds no value there, NaN when that is not known."""
        nan = float("nan")
        out: list[float | None] = []
        for g in range(self.metadata.num_row_groups):
            stats = None if column is None else self.metadata.row_group(g).column(column).statistics
            if column is None:
                out.append(None)  # no such column: no value
            elif stats is None:
                out.append(nan)
            elif stats.has_min_max:
                value = getattr(stats, agg)
                if isinstance(value, datetime):  # a timestamp without a zone is UTC, as Arrow casts it
                    value = (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp() * 1e6
                out.append(float(value))
            elif stats.has_null_count and stats.null_count == self.rows[g]:
                out.append(None)
            else:
                out.append(nan)
        return out

    def _bound(self, column: int | None, agg: str) -> Any:
        import numpy as np

        return np.array([float("nan") if v is None else v for v in self._values(column, agg)], dtype=np.float64)

    def _time_bound(self, columns: Mapping[str, int], names: Sequence[str], agg: str) -> Any:
        import numpy as np

        per_column = [self._values(columns.get(name), agg) for name in names]
        out = []
        for values in zip(*per_column):
            if any(v is not None and v != v for v in values):  # NaN: some column's values are unknown
                out.append(float("nan"))
                continue
            known = [v for v in values if v is not None]
            out.append((min(known) if agg == "min" else max(known)) if known else float("nan"))
        return np.array(out, dtype=np.float64)

    def group_of(self, rows: Any) -> Any:
        """The row group holding each of ``rows`` (row numbers in the file)."""
        import numpy as np

        return np.searchsorted(self.first_row, rows, side="right") - 1

    def chosen(self, box: Box | None, start: datetime | None, end: datetime | None) -> Any:
        """Indices of the row groups that may hold a row meeting the SQL bbox and datetime predicates
        (:func:`_bbox_sql`, :func:`_datetime_sql`): a row group is left out only when its statistics
        prove that none does."""
        import numpy as np

        return np.nonzero(~ruled_out(box, start, end, *(self.box[k] for k in ("xmin", "ymin", "xmax", "ymax")),
                                     self.time_lo, self.time_hi))[0]


def ruled_out(box: Box | None, start: datetime | None, end: datetime | None, xmin: Any, ymin: Any, xmax: Any,
              ymax: Any, time_lo: Any, time_hi: Any) -> Any:
    """Where bounds prove the SQL bbox and datetime predicates (:func:`_bbox_sql`, :func:`_datetime_sql`)
    false, as a numpy bool array: ``xmin``..``ymax`` bound the bbox fields from below (``xmin``,
    ``ymin``) or above (``xmax``, ``ymax``), ``time_lo``/``time_hi`` the item time's start from below and
    its end from above (microseconds since the epoch). NaN is unknown and rules nothing out. Bounds
    of a row group's rows (its statistics) or of one row (its values)."""
    import numpy as np

    out = np.zeros(np.shape(time_lo), dtype=bool)
    with np.errstate(invalid="ignore"):  # NaN compares false
        if box is not None:
            w, s, e, n = box
            out |= (ymin > n) | (ymax < s)
            out |= ((xmin > e) | (xmax < w)) if w <= e else ((xmax < w) & (xmin > e))
        if end is not None:
            out |= time_lo > end.timestamp() * 1e6
        if start is not None:
            out |= time_hi < start.timestamp() * 1e6
    return out


def _candidate_rows(file: Any, groups: RowGroups, picked: Any, query: Query,
                    columns: Sequence[str] = ()) -> tuple[Any, Any]:
    """The row numbers (sorted) of the ``picked`` row groups of ``file`` that may meet the query's bbox
    and datetime, from their bbox and time columns alone: a superset of what the SQL predicates select
    (a missing value keeps its row), which DuckDB then applies exactly; and, when ``columns`` are
    named, those columns of these rows (read with the bbox and time columns: one read), else None."""
    import numpy as np

    names = file.schema_arrow.names
    narrow = [c for c in ("bbox", *TIME_COLUMNS) if c in names]
    wanted = list(dict.fromkeys([*narrow, *(c for c in columns if c in names)]))
    picked = [int(g) for g in picked]
    if not picked:
        return np.zeros(0, dtype=np.int64), file.schema_arrow.empty_table().select(wanted) if columns else None
    read = file.read_row_groups(picked, columns=wanted)
    keep = _may_match(read, query)
    offsets = np.concatenate([groups.first_row[g] + np.arange(groups.rows[g]) for g in picked])
    return offsets[keep].astype(np.int64), read.filter(keep).select([c for c in columns if c in names]) if columns else None


def _rows_table(path: str, rows: Any, row_numbers: bool, columns: Sequence[str] | None = None,
                decoded: dict[int, Any] | None = None) -> Any:
    """The given rows (row numbers, in the order wanted) of an index file as an Arrow table
    (``columns``, default every one, then ``file_row_number`` when asked, then the file name): the row
    groups holding them are read, and those rows taken. ``decoded`` (every column): row group -> its
    table, kept across calls, so a row group is decoded once for its caller."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    groups = row_groups(path)
    file = pq.ParquetFile(path, metadata=groups.metadata, read_dictionary=groups.dictionary)
    where = groups.group_of(rows)
    held = np.unique(where)
    if len(held):
        if decoded is None:
            read = file.read_row_groups(held.tolist(), columns=columns)
        else:
            missing = [g for g in held.tolist() if g not in decoded]
            if missing:
                fresh = file.read_row_groups(missing, columns=columns)
                for g, start in zip(missing, np.concatenate([[0], np.cumsum(groups.rows[missing])[:-1]]).tolist()):
                    decoded[g] = fresh.slice(start, int(groups.rows[g]))
            read = pa.concat_tables([decoded[g] for g in held.tolist()])
        starts = np.concatenate([[0], np.cumsum(groups.rows[held])[:-1]])  # each held group's first row in `read`
        table = read.take(pa.array(starts[np.searchsorted(held, where)] + rows - groups.first_row[where]))
    else:
        table = file.schema_arrow.empty_table()
        table = table if columns is None else table.select(columns)
    if row_numbers:
        table = table.append_column(ROW_COLUMN, pa.array(np.asarray(rows, dtype=np.int64), type=pa.int64()))
    return table.append_column(FILE_COLUMN, pa.repeat(pa.scalar(path, type=pa.string()), table.num_rows))


def _rows_source(cur: Any, rows: Mapping[str, Any], row_numbers: bool,
                 tables: Mapping[str, Any] | None = None) -> str:
    """The given rows of each index file (path -> sorted row numbers), registered with ``cur`` (for as
    long as it is open) as an SQL source with the file and row-number columns DuckDB's reader adds:
    every column read here, or the ``tables`` given (path -> those rows, already read)."""
    import pyarrow as pa

    names = []
    for i, (path, numbers) in enumerate(rows.items()):
        names.append(f"earthops_rows_{i}")
        if tables is None:
            table = _rows_table(path, numbers, row_numbers)
        else:
            table = tables[path]
            if row_numbers:
                table = table.append_column(ROW_COLUMN, pa.array(numbers, type=pa.int64()))
            table = table.append_column(FILE_COLUMN, pa.repeat(pa.scalar(path, type=pa.string()), table.num_rows))
        cur.register(names[-1], table)
    return " UNION ALL BY NAME ".join(f"SELECT * FROM {name}" for name in names).join("()")


def _may_match(table: Any, query: Query) -> Any:
    """Per row: False only when its bbox or its times prove the SQL predicates false (numpy bool array;
    a missing value is NaN, which keeps the row)."""
    import numpy as np
    import pyarrow.compute as pc

    nan = np.full(table.num_rows, np.nan)
    bbox = table.column("bbox") if "bbox" in table.column_names else None
    x0, y0, x1, y1 = (nan if bbox is None else _floats(pc.struct_field(bbox, k)) for k in ("xmin", "ymin", "xmax", "ymax"))
    times = {c: _floats(table.column(c)) for c in TIME_COLUMNS if c in table.column_names}
    lo = np.fmin(times.get("datetime", nan), times.get("start_datetime", nan))  # NaN only where both are
    hi = np.fmax(times.get("datetime", nan), times.get("end_datetime", nan))
    return ~ruled_out(query.space_box, query.start, query.end, x0, y0, x1, y1, lo, hi)


def _floats(column: Any) -> Any:
    """A numeric or timestamp column as float64 numpy (a timestamp in microseconds since the epoch, as
    :class:`RowGroups` reads its statistics; a timestamp without a zone is UTC); NaN where null."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_timestamp(column.type):
        column = pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64())
    return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)


@per_file_version(maxsize=256)
def row_groups(path: str) -> RowGroups:
    """The :class:`RowGroups` of an index file (its footer read once per file version)."""
    return RowGroups(path)


#: Rows of one index file in one slice of an answer above which they are read from its row groups decoded
#: whole (kept for the rest of the query), not from its row store (one batch read a row): measured at
#: 10M items, ten random rows took ~2 ms from the row store, four row groups ~6 ms to decode.
ROW_STORE_ROWS_MAX = 48
#: The columns a query without a filter or sortby needs in SQL (its criteria and its order) when the
#: rows of its page are taken from the row stores.
NARROW_COLUMNS = ("id", "collection", "bbox", *TIME_COLUMNS)


def _chosen_source(cur: Any, files: Iterable[str], query: Query, row_numbers: bool,
                   narrow: bool = False, rows_out: dict[str, Any] | None = None) -> str | None:
    """A bbox or datetime query over few row groups: the rows of those row groups of every file that
    may match, read here (Arrow, with the file and row-number columns DuckDB's reader would add) and
    registered with ``cur`` (for as long as it is open), as an SQL source. None (stream the files
    through DuckDB) without a bbox or datetime, when the row groups chosen hold more than
    :data:`CHOSEN_ROWS_MAX` rows, or are more than :data:`CHOSEN_GROUPS_SHARE` of all. DuckDB would
    skip the same row groups by the same statistics, but it weighs every row group's statistics on
    every query (a third of a bbox + datetime query's time over a 10M-item index). ``narrow``: only
    :data:`NARROW_COLUMNS` and the row numbers (read with the bbox and time columns), for a query
    whose items are then taken from the row stores. ``rows_out`` gets the row numbers registered, per
    file: a superset of those meeting the bbox and datetime predicates."""
    import pyarrow.parquet as pq

    if query.space_box is None and not query.has_interval:
        return None
    chosen = []
    for path in files:
        groups = row_groups(path)
        chosen.append((path, groups, groups.chosen(query.space_box, query.start, query.end)))
    if sum(int(groups.rows[picked].sum()) for _, groups, picked in chosen) > CHOSEN_ROWS_MAX or \
            sum(len(picked) for *_, picked in chosen) > CHOSEN_GROUPS_SHARE * sum(len(g.rows) for _, g, _ in chosen):
        return None
    found = {path: _candidate_rows(pq.ParquetFile(path, metadata=groups.metadata, read_dictionary=groups.dictionary),
                                   groups, picked, query, NARROW_COLUMNS if narrow else ())
             for path, groups, picked in chosen}
    if rows_out is not None:
        rows_out.update({p: rows for p, (rows, _) in found.items()})
    if narrow:
        return _rows_source(cur, {p: rows for p, (rows, _) in found.items()}, True,
                            tables={p: table for p, (_, table) in found.items()})
    return _rows_source(cur, {p: rows for p, (rows, _) in found.items()}, row_numbers)


def _bbox_sql(box: Box, params: dict[str, Any]) -> str:
    w, s, e, n = box
    params.update(bw=w, bs=s, be=e, bn=n)
    lat = "bbox.ymin <= $bn AND bbox.ymax >= $bs"
    if w <= e:
        return f"(bbox.xmin <= $be AND bbox.xmax >= $bw AND {lat})"
    # crosses the antimeridian: [w, 180] or [-180, e]
    return f"((bbox.xmax >= $bw OR bbox.xmin <= $be) AND {lat})"


#: The item's time as :func:`earthops_runtime.stac.query.item_interval` reads it (pgstac's rule).
_RANGED = "(start_datetime IS NOT NULL AND end_datetime IS NOT NULL)"
_TIME_START = f"CASE WHEN {_RANGED} THEN start_datetime ELSE datetime END"
_TIME_END = f"CASE WHEN {_RANGED} THEN end_datetime ELSE datetime END"
#: SQL of each key of the Query's ORDER.
_ORDER_SQL = {"datetime": _TIME_START, "collection": "collection", "id": "id"}
ORDER_BY = "ORDER BY " + ", ".join(f"{_ORDER_SQL[key]} {'DESC' if desc else 'ASC'} NULLS LAST" for key, desc in ORDER)


def _datetime_sql(start: datetime | None, end: datetime | None, params: dict[str, Any]) -> str:
    terms = []
    if end is not None:
        params["t1"] = end
        terms.append(f"{_TIME_START} <= $t1")
    if start is not None:
        params["t0"] = start
        terms.append(f"{_TIME_END} >= $t0")
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


@per_file_version(maxsize=1024)
def _json_columns(path: str) -> frozenset[str]:
    """The JSON-encoded property columns of an index file (once per file version)."""
    return frozenset(json_properties(_schema(path)))


def _schema(path: str) -> Any:
    """The Arrow schema of an index file (from the footer :func:`row_groups` read)."""
    return row_groups(path).metadata.schema.to_arrow_schema()


def _order_sql(files: Iterable[str], query: Query, relevance: str) -> str:
    """ORDER BY of a query: its sortby fields (missing values last), relevance, then :data:`ORDER`."""
    terms = []
    if query.sortby:
        schemas = []
        for path in files:
            schemas.append((_schema(path), _json_columns(path)))
        for field, desc in query.sortby:
            if field in _ORDER_SQL:
                expr = _ORDER_SQL[field]
            elif not any(field in schema.names for schema, _ in schemas):
                continue  # no item has it: every value is missing, the order is the next field's
            elif any(field in json_cols for _, json_cols in schemas):
                raise SearchError("sortby", f"field {field!r} holds objects or mixed types and cannot be sorted on")
            else:
                expr = '"' + field.replace('"', '""') + '"'
            terms.append(f"{expr} {'DESC' if desc else 'ASC'} NULLS LAST")
    if relevance:
        terms.append(relevance)
    return "ORDER BY " + ", ".join([*terms, ORDER_BY.removeprefix("ORDER BY ")])


class _Rows:
    """Turns index rows into STAC item dicts (per-file JSON columns and href bases). With ``stores``
    (index file -> its row store), the rows SQL hands over are narrow (the file and row number are what
    counts) and are taken whole from the row stores (:meth:`whole`)."""

    def __init__(self, files: Mapping[str, str], stores: Mapping[str, rowstore.RowStore | None] | None = None):
        self.base = {path: url.rsplit("/", 1)[0] for path, url in files.items()}
        self.json_columns = {path: _json_columns(path) for path in files}
        self.stores = stores
        self._decoded: dict[str, dict[int, Any]] = {}  # index file -> row group -> its decoded table

    def whole(self, batch: Any) -> list[dict[str, Any]]:
        """The rows of a record batch as dicts: as they are, or (row stores) each taken whole from its
        file's row store, with the file column."""
        if self.stores is None:
            return batch.to_pylist()
        import numpy as np

        files = batch.column(FILE_COLUMN).to_pylist()
        numbers = batch.column(ROW_COLUMN).to_numpy(zero_copy_only=False)
        out: list[dict[str, Any]] = [{} for _ in files]
        for path in dict.fromkeys(files):
            mine = np.flatnonzero([f == path for f in files])
            # a few rows: one row store batch each; many (a long answer): their row groups decoded whole
            few = len(mine) <= ROW_STORE_ROWS_MAX and path not in self._decoded
            taken = (self.stores[path].take(numbers[mine]) if few  # type: ignore[union-attr]
                     else _rows_table(path, numbers[mine], False, decoded=self._decoded.setdefault(path, {})))
            for i, row in zip(mine.tolist(), taken.to_pylist()):
                row[FILE_COLUMN] = path
                out[i] = row
        return out

    def item(self, row: dict[str, Any]) -> dict[str, Any]:
        path = row.pop(FILE_COLUMN)
        row.pop(ROW_COLUMN, None)
        row.pop(SCORE_COLUMN, None)
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
           limit: int | None = None, q: Any = None, sortby: Any = None) -> list[dict[str, Any]]:
    """STAC items of every published index in ``store`` that match all the given criteria.

    ``collections``/``ids``: any of these; ``bbox``: ``[w, s, e, n]`` (geometry intersects);
    ``datetime``: RFC 3339 instant or interval (``A/B``, ``..`` open); ``filter``: CQL2 (dict, JSON
    text or text); ``q``: free text (ranked by relevance); ``sortby``: the sort extension's fields;
    ``limit``: at most this many (newest first).
    Raises :class:`SearchError` (before anything is read) for a bad argument."""
    query = Query.parse(collections=collections, ids=ids, bbox=bbox, datetime=datetime, filter=filter, limit=limit,
                        q=q, sortby=sortby)
    return list(run_query(query, local_index_files(store)))


def local_index_files(store: Any) -> dict[str, str]:
    """Local path -> store URL of the index of every published run (remote ones copied into the cache)."""
    return _local_files(store, index_keys(store))


def search_files(files: Mapping[str, str], *, collections: Sequence[str] | str | None = None,
                 ids: Sequence[str] | None = None, bbox: Any = None, datetime: Any = None,
                 filter: Any = None, limit: int | None = None, q: Any = None) -> list[dict[str, Any]]:  # noqa: A002
    """:func:`search` over given index files (local path -> URL the hrefs resolve against)."""
    return list(iter_search(files, collections=collections, ids=ids, bbox=bbox, datetime=datetime,
                            filter=filter, limit=limit, q=q))


def iter_search(files: Mapping[str, str], *, collections: Sequence[str] | str | None = None,
                ids: Sequence[str] | None = None, bbox: Any = None, datetime: Any = None,
                filter: Any = None, limit: int | None = None, q: Any = None) -> Iterator[dict[str, Any]]:  # noqa: A002
    """The items of :func:`search_files`, one at a time (arguments are checked before the first)."""
    query = Query.parse(collections=collections, ids=ids, bbox=bbox, datetime=datetime, filter=filter, limit=limit,
                        q=q)
    return run_query(query, files)


def run_query(query: Query, files: Mapping[str, str]) -> Iterator[dict[str, Any]]:
    """The items of the index ``files`` (local path -> URL) that ``query`` selects, in its order."""
    if not files or query.collections == () or query.ids == ():
        return iter(())
    return _run(files, query)


def _in_list(column: str, values: Sequence[str], prefix: str, params: dict[str, Any]) -> str:
    names = []
    for i, value in enumerate(values):
        params[f"{prefix}{i}"] = value
        names.append(f"${prefix}{i}")
    return f"{column} IN ({', '.join(names)})"


# --------------------------------------------------------------------------------------------------
# Free text over the inverted indexes


@per_file_version(maxsize=256)
def _text_index(path: str) -> textindex.TextIndex:
    """The :class:`~earthops_runtime.catalog.textindex.TextIndex` of a text index file (its footer read
    once per file version)."""
    return textindex.TextIndex(path)


def _postings(text_files: Mapping[str, str], terms: Sequence[str],
              blocks: Any = None) -> dict[tuple[str, str], tuple[Any, Any]]:
    """(index file, term) -> (docs, tf) numpy arrays for the terms present, only from ``blocks`` (row
    number // BLOCK_ROWS) when given."""
    if not terms or (blocks is not None and not len(blocks)):
        return {}
    return {(path, term): found for path, tpath in text_files.items()
            for term, found in _text_index(tpath).postings(terms, blocks).items()}


def _document_frequencies(text_files: Mapping[str, str], tokens: Sequence[str]) -> dict[str, int]:
    """How many items of all the index files hold each token."""
    out = dict.fromkeys(tokens, 0)
    if tokens:
        for tpath in text_files.values():
            for term, n in _text_index(tpath).document_frequencies(tokens).items():
                out[term] += n
    return out


def _rows_op(op: str, a: Any, b: Any) -> Any:
    """``a`` union / intersection / difference ``b`` of sorted unique row numbers, sorted unique. Large
    sets go through a bitmap of the rows (linear), small ones through numpy's sorting set operations
    (which hash or sort millions of rows for a frequent term: seconds at 10M items)."""
    import numpy as np

    if not len(a) or not len(b):
        return {"union": b if not len(a) else a, "intersection": a[:0], "difference": a}[op]
    lo = int(min(a[0], b[0]))  # the bitmap spans the rows between the least and the greatest
    n = int(max(a[-1], b[-1])) + 1 - lo
    if len(a) + len(b) < n // 64:
        if op == "union":
            return np.union1d(a, b)
        if op == "intersection":
            return np.intersect1d(a, b, assume_unique=True)
        return np.setdiff1d(a, b, assume_unique=True)
    mask = np.zeros(n, dtype=bool)
    mask[a - lo] = True
    if op == "union":
        mask[b - lo] = True
    elif op == "intersection":
        hit = np.zeros(n, dtype=bool)
        hit[b - lo] = True
        mask &= hit
    else:
        mask[b - lo] = False
    return np.flatnonzero(mask) + lo


def _evaluate(node: free_text.Node, path: str, universe: Any,
              postings: Mapping[tuple[str, str], tuple[Any, Any]]) -> Any:
    """The rows of one index file (among ``universe``, sorted row numbers) satisfying a query tree
    (phrases of 3+ tokens: their bigrams)."""
    import numpy as np

    empty = np.zeros(0, dtype=np.int64)
    if isinstance(node, free_text.Term):
        rows = None
        for term in node.index_terms:
            docs = postings.get((path, term), (empty,))[0]
            rows = docs if rows is None else _rows_op("intersection", rows, docs)
        return rows
    if isinstance(node, free_text.Optional):
        return universe
    if isinstance(node, free_text.Not):
        return _rows_op("difference", universe, _evaluate(node.arg, path, universe, postings))
    if isinstance(node, free_text.Or):
        rows = empty
        for arg in node.args:
            rows = _rows_op("union", rows, _evaluate(arg, path, universe, postings))
        return rows
    positive = [a for a in node.args if not isinstance(a, (free_text.Not, free_text.Optional))]
    rows = None
    for arg in positive:
        part = _evaluate(arg, path, universe, postings)
        rows = part if rows is None else _rows_op("intersection", rows, part)
    if rows is None:
        rows = universe
    for arg in node.args:
        if isinstance(arg, free_text.Not):
            rows = _rows_op("difference", rows, _evaluate(arg.arg, path, universe, postings))
    return rows


def _text_candidates(files: Mapping[str, str], text: free_text.TextQuery,
                     selected: Mapping[str, Any] | None = None, top: int | None = None) -> Any:
    """An Arrow table (file, row, relevance) of the rows matching ``text`` in every index file; among
    the ``selected`` rows of each file only, when given (the other criteria's rows). ``top``: only the
    rows that can be among the ``top`` most relevant (relevance at least the ``top``-th highest, ties
    kept: the order after relevance is SQL's), for a query whose every candidate meets its other
    criteria and whose limit SQL applies."""
    import numpy as np
    import pyarrow as pa

    searched = files if selected is None else {p: files[p] for p in selected if p in files}
    if not searched:
        return None
    text_files = {path: text_file(path) for path in files}
    sizes, block_rows = {}, {}
    for path, tpath in text_files.items():
        lookup = _text_index(tpath)
        sizes[path], block_rows[path] = lookup.items, lookup.block_rows
    n_docs = sum(sizes.values())
    tokens = text.tokens
    df = _document_frequencies(text_files, tokens)
    blocks = None
    if selected is not None:
        blocks = np.unique(np.concatenate([rows // block_rows[path] for path, rows in selected.items()]))
    wanted = list(dict.fromkeys([*free_text.index_terms(text.node), *tokens]))
    postings = _postings({p: text_files[p] for p in searched}, wanted, blocks)
    names, codes, rows, scores = [], [], [], []
    for path in searched:
        universe = selected[path] if selected is not None else np.arange(sizes[path], dtype=np.int64)
        found = _evaluate(text.node, path, universe, postings)
        if selected is not None:
            found = _rows_op("intersection", found, universe)
        if not len(found):
            continue
        total = np.zeros(len(found), dtype=np.float64)
        for token in tokens:  # the same weights, added in the same order, as stac.text.score
            docs, tf = postings.get((path, token), (None, None))
            if docs is None or not len(docs):
                continue  # adds 0.0 to every row, as score() does
            lo = int(min(docs[0], found[0]))
            span = int(max(docs[-1], found[-1])) + 1 - lo
            if len(docs) + len(found) > span // 64:  # dense: a table of the counts by row, over their span
                by_row = np.zeros(span, dtype=tf.dtype)
                by_row[docs - lo] = tf
                counts = by_row[found - lo]
            else:
                at = np.minimum(np.searchsorted(docs, found), len(docs) - 1)
                counts = np.where(docs[at] == found, tf[at], 0)
            # the weight of each count, computed once per distinct count (a table indexed by count)
            distinct = np.flatnonzero(np.bincount(counts))
            table = np.zeros(int(distinct[-1]) + 1, dtype=np.float64)
            table[distinct] = [free_text.weight(int(c), df[token], n_docs) for c in distinct]
            total += table[counts]
        codes.append(np.full(len(found), len(names), dtype=np.int32))
        names.append(path)
        rows.append(found)
        scores.append(total)
    if not rows:
        return None
    code, row, score = np.concatenate(codes), np.concatenate(rows), np.concatenate(scores)
    if top is not None and len(score) > top:
        last = np.partition(score, len(score) - top)[len(score) - top]  # the relevance of the top-th
        keep = score >= last
        code, row, score = code[keep], row[keep], score[keep]
        tied = np.flatnonzero(score == last)
        if len(tied) > TIES_READ_TIMES:
            # relevance ties (a frequent term weighs the same in millions of items): the item time orders
            # them next, so of those tied only the ones at least as new as the page's last can be on it
            wanted_tied = top - (len(score) - len(tied))  # the page's places left to the tied rows
            when = np.full(len(score), np.inf)
            for i, path in enumerate(names):
                mine = tied[code[tied] == i]
                when[mine] = _order_times(path, row[mine])
            newest = np.partition(when[tied], len(tied) - wanted_tied)[len(tied) - wanted_tied]
            keep = when >= newest  # the rows more relevant than the tied ones have +inf: kept
            code, row, score = code[keep], row[keep], score[keep]
    return pa.table({"f": pa.DictionaryArray.from_arrays(pa.array(code), pa.array(names, type=pa.string())),
                     "r": pa.array(row, type=pa.int64()),
                     "s": pa.array(score, type=pa.float64())})


def _order_times(path: str, rows: Any) -> Any:
    """The item time that orders the given rows of an index file (``_TIME_START``: the start of a range,
    else ``datetime``) as float microseconds since the epoch, -inf where there is none (SQL orders
    those last, newest first). Rounding (beyond the year 2255) can only make times equal, never swap them."""
    import numpy as np

    names = row_groups(path).names
    table = _rows_table(path, rows, False, columns=[c for c in TIME_COLUMNS if c in names])
    nan = np.full(table.num_rows, np.nan)
    start, end, instant = (_floats(table.column(c)) if c in table.column_names else nan
                           for c in ("start_datetime", "end_datetime", "datetime"))
    when = np.where(~np.isnan(start) & ~np.isnan(end), start, instant)
    return np.where(np.isnan(when), -np.inf, when)


def overfetch(limit: int) -> int:
    """Rows SQL hands over for a page of ``limit`` items when Python decides the last criterion (the
    geometry, a residual filter, a long phrase): enough that it rarely rejects so many that the page
    is short, few enough that SQL keeps only the best of its order (a top-N, not a whole sort)."""
    return 2 * limit + OVERFETCH_EXTRA


#: Rows beyond twice a page SQL hands over when Python decides the last criterion (:func:`overfetch`).
OVERFETCH_EXTRA = 32


def _run(files: Mapping[str, str], query: Query, *, python_filter: bool = False,
         whole: bool = False) -> Iterator[dict[str, Any]]:
    """The items of ``query``. With a limit and a criterion Python decides (not ``whole``), SQL first
    hands over only the first :func:`overfetch` rows of its order (a free-text query: of the most
    relevant candidates); when Python rejects so many of them that the page is short while more rows
    could follow, the query runs again over every row (``whole``)."""
    import duckdb
    import numpy as np

    cur = _cursor()
    try:
        params: dict[str, Any] = {}
        where: list[str] = []
        # a query without a filter or sortby over indexes with row stores: SQL decides on the narrow
        # columns, and the rows it hands over are taken whole from the row stores
        stores = {path: row_store_of(path) for path in files} if query.expr is None and not query.sortby else {}
        narrow = bool(stores) and all(v is not None for v in stores.values())
        registered: dict[str, Any] = {}
        chosen = _chosen_source(cur, files, query, row_numbers=query.text is not None, narrow=narrow,
                                rows_out=registered)
        narrow = narrow and chosen is not None
        source = chosen or _source(files, row_numbers=query.text is not None)
        if query.collections is not None:
            where.append(_in_list("collection", query.collections, "c", params))
        if query.ids is not None:
            where.append(_in_list("id", query.ids, "i", params))
        if query.space_box is not None:
            where.append(_bbox_sql(query.space_box, params))
        if query.has_interval:
            where.append(_datetime_sql(query.start, query.end, params))
        if query.expr is None:
            sql_terms, residual = [], None
        elif python_filter:
            sql_terms, residual = [], query.expr
        else:
            sql_terms, residual = _split_filter(cur, source, query.expr)
        where += sql_terms
        condition = " AND ".join(where) or "TRUE"
        # the geometry, the residual filter and long phrases are decided in Python: only without them is SQL exact
        verify_text = query.text is not None and free_text.has_phrase(query.text.node)
        exact_in_sql = residual is None and query.space_box is None and not verify_text
        # the rows SQL hands over: the page when SQL is exact, a few more when Python decides the rest
        sql_limit = query.limit if exact_in_sql or query.limit is None else None if whole else overfetch(query.limit)
        join = order = ""
        cut = False
        if query.text is not None:
            # the other criteria first (row numbers only, cheap), then the posting blocks of those rows. With
            # only a bbox and a datetime on narrow rows, the rows registered (a superset: their bbox and times
            # may meet them) stand for them, and the join below applies them; a page that comes out short
            # then runs again with the rows SQL selects (whole)
            superset = narrow and not whole and query.collections is None and query.ids is None
            try:
                selected = registered if superset else _selected_rows(cur, source, condition, params) if where else None
            except duckdb.Error:
                if not sql_terms:
                    raise
                yield from _run(files, query, python_filter=True, whole=whole)  # as below: a filter term failing on the data
                return
            # every candidate meets the other criteria (selected): when SQL limits and relevance orders first
            # (no sortby), only the most relevant can be among the rows it hands over
            top = sql_limit if sql_limit is not None and not query.sortby else None
            candidates = _text_candidates(files, query.text, selected, top)
            if candidates is None:
                return
            # candidates of a superset cut to the most relevant: some may fail the criteria, leaving a page short
            cut = superset and top is not None and candidates.num_rows >= top
            if not chosen:  # few candidates: their own rows, not every row of the files, are joined
                by_file = _rows_by_file(candidates)
                if sum(_held_rows(path, rows) for path, rows in by_file.items()) <= CHOSEN_ROWS_MAX:
                    # every file, those without candidates as no rows: the source keeps every file's
                    # columns, which the sortby and the filter terms were bound against
                    none = np.zeros(0, dtype=np.int64)
                    source = _rows_source(cur, {path: by_file.get(path, none) for path in files}, row_numbers=True)
            cur.register("earthops_text_candidates", candidates)
            join = f" JOIN earthops_text_candidates c ON {FILE_COLUMN} = c.f AND {ROW_COLUMN} = c.r"
            order = "c.s DESC"
        # the candidates' own columns (file, row, relevance) are not the item's: only the relevance, renamed
        columns = "*" if not join else f"i.*, c.s AS {SCORE_COLUMN}"
        sql = (f"SELECT {columns} FROM {source}{' AS i' if join else ''}{join} WHERE {condition} "
               f"{_order_sql(files, query, order)}"
               + (f" LIMIT {int(sql_limit)}" if sql_limit is not None else ""))
        rows = _Rows(files, stores if narrow else None)
        try:
            reader = cur.sql(sql, params=params).to_arrow_reader(BATCH_ROWS)
            # ORDER BY is blocking: every WHERE term has run once the first batch is there
            first = _next_batch(reader)
        except duckdb.Error:
            if not sql_terms:
                raise
            # a filter term that binds but fails on the data (a cast): all of it in Python instead
            yield from _run(files, query, python_filter=True, whole=whole)
            return
        batches = itertools.chain([first], reader) if first is not None else iter(())
        if whole or query.limit is None or (exact_in_sql and not cut):
            yield from _take(batches, rows, query, residual, verify_text)
            return
        handed: list[int] = []  # rows SQL handed over, counted as they pass
        page = list(_take(_counted(batches, handed), rows, query, residual, verify_text))
        if len(page) < int(query.limit) and (cut or sum(handed) >= int(sql_limit)):  # short, more may follow
            cur.close()
            yield from _run(files, query, python_filter=python_filter, whole=True)
            return
        yield from page
    finally:
        cur.close()  # also drops the tables registered with it


def _counted(batches: Iterable[Any], handed: list[int]) -> Iterator[Any]:
    """``batches``, appending each one's row count to ``handed`` as it passes."""
    for batch in batches:
        handed.append(batch.num_rows)
        yield batch


def _rows_by_file(candidates: Any) -> dict[str, Any]:
    """Index file -> sorted row numbers of a (file, row, relevance) candidates table."""
    import numpy as np

    files = candidates.column("f").combine_chunks()
    codes, rows = files.indices.to_numpy(zero_copy_only=False), candidates.column("r").to_numpy()
    return {path: np.sort(rows[codes == i]) for i, path in enumerate(files.dictionary.to_pylist())
            if (codes == i).any()}


def _held_rows(path: str, rows: Any) -> int:
    """How many rows the row groups holding ``rows`` of an index file have (what reading them decodes)."""
    import numpy as np

    groups = row_groups(path)
    return int(groups.rows[np.unique(groups.group_of(rows))].sum())


def _selected_rows(cur: Any, source: str, condition: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Index file -> sorted row numbers of the rows meeting ``condition`` (no item is built)."""
    import numpy as np

    table = cur.sql(f"SELECT {FILE_COLUMN} AS f, {ROW_COLUMN} AS r FROM {source} WHERE {condition}",
                    params=dict(params)).to_arrow_table()
    out: dict[str, Any] = {}
    if not table.num_rows:
        return out
    f = table.column("f").combine_chunks().dictionary_encode()
    r = table.column("r").to_numpy()
    codes = f.indices.to_numpy(zero_copy_only=False)
    for i, path in enumerate(f.dictionary.to_pylist()):
        out[path] = np.sort(r[codes == i].astype(np.int64))
    return out


def _next_batch(reader: Any) -> Any:
    try:
        return reader.read_next_batch()
    except StopIteration:
        return None


def _rows_of(batch: Any, rows: _Rows, first: int = 32) -> Iterator[dict[str, Any]]:
    """The rows of a record batch as dicts (:meth:`_Rows.whole`), converted a slice at a time (``first``
    rows, then doubling): a page of 10 converts 10 rows (each taken from the row store on its own),
    not the 2,048 of a batch."""
    start, size = 0, first
    while start < batch.num_rows:
        yield from rows.whole(batch.slice(start, size))
        start += size
        size = min(size * 2, BATCH_ROWS)


def _take(batches: Iterable[Any], rows: _Rows, query: Query, residual: Any,
          verify_text: bool = False) -> Iterator[dict[str, Any]]:
    n = 0
    for batch in batches:
        for row in _rows_of(batch, rows, first=32 if query.limit is None else max(1, min(32, query.limit - n))):
            item = rows.item(row)
            # the bbox pre-selected in SQL; the geometry decides
            if not query.matches_space(item):
                continue
            if residual is not None and not expr_matches(residual, item):
                continue
            if verify_text and not query.matches_text(item):
                continue
            yield item
            n += 1
            if query.limit is not None and n >= query.limit:
                return


def feature_collection(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of STAC items (what ``earthops search -o json`` prints)."""
    return {"type": "FeatureCollection", "features": list(items), "numberReturned": len(items)}


__all__ = ["AREAS", "CHOSEN_GROUPS_SHARE", "CHOSEN_ROWS_MAX", "Query", "RowGroups", "SearchError",
           "feature_collection", "geometry_intersects_box", "index_keys", "iter_search", "local_index_files",
           "parse_bbox", "parse_filter", "parse_interval", "row_groups", "ruled_out", "run_query", "search",
           "search_files"]
