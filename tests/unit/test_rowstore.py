"""The row store (rows.arrow): the rows of an index by row number, in any order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from earthops_runtime.catalog import rowstore

pytestmark = pytest.mark.unit


def _table(n: int) -> pa.Table:
    rng = np.random.default_rng(3)
    ids = [f"item-{i:05d}" for i in range(n)]
    values = rng.normal(size=n)
    tags = [None if i % 7 == 0 else [f"t{i % 3}", "x"] for i in range(n)]
    # several chunks of odd sizes: the batches are cut by row count, not by the table's chunks
    table = pa.table({"id": ids, "value": values, "tags": pa.array(tags, type=pa.list_(pa.string()))})
    return pa.concat_tables([table.slice(0, 37), table.slice(37, 301), table.slice(338)])


@pytest.mark.parametrize("n", [1, 255, 256, 257, 1000])
def test_rows_come_back_by_number_in_the_order_asked(tmp_path: Path, n: int) -> None:
    table = _table(n)
    path = tmp_path / "rows.arrow"
    path.write_bytes(rowstore.rows_bytes(table, batch_rows=64))
    store = rowstore.RowStore(str(path))
    assert store.rows == n and store.batch_rows == 64 and store.schema.names == ["id", "value", "tags"]
    rng = np.random.default_rng(n)
    for size in (1, 3, 50):
        rows = rng.integers(0, n, size)  # any order, repeats
        assert store.take(rows).to_pylist() == table.take(pa.array(rows)).to_pylist()
    assert store.take(np.arange(n)[::-1]).to_pylist() == table.to_pylist()[::-1]
    assert store.take(np.zeros(0, dtype=np.int64)).num_rows == 0


def test_a_row_outside_the_store_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "rows.arrow"
    path.write_bytes(rowstore.rows_bytes(_table(400)))
    store = rowstore.RowStore(str(path))
    for bad in ([400], [-1], [3, 10_000]):
        with pytest.raises(IndexError, match="outside 0..399"):
            store.take(bad)


def test_only_a_row_store_is_opened_as_one(tmp_path: Path) -> None:
    import pyarrow.ipc as ipc

    path = tmp_path / "other.arrow"
    with ipc.new_file(str(path), _table(10).schema) as writer:
        writer.write_table(_table(10))
    with pytest.raises(ValueError, match="not a row store"):
        rowstore.RowStore(str(path))
    assert rowstore.row_store(str(tmp_path / "absent.arrow")) is None


def test_threads_share_one_row_store(tmp_path: Path) -> None:
    """The queries of a server's threads take rows from the same opened row store at once."""
    from concurrent.futures import ThreadPoolExecutor

    table = _table(3000)
    path = tmp_path / "rows.arrow"
    path.write_bytes(rowstore.rows_bytes(table, batch_rows=32))
    store = rowstore.RowStore(str(path))
    asks = [np.random.default_rng(seed).integers(0, 3000, 40) for seed in range(64)]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda rows: store.take(rows).to_pylist(), asks))
    for rows, rows_got in zip(asks, got):
        assert rows_got == table.take(pa.array(rows)).to_pylist()


def test_a_row_store_is_opened_once_per_file_version(tmp_path: Path) -> None:
    path = tmp_path / "rows.arrow"
    assert rowstore.row_store(str(path)) is None  # none written: the index is read as before
    path.write_bytes(rowstore.rows_bytes(_table(10), batch_rows=4))
    first = rowstore.row_store(str(path))
    assert first is not None and rowstore.row_store(str(path)) is first
    path.write_bytes(rowstore.rows_bytes(_table(300), batch_rows=4))  # republished: a new version
    second = rowstore.row_store(str(path))
    assert second is not None and second is not first
    assert second.take(np.asarray([299])).column("id").to_pylist() == ["item-00299"]
