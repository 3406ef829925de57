"""How the catalog's Parquet files are encoded (earthops_runtime.catalog.encoding): a dictionary only for
columns whose values repeat, LZ4 pages; the files written stay readable by DuckDB and searchable."""

from __future__ import annotations

import io
import random
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from earthops_runtime.catalog import encoding, index, textindex
from tests.unit.test_free_text import make_items

pytestmark = pytest.mark.unit


def test_a_dictionary_only_where_values_repeat() -> None:
    n = 1000
    rng = np.random.default_rng(4)
    table = pa.table({
        "id": [f"item-{i}" for i in range(n)],
        "collection": rng.choice(["a", "b", "c"], n).tolist(),
        "bbox": pa.StructArray.from_arrays([pa.array(rng.uniform(size=n)), pa.array(np.repeat([0.0, 1.0], n // 2))],
                                           names=["xmin", "ymin"]),
        "keywords": [["sea ice", "ice"] if i % 2 else ["forest"] for i in range(n)],
        "cloud": pa.array([None] * n, type=pa.float64()),
        "nearly": [f"v{i % 300}" for i in range(n)],  # 300 of 1000: above a quarter
        "quarter": [f"v{i % 250}" for i in range(n)],  # exactly a quarter
    })
    assert encoding.dictionary_columns(table) == ["collection", "bbox.ymin", "keywords.list.element", "cloud",
                                                  "quarter"]
    # only the sample decides: unique in the first 100 values, repeated after
    late = pa.table({"x": [str(i) for i in range(100)] + ["same"] * 900})
    assert encoding.dictionary_columns(late, sample_rows=100) == []
    assert encoding.dictionary_columns(late) == ["x"]


def test_index_files_are_written_with_those_encodings(tmp_path: Path) -> None:
    items = make_items(random.Random(3), 300, "enc")
    table, json_columns = index.items_table(items)
    data = index.index_bytes(table, json_columns=json_columns)
    md = pq.read_metadata(io.BytesIO(data))
    chunks = {md.row_group(0).column(i).path_in_schema: md.row_group(0).column(i) for i in range(md.num_columns)}
    assert {c.compression for c in chunks.values()} == {"LZ4"}
    for path in ("id", "geometry", "bbox.xmin"):  # distinct per item
        assert not chunks[path].has_dictionary_page, path
    assert chunks["collection"].has_dictionary_page  # one value
    # DuckDB, which streams the large queries, reads every row back
    path = tmp_path / index.INDEX_NAME
    path.write_bytes(data)
    assert duckdb.sql(f"SELECT count(*), count(DISTINCT id) FROM read_parquet('{path}')").fetchall() == [(300, 300)]

    # the text index follows the same rule (here, 300 items: posting row numbers repeat across terms)
    options = {"json_columns": frozenset(json_columns), "core": frozenset(index.CORE_COLUMNS)}
    text = textindex.text_index_bytes(index.sorted_table(table), **options)
    chosen = encoding.dictionary_columns(textindex.text_index_table(index.sorted_table(table), **options))
    md = pq.read_metadata(io.BytesIO(text))
    chunks = {md.row_group(0).column(i).path_in_schema: md.row_group(0).column(i) for i in range(md.num_columns)}
    assert {c.compression for c in chunks.values()} == {"LZ4"}
    assert {path for path, c in chunks.items() if c.has_dictionary_page} == set(chosen)
    assert set(chosen) < set(chunks)
