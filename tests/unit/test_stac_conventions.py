"""The shared STAC conventions (earthops_runtime.stac.conventions) on small GeoTIFFs made here."""

from __future__ import annotations

import itertools
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import rasterio.warp
from rasterio.crs import CRS
from rasterio.transform import Affine

from earthops_runtime.stac import conventions as stac

pytestmark = pytest.mark.unit

WHEN = datetime(2017, 6, 13, 10, 10, 31, tzinfo=UTC)
UTM33 = CRS.from_epsg(32633)
ORIGIN = (404400.0, 5342400.0)  # upper-left corner, metres


def geotiff(path: Path, data: np.ndarray, *, res: float, crs: CRS = UTM33, origin=ORIGIN, **profile) -> Path:
    bands = data if data.ndim == 3 else data[None]
    with rasterio.open(path, "w", driver="GTiff", width=bands.shape[2], height=bands.shape[1],
                       count=bands.shape[0], dtype=bands.dtype, crs=crs,
                       transform=Affine(res, 0.0, origin[0], 0.0, -res, origin[1]), **profile) as ds:
        ds.write(bands)
    return path


@pytest.fixture
def s2_like(tmp_path: Path) -> list[stac.RasterAssetSpec]:
    rng = np.random.default_rng(0)
    b02 = geotiff(tmp_path / "B02.tif", rng.integers(1, 3000, (12, 12), dtype="uint16"), res=10)
    b8a = geotiff(tmp_path / "B8A.tif", rng.integers(1, 3000, (6, 6), dtype="uint16"), res=20)
    return [
        stac.RasterAssetSpec("B02", b02, title="Blue", roles=("data", "reflectance"),
                             spectral_bands=(stac.S2_BANDS_BY_NAME["B02"],), scale=stac.S2_L2A_SCALE,
                             nodata=stac.S2_L2A_NODATA),
        stac.RasterAssetSpec("B8A", b8a, title="NIR narrow", roles=("data", "reflectance"),
                             spectral_bands=(stac.S2_BANDS_BY_NAME["B8A"],), scale=stac.S2_L2A_SCALE,
                             nodata=stac.S2_L2A_NODATA),
    ]


# --------------------------------------------------------------------------------------------------
# Versions and tables


def test_conventions_match_the_installed_pystac() -> None:
    stac.check_pystac_defaults()
    assert stac.STAC_VERSION == "1.1.0"
    assert stac.EXTENSION_SCHEMAS == {
        "projection": "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
        "eo": "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
        "raster": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
        "sar": "https://stac-extensions.github.io/sar/v1.0.0/schema.json",
    }


def test_sentinel2_band_table() -> None:
    names = [b.name for b in stac.S2_BANDS]
    assert names == ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
                     "B12"]
    assert tuple(n for n in names if n != "B10") == stac.S2_L2A_BAND_NAMES
    by_res = {r: [b.name for b in stac.S2_BANDS if b.resolution == r] for r in (10, 20, 60)}
    assert by_res == {10: ["B02", "B03", "B04", "B08"], 20: ["B05", "B06", "B07", "B8A", "B11", "B12"],
                      60: ["B01", "B09", "B10"]}
    common = {b.name: b.common_name for b in stac.S2_BANDS}
    assert (common["B02"], common["B03"], common["B04"], common["B08"]) == ("blue", "green", "red", "nir")
    assert (common["B8A"], common["B11"], common["B12"]) == ("nir08", "swir16", "swir22")
    for band in stac.S2_BANDS:  # every common name is one the eo extension defines
        assert pystac.extensions.eo.Band.band_range(band.common_name) is not None, band
        assert 0 < band.full_width_half_max < band.center_wavelength
    # Wavelengths ascend in band order (B8A sits between B08 and B09).
    wavelengths = [b.center_wavelength for b in stac.S2_BANDS]
    assert wavelengths == sorted(wavelengths)
    d = stac.S2_BANDS_BY_NAME["B04"].eo_band().to_dict()
    assert d == {"name": "B04", "common_name": "red", "description": "Red", "center_wavelength": 0.665,
                 "full_width_half_max": 0.038}


def test_sentinel1_sar_fields() -> None:
    item = pystac.Item("s1", None, None, WHEN, {})
    stac.apply_sentinel1_sar(item, ["VV", "VH"])
    props = item.properties
    assert props["sar:instrument_mode"] == "IW"
    assert props["sar:frequency_band"] == "C"
    assert props["sar:center_frequency"] == pytest.approx(5.405)
    assert props["sar:polarizations"] == ["VV", "VH"]
    assert props["sar:product_type"] == "GRD"
    assert item.stac_extensions == [stac.SAR_SCHEMA]
    with pytest.raises(ValueError):
        stac.apply_sentinel1_sar(item, ["XX"])
    with pytest.raises(ValueError):
        stac.apply_sentinel1_sar(item, ["VV"], instrument_mode="ZZ")


# --------------------------------------------------------------------------------------------------
# Items from rasters


def test_item_from_rasters_projection_raster_eo(s2_like: list[stac.RasterAssetSpec]) -> None:
    item = stac.item_from_rasters("patch", s2_like, datetime=WHEN, properties={"platform": "sentinel-2a"})
    d = item.to_dict(include_self_link=False)

    assert set(d["stac_extensions"]) == {stac.PROJECTION_SCHEMA, stac.RASTER_SCHEMA, stac.EO_SCHEMA}
    assert d["stac_version"] == "1.1.0"
    assert d["properties"]["datetime"] == "2017-06-13T10:10:31Z"
    assert d["properties"]["platform"] == "sentinel-2a"
    # projection v2: proj:code on the item, never proj:epsg; the grid per asset.
    assert d["properties"]["proj:code"] == "EPSG:32633"
    assert "proj:epsg" not in json.dumps(d)
    assert d["properties"]["proj:bbox"] == [404400.0, 5342280.0, 404520.0, 5342400.0]
    b02, b8a = d["assets"]["B02"], d["assets"]["B8A"]
    assert b02["proj:shape"] == [12, 12] and b8a["proj:shape"] == [6, 6]
    assert b02["proj:transform"] == [10.0, 0.0, 404400.0, 0.0, -10.0, 5342400.0]
    assert b8a["proj:transform"] == [20.0, 0.0, 404400.0, 0.0, -20.0, 5342400.0]
    # raster v1.1: file facts + product knowledge.
    assert b02["raster:bands"] == [
        {"data_type": "uint16", "nodata": 0, "scale": 0.0001, "spatial_resolution": 10.0}]
    assert b8a["raster:bands"][0]["spatial_resolution"] == 20.0
    # eo v1.1 per asset.
    assert b02["eo:bands"][0]["common_name"] == "blue"
    assert b8a["eo:bands"][0] == stac.S2_BANDS_BY_NAME["B8A"].eo_band().to_dict()
    assert b02["roles"] == ["data", "reflectance"] and b02["type"] == stac.GEOTIFF
    assert Path(b02["href"]).is_absolute()

    # Footprint: WGS84, closed, counter-clockwise, and the bbox is the reprojected raster bounds.
    ring = d["geometry"]["coordinates"][0]
    assert d["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) == 5
    signed_area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in itertools.pairwise(ring)) / 2
    assert signed_area > 0
    expected = rasterio.warp.transform_bounds(UTM33, "EPSG:4326", 404400, 5342280, 404520, 5342400,
                                              densify_pts=21)
    assert d["bbox"] == pytest.approx(list(expected), abs=1e-9)
    assert 13.7 < d["bbox"][0] < d["bbox"][2] < 13.72 and 48.22 < d["bbox"][1] < d["bbox"][3] < 48.23


def test_file_metadata_used_when_spec_is_silent(tmp_path: Path) -> None:
    data = np.array([[-9999.0, 1.0], [3.0, np.nan]], dtype="float32")
    path = geotiff(tmp_path / "vv.tif", data, res=10, nodata=-9999.0)
    with rasterio.open(path, "r+") as ds:
        ds.scales, ds.offsets, ds.units = (2.0,), (1.0,), ("dB",)
    spec = stac.RasterAssetSpec("VV", path, polarizations=("VV",))
    item = stac.item_from_rasters("s1", [spec], datetime=WHEN, statistics=True)
    band = item.assets["VV"].to_dict()["raster:bands"][0]
    assert band["data_type"] == "float32" and band["nodata"] == -9999
    assert (band["scale"], band["offset"], band["unit"]) == (2.0, 1.0, "dB")
    # Statistics skip nodata and NaN.
    assert band["statistics"] == {"minimum": 1.0, "maximum": 3.0, "mean": 2.0, "stddev": 1.0,
                                  "valid_percent": 50.0}
    assert item.assets["VV"].to_dict()["sar:polarizations"] == ["VV"]
    assert stac.SAR_SCHEMA in item.stac_extensions and stac.EO_SCHEMA not in item.stac_extensions

    # The spec's product knowledge wins over the file.
    spec = stac.RasterAssetSpec("VV", path, scale=1e-4, offset=0.0, nodata=0, unit="1")
    band = stac.item_from_rasters("s1", [spec], datetime=WHEN).assets["VV"].to_dict()["raster:bands"][0]
    assert (band["scale"], band.get("offset"), band["nodata"], band["unit"]) == (1e-4, None, 0, "1")


def test_crs_without_epsg_code_goes_to_wkt2(tmp_path: Path) -> None:
    custom = CRS.from_proj4(
        "+proj=tmerc +lat_0=0 +lon_0=13.37 +k=0.9991 +x_0=123456 +y_0=0 +datum=WGS84 +units=m")
    path = geotiff(tmp_path / "a.tif", np.ones((4, 4), "uint8"), res=30, crs=custom, origin=(100000, 5300000))
    item = stac.item_from_rasters("x", [stac.RasterAssetSpec("a", path)], datetime=WHEN)
    assert item.properties["proj:code"] is None
    assert CRS.from_wkt(item.properties["proj:wkt2"]) == custom


def test_item_from_rasters_rejects_inconsistent_inputs(tmp_path: Path) -> None:
    a = geotiff(tmp_path / "a.tif", np.ones((4, 4), "uint16"), res=10)
    b = geotiff(tmp_path / "b.tif", np.ones((4, 4), "uint16"), res=10, crs=CRS.from_epsg(32632))
    with pytest.raises(stac.ConventionError, match="EPSG:32632"):
        stac.item_from_rasters("x", [stac.RasterAssetSpec("a", a), stac.RasterAssetSpec("b", b)],
                               datetime=WHEN)
    with pytest.raises(ValueError, match="timezone"):
        stac.item_from_rasters("x", [stac.RasterAssetSpec("a", a)], datetime=datetime(2020, 1, 1))
    two = (stac.S2_BANDS_BY_NAME["B02"], stac.S2_BANDS_BY_NAME["B03"])
    with pytest.raises(ValueError, match="1 bands"):
        stac.item_from_rasters("x", [stac.RasterAssetSpec("a", a, spectral_bands=two)], datetime=WHEN)
    with pytest.raises(ValueError):
        stac.item_from_rasters("x", [], datetime=WHEN)


def test_footprint_densify_keeps_bbox_enclosing() -> None:
    bounds = (300000.0, 4390200.0, 409800.0, 4500000.0)  # a whole Sentinel-2 tile
    geom0, bbox0 = stac.footprint(UTM33, bounds)
    geom8, bbox8 = stac.footprint(UTM33, bounds, densify=8)
    assert len(geom0["coordinates"][0]) == 5 and len(geom8["coordinates"][0]) == 4 * 9 + 1
    for geom, bbox in ((geom0, bbox0), (geom8, bbox8)):
        for lon, lat in geom["coordinates"][0]:
            assert bbox[0] <= lon <= bbox[2] and bbox[1] <= lat <= bbox[3]
    assert bbox0 == pytest.approx(bbox8, abs=1e-9)  # bbox is densified either way


# --------------------------------------------------------------------------------------------------
# Collections, writing, validation


def _small_catalog(root: Path, specs: list[stac.RasterAssetSpec]) -> pystac.Catalog:
    item_dir = root / "demo" / "patch"
    item_dir.mkdir(parents=True)
    moved = []
    for spec in specs:  # assets live inside the catalog folder
        target = item_dir / spec.path.name
        shutil.copy(spec.path, target)
        moved.append(stac.RasterAssetSpec(**{**spec.__dict__, "path": target}))
    item = stac.item_from_rasters("patch", moved, datetime=WHEN, statistics=True)
    labels = item_dir / "labels.json"
    labels.write_text('{"labels": ["Pastures"]}')
    stac.add_file_asset(item, "labels", labels)
    collection = stac.new_collection("demo", title="Demo", description="Two bands.", items=[item],
                                     license="CC-BY-4.0", summaries={"platform": ["sentinel-2a"]})
    catalog = pystac.Catalog("root", "Root catalog")
    catalog.add_child(collection)
    return catalog


def test_write_catalog_self_contained_and_core_valid_offline(
        tmp_path: Path, s2_like: list[stac.RasterAssetSpec], no_network: None) -> None:
    root = tmp_path / "cat.v1"  # a dot in the folder name must not confuse pystac
    catalog_json = stac.write_catalog(_small_catalog(root, s2_like), root)
    assert catalog_json == root.resolve() / "catalog.json"
    assert stac.validate_core(catalog_json) == 3

    item_json = root / "demo" / "patch" / "patch.json"
    doc = json.loads(item_json.read_text())
    assert {a["href"] for a in doc["assets"].values()} == {"./B02.tif", "./B8A.tif", "./labels.json"}
    assert all(not link["href"].startswith("/") for link in doc["links"])
    collection = json.loads((root / "demo" / "collection.json").read_text())
    assert collection["extent"]["spatial"]["bbox"] == [doc["bbox"]]
    assert collection["extent"]["temporal"]["interval"] == [["2017-06-13T10:10:31Z", "2017-06-13T10:10:31Z"]]
    assert set(collection["stac_extensions"]) == {stac.PROJECTION_SCHEMA, stac.RASTER_SCHEMA, stac.EO_SCHEMA}
    ia = collection["item_assets"]["B02"]
    assert "href" not in ia and "proj:transform" not in ia and "statistics" not in ia["raster:bands"][0]
    assert ia["eo:bands"][0]["common_name"] == "blue"

    # Relocatable: moved elsewhere, pystac still resolves every asset.
    moved = shutil.copytree(root, tmp_path / "elsewhere")
    reopened = pystac.Catalog.from_file(moved / "catalog.json")
    (item,) = list(reopened.get_items(recursive=True))
    for asset in item.assets.values():
        assert Path(asset.get_absolute_href()).is_file()
        assert Path(asset.get_absolute_href()).is_relative_to(moved)
    with rasterio.open(item.assets["B8A"].get_absolute_href()) as ds:
        assert list(ds.shape) == item.assets["B8A"].extra_fields["proj:shape"]


def test_write_catalog_refuses_assets_outside_the_folder(tmp_path: Path, s2_like) -> None:
    item = stac.item_from_rasters("patch", s2_like, datetime=WHEN)  # assets in tmp_path, not in out/
    catalog = pystac.Catalog("root", "Root")
    catalog.add_item(item)
    with pytest.raises(stac.ConventionError, match="outside the catalog folder"):
        stac.write_catalog(catalog, tmp_path / "out")


def test_validate_core_reports_invalid_documents(tmp_path: Path, s2_like, no_network: None) -> None:
    root = tmp_path / "cat"
    catalog_json = stac.write_catalog(_small_catalog(root, s2_like), root)
    item_json = root / "demo" / "patch" / "patch.json"
    doc = json.loads(item_json.read_text())
    doc["properties"]["datetime"] = "13 June 2017"
    item_json.write_text(json.dumps(doc))
    with pytest.raises(pystac.STACValidationError):
        stac.validate_core(catalog_json)
