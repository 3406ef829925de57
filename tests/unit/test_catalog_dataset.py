"""The dataset run's STAC catalog (earthops_runtime.catalog.dataset), its index (catalog.index) and the
store's root catalog, on tmp_path stores with small GeoTIFFs made here."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pystac
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine

from earthops.core.store import Store
from earthops_runtime.catalog import dataset, index
from earthops_runtime.data.scene import Scene
from earthops_runtime.stac import conventions as stac

pytestmark = pytest.mark.unit

T0 = datetime(2021, 3, 4, 10, 0, 0, tzinfo=UTC)
CLASSES = ["ship", "iceberg"]
SUMMARY = {"chips": {"train": 70, "validation": 15, "test": 15}, "bands": ["HH", "HV"]}
STATS = {"bands": {"HH": {"mean": -20.1, "std": 3.2}, "HV": {"mean": -27.5, "std": 2.9}}}
VALIDATION = {"passed": True, "failed_checks": 0, "warnings": 1, "checks": []}


def geotiff(path: Path, *, origin: tuple[float, float], res: float = 40.0, size: int = 8) -> Path:
    data = np.random.default_rng(0).normal(-20, 3, (1, size, size)).astype("float32")
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=1, dtype="float32",
                       crs=CRS.from_epsg(32633), transform=Affine(res, 0, origin[0], 0, -res, origin[1])) as ds:
        ds.write(data)
    return path


@pytest.fixture
def scenes(tmp_path: Path) -> tuple[list[Scene], dict[str, pystac.Item]]:
    """Four Sentinel-1 like scenes: two with source STAC items (from real rasters, one saved in a
    static catalog so it has a self href), two with none."""
    data = tmp_path / "source"
    data.mkdir()
    out: list[Scene] = []
    sources: dict[str, pystac.Item] = {}
    for i in range(4):
        sid = f"S1A_EW_{i:03d}"
        origin = (400000.0 + 5000 * i, 5340000.0)
        hh = geotiff(data / f"{sid}_HH.tif", origin=origin)
        hv = geotiff(data / f"{sid}_HV.tif", origin=origin)
        label = CLASSES[i % 2]
        props = {"platform": "sentinel-1a", "constellation": "sentinel-1", "is_iceberg": label}
        when = T0 + timedelta(days=i)
        if i < 2:
            item = stac.item_from_rasters(sid, [
                stac.RasterAssetSpec("HH", hh, polarizations=("HH",), unit="dB"),
                stac.RasterAssetSpec("HV", hv, polarizations=("HV",), unit="dB"),
            ], datetime=when, properties={**props, "sar:looks_range": 5})
            stac.apply_sentinel1_sar(item, ["HH", "HV"], instrument_mode="EW")
            sources[sid] = item
            bbox = tuple(item.bbox)
        else:
            lon = 13.6 + 0.07 * i
            bbox = (lon, 48.2, lon + 0.05, 48.25)
        href = f"https://stac.example.com/collections/sentinel-1-grd/items/{sid}" if i != 1 else None
        out.append(Scene(id=sid, assets={"HH": str(hh), "HV": str(hv)}, datetime=when, bbox=bbox,
                         properties=props, collection="sentinel-1-grd", stac_href=href))
    # one source item lives in a static catalog on disk: its self href is the lineage link
    cat = pystac.Catalog("src", "source catalog")
    cat.add_item(sources["S1A_EW_001"])
    cat.normalize_hrefs(str(tmp_path / "src-catalog" / "catalog.json"))
    cat.save(pystac.CatalogType.ABSOLUTE_PUBLISHED)
    return out, sources


def publish_dataset(store: Store, name: str, run_id: str, scenes: list[Scene], sources: dict[str, pystac.Item],
                    *, shards: bool = True, **kwargs) -> dict:
    key = f"datasets/default/{name}/{run_id}"
    with store.publish(key) as run:
        # what the run writes itself before its catalog (validation.json beside status.json, in place)
        run.write_json("stats.json", STATS)
        store.write_json(f"{key}/validation.json", VALIDATION)
        if shards:
            run.write_json("shards/index.json", {"train": ["shards/train-0000.parquet"]})
        result = dataset.write_dataset_catalog(
            run, namespace="default", name=name, run_id=run_id, scenes=scenes, summary=SUMMARY, stats=STATS,
            validation=VALIDATION, classes=CLASSES, label_task="classification", features=["ratio", "band_avg"],
            source_items=sources, **kwargs)
    dataset.update_root_catalog(store, f"{key}/{result['collection']}")
    return result


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.from_uri((tmp_path / "store").as_uri())


def run_dir(store: Store, name: str = "icebergs", run_id: str = "g1-abc") -> Path:
    return store.local_path(f"datasets/default/{name}/{run_id}")


def docs(store: Store, name: str = "icebergs", run_id: str = "g1-abc") -> dict[str, dict]:
    base = run_dir(store, name, run_id) / "stac"
    return {str(p.relative_to(base)): json.loads(p.read_text()) for p in base.rglob("*.json")}


# --------------------------------------------------------------------------------------------------
# The collection and its items


def test_the_catalog_is_valid_core_stac_offline(store, scenes, no_network) -> None:
    result = publish_dataset(store, "icebergs", "g1-abc", *scenes)
    assert result["collection_id"] == "earthops-default-icebergs-g1-abc"
    assert (result["items"], result["label_items"], result["index_rows"]) == (4, 4, 8)
    collection = run_dir(store) / "stac" / "collection.json"
    assert stac.validate_core(collection) == 1 + 4 + 4
    assert stac.validate_core(store.local_path("catalog.json")) == 1 + 1 + 4 + 4


def test_collection_extent_summaries_and_assets(store, scenes) -> None:
    publish_dataset(store, "icebergs", "g1-abc", *scenes)
    col = docs(store)["collection.json"]
    assert col["id"] == "earthops-default-icebergs-g1-abc"
    assert col["stac_version"] == "1.1.0"
    summaries = col["summaries"]
    assert summaries["earthops:bands"] == ["HH", "HV"]
    assert summaries["earthops:features"] == ["ratio", "band_avg"]
    assert summaries["earthops:chips"] == [{"split": "train", "count": 70}, {"split": "validation", "count": 15},
                                           {"split": "test", "count": 15}]
    assert summaries["earthops:label_task"] == ["classification"]
    assert summaries["label:classes"] == [{"name": "is_iceberg", "classes": CLASSES}]
    assert summaries["label:tasks"] == ["classification"] and summaries["label:type"] == ["vector"]
    assert summaries["platform"] == ["sentinel-1a"]
    assert col["earthops:run"] == {"namespace": "default", "name": "icebergs", "run_id": "g1-abc"}
    # extent: union of the scenes' bboxes, first to last acquisition
    items = [d for k, d in docs(store).items() if d.get("type") == "Feature"]
    (w, s, e, n), = col["extent"]["spatial"]["bbox"]
    assert w == min(i["bbox"][0] for i in items) and e == max(i["bbox"][2] for i in items)
    assert s == min(i["bbox"][1] for i in items) and n == max(i["bbox"][3] for i in items)
    assert col["extent"]["temporal"]["interval"] == [["2021-03-04T10:00:00Z", "2021-03-07T10:00:00Z"]]
    # every asset of the collection resolves to a file of the run, by a relative href
    assets = col["assets"]
    assert {k: a["href"] for k, a in assets.items()} == {
        "stats": "../stats.json", "validation": "../validation.json", "shards": "../shards/index.json",
        "index": "../index.parquet"}
    assert assets["index"]["type"] == "application/vnd.apache.parquet" and assets["index"]["roles"] == ["stac-items"]
    stac_dir = run_dir(store) / "stac"
    for asset in assets.values():
        assert (stac_dir / asset["href"]).resolve().is_file()
    assert json.loads((run_dir(store) / "stats.json").read_text()) == STATS
    assert json.loads((run_dir(store) / "validation.json").read_text()) == VALIDATION
    assert col["earthops:validation"] == {"passed": True, "failed_checks": 0, "warnings": 1}


def test_no_shards_asset_when_the_run_has_none(store, scenes) -> None:
    publish_dataset(store, "icebergs", "g1-abc", *scenes, shards=False)
    assert "shards" not in docs(store)["collection.json"]["assets"]


def test_every_link_between_documents_is_relative_and_resolves(store, scenes) -> None:
    publish_dataset(store, "icebergs", "g1-abc", *scenes)
    base = run_dir(store) / "stac"
    for rel, doc in docs(store).items():
        for link in doc.get("links", []):
            if link["rel"] in ("derived_from", "via"):
                continue
            assert "://" not in link["href"] and not link["href"].startswith("/"), (rel, link)
            assert ((base / rel).parent / link["href"]).resolve().is_file(), (rel, link)
        assert not any(link["rel"] == "self" for link in doc.get("links", []))


def test_scene_items_keep_the_source_and_follow_our_conventions(store, scenes) -> None:
    scene_list, sources = scenes
    publish_dataset(store, "icebergs", "g1-abc", scene_list, sources)
    d = docs(store)
    with_source = d["S1A_EW_000/S1A_EW_000.json"]
    src = sources["S1A_EW_000"].to_dict()
    assert with_source["properties"] == src["properties"]  # source properties kept, sar:looks_range too
    assert with_source["properties"]["proj:code"] == "EPSG:32633"
    assert set(src["stac_extensions"]) <= set(with_source["stac_extensions"])
    assert with_source["collection"] == "earthops-default-icebergs-g1-abc"
    assert with_source["assets"]["HH"]["raster:bands"] == src["assets"]["HH"]["raster:bands"]
    assert with_source["assets"]["HH"]["href"] == str(scene_list[0].assets["HH"])  # data stays where it is
    lineage = {link["rel"]: link["href"] for link in with_source["links"] if link["rel"] in ("derived_from", "via")}
    assert lineage == {"derived_from": scene_list[0].stac_href, "via": scene_list[0].stac_href}
    # no stac_href on the scene: the source item's own location is the lineage
    from_catalog = d["S1A_EW_001/S1A_EW_001.json"]
    hrefs = [link["href"] for link in from_catalog["links"] if link["rel"] == "derived_from"]
    assert hrefs == [sources["S1A_EW_001"].get_self_href()]
    # built from the Scene alone
    built = d["S1A_EW_002/S1A_EW_002.json"]
    assert built["bbox"] == list(scene_list[2].bbox)
    assert built["geometry"]["type"] == "Polygon"
    assert built["properties"]["sar:polarizations"] == ["HH", "HV"]
    assert built["properties"]["sar:frequency_band"] == "C"
    assert built["assets"]["HV"]["sar:polarizations"] == ["HV"]
    assert built["assets"]["HV"]["type"] == stac.GEOTIFF
    assert stac.SAR_SCHEMA in built["stac_extensions"]


def test_projection_v1_source_items_are_migrated_to_v2(store, tmp_path) -> None:
    old = pystac.Item.from_dict({
        "type": "Feature", "stac_version": "1.0.0", "id": "old", "bbox": [10, 50, 11, 51],
        "geometry": {"type": "Polygon", "coordinates": [[[10, 50], [11, 50], [11, 51], [10, 51], [10, 50]]]},
        "stac_extensions": ["https://stac-extensions.github.io/projection/v1.1.0/schema.json"],
        "properties": {"datetime": "2020-01-01T00:00:00Z", "proj:epsg": 32632, "cls": "water"},
        "links": [], "assets": {"B04": {"href": "https://data.example.com/old/B04.tif"}}})
    scene = Scene(id="old", assets={"B04": "https://data.example.com/old/B04.tif"},
                  datetime=datetime(2020, 1, 1, tzinfo=UTC), bbox=(10, 50, 11, 51), properties={"cls": "water"})
    with store.publish("datasets/default/old/g1") as run:
        dataset.write_dataset_catalog(run, namespace="default", name="old", run_id="g1", scenes=[scene], summary={},
                                      stats={}, validation={}, classes=["water", "land"],
                                      label_task="classification", features=None, source_items={"old": old})
    item = docs(store, "old", "g1")["old/old.json"]
    assert item["properties"]["proj:code"] == "EPSG:32632" and "proj:epsg" not in item["properties"]
    assert stac.PROJECTION_SCHEMA in item["stac_extensions"]
    assert item["stac_version"] == "1.1.0"


def test_label_items_use_the_label_extension_and_link_to_their_scene(store, scenes) -> None:
    scene_list, sources = scenes
    publish_dataset(store, "icebergs", "g1-abc", scene_list, sources)
    d = docs(store)
    base = run_dir(store) / "stac"
    label_ext = "https://stac-extensions.github.io/label/v1.0.1/schema.json"
    for scene in scene_list:
        label = d[f"{scene.id}-label/{scene.id}-label.json"]
        props = label["properties"]
        assert label_ext in label["stac_extensions"]
        assert props["label:type"] == "vector"
        assert props["label:properties"] == ["is_iceberg"]
        assert props["label:classes"] == [{"name": "is_iceberg", "classes": CLASSES}]
        assert props["label:tasks"] == ["classification"]
        assert props["label:description"]
        assert props["is_iceberg"] == scene.properties["is_iceberg"]
        assert props["label:overviews"] == [{"property_key": "is_iceberg",
                                             "counts": [{"name": scene.properties["is_iceberg"], "count": 1}]}]
        sources_ = [link for link in label["links"] if link["rel"] == "source"]
        assert len(sources_) == 1
        target = (base / f"{scene.id}-label" / sources_[0]["href"]).resolve()
        assert json.loads(target.read_text())["id"] == scene.id
        assert sources_[0]["label:assets"] == ["HH", "HV"]
        # the labels asset: the tile-classification GeoJSON, next to the item
        labels = json.loads((base / f"{scene.id}-label" / label["assets"]["labels"]["href"]).read_text())
        assert labels["type"] == "FeatureCollection" and len(labels["features"]) == 1
        assert labels["features"][0]["properties"] == {"is_iceberg": scene.properties["is_iceberg"]}
        assert label["geometry"] == d[f"{scene.id}/{scene.id}.json"]["geometry"]


def test_segmentation_labels_are_raster_items_pointing_to_the_mask(store, tmp_path) -> None:
    mask = geotiff(tmp_path / "mask.tif", origin=(400000.0, 5340000.0))
    scene = Scene(id="tile-1", assets={"B04": str(tmp_path / "b04.tif"), "labels": str(mask)},
                  datetime=T0, bbox=(13.6, 48.2, 13.7, 48.3), properties={"platform": "sentinel-2b"})
    with store.publish("datasets/default/seg/g1") as run:
        dataset.write_dataset_catalog(run, namespace="default", name="seg", run_id="g1", scenes=[scene], summary={},
                                      stats={}, validation={}, classes=["water", "forest", "urban"],
                                      label_task="segmentation", features={"indices": ["NDVI"], "sar": []})
    d = docs(store, "seg", "g1")
    label = d["tile-1-label/tile-1-label.json"]
    assert label["properties"]["label:type"] == "raster"
    assert label["properties"]["label:properties"] is None
    assert label["properties"]["label:tasks"] == ["segmentation"]
    assert label["assets"]["labels"]["href"] == str(mask)
    assert label["assets"]["labels"]["type"] == stac.GEOTIFF
    assert d["collection.json"]["summaries"]["earthops:features"] == ["NDVI"]
    # an optical band named like a Sentinel-2 band gets eo:bands
    assert d["tile-1/tile-1.json"]["assets"]["B04"]["eo:bands"][0]["common_name"] == "red"
    assert stac.validate_core(run_dir(store, "seg", "g1") / "stac" / "collection.json") == 3


def test_unlabelled_datasets_have_no_label_items(store, scenes) -> None:
    scene_list, sources = scenes
    features = {"bands": ["HH", "HV"], "sar": ["ratio"], "names": ["HH", "HV", "ratio"]}
    with store.publish("datasets/default/plain/g1") as run:
        result = dataset.write_dataset_catalog(run, namespace="default", name="plain", run_id="g1", scenes=scene_list,
                                               summary={}, stats={}, validation={}, classes=None, label_task=None,
                                               features=features, source_items=sources)
    assert result["label_items"] == 0
    summaries = docs(store, "plain", "g1")["collection.json"]["summaries"]
    assert "label:classes" not in summaries
    assert summaries["earthops:features"] == ["HH", "HV", "ratio"]


def test_bad_inputs_are_refused_before_anything_is_written(store, scenes) -> None:
    scene_list, _ = scenes
    with pytest.raises(ValueError, match="twice"), store.publish("datasets/default/dup/g1") as run:
        dataset.write_dataset_catalog(run, namespace="default", name="dup", run_id="g1",
                                      scenes=[scene_list[0], scene_list[0]], summary={}, stats={}, validation={},
                                      classes=CLASSES, label_task="classification", features=[])
    with pytest.raises(ValueError, match="at least one scene"), store.publish("datasets/default/none/g1") as run:
        dataset.write_dataset_catalog(run, namespace="default", name="none", run_id="g1", scenes=[], summary={},
                                      stats={}, validation={}, classes=CLASSES, label_task="classification",
                                      features=[])
    assert store.runs("datasets/default/dup") == [] and store.runs("datasets/default/none") == []


# --------------------------------------------------------------------------------------------------
# The root catalog


def test_root_catalog_accumulates_collections_idempotently(store, scenes) -> None:
    scene_list, sources = scenes
    publish_dataset(store, "icebergs", "g1-abc", scene_list, sources)
    publish_dataset(store, "icebergs", "g2-def", scene_list[:2], sources)
    publish_dataset(store, "ships", "g1-xyz", scene_list[2:], {})
    first = store.read_json("catalog.json")
    for _ in range(2):  # again: nothing changes
        dataset.update_root_catalog(store, "datasets/default/ships/g1-xyz/stac/collection.json")
        dataset.update_root_catalog(store, store.url("datasets/default/icebergs/g1-abc/stac/collection.json"))
    root = store.read_json("catalog.json")
    assert root == first
    children = [link["href"] for link in root["links"] if link["rel"] == "child"]
    assert children == ["./datasets/default/icebergs/g1-abc/stac/collection.json",
                        "./datasets/default/icebergs/g2-def/stac/collection.json",
                        "./datasets/default/ships/g1-xyz/stac/collection.json"]
    assert root["type"] == "Catalog" and root["id"] == "earthops"
    assert [link["href"] for link in root["links"] if link["rel"] == "root"] == ["./catalog.json"]
    assert stac.validate_core(store.local_path("catalog.json")) == 1 + 3 + (8 + 4 + 4)


def test_pystac_opens_the_root_catalog_and_walks_to_the_items(store, scenes) -> None:
    scene_list, sources = scenes
    publish_dataset(store, "icebergs", "g1-abc", scene_list, sources)
    publish_dataset(store, "ships", "g1-xyz", scene_list[2:], {})
    root = pystac.Catalog.from_file(str(store.local_path("catalog.json")))
    children = {c.id: c for c in root.get_children()}
    assert set(children) == {"earthops-default-icebergs-g1-abc", "earthops-default-ships-g1-xyz"}
    assert all(isinstance(c, pystac.Collection) for c in children.values())
    items = list(root.get_items(recursive=True))
    assert len(items) == 8 + 4
    label = next(i for i in items if i.id == "S1A_EW_003-label")
    source = label.get_single_link("source").resolve_stac_object().target
    assert isinstance(source, pystac.Item) and source.id == "S1A_EW_003"
    assert source.assets["HH"].get_absolute_href() == scene_list[3].assets["HH"]
    stats = children["earthops-default-icebergs-g1-abc"].assets["stats"].get_absolute_href()
    assert json.loads(Path(stats).read_text()) == STATS


def test_concurrent_writers_never_tear_the_root_catalog(store) -> None:
    from concurrent.futures import ThreadPoolExecutor

    keys = []
    for i in range(12):
        run_key = f"datasets/ns{i % 3}/d{i}/g1"
        with store.publish(run_key) as run:
            run.write_json("stac/collection.json", {"type": "Collection", "id": f"c{i}", "title": f"c{i}"})
        keys.append(f"{run_key}/stac/collection.json")
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda k: dataset.update_root_catalog(store, k), keys))
    assert all(r["type"] == "Catalog" for r in results)
    root = json.loads(store.local_path("catalog.json").read_text())  # one whole document, never a part
    children = {link["href"] for link in root["links"] if link["rel"] == "child"}
    assert children <= {f"./{k}" for k in keys}
    rebuilt = dataset.rebuild_root_catalog(store)  # whatever a race lost, the rebuild restores
    assert {link["href"] for link in rebuilt["links"] if link["rel"] == "child"} == {f"./{k}" for k in keys}


def test_rebuild_repairs_a_lost_link_and_drops_deleted_runs(store, scenes) -> None:
    scene_list, sources = scenes
    publish_dataset(store, "icebergs", "g1-abc", scene_list, sources)
    publish_dataset(store, "ships", "g1-xyz", scene_list[2:], {})
    root = store.read_json("catalog.json")
    root["links"] = [link for link in root["links"] if "ships" not in link["href"]]  # a lost update
    store.write_json("catalog.json", root)
    store.delete("datasets/default/icebergs/g1-abc")
    rebuilt = dataset.rebuild_root_catalog(store)
    assert [link["href"] for link in rebuilt["links"] if link["rel"] == "child"] == [
        "./datasets/default/ships/g1-xyz/stac/collection.json"]


# --------------------------------------------------------------------------------------------------
# The index


def test_index_is_stac_geoparquet(store, scenes) -> None:
    publish_dataset(store, "icebergs", "g1-abc", *scenes)
    path = run_dir(store) / "index.parquet"
    table = pq.read_table(path)
    schema = table.schema
    assert schema.field("datetime").type == pa.timestamp("us", tz="UTC")
    assert schema.field("bbox").type == index.BBOX
    assert schema.field("geometry").type == pa.binary()
    assert schema.field("stac_extensions").type == pa.list_(pa.string())
    assert schema.field("assets").type == pa.string() and schema.field("links").type == pa.string()
    assert schema.field("is_iceberg").type == pa.string()
    geo = json.loads(schema.metadata[b"geo"])
    assert geo["primary_column"] == "geometry"
    assert geo["columns"]["geometry"]["encoding"] == "WKB"
    assert geo["columns"]["geometry"]["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    rows = {r["id"]: r for r in table.to_pylist()}
    assert len(rows) == 8
    d = docs(store)
    for rel, doc in d.items():
        if doc.get("type") != "Feature":
            continue
        row = rows[doc["id"]]
        assert index.wkb_to_geometry(row["geometry"]) == doc["geometry"]
        assert [row["bbox"][k] for k in ("xmin", "ymin", "xmax", "ymax")] == doc["bbox"]
        assert index.format_datetime(row["datetime"]) == doc["properties"]["datetime"]
        assert row["collection"] == "earthops-default-icebergs-g1-abc"
        # hrefs in the index are relative to the run folder
        links = {link["rel"]: link["href"] for link in json.loads(row["links"])}
        assert links["self"] == f"stac/{rel}"
        assert links["collection"] == "stac/collection.json"
        assert (run_dir(store) / links["self"]).is_file()


def test_wkb_round_trips_every_geojson_type() -> None:
    shapes = [
        {"type": "Point", "coordinates": [1.5, -2.25]},
        {"type": "Point", "coordinates": [1.5, -2.25, 30.0]},
        {"type": "LineString", "coordinates": [[0.0, 0.0], [1.0, 1.0], [2.0, 0.5]]},
        {"type": "Polygon", "coordinates": [[[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 2.0], [0.0, 0.0]],
                                            [[0.5, 0.5], [0.5, 1.0], [1.0, 1.0], [0.5, 0.5]]]},
        {"type": "MultiPoint", "coordinates": [[0.0, 1.0], [2.0, 3.0]]},
        {"type": "MultiLineString", "coordinates": [[[0.0, 0.0], [1.0, 1.0]], [[2.0, 2.0], [3.0, 3.0]]]},
        {"type": "MultiPolygon", "coordinates": [[[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]],
                                                 [[[5.0, 5.0], [6.0, 5.0], [6.0, 6.0], [5.0, 5.0]]]]},
    ]
    for shape in shapes:
        assert index.wkb_to_geometry(index.geometry_to_wkb(shape)) == shape
    collection = {"type": "GeometryCollection", "geometries": shapes[:3]}
    assert index.wkb_to_geometry(index.geometry_to_wkb(collection)) == collection
    # the well-known bytes of POINT (1 2): little endian, type 1, two doubles
    assert index.geometry_to_wkb({"type": "Point", "coordinates": [1, 2]}).hex() == (
        "0101000000000000000000f03f0000000000000040")


def test_vectorised_box_wkb_matches_the_per_item_encoder() -> None:
    xmin, ymin = np.array([0.0, -10.5]), np.array([1.0, 20.0])
    xmax, ymax = xmin + 0.5, ymin + 0.25
    arr = index.box_wkb_array(xmin, ymin, xmax, ymax)
    for i in range(2):
        ring = [[xmin[i], ymin[i]], [xmax[i], ymin[i]], [xmax[i], ymax[i]], [xmin[i], ymax[i]], [xmin[i], ymin[i]]]
        assert arr[i].as_py() == index.geometry_to_wkb({"type": "Polygon", "coordinates": [ring]})


def test_rows_are_hilbert_sorted_into_small_row_groups_with_bbox_statistics(store) -> None:
    rng = np.random.default_rng(3)
    items = []
    for i in range(400):
        x, y = rng.uniform(-170, 170), rng.uniform(-80, 80)
        items.append({"type": "Feature", "stac_version": "1.1.0", "id": f"i{i}", "collection": "c",
                      "bbox": [x, y, x + 1, y + 1],
                      "geometry": {"type": "Polygon", "coordinates": [[[x, y], [x + 1, y], [x + 1, y + 1],
                                                                       [x, y + 1], [x, y]]]},
                      "properties": {"datetime": "2020-01-01T00:00:00Z"}, "links": [], "assets": {}})
    assert index.write_index(store, "idx.parquet", items, row_group_size=50) == 400
    f = pq.ParquetFile(store.local_path("idx.parquet"))
    assert f.metadata.num_row_groups == 8
    table = f.read()
    boxes = table.column("bbox").combine_chunks()
    cx = (boxes.field("xmin").to_numpy() + boxes.field("xmax").to_numpy()) / 2
    cy = (boxes.field("ymin").to_numpy() + boxes.field("ymax").to_numpy()) / 2
    assert np.all(np.diff(index.hilbert_key(cx, cy)) >= 0)
    # each row group covers a compact area: far less than the whole world on average
    names = [f.metadata.schema.column(i).path for i in range(f.metadata.num_columns)]
    spans = []
    for g in range(f.metadata.num_row_groups):
        rg = f.metadata.row_group(g)
        stats = {names[i]: rg.column(i).statistics for i in range(rg.num_columns)}
        assert stats["bbox.xmin"].has_min_max and stats["bbox.ymax"].has_min_max
        spans.append((stats["bbox.xmax"].max - stats["bbox.xmin"].min) * (stats["bbox.ymax"].max - stats["bbox.ymin"].min))
    assert np.mean(spans) < 0.25 * 360 * 180


def test_hilbert_key_is_a_bijection_on_a_small_grid() -> None:
    n = 1 << 4
    x, y = np.meshgrid(np.arange(n), np.arange(n))
    lon = (x.ravel() + 0.5) / n * 360 - 180
    lat = (y.ravel() + 0.5) / n * 180 - 90
    keys = index.hilbert_key(lon, lat, order=4)
    assert sorted(keys.tolist()) == list(range(n * n))
    # consecutive keys are neighbouring cells
    order = np.argsort(keys)
    steps = np.abs(np.diff(x.ravel()[order])) + np.abs(np.diff(y.ravel()[order]))
    assert np.all(steps == 1)
