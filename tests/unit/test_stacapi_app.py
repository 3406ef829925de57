"""The STAC API app (earthops_runtime.stacapi.app) in-process, through httpx's ASGI transport.

A small store with two published dataset runs (collections and indexes) answers: landing page,
conformance, collections, items, item, search GET and POST (paging by next links, fields, sortby,
free text), queryables; bad input answers 400 in the STAC API error format naming the parameter,
unknown collections and items 404, and the app keeps answering; hrefs never carry credentials. The
real server on a port, the conformance suite and pystac-client are in tests/integration/test_stacapi.py.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import httpx
import pytest

from earthops.core.store import Store
from earthops_runtime.catalog import index
from earthops_runtime.stac.query import Query
from earthops_runtime.stacapi.app import apply_fields, create_app, safe_href
from tests.unit.test_free_text import make_items

pytestmark = pytest.mark.unit


def collection(cid: str) -> dict[str, Any]:
    return {"type": "Collection", "stac_version": "1.1.0", "id": cid, "description": f"collection {cid}",
            "license": "other", "extent": {"spatial": {"bbox": [[-10, -10, 10, 10]]},
                                           "temporal": {"interval": [[None, None]]}},
            "links": [{"rel": "license", "href": "https://user:secret@example.com/licence?sig=abc&lang=en"}]}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[dict[str, Any]]]:
    store = Store.from_uri(tmp_path_factory.mktemp("api-store").as_uri())
    rng = random.Random(11)
    everything = []
    for k in range(2):
        items = make_items(rng, 60, f"col{k}")
        items[0]["assets"] = {"data": {"href": "https://key:secret@data.example.com/a.tif?X-Amz-Signature=s&x=1"}}
        everything += items
        with store.publish(f"datasets/ns/d{k}/g1-run") as run:
            index.write_index(run, index.INDEX_NAME, items)
            run.write_json("stac/collection.json", collection(f"col{k}"))
    return create_app(store, refresh_seconds=0.0), everything


def call(app: Any, method: str, url: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return await client.request(method, url, **kwargs)

    return asyncio.run(go())


def test_landing_page_conformance_and_collections(served) -> None:
    app, _ = served
    landing = call(app, "GET", "/").json()
    assert landing["type"] == "Catalog" and landing["stac_version"] == "1.1.0"
    conforms = set(landing["conformsTo"])
    for cls in ("https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/collections",
                "https://api.stacspec.org/v1.0.0/ogcapi-features", "https://api.stacspec.org/v1.0.0/item-search",
                "https://api.stacspec.org/v1.0.0-rc.2/item-search#filter",
                "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text",
                "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json", "https://api.stacspec.org/v1.1.0/item-search#sort",
                "https://api.stacspec.org/v1.0.0/item-search#fields",
                "https://api.stacspec.org/v1.0.0-rc.1/item-search#free-text",
                "https://api.stacspec.org/v1.0.0-rc.1/item-search#advanced-free-text"):
        assert cls in conforms, cls
    assert call(app, "GET", "/conformance").json()["conformsTo"] == landing["conformsTo"]
    children = sorted(link["href"] for link in landing["links"] if link["rel"] == "child")
    assert children == ["http://api/collections/col0", "http://api/collections/col1"]
    collections = call(app, "GET", "/collections").json()["collections"]
    assert [c["id"] for c in collections] == ["col0", "col1"]
    licence = next(link for link in collections[0]["links"] if link["rel"] == "license")
    assert licence["href"] == "https://example.com/licence?lang=en"  # no user info, no signature
    assert call(app, "GET", "/collections/col1").json()["id"] == "col1"


def test_search_get_and_post_page_by_next_links_in_the_semantics_order(served) -> None:
    app, items = served
    want = [it["id"] for it in Query.parse(bbox=[-5, -5, 5, 5], q="iceberg OR snow").select(items)]
    assert len(want) > 7
    for method in ("GET", "POST"):
        got, pages = [], 0
        if method == "GET":
            response = call(app, "GET", "/search", params={"bbox": "-5,-5,5,5", "q": "iceberg OR snow", "limit": "3"})
        else:
            response = call(app, "POST", "/search", json={"bbox": [-5, -5, 5, 5], "q": "iceberg OR snow", "limit": 3})
        while True:
            assert response.status_code == 200, response.text
            page = response.json()
            got += [f["id"] for f in page["features"]]
            pages += 1
            nxt = [link for link in page["links"] if link["rel"] == "next"]
            if not nxt:
                break
            if method == "GET":
                response = call(app, "GET", nxt[0]["href"])
            else:
                assert nxt[0]["method"] == "POST"
                response = call(app, "POST", nxt[0]["href"], json=nxt[0]["body"])
        assert got == want and pages == -(-len(want) // 3), method


def test_items_item_fields_sortby_and_filter(served) -> None:
    app, items = served
    page = call(app, "GET", "/collections/col1/items", params={"limit": 5, "sortby": "-n",
                                                               "fields": "id,properties.n,-links"}).json()
    assert [f["properties"]["n"] for f in page["features"]] == [59, 58, 57, 56, 55]
    # what is included, with type, stac_version, id (and links, unless excluded)
    assert set(page["features"][0]) == {"type", "stac_version", "id", "properties"}
    assert set(page["features"][0]["properties"]) == {"n"}
    item = call(app, "GET", "/collections/col0/items/col0_3").json()
    assert item["id"] == "col0_3"
    assert {link["rel"] for link in item["links"]} >= {"self", "parent", "collection", "root"}
    text = call(app, "GET", "/search", params={"filter": "n < 3 AND platform = 'sentinel-1a'",
                                                "filter-lang": "cql2-text", "limit": 100}).json()
    want = [it["id"] for it in Query.parse(filter="n < 3 AND platform = 'sentinel-1a'").select(items)]
    assert [f["id"] for f in text["features"]] == want
    body = {"filter": {"op": "<", "args": [{"property": "n"}, 3]}, "filter-lang": "cql2-json", "limit": 100}
    assert [f["id"] for f in call(app, "POST", "/search", json=body).json()["features"]] == \
        [it["id"] for it in Query.parse(filter=body["filter"]).select(items)]
    queryables = call(app, "GET", "/queryables").json()
    assert {"n", "platform", "title", "datetime"} <= set(queryables["properties"])
    assert queryables["properties"]["n"]["type"] == "integer"


def test_asset_hrefs_never_carry_credentials(served) -> None:
    app, _ = served
    found = call(app, "GET", "/search", params={"ids": "col0_0,col1_0"}).json()["features"]
    assert len(found) == 2
    for feature in found:
        assert feature["assets"]["data"]["href"] == "https://data.example.com/a.tif?x=1"


@pytest.mark.parametrize(("method", "url", "payload", "parameter", "says"), [
    ("GET", "/search", {"bbox": "1,2,3"}, "bbox", "expected 4 numbers"),
    ("GET", "/search", {"bbox": "10,0,20,95"}, "bbox", "latitude"),
    ("GET", "/search", {"datetime": "2021-06-01T10:00:00"}, "datetime", "RFC 3339 date-time"),
    ("GET", "/search", {"datetime": "2021-02-30"}, "datetime", ""),
    ("GET", "/search", {"limit": "0"}, "limit", "positive integer"),
    ("GET", "/search", {"limit": "ten"}, "limit", "positive integer"),
    ("GET", "/search", {"sortby": "-bbox"}, "sortby", "cannot be sorted"),
    ("GET", "/search", {"filter": "n <<< 3", "filter-lang": "cql2-text"}, "filter", "not valid CQL2"),
    ("GET", "/search", {"filter": "n < 3", "filter-lang": "cql3"}, "filter-lang", "cql2-text"),
    ("GET", "/search", {"q": "(iceberg"}, "q", "not closed"),
    ("GET", "/search", {"token": "abc"}, "token", "next"),
    ("GET", "/search", {"intersects": '{"type": "Point", "coordinates": [0]}'}, "intersects", "position"),
    ("GET", "/search", {"intersects": '{"type": "Point", "coordinates": [0, 0]}', "bbox": "0,0,1,1"}, "intersects",
     "not both"),
    ("GET", "/search", {"datetime": "2021-06-01"}, "datetime", "RFC 3339 date-time"),
    ("GET", "/search", {"datetime": "../.."}, "datetime", "both ends open"),
    ("POST", "/search", {"bbox": "0,0,1,1"}, "bbox", "array of numbers"),
    ("POST", "/search", {"fields": None}, "fields", "null"),
    ("POST", "/search", {"bbox": [0, 0, 1]}, "bbox", "expected 4 numbers"),
    ("POST", "/search", {"limit": -1}, "limit", "positive integer"),
    ("POST", "/search", {"sortby": [{"field": "n", "direction": "up"}]}, "sortby", "asc, desc"),
    ("POST", "/search", {"filter": {"op": "frobnicate", "args": []}}, "filter", "CQL2"),
    ("POST", "/search", {"q": "a AND"}, "q", "AND"),
    ("POST", "/search", {"collections": "col0"}, "collections", ""),
    ("GET", "/collections/col0/items", {"datetime": "2020-13-01T00:00:00Z"}, "datetime", ""),
])
def test_bad_input_is_a_400_naming_the_parameter(served, method, url, payload, parameter, says) -> None:
    app, _ = served
    if method == "GET":
        response = call(app, "GET", url, params=payload)
    else:
        response = call(app, "POST", url, json=payload)
    if parameter == "collections":  # a single string is accepted as one collection
        assert response.status_code == 200
        return
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "InvalidParameterValue" and body["parameter"] == parameter
    assert body["description"].startswith(f"{parameter}: ") and says in body["description"]
    assert call(app, "GET", "/search", params={"limit": 1}).status_code == 200  # still serving


def test_unknown_collections_and_items_are_404(served) -> None:
    app, _ = served
    for url in ("/collections/nope", "/collections/nope/items", "/collections/col0/items/nope",
                "/search?collections=col0,nope"):
        response = call(app, "GET", url)
        assert response.status_code == 404, url
        assert set(response.json()) >= {"code", "description"}
    assert call(app, "POST", "/search", json={"collections": ["nope"]}).status_code == 404


def test_safe_href_and_fields() -> None:
    assert safe_href("s3://bucket/key.tif") == "s3://bucket/key.tif"
    assert safe_href("https://u:p@h.example/x?X-Amz-Credential=c&X-Amz-Signature=s&v=1") == "https://h.example/x?v=1"
    assert safe_href("https://h.example/x?sv=2020&sig=abc&se=2030") == "https://h.example/x"
    assert safe_href("./relative.tif") == "./relative.tif"
    item = {"type": "Feature", "id": "a", "links": [], "geometry": {}, "assets": {"a": {}},
            "properties": {"datetime": "2020-01-01T00:00:00Z", "x": 1, "y": 2}}
    assert apply_fields(item, ["properties.x"], []) == {"type": "Feature", "id": "a", "links": [],
                                                        "properties": {"x": 1}}
    assert apply_fields(item, [], ["assets", "geometry"]) == {"type": "Feature", "id": "a", "links": [],
                                                              "properties": {"datetime": "2020-01-01T00:00:00Z"}}
    assert apply_fields(item, None, ["geometry"]) == {k: v for k, v in item.items() if k != "geometry"}
    assert apply_fields(item, ["properties.y"], ["properties"])["properties"] == {"y": 2}
    assert apply_fields(item, ["properties"], ["properties.x"])["properties"] == {"datetime": "2020-01-01T00:00:00Z",
                                                                                   "y": 2}
    assert apply_fields(item, ["geometry"], ["geometry"])["geometry"] == {}


def test_a_run_published_while_serving_appears(tmp_path: Path) -> None:
    store = Store.from_uri(tmp_path.as_uri())
    app = create_app(store, refresh_seconds=0.0)
    assert call(app, "GET", "/collections").json()["collections"] == []
    items = make_items(random.Random(1), 5, "late")
    with store.publish("datasets/ns/late/g1-run") as run:
        index.write_index(run, index.INDEX_NAME, items)
        run.write_json("stac/collection.json", collection("late"))
    assert [c["id"] for c in call(app, "GET", "/collections").json()["collections"]] == ["late"]
    assert len(call(app, "GET", "/collections/late/items").json()["features"]) == 5
