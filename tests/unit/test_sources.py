"""Where scenes come from (earthops_runtime.data.sources), without servers.

* ``catalog``: a generated static catalog (three collections, one nested in a sub-catalog, ranged and
  instant datetimes, missing properties, tied datetimes) searched with many filters; the scenes must
  be exactly the brute-force answer, in pgstac's default order, cut at ``maxItems``.
* ``files``: GeoTIFFs made here, as URIs and globs; the band naming rule; unreadable files.
* band mapping rules and the error messages of unknown and missing bands.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine

from earthops.api.dataset import Source
from earthops_runtime.data.scene import Scene
from earthops_runtime.data.sources import (
    ERROR_KEY,
    RASTER_KEY,
    FsspecStacIO,
    band_aliases,
    band_assets,
    parse_interval,
    resolve_scenes,
)
from earthops_runtime.errors import SceneError, SpecError

pytestmark = pytest.mark.unit

GEOTIFF = "image/tiff; application=geotiff; profile=cloud-optimized"
COLLECTIONS = ("s2-west", "s2-east", "s1-archive")
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
TIED = datetime(2021, 6, 1, 12, 0, tzinfo=UTC)


# --------------------------------------------------------------------------------------------------
# A generated catalog and the brute-force search


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rect(w: float, s: float, e: float, n: float) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def s2_assets(prefix: str = "") -> dict[str, Any]:
    return {
        "B04": {"href": f"{prefix}B04.tif", "type": GEOTIFF, "roles": ["data"],
                "eo:bands": [{"name": "B04", "common_name": "red"}],
                "raster:bands": [{"data_type": "uint16", "scale": 0.0001, "offset": -0.1, "nodata": 0}]},
        "B08": {"href": f"{prefix}B08.tif", "type": GEOTIFF, "roles": ["data"],
                "eo:bands": [{"name": "B08", "common_name": "nir"}],
                "raster:bands": [{"data_type": "uint16", "scale": 0.0001, "offset": -0.1, "nodata": 0}]},
        "thumbnail": {"href": f"{prefix}thumb.png", "type": "image/png", "roles": ["thumbnail"]},
    }


def s1_assets(prefix: str = "") -> dict[str, Any]:
    return {
        "vv": {"href": f"{prefix}vv.tif", "type": GEOTIFF, "roles": ["data"], "sar:polarizations": ["VV"],
               "raster:bands": [{"data_type": "float32", "nodata": "nan", "unit": "dB"}]},
        "vh": {"href": f"{prefix}vh.tif", "type": GEOTIFF, "roles": ["data"], "sar:polarizations": ["VH"],
               "raster:bands": [{"data_type": "float32", "nodata": "nan", "unit": "dB"}]},
    }


def make_items(n: int = 120, seed: int = 7, asset_prefix: Callable[[str], str] | None = None) -> list[dict[str, Any]]:
    """Items over western Europe, 2020-2022: every 11th has a datetime range instead of an instant,
    ~15% lack ``eo:cloud_cover``, six share one datetime (order ties), some have zero-area overlap
    with their neighbours. ``asset_prefix(item_id)`` prefixes asset hrefs (default: relative)."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        collection = COLLECTIONS[i % len(COLLECTIONS)]
        item_id = f"scene-{i:03d}"
        w, s = round(rng.uniform(-10.0, 8.0), 4), round(rng.uniform(40.0, 50.0), 4)
        e, n_ = round(w + rng.uniform(0.05, 1.5), 4), round(s + rng.uniform(0.05, 1.5), 4)
        t = EPOCH + timedelta(seconds=rng.randrange(3 * 365 * 86400))
        if 40 <= i < 46:
            t = TIED
        props: dict[str, Any] = {"platform": rng.choice(["sentinel-2a", "sentinel-2b"]),
                                 "labels": sorted(rng.sample(["water", "forest", "urban", "crop"], k=rng.randint(1, 2)))}
        if rng.random() < 0.85:
            props["eo:cloud_cover"] = round(rng.uniform(0, 100), 2)
        if i % 11 == 5:
            props["datetime"] = None
            props["start_datetime"] = iso(t)
            props["end_datetime"] = iso(t + timedelta(days=rng.randint(1, 40)))
        else:
            props["datetime"] = iso(t)
        prefix = asset_prefix(item_id) if asset_prefix else "./"
        items.append({
            "type": "Feature", "stac_version": "1.1.0", "id": item_id, "collection": collection,
            "bbox": [w, s, e, n_], "geometry": rect(w, s, e, n_), "properties": props,
            "assets": s1_assets(prefix) if collection == "s1-archive" else s2_assets(prefix),
            "links": [],
        })
    return items


def collection_doc(collection_id: str, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "type": "Collection", "stac_version": "1.1.0", "id": collection_id, "description": collection_id,
        "license": "other", "links": [],
        "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]},
                   "temporal": {"interval": [[iso(EPOCH), None]]}},
    }


def catalog_files(items: Sequence[Mapping[str, Any]], collections: Sequence[str] = COLLECTIONS,
                  *, drop_collection_field: bool = True) -> dict[str, dict[str, Any]]:
    """Relative path -> JSON of a self-contained catalog: the root links the collections but the last,
    which sits in a sub-catalog ``archive/``; items are ``<collection>/<id>/<id>.json``. Items of the
    nested collection carry no ``collection`` field (it comes from the linking collection) unless
    ``drop_collection_field`` is false. Asset hrefs stay as they are."""
    files: dict[str, dict[str, Any]] = {}
    nested = collections[-1]
    root = {"type": "Catalog", "stac_version": "1.1.0", "id": "root", "description": "generated",
            "links": [{"rel": "root", "href": "./catalog.json"}]}
    archive = {"type": "Catalog", "stac_version": "1.1.0", "id": "archive", "description": "nested",
               "links": [{"rel": "root", "href": "../catalog.json"}, {"rel": "parent", "href": "../catalog.json"}]}
    for cid in collections:
        members = [it for it in items if it["collection"] == cid]
        base = f"archive/{cid}" if cid == nested else cid
        coll = collection_doc(cid, members)
        coll["links"] = [{"rel": "root", "href": "../" * base.count("/") + "../catalog.json"}]
        for it in members:
            doc = json.loads(json.dumps(it))
            if cid == nested and drop_collection_field:
                doc.pop("collection")
            doc["links"] = [{"rel": "parent", "href": "../collection.json"}]
            files[f"{base}/{it['id']}/{it['id']}.json"] = doc
            coll["links"].append({"rel": "item", "href": f"./{it['id']}/{it['id']}.json"})
        files[f"{base}/collection.json"] = coll
        (archive if cid == nested else root)["links"].append({"rel": "child", "href": f"./{cid}/collection.json"})
    root["links"].append({"rel": "child", "href": "./archive/catalog.json"})
    files["archive/catalog.json"] = archive
    files["catalog.json"] = root
    return files


def write_catalog(folder: Path, items: Sequence[Mapping[str, Any]], **kwargs: Any) -> Path:
    for rel, doc in catalog_files(items, **kwargs).items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))
    return folder / "catalog.json"


def _t(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def item_range(item: Mapping[str, Any]) -> tuple[datetime, datetime]:
    p = item["properties"]
    start = _t(p.get("datetime")) or _t(p.get("start_datetime"))
    end = _t(p.get("end_datetime")) or start
    assert start is not None and end is not None
    return start, end


def brute_force(items: Sequence[Mapping[str, Any]], *, collections: Sequence[str] = (),
                bbox: Sequence[float] | None = None, start: datetime | None = None, end: datetime | None = None,
                predicate: Callable[[Mapping[str, Any]], bool] | None = None, max_items: int = 100) -> list[str]:
    """The search, the obvious way: rectangles compared coordinate by coordinate, plain datetimes, a
    Python predicate on the properties; ordered datetime, collection, id (all descending)."""
    out = []
    for it in items:
        if collections and it["collection"] not in collections:
            continue
        if bbox is not None:
            w, s, e, n = it["bbox"]
            if not (w <= bbox[2] and e >= bbox[0] and s <= bbox[3] and n >= bbox[1]):
                continue
        lo, hi = item_range(it)
        if end is not None and lo > end:
            continue
        if start is not None and hi < start:
            continue
        if predicate is not None and not predicate(it["properties"]):
            continue
        out.append(it)
    out.sort(key=lambda it: (item_range(it)[0], it["collection"], it["id"]), reverse=True)
    return [it["id"] for it in out[:max_items]]


def cloud(p: Mapping[str, Any]) -> float | None:
    return p.get("eo:cloud_cover")


#: CQL2-JSON filters and the same condition in Python (a missing property never matches).
FILTERS: list[tuple[dict[str, Any], Callable[[Mapping[str, Any]], bool]]] = [
    ({"op": "<", "args": [{"property": "eo:cloud_cover"}, 30]},
     lambda p: cloud(p) is not None and cloud(p) < 30),
    ({"op": "=", "args": [{"property": "platform"}, "sentinel-2b"]},
     lambda p: p["platform"] == "sentinel-2b"),
    ({"op": "and", "args": [{"op": ">=", "args": [{"property": "eo:cloud_cover"}, 20]},
                            {"op": "=", "args": [{"property": "platform"}, "sentinel-2a"]}]},
     lambda p: cloud(p) is not None and cloud(p) >= 20 and p["platform"] == "sentinel-2a"),
    ({"op": "or", "args": [{"op": "<", "args": [{"property": "eo:cloud_cover"}, 10]},
                           {"op": "=", "args": [{"property": "platform"}, "sentinel-2b"]}]},
     lambda p: (cloud(p) is not None and cloud(p) < 10) or p["platform"] == "sentinel-2b"),
    ({"op": "between", "args": [{"property": "eo:cloud_cover"}, 25, 60]},
     lambda p: cloud(p) is not None and 25 <= cloud(p) <= 60),
    ({"op": "in", "args": [{"property": "platform"}, ["sentinel-2a"]]},
     lambda p: p["platform"] == "sentinel-2a"),
    ({"op": "a_contains", "args": [{"property": "labels"}, ["water"]]},
     lambda p: "water" in p["labels"]),
]


def catalog_source(href: str, **search: Any) -> Source:
    return Source.model_validate({"catalog": {"href": href, **search}})


def ids(scenes: Sequence[Scene]) -> list[str]:
    return [s.id for s in scenes]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], Path]:
    items = make_items()
    return items, write_catalog(tmp_path_factory.mktemp("catalog"), items)


# --------------------------------------------------------------------------------------------------
# catalog: the same filters as a STAC API, in-process


def test_whole_catalog_in_search_order(generated):
    items, root = generated
    scenes = resolve_scenes(catalog_source(str(root), maxItems=1000), [])
    assert ids(scenes) == brute_force(items, max_items=1000)
    assert len(scenes) == len(items)


@pytest.mark.parametrize("case", [
    {"collections": ["s2-east"]},
    {"collections": ["s1-archive", "s2-west"]},  # s1-archive: nested catalog, collection from its parent
    {"bbox": [-2.0, 44.0, 1.0, 46.5]},
    {"bbox": [5.5, 48.0, 9.9, 51.9]},
    {"datetime": "2021-01-01T00:00:00Z/2021-06-30T23:59:59Z"},
    {"datetime": "../2020-03-01T00:00:00Z"},
    {"datetime": "2022-10-01T00:00:00Z/.."},
    {"datetime": "2021-06-01/2021-06-01"},  # date-only: the whole day (the tied items are at noon)
    {"maxItems": 7},
    {"datetime": "../2021-06-01T12:00:00Z", "maxItems": 3},  # cut inside tied datetimes: collection, id decide
    {"collections": ["s2-west", "s2-east"], "bbox": [-6.0, 42.0, 4.0, 49.0],
     "datetime": "2020-06-01T00:00:00Z/2022-06-01T00:00:00Z", "maxItems": 15},
], ids=lambda c: ",".join(c))
def test_catalog_filters_match_brute_force(generated, case):
    items, root = generated
    start, end = parse_interval(case.get("datetime"))
    want = brute_force(items, collections=case.get("collections", ()), bbox=case.get("bbox"), start=start,
                       end=end, max_items=case.get("maxItems", 100))
    assert want, f"the case {case} selects nothing: make it select something"
    got = resolve_scenes(catalog_source(str(root), **case), [])
    assert ids(got) == want


@pytest.mark.parametrize("index", range(len(FILTERS)))
def test_catalog_cql2_filters_match_brute_force(generated, index):
    items, root = generated
    cql, predicate = FILTERS[index]
    want = brute_force(items, predicate=predicate, max_items=1000)
    assert 0 < len(want) < len(items)
    got = resolve_scenes(catalog_source(str(root), filter=cql, maxItems=1000), [])
    assert ids(got) == want


def test_random_searches_match_brute_force(generated):
    items, root = generated
    rng = random.Random(2024)
    checked_nonempty = 0
    for _ in range(60):
        case: dict[str, Any] = {"maxItems": rng.choice([1, 3, 10, 100])}
        kw: dict[str, Any] = {"max_items": case["maxItems"]}
        if rng.random() < 0.4:
            case["collections"] = kw["collections"] = rng.sample(COLLECTIONS, k=rng.randint(1, 2))
        if rng.random() < 0.6:
            w, s = rng.uniform(-12, 6), rng.uniform(39, 49)
            case["bbox"] = kw["bbox"] = [round(w, 3), round(s, 3), round(w + rng.uniform(0.5, 6), 3),
                                         round(s + rng.uniform(0.5, 4), 3)]
        if rng.random() < 0.6:
            a = EPOCH + timedelta(days=rng.randrange(1000))
            b = a + timedelta(days=rng.randrange(1, 400))
            lo = rng.choice([iso(a), ".."]) if rng.random() < 0.8 else a.date().isoformat()
            hi = rng.choice([iso(b), ".."]) if rng.random() < 0.8 else b.date().isoformat()
            case["datetime"] = f"{lo}/{hi}"
            kw["start"], kw["end"] = parse_interval(case["datetime"])
        if rng.random() < 0.5:
            cql, kw["predicate"] = rng.choice(FILTERS)
            case["filter"] = cql
        want = brute_force(items, **kw)
        try:
            got = ids(resolve_scenes(catalog_source(str(root), **case), []))
        except SpecError as exc:
            assert exc.reason == "EmptySource" and want == [], case
            continue
        assert got == want, case
        checked_nonempty += 1
    assert checked_nonempty >= 25


def test_ranged_items_match_by_overlap(tmp_path):
    items = make_items(12)
    ranged = [it for it in items if it["properties"]["datetime"] is None]
    assert ranged
    item = ranged[0]
    start = datetime.fromisoformat(item["properties"]["start_datetime"])
    root = write_catalog(tmp_path, items)
    # an interval inside the item's range, touching neither end: the item matches
    inside = f"{iso(start + timedelta(hours=1))}/{iso(start + timedelta(hours=2))}"
    assert item["id"] in ids(resolve_scenes(catalog_source(str(root), datetime=inside), []))


def test_scene_fields_come_from_the_item(generated):
    items, root = generated
    by_id = {it["id"]: it for it in items}
    scenes = resolve_scenes(catalog_source(str(root), collections=["s2-west"], maxItems=3), ["B04", "nir"])
    for scene in scenes:
        item = by_id[scene.id]
        assert scene.collection == "s2-west"
        assert scene.bbox == tuple(item["bbox"])
        assert scene.datetime == item_range(item)[0]
        assert scene.properties["labels"] == item["properties"]["labels"]
        assert scene.stac_href == str(root.parent / "s2-west" / scene.id / f"{scene.id}.json")
        hrefs = band_assets(scene, ["B04", "nir"])
        assert hrefs == {"B04": str(root.parent / "s2-west" / scene.id / "B04.tif"),
                         "nir": str(root.parent / "s2-west" / scene.id / "B08.tif")}
        assert scene.assets["thumbnail"].endswith("thumb.png")  # other assets keep their key
        assert "B08" not in scene.assets  # mapped: keyed by the spec's band name only
        assert scene.properties[RASTER_KEY] == {
            "B04": {"asset": "B04", "index": 1, "scale": 0.0001, "offset": -0.1, "nodata": 0, "unit": None},
            "nir": {"asset": "B08", "index": 1, "scale": 0.0001, "offset": -0.1, "nodata": 0, "unit": None},
        }


def test_collection_comes_from_the_linking_collection(generated):
    _, root = generated
    doc = json.loads(next((root.parent / "archive" / "s1-archive").glob("*/*.json")).read_text())
    assert "collection" not in doc
    scenes = resolve_scenes(catalog_source(str(root), collections=["s1-archive"], maxItems=1000), ["VV", "VH"])
    assert scenes and {s.collection for s in scenes} == {"s1-archive"}
    assert scenes[0].properties[RASTER_KEY]["VV"] == {"asset": "vv", "index": 1, "scale": None, "offset": None,
                                                      "nodata": "nan", "unit": "dB"}


def test_catalog_href_forms(generated, tmp_path, monkeypatch):
    items, root = generated
    want = brute_force(items, collections=["s2-east"], max_items=5)
    for href in (str(root), root.as_uri(), str(root.parent / "s2-east" / "collection.json")):
        assert ids(resolve_scenes(catalog_source(href, collections=["s2-east"], maxItems=5), [])) == want
    monkeypatch.chdir(root.parent)
    assert ids(resolve_scenes(catalog_source("catalog.json", collections=["s2-east"], maxItems=5), [])) == want


def test_unreadable_catalog_and_bad_filter(tmp_path, generated):
    with pytest.raises(SpecError) as err:
        resolve_scenes(catalog_source(str(tmp_path / "nope" / "catalog.json")), [])
    assert err.value.reason == "SourceUnavailable"
    assert err.value.field == "spec.source.catalog.href"
    assert "cannot read the catalog" in str(err.value) and "nope/catalog.json" in str(err.value)

    _, root = generated
    with pytest.raises(SpecError) as err:
        resolve_scenes(catalog_source(str(root), filter={"op": "<", "args": "nonsense"}), [])
    assert err.value.field == "spec.source.catalog.filter"
    assert "not valid CQL2" in str(err.value)


def test_empty_catalog_search(generated):
    _, root = generated
    with pytest.raises(SpecError) as err:
        resolve_scenes(catalog_source(str(root), bbox=[100.0, -10.0, 101.0, -9.0],
                                      datetime="2021-01-01T00:00:00Z/.."), [])
    assert err.value.reason == "EmptySource"
    assert err.value.field == "spec.source"
    assert "matched no scenes (collections=all, bbox=[100.0, -10.0, 101.0, -9.0], " \
           "datetime=2021-01-01T00:00:00Z/..)" in str(err.value)


def test_stac_io_reads_and_writes_local_files(tmp_path):
    io = FsspecStacIO()
    io.write_text(str(tmp_path / "a" / "b" / "x.json"), '{"k": 1}')
    assert io.read_text(str(tmp_path / "a" / "b" / "x.json")) == '{"k": 1}'
    assert io.read_text((tmp_path / "a" / "b" / "x.json").as_uri()) == '{"k": 1}'


def test_parse_interval():
    assert parse_interval("2021-03-05/2021-03-05") == (datetime(2021, 3, 5, tzinfo=UTC),
                                                       datetime(2021, 3, 5, 23, 59, 59, 999999, tzinfo=UTC))
    assert parse_interval("../2021-03-05T10:00:00+02:00") == (None, datetime(2021, 3, 5, 8, tzinfo=UTC))
    assert parse_interval("2021-03-05T10:00:00.123456789Z/..") == (
        datetime(2021, 3, 5, 10, 0, 0, 123456, tzinfo=UTC), None)
    assert parse_interval(None) == (None, None)


# --------------------------------------------------------------------------------------------------
# sample: a catalog from the injected function, limited to count, sensors without the bands left out


def test_sample_source_walks_the_returned_catalog(generated):
    items, root = generated
    calls = []

    def sample_scenes(name: str, count: int, seed: int) -> Path:
        calls.append((name, count, seed))
        return root

    source = Source.model_validate({"sample": {"name": "synthetic-s2-landcover", "count": 9, "seed": 3}})
    scenes = resolve_scenes(source, ["B04", "B08"], sample_scenes=sample_scenes)
    assert calls == [("synthetic-s2-landcover", 9, 3)]
    want = brute_force(items, collections=["s2-west", "s2-east"], max_items=9)  # s1 has no B04
    assert ids(scenes) == want
    with pytest.raises(SpecError) as err:
        resolve_scenes(source, ["B04"])
    assert err.value.field == "spec.source.sample"


# --------------------------------------------------------------------------------------------------
# band mapping


def one_item(assets: dict[str, Any], item_id: str = "x", **props: Any) -> dict[str, Any]:
    return {"type": "Feature", "stac_version": "1.1.0", "id": item_id, "collection": "c",
            "bbox": [0, 0, 1, 1], "geometry": rect(0, 0, 1, 1),
            "properties": {"datetime": "2021-01-01T00:00:00Z", **props}, "assets": assets, "links": []}


def resolve_items(tmp_path: Path, items: list[dict[str, Any]], bands: list[str],
                  assets: dict[str, str] | None = None) -> list[Scene]:
    """Resolve hand-made items through a catalog source (one collection ``c``)."""
    root = tmp_path / "cat"
    coll = collection_doc("c", items)
    coll["links"] = [{"rel": "item", "href": f"./{it['id']}.json"} for it in items]
    root.mkdir(exist_ok=True)
    (root / "collection.json").write_text(json.dumps(coll))
    for it in items:
        (root / f"{it['id']}.json").write_text(json.dumps(it))
    spec: dict[str, Any] = {"maxItems": 1000}
    if assets:
        spec["assets"] = assets
    return resolve_scenes(catalog_source(str(root / "collection.json"), **spec), bands)


def tif(name: str, **extra: Any) -> dict[str, Any]:
    return {"href": f"/data/{name}.tif", "type": GEOTIFF, "roles": ["data"], **extra}


def mapping(scene: Scene) -> dict[str, tuple[str, int]]:
    return {b: (v["asset"], v["index"]) for b, v in scene.properties[RASTER_KEY].items()}


def test_aliases():
    assert band_aliases("B04") == band_aliases("red") == frozenset({"b04", "red"})
    assert band_aliases("b8a") == frozenset({"b8a", "nir08"})
    assert band_aliases("rededge") == frozenset({"rededge"})  # three bands share it: no alias
    assert band_aliases("VV") == frozenset({"vv"})


def test_mapping_rules_in_order(tmp_path):
    earth_search = one_item({  # Earth Search style: common-name keys, eo:bands named by common name
        "red": tif("red", **{"eo:bands": [{"name": "red", "common_name": "red"}]}),
        "nir08": tif("nir08", **{"eo:bands": [{"name": "nir08", "common_name": "nir08"}]}),
        "rededge1": tif("re1", **{"eo:bands": [{"name": "rededge1", "common_name": "rededge"}]}),
        "visual": tif("visual", roles=["visual"], **{"eo:bands": [
            {"name": "red", "common_name": "red"}, {"name": "green", "common_name": "green"},
            {"name": "blue", "common_name": "blue"}]}),
        "thumbnail": {"href": "/data/t.jpg", "type": "image/jpeg", "roles": ["thumbnail"]},
    }, item_id="earth-search")
    planetary = one_item({  # Planetary Computer style: band-name keys
        "B04": tif("B04", **{"eo:bands": [{"name": "B04", "common_name": "red"}]}),
        "B8A": tif("B8A", **{"eo:bands": [{"name": "B8A", "common_name": "nir08"}]}),
        "B05": tif("B05", **{"eo:bands": [{"name": "B05", "common_name": "rededge"}]}),
        "B03": tif("B03", **{"eo:bands": [{"name": "B03", "common_name": "green"}]}),
    }, item_id="planetary")
    stac11 = one_item({  # STAC 1.1 `bands`, one multi-band file; keys say nothing
        "data": {"href": "/data/stack.tif", "type": GEOTIFF, "roles": ["data"], "bands": [
            {"name": "b2", "eo:common_name": "blue", "raster:scale": 2.0},
            {"name": "B04", "eo:common_name": "red", "raster:scale": 0.5, "raster:offset": 1.0, "nodata": 7},
            {"name": "B05", "eo:common_name": "rededge"},
            {"name": "green band", "eo:common_name": "green"}]},
    }, item_id="stac11")
    scenes = {s.id: s for s in resolve_items(tmp_path, [earth_search, planetary, stac11],
                                             ["B04", "red", "B8A", "B05", "green"])}
    assert mapping(scenes["earth-search"]) == {"B04": ("red", 1), "red": ("red", 1), "B8A": ("nir08", 1),
                                               "B05": ("rededge1", 1), "green": ("visual", 2)}
    assert mapping(scenes["planetary"]) == {"B04": ("B04", 1), "red": ("B04", 1), "B8A": ("B8A", 1),
                                            "B05": ("B05", 1), "green": ("B03", 1)}
    assert mapping(scenes["stac11"]) == {"B04": ("data", 2), "red": ("data", 2), "B05": ("data", 3),
                                         "green": ("data", 4)}
    assert scenes["stac11"].properties[RASTER_KEY]["B04"] == {"asset": "data", "index": 2, "scale": 0.5,
                                                              "offset": 1.0, "nodata": 7, "unit": None}
    assert band_assets(scenes["earth-search"], ["B04", "green"]) == {"B04": "/data/red.tif",
                                                                      "green": "/data/visual.tif"}
    # stac11 lacks B8A: that scene fails, the others do not
    with pytest.raises(SceneError) as err:
        band_assets(scenes["stac11"], ["B04", "B8A"])
    assert err.value.scene_id == "stac11"
    assert "no asset for band 'B8A'" in str(err.value)


def test_explicit_assets_win_and_single_band_assets_beat_stacks(tmp_path):
    item = one_item({
        "visual": tif("visual", **{"eo:bands": [{"name": "r", "common_name": "red"},
                                                {"name": "g", "common_name": "green"}]}),
        "red_10m": tif("red10", **{"eo:bands": [{"name": "r10", "common_name": "red"}]}),
        "hh_calibrated": tif("hh"),
    })
    [scene] = resolve_items(tmp_path, [item], ["red", "green", "HH"], assets={"HH": "hh_calibrated"})
    assert mapping(scene) == {"red": ("red_10m", 1), "green": ("visual", 2), "HH": ("hh_calibrated", 1)}
    [scene] = resolve_items(tmp_path, [item], ["red"], assets={"red": "visual"})
    assert mapping(scene) == {"red": ("visual", 1)}


def test_asset_level_stac11_fields_and_raster_bands(tmp_path):
    item = one_item({
        "B02": tif("B02", nodata=0, **{"raster:scale": 0.0001, "raster:offset": -0.1, "eo:common_name": "blue"}),
    })
    [scene] = resolve_items(tmp_path, [item], ["blue"])
    assert scene.properties[RASTER_KEY] == {"blue": {"asset": "B02", "index": 1, "scale": 0.0001,
                                                     "offset": -0.1, "nodata": 0, "unit": None}}


def test_unknown_band_is_a_spec_error(tmp_path, generated):
    _, root = generated
    with pytest.raises(SpecError) as err:
        resolve_scenes(catalog_source(str(root), collections=["s2-west"]), ["B04", "B13"])
    assert err.value.field == "spec.bands"
    assert err.value.reason == "InvalidSpec"
    assert str(err.value) == "spec.bands: band 'B13' is not in the source; available: B04, B08, nir, red"


def test_band_missing_in_some_scenes_fails_only_those(tmp_path):
    full = one_item({"B04": tif("a4"), "B08": tif("a8")}, item_id="full")
    partial = one_item({"B04": tif("b4")}, item_id="partial")
    scenes = {s.id: s for s in resolve_items(tmp_path, [full, partial], ["B04", "B08"])}
    assert band_assets(scenes["full"], ["B04", "B08"]) == {"B04": "/data/a4.tif", "B08": "/data/a8.tif"}
    with pytest.raises(SceneError) as err:
        band_assets(scenes["partial"], ["B04", "B08"])
    assert str(err.value) == "scene partial: no asset for band 'B08' (mapped: B04; other assets: none)"


def test_ambiguous_and_wrong_explicit_mapping_say_why(tmp_path):
    item = one_item({
        "re1": tif("re1", **{"eo:bands": [{"name": "x5", "common_name": "rededge"}]}),
        "re2": tif("re2", **{"eo:bands": [{"name": "x6", "common_name": "rededge"}]}),
    })
    with pytest.raises(SpecError) as err:
        resolve_items(tmp_path, [item], ["rededge"])
    assert err.value.field == "spec.bands"
    assert "ambiguous: assets re1, re2 all match by common_name" in str(err.value)
    with pytest.raises(SpecError) as err:
        resolve_items(tmp_path, [item], ["rededge"], assets={"rededge": "re9"})
    assert "asset 're9' (named for 'rededge' in assets) is not in the item" in str(err.value)


# --------------------------------------------------------------------------------------------------
# files


UTM31 = CRS.from_epsg(32631)


def geotiff(path: Path, count: int = 1, *, descriptions: Sequence[str | None] | None = None,
            origin: tuple[float, float] = (500000.0, 5000000.0), scale: float | None = None,
            nodata: float | None = None, stamp: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.arange(count * 8 * 8, dtype="uint16").reshape(count, 8, 8)
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=count, dtype="uint16", crs=UTM31,
                       transform=Affine(10.0, 0, origin[0], 0, -10.0, origin[1]), nodata=nodata) as ds:
        ds.write(data)
        for i, d in enumerate(descriptions or []):
            if d:
                ds.set_band_description(i + 1, d)
        if scale is not None:
            ds.scales = [scale] * count
        if stamp:
            ds.update_tags(TIFFTAG_DATETIME=stamp)
    return path


def files_source(*uris: str) -> Source:
    return Source.model_validate({"files": {"uris": list(uris)}})


def test_files_band_naming_rule(tmp_path):
    d = tmp_path / "scenes"
    geotiff(d / "stack.tif", 3, descriptions=["B02", "B03", "B04"], scale=0.0001, stamp="2021:07:01 10:30:00")
    geotiff(d / "S2A_20210702T103021_T31TCJ_B04.tif", nodata=0)
    geotiff(d / "S2A_20210702T103021_T31TCJ_B08.tif", nodata=0)
    geotiff(d / "other_B04.tif")  # lacks B08
    geotiff(d / "polarisation.tif", descriptions=["VV"])
    geotiff(d / "sub" / "S2A_20210702T103021_T31TCJ_B08.tif")  # another folder: another scene
    all_scenes = resolve_scenes(files_source(f"{d}/*.tif", f"{d}/sub/*.tif"), ["B04"])
    assert [s.id for s in all_scenes] == ["S2A_20210702T103021_T31TCJ", "other", "polarisation", "stack",
                                          "S2A_20210702T103021_T31TCJ"]  # glob order, sorted per pattern
    assert set(all_scenes[-1].assets) == {"B08"}
    scenes = {s.id: s for s in all_scenes[:-1]}

    stack = scenes["stack"]
    assert mapping(stack) == {"B04": ("stack", 3)}
    assert stack.properties[RASTER_KEY]["B04"]["scale"] == pytest.approx(0.0001)
    assert stack.datetime == datetime(2021, 7, 1, 10, 30, tzinfo=UTC)
    assert stack.bbox is not None and 2.99 < stack.bbox[0] < 3.01  # UTM 31 at x=500000 is 3°E

    pair = scenes["S2A_20210702T103021_T31TCJ"]
    assert band_assets(pair, ["B04"]) == {"B04": str(d / "S2A_20210702T103021_T31TCJ_B04.tif")}
    assert pair.assets["B08"] == str(d / "S2A_20210702T103021_T31TCJ_B08.tif")
    assert pair.properties[RASTER_KEY]["B04"]["nodata"] == 0
    assert pair.datetime == datetime(2021, 7, 2, 10, 30, 21, tzinfo=UTC)  # from the id

    both = resolve_scenes(files_source(str(d / "S2A_20210702T103021_T31TCJ_B04.tif"),
                                       str(d / "S2A_20210702T103021_T31TCJ_B08.tif"), f"{d}/other_*.tif"),
                          ["red", "B08"])
    by_id = {s.id: s for s in both}
    assert set(band_assets(by_id["S2A_20210702T103021_T31TCJ"], ["red", "B08"])) == {"red", "B08"}
    with pytest.raises(SceneError, match="no asset for band 'B08'"):
        band_assets(by_id["other"], ["red", "B08"])

    [sar] = resolve_scenes(files_source(str(d / "polarisation.tif")), ["VV"])
    assert mapping(sar) == {"VV": ("polarisation", 1)}


def test_files_errors(tmp_path):
    d = tmp_path / "f"
    geotiff(d / "good_B04.tif")
    (d / "broken_B04.tif").write_bytes(b"not a tiff at all")
    scenes = {s.id: s for s in resolve_scenes(files_source(f"{d}/*_B04.tif"), ["B04"])}
    assert set(scenes) == {"good", "broken"}
    assert band_assets(scenes["good"], ["B04"])
    with pytest.raises(SceneError) as err:
        band_assets(scenes["broken"], ["B04"])
    assert "cannot open" in str(err.value) and "broken_B04.tif" in str(err.value)
    assert scenes["broken"].properties[ERROR_KEY]

    with pytest.raises(SpecError) as err:
        resolve_scenes(files_source(f"{d}/*_B04.tif"), ["B05"])
    assert str(err.value) == "spec.bands: band 'B05' is not in the source; available: B04"

    with pytest.raises(SpecError) as err:
        resolve_scenes(files_source(f"{d}/*.jp2"), ["B04"])
    assert err.value.reason == "EmptySource"
    assert "the files matched no scenes" in str(err.value)

    with pytest.raises(SpecError) as err:
        resolve_scenes(files_source(str(d / "broken_B04.tif")), ["B04"])
    assert err.value.reason == "SourceUnavailable"
    assert "none of the 1 scenes can be read" in str(err.value)


def test_single_band_file_without_a_name(tmp_path):
    geotiff(tmp_path / "plain.tif")
    with pytest.raises(SpecError) as err:
        resolve_scenes(files_source(str(tmp_path / "plain.tif")), ["B04"])
    assert err.value.field == "spec.bands"
    assert "band 'B04' is not in the source; available: plain" in str(err.value)


def test_an_unmapped_band_is_not_left_under_its_name(tmp_path):
    """assets: {B08: nir} — an item without `nir` but with a `B08` asset must not serve B08 through
    its leftover key (readers take scene.assets[band])."""
    good = one_item({"B04": tif("g4"), "nir": tif("g8")}, item_id="good")
    odd = one_item({"B04": tif("o4"), "B08": tif("o8")}, item_id="odd")
    scenes = {s.id: s for s in resolve_items(tmp_path, [good, odd], ["B04", "B08"], assets={"B08": "nir"})}
    assert band_assets(scenes["good"], ["B04", "B08"]) == {"B04": "/data/g4.tif", "B08": "/data/g8.tif"}
    assert "B08" not in scenes["odd"].assets
    with pytest.raises(SceneError, match="no asset for band 'B08'"):
        band_assets(scenes["odd"], ["B04", "B08"])


def test_scene_and_spec_errors_survive_pickling():
    """Ray carries a task's exception to the driver by pickling it: the field, reason and message stay."""
    import pickle

    from earthops_runtime.errors import SceneError, SpecError

    spec = pickle.loads(pickle.dumps(SpecError("spec.model.parameters.kernelSize", "2.5 is not an integer", "Bad")))
    assert (spec.field, spec.reason, str(spec)) == ("spec.model.parameters.kernelSize", "Bad",
                                                    "spec.model.parameters.kernelSize: 2.5 is not an integer")
    scene = pickle.loads(pickle.dumps(SceneError("S1A_X", "corrupt")))
    assert (scene.scene_id, scene.reason, str(scene)) == ("S1A_X", "corrupt", "scene S1A_X: corrupt")
