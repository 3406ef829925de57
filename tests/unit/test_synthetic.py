"""Deterministic synthetic EO data (earthops_runtime.data.synthetic): determinism, catalogs that open and
read, class physics of the S1 ship/iceberg chips, spectra of the S2 land-cover scenes, the cache."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio

from earthops_runtime.cache import MARKER
from earthops_runtime.data import synthetic as sy
from earthops_runtime.stac import conventions as stac

pytestmark = pytest.mark.unit

S2_SIZE = 192  # a multiple of 6: 20 m and 60 m grids align exactly (96 and 32 px)
S2_CLOUDS = 0.15


# --------------------------------------------------------------------------------------------------
# Fixtures: small catalogs, generated once per module


@pytest.fixture(scope="module")
def s1_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sy.generate_s1_iceberg(tmp_path_factory.mktemp("s1"), count=12, seed=5)


@pytest.fixture(scope="module")
def s2_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sy.generate_s2_landcover(tmp_path_factory.mktemp("s2"), count=3, seed=2, size=S2_SIZE,
                                    cloud_fraction=S2_CLOUDS)


def items_of(catalog_json: Path) -> list[pystac.Item]:
    return sorted(pystac.Catalog.from_file(os.fspath(catalog_json)).get_items(recursive=True),
                  key=lambda it: it.id)


def read(item: pystac.Item, key: str) -> tuple[np.ndarray, rasterio.profiles.Profile, tuple]:
    with rasterio.open(item.assets[key].get_absolute_href()) as ds:
        return ds.read(), ds.profile, ds.descriptions


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def reflectance(dn: np.ndarray) -> np.ndarray:
    return dn.astype(np.float64) * stac.S2_L2A_SCALE + stac.S2_L2A_OFFSET_SINCE_PB0400


# --------------------------------------------------------------------------------------------------
# Determinism


def test_s1_same_seed_same_bytes_other_seed_other_data() -> None:
    for i in (0, 1, 7):
        hh, hv, truth = sy.s1_chip_arrays(11, i)
        hh2, hv2, truth2 = sy.s1_chip_arrays(11, i)
        assert hh.dtype == hv.dtype == np.float32 and hh.shape == (75, 75)
        assert hh.tobytes() == hh2.tobytes() and hv.tobytes() == hv2.tobytes() and truth == truth2
        other, _, _ = sy.s1_chip_arrays(12, i)
        assert not np.array_equal(hh, other)
    assert not np.array_equal(sy.s1_chip_arrays(11, 0)[0], sy.s1_chip_arrays(11, 1)[0])


def test_s2_same_seed_same_bytes_other_seed_other_data() -> None:
    a = sy.s2_scene_arrays(4, 1, size=120, cloud_fraction=0.2)
    b = sy.s2_scene_arrays(4, 1, size=120, cloud_fraction=0.2)
    assert set(a) == {*sy.S2_BAND_NAMES, "labels", "clouds"}
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key
    c = sy.s2_scene_arrays(5, 1, size=120, cloud_fraction=0.2)
    assert not np.array_equal(a["B04"], c["B04"]) and not np.array_equal(a["labels"], c["labels"])


def test_generation_is_reproducible_file_for_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same seed: every file (GeoTIFFs, COGs, STAC JSON with relative hrefs) byte-identical, whatever
    the number of threads; the chips of a smaller count are the first chips of a larger one."""
    s1a = sy.generate_s1_iceberg(tmp_path / "a", count=4, seed=3).parent
    s1b = sy.generate_s1_iceberg(tmp_path / "b", count=4, seed=3).parent
    assert tree_digest(s1a) == tree_digest(s1b)
    s1c = sy.generate_s1_iceberg(tmp_path / "c", count=6, seed=3).parent
    rasters = {k: v for k, v in tree_digest(s1a).items() if k.endswith(".tif")}
    assert len(rasters) == 4 and rasters.items() <= tree_digest(s1c).items()

    s2a = sy.generate_s2_landcover(tmp_path / "d", count=2, seed=3, size=60, cloud_fraction=0.1).parent
    monkeypatch.setattr(sy, "_workers", lambda: 1)
    s2b = sy.generate_s2_landcover(tmp_path / "e", count=2, seed=3, size=60, cloud_fraction=0.1).parent
    assert tree_digest(s2a) == tree_digest(s2b)


def test_written_rasters_are_the_generated_arrays(s2_catalog: Path) -> None:
    item = items_of(s2_catalog)[1]
    expected = sy.s2_scene_arrays(2, 1, size=S2_SIZE, cloud_fraction=S2_CLOUDS)
    for key, array in expected.items():
        data, _, _ = read(item, key)
        assert np.array_equal(data[0], array), key


# --------------------------------------------------------------------------------------------------
# Sentinel-1 ship vs iceberg


def test_s1_catalog_opens_and_every_asset_reads(s1_catalog: Path) -> None:
    assert stac.validate_core(s1_catalog) == 1 + 1 + 12
    root = pystac.Catalog.from_file(os.fspath(s1_catalog))
    (collection,) = root.get_children()
    assert collection.id == sy.S1_COLLECTION == "synthetic-s1-iceberg"
    summaries = collection.summaries.to_dict()
    assert summaries[sy.CLASSES_PROPERTY] == list(sy.S1_CLASSES) == ["ship", "iceberg"]
    assert summaries["sar:polarizations"] == ["HH", "HV"]
    items = items_of(s1_catalog)
    assert len(items) == 12
    footprints = []
    for item in items:
        assert set(item.stac_extensions) == {stac.PROJECTION_SCHEMA, stac.SAR_SCHEMA, stac.RASTER_SCHEMA}
        p = item.properties
        assert p["sar:polarizations"] == ["HH", "HV"] and p["sar:frequency_band"] == "C"
        assert p["sar:instrument_mode"] == "EW" and p["constellation"] == "sentinel-1"
        assert p["is_iceberg"] in (0, 1)
        assert 30.0 <= p["sar:incidence_angle"] <= 46.0 and p["incidence_angle"] == p["sar:incidence_angle"]
        assert item.datetime is not None and item.datetime.tzinfo is not None
        asset = item.assets["backscatter"]
        assert asset.extra_fields["sar:polarizations"] == ["HH", "HV"]
        assert [b["name"] for b in asset.extra_fields["bands"]] == ["HH", "HV"]  # file order
        bands = asset.extra_fields["raster:bands"]
        assert [b["unit"] for b in bands] == ["dB", "dB"] and all(b["nodata"] == "nan" for b in bands)
        data, profile, descriptions = read(item, "backscatter")
        assert descriptions == ("HH", "HV")
        assert data.shape == (2, 75, 75) and data.dtype == np.float32 and np.isnan(profile["nodata"])
        assert profile["crs"].to_string() == p["proj:code"] == "EPSG:32622"
        assert list(data.shape[1:]) == asset.extra_fields["proj:shape"]
        assert profile["transform"].a == 10.0 and profile["transform"].e == -10.0
        assert np.isfinite(data).all() and -60 < data.min() and data.max() < 30
        # Off Newfoundland / Labrador, at sea.
        west, south, east, north = item.bbox
        assert -53.0 < west < east < -48.0 and 45.5 < south < north < 53.5
        footprints.append(p["proj:bbox"])
    for i, a in enumerate(footprints):  # no two chips overlap
        for b in footprints[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
    labels = [it.properties["is_iceberg"] for it in items]
    assert sum(labels) == 6  # chips come in ship/iceberg pairs


def _chip_features(seed: int, n: int) -> dict[int, np.ndarray]:
    rows: dict[int, list[tuple[float, ...]]] = {0: [], 1: []}
    for i in range(n):
        hh, hv, truth = sy.s1_chip_arrays(seed, i)
        sea_hh, sea_hv = float(np.median(hh)), float(np.median(hv))
        peak = np.unravel_index(np.argmax(hh), hh.shape)
        bright = int(np.count_nonzero(hh > sea_hh + 6.0))
        rows[truth["is_iceberg"]].append(
            (float(hh.max()), float(hv[peak] - hh[peak]), bright, sea_hh, sea_hv, truth["incidence_angle"]))
    return {k: np.array(v) for k, v in rows.items()}


def test_s1_calibrated_to_the_statoil_c_core_chips() -> None:
    """The calibration docs/datasets.md describes ("The ship/iceberg task"): the real chips' backscatter
    levels and incidence angles, classes that differ on average but overlap on every hand-made feature,
    and the share of small, occluded and edge-cut targets that keeps a CNN well below 100 %."""
    f = _chip_features(seed=8, n=240)
    ships, bergs = f[0], f[1]
    assert len(ships) == len(bergs) == 120
    # Ships: higher HV/HH at the peak; icebergs: more bright pixels (larger) ...
    assert ships[:, 1].mean() > bergs[:, 1].mean() + 1.5
    assert bergs[:, 2].mean() > ships[:, 2].mean()
    assert ships[:, 0].mean() > bergs[:, 0].mean()
    # ... but no feature separates them: a tenth of each class lies past the other's median
    for k in range(3):
        assert np.percentile(ships[:, k], 90) > np.median(bergs[:, k]), k
        assert np.percentile(bergs[:, k], 90) > np.median(ships[:, k]), k
    # Sea clutter: HH falling with incidence, HV about 6 dB below (near the EW noise floor);
    # incidence 24.7-45.9 deg, mean about 39 (the real chips': 39.3)
    sea = np.concatenate([ships, bergs])
    assert -24.0 < sea[:, 3].mean() < -18.0
    assert 4.5 < (sea[:, 3] - sea[:, 4]).mean() < 7.5
    assert np.corrcoef(sea[:, 5], sea[:, 3])[0, 1] < -0.5
    assert (sea[:, 5] >= 24.7).all() and (sea[:, 5] <= 45.9).all() and 37.5 < sea[:, 5].mean() < 41.0
    # chip means like the real ones' (HH about -20.6 dB, HV about -26.3 dB)
    chips = [sy.s1_chip_arrays(8, i) for i in range(240)]
    hh, hv = np.mean([c[0].mean() for c in chips]), np.mean([c[1].mean() for c in chips])
    assert -23.0 < hh < -18.5 and -29.0 < hv < -24.5
    # what makes it hard, in the shares the generator's constants say
    truth = [c[2] for c in chips]
    for flag, share in (("small", sy._S1_SMALL_TARGET), ("occluded", sy._S1_ICE_CLUTTER),
                        ("edge_cut", sy._S1_EDGE_CUT)):
        assert abs(np.mean([t[flag] for t in truth]) - share) < 0.07, flag


# --------------------------------------------------------------------------------------------------
# Sentinel-2 land cover


def test_s2_catalog_opens_and_every_asset_reads(s2_catalog: Path) -> None:
    assert stac.validate_core(s2_catalog) == 1 + 1 + 3
    root = pystac.Catalog.from_file(os.fspath(s2_catalog))
    (collection,) = root.get_children()
    assert collection.id == sy.S2_COLLECTION == "synthetic-s2-landcover"
    summaries = collection.summaries.to_dict()
    assert summaries[sy.CLASSES_PROPERTY] == list(sy.S2_CLASSES) and len(sy.S2_CLASSES) == 6
    assert [b["name"] for b in summaries["eo:bands"]] == list(stac.S2_L2A_BAND_NAMES)
    items = items_of(s2_catalog)
    assert len({it.properties["earthops:place"] for it in items}) == 3  # each scene its own place
    assert len({tuple(it.bbox) for it in items}) == 3
    for item in items:
        p = item.properties
        assert set(item.stac_extensions) == {stac.PROJECTION_SCHEMA, stac.RASTER_SCHEMA, stac.EO_SCHEMA}
        assert p["s2:processing_baseline"] == "05.10" and p["constellation"] == "sentinel-2"
        assert p["proj:code"].startswith("EPSG:326")
        assert set(item.assets) == {*stac.S2_L2A_BAND_NAMES, "labels", "clouds"}
        for key, asset in item.assets.items():
            data, profile, _ = read(item, key)
            fields = asset.extra_fields
            assert profile["crs"].to_string() == p["proj:code"]
            assert list(data.shape[1:]) == fields["proj:shape"]
            assert list(profile["transform"])[:6] == fields["proj:transform"]
            (rb,) = fields["raster:bands"]
            assert rb["data_type"] == str(data.dtype)
            if key in stac.S2_BANDS_BY_NAME:
                band = stac.S2_BANDS_BY_NAME[key]
                assert asset.media_type == str(pystac.MediaType.COG)
                assert data.dtype == np.uint16 and profile["nodata"] == 0
                assert rb["scale"] == 0.0001 and rb["offset"] == -0.1 and rb["nodata"] == 0
                assert fields["eo:bands"][0]["common_name"] == band.common_name
                # Native resolution: 10 m -> size, 20 m -> size/2, 60 m -> size/6.
                assert profile["transform"].a == band.resolution == rb["spatial_resolution"]
                assert data.shape[1:] == (S2_SIZE * 10 // band.resolution,) * 2
        labels = read(item, "labels")[0][0]
        assert set(np.unique(labels)) <= {*range(len(sy.S2_CLASSES)), sy.LABELS_NODATA}
        assert read(item, "labels")[1]["nodata"] == 255
        clouds = read(item, "clouds")[0][0]
        assert set(np.unique(clouds)) <= {0, 1}
        assert p["eo:cloud_cover"] == pytest.approx(100 * S2_CLOUDS, abs=4.0)


def test_s2_band_resolutions_for_sizes_not_divisible_by_six() -> None:
    arrays = sy.s2_scene_arrays(0, 0, size=100)
    shapes = {k: v.shape for k, v in arrays.items()}
    assert shapes["B02"] == shapes["labels"] == (100, 100)
    assert shapes["B05"] == shapes["B12"] == (50, 50)
    assert shapes["B01"] == shapes["B09"] == (17, 17)  # 100 / 6 rounded
    assert "clouds" not in arrays


def test_s2_nodata_border_consistent_across_bands(s2_catalog: Path) -> None:
    items = items_of(s2_catalog)
    bordered = [it for it in items if it.properties["earthops:nodata_border"]]
    assert [it.id for it in bordered] == [items[1].id]  # scenes 1, 4, 7, ...
    for item in items:
        labels = read(item, "labels")[0][0]
        outside = labels == sy.LABELS_NODATA
        assert outside.any() == (item in bordered)
        if item in bordered:
            assert 0.01 < outside.mean() < 0.2  # a strip, not the whole scene
        for key in stac.S2_L2A_BAND_NAMES:
            dn = read(item, key)[0][0]
            if dn.shape == labels.shape:  # 10 m: nodata exactly where the labels say so
                assert np.array_equal(dn == 0, outside), key
            else:
                assert (dn == 0).any() == outside.any(), key


def test_s2_class_spectra_are_physically_plausible() -> None:
    # Two cloud-free scenes that hold every class between them (flanders, andalusia).
    per_class: dict[int, list[np.ndarray]] = {c: [] for c in range(len(sy.S2_CLASSES))}
    for seed, j in ((0, 7), (1, 2)):
        a = sy.s2_scene_arrays(seed, j, size=300)
        labels = a["labels"]
        ten = {b: reflectance(a[b]) for b in ("B02", "B03", "B04", "B08")}
        twenty = {b: reflectance(np.repeat(np.repeat(a[b], 2, 0), 2, 1)) for b in ("B05", "B07", "B11")}
        stack = np.stack([ten["B02"], ten["B03"], ten["B04"], twenty["B05"], twenty["B07"], ten["B08"],
                          twenty["B11"]])
        for c, found in per_class.items():
            # Away from class edges: the 20 m bands mix neighbours there.
            inner = (labels == c) & (np.roll(labels, 1, 0) == c) & (np.roll(labels, -1, 0) == c) & \
                    (np.roll(labels, 1, 1) == c) & (np.roll(labels, -1, 1) == c)
            found.append(stack[:, inner])
    pixels = {sy.S2_CLASSES[c]: np.concatenate(v, axis=1) for c, v in per_class.items()}
    assert min(v.shape[1] for v in pixels.values()) > 1000
    mean = {k: v.mean(axis=1) for k, v in pixels.items()}
    red, re1, re3, nir, swir = range(2, 7)  # after blue, green
    ndvi = {k: (v[nir] - v[red]) / (v[nir] + v[red]) for k, v in mean.items()}
    assert ndvi["forest"] > ndvi["grassland"] > ndvi["urban"] > ndvi["water"]
    assert ndvi["water"] < 0 < ndvi["urban"] < 0.3 and ndvi["forest"] > 0.7
    assert mean["water"][nir] < 0.1 and mean["water"][swir] < 0.05
    assert mean["forest"][re3] > 2 * mean["forest"][re1]  # red edge
    assert mean["bare_soil"][swir] > mean["bare_soil"][nir] > mean["bare_soil"][red]  # bright SWIR
    urban = mean["urban"]
    assert urban.max() - urban.min() < 0.1  # flat
    for name, m in mean.items():
        assert (m > -0.01).all() and (m < 0.7).all(), name


def test_s2_clouds_brighten_every_band() -> None:
    a = sy.s2_scene_arrays(0, 4, size=300, cloud_fraction=0.3)  # wielkopolska: mostly forest
    clouds = a["clouds"].astype(bool)
    assert 0.25 < clouds.mean() < 0.35
    forest = a["labels"] == sy.S2_CLASSES.index("forest")
    assert (forest & clouds).sum() > 1000 and (forest & ~clouds).sum() > 1000
    for band in ("B02", "B04", "B08", "B03"):
        dn = a[band].astype(float)
        assert dn[forest & clouds].mean() > dn[forest & ~clouds].mean() + 500, band


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="count"):
        sy.generate_s1_iceberg(tmp_path, count=0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        sy.generate_s2_landcover(tmp_path, count=1, seed=-1)
    with pytest.raises(ValueError, match="cloud_fraction"):
        sy.generate_s2_landcover(tmp_path, count=1, seed=0, cloud_fraction=1.5)
    with pytest.raises(ValueError, match="unknown synthetic sample set"):
        sy.synthetic_catalog("synthetic-s3", count=1, seed=0, cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------------
# Cache


def test_cache_generates_once_and_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    generate = sy._GENERATORS[sy.S1_COLLECTION]

    def counting(tree: Path, count: int, seed: int) -> Path:
        calls.append((count, seed))
        return generate(tree, count, seed)

    monkeypatch.setitem(sy._GENERATORS, sy.S1_COLLECTION, counting)
    first = sy.synthetic_catalog("synthetic-s1-iceberg", count=4, seed=9, cache_dir=tmp_path)
    assert first == tmp_path / f"synthetic-s1-iceberg-n4-s9-v{sy.GENERATOR_VERSION}" / "catalog.json" and first.is_file()
    mtimes = {p: p.stat().st_mtime_ns for p in first.parent.rglob("*")}
    marker = json.loads((first.parent / MARKER).read_text())
    assert (marker["count"], marker["seed"]) == (4, 9)
    assert marker["generator_version"] == sy.GENERATOR_VERSION
    assert len(items_of(first)) == 4

    again = sy.synthetic_catalog("synthetic-s1-iceberg", count=4, seed=9, cache_dir=tmp_path)
    assert again == first and calls == [(4, 9)]
    assert {p: p.stat().st_mtime_ns for p in first.parent.rglob("*")} == mtimes
    # Another seed or count is another entry.
    other = sy.synthetic_catalog("synthetic-s1-iceberg", count=2, seed=9, cache_dir=tmp_path)
    assert other.parent.name == f"synthetic-s1-iceberg-n2-s9-v{sy.GENERATOR_VERSION}" and calls == [(4, 9), (2, 9)]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_cache_s2_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sy, "S2_SCENE_SIZE", 60)  # the generator reads it at call time; keeps this fast
    path = sy.synthetic_catalog("synthetic-s2-landcover", count=1, seed=0, cache_dir=tmp_path)
    (item,) = items_of(path)
    assert "clouds" in item.assets and item.assets["B02"].extra_fields["proj:shape"] == [60, 60]
    assert sy.synthetic_catalog("synthetic-s2-landcover", count=1, seed=0, cache_dir=tmp_path) == path


def test_cache_ignores_and_cleans_partial_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = sy.cache_entry_name("synthetic-s1-iceberg", count=2, seed=1)
    # A build killed half-way: its temporary folder, with a catalog.json and no marker.
    stale = tmp_path / f".{name}.tmp-deadbeef0000" / name
    stale.mkdir(parents=True)
    (stale / "catalog.json").write_text("{}")
    # A failing build leaves nothing behind, neither an entry nor a temporary folder.
    def broken(tree: Path, count: int, seed: int) -> Path:
        (tree / "catalog.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setitem(sy._GENERATORS, sy.S1_COLLECTION, broken)
    with pytest.raises(RuntimeError, match="disk full"):
        sy.synthetic_catalog("synthetic-s1-iceberg", count=2, seed=1, cache_dir=tmp_path)
    assert not (tmp_path / name).exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    monkeypatch.undo()

    path = sy.synthetic_catalog("synthetic-s1-iceberg", count=2, seed=1, cache_dir=tmp_path)
    assert path.parent == tmp_path / name and len(items_of(path)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, f".{name}.lock"])


def test_cache_rebuilds_an_entry_that_fails_its_check(tmp_path: Path) -> None:
    path = sy.synthetic_catalog("synthetic-s1-iceberg", count=2, seed=4, cache_dir=tmp_path)
    tif = next(path.parent.rglob("*.tif"))
    good = tif.read_bytes()
    tif.write_bytes(good[: len(good) // 2])  # truncated by a crash or a partial copy
    again = sy.synthetic_catalog("synthetic-s1-iceberg", count=2, seed=4, cache_dir=tmp_path)
    assert again == path and tif.read_bytes() == good
    # An entry without a marker (e.g. a folder copied in by hand) is not trusted either.
    (path.parent / MARKER).unlink()
    assert sy.synthetic_catalog("synthetic-s1-iceberg", count=2, seed=4, cache_dir=tmp_path) == path
    assert (path.parent / MARKER).is_file()


def test_default_cache_dir_follows_earthops_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EARTHOPS_CACHE", os.fspath(tmp_path))
    path = sy.synthetic_catalog("synthetic-s1-iceberg", count=2, seed=0)
    assert path == tmp_path / "samples" / f"synthetic-s1-iceberg-n2-s0-v{sy.GENERATOR_VERSION}" / "catalog.json"
    assert len(items_of(path)) == 2
