"""The free-text index of a run: ``text.parquet``, an inverted index beside its ``index.parquet``.

DuckDB's ``fts`` extension cannot be downloaded here, so earthops keeps its own inverted index, written
at publication with the search index (same staging folder, so both appear at once) and read by
:class:`TextIndex` (Arrow, the row groups chosen by their statistics). What a term is and which texts
of an item count are :mod:`earthops_runtime.stac.text`'s rules
(:func:`~earthops_runtime.stac.text.value_terms` per text value); this module only stores them.

Schema, one row per index term and block of :data:`BLOCK_ROWS` index rows that holds it, sorted by
term then block; row groups cut by postings (:func:`row_group_bounds`), so the ``term`` and ``block``
statistics let a lookup decode little more than the blocks it asks for:

=========== ================ ==========================================================================
column      type             content
=========== ================ ==========================================================================
``term``    string           a token, or two neighbouring tokens of one value joined by a space (bigram)
``block``   uint32           index row number // BLOCK_ROWS
``df``      uint32           how many items of the block hold the term (df of the term: their sum)
``docs``    large_binary     those items: row numbers in ``index.parquet``, ascending, as little-endian
                             uint32 (format 1: list<uint32>)
``tf``      large_binary     how often each of those items holds it (capped at 65535), as little-endian
                             uint16 (format 1: list<uint16>)
=========== ================ ==========================================================================

The file metadata (``earthops:text``) names the number of items (``items``: N of the relevance) and
the block size it was cut with (``block_rows``). Posting values are packed into one binary value a row
(format 2): Parquet decodes a list with its repetition levels, about 3.5 times slower than the same
bytes as one value (measured: 121k postings in 0.85 ms as lists, 0.24 ms packed, same size with LZ4);
format 1 files (lists) are read too.

Building is column-wise, a million rows at a time: ASCII values are tokenized by Arrow's kernels
(the same tokens as the semantics' Python, which handles the rest), (term, row) pairs are counted by
sorting with numpy, and posting rows are cut per block.
"""

from __future__ import annotations

import bisect
import json
import threading
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from earthops_runtime.catalog.encoding import COMPRESSION, dictionary_columns
from earthops_runtime.stac.text import NOT_TEXT, text_values, value_terms

TEXT_NAME = "text.parquet"
#: Row groups hold about this many postings, and at most ROWS_PER_ROW_GROUP rows (see row_group_bounds).
POSTINGS_PER_ROW_GROUP = 65_536
ROWS_PER_ROW_GROUP = 8192
META_KEY = b"earthops:text"
FORMAT_VERSION = 2
#: How posting values are packed (:func:`_packed`): row numbers, counts.
DOCS_DTYPE, TF_DTYPE = np.dtype("<u4"), np.dtype("<u2")
#: Posting lists are cut into blocks of this many index rows: a query whose other criteria select
#: a few rows (a bbox over the Hilbert-sorted index) reads only the blocks holding them.
BLOCK_ROWS = 65_536
#: Document frequencies a TextIndex keeps (per file version).
DF_CACHED = 4096
#: Rows tokenized per step (a multiple of BLOCK_ROWS; bounds the memory of the (term, row) pairs).
CHUNK_ROWS = 16 * BLOCK_ROWS
SCHEMA = pa.schema([("term", pa.string()), ("block", pa.uint32()), ("df", pa.uint32()),
                    ("docs", pa.large_binary()), ("tf", pa.large_binary())])


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


def _occurrences(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(term, index of its value) of every token and bigram of the given text values, tokenized as
    :func:`~earthops_runtime.stac.text.value_terms` does. ASCII values (nearly all) go through Arrow's
    kernels — for ASCII, lower-casing and runs of ``[a-z0-9]`` are exactly the semantics' ``str.lower``
    and ``[^\\W_]+`` —, the others through the semantics' own Python."""
    if not len(values):
        return pa.array([], type=pa.string()), np.zeros(0, dtype=np.int64)
    ascii_mask = pc.string_is_ascii(values).to_numpy(zero_copy_only=False)
    terms, owners = [], []
    where = np.flatnonzero(ascii_mask)
    if len(where):
        part = values.take(pa.array(where)) if len(where) < len(values) else values
        split = pc.split_pattern_regex(pc.ascii_lower(part), pattern="[^a-z0-9]+")
        flat = pc.list_flatten(split)
        parent = where[np.asarray(pc.list_parent_indices(split))]
        keep = pc.not_equal(pc.binary_length(flat), 0)
        flat, parent = flat.filter(keep), parent[keep.to_numpy(zero_copy_only=False)]
        terms.append(flat)
        owners.append(parent)
        if len(flat) > 1:
            same = parent[1:] == parent[:-1]
            pairs = pc.binary_join_element_wise(flat.slice(0, len(flat) - 1), flat.slice(1), " ")
            terms.append(pairs.filter(pa.array(same)))
            owners.append(parent[:-1][same])
    others = np.flatnonzero(~ascii_mask)
    if len(others):
        texts, idx = [], []
        for i, value in zip(others, values.take(pa.array(others)).to_pylist()):
            for term, count in value_terms(value).items():
                texts += [term] * count
                idx += [i] * count
        terms.append(pa.array(texts, type=pa.string()))
        owners.append(np.array(idx, dtype=np.int64))
    return pa.concat_arrays([t.cast(pa.string()) for t in terms]), np.concatenate(owners).astype(np.int64)


def _chunk_postings(table: pa.Table, lo: int, columns: list[tuple[str, str]]) -> pa.Table | None:
    """Posting rows (term, block, df, docs, tf) of the rows of ``table`` (a slice starting at row
    ``lo``, a multiple of :data:`BLOCK_ROWS`), sorted by term then block."""
    terms, rows = [], []
    for name, how in columns:
        value_rows, values = _values(table.column(name), how, name)
        found, owner = _occurrences(values)
        terms.append(found)
        rows.append(value_rows[owner] + lo)
    if not terms or not sum(len(t) for t in terms):
        return None
    encoded = pc.dictionary_encode(pa.concat_arrays(terms))
    names = encoded.dictionary
    order = np.asarray(pc.sort_indices(names))
    rank = np.empty(len(names), dtype=np.int64)
    rank[order] = np.arange(len(names))
    span = max(table.num_rows, 1)
    key = rank[encoded.indices.to_numpy(zero_copy_only=False)] * span + (np.concatenate(rows) - lo)
    key, tf = np.unique(key, return_counts=True)  # sorted by term rank, then row; tf = occurrences
    term_rank, docs = key // span, key % span + lo
    block = docs // BLOCK_ROWS
    starts = np.flatnonzero(np.concatenate([[True], (term_rank[1:] != term_rank[:-1]) | (block[1:] != block[:-1])]))
    offsets = np.concatenate([starts, [len(key)]]).astype(np.int32)
    return pa.table({
        "term": names.take(pa.array(order[term_rank[starts]])),
        "block": pa.array(block[starts].astype(np.uint32)),
        "df": pa.array(np.diff(offsets).astype(np.uint32)),
        "docs": _packed(offsets, docs, DOCS_DTYPE),
        "tf": _packed(offsets, np.minimum(tf, 65535), TF_DTYPE),
    }, schema=SCHEMA)


def _packed(offsets: np.ndarray, values: np.ndarray, dtype: np.dtype) -> pa.Array:
    """One binary value per posting row: ``values[offsets[i]:offsets[i + 1]]`` as ``dtype`` bytes."""
    data = np.ascontiguousarray(values, dtype=dtype).tobytes()
    ends = (np.asarray(offsets, dtype=np.int64) * dtype.itemsize).tobytes()
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(offsets) - 1, [None, pa.py_buffer(ends), pa.py_buffer(data)])


def unpacked(column: pa.Array, lo: int, hi: int, dtype: np.dtype) -> np.ndarray:
    """The values of posting rows ``lo``..``hi`` of a ``docs`` or ``tf`` array, concatenated: packed
    binary (format 2, a view of its bytes) or lists (format 1)."""
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        return column.slice(lo, hi - lo).flatten().to_numpy(zero_copy_only=False)
    if hi <= lo:
        return np.zeros(0, dtype=dtype)
    ends = np.frombuffer(column.buffers()[1], dtype=np.int64)[column.offset:column.offset + len(column) + 1]
    return np.frombuffer(column.buffers()[2], dtype=np.uint8)[ends[lo]:ends[hi]].view(dtype)


def text_index_table(table: pa.Table, *, json_columns: frozenset[str] = frozenset(),
                     core: frozenset[str] = frozenset()) -> pa.Table:
    """The inverted index of an index table whose rows are already in their final order."""
    columns = _text_columns(table, json_columns, core)
    parts = [p for lo in range(0, table.num_rows, CHUNK_ROWS)
             if (p := _chunk_postings(table.slice(lo, CHUNK_ROWS), lo, columns)) is not None]
    if not parts:
        return SCHEMA.empty_table()
    merged = pa.concat_tables(parts)
    # chunks are in row order, so a stable sort by term keeps each term's blocks ascending
    return merged.take(pc.sort_indices(merged, sort_keys=[("term", "ascending")]))


def row_group_bounds(df: np.ndarray, *, postings: int = POSTINGS_PER_ROW_GROUP,
                     max_rows: int = ROWS_PER_ROW_GROUP) -> list[tuple[int, int]]:
    """Row ranges of the row groups: a new group when the postings would pass ``postings`` or the
    rows ``max_rows``, so a lookup decodes about one block's postings of its term, not its neighbours'
    (a frequent term's block gets a row group of its own; rare terms share one by thousands)."""
    bounds, start, held = [], 0, 0
    for i, n in enumerate(df.tolist()):
        if i > start and (held + n > postings or i - start >= max_rows):
            bounds.append((start, i))
            start, held = i, 0
        held += n
    if start < len(df):
        bounds.append((start, len(df)))
    return bounds


def text_index_bytes(table: pa.Table, *, json_columns: frozenset[str] = frozenset(),
                     core: frozenset[str] = frozenset()) -> bytes:
    """Parquet bytes of the inverted index of an index table (rows in their final order)."""
    terms = text_index_table(table, json_columns=json_columns, core=core)
    terms = terms.replace_schema_metadata({META_KEY: json.dumps({
        "version": FORMAT_VERSION, "items": table.num_rows, "block_rows": BLOCK_ROWS}).encode()})
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, terms.schema, compression=COMPRESSION, write_statistics=["term", "block"],
                          use_dictionary=dictionary_columns(terms)) as writer:
        for lo, hi in row_group_bounds(terms.column("df").to_numpy()):
            writer.write_table(terms.slice(lo, hi - lo), row_group_size=hi - lo)
        if not terms.num_rows:
            writer.write_table(terms)
    return sink.getvalue().to_pybytes()




class TextIndex:
    """Lookups in one text index file version: its metadata read once, and per row group the least and
    greatest term and block (its statistics), so a lookup reads only the row groups that may hold its
    terms (and blocks). Reading through DuckDB, every lookup weighed every row group's statistics:
    about 70 ms a query over the ~4,900 row groups of a 10M-item index."""

    def __init__(self, path: str):
        self.path = path
        self._df: dict[str, int] = {}  # oldest first
        self._lock = threading.Lock()
        self.metadata = md = pq.read_metadata(path)
        facts = json.loads((md.metadata or {})[META_KEY])
        #: the number of items of its search index (N of the relevance), and the rows per posting block
        self.items, self.block_rows = int(facts["items"]), int(facts["block_rows"])
        columns = {md.schema.column(i).path: i for i in range(md.num_columns)}
        n = md.num_row_groups
        self.term_lo, self.term_hi = np.full(n, "", dtype=object), np.full(n, "", dtype=object)
        self.known = np.zeros(n, dtype=bool)  # both bounds of term known
        self.block_lo, self.block_hi = np.full(n, -np.inf), np.full(n, np.inf)
        for g in range(n):
            rg = md.row_group(g)
            stats = rg.column(columns["term"]).statistics if "term" in columns else None
            if stats is not None and stats.has_min_max:
                self.term_lo[g], self.term_hi[g], self.known[g] = stats.min, stats.max, True
            stats = rg.column(columns["block"]).statistics if "block" in columns else None
            if stats is not None and stats.has_min_max:
                self.block_lo[g], self.block_hi[g] = stats.min, stats.max
        # as written here (rows sorted by term): every bound known and both ascending, so the row groups
        # that may hold a term are one run, found by bisection (not by comparing every row group's bounds)
        lo, hi = self.term_lo.tolist(), self.term_hi.tolist()
        ascending = bool(self.known.all()) and all(a <= b for a, b in zip(lo, lo[1:])) and \
            all(a <= b for a, b in zip(hi, hi[1:]))
        self._term_bounds = (lo, hi) if ascending else None

    def row_groups(self, terms: Sequence[str], blocks: np.ndarray | None = None) -> list[int]:
        """The row groups that may hold a row of one of ``terms`` (and of one of ``blocks``)."""
        wanted = sorted(set(terms))
        if not wanted:
            return []
        if self._term_bounds is not None:
            lo, hi = self._term_bounds
            keep = np.zeros(len(self.known), dtype=bool)
            for term in wanted:  # from the first group whose greatest term is >= term to the last whose least is <= it
                keep[bisect.bisect_left(hi, term):bisect.bisect_right(lo, term)] = True
        else:
            keep = ~self.known
            lo = np.searchsorted(np.array(wanted, dtype=object), self.term_lo[self.known], side="left")
            keep[self.known] = [i < len(wanted) and wanted[i] <= hi
                                for i, hi in zip(lo.tolist(), self.term_hi[self.known].tolist())]
        if blocks is not None:
            ordered = np.unique(np.asarray(blocks, dtype=np.float64))
            at = np.searchsorted(ordered, self.block_lo, side="left")
            keep &= (at < len(ordered)) & (ordered[np.minimum(at, len(ordered) - 1)] <= self.block_hi)
        return np.nonzero(keep)[0].tolist()

    def read(self, terms: Sequence[str], columns: Sequence[str], blocks: np.ndarray | None = None) -> pa.Table:
        """The rows of ``terms`` (and ``blocks``), in the file's order (term, then block)."""
        groups = self.row_groups(terms, blocks)
        wanted = list(dict.fromkeys(["term", "block", *columns]))
        if not groups:
            return SCHEMA.select(wanted).empty_table()
        table = pq.ParquetFile(self.path, metadata=self.metadata).read_row_groups(groups, columns=wanted)
        mask = pc.is_in(table.column("term"), value_set=pa.array(sorted(set(terms)), type=pa.string()))
        if blocks is not None:
            mask = pc.and_(mask, pc.is_in(table.column("block"), value_set=pa.array(
                np.unique(np.asarray(blocks)).astype(np.uint32), type=pa.uint32())))
        # the row groups often hold just what was asked: then nothing is copied
        return table if pc.all(mask).as_py() else table.filter(mask)

    def document_frequencies(self, terms: Sequence[str]) -> dict[str, int]:
        """How many items of the index hold each of ``terms`` (0 for a term it lacks); kept for the
        last :data:`DF_CACHED` terms asked (a frequent term's count sums thousands of rows)."""
        out: dict[str, int] = {}
        with self._lock:
            for term in dict.fromkeys(terms):
                if term in self._df:
                    out[term] = self._df[term]
        missing = [t for t in dict.fromkeys(terms) if t not in out]
        if missing:
            found = dict.fromkeys(missing, 0)
            table = self.read(missing, ["df"])
            if table.num_rows:
                sums = table.group_by("term").aggregate([("df", "sum")])
                for term, n in zip(sums.column("term").to_pylist(), sums.column("df_sum").to_pylist()):
                    found[term] = int(n)
            out.update(found)
            with self._lock:
                self._df.update(found)
                while len(self._df) > DF_CACHED:
                    self._df.pop(next(iter(self._df)))
        return out

    def postings(self, terms: Sequence[str],
                 blocks: np.ndarray | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """term -> (row numbers as int64, counts as uint16) of the items holding it, ascending (only from
        ``blocks`` when given); terms the index lacks are absent."""
        table = self.read(terms, ["docs", "tf"], blocks)
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if not table.num_rows:
            return out
        term = table.column("term").to_numpy(zero_copy_only=False)
        docs, tf = table.column("docs").combine_chunks(), table.column("tf").combine_chunks()
        starts = np.flatnonzero(np.r_[True, term[1:] != term[:-1]])
        for lo, hi in zip(starts.tolist(), [*starts[1:].tolist(), len(term)]):
            out[str(term[lo])] = (unpacked(docs, lo, hi, DOCS_DTYPE).astype(np.int64),
                                  unpacked(tf, lo, hi, TF_DTYPE).astype(np.uint16))
        return out


def text_path(index_path: str) -> str:
    """The text index beside a search index file."""
    return index_path.rsplit("/", 1)[0] + "/" + TEXT_NAME if "/" in index_path else TEXT_NAME


__all__ = ["BLOCK_ROWS", "DOCS_DTYPE", "TEXT_NAME", "TF_DTYPE", "TextIndex", "text_index_bytes", "text_index_table",
           "text_path", "unpacked"]
