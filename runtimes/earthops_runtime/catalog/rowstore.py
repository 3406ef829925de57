"""The row store of a run: ``rows.arrow``, the rows of its ``index.parquet`` in the same order, for
reading a few rows at a time.

A Parquet row group is the least a reader decodes: every column of its 10,000 rows, even for one row.
A page of search results (ten items, newest first) lies in most of the row groups a bbox keeps, so
building it decoded those row groups whole — two thirds of a query's time over a 10M-item index. The
row store holds the same table as an Arrow IPC file in record batches of :data:`BATCH_ROWS` rows,
**uncompressed**: a row is its batch read with one positional read and its buffers sliced, with no
decoding, found through the file's footer (the offset of every batch). Search (:mod:`earthops_runtime.catalog.search`)
decides which rows and in what order from the index's narrow columns, then takes only those rows
from here.

Measured on 1M rows of the discovery benchmark's items, ten random rows made into Python dicts:
0.4 ms uncompressed against 2.4 ms with LZ4 buffers (each of the ~50 buffers of a batch decompressed
on its own) and 4.1 ms with zstd, for 356, 177 and 122 MB; batches of 64 rows took 0.7 ms (more
batch headers read). Uncompressed costs disk (about 3.5 times the index) for latency. At 10M rows
(3.6 GB) ten random rows took about 2 ms memory-mapped or read (p50), the tail shorter read (p99 6-7
ms against 10-90 ms): batches are read, not mapped.

Written beside the index in the same publication (:func:`~earthops_runtime.catalog.index.write_index_table`),
so both appear at once. An index published without one (before row stores existed) is read from
Parquet as before; a row store whose row count or columns do not match its index is ignored.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from earthops_runtime.cache import per_file_version

ROWS_NAME = "rows.arrow"
#: Rows per record batch: the least read (sliced, not decoded) for one row.
BATCH_ROWS = 256
#: Schema metadata key of the row store's facts (its batch size).
META_KEY = b"earthops:rows"


def rows_bytes(table: pa.Table, *, batch_rows: int = BATCH_ROWS) -> bytes:
    """The row store of an index table, rows in the table's order (the index file's: pass the sorted
    table the index was written from), every batch ``batch_rows`` rows but the last."""
    schema = table.schema.with_metadata({META_KEY: json.dumps({"batch_rows": batch_rows}).encode()})
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, schema) as writer:
        for start in range(0, table.num_rows, batch_rows):
            part = table.slice(start, batch_rows).combine_chunks()  # one batch, whatever the table's chunks
            writer.write_table(part.replace_schema_metadata(schema.metadata))
    return sink.getvalue().to_pybytes()


class RowStore:
    """The rows of one row store file, by row number (each batch holding one read with one call)."""

    def __init__(self, path: str):
        self.path = path
        self._reader = reader = ipc.open_file(pa.OSFile(path))  # positional reads
        self._lock = threading.Lock()  # one reader, shared by the queries of a server's threads
        facts = json.loads((reader.schema.metadata or {}).get(META_KEY, b"{}"))
        self.batch_rows = int(facts.get("batch_rows", 0))
        self.schema = reader.schema.remove_metadata()
        n = reader.num_record_batches
        if n and self.batch_rows <= 0:
            raise ValueError(f"{path}: not a row store (no batch size in its schema)")
        #: rows in the file
        self.rows = (n - 1) * self.batch_rows + reader.get_batch(n - 1).num_rows if n else 0

    def take(self, rows: Any) -> pa.Table:
        """The given rows (row numbers, any order, repeats allowed) as a table, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return self.schema.empty_table()
        if rows.min() < 0 or rows.max() >= self.rows:
            raise IndexError(f"{self.path}: row numbers outside 0..{self.rows - 1}")
        wanted, inverse = np.unique(rows, return_inverse=True)
        batch = wanted // self.batch_rows
        cuts = np.flatnonzero(np.diff(batch)) + 1
        with self._lock:
            parts = [self._reader.get_batch(int(b[0])).take(pa.array(r - int(b[0]) * self.batch_rows))
                     for b, r in zip(np.split(batch, cuts), np.split(wanted, cuts))]
        table = pa.Table.from_batches(parts).replace_schema_metadata(None)
        return table.take(pa.array(inverse.reshape(-1)))


@per_file_version(maxsize=256)
def _opened(path: str) -> RowStore:
    return RowStore(path)


def row_store(path: str) -> RowStore | None:
    """The :class:`RowStore` of a row store file (opened once per file version), None when there is none."""
    try:
        return _opened(path)
    except FileNotFoundError:
        return None


__all__ = ["BATCH_ROWS", "ROWS_NAME", "RowStore", "row_store", "rows_bytes"]
