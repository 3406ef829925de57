"""Real sample imagery: BigEarthNet example patches fetched from PyPI, and their STAC catalog.

Needs ``-p tests.infra.pytest_samples`` (the ``bigearthnet`` session fixture, from the user's cache).
Tests of the cache mechanics use their own temporary cache folders; the ones that must download again
(first fetch, rebuild of a corrupt entry, a killed fetch) skip locally / fail in CI without the index.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sys
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pystac
import pytest
import rasterio
import rasterio.warp
from rasterio.crs import CRS

from earthops_runtime import samples
from earthops_runtime.cache import MARKER
from earthops_runtime.stac import conventions as stac
from tests.infra import proc

pytestmark = pytest.mark.integration

S2_SHAPE_AT = {10: (120, 120), 20: (60, 60), 60: (20, 20)}
REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------------
# Helpers


def _labels(path: Path) -> dict:
    return json.loads(path.read_text())


def _acquired(labels: dict) -> datetime:
    if "acquisition_date" in labels:  # Sentinel-2 patches
        return datetime.strptime(labels["acquisition_date"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    return datetime.strptime(labels["acquisition_time"], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)


def _fetch_or_unavailable(cache: Path) -> Path:
    try:
        return samples.fetch_bigearthnet(cache)
    except samples.SampleFetchError as exc:
        proc.unavailable(f"BigEarthNet sample patches: {exc}")
        raise


def _block_pip(m: pytest.MonkeyPatch, tmp: Path) -> None:
    """Any `pip download` from now on fails: no index, an empty find-links folder, no config file."""
    empty = tmp / "no-wheels"
    empty.mkdir(exist_ok=True)
    m.setenv("PIP_CONFIG_FILE", os.devnull)
    m.setenv("PIP_NO_INDEX", "1")
    m.setenv("PIP_FIND_LINKS", os.fspath(empty))


@pytest.fixture
def pip_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _block_pip(monkeypatch, tmp_path)


def _entry_state(entry: Path) -> tuple[int, int]:
    """(inode of the folder, mtime_ns of its marker): both change when an entry is rebuilt."""
    return entry.stat().st_ino, (entry / MARKER).stat().st_mtime_ns


def _tmp_leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.glob(".*.tmp-*"))


# --------------------------------------------------------------------------------------------------
# The data


def test_fetch_gives_six_s2_and_six_s1_patches(bigearthnet) -> None:
    data = bigearthnet.data_dir
    s2, s1 = samples.s2_patches(data), samples.s1_patches(data)
    assert len(s2) == 6 and len(s1) == 6
    for patch in s2:
        assert patch.name.startswith(("S2A_MSIL2A_", "S2B_MSIL2A_"))
        expected = {f"{patch.name}_{b}.tif" for b in samples.S2_BAND_NAMES}
        expected.add(f"{patch.name}_labels_metadata.json")
        assert {p.name for p in patch.iterdir()} == expected
        assert len(samples.S2_BAND_NAMES) == 12 and "B10" not in samples.S2_BAND_NAMES
    s2_names = {p.name for p in s2}
    for patch in s1:
        assert patch.name.startswith("S1A_IW_GRDH_1SDV_")
        assert {p.name for p in patch.iterdir()} == {
            f"{patch.name}_VV.tif", f"{patch.name}_VH.tif", f"{patch.name}_labels_metadata.json"}
        labels = _labels(patch / f"{patch.name}_labels_metadata.json")
        assert labels["corresponding_s2_patch"] in s2_names  # the two sets pair up one to one
        assert labels["labels"]
    marker = json.loads((data / MARKER).read_text())
    assert marker["package"] == "bigearthnet-common==2.8.0" and len(marker["files"]) == 6 * 13 + 6 * 3
    assert data.name == "bigearthnet-common-2.8.0"


def test_acquisition_time_parses_both_label_formats() -> None:
    assert samples.acquisition_time({"acquisition_date": "2017-09-24 09:30:20"}) == datetime(
        2017, 9, 24, 9, 30, 20, tzinfo=UTC)
    assert samples.acquisition_time({"acquisition_time": "2017-06-13T16:50:43"}) == datetime(
        2017, 6, 13, 16, 50, 43, tzinfo=UTC)
    with pytest.raises(ValueError):
        samples.acquisition_time({})


# --------------------------------------------------------------------------------------------------
# The catalog


def test_catalog_opens_with_pystac(bigearthnet) -> None:
    catalog = pystac.Catalog.from_file(bigearthnet.catalog)
    assert catalog.id == samples.CATALOG_ID and catalog.STAC_OBJECT_TYPE == pystac.STACObjectType.CATALOG
    collections = {c.id: c for c in catalog.get_collections()}
    assert set(collections) == {samples.S2_COLLECTION, samples.S1_COLLECTION}
    s2, s1 = collections[samples.S2_COLLECTION], collections[samples.S1_COLLECTION]
    s2_items, s1_items = list(s2.get_items()), list(s1.get_items())
    data = bigearthnet.data_dir
    assert sorted(i.id for i in s2_items) == [p.name for p in samples.s2_patches(data)]
    assert sorted(i.id for i in s1_items) == [p.name for p in samples.s1_patches(data)]

    assert set(s2.stac_extensions) == {stac.PROJECTION_SCHEMA, stac.EO_SCHEMA, stac.RASTER_SCHEMA}
    assert set(s1.stac_extensions) == {stac.PROJECTION_SCHEMA, stac.SAR_SCHEMA, stac.RASTER_SCHEMA}
    assert s2.license == s1.license == "CDLA-Permissive-1.0"
    assert set(s2.item_assets) == {*samples.S2_BAND_NAMES, "labels_metadata"}
    assert set(s1.item_assets) == {"VV", "VH", "labels_metadata"}
    for collection, items in ((s2, s2_items), (s1, s1_items)):
        (bbox,) = collection.extent.spatial.bboxes
        for i in items:
            assert bbox[0] <= i.bbox[0] and bbox[1] <= i.bbox[1]
            assert i.bbox[2] <= bbox[2] and i.bbox[3] <= bbox[3]
        ((start, end),) = collection.extent.temporal.intervals
        assert start == min(i.datetime for i in items) and end == max(i.datetime for i in items)
        assert set(collection.summaries.get_list(samples.LABELS_PROPERTY)) == {
            lab for i in items for lab in i.properties[samples.LABELS_PROPERTY]}

    for item in s2_items + s1_items:
        sensor_dir = samples.S2_DIR if item.collection_id == samples.S2_COLLECTION else samples.S1_DIR
        labels = _labels(data / sensor_dir / item.id / f"{item.id}_labels_metadata.json")
        assert item.datetime == _acquired(labels)
        assert item.properties[samples.LABELS_PROPERTY] == labels["labels"]
        assert item.properties["proj:code"].startswith("EPSG:326")  # UTM north
        assert "proj:epsg" not in item.properties
        assert item.properties["constellation"] in {"sentinel-1", "sentinel-2"}
    for item in s2_items:
        assert set(item.stac_extensions) == {stac.PROJECTION_SCHEMA, stac.EO_SCHEMA, stac.RASTER_SCHEMA}
        assert item.properties["platform"] in {"sentinel-2a", "sentinel-2b"}
        assert item.properties["instruments"] == ["msi"]
    for item in s1_items:
        assert set(item.stac_extensions) == {stac.PROJECTION_SCHEMA, stac.SAR_SCHEMA, stac.RASTER_SCHEMA}
        p = item.properties
        assert (p["sar:instrument_mode"], p["sar:frequency_band"]) == ("IW", "C")
        assert p["sar:product_type"] == "GRD"
        assert p["sar:polarizations"] == ["VV", "VH"] and p["sar:center_frequency"] == pytest.approx(5.405)


def test_s1_and_s2_items_link_to_each_other(bigearthnet) -> None:
    catalog = pystac.Catalog.from_file(bigearthnet.catalog)
    items = {i.id: i for i in catalog.get_items(recursive=True)}
    s1_items = [i for i in items.values() if i.collection_id == samples.S1_COLLECTION]
    for s1 in s1_items:
        (link,) = s1.get_links("related")
        partner = link.resolve_stac_object().target
        assert partner.id == s1.properties["bigearthnet:s2_patch"]
        assert partner.collection_id == samples.S2_COLLECTION
        assert [lk.resolve_stac_object().target.id for lk in partner.get_links("related")] == [s1.id]
        # The same ground: identical UTM patch bounds.
        assert partner.properties["proj:bbox"] == s1.properties["proj:bbox"]


def test_catalog_core_schema_valid_offline(bigearthnet, no_network) -> None:
    # Extension schemas (projection, eo, raster, sar) are only published on the web, and this machine
    # has no internet, so only the core STAC 1.1 schemas bundled with pystac are validated here. The
    # extension fields are checked field by field by the other tests.
    assert stac.validate_core(bigearthnet.catalog) == 1 + 2 + 12
    for path, doc in stac.iter_stac_files(bigearthnet.catalog):
        assert doc["stac_version"] == "1.1.0"
        for link in doc["links"]:
            assert "://" not in link["href"] and not link["href"].startswith("/"), (path, link)


def test_every_asset_resolves_and_matches_its_raster(bigearthnet) -> None:
    catalog = pystac.Catalog.from_file(bigearthnet.catalog)
    root = bigearthnet.catalog.parent.resolve()
    n_rasters = 0
    for item in catalog.get_items(recursive=True):
        item_dir = Path(item.get_self_href()).parent.resolve()
        crs = CRS.from_string(item.properties["proj:code"])
        for key, asset in item.assets.items():
            assert asset.href.startswith("./") and "/" not in asset.href[2:], asset.href  # beside the item
            path = Path(asset.get_absolute_href())
            assert path.is_file() and path.resolve().parent == item_dir
            assert path.resolve().is_relative_to(root)
            if key == "labels_metadata":
                assert asset.media_type == pystac.MediaType.JSON and asset.roles == ["metadata"]
                assert json.loads(path.read_text())["labels"] == item.properties[samples.LABELS_PROPERTY]
                continue
            d = asset.to_dict()
            (band,) = d["raster:bands"]
            with rasterio.open(path) as ds:
                n_rasters += 1
                assert ds.crs == crs
                assert list(ds.shape) == d["proj:shape"]
                assert list(ds.transform)[:6] == pytest.approx(d["proj:transform"])
                assert ds.dtypes[0] == band["data_type"] and ds.count == 1
                assert abs(ds.res[0]) == band["spatial_resolution"]
                values = ds.read(1)
                assert float(values.min()) == band["statistics"]["minimum"]
                assert float(values.max()) == band["statistics"]["maximum"]
                # The WGS84 bbox holds the raster's centre.
                b = ds.bounds
                (lon,), (lat,) = rasterio.warp.transform(ds.crs, "EPSG:4326", [(b.left + b.right) / 2],
                                                         [(b.bottom + b.top) / 2])
                assert item.bbox[0] < lon < item.bbox[2] and item.bbox[1] < lat < item.bbox[3]
            if item.collection_id == samples.S2_COLLECTION:
                spec = stac.S2_BANDS_BY_NAME[key]
                assert tuple(d["proj:shape"]) == S2_SHAPE_AT[int(spec.resolution)]
                assert band["data_type"] == "uint16" and band["scale"] == 0.0001 and band["nodata"] == 0
                assert band["spatial_resolution"] == spec.resolution
                assert d["eo:bands"] == [spec.eo_band().to_dict()]
                assert asset.roles == ["data", "reflectance"]
            else:
                assert key in {"VV", "VH"} and d["sar:polarizations"] == [key]
                assert tuple(d["proj:shape"]) == (120, 120)
                assert band["data_type"] == "float32" and band["unit"] == "dB"
                assert band["spatial_resolution"] == 10
        # BigEarthNet covers ten European countries.
        assert -11 < item.bbox[0] < item.bbox[2] < 32 and 35 < item.bbox[1] < item.bbox[3] < 71
    assert n_rasters == 6 * 12 + 6 * 2


def test_catalog_is_relocatable(bigearthnet, tmp_path: Path) -> None:
    moved = shutil.copytree(bigearthnet.catalog.parent, tmp_path / "copy")
    catalog = pystac.Catalog.from_file(moved / "catalog.json")
    items = list(catalog.get_items(recursive=True))
    assert len(items) == 12
    for item in items:
        for asset in item.assets.values():
            assert Path(asset.get_absolute_href()).is_relative_to(moved)
            assert Path(asset.get_absolute_href()).is_file()


# --------------------------------------------------------------------------------------------------
# Cache mechanics


def test_fetch_then_cache_hit_then_rebuild_of_corrupt_entries(tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    entry = cache / "bigearthnet-common-2.8.0"
    t0 = time.monotonic()
    data = _fetch_or_unavailable(cache)
    first = time.monotonic() - t0
    assert data == entry and _tmp_leftovers(cache) == []
    state = _entry_state(entry)

    with monkeypatch.context() as m:
        _block_pip(m, tmp_path)
        # Cache hit: pip cannot download anything now, yet the call succeeds, fast, entry untouched.
        t0 = time.monotonic()
        assert samples.fetch_bigearthnet(cache) == entry
        cached = time.monotonic() - t0
        assert _entry_state(entry) == state
        print(f"\nfirst fetch {first:.2f} s, cache hit {cached * 1000:.1f} ms")

        # A corrupt entry is not trusted: offline, the rebuild fails with pip's message and leaves
        # nothing half-made behind.
        victim = next(entry.glob(f"{samples.S2_DIR}/*/*_B04.tif"))
        with open(victim, "r+b") as fh:
            fh.truncate(100)
        with pytest.raises(samples.SampleFetchError, match="pip said"):
            samples.fetch_bigearthnet(cache)
        assert _tmp_leftovers(cache) == [] and victim.stat().st_size == 100

    # With the index it replaces the entry.
    assert _fetch_or_unavailable(cache) == entry
    assert victim.stat().st_size == 29192 and _entry_state(entry) != state
    with rasterio.open(victim) as ds:
        assert ds.shape == (120, 120)

    # A folder without its marker (copied in by hand, or an older layout) is rebuilt too.
    (entry / MARKER).unlink()
    (entry / samples.S1_DIR).rename(entry / "moved-away")
    assert _fetch_or_unavailable(cache) == entry
    assert (entry / samples.S1_DIR).is_dir() and not (entry / "moved-away").exists()
    assert (entry / MARKER).is_file() and _tmp_leftovers(cache) == []


def test_killed_fetch_leaves_no_half_entry(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    entry = cache / "bigearthnet-common-2.8.0"
    pythonpath = os.pathsep.join([os.fspath(REPO / "runtimes"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": pythonpath}
    # Fault injection: the child's build stops just before the rename that publishes the entry (says so
    # in a file, then waits), so the kill lands mid-build every time instead of racing a fast build.
    ready = tmp_path / "about-to-publish"
    code = ("import os, sys, time; from pathlib import Path; import earthops_runtime.cache as c\n"
            "real = os.rename\n"
            "def rename(src, dst):\n"
            "    if '.tmp-' in str(src) and '.tmp-' not in str(dst):\n"
            "        Path(sys.argv[2]).write_text(str(dst)); time.sleep(3600)\n"
            "    real(src, dst)\n"
            "c.os.rename = rename\n"
            "from earthops_runtime.samples import fetch_bigearthnet\n"
            "fetch_bigearthnet(Path(sys.argv[1]))\n")
    child = proc.spawn([sys.executable, "-c", code, cache, ready], log_path=tmp_path / "fetch.log", env=env)
    try:
        proc.wait_for(lambda: ready.exists() or child.poll() is not None, timeout=300,
                      what="the fetch to reach its publishing rename")
        assert child.poll() is None, f"the fetch ended (code {child.returncode}) before publishing:\n" + \
            proc.log_tail(tmp_path / "fetch.log")
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        proc.stop(child)
    assert not entry.exists(), "a build killed before its rename published nothing"
    assert _tmp_leftovers(cache), "a killed build leaves its temporary folder behind"

    assert _fetch_or_unavailable(cache) == entry
    assert samples._valid(entry, samples._DATA_KIND) and _tmp_leftovers(cache) == []


def test_fetch_reports_pip_error_when_index_unreachable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{proc.free_port()}/simple/")
    monkeypatch.setenv("PIP_FIND_LINKS", os.fspath(tmp_path / "no-wheels"))
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "5")
    (tmp_path / "no-wheels").mkdir()
    cache = tmp_path / "cache"
    with pytest.raises(samples.SampleFetchError) as info:
        samples.fetch_bigearthnet(cache)
    message = str(info.value)
    assert "pip download --no-deps bigearthnet-common==2.8.0" in message
    assert "pip said:" in message
    assert "No matching distribution found for bigearthnet-common==2.8.0" in message
    assert not (cache / "bigearthnet-common-2.8.0").exists() and _tmp_leftovers(cache) == []


def test_catalog_cache_hit_and_rebuild(bigearthnet, tmp_path: Path, pip_offline, no_network) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(bigearthnet.data_dir, cache / bigearthnet.data_dir.name)  # a valid data entry: no pip
    (cache / ".bigearthnet-common-2.8.0-stac.tmp-deadbeef0000" / "half").mkdir(parents=True)  # killed run

    t0 = time.monotonic()
    catalog = samples.bigearthnet_catalog(cache)
    built = time.monotonic() - t0
    entry = catalog.parent
    assert catalog == cache / "bigearthnet-common-2.8.0-stac" / "catalog.json" and catalog.is_file()
    assert _tmp_leftovers(cache) == []
    state = _entry_state(entry)

    t0 = time.monotonic()
    with pytest.MonkeyPatch.context() as m:  # a cache hit builds nothing
        m.setattr(samples, "_build_catalog", lambda *a: pytest.fail("the valid catalog entry was rebuilt"))
        assert samples.bigearthnet_catalog(cache) == catalog
    cached = time.monotonic() - t0
    assert _entry_state(entry) == state
    print(f"\ncatalog build {built:.2f} s, cache hit {cached * 1000:.1f} ms")

    item_json = next(entry.glob(f"{samples.S1_COLLECTION}/*/S1A_*[0-9].json"))
    item_json.unlink()
    assert samples.bigearthnet_catalog(cache) == catalog
    assert item_json.is_file() and _entry_state(entry) != state
    assert stac.validate_core(catalog) == 15


def test_extraction_refuses_unsafe_members(tmp_path: Path) -> None:
    def tar_with(*members: tarfile.TarInfo) -> tarfile.TarFile:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for m in members:
                tar.addfile(m, io.BytesIO(b"x" * m.size) if m.isfile() else None)
        buf.seek(0)
        return tarfile.open(fileobj=buf)

    def file(name: str, size: int = 1) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size = size
        return info

    link = tarfile.TarInfo("top/evil")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    for member, error in (
        (file("../escape.tif"), tarfile.FilterError),
        (file("/abs.tif"), samples.SampleFetchError),  # the data filter strips the "/" -> outside top/
        (file("other/x.tif"), samples.SampleFetchError),
        (link, tarfile.FilterError),
        (file("top/huge.tif", size=65 << 20), samples.SampleFetchError),
    ):
        with tar_with(member) as tar, pytest.raises(error):
            tar.extractall(tmp_path / "out", filter=samples._member_filter("top", [64 << 20]))
    assert not (tmp_path / "escape.tif").exists()
    with tar_with(file("top/ok.tif", 3)) as tar:
        tar.extractall(tmp_path / "out", filter=samples._member_filter("top", [64 << 20]))
    assert (tmp_path / "out" / "top" / "ok.tif").read_bytes() == b"xxx"
