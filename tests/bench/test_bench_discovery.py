"""Discovery at scale: bbox + datetime, and free text + bbox, over 1M and 10M items.

For each size in ``EARTHOPS_BENCH_DISCOVERY_ITEMS`` (default ``1000000,10000000``) synthetic items are
built column-wise (footprints of about one Sentinel-2 tile over land, ten years of acquisitions, a
platform, a title ``"<platform> scene over <region> <year>"``, two keywords out of eight), published
as one run's ``index.parquet`` + ``text.parquet`` + ``rows.arrow`` (timed: build time, size on disk), then queried
through :func:`earthops_runtime.catalog.search.search` — the whole call, as ``earthops search`` and
the STAC API make it:

* **bbox + datetime**: a 0.5-3 degree box around a land point and a 1-6 month interval;
* **free text + bbox**: a ``q`` (a keyword, a region, a platform, a quoted phrase, OR, NOT) and such a box;

each as the whole answer (every hit built as a STAC item) and as its first page of 10 (``limit``, what
one STAC API request returns by default); and, outside the goal, the first page of each free-text
query without a bbox (every item may match: ``scene`` matches all of them).

Every answer is checked against a numpy brute force over all items: the same ids, and for free
text the same order (relevance from the semantics' weights over the whole corpus, then newest
first). Latencies are per call on a warm page cache; the machine's load (1-minute load average and
the share of CPU time other processes took while measuring) is printed beside them. Goal: p50 <= 20 ms
and p99 <= 100 ms at 10M for both kinds.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from earthops.core.store import Store
from earthops_runtime.catalog import index, rowstore, search, textindex
from earthops_runtime.stac import text
from tests.bench.test_bench_search import LAND, T_END, T_START, land_points, ms, random_queries

pytestmark = pytest.mark.bench

SIZES = [int(v) for v in os.environ.get("EARTHOPS_BENCH_DISCOVERY_ITEMS", "1000000,10000000").split(",")]
N_QUERIES = int(os.environ.get("EARTHOPS_BENCH_QUERIES", "200"))
#: Free-text queries without a bbox (each of TEXT_QUERIES in turn), first page only: outside the goal.
N_ALONE = int(os.environ.get("EARTHOPS_BENCH_TEXT_ALONE", "20"))
SEED = 23
PLATFORMS = np.array(["sentinel-2a", "sentinel-2b", "landsat-8", "landsat-9"])
COLLECTIONS = np.array(["sentinel-2-l2a", "sentinel-2-l2a", "landsat-c2-l2", "landsat-c2-l2"])
REGIONS = np.array(["america", "canada", "alaska", "mexico", "brazil", "patagonia", "europe", "scandinavia",
                    "sahel", "congo", "arabia", "india", "china", "siberia", "indonesia", "australia"])
KEYWORDS = np.array(["sea ice", "iceberg", "cloud", "snow", "forest", "urban", "water", "crop"])
TEXT_QUERIES = ["iceberg", "forest", '"sea ice"', "snow OR water", "sentinel", "landsat -cloud", "europe iceberg",
                "urban AND crop", "scene", "+landsat snow"]
GOAL_P50_MS, GOAL_P99_MS = 20.0, 100.0
#: The page the STAC API serves by default.
PAGE = 10


class Corpus:
    """The generating arrays of the synthetic items, for the brute force."""

    def __init__(self, n: int, seed: int = SEED):
        rng = np.random.default_rng(seed)
        self.n = n
        lon, lat = land_points(rng, n)
        h = rng.uniform(0.95, 1.05, n)
        w = np.minimum(h / np.cos(np.radians(lat)), 6.0)
        self.xmin, self.xmax = np.clip(lon - w / 2, -180, 180), np.clip(lon + w / 2, -180, 180)
        self.ymin, self.ymax = np.clip(lat - h / 2, -90, 90), np.clip(lat + h / 2, -90, 90)
        self.when = rng.integers(T_START.astype(np.int64), T_END.astype(np.int64), n)
        self.platform = rng.integers(0, len(PLATFORMS), n)
        # the region: the land box the item's centre lies in (the first that holds it)
        self.region = np.full(n, len(LAND) - 1)
        for i in range(len(LAND) - 1, -1, -1):
            w_, s_, e_, n_ = LAND[i]
            self.region[(lon >= w_) & (lon <= e_) & (lat >= s_) & (lat <= n_)] = i
        first = rng.integers(0, len(KEYWORDS), n)
        self.keywords = np.stack([first, (first + rng.integers(1, len(KEYWORDS), n)) % len(KEYWORDS)], axis=1)
        self.year = self.when.astype("datetime64[us]").astype("datetime64[Y]").astype(int) + 1970

    def table(self) -> pa.Table:
        n = self.n
        ids = pc.binary_join_element_wise("SYN_", pc.utf8_lpad(pa.array(np.arange(n)).cast(pa.string()), 8, "0"), "")
        platform = pick(PLATFORMS, self.platform)
        title = pc.binary_join_element_wise(platform, " scene over ", pick(REGIONS, self.region), " ",
                                            pa.array(self.year).cast(pa.string()), "")
        keywords = pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)),
                                            pick(KEYWORDS, self.keywords.ravel()))
        # one short asset: at 10M items every byte per row is 10 MB of memory while sorting
        assets = pc.binary_join_element_wise('{"data":{"href":"s3://eo-archive/', ids, '/B04.tif"}}', "")
        bbox = pa.StructArray.from_arrays([pa.array(self.xmin), pa.array(self.ymin), pa.array(self.xmax),
                                           pa.array(self.ymax)], names=["xmin", "ymin", "xmax", "ymax"])
        return pa.table({
            "type": pa.repeat("Feature", n),
            "stac_version": pa.repeat("1.1.0", n),
            "stac_extensions": pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)),
                                                        pa.array([], type=pa.string())),
            "id": ids,
            "collection": pick(COLLECTIONS, self.platform),
            "datetime": pa.array(self.when, type=index.TIMESTAMP),
            "start_datetime": pa.nulls(n, index.TIMESTAMP),
            "end_datetime": pa.nulls(n, index.TIMESTAMP),
            "bbox": bbox,
            "geometry": index.box_wkb_array(self.xmin, self.ymin, self.xmax, self.ymax),
            "platform": platform,
            "title": title,
            "keywords": keywords,
            "assets": assets,
            "links": pa.repeat("[]", n),
        })

    # -- brute force --------------------------------------------------------------------------------
    def token_counts(self, token: str) -> np.ndarray:
        """How often each item holds a token (id, platform, title and keywords, tokenized as the
        semantics tokenizes them), from the generating arrays."""
        tf = np.zeros(self.n, dtype=np.int64)
        for i, p in enumerate(PLATFORMS):  # the platform property and the title's platform
            tf += 2 * ((self.platform == i) & (token in text.tokenize(p)))
        tf += np.isin(self.region, [i for i, r in enumerate(REGIONS) if token in text.tokenize(r)])
        tf += token in ("scene", "over")
        years = [y for y in range(1900, 2100) if str(y) == token]
        if years:
            tf += self.year == years[0]
        for i, k in enumerate(KEYWORDS):
            if token in text.tokenize(k):
                tf += (self.keywords == i).sum(axis=1)
        if token == "syn":
            tf += 1
        return tf

    def phrase(self, tokens: tuple[str, ...]) -> np.ndarray:
        """Items holding the tokens in a row within one value (the phrases queried are keywords)."""
        hit = np.zeros(self.n, dtype=bool)
        for i, k in enumerate(KEYWORDS):
            if tuple(text.tokenize(k)) == tokens:
                hit |= (self.keywords == i).any(axis=1)
        return hit

    def evaluate(self, node: text.Node) -> np.ndarray:
        if isinstance(node, text.Term):
            return self.phrase(node.tokens) if len(node.tokens) > 1 else self.token_counts(node.tokens[0]) > 0
        if isinstance(node, text.Optional):
            return np.ones(self.n, dtype=bool)
        if isinstance(node, text.Not):
            return ~self.evaluate(node.arg)
        parts = [self.evaluate(a) for a in node.args]
        return np.logical_and.reduce(parts) if isinstance(node, text.And) else np.logical_or.reduce(parts)

    def answer(self, q: str, box: list[float]) -> list[str]:
        """Ids matching ``q`` and the box (footprints are boxes), by relevance then newest first."""
        w, s, e, n = box
        query = text.TextQuery.parse(q)
        mask = (self.xmin <= e) & (self.xmax >= w) & (self.ymin <= n) & (self.ymax >= s) & self.evaluate(query.node)
        rows = np.flatnonzero(mask)
        score = np.zeros(len(rows))
        for token in query.tokens:
            tf = self.token_counts(token)
            df = int((tf > 0).sum())
            score = score + np.array([text.weight(int(c), df, self.n) for c in tf[rows]])
        collection = COLLECTIONS[self.platform[rows]]
        ids = np.array([f"SYN_{r:08d}" for r in rows])
        # ties of score: datetime desc, collection desc, id desc (lexsort: last key first)
        order = np.lexsort((_desc(ids), _desc(collection), -self.when[rows], -score))
        return ids[order].tolist()

    def bbox_datetime(self, box: list[float], t0: int, t1: int) -> set[str]:
        w, s, e, n = box
        mask = ((self.xmin <= e) & (self.xmax >= w) & (self.ymin <= n) & (self.ymax >= s)
                & (self.when >= t0) & (self.when <= t1))
        return {f"SYN_{r:08d}" for r in np.flatnonzero(mask)}


def pick(names: np.ndarray, codes: np.ndarray) -> pa.Array:
    """``names[codes]`` as one Arrow string array (a take from the few names, not millions of numpy strings)."""
    return pa.array(names.tolist(), type=pa.string()).take(pa.array(codes))


def _desc(values: np.ndarray) -> np.ndarray:
    """A sort key that orders strings descending (their rank, negated)."""
    _, inverse = np.unique(values, return_inverse=True)
    return -inverse


def cpu_busy() -> tuple[float, float]:
    with open("/proc/stat") as f:
        fields = [float(v) for v in f.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


def measure(n: int, root: Path) -> dict[str, object]:
    t = time.perf_counter()
    corpus = Corpus(n)
    table = corpus.table()
    generate_s = time.perf_counter() - t
    store = Store.from_uri(root.as_uri())
    t = time.perf_counter()
    sorted_table = index.sorted_table(table)
    del table
    with store.publish("datasets/bench/discovery/g1-bench") as run:
        run.write_bytes(index.INDEX_NAME, index.index_bytes(sorted_table, presorted=True))
        index_s = time.perf_counter() - t
        t = time.perf_counter()
        run.write_bytes(textindex.TEXT_NAME, textindex.text_index_bytes(
            sorted_table, core=frozenset(index.CORE_COLUMNS)))
        text_s = time.perf_counter() - t
        t = time.perf_counter()
        run.write_bytes(rowstore.ROWS_NAME, rowstore.rows_bytes(sorted_table))
        rows_s = time.perf_counter() - t
    del sorted_table
    run_dir = store.local_path("datasets/bench/discovery/g1-bench")
    index_mb = (run_dir / index.INDEX_NAME).stat().st_size / 1e6
    text_mb = (run_dir / textindex.TEXT_NAME).stat().st_size / 1e6
    rows_mb = (run_dir / rowstore.ROWS_NAME).stat().st_size / 1e6

    queries = random_queries(N_QUERIES, seed=SEED + 1)
    rng = np.random.default_rng(SEED + 2)
    text_queries = [TEXT_QUERIES[i] for i in rng.integers(0, len(TEXT_QUERIES), N_QUERIES)]
    search.search(store, bbox=queries[0][0], datetime=queries[0][1])  # warm
    search.search(store, bbox=queries[0][0], q="iceberg")
    load0, (busy0, total0) = os.getloadavg()[0], cpu_busy()
    own0 = os.times()
    bd_times, bd_hits, ft_times, ft_hits, bd_page, ft_page = [], [], [], [], [], []
    answers = []
    for (box, interval, _, _), q in zip(queries, text_queries):
        t = time.perf_counter()
        found = search.search(store, bbox=box, datetime=interval)
        bd_times.append(time.perf_counter() - t)
        bd_hits.append(len(found))
        t = time.perf_counter()
        ranked = search.search(store, bbox=box, q=q)
        ft_times.append(time.perf_counter() - t)
        ft_hits.append(len(ranked))
        # the first page, as the STAC API serves a request (limit 10): the same items as the answer's head
        t = time.perf_counter()
        first = search.search(store, bbox=box, datetime=interval, limit=PAGE)
        bd_page.append(time.perf_counter() - t)
        t = time.perf_counter()
        ranked_first = search.search(store, bbox=box, q=q, limit=PAGE)
        ft_page.append(time.perf_counter() - t)
        assert [f["id"] for f in first] == [f["id"] for f in found[:PAGE]]
        assert [f["id"] for f in ranked_first] == [f["id"] for f in ranked[:PAGE]]
        answers.append(({f["id"] for f in found}, [f["id"] for f in ranked]))
    # free text alone (no bbox: every item may match), first page: beyond the goal, for the record
    alone_times, alone_pages = [], []
    for q in TEXT_QUERIES * max(1, N_ALONE // len(TEXT_QUERIES)):
        t = time.perf_counter()
        alone_pages.append((q, [f["id"] for f in search.search(store, q=q, limit=PAGE)]))
        alone_times.append(time.perf_counter() - t)
    own1, (busy1, total1), load1 = os.times(), cpu_busy(), os.getloadavg()[0]
    own_cpu = (own1.user + own1.system) - (own0.user + own0.system)
    cores = os.cpu_count() or 1
    wall = (total1 - total0) / cores / os.sysconf("SC_CLK_TCK")
    others = max(0.0, (busy1 - busy0) / os.sysconf("SC_CLK_TCK") - own_cpu) / max(wall * cores, 1e-9)
    # the brute force after the timing: its numpy work must not load the machine while measuring
    for ((box, interval, start, end), q), (found, ranked) in zip(zip(queries, text_queries), answers):
        t0, t1 = (int(x.timestamp() * 1_000_000) for x in (start, end))
        assert found == corpus.bbox_datetime(box, t0, t1), (box, interval)
        assert ranked == corpus.answer(q, box), (q, box)
    for q, page in alone_pages[:len(TEXT_QUERIES)]:  # the same queries repeat: checked once each
        assert page == corpus.answer(q, [-180.0, -90.0, 180.0, 90.0])[:PAGE], q
    return {"n": n, "generate_s": generate_s, "index_s": index_s, "text_s": text_s, "index_mb": index_mb,
            "text_mb": text_mb, "rows_s": rows_s, "rows_mb": rows_mb, "bd": np.array(bd_times), "ft": np.array(ft_times), "bd_hits": np.mean(bd_hits),
            "bd_page": np.array(bd_page), "ft_page": np.array(ft_page),
            "ft_hits": np.mean(ft_hits), "load": (load0 + load1) / 2, "others": others,
            "alone_page": np.array(alone_times)}


@pytest.mark.timeout(4 * 3600)  # 10M items on a loaded 2-core machine: the index builds take minutes
def test_discovery_at_scale(tmp_path: Path) -> None:
    results = []
    for n in SIZES:
        results.append(measure(n, tmp_path / f"store-{n}"))
        r = results[-1]
        print(f"\n{n:,} items measured: bbox+datetime p50/p99 {ms(np.percentile(r['bd'], 50))}/"
              f"{ms(np.percentile(r['bd'], 99))} ms, free text+bbox p50/p99 {ms(np.percentile(r['ft'], 50))}/"
              f"{ms(np.percentile(r['ft'], 99))} ms", flush=True)
    lines = [f"\ndiscovery benchmark: {N_QUERIES} queries of each kind per size, search() per call, "
             f"every answer checked against a numpy brute force"]
    header = ("items", "kind", "p50 ms", "p99 ms", "mean ms", "hits/query")
    rows = [header]
    for r in results:
        for kind, key, hits in (("bbox + datetime, all hits", "bd", "bd_hits"),
                                ("free text + bbox, all hits", "ft", "ft_hits"),
                                (f"bbox + datetime, first {PAGE}", "bd_page", None),
                                (f"free text + bbox, first {PAGE}", "ft_page", None),
                                (f"free text alone, first {PAGE}", "alone_page", None)):
            t = r[key]
            rows.append((f"{r['n']:,}", kind, ms(np.percentile(t, 50)), ms(np.percentile(t, 99)), ms(t.mean()),
                         f"{r[hits]:.1f}" if hits else f"<= {PAGE}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += ["  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
    for r in results:
        lines.append(f"{r['n']:,} items: generated in {r['generate_s']:.1f} s; index.parquet built in "
                     f"{r['index_s']:.1f} s ({r['index_mb']:.0f} MB), text.parquet in {r['text_s']:.1f} s "
                     f"({r['text_mb']:.0f} MB), rows.arrow in {r['rows_s']:.1f} s ({r['rows_mb']:.0f} MB); load average {r['load']:.1f} on {os.cpu_count()} cores, other "
                     f"processes took {100 * r['others']:.0f}% of the CPU time while measuring")
    if len(results) > 1:
        a, b = results[0], results[-1]
        growth = b["n"] / a["n"]
        lines.append(f"growth x{growth:g} items: bbox+datetime p50 x{np.percentile(b['bd'], 50) / np.percentile(a['bd'], 50):.2f}, "
                     f"free text+bbox p50 x{np.percentile(b['ft'], 50) / np.percentile(a['ft'], 50):.2f}, "
                     f"build x{(b['index_s'] + b['text_s'] + b['rows_s']) / (a['index_s'] + a['text_s'] + a['rows_s']):.1f}, "
                     f"size x{(b['index_mb'] + b['text_mb'] + b['rows_mb']) / (a['index_mb'] + a['text_mb'] + a['rows_mb']):.1f}")
    last = results[-1]
    for kind, key in (("bbox + datetime, all hits", "bd"), ("free text + bbox, all hits", "ft"),
                      (f"bbox + datetime, first {PAGE}", "bd_page"), (f"free text + bbox, first {PAGE}", "ft_page")):
        p50, p99 = np.percentile(last[key], 50) * 1000, np.percentile(last[key], 99) * 1000
        met = p50 <= GOAL_P50_MS and p99 <= GOAL_P99_MS
        lines.append(f"{kind} at {last['n']:,}: p50 {p50:.1f} ms, p99 {p99:.1f} ms; goal p50 <= {GOAL_P50_MS:.0f} ms "
                     f"and p99 <= {GOAL_P99_MS:.0f} ms: {'met' if met else 'NOT met'}")
    print("\n".join(lines))
    assert all(r["ft_hits"] > 0 and r["bd_hits"] > 0 for r in results)
