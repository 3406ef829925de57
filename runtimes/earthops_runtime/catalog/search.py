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
  timestamp columns, so DuckDB prunes row groups by their statistics (the index is Hilbert-sorted).
  The item's bbox pre-selects; the item's geometry (WKB, decoded here) decides. The datetime
  predicate is the Query's item time written in SQL: ``[start_datetime, end_datetime]`` when the
  item has both, else its ``datetime``, meeting the interval.
* **CQL2**: the top-level ``AND`` terms that ``cql2`` translates to SQL DuckDB can bind (comparisons,
  LIKE, IN, BETWEEN, IS NULL, CASEI, array and temporal operators over index columns) run in DuckDB;
  the rest (spatial operators: core DuckDB has no geometry functions; ``properties.``-prefixed names;
  properties no index has) are evaluated on each remaining candidate as the Query does. A property an
  item lacks makes a comparison unknown, hence false, in both paths (SQL NULL semantics).
* **q** (free text, :mod:`earthops_runtime.stac.text`): each index's inverted index (``text.parquet``,
  :mod:`earthops_runtime.catalog.textindex`) gives the items holding each term and how often; the
  query tree is evaluated on those row sets (numpy), relevance computed from the counts and the
  document frequencies summed over every index searched, and the candidates (file, row, relevance)
  joined to the index rows in DuckDB, where the other criteria prune and order them (relevance
  first). Phrases of three or more tokens are pre-selected by their bigrams and checked exactly on
  the item. An index published before text indexes existed gets one built once into the cache.
* Results are STAC item dicts in the Query's order (:data:`~earthops_runtime.stac.query.ORDER`:
  newest first, then collection, then id, descending, as pgstac), written as the SQL ORDER BY;
  relative hrefs resolved against the index's URL.

Errors in the arguments raise :class:`SearchError` (the query module's, re-exported here), whose
``parameter`` names the argument.

DuckDB's extension auto-install and auto-load are switched off, so a query never tries the network.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import posixpath
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from earthops.core.store import MARKER
from earthops_runtime.cache import cache_root
from earthops_runtime.catalog import textindex
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
        text_key = f"{run_key}/{textindex.TEXT_NAME}"
        for source, dest in ((text_key, _cached_text_path(path)), (key, path)):  # the index last: it marks a copy complete
            if not dest.is_file() and (source == key or store.exists(source)):
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}-{threading.get_ident()}")
                tmp.write_bytes(store.read_bytes(source))
                os.replace(tmp, dest)
        out[os.fspath(path)] = url
    return out


def _cached_text_path(index_path: os.PathLike[str] | str) -> Any:
    from pathlib import Path

    path = Path(index_path)
    return path.with_name(path.stem + ".text.parquet")


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


def _json_columns(path: str) -> frozenset[str]:
    st = os.stat(path)
    return _json_columns_of(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1024)
def _json_columns_of(path: str, size: int, mtime_ns: int) -> frozenset[str]:
    """The JSON-encoded property columns of an index file (its footer read once per file version)."""
    return frozenset(json_properties(_schema_of(path, size, mtime_ns)))


@functools.lru_cache(maxsize=1024)
def _schema_of(path: str, size: int, mtime_ns: int) -> Any:
    import pyarrow.parquet as pq

    return pq.read_schema(path)


def _order_sql(files: Iterable[str], query: Query, relevance: str) -> str:
    """ORDER BY of a query: its sortby fields (missing values last), relevance, then :data:`ORDER`."""
    terms = []
    if query.sortby:
        schemas = []
        for path in files:
            st = os.stat(path)
            schemas.append((_schema_of(path, st.st_size, st.st_mtime_ns), _json_columns(path)))
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
    """Turns index rows into STAC item dicts (per-file JSON columns and href bases)."""

    def __init__(self, files: Mapping[str, str]):
        self.base = {path: url.rsplit("/", 1)[0] for path, url in files.items()}
        self.json_columns = {path: _json_columns(path) for path in files}

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


@functools.lru_cache(maxsize=1024)
def _text_facts(path: str, size: int, mtime_ns: int) -> tuple[int, int]:
    return textindex.facts(path)


def _postings(cur: Any, text_files: Mapping[str, str], terms: Sequence[str],
              blocks: Any = None) -> dict[tuple[str, str], tuple[Any, Any]]:
    """(index file, term) -> (docs, tf) numpy arrays for the terms present, only from ``blocks`` (row
    number // BLOCK_ROWS) when given."""
    import numpy as np

    if not terms or (blocks is not None and not len(blocks)):
        return {}
    by_text = {t: p for p, t in text_files.items()}
    # literals, not parameters: DuckDB prunes the Parquet row groups by constant filters only
    where = f"term IN ({', '.join(_sql_string(t) for t in terms)})"
    if blocks is not None:
        where += f" AND block IN ({', '.join(str(int(b)) for b in blocks)})"
    sql = (f"SELECT filename, term, docs, tf FROM read_parquet([{', '.join(_sql_string(t) for t in by_text)}], "
           f"filename = true) WHERE {where} ORDER BY filename, term, block")
    table = cur.sql(sql).to_arrow_table()
    parts: dict[tuple[str, str], list[tuple[Any, Any]]] = {}
    docs_col, tf_col = table.column("docs").combine_chunks(), table.column("tf").combine_chunks()
    for i, (f, term) in enumerate(zip(table.column("filename").to_pylist(), table.column("term").to_pylist())):
        parts.setdefault((by_text[f], term), []).append((docs_col[i].values, tf_col[i].values))
    return {key: (np.concatenate([np.asarray(d, dtype=np.int64) for d, _ in chunks]),
                  np.concatenate([np.asarray(t, dtype=np.int64) for _, t in chunks]))
            for key, chunks in parts.items()}


def _document_frequencies(cur: Any, text_files: Mapping[str, str], tokens: Sequence[str]) -> dict[str, int]:
    """How many items of all the index files hold each token."""
    if not tokens:
        return {}
    sql = (f"SELECT term, sum(df) FROM read_parquet([{', '.join(_sql_string(t) for t in text_files.values())}]) "
           f"WHERE term IN ({', '.join(_sql_string(t) for t in tokens)}) GROUP BY term")
    found = {term: int(n) for term, n in cur.sql(sql).fetchall()}
    return {t: found.get(t, 0) for t in tokens}


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
            rows = docs if rows is None else np.intersect1d(rows, docs, assume_unique=True)
        return rows
    if isinstance(node, free_text.Optional):
        return universe
    if isinstance(node, free_text.Not):
        return np.setdiff1d(universe, _evaluate(node.arg, path, universe, postings), assume_unique=True)
    if isinstance(node, free_text.Or):
        rows = empty
        for arg in node.args:
            rows = np.union1d(rows, _evaluate(arg, path, universe, postings))
        return rows
    positive = [a for a in node.args if not isinstance(a, (free_text.Not, free_text.Optional))]
    rows = None
    for arg in positive:
        part = _evaluate(arg, path, universe, postings)
        rows = part if rows is None else np.intersect1d(rows, part, assume_unique=True)
    if rows is None:
        rows = universe
    for arg in node.args:
        if isinstance(arg, free_text.Not):
            rows = np.setdiff1d(rows, _evaluate(arg.arg, path, universe, postings), assume_unique=True)
    return rows


def _text_candidates(cur: Any, files: Mapping[str, str], text: free_text.TextQuery,
                     selected: Mapping[str, Any] | None = None) -> Any:
    """An Arrow table (file, row, relevance) of the rows matching ``text`` in every index file; among
    the ``selected`` rows of each file only, when given (the other criteria's rows)."""
    import numpy as np
    import pyarrow as pa

    searched = files if selected is None else {p: files[p] for p in selected if p in files}
    if not searched:
        return None
    text_files = {path: text_file(path) for path in files}
    sizes, block_rows = {}, {}
    for path, tpath in text_files.items():
        st = os.stat(tpath)
        sizes[path], block_rows[path] = _text_facts(tpath, st.st_size, st.st_mtime_ns)
    n_docs = sum(sizes.values())
    tokens = text.tokens
    df = _document_frequencies(cur, text_files, tokens)
    blocks = None
    if selected is not None:
        blocks = np.unique(np.concatenate([rows // block_rows[path] for path, rows in selected.items()]))
    wanted = list(dict.fromkeys([*free_text.index_terms(text.node), *tokens]))
    postings = _postings(cur, {p: text_files[p] for p in searched}, wanted, blocks)
    paths, rows, scores = [], [], []
    for path in searched:
        universe = selected[path] if selected is not None else np.arange(sizes[path], dtype=np.int64)
        found = _evaluate(text.node, path, universe, postings)
        if selected is not None:
            found = np.intersect1d(found, universe, assume_unique=True)
        if not len(found):
            continue
        total = np.zeros(len(found), dtype=np.float64)
        for token in tokens:  # the same weights, added in the same order, as stac.text.score
            docs, tf = postings.get((path, token), (None, None))
            if docs is None or not len(docs):
                continue  # adds 0.0 to every row, as score() does
            at = np.minimum(np.searchsorted(docs, found), len(docs) - 1)
            counts = np.where(docs[at] == found, tf[at], 0)
            distinct, inverse = np.unique(counts, return_inverse=True)
            weights = np.array([free_text.weight(int(c), df[token], n_docs) for c in distinct], dtype=np.float64)
            total += weights[inverse]
        paths.append(np.full(len(found), path, dtype=object))
        rows.append(found)
        scores.append(total)
    if not rows:
        return None
    return pa.table({"f": pa.array(np.concatenate(paths).tolist(), type=pa.string()),
                     "r": pa.array(np.concatenate(rows), type=pa.int64()),
                     "s": pa.array(np.concatenate(scores), type=pa.float64())})


def _run(files: Mapping[str, str], query: Query, *, python_filter: bool = False) -> Iterator[dict[str, Any]]:
    import duckdb

    cur = _cursor()
    try:
        params: dict[str, Any] = {}
        where: list[str] = []
        source = _source(files, row_numbers=query.text is not None)
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
        join = order = ""
        if query.text is not None:
            # the other criteria first (row numbers only, cheap), then the posting blocks of those rows
            try:
                selected = _selected_rows(cur, source, condition, params) if where else None
            except duckdb.Error:
                if not sql_terms:
                    raise
                yield from _run(files, query, python_filter=True)  # as below: a filter term failing on the data
                return
            candidates = _text_candidates(cur, files, query.text, selected)
            if candidates is None:
                return
            cur.register("earthops_text_candidates", candidates)
            join = f" JOIN earthops_text_candidates c ON {FILE_COLUMN} = c.f AND {ROW_COLUMN} = c.r"
            order = "c.s DESC"
        # the geometry, the residual filter and long phrases are decided in Python: only without them is SQL exact
        verify_text = query.text is not None and free_text.has_phrase(query.text.node)
        exact_in_sql = residual is None and query.space_box is None and not verify_text
        columns = "*" if not join else f"*, c.s AS {SCORE_COLUMN}"
        sql = (f"SELECT {columns} FROM {source}{join} WHERE {condition} "
               f"{_order_sql(files, query, order)}"
               + (f" LIMIT {int(query.limit)}" if exact_in_sql and query.limit is not None else ""))
        rows = _Rows(files)
        try:
            reader = cur.sql(sql, params=params).to_arrow_reader(BATCH_ROWS)
            # ORDER BY is blocking: every WHERE term has run once the first batch is there
            first = _next_batch(reader)
        except duckdb.Error:
            if not sql_terms:
                raise
            # a filter term that binds but fails on the data (a cast): all of it in Python instead
            yield from _run(files, query, python_filter=True)
            return
        batches = itertools.chain([first], reader) if first is not None else iter(())
        yield from _take(batches, rows, query, residual, verify_text)
    finally:
        cur.close()


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


def _rows_of(batch: Any, first: int = 32) -> Iterator[dict[str, Any]]:
    """The rows of a record batch as dicts, converted a slice at a time (32 rows, then doubling): a
    page of 10 converts 32 rows, not the 2,048 of a batch."""
    start, size = 0, first
    while start < batch.num_rows:
        yield from batch.slice(start, size).to_pylist()
        start += size
        size = min(size * 2, BATCH_ROWS)


def _take(batches: Iterable[Any], rows: _Rows, query: Query, residual: Any,
          verify_text: bool = False) -> Iterator[dict[str, Any]]:
    n = 0
    for batch in batches:
        for row in _rows_of(batch):
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


__all__ = ["AREAS", "Query", "SearchError", "feature_collection", "geometry_intersects_box", "index_keys",
           "iter_search", "local_index_files", "parse_bbox", "parse_filter", "parse_interval", "run_query", "search",
           "search_files"]
