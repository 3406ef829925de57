"""Search benchmark: the stac-geoparquet index + DuckDB against walking a static STAC catalog.

* **index, 1M** — ``EARTHOPS_BENCH_ITEMS`` (default 1,000,000) synthetic items written column-wise
  straight into one published run's ``index.parquet`` (Hilbert-sorted, 10k-row groups), queried with
  :func:`earthops_runtime.catalog.search.search` (discovery, DuckDB, item dicts: the whole call).
* **index, subset** — the first ``EARTHOPS_BENCH_STATIC_ITEMS`` (default 20,000) of those items as
  their own index, queried the same way.
* **static walk, subset** — the same subset as a self-contained static catalog in pystac's layout
  (a collection and one JSON file per item); each query opens it with pystac and walks every item,
  keeping those whose bbox and datetime match (what a client does without an index).
* **static walk, 1M (extrapolated)** — the subset walk scaled linearly by items (a walk reads every
  item file: its cost is proportional to the items); *not measured*.

Items: footprints of about one Sentinel-2 tile (1 degree high, 1/cos(lat) wide) over land boxes of
every continent, acquisition times over ten years, ``eo:cloud_cover``, ``platform``, two assets.
Queries (``EARTHOPS_BENCH_QUERIES``, default 200): a 0.5-3 degree box around a random land point and a
1-6 month interval. Every index answer is checked against a numpy brute force over all items, and the
walk's answers against the subset index's. Latencies are wall time per call on a warm page cache.
The goal is a p50 at most 50 ms over 1M items.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pystac
import pytest

from earthops.core.store import Store
from earthops_runtime.catalog import index, search

pytestmark = pytest.mark.bench

N_ITEMS = int(os.environ.get("EARTHOPS_BENCH_ITEMS", "1000000"))
N_STATIC = int(os.environ.get("EARTHOPS_BENCH_STATIC_ITEMS", "20000"))
N_QUERIES = int(os.environ.get("EARTHOPS_BENCH_QUERIES", "200"))
N_WALKS = int(os.environ.get("EARTHOPS_BENCH_WALKS", "3"))
GOAL_P50_MS = 50.0
SEED = 11

#: Land, roughly: (west, south, east, north) boxes per continent; items are spread by box area.
LAND = np.array([
    (-125, 30, -70, 50), (-120, 50, -60, 62), (-160, 60, -140, 70),  # North America, Alaska
    (-105, 15, -85, 30),  # Mexico
    (-80, -35, -40, 5), (-73, -52, -65, -35),  # South America
    (-10, 36, 30, 60), (5, 60, 30, 70),  # Europe, Scandinavia
    (-15, 5, 35, 30), (10, -30, 40, 5),  # Africa
    (40, 15, 60, 35), (60, 20, 90, 45), (90, 25, 120, 45), (70, 45, 140, 65),  # Asia
    (95, -8, 140, 15),  # South-east Asia
    (115, -35, 150, -18),  # Australia
], dtype="f8")
PLATFORMS = np.array(["sentinel-2a", "sentinel-2b", "landsat-8", "landsat-9"])
COLLECTIONS = np.array(["sentinel-2-l2a", "sentinel-2-l2a", "landsat-c2-l2", "landsat-c2-l2"])
T_START = np.datetime64("2015-07-01T00:00:00", "us")
T_END = np.datetime64("2025-07-01T00:00:00", "us")


def land_points(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    area = (LAND[:, 2] - LAND[:, 0]) * (LAND[:, 3] - LAND[:, 1])
    box = LAND[rng.choice(len(LAND), n, p=area / area.sum())]
    return rng.uniform(box[:, 0], box[:, 2]), rng.uniform(box[:, 1], box[:, 3])


def synthetic_index(n: int, seed: int = SEED) -> pa.Table:
    """``n`` items as an index table, built column-wise (no per-item Python but the id/asset text)."""
    rng = np.random.default_rng(seed)
    lon, lat = land_points(rng, n)
    h = rng.uniform(0.95, 1.05, n)
    w = np.minimum(h / np.cos(np.radians(lat)), 6.0)
    xmin, xmax = np.clip(lon - w / 2, -180, 180), np.clip(lon + w / 2, -180, 180)
    ymin, ymax = np.clip(lat - h / 2, -90, 90), np.clip(lat + h / 2, -90, 90)
    when = rng.integers(T_START.astype(np.int64), T_END.astype(np.int64), n)
    which = rng.integers(0, len(PLATFORMS), n)
    ids = [f"SYN_{i:08d}" for i in range(n)]
    assets = [json.dumps({
        "visual": {"href": f"https://data.example.com/{i}/TCI.tif", "type": "image/tiff; application=geotiff",
                   "roles": ["visual"]},
        "B04": {"href": f"https://data.example.com/{i}/B04.tif", "type": "image/tiff; application=geotiff",
                "roles": ["data"]}}, separators=(",", ":")) for i in ids]
    bbox = pa.StructArray.from_arrays([pa.array(xmin), pa.array(ymin), pa.array(xmax), pa.array(ymax)],
                                      names=["xmin", "ymin", "xmax", "ymax"])
    return pa.table({
        "type": pa.array(["Feature"] * n),
        "stac_version": pa.array(["1.1.0"] * n),
        "stac_extensions": pa.array([["https://stac-extensions.github.io/eo/v1.1.0/schema.json"]] * n,
                                    type=pa.list_(pa.string())),
        "id": pa.array(ids),
        "collection": pa.array(COLLECTIONS[which]),
        "datetime": pa.array(when, type=index.TIMESTAMP),
        "start_datetime": pa.nulls(n, index.TIMESTAMP),
        "end_datetime": pa.nulls(n, index.TIMESTAMP),
        "bbox": bbox,
        "geometry": index.box_wkb_array(xmin, ymin, xmax, ymax),
        "eo:cloud_cover": pa.array(np.round(rng.uniform(0, 100, n), 2)),
        "platform": pa.array(PLATFORMS[which]),
        "assets": pa.array(assets),
        "links": pa.array(["[]"] * n),
    })


def random_queries(n: int, seed: int = SEED + 1) -> list[tuple[list[float], str, datetime, datetime]]:
    rng = np.random.default_rng(seed)
    lon, lat = land_points(rng, n)
    size = rng.uniform(0.5, 3.0, n)
    queries = []
    for i in range(n):
        start = datetime(2015, 7, 1, tzinfo=UTC) + timedelta(days=int(rng.integers(0, 3500)))
        end = start + timedelta(days=int(rng.integers(30, 183)))
        box = [max(lon[i] - size[i] / 2, -180.0), max(lat[i] - size[i] / 2, -90.0),
               min(lon[i] + size[i] / 2, 180.0), min(lat[i] + size[i] / 2, 90.0)]
        interval = f"{index.format_datetime(start)}/{index.format_datetime(end)}"
        queries.append((box, interval, start, end))
    return queries


class BruteForce:
    """numpy over every item: the exact answer of a bbox + datetime query (footprints are boxes)."""

    def __init__(self, table: pa.Table):
        bbox = table.column("bbox").combine_chunks()
        self.xmin, self.ymin, self.xmax, self.ymax = (bbox.field(k).to_numpy() for k in ("xmin", "ymin", "xmax", "ymax"))
        self.when = table.column("datetime").combine_chunks().cast(pa.int64()).to_numpy()
        self.ids = np.array(table.column("id").to_pylist())

    def __call__(self, box: list[float], start: datetime, end: datetime) -> set[str]:
        w, s, e, n = box
        t0, t1 = (int(t.timestamp() * 1_000_000) for t in (start, end))
        mask = ((self.xmin <= e) & (self.xmax >= w) & (self.ymin <= n) & (self.ymax >= s)
                & (self.when >= t0) & (self.when <= t1))
        return set(self.ids[mask].tolist())


def publish_index(root: Path, table: pa.Table) -> tuple[Store, float]:
    store = Store.from_uri(root.as_uri())
    t = time.perf_counter()
    with store.publish("datasets/bench/synthetic/g1-bench") as run:
        index.write_index_table(run, "index.parquet", table)
    return store, time.perf_counter() - t


def time_queries(store: Store, queries, check=None) -> tuple[np.ndarray, list[int]]:
    search.search(store, bbox=queries[0][0], datetime=queries[0][1])  # warm: DuckDB, page cache, footer
    times, hits = [], []
    for box, interval, start, end in queries:
        t = time.perf_counter()
        found = search.search(store, bbox=box, datetime=interval)
        times.append(time.perf_counter() - t)
        hits.append(len(found))
        if check is not None:
            assert {f["id"] for f in found} == check(box, start, end), (box, interval)
    return np.array(times), hits


def static_catalog(table: pa.Table, dest: Path) -> Path:
    """The items of ``table`` as a self-contained static catalog laid out as pystac saves one
    (``catalog.json``, ``bench/collection.json``, ``bench/<id>/<id>.json``), written with json directly:
    pystac's own ``save`` takes minutes for 20k items and only the walk is measured."""
    ids = table.column("id").to_pylist()
    col_dir = dest / "bench"
    col_dir.mkdir(parents=True)
    (dest / "catalog.json").write_text(json.dumps({
        "type": "Catalog", "stac_version": "1.1.0", "id": "bench-root",
        "description": "static catalog of the search benchmark",
        "links": [{"rel": "root", "href": "./catalog.json", "type": "application/json"},
                  {"rel": "child", "href": "./bench/collection.json", "type": "application/json"}]}))
    (col_dir / "collection.json").write_text(json.dumps({
        "type": "Collection", "stac_version": "1.1.0", "id": "bench", "description": "synthetic items",
        "license": "other", "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]},
                                       "temporal": {"interval": [[None, None]]}},
        "links": [{"rel": "root", "href": "../catalog.json", "type": "application/json"},
                  {"rel": "parent", "href": "../catalog.json", "type": "application/json"},
                  *({"rel": "item", "href": f"./{i}/{i}.json", "type": "application/geo+json"} for i in ids)]}))
    up = [{"rel": rel, "href": "../../catalog.json" if rel == "root" else "../collection.json",
           "type": "application/json"} for rel in ("root", "parent", "collection")]
    for row in table.to_pylist():
        b = row["bbox"]
        item = {
            "type": "Feature", "stac_version": "1.1.0", "stac_extensions": list(row["stac_extensions"]),
            "id": row["id"], "geometry": index.wkb_to_geometry(row["geometry"]),
            "bbox": [b["xmin"], b["ymin"], b["xmax"], b["ymax"]],
            "properties": {"datetime": index.format_datetime(row["datetime"]),
                           "eo:cloud_cover": row["eo:cloud_cover"], "platform": row["platform"]},
            "links": up, "assets": json.loads(row["assets"]), "collection": "bench",
        }
        folder = col_dir / row["id"]
        folder.mkdir()
        (folder / f"{row['id']}.json").write_text(json.dumps(item))
    return dest / "catalog.json"


def walk(catalog_json: Path, box: list[float], start: datetime, end: datetime) -> set[str]:
    """What a client does with a static catalog: open it, read every item, keep the matches."""
    w, s, e, n = box
    found = set()
    for item in pystac.Catalog.from_file(str(catalog_json)).get_items(recursive=True):
        x0, y0, x1, y1 = item.bbox
        if x0 <= e and x1 >= w and y0 <= n and y1 >= s and start <= item.datetime <= end:
            found.add(item.id)
    return found


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def test_index_search_against_a_static_catalog_walk(tmp_path: Path) -> None:
    t = time.perf_counter()
    table = synthetic_index(N_ITEMS)
    generate_s = time.perf_counter() - t
    store, write_s = publish_index(tmp_path / "store-full", table)
    size_mb = store.local_path("datasets/bench/synthetic/g1-bench/index.parquet").stat().st_size / 1e6
    queries = random_queries(N_QUERIES)

    full_times, full_hits = time_queries(store, queries, check=BruteForce(table))

    subset = table.slice(0, min(N_STATIC, N_ITEMS))
    sub_store, _ = publish_index(tmp_path / "store-subset", subset)
    sub_times, _ = time_queries(sub_store, queries)

    t = time.perf_counter()
    catalog_json = static_catalog(subset, tmp_path / "static")
    static_write_s = time.perf_counter() - t
    walk_times = []
    for box, interval, start, end in queries[:N_WALKS]:
        t = time.perf_counter()
        found = walk(catalog_json, box, start, end)
        walk_times.append(time.perf_counter() - t)
        assert found == {f["id"] for f in search.search(sub_store, bbox=box, datetime=interval)}
    walk_mean = float(np.mean(walk_times))
    scale = N_ITEMS / subset.num_rows
    walk_full = walk_mean * scale

    p50, p99 = np.percentile(full_times, 50), np.percentile(full_times, 99)
    sub_p50, sub_p99 = np.percentile(sub_times, 50), np.percentile(sub_times, 99)
    n_sub = subset.num_rows
    rows = [
        ("method", "items", "queries", "p50 ms", "p99 ms", "mean ms", "hits/query"),
        ("index (DuckDB over stac-geoparquet)", f"{N_ITEMS:,}", f"{len(queries)}", ms(p50), ms(p99),
         ms(full_times.mean()), f"{np.mean(full_hits):.1f}"),
        ("index, subset", f"{n_sub:,}", f"{len(queries)}", ms(sub_p50), ms(sub_p99), ms(sub_times.mean()), ""),
        ("static catalog walk (pystac), subset", f"{n_sub:,}", f"{len(walk_times)}", ms(float(np.median(walk_times))),
         "", ms(walk_mean), ""),
        ("static catalog walk, EXTRAPOLATED x%g" % scale, f"{N_ITEMS:,}", "-", "", "", ms(walk_full), ""),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"\nsearch benchmark: bbox + datetime queries (walk rows: {len(walk_times)} walks)"]
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
              for r in rows]
    lines += [
        f"index build: {N_ITEMS:,} items generated in {generate_s:.1f} s, written (Hilbert sort, "
        f"{index.ROW_GROUP_SIZE:,}-row groups, {index.COMPRESSION}) in {write_s:.1f} s, {size_mb:.1f} MB; "
        f"static catalog of {n_sub:,} items written in {static_write_s:.1f} s",
        f"speed-up, measured on the same {n_sub:,} items: walk mean / index mean = "
        f"{walk_mean / sub_times.mean():,.0f}x",
        f"speed-up at {N_ITEMS:,} items, walk EXTRAPOLATED linearly: walk / index mean = "
        f"{walk_full / full_times.mean():,.0f}x",
        f"index p50 over {N_ITEMS:,} items: {ms(p50)} ms; goal <= {GOAL_P50_MS:.0f} ms: "
        f"{'met' if p50 * 1000 <= GOAL_P50_MS else 'NOT met'}",
        f"every index answer matched a numpy brute force over all {N_ITEMS:,} items; "
        f"every walk matched the subset index",
    ]
    print("\n".join(lines))
    assert np.mean(full_hits) > 0
