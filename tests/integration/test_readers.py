"""SceneReader on real data: the BigEarthNet Sentinel-2 and Sentinel-1 patches (``bigearthnet`` fixture),
COGs read from a real S3 server (SeaweedFS: ``s3_server``, ``s3_bucket``, ``s3_env``), corrupt and
incomplete scenes, and labels (raster, GeoJSON vector, item property) on small GeoTIFFs written here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from earthops.api.dataset import (
    Grid,
    Labels,
    PropertyLabels,
    RasterLabels,
    Resampling,
    Source,
    StacCatalogSource,
    VectorLabels,
)
from earthops_runtime.data.chips import ChipFilter, chip_windows, cut_chips
from earthops_runtime.data.grid import TargetGrid
from earthops_runtime.data.readers import LABEL_NODATA, RASTER_PROPERTY, SAR_SCALE_PROPERTY, SceneReader
from earthops_runtime.data.scene import Scene
from earthops_runtime.data.sources import resolve_scenes
from earthops_runtime.errors import SceneError, SpecError

pytestmark = pytest.mark.integration

S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
NATIVE_RES = {"B01": 60, "B09": 60, "B05": 20, "B06": 20, "B07": 20, "B8A": 20, "B11": 20, "B12": 20}
PATCH = "S2A_MSIL2A_20170613T101031_87_48"  # EPSG:32633, its centre in zone 33
S1_PATCH = "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48"


# --------------------------------------------------------------------------------------------------
# Helpers


def catalog_scene(bigearthnet, collection: str, patch: str, bands) -> Scene:
    """The patch as the pipeline sees it: the sample STAC catalog through the sources module
    (hrefs, ``earthops:raster`` scale/offset/nodata from ``raster:bands``, item properties)."""
    source = Source(catalog=StacCatalogSource(href=str(bigearthnet.catalog), collections=[collection]))
    (scene,) = [s for s in resolve_scenes(source, list(bands)) if s.id == patch]
    return scene


@pytest.fixture(scope="module")
def s2_scene(bigearthnet) -> Scene:
    return catalog_scene(bigearthnet, "bigearthnet-s2-example", PATCH, S2_BANDS)


@pytest.fixture(scope="module")
def s1_scene(bigearthnet) -> Scene:
    return catalog_scene(bigearthnet, "bigearthnet-s1-example", S1_PATCH, ["VV", "VH"])


def native(scene: Scene, band: str) -> np.ndarray:
    with rasterio.open(scene.assets[band]) as src:
        return src.read(1).astype(np.float64)


def write_tif(path: Path, data: np.ndarray, *, crs: str = "EPSG:32633",
              transform: Affine = Affine(10, 0, 404400, 0, -10, 5342400), **profile) -> Path:  # noqa: B008
    data = data if data.ndim == 3 else data[None]
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform, **profile) as dst:
        dst.write(data)
    return path


def big_cog(path: Path, size: int = 1024, *, scale: float | None = None) -> Path:
    """A tiled, overviewed COG (uint16, nodata 0) with a deterministic pattern."""
    rng = np.random.default_rng(7)
    data = rng.integers(1, 10_000, size=(size, size), dtype=np.uint16)
    data[:17, :] = 0  # a nodata strip
    tmp = write_tif(path.with_suffix(".src.tif"), data, nodata=0)
    if scale is not None:
        with rasterio.open(tmp, "r+") as ds:
            ds.scales = (scale,)
    rasterio.shutil.copy(tmp, path, driver="COG", blocksize=256, overview_resampling="average")
    tmp.unlink()
    return path


# --------------------------------------------------------------------------------------------------
# BigEarthNet Sentinel-2: every band onto the 10 m grid


def test_s2_patch_onto_10m_grid(s2_scene: Scene) -> None:
    with SceneReader(s2_scene, S2_BANDS, Grid()) as reader:
        assert reader.grid == TargetGrid("EPSG:32633", Affine(10, 0, 404400, 0, -10, 5342400), 120, 120, 10.0)
        assert reader.calibrations["B02"].scale == pytest.approx(1e-4)
        assert reader.calibrations["B02"].source == "stac"
        assert set(reader.resampling.values()) == {"bilinear"}
        data = reader.read(reader.grid.full_window)
    assert data.shape == (12, 120, 120) and data.dtype == np.float32
    assert not np.isnan(data).any()
    assert 0.0 <= data.min() and data.max() < 1.6  # surface reflectance, not DNs
    for i, band in enumerate(S2_BANDS):
        raw = native(s2_scene, band)
        if band not in NATIVE_RES:  # 10 m bands: exactly the file's values, scaled
            np.testing.assert_allclose(data[i], raw * 1e-4, rtol=1e-6)
        else:  # 20/60 m bands: interpolated, within the native range, same mean
            lo, hi = raw.min() * 1e-4, raw.max() * 1e-4
            assert lo - 1e-6 <= data[i].min() and data[i].max() <= hi + 1e-6
            assert data[i].mean() == pytest.approx(raw.mean() * 1e-4, rel=0.02)


def test_s2_coarse_bands_with_nearest_repeat_native_pixels(s2_scene: Scene) -> None:
    grid = Grid(resampling=Resampling(optical="nearest"))
    with SceneReader(s2_scene, ["B05", "B01", "B04"], grid) as reader:
        data = reader.read(reader.grid.full_window)
    b05, b01 = native(s2_scene, "B05"), native(s2_scene, "B01")
    np.testing.assert_allclose(data[0], np.kron(b05, np.ones((2, 2))) * 1e-4, rtol=1e-6)
    np.testing.assert_allclose(data[1], np.kron(b01, np.ones((6, 6))) * 1e-4, rtol=1e-6)
    np.testing.assert_allclose(data[2], native(s2_scene, "B04") * 1e-4, rtol=1e-6)


def test_s2_windows_equal_the_full_read(s2_scene: Scene) -> None:
    with SceneReader(s2_scene, S2_BANDS, Grid()) as reader:
        full = reader.read(reader.grid.full_window)
        for r, c, h, w in [(0, 0, 32, 32), (37, 11, 50, 64), (88, 88, 32, 32), (119, 0, 1, 120)]:
            np.testing.assert_array_equal(reader.read_block(r, c, h, w), full[:, r:r + h, c:c + w])
        with pytest.raises(ValueError, match="inside"):
            reader.read_block(100, 100, 32, 32)


def test_s2_coarser_grid_and_reference_band(s2_scene: Scene) -> None:
    with SceneReader(s2_scene, ["B02", "B01"], Grid(resolution=60, resampling=Resampling(optical="average"))) as r:
        assert (r.grid.width, r.grid.height) == (20, 20)
        data = r.read(r.grid.full_window)
    np.testing.assert_allclose(data[1], native(s2_scene, "B01") * 1e-4, rtol=1e-6)  # native at 60 m
    b02 = native(s2_scene, "B02") * 1e-4
    np.testing.assert_allclose(data[0], b02.reshape(20, 6, 20, 6).mean(axis=(1, 3)), rtol=1e-5)
    with SceneReader(s2_scene, ["B02"], Grid(resolution=10), reference_band="B02") as r:
        assert r.grid.bounds == (404400.0, 5341200.0, 405600.0, 5342400.0)


def test_s2_processing_baseline_offset(s2_scene: Scene) -> None:
    """A scene from processing baseline 04.00 on: (DN - 1000) / 10000 when nothing says otherwise."""
    props = {k: v for k, v in s2_scene.properties.items() if k != RASTER_PROPERTY}
    newer = Scene(id="pb0509", assets=s2_scene.assets, properties={**props, "s2:processing_baseline": "05.09"})
    with SceneReader(newer, ["B04"], Grid()) as reader:
        data = reader.read(reader.grid.full_window)[0]
    np.testing.assert_allclose(data, (native(s2_scene, "B04") - 1000) / 10000, atol=1e-6)


def test_s2_chips_of_the_patch(s2_scene: Scene) -> None:
    with SceneReader(s2_scene, S2_BANDS, Grid(), Labels(task="multilabel",
                                                        property=PropertyLabels(name="bigearthnet:labels"))) as r:
        full = r.read(r.grid.full_window)
        f = ChipFilter(0.0, 1.0)
        batches = list(cut_chips(r, 48, 24, chip_filter=f, chips_per_block=2))
    ids = [i for b in batches for i in b.ids]
    assert len(ids) == len(chip_windows(r.grid, 48, 24)) == 16
    assert ids[0] == f"{PATCH}_r0_c0" and f.counts() == {"kept": 16, "dropped": {}}
    for b in batches:
        for n in range(len(b)):
            rr, cc = b.rows[n], b.cols[n]
            np.testing.assert_array_equal(b.arrays[n], full[:, rr:rr + 48, cc:cc + 48])
            assert b.labels[n] == s2_scene.properties["bigearthnet:labels"]
            assert b.centres[n][0] == 404400 + (cc + 24) * 10 and b.centres[n][1] == 5342400 - (rr + 24) * 10


# --------------------------------------------------------------------------------------------------
# BigEarthNet Sentinel-1


def test_s1_patch_vv_vh(s1_scene: Scene) -> None:
    with SceneReader(s1_scene, ["VV", "VH"], Grid()) as reader:
        assert reader.kinds == {"VV": "sar", "VH": "sar"}
        assert reader.resampling == {"VV": "average", "VH": "average"}
        assert reader.calibrations["VV"].to_db is None  # stored in dB: left as is
        data = reader.read(reader.grid.full_window)
    assert data.shape == (2, 120, 120)
    np.testing.assert_allclose(data[0], native(s1_scene, "VV"), rtol=1e-6)
    np.testing.assert_allclose(data[1], native(s1_scene, "VH"), rtol=1e-6)
    assert -50 < np.nanmedian(data[1]) < np.nanmedian(data[0]) < 5  # dB; cross-pol weaker than co-pol


def test_s1_linear_power_is_converted_to_db(s1_scene: Scene, tmp_path: Path) -> None:
    vv_db = native(s1_scene, "VV")
    linear = write_tif(tmp_path / "vv_linear.tif", (10 ** (vv_db / 10)).astype(np.float32))
    scene = Scene(id="s1-linear", assets={"VV": str(linear)}, properties={SAR_SCALE_PROPERTY: "linear"})
    with SceneReader(scene, ["VV"], Grid()) as reader:
        assert reader.calibrations["VV"].to_db == "power"
        np.testing.assert_allclose(reader.read(reader.grid.full_window)[0], vv_db, atol=1e-4)


def test_s1_and_s2_on_one_grid(s1_scene: Scene, s2_scene: Scene) -> None:
    with SceneReader(s2_scene, ["B04", "B08"], Grid()) as s2:
        with SceneReader(s1_scene, ["VV", "VH"], Grid(), grid=s2.grid) as s1:
            both = np.concatenate([s2.read(Window(10, 10, 64, 64)), s1.read(Window(10, 10, 64, 64))])
    assert both.shape == (4, 64, 64) and not np.isnan(both).any()


def test_reprojected_to_the_zone_of_the_scene_centre(bigearthnet) -> None:
    """A patch stored in UTM 35 whose centre lies in zone 36: auto-utm reprojects it."""
    scene = catalog_scene(bigearthnet, "bigearthnet-s2-example", "S2B_MSIL2A_20170924T93020_69_24", ["B04"])
    with SceneReader(scene, ["B04"], Grid()) as reader:
        assert reader.grid.crs == "EPSG:32636"
        data = reader.read(reader.grid.full_window)[0]
    raw = native(scene, "B04") * 1e-4
    # rotated footprint: NaN in the corners, the inside within the native range
    assert np.isnan(data).any() and np.isfinite(data).mean() > 0.8
    assert raw.min() - 1e-6 <= np.nanmin(data) and np.nanmax(data) <= raw.max() + 1e-6
    assert np.isfinite(data[reader.grid.height // 2, reader.grid.width // 2])


# --------------------------------------------------------------------------------------------------
# Nodata, file scale/offset


def test_nodata_and_file_scale(tmp_path: Path) -> None:
    data = np.full((60, 60), 5000, np.uint16)
    data[:10] = 65535
    path = write_tif(tmp_path / "b04.tif", data, nodata=65535)
    with rasterio.open(path, "r+") as ds:
        ds.scales, ds.offsets = (2e-4,), (-0.1,)
    # a STAC hint that disagrees: the file wins
    scene = Scene(id="x", assets={"B04": str(path)}, properties={RASTER_PROPERTY: {"B04": {"scale": 1.0}}})
    grid = TargetGrid("EPSG:32633", Affine(10, 0, 404400 - 100, 0, -10, 5342400), 70, 60, 10.0)
    with SceneReader(scene, ["B04"], Grid(), grid=grid) as reader:
        assert reader.calibrations["B04"].source == "file"
        out = reader.read(grid.full_window)[0]
    assert np.isnan(out[:10]).all() and np.isnan(out[:, :10]).all()  # nodata, and outside the file
    np.testing.assert_allclose(out[10:, 10:], 5000 * 2e-4 - 0.1, rtol=1e-6)


def test_band_of_a_multiband_asset(tmp_path: Path) -> None:
    """A band the sources module mapped into a multi-band asset (``index`` in ``earthops:raster``)."""
    rgb = np.stack([np.full((40, 40), v, np.uint16) for v in (100, 200, 300)])
    path = write_tif(tmp_path / "visual.tif", rgb)
    scene = Scene(id="rgb", assets={"B03": str(path), "B04": str(path)},
                  properties={RASTER_PROPERTY: {"B03": {"asset": "visual", "index": 2, "scale": 0.001},
                                                "B04": {"asset": "visual", "index": 3}}})
    with SceneReader(scene, ["B04", "B03"], Grid()) as r:
        out = r.read(r.grid.full_window)
    np.testing.assert_allclose(out[0], 300)
    np.testing.assert_allclose(out[1], 0.2, rtol=1e-6)
    bad = Scene(id="rgb", assets=scene.assets, properties={RASTER_PROPERTY: {"B04": {"index": 4}}})
    with pytest.raises(SceneError, match="band B04 is band 4 of the file, which has 3"):
        SceneReader(bad, ["B04"], Grid())


@pytest.mark.parametrize("kind", ["nodata", "int16-nodata", "uint32-nodata", "float64-nodata", "mask", "float-nan"])
def test_files_on_the_grid_read_like_the_warper(tmp_path: Path, kind: str) -> None:
    """Bands already on the grid are read straight from the file: the same values as the warp, for
    stored types that convert to float32 exactly (read by GDAL into the output) and those that do not
    (a uint32 value next to its nodata rounds onto it in float32; float64 rounds)."""
    rng = np.random.default_rng(1)
    data = rng.integers(1, 3000, (50, 70)).astype(np.uint16)
    data[5:9, 10:30] = 0
    path = tmp_path / f"{kind}.tif"
    if kind == "nodata":
        write_tif(path, data, nodata=0)
    elif kind == "int16-nodata":
        write_tif(path, np.where(data == 0, -9999, data.astype(np.int16) - 1500).astype(np.int16), nodata=-9999)
    elif kind == "uint32-nodata":
        big = data.astype(np.uint32) + (1 << 24) - 3000
        big[0, :4] = (1 << 24) + 2  # rounds to the nodata's float32 (1 << 24) + 2... and this one:
        big[1, :4] = 1 << 24  # the float32 of nodata (1 << 24) + 1: a value, not nodata
        write_tif(path, np.where(data == 0, (1 << 24) + 1, big).astype(np.uint32), nodata=(1 << 24) + 1)
    elif kind == "float64-nodata":
        write_tif(path, np.where(data == 0, -1.0, data * 1.0000001).astype(np.float64), nodata=-1.0)
    elif kind == "mask":
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            write_tif(path, data)
            with rasterio.open(path, "r+") as ds:
                ds.write_mask(np.where(data == 0, 0, 255).astype(np.uint8))
    else:
        write_tif(path, np.where(data == 0, np.nan, data).astype(np.float32))
    # a grid larger than the file on every side (10 px left, 3 px above)
    grid = TargetGrid("EPSG:32633", Affine(10, 0, 404300, 0, -10, 5342430), 90, 60, 10.0)
    scene = Scene(id=kind, assets={"B04": str(path)})
    with SceneReader(scene, ["B04"], Grid(), grid=grid) as reader, rasterio.open(path) as src, \
            WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                      nodata=np.nan, dtype="float32", **({"src_nodata": np.nan} if kind == "float-nan" else {})) as vrt:
        for w in [grid.full_window, Window(0, 0, 5, 5), Window(8, 1, 30, 12), Window(75, 50, 15, 10),
                  Window(85, 55, 5, 5)]:
            if kind not in ("uint32-nodata", "float64-nodata"):  # GDAL's warper compares those rounded
                np.testing.assert_array_equal(reader.read(w)[0], vrt.read(1, window=w))
        full = reader.read(grid.full_window)[0]
    assert np.isnan(full[:3]).all() and np.isnan(full[:, :10]).all() and np.isnan(full[8:12, 20:40]).all()
    # the file lies at rows 3-52, columns 10-79 of the grid: nodata exactly where stored, values as numpy
    # converts them
    with rasterio.open(path) as src:
        stored = src.read(1)
        nodata = src.nodata
    want = stored.astype(np.float32)
    if kind == "mask" or kind == "nodata":
        want[data == 0] = np.nan
    elif nodata is not None:
        want[stored == stored.dtype.type(nodata)] = np.nan
    np.testing.assert_array_equal(full[3:53, 10:80], want)
    assert np.isnan(full[3:53, 10:80]).sum() == (data == 0).sum()
    with SceneReader(scene, ["B04"], Grid(), grid=grid) as reader:
        out = np.full((1, 12, 30), 7.0, np.float32)
        assert reader.read(Window(8, 1, 30, 12), out=out) is out and not (out == 7.0).all()
        np.testing.assert_array_equal(out[0], full[1:13, 8:38])
        with pytest.raises(ValueError, match=r"out: expected a float32 array of shape \(1, 12, 30\)"):
            reader.read(Window(8, 1, 30, 12), out=np.empty((1, 12, 30), np.float64))


# --------------------------------------------------------------------------------------------------
# S3 (SeaweedFS)


def test_cog_from_s3_equals_local(s3_server, s3_bucket: str, s3_env: dict, monkeypatch, tmp_path: Path) -> None:
    for gdal_var in ("AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING"):  # derived from AWS_ENDPOINT_URL
        monkeypatch.delenv(gdal_var, raising=False)
    cog = big_cog(tmp_path / "b04.tif", scale=1e-4)
    s3_server.filesystem().put(str(cog), f"{s3_bucket}/scenes/t1/b04.tif")
    local = Scene(id="t1", assets={"B04": str(cog)})
    remote = Scene(id="t1", assets={"B04": f"s3://{s3_bucket}/scenes/t1/b04.tif"})
    windows = [Window(0, 0, 256, 256), Window(300, 700, 128, 200), Window(1000, 1000, 24, 24)]
    with SceneReader(local, ["B04"], Grid()) as a, SceneReader(remote, ["B04"], Grid()) as b:
        assert a.grid == b.grid and (b.grid.width, b.grid.height) == (1024, 1024)
        for w in windows:
            x, y = a.read(w), b.read(w)
            np.testing.assert_array_equal(x, y)
        assert np.isnan(b.read(windows[0])[0, :17]).all() and np.nanmax(y) < 1.0  # nodata, file scale
    with rasterio.open(cog) as src:  # and the values are the file's
        np.testing.assert_allclose(y[0], src.read(1, window=windows[2]) * 1e-4, rtol=1e-6)


def test_s3_cut_chips(s3_server, s3_bucket: str, s3_env: dict, tmp_path: Path) -> None:
    cog = big_cog(tmp_path / "b08.tif", size=512)
    s3_server.filesystem().put(str(cog), f"{s3_bucket}/b08.tif")
    scene = Scene(id="s3scene", assets={"B08": f"s3://{s3_bucket}/b08.tif"})
    with SceneReader(scene, ["B08"], Grid()) as reader:
        f = ChipFilter(max_nodata_fraction=0.1)
        n = sum(len(b) for b in cut_chips(reader, 64, chip_filter=f, chips_per_block=4))
    assert n == 56 and f.counts() == {"kept": 56, "dropped": {"nodata": 8}}  # the top row: 17/64 nodata


def test_s3_errors_name_the_asset_and_gdal(s3_server, s3_bucket: str, s3_env: dict, monkeypatch,
                                            tmp_path: Path) -> None:
    missing = Scene(id="gone", assets={"B04": f"s3://{s3_bucket}/nothing/here.tif"})
    with pytest.raises(SceneError) as err:
        SceneReader(missing, ["B04"], Grid())
    assert err.value.scene_id == "gone"
    assert "asset B04" in err.value.reason and f"s3://{s3_bucket}/nothing/here.tif" in err.value.reason
    assert "cannot open" in err.value.reason

    cog = big_cog(tmp_path / "b02.tif", size=256)
    s3_server.filesystem().put(str(cog), f"{s3_bucket}/secret/b02.tif")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(SceneError, match="asset B02") as err:
        SceneReader(Scene(id="denied", assets={"B02": f"s3://{s3_bucket}/secret/b02.tif"}), ["B02"], Grid())
    assert "cannot open" in err.value.reason


# --------------------------------------------------------------------------------------------------
# Corrupt and incomplete scenes


def test_truncated_geotiff_is_a_scene_error(s2_scene: Scene, tmp_path: Path) -> None:
    raw = Path(s2_scene.assets["B04"]).read_bytes()
    cut_data = tmp_path / "b04_cut.tif"
    cut_data.write_bytes(raw[: len(raw) // 2])  # header intact, strips missing: fails on read
    scene = Scene(id="cut", assets={**s2_scene.assets, "B04": str(cut_data)}, properties=s2_scene.properties)
    with SceneReader(scene, ["B02", "B04"], Grid()) as reader:
        with pytest.raises(SceneError) as err:
            reader.read(reader.grid.full_window)
    assert err.value.scene_id == "cut"
    assert f"asset B04 ({cut_data})" in err.value.reason and "cannot read" in err.value.reason
    assert "TIFFReadEncodedStrip" in err.value.reason  # GDAL's own words, not just "read failed"

    cut_header = tmp_path / "b04_header.tif"
    cut_header.write_bytes(raw[:64])
    with pytest.raises(SceneError, match=r"asset B04 .*cannot open: .*TIFF") as err:
        SceneReader(Scene(id="hdr", assets={"B04": str(cut_header)}), ["B04"], Grid())
    not_tiff = tmp_path / "b04.tif"
    not_tiff.write_text("<html>503 Service Unavailable</html>")
    with pytest.raises(SceneError, match="not recognized"):
        SceneReader(Scene(id="html", assets={"B04": str(not_tiff)}), ["B04"], Grid())


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_missing_band_and_missing_file(s2_scene: Scene, tmp_path: Path) -> None:
    with pytest.raises(SceneError) as err:
        SceneReader(s2_scene, ["B04", "B10"], Grid())
    assert "band B10 not in the scene" in err.value.reason
    assert "available assets: B01, B02" in err.value.reason and "B8A" in err.value.reason
    failed = Scene(id="bad", assets={}, properties={"earthops:error": "cannot open s3://b/x_B04.tif: 403"})
    with pytest.raises(SceneError, match="cannot open s3://b/x_B04.tif: 403"):
        SceneReader(failed, ["B04"], Grid())
    with pytest.raises(SceneError, match=r"asset B04 \(ftp://host/b04.tif\): unsupported URI scheme"):
        SceneReader(Scene(id="x", assets={"B04": "ftp://host/b04.tif"}), ["B04"], Grid())
    gone = tmp_path / "gone.tif"
    with pytest.raises(SceneError, match=rf"asset B04 \({gone}\): cannot open: .*No such file"):
        SceneReader(Scene(id="x", assets={"B04": str(gone)}), ["B04"], Grid())
    with pytest.raises(SceneError, match="no CRS"):
        path = tmp_path / "plain.tif"
        with rasterio.open(path, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8") as dst:
            dst.write(np.zeros((1, 4, 4), np.uint8))
        SceneReader(Scene(id="x", assets={"B04": str(path)}), ["B04"], Grid())


# --------------------------------------------------------------------------------------------------
# Labels


def _label_scene(tmp_path: Path) -> tuple[Scene, np.ndarray]:
    img = write_tif(tmp_path / "b04.tif", np.full((120, 120), 1000, np.uint16))
    classes = np.zeros((60, 60), np.uint8)  # a 20 m class map
    classes[:, 30:] = 2
    classes[40:, :] = 7
    classes[:5, :5] = 255
    mask = write_tif(tmp_path / "mask.tif", classes, transform=Affine(20, 0, 404400, 0, -20, 5342400), nodata=255)
    return Scene(id="lab", assets={"B04": str(img), "mask": str(mask)}, properties={"class": "forest"}), classes


def test_raster_labels_nearest_and_mode(tmp_path: Path) -> None:
    scene, classes = _label_scene(tmp_path)
    want = np.kron(classes.astype(np.int32), np.ones((2, 2), np.int32))
    want[want == 255] = LABEL_NODATA
    with SceneReader(scene, ["B04"], Grid(), Labels(task="segmentation", raster=RasterLabels(asset="mask"))) as r:
        assert r.label_kind == "raster"
        np.testing.assert_array_equal(r.labels(r.grid.full_window), want)
        np.testing.assert_array_equal(r.labels(Window(50, 70, 30, 20)), want[70:90, 50:80])
    with SceneReader(scene, ["B04"], Grid(resolution=40, resampling=Resampling(labels="mode")),
                     Labels(task="segmentation", raster=RasterLabels(asset="mask"))) as r:
        lab = r.labels(r.grid.full_window)
    assert lab.shape == (30, 30) and lab.dtype == np.int32
    assert set(np.unique(lab)) <= {LABEL_NODATA, 0, 2, 7} and lab[29, 0] == 7 and lab[0, 29] == 2


def test_vector_labels_from_geojson(tmp_path: Path) -> None:
    scene, _ = _label_scene(tmp_path)
    from rasterio.warp import transform_geom

    def poly(x0, y0, x1, y1, crs="EPSG:4326"):
        g = {"type": "Polygon", "coordinates": [[(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]]}
        return transform_geom("EPSG:32633", crs, g) if crs != "EPSG:32633" else g

    # west half water, a field in the north-east quarter, one feature without the property
    features = [
        {"type": "Feature", "properties": {"lc": "water"}, "geometry": poly(404400, 5341200, 405000, 5342400)},
        {"type": "Feature", "properties": {"lc": "crop"}, "geometry": poly(405000, 5341800, 405600, 5342400)},
        {"type": "Feature", "properties": {"other": 1}, "geometry": poly(405000, 5341200, 405600, 5341800)},
    ]
    path = tmp_path / "lc.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    spec = Labels(task="segmentation", vector=VectorLabels(uri=path.as_uri(), property="lc"))
    with SceneReader(scene, ["B04"], Grid(), spec) as r:
        assert r.label_kind == "vector" and r.label_classes == ["crop", "water"]
        lab = r.labels(r.grid.full_window)
        assert lab.dtype == np.int32 and lab.shape == (120, 120)
        assert (lab[:, :55] == 1).all() and (lab[:55, 65:] == 0).all() and (lab[65:, 65:] == LABEL_NODATA).all()
        np.testing.assert_array_equal(r.labels(Window(60, 60, 60, 60)), lab[60:, 60:])
        assert (r.labels(Window(70, 70, 8, 8)) == LABEL_NODATA).all()  # no feature there at all
        # into a reused buffer, whatever it held before (a window with shapes, then one without)
        buf = np.full((60, 60), 9, np.int32)
        assert r.labels(Window(60, 60, 60, 60), out=buf) is buf
        np.testing.assert_array_equal(buf, lab[60:, 60:])
        small = np.full((8, 8), 9, np.int32)
        assert (r.labels(Window(70, 70, 8, 8), out=small) == LABEL_NODATA).all()
        with pytest.raises(ValueError, match=r"out: expected an int32 array of shape \(8, 8\)"):
            r.labels(Window(70, 70, 8, 8), out=np.empty((8, 8), np.int64))
    # explicit classes fix the indices; a legacy GeoJSON in UTM works too
    utm = [dict(f, geometry=poly(*c, crs="EPSG:32633")) for f, c in zip(features, [
        (404400, 5341200, 405000, 5342400), (405000, 5341800, 405600, 5342400), (405000, 5341200, 405600, 5341800)],
        strict=True)]
    legacy = tmp_path / "lc_utm.json"
    legacy.write_text(json.dumps({"type": "FeatureCollection", "features": utm,
                                  "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}}))
    spec = Labels(task="segmentation", classes=["water", "crop"], vector=VectorLabels(uri=str(legacy), property="lc"))
    with SceneReader(scene, ["B04"], Grid(), spec) as r:
        lab2 = r.labels(r.grid.full_window)
    np.testing.assert_array_equal(lab2, np.where(lab == LABEL_NODATA, LABEL_NODATA, 1 - lab))
    gpkg = tmp_path / "lc.gpkg"
    gpkg.write_bytes(b"")
    with pytest.raises(SpecError, match="only GeoJSON"):
        SceneReader(scene, ["B04"], Grid(), Labels(vector=VectorLabels(uri=str(gpkg), property="lc")))


def test_vector_labels_from_s3(s3_server, s3_bucket: str, s3_env: dict, tmp_path: Path) -> None:
    scene, _ = _label_scene(tmp_path)
    doc = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"lc": 3}, "geometry": {
        "type": "Polygon", "coordinates": [[(404400, 5341200), (405600, 5341200), (405600, 5342400),
                                            (404400, 5342400), (404400, 5341200)]]}}],
           "crs": {"type": "name", "properties": {"name": "EPSG:32633"}}}
    s3_server.filesystem().pipe(f"{s3_bucket}/labels/lc-s3.geojson", json.dumps(doc).encode())
    spec = Labels(task="segmentation", vector=VectorLabels(uri=f"s3://{s3_bucket}/labels/lc-s3.geojson", property="lc"))
    with SceneReader(scene, ["B04"], Grid(), spec) as r:
        assert r.label_classes is None  # integer codes are used as they are
        assert (r.labels(Window(0, 0, 120, 120)) == 3).all()


def test_property_labels(tmp_path: Path) -> None:
    scene, _ = _label_scene(tmp_path)
    with SceneReader(scene, ["B04"], Grid(), Labels(property=PropertyLabels(name="class"))) as r:
        assert r.labels(Window(0, 0, 8, 8)) == "forest"
    with pytest.raises(SceneError, match="no item property 'missing'"):
        SceneReader(scene, ["B04"], Grid(), Labels(property=PropertyLabels(name="missing")))
    with pytest.raises(SceneError, match="label asset nope not in the scene"):
        SceneReader(scene, ["B04"], Grid(), Labels(task="segmentation", raster=RasterLabels(asset="nope")))


def test_cloud_mask_asset_drops_cloudy_chips(tmp_path: Path) -> None:
    from earthops_runtime.data.chips import scl_cloud_mask

    img = write_tif(tmp_path / "b04.tif", np.full((128, 128), 1000, np.uint16))
    scl = np.full((64, 64), 4, np.uint8)  # vegetation
    scl[:32, :32] = 9  # cloud high probability over the top-left chip
    scl_path = write_tif(tmp_path / "scl.tif", scl, transform=Affine(20, 0, 404400, 0, -20, 5342400))
    scene = Scene(id="c", assets={"B04": str(img), "SCL": str(scl_path)})
    with SceneReader(scene, ["B04"], Grid()) as r:
        f = ChipFilter(max_nodata_fraction=0.0, max_cloud_fraction=0.3)
        ids = [i for b in cut_chips(r, 64, chip_filter=f, cloud_mask=scl_cloud_mask(r)) for i in b.ids]
    assert ids == ["c_r0_c64", "c_r64_c0", "c_r64_c64"] and f.counts()["dropped"] == {"cloud": 1}
