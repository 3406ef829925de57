"""The free-text index of a run: ``text.parquet``, an inverted index beside its ``index.parquet``.

DuckDB's ``fts`` extension cannot be downloaded here, so earthops keeps its own inverted index, written
at publication with the search index (same staging folder, so both appear at once) and read with core
DuckDB. What a term is and which texts of an item count are :mod:`earthops_runtime.stac.text`'s rules
(:func:`~earthops_runtime.stac.text.value_terms` per text value); this module only stores them.

Schema, one row per index term, rows sorted by term (row groups of :data:`TERMS_PER_ROW_GROUP`
terms, so the ``term`` statistics let a lookup read one row group per term):

=========== ================ ==========================================================================
column      type             content
=========== ================ ==========================================================================
``term``    string           a token, or two neighbouring tokens of one value joined by a space (bigram)
``df``      uint32           how many items hold the term
``docs``    list<uint32>     the items holding it: row numbers in ``index.parquet``, ascending
``tf``      list<uint16>     how often each of those items holds it (capped at 65535)
=========== ================ ==========================================================================

The file metadata names the number of items (``earthops:text`` -> ``items``): N of the relevance.

Building is column-wise: each distinct text value is tokenized once (ids are distinct; platform,
keywords and titles repeat), the (term, row) pairs are gathered with numpy and counted by sorting.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from earthops_runtime.stac.text import NOT_TEXT, text_values, value_terms

TEXT_NAME = "text.parquet"
TERMS_PER_ROW_GROUP = 1024
META_KEY = b"earthops:text"
FORMAT_VERSION = 1
#: Rows tokenized per step (bounds the memory of the (term, row) pairs).
CHUNK_ROWS = 1_000_000
SCHEMA = pa.schema([("term", pa.string()), ("df", pa.uint32()), ("docs", pa.list_(pa.uint32())),
                    ("tf", pa.list_(pa.uint16()))])


def _text_columns(table: pa.Table, json_columns: frozenset[str], core: frozenset[str]) -> list[tuple[str, str]]:
    """(column, how) of the columns that hold an item's text: ``id``, string and string-list property
    columns, JSON property columns (decoded per value) and the clashing-properties JSON column."""
    out = [("id", "string")]
    for field in table.schema:
        name = field.name
        if name in NOT_TEXT:
            continue
        if name == "earthops:properties":
            out.append((name, "object"))
        elif name in core:
            continue
        elif name in json_columns:
            out.append((name, "json"))
        elif pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            out.append((name, "string"))
        elif (pa.types.is_list(field.type) or pa.types.is_large_list(field.type)) and \
                pa.types.is_string(field.type.value_type):
            out.append((name, "list"))
    return out


def _values(column: pa.ChunkedArray | pa.Array, how: str, name: str) -> tuple[np.ndarray, pa.Array]:
    """(row of each text value, the values as a string array) of one column."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if how == "string":
        rows = np.flatnonzero(arr.is_valid().to_numpy(zero_copy_only=False))
        return rows, arr.filter(arr.is_valid())
    if how == "list":
        return (np.asarray(pc.list_parent_indices(arr)).astype(np.int64),
                pc.list_flatten(arr))
    rows, values = [], []
    for i, raw in enumerate(arr.to_pylist()):
        if raw is None:
            continue
        decoded = json.loads(raw)
        pairs = decoded.items() if how == "object" else [(name, decoded)]
        for key, value in pairs:
            for text in text_values(key, value):
                rows.append(i)
                values.append(text)
    return np.array(rows, dtype=np.int64), pa.array(values, type=pa.string())


class _Terms:
    """Term ids in first-seen order, and the terms of each distinct text value."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.value_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def of_value(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        hit = self.value_cache.get(text)
        if hit is None:
            counts = value_terms(text)
            ids = np.fromiter((self.ids.setdefault(t, len(self.ids)) for t in counts), dtype=np.int64,
                              count=len(counts))
            hit = (ids, np.fromiter(counts.values(), dtype=np.int64, count=len(counts)))
            if len(self.value_cache) < 200_000:  # repeated values (platform, title) are cached
                self.value_cache[text] = hit
        return hit


def _pairs(rows: np.ndarray, values: pa.Array, terms: _Terms) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(term id, row, count) arrays of the given text values, distinct values tokenized once."""
    if not len(values):
        return
    encoded = values.dictionary_encode()
    uniques = encoded.dictionary.to_pylist()
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    per_value = [terms.of_value(u) for u in uniques]
    lengths = np.array([len(p[0]) for p in per_value], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    flat_ids = np.concatenate([p[0] for p in per_value]) if per_value else np.zeros(0, np.int64)
    flat_counts = np.concatenate([p[1] for p in per_value]) if per_value else np.zeros(0, np.int64)
    n = lengths[codes]
    total = int(n.sum())
    if not total:
        return
    # position of each pair in the flat per-value arrays: start of its value + index within it
    ends = np.cumsum(n)
    within = np.arange(total, dtype=np.int64) - np.repeat(ends - n, n)
    gather = np.repeat(starts[codes], n) + within
    yield flat_ids[gather], np.repeat(rows, n), flat_counts[gather]


def text_index_table(table: pa.Table, *, json_columns: frozenset[str] = frozenset(),
                     core: frozenset[str] = frozenset()) -> pa.Table:
    """The inverted index of an index table whose rows are already in their final order."""
    n_rows = table.num_rows
    terms = _Terms()
    keys, counts = [], []
    columns = _text_columns(table, json_columns, core)
    for lo in range(0, max(n_rows, 1), CHUNK_ROWS):
        part = table.slice(lo, CHUNK_ROWS)
        ids, rows, cnt = [], [], []
        for name, how in columns:
            r, values = _values(part.column(name), how, name)
            for t, rr, c in _pairs(r + lo, values, terms):
                ids.append(t)
                rows.append(rr)
                cnt.append(c)
        if not ids:
            continue
        key = np.concatenate(ids) * max(n_rows, 1) + np.concatenate(rows)
        c = np.concatenate(cnt)
        order = np.argsort(key, kind="stable")
        key, c = key[order], c[order]
        first = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
        keys.append(key[first])
        counts.append(np.add.reduceat(c, first))
    if not keys:
        return SCHEMA.empty_table()
    # term ids -> ranks in sorted term order, then one sort of all (term, row) pairs
    names = np.array(list(terms.ids), dtype=object)
    rank = np.empty(len(names), dtype=np.int64)
    by_name = np.argsort(names.astype(str), kind="stable")
    rank[by_name] = np.arange(len(names))
    key = np.concatenate(keys)
    tf = np.concatenate(counts)
    term_rank = rank[key // max(n_rows, 1)]
    docs = key % max(n_rows, 1)
    order = np.lexsort((docs, term_rank))
    term_rank, docs, tf = term_rank[order], docs[order], tf[order]
    bounds = np.flatnonzero(np.concatenate([[True], term_rank[1:] != term_rank[:-1]]))
    offsets = np.concatenate([bounds, [len(term_rank)]]).astype(np.int64)
    return pa.table({
        "term": pa.array(names[by_name][term_rank[bounds]].tolist(), type=pa.string()),
        "df": pa.array(np.diff(offsets).astype(np.uint32)),
        "docs": pa.LargeListArray.from_arrays(offsets, pa.array(docs.astype(np.uint32))).cast(pa.list_(pa.uint32())),
        "tf": pa.LargeListArray.from_arrays(offsets, pa.array(np.minimum(tf, 65535).astype(np.uint16)))
        .cast(pa.list_(pa.uint16())),
    }, schema=SCHEMA)


def text_index_bytes(table: pa.Table, *, json_columns: frozenset[str] = frozenset(),
                     core: frozenset[str] = frozenset()) -> bytes:
    """Parquet bytes of the inverted index of an index table (rows in their final order)."""
    terms = text_index_table(table, json_columns=json_columns, core=core)
    terms = terms.replace_schema_metadata({META_KEY: json.dumps({"version": FORMAT_VERSION,
                                                                 "items": table.num_rows}).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(terms, sink, row_group_size=TERMS_PER_ROW_GROUP, compression="snappy",
                   write_statistics=["term"])
    return sink.getvalue().to_pybytes()


def items_of(path: str) -> int:
    """N of a text index file: the number of items of its search index."""
    meta = pq.read_schema(path).metadata or {}
    return int(json.loads(meta[META_KEY])["items"])


def text_path(index_path: str) -> str:
    """The text index beside a search index file."""
    return index_path.rsplit("/", 1)[0] + "/" + TEXT_NAME if "/" in index_path else TEXT_NAME


__all__ = ["TEXT_NAME", "items_of", "text_index_bytes", "text_index_table", "text_path"]
