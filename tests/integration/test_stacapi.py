"""The STAC API over a real store (``earthops catalog serve`` on a loopback port), used by real clients.

The store holds the session's published ship/iceberg dataset (the real EODataset runtime's output)
and a model registered on it (the real registry), as a user's store would.

* The STAC API conformance suite (stac-api-validator, its own cached venv, schemas served from
  pystac's local copies) passes for every class the landing page claims that it can check
  (core, collections, features, item search, filter, sort, fields); the one it cannot (free text) is
  checked by the next test.
* pystac-client's search gives the same items in the same order as ``earthops search`` for 60 random
  queries: collections, bbox, datetime, CQL2 text and JSON, free text, sortby, GET and POST, paged
  by the server's next links with small pages.
* Bad input over HTTP answers 400 naming the parameter (404 for an unknown collection) and the
  server keeps serving.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pystac_client
import pytest
from typer.testing import CliRunner

from earthops.control.cli import app
from earthops.core.store import Store
from earthops_runtime.catalog import search as index_search
from earthops_runtime.registry import register_model
from earthops_runtime.stac import text
from earthops_runtime.stac.query import item_interval
from earthops_runtime.training.data import DatasetInfo
from tests.infra import stacvalidator
from tests.infra.proc import free_port, log_tail, spawn, stop, wait_for
from tests.integration.test_registry import TINY, build, make_card

pytestmark = pytest.mark.integration

QUERIES = 60


@pytest.fixture(scope="module")
def catalog_store(iceberg_dataset, tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A store of its own with the session's published dataset run and one registered model."""
    root = tmp_path_factory.mktemp("catalog-store")
    source = Store.from_uri(iceberg_dataset.store_uri)
    run_key = iceberg_dataset.run_uri.removeprefix(source.uri.rstrip("/") + "/")
    shutil.copytree(source.local_path(run_key), root / run_key)
    store = Store.from_uri(root.as_uri())
    dataset = DatasetInfo.open(store.url(run_key))
    chips = dataset.chips("validation", shuffle=False)
    import torch

    example = torch.stack([x.clone() for (x, _), _ in zip(chips, range(2))])
    card = make_card(dataset, TINY, {"width": 8}, accuracy=0.8, store_uri=store.uri)
    register_model(store, namespace="default", name="iceberg-detector", model=build(dataset, TINY, {"width": 8}),
                   example_input=example, card=card)
    return store


@pytest.fixture(scope="module")
def api_url(catalog_store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``earthops catalog serve`` over the store, on a free loopback port."""
    log = tmp_path_factory.mktemp("catalog-serve") / "serve.log"
    port = free_port()
    # the CLI of the code under test, from this interpreter (not whichever `earthops` is first on PATH)
    proc = spawn([sys.executable, "-m", "earthops.control.cli", "catalog", "serve", "--port", str(port),
                  "--store", catalog_store.uri], log_path=log)
    url = f"http://127.0.0.1:{port}/"

    def ready() -> bool:
        return httpx.get(url, timeout=2).status_code == 200

    try:
        wait_for(ready, timeout=60, what="earthops catalog serve", proc=proc, log_path=log, interval=0.2)
        yield url
    finally:
        stop(proc)
        print(log_tail(log, 20))


def landing(api_url: str) -> dict[str, Any]:
    return httpx.get(api_url, timeout=10).json()


def test_the_conformance_suite_passes_for_every_class_claimed(api_url: str, catalog_store: Store) -> None:
    claimed = landing(api_url)["conformsTo"]
    checkable = sorted({stacvalidator.VALIDATOR_CLASSES[c] for c in claimed if stacvalidator.VALIDATOR_CLASSES.get(c)})
    assert {"core", "collections", "features", "item-search", "filter", "item-search#sort",
            "item-search#fields"} <= set(checkable)
    collections = [c["id"] for c in httpx.get(f"{api_url}collections", timeout=10).json()["collections"]]
    dataset = next(c for c in collections if not c.startswith("earthops-models"))
    first = httpx.get(f"{api_url}collections/{dataset}/items", params={"limit": 1}, timeout=10).json()["features"][0]
    nested = next(k for k, v in sorted(first["properties"].items())
                  if v and "." not in k and k not in ("datetime", "start_datetime", "end_datetime"))
    lon = (first["bbox"][0] + first["bbox"][2]) / 2
    lat = (first["bbox"][1] + first["bbox"][3]) / 2
    report = stacvalidator.validate(api_url, checkable, collection=dataset,
                                    geometry=json.dumps({"type": "Point", "coordinates": [lon, lat]}),
                                    fields_nested_property=f"properties.{nested}")
    print(report.output[-3000:])
    assert report.errors == [], "\n".join(report.errors)
    assert report.returncode == 0


def random_query(rng: random.Random, items: list[dict[str, Any]], collections: list[str]) -> dict[str, Any]:
    """A random search over the served items: every criterion is drawn from them, so most queries match."""
    query: dict[str, Any] = {}
    pivot = rng.choice(items)
    if rng.random() < 0.5:
        query["collections"] = rng.sample(collections, rng.randint(1, len(collections)))
    if rng.random() < 0.5 and pivot.get("bbox"):
        w, s, e, n = pivot["bbox"][:4]
        pad = rng.uniform(0, 3)
        query["bbox"] = [max(w - pad, -180), max(s - pad, -90), min(e + pad, 180), min(n + pad, 90)]
    if rng.random() < 0.5:
        start, _ = item_interval(pivot)
        if start is not None:
            lo = start.timestamp() - rng.uniform(0, 200) * 86400
            hi = start.timestamp() + rng.uniform(0, 200) * 86400
            from datetime import UTC, datetime

            fmt = "%Y-%m-%dT%H:%M:%SZ"
            ends = [datetime.fromtimestamp(lo, UTC).strftime(fmt), datetime.fromtimestamp(hi, UTC).strftime(fmt)]
            if rng.random() < 0.2:
                ends[rng.randrange(2)] = ".."
            query["datetime"] = "/".join(ends)
    if rng.random() < 0.4:
        numeric = [k for k, v in pivot["properties"].items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and ":" not in k]
        if numeric:
            key = rng.choice(numeric)
            value = pivot["properties"][key]
            if rng.random() < 0.5:
                query["filter"] = f"{key} <= {value}"
                query["filter_lang"] = "cql2-text"
            else:
                query["filter"] = {"op": ">=", "args": [{"property": key}, value]}
                query["filter_lang"] = "cql2-json"
    if rng.random() < 0.5:
        terms = [t for t in text.item_terms(pivot) if " " not in t]
        picked = rng.sample(terms, min(len(terms), rng.randint(1, 2)))
        joiner = rng.choice([" ", " AND ", " OR "])
        query["q"] = joiner.join(picked)
        if rng.random() < 0.2:
            other = rng.choice([t for t in text.item_terms(rng.choice(items)) if " " not in t])
            query["q"] += f" -{other}"
    if rng.random() < 0.2:
        query["sortby"] = [{"field": rng.choice(["id", "datetime", "collection"]),
                            "direction": rng.choice(["asc", "desc"])}]
    query["max_items"] = rng.randint(5, 40)
    query["limit"] = rng.randint(3, 10)  # the page size: paging by next links
    query["method"] = rng.choice(["GET", "POST"])
    return query


def earthops_search(store: Store, query: dict[str, Any]) -> list[str]:
    args = ["search", "--store", store.uri, "-o", "json", "--limit", str(query["max_items"])]
    for c in query.get("collections", []):
        args += ["--collection", c]
    if "bbox" in query:
        args += [f"--bbox={','.join(repr(v) for v in query['bbox'])}"]
    if "datetime" in query:
        args += ["--datetime", query["datetime"]]
    if "filter" in query:
        args += ["--filter", query["filter"] if isinstance(query["filter"], str) else json.dumps(query["filter"])]
    if "q" in query:
        args += ["--q", query["q"]]
    if "sortby" in query:
        s = query["sortby"][0]
        args += ["--sortby", ("-" if s["direction"] == "desc" else "+") + s["field"]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return [f["id"] for f in json.loads(result.stdout)["features"]]


def pystac_search(client: pystac_client.Client, api_url: str, query: dict[str, Any]) -> list[str]:
    kwargs = {k: v for k, v in query.items() if k in ("collections", "bbox", "datetime", "filter", "filter_lang",
                                                      "sortby", "max_items", "limit", "method")}
    search = client.search(**kwargs)
    if "q" in query:
        # pystac-client 0.9 has no q argument for item search (only for collection search): the
        # parameter is added to the ones it sends, GET or POST, on every page it follows
        search._parameters["q"] = query["q"]
    return [item["id"] for item in search.items_as_dicts()]


def test_pystac_client_finds_what_earthops_search_finds(api_url: str, catalog_store: Store) -> None:
    client = pystac_client.Client.open(api_url)
    items = index_search.search(catalog_store)
    collections = sorted({it["collection"] for it in items})
    assert len(collections) >= 2 and len(items) > 100  # a dataset's scenes and labels, and a model
    rng = random.Random(20261206)
    nonempty = 0
    kinds: dict[str, int] = {}
    for _ in range(QUERIES):
        query = random_query(rng, items, collections)
        want = earthops_search(catalog_store, query)
        got = pystac_search(client, api_url, query)
        assert got == want, query
        nonempty += bool(want)
        for key in ("collections", "bbox", "datetime", "filter", "q", "sortby"):
            kinds[key] = kinds.get(key, 0) + (key in query)
        kinds["paged"] = kinds.get("paged", 0) + (len(want) > query["limit"])
    print(f"{QUERIES} queries, {nonempty} with results; criteria used: {kinds}")
    assert nonempty >= QUERIES // 2
    assert all(kinds[k] >= 5 for k in ("collections", "bbox", "datetime", "filter", "q", "paged")), kinds


def test_bad_input_over_http_is_a_400_naming_the_parameter(api_url: str) -> None:
    cases = [
        ("GET", {"bbox": "0,0,1"}, "bbox"), ("GET", {"datetime": "2021-13-01T00:00:00Z"}, "datetime"),
        ("GET", {"limit": "-3"}, "limit"), ("GET", {"sortby": "+geometry"}, "sortby"),
        ("GET", {"filter": "is_iceberg ==== 1"}, "filter"), ("GET", {"q": '"unclosed'}, "q"),
        ("POST", {"bbox": [0, 0, 200, 1]}, "bbox"), ("POST", {"filter": {"op": "nope", "args": []}}, "filter"),
    ]
    for method, payload, parameter in cases:
        if method == "GET":
            response = httpx.get(f"{api_url}search", params=payload, timeout=10)
        else:
            response = httpx.post(f"{api_url}search", json=payload, timeout=10)
        assert response.status_code == 400, (payload, response.text)
        body = response.json()
        assert body["parameter"] == parameter and body["description"].startswith(f"{parameter}: ")
    assert httpx.get(f"{api_url}collections/no-such-collection", timeout=10).status_code == 404
    assert httpx.get(f"{api_url}collections/no-such-collection/items", timeout=10).status_code == 404
    assert httpx.get(f"{api_url}search", params={"limit": 1}, timeout=10).status_code == 200
