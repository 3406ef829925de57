"""Free text (``q``): the one semantics (earthops_runtime.stac.text) and the inverted index that answers it.

* the parser: terms, phrases, AND/OR/NOT, ``+``/``-``, commas, precedence; refusals name ``q``;
* the inverted index (``text.parquet``) holds exactly the terms and counts the semantics gives each item
  (brute force over the items, JSON and clashing properties included);
* the search index answers random free-text queries, alone and with bbox, datetime, collections, CQL2
  and limit, with the ids and the order :meth:`Query.select` gives over the same items (relevance
  from the whole corpus, then newest first), over several published runs;
* a run published before text indexes existed (no ``text.parquet``) is searched through one built
  into the cache.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from earthops.core.store import Store
from earthops_runtime.catalog import index, search, textindex
from earthops_runtime.stac import text
from earthops_runtime.stac.query import Query, SearchError

pytestmark = pytest.mark.unit

T = text.Term


@pytest.mark.parametrize(("q", "tree"), [
    ("iceberg", T(("iceberg",))),
    ("Iceberg Sentinel-1 2017", text.Or((T(("iceberg",)), T(("sentinel", "1")), T(("2017",))))),
    ("ship,iceberg", text.Or((T(("ship",)), T(("iceberg",))))),
    ('"sea ice" AND NOT model', text.And((T(("sea", "ice")), text.Not(T(("model",)))))),
    ("(quick OR brown) AND fox", text.And((text.Or((T(("quick",)), T(("brown",)))), T(("fox",))))),
    ("a OR b AND c", text.Or((T(("a",)), text.And((T(("b",)), T(("c",))))))),
    ("+climate -model", text.And((T(("climate",)), text.Not(T(("model",)))))),
    ("+a b -c", text.And((T(("a",)), text.Optional(T(("b",))), text.Not(T(("c",)))))),
    ("a -b c", text.And((text.Or((T(("a",)), T(("c",)))), text.Not(T(("b",)))))),
    ("-cloud", text.Not(T(("cloud",)))),
    ("S1A_IW_GRDH", T(("s1a", "iw", "grdh"))),
])
def test_parse(q: str, tree: Any) -> None:
    assert text.parse_q(q) == tree


def test_a_list_is_its_terms_joined_by_or() -> None:
    assert text.parse_q(["ship", "sea ice"]) == text.Or((T(("ship",)), T(("sea", "ice"))))


@pytest.mark.parametrize(("q", "says"), [
    ("", "empty"),
    ("   ", "empty"),
    ("a AND", "'AND' without a term after it"),
    ("OR a", "'OR' without a term before it"),
    ("(a", "'(' is not closed"),
    ("a)", "unexpected ')'"),
    ('"sea ice', "quoted phrase is not closed"),
    ("NOT", "'NOT' without a term after it"),
    ("a OR OR b", "'OR' without a term after it"),
    ("---", "holds no letters or digits"),
    ('""', "holds no letters or digits"),
    ("x" * 1001, "at most 1000"),
    (42, "expected a string"),
    ([], "expected a string or a list of strings"),
])
def test_bad_q_is_refused_naming_q(q: Any, says: str) -> None:
    with pytest.raises(SearchError) as err:
        Query.parse(q=q)
    assert err.value.parameter == "q"
    assert says in err.value.message


def test_what_is_text_of_an_item() -> None:
    item = {"id": "S1A_IW_0001", "properties": {
        "datetime": "2017-01-01T00:00:00Z", "title": "Iceberg near Greenland", "keywords": ["SAR", "sea ice"],
        "platform": "sentinel-1a", "eo:cloud_cover": 12, "mixed": ["a", 1], "nested": {"x": "hidden"}}}
    assert text.item_terms(item) == Counter({
        "s1a": 1, "iw": 1, "0001": 1, "s1a iw": 1, "iw 0001": 1, "iceberg": 1, "near": 1, "greenland": 1,
        "iceberg near": 1, "near greenland": 1, "sar": 1, "sea": 1, "ice": 1, "sea ice": 1, "sentinel": 1,
        "1a": 1, "sentinel 1a": 1})
    assert text.matches(text.parse_q('"sea ice" AND iceberg'), item)
    assert not text.matches(text.parse_q('"ice sea"'), item)
    assert not text.matches(text.parse_q("hidden OR 2017 OR 12"), item)  # objects, times, numbers are no text
    assert text.matches(text.parse_q('"S1A IW 0001"'), item)
    assert not text.matches(text.parse_q('"near greenland sar"'), item)  # a phrase stays within one value


WORDS = ["Sentinel-1", "iceberg", "ship", "sea ice", "S1A_IW", "2017", "snow", "Ocean", "sea", "ice",
         "big sea ice floe", "Ärger", "Straße"]


def make_items(rng: random.Random, n: int, collection: str) -> list[dict[str, Any]]:
    items = []
    for i in range(n):
        x, y = rng.uniform(-10, 9), rng.uniform(-10, 9)
        props: dict[str, Any] = {
            "datetime": f"20{rng.randint(10, 20)}-0{rng.randint(1, 9)}-01T00:00:00Z",
            "platform": rng.choice(["sentinel-1a", "sentinel-2b"]),
            "title": " ".join(rng.choices(WORDS, k=3)), "keywords": rng.sample(WORDS, 2), "n": i}
        if i % 7 == 0:
            props["mixed"] = rng.choice(["iceberg drift", 3])  # a JSON column in the index
        if i % 11 == 0:
            props["id"] = "clash ship"  # a property named like a core column
        items.append({"type": "Feature", "stac_version": "1.1.0", "id": f"{collection}_{i}", "collection": collection,
                      "bbox": [x, y, x + 1, y + 1],
                      "geometry": {"type": "Polygon", "coordinates": [[[x, y], [x + 1, y], [x + 1, y + 1],
                                                                       [x, y + 1], [x, y]]]},
                      "properties": props, "links": [], "assets": {}})
    return items


def test_the_inverted_index_holds_what_the_semantics_gives_each_item() -> None:
    items = make_items(random.Random(1), 300, "c")
    table, json_columns = index.items_table(items)
    table = index.sorted_table(table)
    inverted = textindex.text_index_table(table, json_columns=frozenset(json_columns),
                                          core=frozenset(index.CORE_COLUMNS))
    ids = table.column("id").to_pylist()
    got = {}
    for row in _posting_rows(inverted):
        assert row["df"] == len(row["docs"]) and row["docs"] == sorted(row["docs"])
        got.update({(row["term"], ids[d]): f for d, f in zip(row["docs"], row["tf"], strict=True)})
    want = {(term, it["id"]): c for it in items for term, c in text.item_terms(it).items()}
    assert got == want
    assert inverted.column("term").to_pylist() == sorted(inverted.column("term").to_pylist())


def random_q(rng: random.Random) -> str:
    def term() -> str:
        word = rng.choice(WORDS + ["nothing", "clash", "drift", "c1_5", "1a"])
        return f'"{word}"' if " " in word else word

    shape = rng.randrange(6)
    a, b, c = term(), term(), term()
    return [a, f"{a} {b}", f"{a} AND {b}", f"{a} -{b}", f"+{a} {b} -{c}", f"({a} OR {b}) AND NOT {c}"][shape]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, list[dict[str, Any]]]:
    rng = random.Random(7)
    store = Store.from_uri(tmp_path_factory.mktemp("store").as_uri())
    everything = []
    for k in range(3):
        items = make_items(rng, 200, f"col{k}")
        everything += items
        with store.publish(f"datasets/ns/d{k}/g1-run") as run:
            index.write_index(run, index.INDEX_NAME, items)
    return store, everything


def test_index_answers_as_the_semantics_does(corpus: tuple[Store, list[dict[str, Any]]]) -> None:
    store, items = corpus
    rng = random.Random(3)
    extras: list[dict[str, Any]] = [{}, {"bbox": [-5, -5, 5, 5]}, {"datetime": "2012-01-01/2016-01-01"},
                                    {"collections": ["col1", "col2"]}, {"filter": "n < 100"}, {"limit": 7},
                                    {"filter": "platform = 'sentinel-1a'", "bbox": [0, 0, 10, 10], "limit": 3}]
    answered = 0
    for _ in range(60):
        q = random_q(rng)
        kwargs = rng.choice(extras)
        got = [it["id"] for it in search.search(store, q=q, **kwargs)]
        want = [it["id"] for it in Query.parse(q=q, **kwargs).select(items)]
        assert got == want, (q, kwargs)
        answered += bool(got)
    assert answered > 30


@pytest.fixture(scope="module")
def ranged_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, list[dict[str, Any]]]:
    """Three indexes whose items have time ranges (some with a datetime as well, some without one) and
    many equal times: what orders relevance ties."""
    rng = random.Random(17)
    store = Store.from_uri(tmp_path_factory.mktemp("ranged").as_uri())
    everything = []
    for k in range(3):
        items = make_items(rng, 200, f"col{k}")
        for i, item in enumerate(items):
            props = item["properties"]
            if i % 5 == 0:
                props["start_datetime"] = f"20{rng.randint(10, 20)}-0{rng.randint(1, 9)}-01T00:00:00Z"
                props["end_datetime"] = "2021-01-01T00:00:00Z"
                if i % 10 == 0:
                    props["datetime"] = None
            elif i % 7 == 3:  # no instant and no whole range: no time to order by (SQL orders it last)
                props["datetime"], props["start_datetime"] = None, "2015-01-01T00:00:00Z"
        everything += items
        with store.publish(f"datasets/ns/r{k}/g1-run") as run:
            index.write_index(run, index.INDEX_NAME, items)
    return store, everything


@pytest.mark.parametrize("path", ["ties-by-time", "streamed-join"])
def test_a_page_is_the_head_of_the_whole_answer_when_only_the_most_relevant_are_joined(
        ranged_corpus: tuple[Store, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """With a limit that SQL applies, only the candidates that can be among the most relevant are joined to
    the index rows (relevance ties cut by item time, ties of time kept) — their own rows, or every row of
    the files streamed when they are many: each page equals the head of the answer without a limit,
    over three index files, with and without other criteria and sortby, for limits from 1 up; and fewer
    candidates were joined than matched."""
    store, items = ranged_corpus
    if path == "ties-by-time":
        monkeypatch.setattr(search, "TIES_READ_TIMES", 0)
    else:
        monkeypatch.setattr(search, "CHOSEN_ROWS_MAX", 0)
    sizes: list[tuple[int | None, int]] = []
    original = search._text_candidates

    def spy(*args: Any, **kwargs: Any) -> Any:
        table = original(*args, **kwargs)
        sizes.append((args[3] if len(args) > 3 else kwargs.get("top"), 0 if table is None else table.num_rows))
        return table

    monkeypatch.setattr(search, "_text_candidates", spy)
    rng = random.Random(11)
    for _ in range(40):
        q = rng.choice([random_q(rng), "iceberg", "sentinel", "ice OR snow", "-iceberg"])
        extra = rng.choice([{}, {"collections": ["col0", "col2"]}, {"datetime": "2012-01-01/2018-01-01"},
                            {"sortby": "-id"}, {"sortby": "+datetime"}])  # sortby: relevance orders second
        whole = [it["id"] for it in search.search(store, q=q, **extra)]
        assert whole == [it["id"] for it in Query.parse(q=q, **extra).select(items)], (q, extra)
        for limit in (1, 2, 5, 13):
            assert [it["id"] for it in search.search(store, q=q, limit=limit, **extra)] == whole[:limit], (q, limit)
    joined_for_pages = sum(n for top, n in sizes if top is not None)
    joined_whole = sum(n for top, n in sizes if top is None)
    assert 0 < joined_for_pages < 4 * joined_whole * 0.5  # four pages per whole answer: far fewer rows


def test_row_set_operations_equal_python_sets_sparse_and_dense() -> None:
    """The set operations the query tree is evaluated with (sorted numpy rows; sorting set operations
    for sparse sets, a bitmap for dense ones) give what Python's sets give, including empty operands."""
    rng = np.random.default_rng(8)
    for _ in range(300):
        n = int(rng.integers(1, 5000))
        sets = []
        for _ in range(2):
            share = rng.choice([0.0, 0.001, 0.01, 0.5, 1.0])
            sets.append(np.unique(rng.integers(0, n, int(share * n))).astype(np.int64))
        a, b = sets
        for op, want in (("union", set(a) | set(b)), ("intersection", set(a) & set(b)), ("difference", set(a) - set(b))):
            got = search._rows_op(op, a, b)
            assert got.tolist() == sorted(want), (op, len(a), len(b), n)


def test_a_page_over_files_of_different_columns_sorts_and_filters_by_a_column_only_some_have(tmp_path: Path) -> None:
    """Candidates only in the files that lack a column: sorting or filtering by it still works (the
    files without candidates keep their columns in the query) and answers as the semantics does."""
    rng = random.Random(21)
    store = Store.from_uri(tmp_path.as_uri())
    everything = []
    for k, words in enumerate((["alpha"], ["beta"])):
        items = make_items(rng, 40, f"cols{k}")
        for item in items:
            item["properties"]["title"] = " ".join(words)
            if k == 0:
                item["properties"]["eo:cloud_cover"] = rng.uniform(0, 100)  # only the first index has it
        everything += items
        with store.publish(f"datasets/ns/cols{k}/g1-run") as run:
            index.write_index(run, index.INDEX_NAME, items)
    for kwargs in ({"q": "beta", "sortby": "-eo:cloud_cover"}, {"q": "beta", "limit": 5, "sortby": "+eo:cloud_cover"},
                   {"q": "beta", "filter": "eo:cloud_cover IS NULL", "limit": 3},
                   {"q": "alpha OR beta", "sortby": "-eo:cloud_cover", "limit": 50}):
        got = [it["id"] for it in search.search(store, **kwargs)]
        assert got == [it["id"] for it in Query.parse(**kwargs).select(everything)] and got, kwargs


def test_relevance_orders_before_time(corpus: tuple[Store, list[dict[str, Any]]]) -> None:
    store, items = corpus
    found = search.search(store, q="iceberg ship")
    tokens = ["iceberg", "ship"]
    df, n = text.corpus_df(items, tokens)
    scores = [text.score(tokens, text.item_terms(it), df, n) for it in found]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1]


def test_a_run_without_a_text_index_gets_one_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EARTHOPS_CACHE", str(tmp_path / "cache"))
    items = make_items(random.Random(5), 50, "old")
    store = Store.from_uri((tmp_path / "store").as_uri())
    with store.publish("datasets/ns/old/g1-run") as run:
        index.write_index(run, index.INDEX_NAME, items)
    store.local_path(f"datasets/ns/old/g1-run/{textindex.TEXT_NAME}").unlink()
    got = [it["id"] for it in search.search(store, q="iceberg OR snow")]
    assert got == [it["id"] for it in Query.parse(q="iceberg OR snow").select(items)] and got
    assert list((tmp_path / "cache" / "text").glob("*.parquet"))


def test_posting_blocks_are_read_for_the_rows_the_other_criteria_select(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small blocks (16 rows, tokenized 64 rows at a time): queries with a bbox read only the blocks of
    the rows it selects and still answer as the semantics does."""
    monkeypatch.setattr(textindex, "BLOCK_ROWS", 16)
    monkeypatch.setattr(textindex, "CHUNK_ROWS", 64)
    items = make_items(random.Random(9), 300, "blocks")
    store = Store.from_uri(tmp_path.as_uri())
    with store.publish("datasets/ns/blocks/g1-run") as run:
        index.write_index(run, index.INDEX_NAME, items)
    table, json_columns = index.items_table(items)
    inverted = textindex.text_index_table(index.sorted_table(table), json_columns=frozenset(json_columns),
                                          core=frozenset(index.CORE_COLUMNS))
    assert max(inverted.column("block").to_pylist()) == 299 // 16
    rng = random.Random(4)
    for _ in range(30):
        q, box = random_q(rng), [rng.uniform(-10, 0), rng.uniform(-10, 0), rng.uniform(0, 10), rng.uniform(0, 10)]
        got = [it["id"] for it in search.search(store, q=q, bbox=box)]
        assert got == [it["id"] for it in Query.parse(q=q, bbox=box).select(items)], (q, box)


def _posting_rows(inverted: pa.Table) -> list[dict[str, Any]]:
    """The rows of a text index table with its packed posting values as lists of numbers."""
    rows = inverted.to_pylist()
    for row in rows:
        row["docs"] = np.frombuffer(row["docs"], dtype="<u4").tolist()
        row["tf"] = np.frombuffer(row["tf"], dtype="<u2").tolist()
    return rows


@pytest.mark.parametrize("packed", [True, False], ids=["format-2-packed", "format-1-lists"])
@pytest.mark.parametrize("bisection", [True, False], ids=["bisection", "every-row-group"])
def test_text_lookups_read_only_row_groups_that_may_hold_their_terms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     bisection: bool, packed: bool) -> None:
    """TextIndex chooses row groups by their term and block statistics: over a file cut into row groups
    of 40 rows, its postings and document frequencies equal a read of the whole file, for terms present
    and absent, with and without blocks (the counts asked again come from its cache), and every row group
    it leaves out holds none of the rows asked for — by bisection over the term bounds (a file sorted
    by term, as written here) and by comparing every row group's bounds (a file that is not)."""
    import pyarrow.parquet as pq

    monkeypatch.setattr(textindex, "BLOCK_ROWS", 16)
    monkeypatch.setattr(textindex, "CHUNK_ROWS", 64)
    monkeypatch.setattr(textindex, "DF_CACHED", 3)  # counts kept, and dropped, as lookups go on
    table, json_columns = index.items_table(make_items(random.Random(13), 400, "rg"))
    inverted = textindex.text_index_table(index.sorted_table(table), json_columns=frozenset(json_columns),
                                          core=frozenset(index.CORE_COLUMNS))
    path = tmp_path / textindex.TEXT_NAME
    rows = _posting_rows(inverted)
    if not packed:  # as the first format wrote them: lists
        inverted = inverted.set_column(3, "docs", pa.array([r["docs"] for r in rows], type=pa.list_(pa.uint32())))
        inverted = inverted.set_column(4, "tf", pa.array([r["tf"] for r in rows], type=pa.list_(pa.uint16())))
    facts = {textindex.META_KEY: json.dumps({"version": 2 if packed else 1, "items": 400, "block_rows": 16}).encode()}
    pq.write_table(inverted.replace_schema_metadata(facts), path, row_group_size=40,
                   write_statistics=["term", "block"])
    lookup = textindex.TextIndex(str(path))
    assert lookup.metadata.num_row_groups > 20 and (lookup.items, lookup.block_rows) == (400, 16)
    assert lookup._term_bounds is not None  # written sorted by term: bisection applies
    if not bisection:
        lookup._term_bounds = None
    vocabulary = sorted({r["term"] for r in rows})
    rng = random.Random(5)
    skipped = 0
    for _ in range(60):
        terms = rng.sample(vocabulary, rng.randint(1, 4)) + rng.sample(["aardvark", "zzz", "m"], rng.randint(0, 1))
        blocks = None if rng.random() < 0.4 else np.array(rng.sample(range(25), rng.randint(1, 6)))
        wanted = [r for r in rows if r["term"] in terms and (blocks is None or r["block"] in blocks.tolist())]
        got = lookup.postings(terms, blocks)
        assert sorted(got) == sorted({r["term"] for r in wanted})
        for term, (docs, tf) in got.items():
            mine = [r for r in wanted if r["term"] == term]
            assert docs.tolist() == [d for r in mine for d in r["docs"]]
            assert tf.tolist() == [f for r in mine for f in r["tf"]]
        for _ in range(2):
            assert lookup.document_frequencies(terms) == {
                t: sum(r["df"] for r in rows if r["term"] == t) for t in terms}
        assert len(lookup._df) <= 3
        chosen = set(lookup.row_groups(terms, blocks))
        for g in set(range(lookup.metadata.num_row_groups)) - chosen:
            assert not {(r["term"], r["block"]) for r in rows[40 * g:40 * (g + 1)]} & {
                (r["term"], r["block"]) for r in wanted}
        skipped += lookup.metadata.num_row_groups - len(chosen)
    assert skipped > 60 * lookup.metadata.num_row_groups // 2


def test_a_filter_that_fails_on_the_data_falls_back_to_the_semantics(corpus) -> None:
    """A CQL2 term DuckDB binds but cannot run on these rows (text compared with a number) is decided
    in Python, with free text as without."""
    store, items = corpus
    for flt in ("title = 3", "title > 3 OR n < 50"):
        for kwargs in ({"q": "iceberg"}, {"q": "iceberg", "bbox": [-5, -5, 5, 5]}, {}):
            got = [it["id"] for it in search.search(store, filter=flt, **kwargs)]
            assert got == [it["id"] for it in Query.parse(filter=flt, **kwargs).select(items)], (flt, kwargs)
