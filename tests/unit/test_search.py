"""STAC search over the store's indexes (earthops_runtime.catalog.search) and `earthops search`: every
answer is compared with a brute-force evaluation of the same query over the generated items."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cql2
import numpy as np
import pytest
from typer.testing import CliRunner

from earthops.control.cli import app
from earthops.core.store import Store
from earthops_runtime.catalog import index, search
from earthops_runtime.stac.query import Query

pytestmark = pytest.mark.unit

PLATFORMS = ["sentinel-2a", "sentinel-2b", "landsat-8", "Sentinel-1A"]
TAGS = ["coast", "urban", "forest", "ice"]
EPOCH = datetime(2018, 1, 1, tzinfo=UTC)
RUNS = {  # run key -> collections in its index
    "datasets/default/alpha/g1-aaa": ["coll-a", "coll-b"],
    "datasets/team-x/beta/g3-bbb": ["coll-c"],
}


def _shape(rng: np.random.Generator, kind: int) -> dict[str, Any]:
    europe = rng.random() < 0.6
    cx = rng.uniform(-10, 30) if europe else rng.uniform(-176, 176)
    cy = rng.uniform(35, 60) if europe else rng.uniform(-75, 75)
    r = rng.uniform(0.3, 3.0)
    if kind == 0:  # a diamond: its bbox corners lie outside it
        ring = [[cx, cy - r], [cx + r, cy], [cx, cy + r], [cx - r, cy], [cx, cy - r]]
        return {"type": "Polygon", "coordinates": [ring]}
    if kind == 1:  # a thin triangle
        ring = [[cx - r, cy - r], [cx + r, cy - r], [cx + r, cy + r], [cx - r, cy - r]]
        return {"type": "Polygon", "coordinates": [ring]}
    if kind == 2:
        ring = [[cx - r, cy - r], [cx + r, cy - r], [cx + r, cy + r], [cx - r, cy + r], [cx - r, cy - r]]
        return {"type": "Polygon", "coordinates": [ring]}
    if kind == 3:
        return {"type": "Point", "coordinates": [cx, cy]}
    small = r / 3
    return {"type": "MultiPolygon", "coordinates": [
        [[[cx - r, cy - r], [cx - r + small, cy - r], [cx - r + small, cy - r + small], [cx - r, cy - r]]],
        [[[cx + r - small, cy + r - small], [cx + r, cy + r - small], [cx + r, cy + r], [cx + r - small, cy + r - small]]],
    ]}


def _bbox(geometry: dict[str, Any]) -> list[float]:
    pts = np.array(list(_points(geometry["coordinates"])))
    return [float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())]


def _points(coords: Any):
    if isinstance(coords[0], (int, float)):
        yield coords
    else:
        for c in coords:
            yield from _points(c)


def make_items(rng: np.random.Generator, collection: str, n: int) -> list[dict[str, Any]]:
    items = []
    for i in range(n):
        geometry = _shape(rng, i % 5)
        when = EPOCH + timedelta(seconds=int(rng.integers(0, 6 * 365 * 86400)))
        props: dict[str, Any] = {"datetime": index.format_datetime(when)}
        if rng.random() < 0.1:  # a range item: no datetime of its own
            props = {"datetime": None, "start_datetime": index.format_datetime(when),
                     "end_datetime": index.format_datetime(when + timedelta(days=int(rng.integers(1, 400))))}
        if rng.random() < 0.85:
            props["eo:cloud_cover"] = round(float(rng.uniform(0, 100)), 2)
        props["platform"] = PLATFORMS[int(rng.integers(0, len(PLATFORMS)))]
        props["gsd"] = int(rng.choice([10, 20, 30]))
        if rng.random() < 0.7:
            props["tags"] = sorted(rng.choice(TAGS, size=int(rng.integers(1, 3)), replace=False).tolist())
        if rng.random() < 0.3:
            props["earthops:meta"] = {"tile": f"T{i:03d}", "orbit": int(rng.integers(1, 175))}
        item_id = f"{collection}-{i:03d}"
        items.append({
            "type": "Feature", "stac_version": "1.1.0",
            "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json"],
            "id": item_id, "collection": collection, "geometry": geometry, "bbox": _bbox(geometry),
            "properties": props,
            "links": [{"rel": "collection", "href": f"stac/{collection}.json", "type": "application/json"},
                      {"rel": "via", "href": f"https://stac.example.com/items/{item_id}"}],
            "assets": {"data": {"href": f"data/{item_id}.tif", "type": "image/tiff; application=geotiff",
                                "roles": ["data"]}},
        })
    return items


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, list[dict[str, Any]]]:
    """A store with two published runs (3 collections, 360 items) and one run that is not published."""
    rng = np.random.default_rng(20240611)
    store = Store.from_uri(tmp_path_factory.mktemp("search-store").as_uri())
    everything = []
    for key, collections in RUNS.items():
        items = [it for c in collections for it in make_items(rng, c, 120)]
        with store.publish(key) as run:
            index.write_index(run, "index.parquet", items, row_group_size=64)
        everything += items
    # never published: a failed publication, and a folder without the marker
    with pytest.raises(RuntimeError), store.publish("datasets/default/failed/g1") as run:
        index.write_index(run, "index.parquet", make_items(rng, "coll-failed", 5))
        raise RuntimeError("the run failed")
    store.write_bytes("datasets/default/half/g1/index.parquet",
                      index.index_bytes(index.items_table(make_items(rng, "coll-half", 5))[0]))
    return store, everything


# --------------------------------------------------------------------------------------------------
# Brute force


def _interval(item: dict[str, Any]) -> tuple[datetime, datetime]:
    p = item["properties"]
    if p.get("datetime"):
        t = index.parse_datetime(p["datetime"])
        return t, t
    return index.parse_datetime(p["start_datetime"]), index.parse_datetime(p["end_datetime"])


def _box_polygon(w: float, s: float, e: float, n: float) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def brute_force(items: list[dict[str, Any]], *, collections=None, bbox=None, datetime=None, filter=None,
                limit=None) -> list[str]:
    """The ids a STAC API would answer, computed item by item (geometry by cql2's own S_INTERSECTS)."""
    boxes = []
    if bbox is not None:
        w, s, e, n = bbox
        parts = [(w, s, e, n)] if w <= e else [(w, s, 180.0, n), (-180.0, s, e, n)]
        boxes = [cql2.parse_json(json.dumps({"op": "s_intersects",
                                             "args": [{"property": "geometry"}, _box_polygon(*b)]})) for b in parts]
    start, end = search.parse_interval(datetime) if datetime else (None, None)
    expr = search.parse_filter(filter) if filter is not None else None
    hits = []
    for item in items:
        if collections is not None and item["collection"] not in collections:
            continue
        if boxes and not any(b.matches(item) for b in boxes):
            continue
        t0, t1 = _interval(item)
        if (start is not None and t1 < start) or (end is not None and t0 > end):
            continue
        if expr is not None:
            try:
                if not expr.matches(item):
                    continue
            except Exception:  # noqa: BLE001 - unknown (missing property): not a match
                continue
        hits.append(item)
    # pgstac's default order: datetime, then collection, then id, all descending
    hits.sort(key=lambda it: (_interval(it)[0], it["collection"], it["id"]), reverse=True)
    ids = [it["id"] for it in hits]
    return ids[:limit] if limit is not None else ids


def ids_of(results: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in results]


# --------------------------------------------------------------------------------------------------
# Answers equal brute force

FILTERS: list[Any] = [
    "eo:cloud_cover < 30",
    "eo:cloud_cover < 30 AND platform = 'sentinel-2a'",
    {"op": "or", "args": [{"op": "=", "args": [{"property": "platform"}, "landsat-8"]},
                          {"op": ">=", "args": [{"property": "eo:cloud_cover"}, 90]}]},
    json.dumps({"op": "and", "args": [{"op": "<=", "args": [{"property": "gsd"}, 20]},
                                      {"op": "isNull", "args": [{"property": "eo:cloud_cover"}]}]}),
    "platform IN ('sentinel-2a', 'sentinel-2b')",
    "platform LIKE 'sentinel%'",
    "CASEI(platform) = casei('SENTINEL-1A')",
    "eo:cloud_cover BETWEEN 10 AND 50",
    "eo:cloud_cover IS NULL",
    "NOT (platform = 'landsat-8')",
    "A_CONTAINS(tags, ('coast'))",
    "collection = 'coll-b' AND gsd = 10",
    "id LIKE 'coll-a-1%'",
    "datetime > TIMESTAMP('2021-01-01T00:00:00Z')",
    "T_INTERSECTS(datetime, INTERVAL('2020-01-01T00:00:00Z', '2020-12-31T23:59:59Z'))",
    "S_INTERSECTS(geometry, POLYGON((0 40, 20 40, 20 55, 0 55, 0 40)))",
    "gsd = 10 AND S_INTERSECTS(geometry, POLYGON((0 40, 20 40, 20 55, 0 55, 0 40)))",
    "properties.platform = 'landsat-8'",
    "no_such_property = 1",
]


@pytest.mark.parametrize("cql", FILTERS, ids=[f"f{i}" for i in range(len(FILTERS))])
def test_cql2_filters_answer_exactly_the_brute_force(corpus, cql) -> None:
    store, items = corpus
    expected = brute_force(items, filter=cql)
    assert ids_of(search.search(store, filter=cql)) == expected
    if cql != "no_such_property = 1":
        assert expected, f"the corpus should exercise {cql!r}"


def test_collection_bbox_and_datetime_answer_exactly_the_brute_force(corpus) -> None:
    store, items = corpus
    cases = [
        {},
        {"collections": ["coll-a"]},
        {"collections": ["coll-a", "coll-c"]},
        {"collections": ["nope"]},
        {"bbox": [0.0, 40.0, 10.0, 50.0]},
        {"bbox": [-180.0, -90.0, 180.0, 90.0]},
        {"bbox": [170.0, -60.0, -170.0, 60.0]},  # across the antimeridian
        {"datetime": "2020-01-01T00:00:00Z/2020-06-30T23:59:59Z"},
        {"datetime": "2022-06-01/.."},
        {"datetime": "../2018-12-31"},
        {"datetime": "2019-03-01"},
        {"collections": ["coll-b"], "bbox": [-10.0, 35.0, 30.0, 60.0], "datetime": "2019-01-01/2021-12-31",
         "filter": "eo:cloud_cover < 50"},
    ]
    for case in cases:
        assert ids_of(search.search(store, **case)) == brute_force(items, **case), case


def test_random_queries_answer_exactly_the_brute_force(corpus) -> None:
    store, items = corpus
    rng = np.random.default_rng(7)
    nonempty = 0
    for _ in range(60):
        query: dict[str, Any] = {}
        if rng.random() < 0.3:
            query["collections"] = sorted(rng.choice(["coll-a", "coll-b", "coll-c"], size=int(rng.integers(1, 3)),
                                                     replace=False).tolist())
        if rng.random() < 0.8:
            w, s = rng.uniform(-20, 30), rng.uniform(30, 60)
            size = rng.uniform(1, 15)
            query["bbox"] = [w, s, min(w + size, 180.0), min(s + size, 90.0)]
        if rng.random() < 0.6:
            a = EPOCH + timedelta(days=int(rng.integers(0, 2000)))
            b = a + timedelta(days=int(rng.integers(1, 600)))
            query["datetime"] = f"{index.format_datetime(a)}/{index.format_datetime(b)}"
        if rng.random() < 0.5:
            query["filter"] = FILTERS[int(rng.integers(0, len(FILTERS)))]
        if rng.random() < 0.3:
            query["limit"] = int(rng.integers(1, 10))
        got = ids_of(search.search(store, **query))
        assert got == brute_force(items, **query), query
        nonempty += bool(got)
    assert nonempty >= 20


def _random_box(rng: np.random.Generator) -> list[float] | None:
    """None, a box over the corpus, or one across the antimeridian (west > east)."""
    kind = rng.random()
    if kind < 0.15:
        return None
    if kind < 0.3:
        return [float(rng.uniform(20, 179)), float(rng.uniform(20, 50)), float(rng.uniform(-179, 10)), float(rng.uniform(50, 80))]
    w, s = rng.uniform(-25, 35), rng.uniform(25, 65)
    size = rng.uniform(0.5, 12)
    return [float(w), float(s), float(min(w + size, 180.0)), float(min(s + size, 90.0))]


def _random_interval(rng: np.random.Generator) -> tuple[datetime | None, datetime | None]:
    a = EPOCH + timedelta(days=int(rng.integers(-100, 2300)))
    b = a + timedelta(days=int(rng.integers(0, 500)))
    kind = rng.random()
    return (None, None) if kind < 0.2 else (a, None) if kind < 0.35 else (None, b) if kind < 0.5 else (a, b)


def _random_space_time(rng: np.random.Generator) -> dict[str, Any]:
    """Query arguments: a random bbox (or none) and a random datetime interval (or none, or open)."""
    query: dict[str, Any] = {}
    if (box := _random_box(rng)) is not None:
        query["bbox"] = box
    start, end = _random_interval(rng)
    if start or end:
        query["datetime"] = f"{index.format_datetime(start) if start else '..'}/{index.format_datetime(end) if end else '..'}"
    return query


def _watch_reruns(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Records, for every run of a query (search._run), whether it runs over every row (``whole``)."""
    seen: list[bool] = []
    real = search._run

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("whole", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(search, "_run", spy)
    return seen


def _meets_sql(row: dict[str, Any], box: list[float] | None, start: datetime | None, end: datetime | None) -> bool:
    """The SQL bbox and datetime predicates of the search (_bbox_sql, _datetime_sql) on one index row,
    NULL being false."""
    if box is not None:
        b = row["bbox"]
        if b is None or None in b.values():
            return False
        w, s, e, n = box
        x = (b["xmin"] <= e and b["xmax"] >= w) if w <= e else (b["xmax"] >= w or b["xmin"] <= e)
        if not (x and b["ymin"] <= n and b["ymax"] >= s):
            return False
    ranged = row["start_datetime"] is not None and row["end_datetime"] is not None
    t0 = row["start_datetime"] if ranged else row["datetime"]
    t1 = row["end_datetime"] if ranged else row["datetime"]
    if end is not None and (t0 is None or t0 > end):
        return False
    return start is None or (t1 is not None and t1 >= start)


def test_a_row_group_is_left_out_only_when_no_row_of_it_can_match(corpus) -> None:
    """The row groups read for a bbox or datetime query (search.RowGroups) are chosen by their
    statistics: every row of a row group left out fails the SQL predicates, and boxes do leave row
    groups out."""
    import pyarrow.parquet as pq

    store, _ = corpus
    rng = np.random.default_rng(11)
    left_out = total = 0
    for path in search.local_index_files(store):
        groups = search.row_groups(path)
        rows = pq.read_table(path, columns=["bbox", "datetime", "start_datetime", "end_datetime"]).to_pylist()
        assert groups.metadata.num_row_groups >= 2 and int(groups.rows.sum()) == len(rows)
        for _ in range(80):
            box = _random_box(rng)
            start, end = _random_interval(rng)
            chosen = set(groups.chosen(box, start, end).tolist())
            for g in set(range(len(groups.rows))) - chosen:
                first = int(groups.first_row[g])
                assert not any(_meets_sql(r, box, start, end) for r in rows[first:first + int(groups.rows[g])]), \
                    (path, g, box, start, end)
            left_out += len(groups.rows) - len(chosen)
            total += len(groups.rows)
    assert left_out > total // 5  # (130 of 480 with this seed: a quarter of the boxes are none or cross the antimeridian)


def test_answers_are_the_same_whoever_chooses_the_row_groups(corpus, monkeypatch) -> None:
    """Random queries (bbox, datetime, collections, CQL2, free text, sortby, limit) give the same items
    in the same order with the row groups chosen here as with every file streamed through DuckDB."""
    store, _ = corpus
    rng = np.random.default_rng(12)
    used = []
    real = search._chosen_source

    def spy(*args: Any, **kwargs: Any) -> Any:
        used.append(real(*args, **kwargs))
        return used[-1]

    queries = []
    for _ in range(60):
        query = _random_space_time(rng)
        if rng.random() < 0.3:
            query["filter"] = FILTERS[int(rng.integers(0, len(FILTERS)))]
        if rng.random() < 0.25:
            query["collections"] = ["coll-a", "coll-c"]
        if rng.random() < 0.25:
            query["q"] = ["coast", "landsat OR urban", "sentinel -ice"][int(rng.integers(0, 3))]
        if rng.random() < 0.2:
            query["sortby"] = "-eo:cloud_cover"
        if rng.random() < 0.3:
            query["limit"] = int(rng.integers(1, 8))
        queries.append(query)
    monkeypatch.setattr(search, "_chosen_source", spy)
    monkeypatch.setattr(search, "CHOSEN_GROUPS_SHARE", 1.0)  # this small index would be streamed
    here = [search.search(store, **q) for q in queries]
    assert sum(u is not None for u in used) >= 30
    monkeypatch.setattr(search, "CHOSEN_ROWS_MAX", -1)
    used.clear()
    streamed = [search.search(store, **q) for q in queries]
    assert not any(used)
    for q, a, b in zip(queries, here, streamed):
        assert a == b, q
    assert sum(bool(a) for a in here) >= 20


def test_repeated_strings_are_read_as_their_dictionary(corpus) -> None:
    """Rows read for a query keep the string columns stored with a dictionary as dictionary arrays (no
    string per row is decoded), the others as plain strings; the items are the same either way
    (test_answers_are_the_same_whoever_chooses_the_row_groups)."""
    import pyarrow as pa

    store, _ = corpus
    for path in search.local_index_files(store):
        groups = search.row_groups(path)
        assert "collection" in groups.dictionary and "type" in groups.dictionary
        assert "id" not in groups.dictionary and "geometry" not in groups.dictionary
        table = search._rows_table(path, np.array([0, 1, int(groups.rows.sum()) - 1]), False)
        assert pa.types.is_dictionary(table.schema.field("collection").type)
        assert pa.types.is_string(table.schema.field("id").type)
        assert len(set(table.column("collection").to_pylist())) >= 1


def test_a_page_python_leaves_short_is_filled_from_every_row(corpus, monkeypatch) -> None:
    """With a limit and a criterion Python decides (the geometry, a residual filter, a long phrase),
    SQL hands over only the first rows of its order; a page Python leaves short while more rows could
    follow is filled by running the query again over every row: the same items as without the shortcut."""
    store, _ = corpus
    rng = np.random.default_rng(13)
    queries = []
    for _ in range(50):
        query: dict[str, Any] = {"limit": int(rng.integers(1, 9))}
        if (box := _random_box(rng)) is not None:
            query["bbox"] = box
        if rng.random() < 0.4:
            query["filter"] = FILTERS[int(rng.integers(0, len(FILTERS)))]
        if rng.random() < 0.3:
            query["q"] = ["coast", "landsat OR urban", "sentinel -ice", '"landsat scene over"'][int(rng.integers(0, 4))]
        queries.append(query)
    monkeypatch.setattr(search, "overfetch", lambda limit: 10**9)  # every row: never short
    expected = [search.search(store, **q) for q in queries]
    whole = _watch_reruns(monkeypatch)
    monkeypatch.setattr(search, "overfetch", lambda limit: 1)  # one row: any rejection leaves the page short
    for q, want in zip(queries, expected):
        assert search.search(store, **q) == want, q
    assert sum(whole) >= 5
    assert sum(bool(w) for w in expected) >= 25


def test_pages_are_taken_from_the_row_store(corpus, monkeypatch) -> None:
    """Each published index has its row store (rows.arrow, the same rows in the same order); a query
    without a filter or sortby is decided on the narrow columns and its rows are taken whole from the
    row stores: the same items, in the same order, as from the index's own rows."""
    from earthops_runtime.catalog import rowstore

    store, _ = corpus
    for path in search.local_index_files(store):
        rows = search.row_store_of(path)
        assert rows is not None and rows.rows == int(search.row_groups(path).rows.sum())
    rng = np.random.default_rng(14)
    queries = []
    for _ in range(40):
        query = _random_space_time(rng)
        if rng.random() < 0.3:
            query["q"] = ["coast", "landsat OR urban", "sentinel -ice"][int(rng.integers(0, 3))]
        if rng.random() < 0.5:
            query["limit"] = int(rng.integers(1, 8))
        queries.append(query)
    monkeypatch.setattr(search, "CHOSEN_GROUPS_SHARE", 1.0)  # this small index would be streamed
    taken = []
    real = rowstore.RowStore.take
    monkeypatch.setattr(rowstore.RowStore, "take", lambda self, rows: taken.append(len(rows)) or real(self, rows))
    from_stores = [search.search(store, **q) for q in queries]
    assert len(taken) >= 20
    # many rows of a file in one slice come from its row groups decoded whole (each once a query)
    decoded = []
    real_rows = search._rows_table
    monkeypatch.setattr(search, "_rows_table", lambda *args, **kwargs: (
        decoded.append(len(args[1])) if kwargs.get("decoded") is not None else None) or real_rows(*args, **kwargs))
    monkeypatch.setattr(search, "ROW_STORE_ROWS_MAX", 2)
    assert [search.search(store, **q) for q in queries] == from_stores
    assert len(decoded) >= 10
    monkeypatch.setattr(search, "row_store_of", lambda path: None)
    taken.clear()
    from_index = [search.search(store, **q) for q in queries]
    assert not taken
    for q, a, b in zip(queries, from_stores, from_index):
        assert a == b, q
    assert sum(bool(a) for a in from_stores) >= 15  # (19 of 40 with this seed)


def test_free_text_pages_over_a_superset_of_the_rows_are_exact(corpus, monkeypatch) -> None:
    """Free text with only a bbox and a datetime on row-store indexes ranks the rows their bbox and time
    columns let through (a superset), and the join applies the criteria: a page whose most relevant
    candidates fail them runs again with the rows SQL selects. Every row of the chosen row groups let
    through here: each page equals the head of the whole answer."""
    store, _ = corpus
    monkeypatch.setattr(search, "CHOSEN_GROUPS_SHARE", 1.0)  # this small index would be streamed
    rng = np.random.default_rng(15)
    queries = []
    while len(queries) < 30:
        query = _random_space_time(rng)
        if "bbox" in query:  # boxes large enough to hold a few pages
            w, s = rng.uniform(-25, 0), rng.uniform(25, 45)
            query["bbox"] = [float(w), float(s), float(w + rng.uniform(15, 50)), float(s + rng.uniform(10, 30))]
        if query:
            query["q"] = ["coast", "landsat OR urban", "sentinel -ice", "sentinel OR landsat"][int(rng.integers(0, 4))]
            queries.append(query)
    whole_answers = [search.search(store, **q) for q in queries]
    monkeypatch.setattr(search, "_may_match", lambda table, query: np.ones(table.num_rows, dtype=bool))
    reruns = _watch_reruns(monkeypatch)
    for q, want in zip(queries, whole_answers):
        for limit in (1, 3, 6):
            assert search.search(store, limit=limit, **q) == want[:limit], (q, limit)
    assert sum(reruns) >= 5
    assert sum(len(w) >= 6 for w in whole_answers) >= 10


def test_a_row_store_that_does_not_match_its_index_is_not_used(tmp_path: Path) -> None:
    from earthops_runtime.catalog import rowstore

    store = Store.from_uri(tmp_path.as_uri())
    items = make_items(np.random.default_rng(6), "coll-a", 30)
    with store.publish("datasets/default/mismatch/g1") as run:
        index.write_index(run, "index.parquet", items, row_group_size=8)
        table, _ = index.items_table(items[:20])  # another row count
        run.write_bytes(rowstore.ROWS_NAME, rowstore.rows_bytes(index.sorted_table(table)))
    (path,) = search.local_index_files(store)
    assert search.row_store_of(path) is None
    query = {"bbox": [-10.0, 35.0, 30.0, 60.0], "limit": 4}
    assert ids_of(search.search(store, **query)) == brute_force(items, **query)


def test_free_text_items_are_the_items(corpus, monkeypatch) -> None:
    """A free-text hit is the same STAC item an id lookup gives (nothing of the ranking leaks into its
    properties), however its rows are read."""
    store, _ = corpus
    for share in (1.0, 0.0):  # row groups chosen here (row stores), or the files streamed through DuckDB
        monkeypatch.setattr(search, "CHOSEN_GROUPS_SHARE", share)
        for query in ({"q": "landsat OR urban", "bbox": [-20.0, 30.0, 35.0, 65.0]},
                      {"q": "coast", "datetime": "2015-01-01T00:00:00Z/2030-01-01T00:00:00Z", "limit": 5}):
            ranked = search.search(store, **query)
            assert ranked
            for item in ranked:
                assert search.search(store, ids=[item["id"]], collections=[item["collection"]]) == [item]


def test_geometry_decides_not_the_bbox(corpus) -> None:
    store, items = corpus
    diamond = next(it for it in items if it["geometry"]["type"] == "Polygon" and len(it["geometry"]["coordinates"][0]) == 5
                   and it["geometry"]["coordinates"][0][0][0] == it["geometry"]["coordinates"][0][2][0])
    w, s, e, n = diamond["bbox"]
    corner = [w, s, w + (e - w) * 0.1, s + (n - s) * 0.1]  # inside the bbox, outside the diamond
    assert diamond["id"] not in ids_of(search.search(store, bbox=corner))
    centre = [(w + e) / 2 - 0.01, (s + n) / 2 - 0.01, (w + e) / 2 + 0.01, (s + n) / 2 + 0.01]
    assert diamond["id"] in ids_of(search.search(store, bbox=centre))


def test_limit_takes_the_first_results_newest_first(corpus) -> None:
    store, items = corpus
    full = ids_of(search.search(store, bbox=[-10, 35, 30, 60]))
    assert ids_of(search.search(store, bbox=[-10, 35, 30, 60], limit=7)) == full[:7]
    assert ids_of(search.search(store, filter="S_INTERSECTS(geometry, POLYGON((0 40, 20 40, 20 55, 0 55, 0 40)))",
                                limit=3)) == brute_force(items, filter="S_INTERSECTS(geometry, POLYGON((0 40, 20 40, "
                                                                       "20 55, 0 55, 0 40)))")[:3]
    times = [_interval(it)[0] for it in search.search(store, limit=50)]
    assert times == sorted(times, reverse=True)


def test_sql_takes_what_duckdb_can_bind_and_python_the_rest(corpus) -> None:
    store, _ = corpus
    files = search._local_files(store, search.index_keys(store))
    cur = search._cursor()
    try:
        expr = search.parse_filter("eo:cloud_cover < 30 AND A_CONTAINS(tags, ('coast')) AND "
                                   "S_INTERSECTS(geometry, POINT(10 45)) AND properties.gsd = 10")
        sql, residual = search._split_filter(cur, search._source(files), expr)
    finally:
        cur.close()
    assert len(sql) == 2 and "eo:cloud_cover" in sql[0] and "tags" in sql[1]
    ops = [a.get("op") for a in residual.to_json()["args"]]
    assert ops == ["s_intersects", "="]


def test_items_come_back_whole_with_absolute_hrefs(corpus) -> None:
    store, items = corpus
    original = next(it for it in items if "earthops:meta" in it["properties"] and "tags" in it["properties"]
                    and it["collection"] == "coll-c")
    (found,) = search.search(store, filter=f"id = '{original['id']}'")
    run_url = store.url("datasets/team-x/beta/g3-bbb")
    assert found["properties"] == original["properties"]
    assert found["geometry"] == original["geometry"] and found["bbox"] == original["bbox"]
    assert found["stac_extensions"] == original["stac_extensions"]
    assert found["collection"] == "coll-c" and found["stac_version"] == "1.1.0"
    assert found["assets"]["data"]["href"] == f"{run_url}/data/{original['id']}.tif"
    links = {link["rel"]: link["href"] for link in found["links"]}
    assert links == {"collection": f"{run_url}/stac/coll-c.json", "via": f"https://stac.example.com/items/{original['id']}"}
    range_item = next(it for it in items if it["properties"]["datetime"] is None)
    (found,) = search.search(store, filter=f"id = '{range_item['id']}'")
    assert found["properties"] == range_item["properties"]


def test_unpublished_runs_are_invisible(corpus) -> None:
    store, _ = corpus
    assert search.index_keys(store) == [f"{k}/index.parquet" for k in sorted(RUNS)]
    assert search.search(store, collections=["coll-failed", "coll-half"]) == []


def test_a_remote_store_is_searched_through_a_local_cache(tmp_path, monkeypatch) -> None:
    """A store that is not a local folder (fsspec's memory file system takes the S3 code paths of the
    Store: copy + marker publication) is read through local copies, resolved against its own URLs."""
    import fsspec

    monkeypatch.setenv("EARTHOPS_CACHE", str(tmp_path / "cache"))
    fs = fsspec.filesystem("memory")
    remote = Store("memory://earthops-search-test", fs, "/earthops-search-test")
    assert not remote.is_local
    items = make_items(np.random.default_rng(5), "coll-remote", 40)
    with remote.publish("datasets/default/remote/g1") as run:
        index.write_index(run, "index.parquet", items)
    try:
        query = {"bbox": [-10.0, 35.0, 30.0, 60.0], "filter": "eo:cloud_cover < 60"}
        found = search.search(remote, **query)
        assert ids_of(found) == brute_force(items, **query) and found
        assert found[0]["assets"]["data"]["href"].startswith("memory://earthops-search-test/datasets/default/remote/g1/")
        cached = sorted(p.name for p in (tmp_path / "cache" / "index").glob("*.parquet"))
        assert len(cached) == 2 and cached[1] == cached[0].replace(".parquet", ".text.parquet")  # + its text index
        assert ids_of(search.search(remote, **query)) == ids_of(found)  # from the cache
        ranked = search.search(remote, q="sentinel OR 2a", **query)
        assert ids_of(ranked) == [it["id"] for it in Query.parse(q="sentinel OR 2a", **query).select(items)]
        assert len(ranked) < len(found)
        assert len(list((tmp_path / "cache" / "index").glob("*.parquet"))) == 2
        # its row store is copied beside it, and a page without a filter is taken from it
        (rows,) = (tmp_path / "cache" / "index").glob("*.rows.arrow")
        assert rows.name == cached[0].replace(".parquet", ".rows.arrow")
        page = {"bbox": [-10.0, 35.0, 30.0, 60.0], "limit": 5}
        assert ids_of(search.search(remote, **page)) == brute_force(items, **page)
    finally:
        fs.rm("/earthops-search-test", recursive=True)


def test_a_failed_copy_into_the_cache_leaves_no_part_of_it(tmp_path, monkeypatch) -> None:
    """A remote index whose copy fails half way (the connection drops) leaves nothing in the cache:
    the next search copies it again, whole."""
    import fsspec

    from earthops.core.errors import StoreError

    monkeypatch.setenv("EARTHOPS_CACHE", str(tmp_path / "cache"))
    fs = fsspec.filesystem("memory")
    remote = Store("memory://earthops-cache-fault", fs, "/earthops-cache-fault")
    items = make_items(np.random.default_rng(8), "coll-remote", 20)
    with remote.publish("datasets/default/remote/g1") as run:
        index.write_index(run, "index.parquet", items)
    real = Store.download

    def dropped(self: Store, key: str, dest: Any) -> None:
        Path(dest).write_bytes(b"part of it")
        raise StoreError(f"read {self.url(key)}: connection reset")

    try:
        monkeypatch.setattr(Store, "download", dropped)
        with pytest.raises(StoreError, match="connection reset"):
            search.search(remote, bbox=[-10.0, 35.0, 30.0, 60.0])
        assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
        monkeypatch.setattr(Store, "download", real)
        query = {"bbox": [-10.0, 35.0, 30.0, 60.0], "limit": 5}
        assert ids_of(search.search(remote, **query)) == brute_force(items, **query)
    finally:
        fs.rm("/earthops-cache-fault", recursive=True)


def test_an_empty_store_answers_nothing(tmp_path: Path) -> None:
    assert search.search(Store.from_uri(tmp_path.as_uri()), bbox=[0, 0, 1, 1]) == []


# --------------------------------------------------------------------------------------------------
# Bad arguments


@pytest.mark.parametrize("kwargs, parameter, fragment", [
    ({"bbox": [1, 2, 3]}, "bbox", "4 numbers"),
    ({"bbox": "a,b,c,d"}, "bbox", "4 numbers"),
    ({"bbox": [0, 10, 1, 5]}, "bbox", "south"),
    ({"bbox": [-200, 0, 1, 1]}, "bbox", "longitudes"),
    ({"bbox": [0, -95, 1, 1]}, "bbox", "latitudes"),
    ({"bbox": [0, 0, float("nan"), 1]}, "bbox", "finite"),
    ({"datetime": "yesterday"}, "datetime", "RFC 3339"),
    ({"datetime": "2021-01-01T00:00:00"}, "datetime", "time zone"),
    ({"datetime": "2021-02-01/2021-01-01"}, "datetime", "after"),
    ({"datetime": "2021-01-01/2021-02-01/2021-03-01"}, "datetime", "one '/'"),
    ({"datetime": "2021-13-01"}, "datetime", "month"),
    ({"filter": "eo:cloud_cover <<< 3"}, "filter", "not valid CQL2"),
    ({"filter": "{\"op\": "}, "filter", "CQL2-JSON"),
    ({"filter": {"op": "<"}}, "filter", "not valid CQL2"),
    ({"filter": "read_text('/etc/passwd') = 'x'"}, "filter", "unknown CQL2 operator"),
    ({"filter": ""}, "filter", "expected"),
    ({"limit": 0}, "limit", "positive"),
    ({"collections": [""]}, "collections", "non-empty"),
])
def test_bad_arguments_name_the_parameter(corpus, kwargs, parameter, fragment) -> None:
    store, _ = corpus
    with pytest.raises(search.SearchError) as caught:
        search.search(store, **kwargs)
    assert caught.value.parameter == parameter
    assert str(caught.value).startswith(f"{parameter}: ")
    assert fragment in str(caught.value)


def test_intervals() -> None:
    day = search.parse_interval("2020-06-01")
    assert day == (datetime(2020, 6, 1, tzinfo=UTC), datetime(2020, 6, 1, 23, 59, 59, 999999, tzinfo=UTC))
    assert search.parse_interval("../2020-01-01T12:00:00+02:00") == (None, datetime(2020, 1, 1, 10, tzinfo=UTC))
    assert search.parse_interval("2020-01-01T00:00:00Z/") == (datetime(2020, 1, 1, tzinfo=UTC), None)
    instant = search.parse_interval("2020-01-01T00:00:00.5Z")
    assert instant[0] == instant[1] == datetime(2020, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)


# --------------------------------------------------------------------------------------------------
# earthops search


def test_cli_prints_a_table(corpus) -> None:
    store, items = corpus
    result = CliRunner().invoke(app, ["search", "--store", store.uri, "--collection", "coll-a", "--bbox",
                                      "-10,35,30,60", "--datetime", "2019-01-01/2021-12-31", "--limit", "5"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["ID", "COLLECTION", "DATETIME", "BBOX"]
    expected = brute_force(items, collections=["coll-a"], bbox=[-10, 35, 30, 60], datetime="2019-01-01/2021-12-31",
                           limit=5)
    assert [line.split()[0] for line in lines[1:]] == expected
    first = next(it for it in items if it["id"] == expected[0])
    assert lines[1].split()[1:3] == ["coll-a", first["properties"]["datetime"] or
                                     f"{first['properties']['start_datetime']}/{first['properties']['end_datetime']}"]


def test_cli_json_is_a_feature_collection_of_the_items(corpus) -> None:
    store, items = corpus
    cql = "eo:cloud_cover < 20 AND platform = 'sentinel-2b'"
    result = CliRunner().invoke(app, ["search", "--store", store.uri, "--filter", cql, "-o", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["type"] == "FeatureCollection"
    assert [f["id"] for f in doc["features"]] == brute_force(items, filter=cql)
    assert doc["features"] == search.search(store, filter=cql)
    assert all(f["type"] == "Feature" for f in doc["features"])
    # CQL2-JSON on the command line too
    as_json = json.dumps(cql2.parse_text(cql).to_json())
    again = CliRunner().invoke(app, ["search", "--store", store.uri, "--filter", as_json, "-o", "json"])
    assert json.loads(again.stdout) == doc


@pytest.mark.parametrize("args, option", [
    (["--bbox", "1,2,3"], "--bbox"),
    (["--bbox", "west,south,east,north"], "--bbox"),
    (["--datetime", "last week"], "--datetime"),
    (["--filter", "cloud <<< 1"], "--filter"),
    (["-o", "yaml"], "--output"),
    (["--limit", "0"], "--limit"),
])
def test_cli_bad_input_exits_2_naming_the_option(corpus, args, option) -> None:
    store, _ = corpus
    result = CliRunner().invoke(app, ["search", "--store", store.uri, *args])
    assert result.exit_code == 2
    assert option in result.output


def test_cli_says_when_nothing_matches(corpus) -> None:
    store, _ = corpus
    result = CliRunner().invoke(app, ["search", "--store", store.uri, "--collection", "nope"])
    assert result.exit_code == 0
    assert "No items found" in result.output


def test_cli_free_text_and_sortby(corpus) -> None:
    store, items = corpus
    result = CliRunner().invoke(app, ["search", "--store", store.uri, "--q", "sentinel OR 2a", "--sortby", "-gsd",
                                      "-o", "json"])
    assert result.exit_code == 0, result.output
    want = Query.parse(q="sentinel OR 2a", sortby="-gsd").select(items)
    assert ids_of(json.loads(result.stdout)["features"]) == [it["id"] for it in want] and want


@pytest.mark.parametrize(("args", "says"), [
    (["search", "--q", "(iceberg"], "--q: "),
    (["search", "--q", "a AND"], "--q: "),
    (["search", "--sortby", "-geometry"], "--sortby: "),
    (["catalog", "serve", "--port", "0"], "--port 0"),
    (["catalog", "serve", "--log-level", "loud"], "--log-level"),
])
def test_cli_bad_discovery_input_exits_2_naming_the_option(corpus, args, says) -> None:
    store, _ = corpus
    result = CliRunner().invoke(app, [*args, "--store", store.uri])
    assert result.exit_code == 2, result.output
    assert says in result.output
