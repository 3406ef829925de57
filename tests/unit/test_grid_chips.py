"""Grid math, chip windows, chip filtering and cutting (over an in-memory reader), split assignment,
band calibration rules and GDAL path/S3 settings: pure functions, no files, no servers."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
from affine import Affine
from rasterio.windows import Window

from earthops.api.dataset import Chips, Split
from earthops_runtime.data.chips import (
    ChipFilter,
    assign_split,
    block_index,
    chip_centre,
    chip_count,
    chip_id,
    chip_windows,
    cut_chips,
    split_block_size_m,
)
from earthops_runtime.data.grid import (
    Footprint,
    TargetGrid,
    align_bounds,
    bbox_centre,
    grid_for_scene,
    grid_from_bounds,
    utm_crs,
    utm_zone,
)
from earthops_runtime.data.readers import (
    ERROR_PROPERTY,
    RASTER_PROPERTY,
    SAR_SCALE_PROPERTY,
    BandCalibration,
    calibration_for,
    gdal_message,
    gdal_path,
    gdal_s3_options,
    processing_baseline,
)
from earthops_runtime.errors import SpecError

pytestmark = pytest.mark.unit


# --------------------------------------------------------------------------------------------------
# UTM zone choice


@pytest.mark.parametrize(
    ("lon", "lat", "crs"),
    [
        (13.7, 48.2, "EPSG:32633"),  # BigEarthNet patch, Austria
        (179.9, 10.0, "EPSG:32660"),  # last zone, not 61
        (180.0, 10.0, "EPSG:32601"),  # the antimeridian is the west edge of zone 1
        (-180.0, 10.0, "EPSG:32601"),
        (-179.9, 10.0, "EPSG:32601"),
        (179.9, -16.5, "EPSG:32760"),  # Fiji: south
        (540.0 - 0.1, 10.0, "EPSG:32660"),  # unnormalised longitude folds back
        (151.2, -33.9, "EPSG:32756"),  # Sydney: southern hemisphere
        (-70.6, -33.4, "EPSG:32719"),  # Santiago
        (0.0, 0.0, "EPSG:32631"),  # the equator counts as north
        (6.0, -0.0001, "EPSG:32732"),  # just south of it
        (-6.0, 52.3, "EPSG:32630"),  # zone edge: -6 is the first meridian of zone 30
        (-6.0001, 52.3, "EPSG:32629"),
        (5.3, 60.4, "EPSG:32632"),  # Bergen: zone 32V widened west to 3°E
        (2.9, 60.4, "EPSG:32631"),
        (5.3, 55.9, "EPSG:32631"),  # south of band V: no exception
        (5.3, 64.0, "EPSG:32631"),  # band W: no exception
        (15.6, 78.2, "EPSG:32633"),  # Longyearbyen, Svalbard: 33X
        (8.9, 78.0, "EPSG:32631"),  # Svalbard: 31X reaches 9°E
        (9.0, 78.0, "EPSG:32633"),  # 32X does not exist
        (20.9, 78.0, "EPSG:32633"),
        (21.0, 78.0, "EPSG:32635"),  # 34X does not exist
        (33.0, 80.0, "EPSG:32637"),  # 36X does not exist
        (41.9, 80.0, "EPSG:32637"),
        (42.0, 80.0, "EPSG:32638"),  # east of the exception
        (15.6, 71.9, "EPSG:32633"),  # band W at 15.6°E: normal zone 33 anyway
        (10.0, 71.9, "EPSG:32632"),  # band W: 32 exists there
        (10.0, 72.0, "EPSG:32633"),  # band X: it does not
        (10.0, 84.0, "EPSG:32633"),  # UTM's northern limit is still UTM
        (10.0, 84.1, "EPSG:32661"),  # beyond: UPS North
        (10.0, -80.0, "EPSG:32732"),
        (10.0, -80.1, "EPSG:32761"),  # UPS South
    ],
)
def test_utm_crs(lon: float, lat: float, crs: str) -> None:
    assert utm_crs(lon, lat) == crs


def test_utm_zone_covers_every_longitude_once() -> None:
    zones = [utm_zone(lon + 0.5, 0.0) for lon in range(-180, 180)]
    assert sorted(set(zones)) == list(range(1, 61))
    assert all(Counter(zones)[z] == 6 for z in range(1, 61))


def test_bbox_centre_across_the_antimeridian() -> None:
    assert bbox_centre((10.0, -1.0, 12.0, 3.0)) == (11.0, 1.0)
    lon, lat = bbox_centre((179.0, -17.0, -179.0, -16.0))  # 2° wide, crossing 180
    assert lon == pytest.approx(-180.0) and lat == -16.5
    lon, _ = bbox_centre((178.0, 0.0, -179.0, 1.0))  # 3° wide: centre at 179.5
    assert lon == pytest.approx(179.5)


# --------------------------------------------------------------------------------------------------
# Grids


def test_align_bounds_snaps_outwards_and_ignores_float_noise() -> None:
    assert align_bounds((404403.0, 5341195.0, 405601.0, 5342399.0), 10) == (404400.0, 5341190.0, 405610.0, 5342400.0)
    assert align_bounds((404400.0000000001, 1.0, 405599.9999999999, 9.0), 10) == (404400.0, 0.0, 405600.0, 10.0)
    assert align_bounds((-15.0, -25.0, 15.0, 25.0), 20) == (-20.0, -40.0, 20.0, 40.0)


def test_grid_from_native_footprint_is_the_native_grid() -> None:
    fp = Footprint("EPSG:32633", (404400.0, 5341200.0, 405600.0, 5342400.0))
    g = grid_for_scene(fp, "auto-utm", 10)
    assert g.crs == "EPSG:32633"
    assert g.transform == Affine(10, 0, 404400, 0, -10, 5342400)
    assert (g.width, g.height) == (120, 120)
    assert g.bounds == fp.bounds
    g60 = grid_for_scene(fp, "auto-utm", 60)
    assert (g60.width, g60.height) == (20, 20)


def test_grid_covers_the_union_of_band_footprints() -> None:
    b02 = Footprint("EPSG:32633", (404400.0, 5341200.0, 405600.0, 5342400.0))
    shifted = Footprint("EPSG:32633", (404395.0, 5341100.0, 405600.0, 5342405.0))
    g = grid_for_scene([b02, shifted], "EPSG:32633", 10)
    assert g.bounds == (404390.0, 5341100.0, 405600.0, 5342410.0)
    # the reference band alone
    assert grid_for_scene([b02], "EPSG:32633", 10).bounds == b02.bounds


def test_grid_from_wgs84_bbox_covers_it_and_is_aligned() -> None:
    from rasterio.warp import transform_bounds

    bbox = (13.712, 48.216, 13.729, 48.228)
    for res in (10.0, 20.0, 60.0, 0.5, 3.0):
        g = grid_for_scene(bbox, "auto-utm", res)
        assert g.crs == "EPSG:32633"
        left, bottom, right, top = g.bounds
        for v in g.bounds:
            assert v / res == pytest.approx(round(v / res), abs=1e-9)
        w, s, e, n = transform_bounds("EPSG:4326", g.crs, *bbox, densify_pts=21)
        assert left <= w and bottom <= s and right >= e and top >= n
        assert right - e < res and w - left < res  # no more than one pixel of margin


def test_neighbouring_scenes_share_pixel_edges() -> None:
    a = grid_for_scene((13.70, 48.20, 13.75, 48.23), "auto-utm", 10)
    b = grid_for_scene((13.75, 48.20, 13.80, 48.23), "auto-utm", 10)
    assert a.crs == b.crs
    dx = (b.transform.c - a.transform.c) / 10
    dy = (b.transform.f - a.transform.f) / 10
    assert dx == int(dx) and dy == int(dy)
    # the overlap column is the same pixel in both
    assert a.bounds[2] >= b.bounds[0]


def test_grid_in_another_crs_and_mixed_footprints() -> None:
    utm33 = Footprint("EPSG:32633", (404400.0, 5341200.0, 405600.0, 5342400.0))
    g = grid_for_scene(utm33, "EPSG:3035", 20)  # ETRS89-LAEA Europe
    assert g.crs == "EPSG:3035"
    assert all(v % 20 == 0 for v in g.bounds)
    # mixed CRSs: the union in the target CRS
    laea = Footprint("EPSG:3035", g.bounds)
    g2 = grid_for_scene([utm33, laea], "auto-utm", 10)
    assert g2.crs == "EPSG:32633"
    assert g2.bounds[0] <= 404400 and g2.bounds[3] >= 5342400


def test_grid_across_the_antimeridian() -> None:
    g = grid_for_scene((179.95, -16.6, -179.95, -16.5), "auto-utm", 10)
    assert g.crs in ("EPSG:32760", "EPSG:32701")
    # about 10.7 km wide (0.1° at 16.5°S), not the whole world
    assert 10_000 < g.width * 10 < 11_500
    assert 11_000 < g.height * 10 < 11_300


def test_svalbard_and_southern_scenes_pick_the_right_zone() -> None:
    assert grid_for_scene((15.0, 78.0, 16.0, 78.3), "auto-utm", 10).crs == "EPSG:32633"
    assert grid_for_scene((151.1, -34.0, 151.3, -33.8), "auto-utm", 10).crs == "EPSG:32756"
    assert grid_for_scene((179.8, 50.0, 179.95, 50.1), "auto-utm", 10).crs == "EPSG:32660"


def test_grid_spec_errors() -> None:
    with pytest.raises(SpecError, match="geographic"):
        grid_for_scene((10, 10, 11, 11), "EPSG:4326", 10)
    with pytest.raises(SpecError, match="not a known CRS"):
        grid_for_scene((10, 10, 11, 11), "EPSG:999999", 10)
    with pytest.raises(SpecError, match="resolution"):
        grid_from_bounds("EPSG:32633", (0, 0, 10, 10), 0)
    with pytest.raises(ValueError):
        grid_for_scene([], "auto-utm", 10)


def test_target_grid_helpers() -> None:
    g = TargetGrid("EPSG:32633", Affine(10, 0, 1000, 0, -10, 5000), 100, 50, 10.0)
    assert g.shape == (50, 100)
    assert g.bounds == (1000, 4500, 2000, 5000)
    w = Window(10, 20, 30, 5)
    assert g.window_transform(w) == Affine(10, 0, 1100, 0, -10, 4800)
    assert g.window_bounds(w) == (1100, 4750, 1400, 4800)
    assert g.xy(0, 0) == (1005.0, 4995.0)
    assert g.contains(Window(70, 45, 30, 5)) and not g.contains(Window(71, 45, 30, 5))
    assert not g.contains(Window(-1, 0, 5, 5))
    with pytest.raises(ValueError):
        TargetGrid("EPSG:32633", Affine(10, 0, 0, 0, 10, 0), 10, 10, 10.0)  # south-up


# --------------------------------------------------------------------------------------------------
# Chip windows


def _grid(width: int, height: int, res: float = 10.0) -> TargetGrid:
    return TargetGrid("EPSG:32633", Affine(res, 0, 500_000, 0, -res, 5_000_000), width, height, res)


def test_chip_windows_full_chips_row_major() -> None:
    g = _grid(130, 70)
    ws = chip_windows(g, 32)
    assert [(w.row_off, w.col_off) for w in ws] == [(r, c) for r in (0, 32) for c in (0, 32, 64, 96)]
    assert all(w.width == w.height == 32 and g.contains(w) for w in ws)
    assert chip_windows(g, 32) == ws  # deterministic


def test_chip_windows_with_stride() -> None:
    g = _grid(100, 100)
    ws = chip_windows(g, 32, 16)
    assert chip_count(100, 32, 16) == 5  # 0,16,32,48,64 (80+32 > 100)
    assert len(ws) == 25
    assert ws[1].col_off == 16 and ws[5].row_off == 16
    assert chip_windows(g, 200) == []
    assert len(chip_windows(_grid(120, 120), 120)) == 1
    with pytest.raises(ValueError):
        chip_windows(g, 32, 0)


# --------------------------------------------------------------------------------------------------
# Chip filter


def test_chip_filter_nodata_and_cloud() -> None:
    f = ChipFilter(max_nodata_fraction=0.1, max_cloud_fraction=0.5)
    chip = np.ones((3, 10, 10), np.float32)
    assert f(chip)
    chip[1, :1, :] = np.nan  # 10 % of the pixels in one channel: still kept (not more than 0.1)
    assert f.decide(chip) is None
    chip[0, 1, 0] = np.nan  # 11 %
    assert f.decide(chip) == "nodata"
    assert not f(chip)
    clouds = np.zeros((10, 10), bool)
    clouds[:6] = True
    assert f.decide(np.ones((3, 10, 10), np.float32), clouds) == "cloud"
    assert not f(np.ones((3, 10, 10), np.float32), clouds)
    clouds[5] = False
    assert f(np.ones((3, 10, 10), np.float32), clouds)
    assert f.counts() == {"kept": 2, "dropped": {"cloud": 1, "nodata": 1}}
    assert ChipFilter.cloud_fraction(np.array([[1.0, np.nan], [0.0, 2.0]])) == 0.5


def test_chip_filter_from_spec() -> None:
    f = ChipFilter.from_spec(Chips(size=64, max_nodata_fraction=0.0, max_cloud_fraction=0.2))
    assert (f.max_nodata_fraction, f.max_cloud_fraction) == (0.0, 0.2)
    chip = np.zeros((2, 4, 4), np.float32)
    chip[0, 0, 0] = np.nan
    assert not f(chip)


# --------------------------------------------------------------------------------------------------
# Cutting chips over an in-memory reader


class ArrayReader:
    """The reader interface over an in-memory (C, H, W) array; records every window read."""

    def __init__(self, data: np.ndarray, labels: np.ndarray | str | None = None, scene_id: str = "S1"):
        self.data = data
        self._labels = labels
        self.scene = SimpleNamespace(id=scene_id)
        self.grid = _grid(data.shape[2], data.shape[1])
        self.windows: list[Window] = []

    def _sl(self, w: Window) -> tuple[slice, slice]:
        assert self.grid.contains(w), w
        return slice(w.row_off, w.row_off + w.height), slice(w.col_off, w.col_off + w.width)

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(f"b{i}" for i in range(len(self.data)))

    def read(self, w: Window, out: np.ndarray | None = None) -> np.ndarray:
        self.windows.append(w)
        window = self.data[(slice(None), *self._sl(w))]
        if out is None:
            return window.copy()
        out[...] = window
        return out

    def labels(self, w: Window, out: np.ndarray | None = None):
        if isinstance(self._labels, np.ndarray):
            if out is None:
                return self._labels[self._sl(w)].copy()
            out[...] = self._labels[self._sl(w)]
            return out
        return self._labels


def _scene(c: int = 2, h: int = 200, w: int = 300) -> np.ndarray:
    return np.arange(c * h * w, dtype=np.float32).reshape(c, h, w)


@pytest.mark.parametrize(("size", "stride", "per_block"), [(16, None, 8), (16, 8, 3), (20, 30, 2), (64, None, 1)])
def test_cut_chips_matches_chip_windows(size: int, stride: int | None, per_block: int) -> None:
    data = _scene()
    labels = (np.arange(200 * 300) % 7).reshape(200, 300).astype(np.int32)
    reader = ArrayReader(data, labels)
    batches = list(cut_chips(reader, size, stride, chips_per_block=per_block))
    got = {i: (b, n) for b in batches for n, i in enumerate(b.ids)}
    want = chip_windows(reader.grid, size, stride)
    assert sorted(got) == sorted(chip_id("S1", w.row_off, w.col_off) for w in want)
    for w in want:
        b, n = got[chip_id("S1", w.row_off, w.col_off)]
        r, c = w.row_off, w.col_off
        assert (b.rows[n], b.cols[n]) == (r, c)
        np.testing.assert_array_equal(b.arrays[n], data[:, r:r + size, c:c + size])
        np.testing.assert_array_equal(b.labels[n], labels[r:r + size, c:c + size])
        assert tuple(b.centres[n]) == chip_centre(reader.grid, r, c, size)
        assert tuple(b.centres[n]) == (500_000 + 10 * (c + size / 2), 5_000_000 - 10 * (r + size / 2))
    for b in batches:
        assert b.arrays.dtype == np.float32 and b.arrays.shape[1:] == (2, size, size)
        assert b.labels.shape == (len(b), size, size)
    # bounded memory: no read is larger than a block of chips
    s = size if stride is None else stride
    limit = (per_block - 1) * s + size
    assert all(w.width <= limit and w.height <= limit for w in reader.windows)
    assert len(reader.windows) == math.ceil(chip_count(200, size, s) / per_block) * math.ceil(
        chip_count(300, size, s) / per_block)


@pytest.mark.parametrize(("size", "stride", "per_block"), [(16, None, 4), (20, 30, 3), (16, 8, 5)])
def test_cut_chips_with_reused_buffers_gives_the_same_batches(size: int, stride: int | None, per_block: int) -> None:
    """Reused buffers (one for blocks, one for batches, one for labels) give every batch as fresh ones
    do, each valid until the next is drawn; edge blocks are smaller, filtered batches shorter."""
    data = _scene()
    data[:, 40:70, 100:140] = np.nan  # some chips dropped: batches of different lengths
    labels = (np.arange(200 * 300) % 7).reshape(200, 300).astype(np.int32)
    fresh = [(b.ids, b.arrays.copy(), b.labels.copy()) for b in cut_chips(
        ArrayReader(data, labels), size, stride, chip_filter=ChipFilter(max_nodata_fraction=0.2),
        chips_per_block=per_block, extra_channels=1)]
    reused = []
    arrays_seen = set()
    for b in cut_chips(ArrayReader(data, labels), size, stride, chip_filter=ChipFilter(max_nodata_fraction=0.2),
                       chips_per_block=per_block, extra_channels=1, reuse_buffers=True):
        arrays_seen.add(b.arrays.__array_interface__["data"][0])
        reused.append((b.ids, b.arrays[:, :2].copy(), b.labels.copy()))
    assert [len(ids) for ids, _, _ in fresh] != [per_block * per_block] * len(fresh)  # some were filtered
    assert len(arrays_seen) == 1  # one batch buffer
    assert [ids for ids, _, _ in reused] == [ids for ids, _, _ in fresh]
    for (_, xa, ya), (_, xb, yb) in zip(fresh, reused, strict=True):
        np.testing.assert_array_equal(xa[:, :2], xb)
        np.testing.assert_array_equal(ya, yb)


def test_cut_chips_is_deterministic_and_block_size_independent() -> None:
    data = _scene()
    a = [i for b in cut_chips(ArrayReader(data), 16, chips_per_block=4) for i in b.ids]
    b = [i for b in cut_chips(ArrayReader(data), 16, chips_per_block=4) for i in b.ids]
    c = [i for b in cut_chips(ArrayReader(data), 16, chips_per_block=7) for i in b.ids]
    assert a == b and sorted(a) == sorted(c) and len(a) == 12 * 18
    assert a[0] == "S1_r0_c0" and "S1_r16_c32" in a


def test_cut_chips_filters_and_counts() -> None:
    data = _scene(h=64, w=64)
    data[:, :16, :16] = np.nan  # chip r0 c0: all nodata
    data[0, 16:18, 16:32] = np.nan  # chip r16 c16: 2/16 rows = 12.5 % nodata
    clouds = np.zeros((64, 64), bool)
    clouds[48:, 48:] = True  # chip r48 c48: cloudy
    f = ChipFilter(max_nodata_fraction=0.1, max_cloud_fraction=0.5)
    batches = list(cut_chips(ArrayReader(data, "forest"), 16, chip_filter=f,
                             cloud_mask=lambda w: clouds[w.row_off:w.row_off + w.height,
                                                         w.col_off:w.col_off + w.width]))
    ids = [i for b in batches for i in b.ids]
    assert len(ids) == 13
    assert {"S1_r0_c0", "S1_r16_c16", "S1_r48_c48"}.isdisjoint(ids)
    assert f.counts() == {"kept": 13, "dropped": {"cloud": 1, "nodata": 2}}
    assert batches[0].labels == ["forest"] * len(batches[0])  # property labels: one per chip


def test_cut_chips_drops_empty_batches_and_small_scenes() -> None:
    data = np.full((1, 32, 32), np.nan, np.float32)
    assert list(cut_chips(ArrayReader(data), 16, chip_filter=ChipFilter())) == []
    assert list(cut_chips(ArrayReader(np.zeros((1, 8, 8), np.float32)), 16)) == []


# --------------------------------------------------------------------------------------------------
# Splits


FRACTIONS = (0.7, 0.15, 0.15)


def test_random_split_is_stable_and_seeded() -> None:
    ids = [f"scene_r{r}_c{c}" for r in range(0, 640, 64) for c in range(0, 640, 64)]
    first = [assign_split("random", 7, FRACTIONS, chip_id=i) for i in ids]
    assert first == [assign_split("random", 7, {"train": 0.7, "validation": 0.15, "test": 0.15}, chip_id=i)
                     for i in ids]
    assert first == [assign_split("random", 7, Split(seed=7), chip_id=i) for i in ids]
    other = [assign_split("random", 8, FRACTIONS, chip_id=i) for i in ids]
    assert first != other
    # pinned values: the hash is blake2b, the same in every process, platform and Python version
    assert [assign_split("random", 0, FRACTIONS, chip_id=f"golden_r0_c{c}") for c in range(0, 256, 16)] == \
        GOLDEN_RANDOM
    assert [assign_split("spatial-blocks", 0, FRACTIONS, (500_000.0 + 1000 * i + 1, 4_000_000.0), 1000.0)
            for i in range(16)] == GOLDEN_BLOCKS


#: Pinned outputs: a change here reshuffles every published dataset's splits.
T, V, X = "train", "validation", "test"
GOLDEN_RANDOM = [T, T, T, T, T, X, T, T, X, X, X, T, T, T, T, T]
GOLDEN_BLOCKS = [V, V, T, T, V, T, T, V, T, X, T, X, V, T, T, T]


def test_random_split_fractions_over_10k_chips() -> None:
    for seed in (0, 1, 42):
        counts = Counter(assign_split("random", seed, FRACTIONS, chip_id=f"S2_T33UUP_r{i // 100 * 64}_c{i % 100 * 64}")
                         for i in range(10_000))
        for split, frac in zip(("train", "validation", "test"), FRACTIONS, strict=True):
            assert abs(counts[split] / 10_000 - frac) <= 0.03, (seed, counts)


def test_spatial_blocks_are_coherent() -> None:
    chip, res, blocks = 64, 10.0, 4
    block_m = split_block_size_m(blocks, chip, res)
    assert block_m == 2560.0
    grid_origin = (404_400.0, 5_342_400.0)  # not a multiple of the block size: blocks cut chip rows
    by_block: dict[tuple[int, int], set[str]] = defaultdict(set)
    by_split: Counter[str] = Counter()
    for r in range(0, 64 * 60, 64):
        for c in range(0, 64 * 60, 64):
            x = grid_origin[0] + (c + chip / 2) * res
            y = grid_origin[1] - (r + chip / 2) * res
            s = assign_split("spatial-blocks", 3, FRACTIONS, (x, y), block_m, chip_id=f"a_r{r}_c{c}")
            by_block[block_index((x, y), block_m)].add(s)
            by_split[s] += 1
    assert all(len(s) == 1 for s in by_block.values())  # every chip of a block: one split
    assert len(by_block) > 200
    assert len({next(iter(s)) for s in by_block.values()}) == 3  # blocks do differ
    # the chip id does not matter, only the block; another scene with chips in the same block agrees
    assert assign_split("spatial-blocks", 3, FRACTIONS, (404_400.0 + 5, 5_342_400.0 - 5), block_m, "b_r0_c0") == \
        assign_split("spatial-blocks", 3, FRACTIONS, (404_400.0 + 100, 5_342_400.0 - 100), block_m, "c_r9_c9")


def test_spatial_block_fractions_over_10k_blocks() -> None:
    block_m = 1000.0
    counts = Counter(assign_split("spatial-blocks", 11, FRACTIONS, (500_000.0 + (i % 100) * block_m + 10,
                                                                     4_000_000.0 + (i // 100) * block_m + 10),
                                  block_m) for i in range(10_000))
    for split, frac in zip(("train", "validation", "test"), FRACTIONS, strict=True):
        assert abs(counts[split] / 10_000 - frac) <= 0.03, counts


def test_split_edge_cases() -> None:
    assert assign_split("random", 0, (1.0, 0.0, 0.0), chip_id="x") == "train"
    assert assign_split("random", 0, (0.0, 0.0, 1.0), chip_id="x") == "test"
    assert block_index((-0.5, 2559.9), 2560.0) == (-1, 0)  # floor, also for negative coordinates
    with pytest.raises(ValueError, match="adding up to 1"):
        assign_split("random", 0, (0.5, 0.2, 0.2), chip_id="x")
    with pytest.raises(ValueError, match="chip id"):
        assign_split("random", 0, FRACTIONS)
    with pytest.raises(ValueError, match="centre"):
        assign_split("spatial-blocks", 0, FRACTIONS, chip_id="x")
    with pytest.raises(ValueError, match="unknown split method"):
        assign_split("stratified", 0, FRACTIONS, chip_id="x")


# --------------------------------------------------------------------------------------------------
# Calibration rules


def test_file_scale_wins_over_everything() -> None:
    props = {RASTER_PROPERTY: {"B04": {"scale": 0.0001}}, "s2:processing_baseline": "05.09"}
    cal = calibration_for("B04", props, file_scale=0.0002, file_offset=-0.05)
    assert (cal.scale, cal.offset, cal.source) == (0.0002, -0.05, "file")


def test_stac_hint_scale_offset_nodata() -> None:
    """The ``earthops:raster`` entry the sources module writes per band (from STAC raster:bands)."""
    props = {RASTER_PROPERTY: {"B04": {"asset": "red", "index": 1, "scale": 0.0001, "offset": -0.1, "nodata": 0}}}
    cal = calibration_for("B04", props)
    assert (cal.scale, cal.offset, cal.nodata, cal.source) == (0.0001, -0.1, 0.0, "stac")
    assert calibration_for("B04", props, file_nodata=65535).nodata == 65535  # the file's nodata first
    assert calibration_for("B04", {}).source == "none"
    # None means "not given"; STAC's JSON form of a NaN nodata is the string "nan"
    props = {RASTER_PROPERTY: {"VV": {"asset": "vv", "index": 1, "scale": None, "offset": None, "nodata": "nan"}}}
    cal = calibration_for("VV", props)
    assert (cal.scale, cal.offset, cal.source) == (1.0, 0.0, "none") and math.isnan(cal.nodata)


def test_property_keys_are_the_sources_modules() -> None:
    from earthops_runtime.data import sources

    assert RASTER_PROPERTY == sources.RASTER_KEY and ERROR_PROPERTY == sources.ERROR_KEY


@pytest.mark.parametrize(
    ("baseline", "hint", "extra", "scale", "offset"),
    [
        ("04.00", {}, {}, 1e-4, -0.1),  # (DN - 1000) / 10000
        ("05.09", {"scale": 0.0001}, {}, 1e-4, -0.1),  # hint scale, offset from the baseline
        ("03.01", {}, {}, 1e-4, 0.0),  # before the offset was introduced
        ("02.05", {"scale": 0.0001}, {}, 1e-4, 0.0),
        ("05.10", {"scale": 0.0001, "offset": -0.1}, {}, 1e-4, -0.1),  # hint offset as given
        ("05.10", {}, {"earthsearch:boa_offset_applied": True}, 1e-4, 0.0),  # already applied
    ],
)
def test_sentinel2_processing_baseline_offset(baseline, hint, extra, scale, offset) -> None:
    props = {"s2:processing_baseline": baseline, RASTER_PROPERTY: {"B04": hint}, **extra}
    cal = calibration_for("B04", props)
    assert cal.scale == pytest.approx(scale) and cal.offset == pytest.approx(offset)
    a = np.array([0.0, 1000.0, 11000.0], np.float32)  # stored DNs
    if offset:
        np.testing.assert_allclose(cal.apply(a.copy()), [-0.1, 0.0, 1.0], atol=1e-6)


def test_baseline_rules_apply_to_s2_reflectance_bands_only() -> None:
    props = {"s2:processing_baseline": "05.09"}
    assert calibration_for("SCL", props).scale == 1.0
    assert calibration_for("VV", props).scale == 1.0
    assert calibration_for("B04", props, integer=False).scale == 1.0  # floats are not DNs


def test_processing_baseline_parsing() -> None:
    assert processing_baseline("04.00") == (4, 0)
    assert processing_baseline("N0509") == (5, 9)
    assert processing_baseline("0400") == (4, 0)
    assert processing_baseline(4.0) == (4, 0)
    assert processing_baseline(5.09) == (5, 9)
    assert processing_baseline("later") is None and processing_baseline(None) is None


def test_sar_linear_to_db() -> None:
    assert calibration_for("VV", {}).to_db is None  # dB as stored
    assert calibration_for("VV", {SAR_SCALE_PROPERTY: "linear"}).to_db == "power"
    assert calibration_for("VH", {SAR_SCALE_PROPERTY: {"VV": "linear", "VH": "db"}}).to_db is None
    assert calibration_for("VV", {RASTER_PROPERTY: {"VV": {"unit": "linear power"}}}).to_db == "power"
    assert calibration_for("HH", {}, file_unit="intensity").to_db == "power"
    assert calibration_for("HH", {}, file_unit="amplitude").to_db == "amplitude"
    assert calibration_for("B04", {SAR_SCALE_PROPERTY: "linear"}).to_db is None  # optical: never
    with pytest.raises(SpecError):
        calibration_for("VV", {SAR_SCALE_PROPERTY: "gamma"})
    a = np.array([1.0, 0.1, 0.0, -1.0, np.nan], np.float32)
    np.testing.assert_allclose(BandCalibration(to_db="power").apply(a.copy()), [0, -10, np.nan, np.nan, np.nan])
    np.testing.assert_allclose(BandCalibration(to_db="amplitude").apply(np.array([0.1], np.float32)), [-20])


# --------------------------------------------------------------------------------------------------
# Paths and S3 settings


def test_gdal_path() -> None:
    assert gdal_path("/data/a.tif") == "/data/a.tif"
    assert gdal_path("relative/a.tif") == "relative/a.tif"
    assert gdal_path("file:///data/my%20scene/a.tif") == "/data/my scene/a.tif"
    assert gdal_path("s3://bucket/scenes/a.tif") == "/vsis3/bucket/scenes/a.tif"
    assert gdal_path("https://example.org/a.tif") == "/vsicurl/https://example.org/a.tif"
    assert gdal_path("/vsizip//data/a.zip/a.tif") == "/vsizip//data/a.zip/a.tif"
    with pytest.raises(ValueError, match="unsupported"):
        gdal_path("ftp://example.org/a.tif")


def test_gdal_s3_options_from_aws_variables(tmp_path) -> None:
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:8333", "AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK",
           "AWS_REGION": "eu-west-1"}
    options, creds = gdal_s3_options(env)
    assert options == {"AWS_S3_ENDPOINT": "127.0.0.1:8333", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE",
                       "AWS_REGION": "eu-west-1"}
    assert creds == {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK"}
    options, _ = gdal_s3_options({"AWS_ENDPOINT_URL": "https://s3.example.org"})
    assert options["AWS_HTTPS"] == "YES" and options["AWS_S3_ENDPOINT"] == "s3.example.org"
    # explicit GDAL settings are left alone; plain AWS: nothing to derive
    options, _ = gdal_s3_options({"AWS_ENDPOINT_URL": "http://h:1", "AWS_VIRTUAL_HOSTING": "TRUE"})
    assert "AWS_VIRTUAL_HOSTING" not in options
    assert gdal_s3_options({}) == ({}, {})
    # a mounted Secret folder, as the store reads it
    (tmp_path / "AWS_ACCESS_KEY_ID").write_text("from-secret\n")
    (tmp_path / "AWS_ENDPOINT_URL").write_text("http://10.0.0.1:9000")
    options, creds = gdal_s3_options({"EARTHOPS_STORE_CREDENTIALS_DIR": str(tmp_path)})
    assert options["AWS_S3_ENDPOINT"] == "10.0.0.1:9000" and creds["AWS_ACCESS_KEY_ID"] == "from-secret"
    with pytest.raises(SpecError):
        gdal_s3_options({"EARTHOPS_STORE_CREDENTIALS_DIR": str(tmp_path / "missing")})


def test_gdal_message_walks_the_chain() -> None:
    try:
        try:
            raise RuntimeError("TIFFReadEncodedStrip() failed")
        except RuntimeError as inner:
            raise OSError("Read failed. See previous exception for details.") from inner
    except OSError as exc:
        assert gdal_message(exc) == "TIFFReadEncodedStrip() failed"
