"""One STAC query semantics (earthops_runtime.stac.query) on both paths that search.

Every case of the tables runs twice over the same items: through ``earthops search``
(:func:`earthops_runtime.catalog.search.search` over a published GeoParquet index, DuckDB) and through
ingestion's static-catalog source (:func:`earthops_runtime.data.sources.resolve_scenes`). Both must
give the expected ids in the expected order, or refuse the same argument with the same message.

The ingestion source is built with ``model_construct``: the EODataset contract already refuses some of
these values (a datetime without a time zone, a bbox across the antimeridian) before the data plane
sees them, and the data plane's own semantics are what is tested here.
"""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from earthops.api.dataset import Source, StacApiSource, StacCatalogSource
from earthops.core.store import Store
from earthops_runtime.catalog import index, search
from earthops_runtime.data.sources import resolve_scenes
from earthops_runtime.errors import SpecError
from earthops_runtime.stac.query import (
    Query,
    SearchError,
    geometry_intersects_box,
    item_interval,
    parse_interval,
    sort_key,
)
from tests.unit.test_sources import write_catalog

pytestmark = pytest.mark.unit

#: The last collection sits in a sub-catalog and its items carry no ``collection`` field.
COLLECTIONS = ("alpha", "beta", "gamma")
NOON = "2021-06-01T10:00:00Z"


def rect(w: float, s: float, e: float, n: float) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def item(item_id: str, collection: str, geometry: dict[str, Any], bbox: list[float],
         **props: Any) -> dict[str, Any]:
    props.setdefault("datetime", None)
    return {"type": "Feature", "stac_version": "1.1.0", "id": item_id, "collection": collection,
            "geometry": geometry, "bbox": bbox, "properties": props, "assets": {}, "links": []}


ITEMS = [
    # four items at one instant: collection, then id, both descending, order them
    item("square-paris", "alpha", rect(2, 48, 3, 49), [2, 48, 3, 49], datetime=NOON,
         **{"eo:cloud_cover": 10, "platform": "sentinel-2a"}),
    item("square-paris-b", "alpha", rect(2, 48, 3, 49), [2, 48, 3, 49], datetime=NOON,
         **{"eo:cloud_cover": 40, "platform": "sentinel-2b"}),
    item("paris-2", "gamma", rect(2.5, 48.5, 3.5, 49.5), [2.5, 48.5, 3.5, 49.5], datetime=NOON,
         **{"eo:cloud_cover": 20, "platform": "sentinel-2b"}),
    # a diamond: the corners of its bbox lie outside it
    item("diamond", "beta", {"type": "Polygon", "coordinates": [[[10, 44], [11, 45], [10, 46], [9, 45], [10, 44]]]},
         [9, 44, 11, 46], datetime=NOON, **{"eo:cloud_cover": 50, "platform": "sentinel-2b"}),
    # either side of the antimeridian; midnight and half a second before it
    item("east-of-dateline", "alpha", rect(175, -10, 179, -5), [175, -10, 179, -5],
         datetime="2021-06-02T00:00:00Z", platform="sentinel-2a"),
    item("west-of-dateline", "gamma", rect(-179, -10, -175, -5), [-179, -10, -175, -5],
         datetime="2021-06-01T23:59:59.5Z", **{"eo:cloud_cover": 80, "platform": "sentinel-2a"}),
    # a range item, and one with both a datetime and a range: the range is its time (pgstac)
    item("ranged", "beta", rect(0, 0, 1, 1), [0, 0, 1, 1], start_datetime="2021-01-01T00:00:00Z",
         end_datetime="2021-12-31T23:59:59Z", **{"eo:cloud_cover": 5, "platform": "sentinel-2a"}),
    item("ranged-with-datetime", "gamma", rect(0, 0, 1, 1), [0, 0, 1, 1], datetime="2022-03-01T00:00:00Z",
         start_datetime="2020-01-01T00:00:00Z", end_datetime="2020-02-01T00:00:00Z",
         **{"eo:cloud_cover": 60, "platform": "sentinel-2b"}),
    item("point-berlin", "beta", {"type": "Point", "coordinates": [13.4, 52.5]}, [13.4, 52.5, 13.4, 52.5],
         datetime="2020-05-05T03:05:05Z", platform="landsat-8"),
]

EVERYTHING = ["east-of-dateline", "west-of-dateline", "paris-2", "diamond", "square-paris-b", "square-paris",
              "ranged", "point-berlin", "ranged-with-datetime"]

#: (name, search arguments, expected ids in order)
CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("everything, in order", {}, EVERYTHING),
    ("limit cuts inside tied datetimes", {"limit": 4}, EVERYTHING[:4]),
    ("collection of the nested catalog", {"collections": ["gamma"]},
     ["west-of-dateline", "paris-2", "ranged-with-datetime"]),
    ("date-only ends: the whole day", {"datetime": "2021-06-01/2021-06-01"},
     ["west-of-dateline", "paris-2", "diamond", "square-paris-b", "square-paris", "ranged"]),
    ("a date alone: the whole day", {"datetime": "2021-06-02"}, ["east-of-dateline", "ranged"]),
    ("open start", {"datetime": "../2020-06-01T00:00:00Z"}, ["point-berlin", "ranged-with-datetime"]),
    ("empty end is open", {"datetime": "2021-06-01T12:00:00Z/"},
     ["east-of-dateline", "west-of-dateline", "ranged"]),
    ("an offset is converted", {"datetime": "2021-06-01T12:00:00+02:00/2021-06-01T12:00:00+02:00"},
     ["paris-2", "diamond", "square-paris-b", "square-paris", "ranged"]),
    ("the range decides, not the datetime", {"datetime": "2022-02-01T00:00:00Z/2022-04-01T00:00:00Z"}, []),
    ("touching counts", {"bbox": [1.5, 47.5, 2.5, 48.5]}, ["paris-2", "square-paris-b", "square-paris"]),
    ("6 numbers: heights ignored", {"bbox": [1.5, 47.5, 0, 2.5, 48.5, 100]},
     ["paris-2", "square-paris-b", "square-paris"]),
    ("bbox overlaps, geometry misses", {"bbox": [9.0, 44.0, 9.3, 44.3]}, []),
    ("inside the geometry", {"bbox": [9.9, 44.9, 10.1, 45.1]}, ["diamond"]),
    ("a point", {"bbox": [13, 52, 14, 53]}, ["point-berlin"]),
    ("across the antimeridian", {"bbox": [170, -20, -170, 0]}, ["east-of-dateline", "west-of-dateline"]),
    ("across the antimeridian, between the items", {"bbox": [179.5, -20, -179.5, 0]}, []),
    ("CQL2-JSON; a missing property never matches",
     {"filter": {"op": "<", "args": [{"property": "eo:cloud_cover"}, 30]}}, ["paris-2", "square-paris", "ranged"]),
    ("CQL2 text", {"filter": "eo:cloud_cover >= 50 AND platform = 'sentinel-2b'"},
     ["diamond", "ranged-with-datetime"]),
    ("CQL2 spatial", {"filter": "S_INTERSECTS(geometry, POINT(10 45))"}, ["diamond"]),
    ("everything at once", {"collections": ["alpha", "gamma"], "bbox": [2.6, 48.6, 2.7, 48.7],
                            "datetime": "2021-06-01", "filter": {"op": "=", "args": [{"property": "platform"},
                                                                                      "sentinel-2b"]}},
     ["paris-2", "square-paris-b"]),
]

#: (name, search arguments, parameter, fragment of the message)
REFUSED: list[tuple[str, dict[str, Any], str, str]] = [
    ("interval without a time zone", {"datetime": "2021-06-01T10:00:00/.."}, "datetime", "has no time zone"),
    ("instant without a time zone", {"datetime": "2021-06-01T10:00:00"}, "datetime", "'2021-06-01T10:00:00'"),
    ("start after end", {"datetime": "2021-07-01/2021-06-01"}, "datetime", "the start is after the end"),
    ("no such date", {"datetime": "2021-02-30/.."}, "datetime", "is not a calendar date"),
    ("no such date-time", {"datetime": "../2021-02-29T00:00:00Z"}, "datetime", "day is out of range"),
    ("not RFC 3339", {"datetime": "last week"}, "datetime", "RFC 3339"),
    ("south of north", {"bbox": [0, 10, 1, 5]}, "bbox", "south"),
    ("longitude out of range", {"bbox": [-200, 0, 1, 1]}, "bbox", "longitudes"),
    ("3 numbers", {"bbox": [1, 2, 3]}, "bbox", "4 numbers"),
    ("bad CQL2", {"filter": {"op": "<", "args": "nonsense"}}, "filter", "not valid CQL2"),
    ("unknown function", {"filter": {"op": "=", "args": [{"op": "read_text", "args": ["/etc/passwd"]}, "x"]}},
     "filter", "unknown CQL2 operator"),
    ("odd property name", {"filter": {"op": "=", "args": [{"property": "a b"}, 1]}}, "filter", "property name"),
    ("limit", {"limit": 0}, "limit", "positive"),
]

#: The spec field of each search parameter in an EODataset's source.
SPEC_FIELD = {"limit": "maxItems"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    store = Store.from_uri(tmp_path_factory.mktemp("query-store").as_uri())
    with store.publish("datasets/default/query/g1-aaa") as run:
        index.write_index(run, "index.parquet", ITEMS)
    return store


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_catalog(tmp_path_factory.mktemp("query-catalog"), ITEMS, collections=COLLECTIONS)


def catalog_source(href: str, args: dict[str, Any]) -> Source:
    """The search as an EODataset's catalog source, past the contract's own checks (see the docstring)."""
    spec = {"max_items": 1000, **{("max_items" if k == "limit" else k): v for k, v in args.items()}}
    return Source.model_construct(catalog=StacCatalogSource.model_construct(href=href, **spec))


def by_search(store: Store, args: dict[str, Any]) -> list[str]:
    return [it["id"] for it in search.search(store, **args)]


def by_ingestion(catalog: Path, args: dict[str, Any]) -> list[str]:
    try:
        return [s.id for s in resolve_scenes(catalog_source(str(catalog), args), [])]
    except SpecError as exc:
        if exc.reason != "EmptySource":
            raise
        return []


@pytest.mark.parametrize("name, args, expected", CASES, ids=[c[0] for c in CASES])
def test_both_paths_give_the_same_items_in_the_same_order(store, catalog, name, args, expected) -> None:
    assert by_search(store, args) == expected
    assert by_ingestion(catalog, args) == expected


@pytest.mark.parametrize("name, args, parameter, fragment", REFUSED, ids=[c[0] for c in REFUSED])
def test_both_paths_refuse_the_same_arguments_alike(store, tmp_path, name, args, parameter, fragment) -> None:
    with pytest.raises(SearchError) as searched:
        search.search(store, **args)
    assert searched.value.parameter == parameter and fragment in searched.value.message
    # refused before anything is read: the catalog does not even exist
    with pytest.raises(SpecError) as ingested:
        resolve_scenes(catalog_source(str(tmp_path / "nowhere" / "catalog.json"), args), [])
    assert ingested.value.field == f"spec.source.catalog.{SPEC_FIELD.get(parameter, parameter)}"
    assert ingested.value.reason == "InvalidSpec"
    assert ingested.value.detail == searched.value.message


def test_the_contract_refuses_a_datetime_without_time_zone_too() -> None:
    with pytest.raises(ValueError, match="datetime"):
        Source.model_validate({"catalog": {"href": "catalog.json", "datetime": "2021-06-01T10:00:00/.."}})


def test_the_stac_api_request_is_the_query(monkeypatch) -> None:
    """What pystac-client is asked to POST, from the same Query; a bad value never reaches the API."""
    import pystac_client

    calls: list[dict[str, Any]] = []

    class FakeSearch:
        def items_as_dicts(self):
            return iter([ITEMS[0]])

    class FakeClient:
        def conforms_to(self, _conformance: Any) -> bool:
            return True

        def search(self, **kwargs: Any) -> FakeSearch:
            calls.append(kwargs)
            return FakeSearch()

    monkeypatch.setattr(pystac_client.Client, "open", staticmethod(lambda *a, **k: FakeClient()))
    cql = {"op": "<", "args": [{"property": "eo:cloud_cover"}, 30]}
    api = StacApiSource(url="https://stac.example.com", collections=["alpha"], bbox=[1, 2, 3, 4],
                        datetime="2021-06-01/..", filter=cql, max_items=5)
    assert [s.id for s in resolve_scenes(Source(stac_api=api), [])] == ["square-paris"]
    assert calls == [{"method": "POST", "max_items": 5, "limit": 5, "collections": ["alpha"],
                      "bbox": [1.0, 2.0, 3.0, 4.0], "datetime": "2021-06-01T00:00:00.000000Z/..",
                      "filter": cql, "filter_lang": "cql2-json"}]

    bad = StacApiSource.model_construct(url="https://stac.example.com", collections=[], bbox=None,
                                        datetime="2021-06-01T10:00:00/..", filter=None, max_items=5, assets={})
    with pytest.raises(SpecError) as err:
        resolve_scenes(Source.model_construct(stac_api=bad), [])
    assert err.value.field == "spec.source.stacApi.datetime" and "has no time zone" in err.value.detail
    assert len(calls) == 1


# --------------------------------------------------------------------------------------------------
# The query module itself


def test_intervals() -> None:
    assert parse_interval(None) == (None, None)
    assert parse_interval("2021-03-05T10:00:00.123456789Z/..") == (datetime(2021, 3, 5, 10, 0, 0, 123456, tzinfo=UTC),
                                                                   None)
    assert parse_interval("../..") == (None, None)
    assert parse_interval(datetime(2021, 1, 1, tzinfo=UTC)) == (datetime(2021, 1, 1, tzinfo=UTC),) * 2
    with pytest.raises(SearchError, match="no time zone"):
        parse_interval(datetime(2021, 1, 1))
    with pytest.raises(SearchError, match="one '/'"):
        parse_interval("2021-01-01/2021-02-01/2021-03-01")


def test_item_time_rules() -> None:
    noon = datetime(2021, 6, 1, 10, tzinfo=UTC)
    assert item_interval(ITEMS[0]) == (noon, noon)
    assert item_interval(ITEMS[-2]) == (datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 2, 1, tzinfo=UTC))
    # item timestamps are data: read leniently (no zone: UTC; unreadable: no time)
    assert item_interval({"properties": {"datetime": "2021-06-01T10:00:00"}}) == (noon, noon)
    assert item_interval({"properties": {"datetime": "soon"}}) == (None, None)
    assert item_interval({"properties": {"start_datetime": "2021-06-01T10:00:00Z"}}) == (None, None)
    undated = {"id": "x", "collection": "zeta", "properties": {}}
    assert sorted([undated, *ITEMS], key=sort_key)[-1] is undated  # undated last, whatever its collection


def test_geometry_intersections() -> None:
    holed = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]],
                                                 [[2, 2], [8, 2], [8, 8], [2, 8], [2, 2]]]}
    assert not geometry_intersects_box(holed, (4, 4, 6, 6))  # inside the hole
    assert geometry_intersects_box(holed, (1, 1, 1.5, 1.5))  # inside the ring
    assert geometry_intersects_box(holed, (-1, -1, 11, 11))  # around it all
    assert geometry_intersects_box(holed, (8, 5, 9, 6))  # touching the hole's edge
    line = {"type": "LineString", "coordinates": [[0, 0], [10, 10]]}
    assert geometry_intersects_box(line, (4, 4, 5, 5)) and not geometry_intersects_box(line, (6, 0, 9, 3))
    query = Query.parse(bbox=[0, 0, 1, 1])
    assert not query.matches({"geometry": None, "bbox": [0, 0, 1, 1], "properties": {}})
    assert not query.matches({"geometry": {"type": "Polygon", "coordinates": "oops"}, "properties": {}})


def test_query_parse_and_body() -> None:
    query = Query.parse(collections="alpha", ids=["a", "b"], bbox="170,-10,-170,10",
                        datetime="2021-06-01", filter="eo:cloud_cover < 30", limit=3)
    assert query.collections == ("alpha",) and query.ids == ("a", "b") and query.limit == 3
    assert query.boxes == [(170.0, -10.0, 180.0, 10.0), (-180.0, -10.0, -170.0, 10.0)]
    body = query.search_body()
    assert body["datetime"] == "2021-06-01T00:00:00.000000Z/2021-06-01T23:59:59.999999Z"
    assert body["filter"] == {"op": "<", "args": [{"property": "eo:cloud_cover"}, 30]}
    assert body["filter-lang"] == "cql2-json" and body["bbox"] == [170.0, -10.0, -170.0, 10.0]
    assert Query.parse(collections=[]).select(ITEMS) == []
    with pytest.raises(SearchError) as err:
        Query.parse(ids=["ok", ""])
    assert err.value.parameter == "ids"


def test_search_error_survives_pickling() -> None:
    err = pickle.loads(pickle.dumps(SearchError("bbox", "bad")))
    assert (err.parameter, err.message, str(err)) == ("bbox", "bad", "bbox: bad")
    assert search.SearchError is SearchError  # the one error type, re-exported
    assert json.loads(json.dumps(Query.parse().search_body())) == {}
