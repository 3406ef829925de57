"""Deterministic synthetic Earth-observation data for the EODataset pipeline (``source.sample``).

Two generators, each writing a self-contained static STAC catalog (through
:mod:`earthops_runtime.stac.conventions`, so they speak the store's one STAC dialect):

``synthetic-s1-iceberg`` -- :func:`generate_s1_iceberg`
    Sentinel-1 ship-vs-iceberg chips like the Statoil/C-CORE (Kaggle) data of the Hopsworks paper:
    ``chip_size`` x ``chip_size`` px, HH and HV backscatter in dB, one 2-band float32 GeoTIFF per chip
    (asset ``backscatter``: band 1 HH, band 2 HV, as its band descriptions and ``sar:polarizations``
    say; nodata NaN), 10 m pixels in UTM 22N (EPSG:32622) off Newfoundland and southern Labrador
    ("Iceberg Alley"), chips on a non-overlapping grid. Per item: ``is_iceberg`` (0 ship, 1 iceberg;
    chips come in ship/iceberg pairs, so classes balance), ``sar:incidence_angle`` =
    ``incidence_angle``, the acquisition datetime; EW mode, GRD, C band.

    Calibrated to be as hard as the real challenge (docs/datasets.md, "The ship/iceberg task", gives
    the real figures matched and their sources): incidence angles over the real chips' range
    (24.7-45.9 deg, skewed to far range, mean ~39); sea clutter whose HH falls with incidence (about
    -17.5 dB at 30 deg, -21 dB at 40, plus a sea-state offset and a faint swell/wind modulation) with HV
    ~6 dB below, near the EW noise floor, so chip means sit near the real ones (HH ~-21, HV ~-27 dB);
    multiplicative gamma speckle with 3-5 looks. Ships: point scatterers along a hull of 3.5-18 px
    through a sinc^2 impulse response (cross-shaped sidelobes), peak HH ~+3 dB (sd 5.5), HV ~7.5 dB
    below. Icebergs: irregular rounded distributed targets (radius 2-15 px, median 4), textured, a
    brighter near-range face and a faint far-range shadow, mean HH ~-4 dB (sd 5), HV ~9 dB below;
    a third have bright facets that image like a ship's scatterers. What makes it hard, by constants
    of this module: a fifth of the targets are small (a short ship, a growler or bergy bit: 1-3
    point scatterers either way, told apart only by brightness and cross-polarisation distributions
    that overlap), about one chip in eight has brash ice drifting partly over the target (brighter
    clutter with point returns, the target's return partly absorbed), and some targets are cut by the
    chip's edge; targets brighten less with incidence than the sea darkens, so contrast depends on
    the angle. The classes overlap on every hand-made feature (peak, HV-HH at the peak, bright-pixel
    count): iceberg-cnn at width 0.25 trained on 1,280 chips for 15 epochs reaches ~90 % validation
    accuracy at learning rate 1e-3 and ~77 % at 1e-4 (generator version 2; docs/datasets.md).

``synthetic-s2-landcover`` -- :func:`generate_s2_landcover`
    Sentinel-2 L2A scenes of ``size`` x ``size`` px at 10 m in UTM (EPSG:326xx; eight European places,
    every scene its own footprint), the 12 L2A bands as separate COGs at native resolution (10 m: B02
    B03 B04 B08; 20 m: B05 B06 B07 B8A B11 B12; 60 m: B01 B09), uint16 DN with the processing-baseline
    04.00 convention (DN = reflectance * 10000 + 1000, nodata 0; ``raster:bands`` scale 0.0001 offset
    -0.1; item ``s2:processing_baseline`` "05.10"), a ``labels`` COG (uint8 class index into
    :data:`S2_CLASSES`, 10 m, nodata 255), a ``clouds`` COG (uint8 0/1, 10 m; ``eo:cloud_cover`` on the
    item) when ``cloud_fraction > 0``, and a slanted nodata swath-edge strip on every third scene
    (index 1, 4, 7, ...: all bands nodata 0, labels 255, no clouds there).

    The class map is the arg-max of per-class smooth random fields (cubic B-spline noise, two octaves,
    class-specific length scales: large lakes, compact towns) biased by each place's land-cover mix;
    cropland is cut into rectangular parcels. Each class mixes two physically plausible endmember
    spectra (clear/turbid water, dense conifer/broadleaf forest, green/dry grass, green crop/harvested,
    concrete/bright roofs, soil/sand) by a smooth condition field (per parcel on cropland), times a
    shared per-pixel texture (strong on urban, weak on water), plus per-band sensor noise. Coarse
    bands are area averages of the 10 m reflectance (mixed pixels at class edges); clouds are a
    smooth thresholded field that covers ``cloud_fraction`` of the swath and brightens every band.

Determinism: every scene / chip draws from its own ``numpy.random.default_rng`` stream, a
``SeedSequence(seed, spawn_key=(generator, purpose, index, ...))``, so chip ``i`` of seed ``s`` does not
depend on ``count``, on the order of generation or on threads: the same seed gives byte-identical
arrays (on one platform: numpy's SIMD transcendental functions and BLAS may differ in the last bit
between CPU families), and different seeds give different data. Bump :data:`GENERATOR_VERSION` whenever
the output for a given (name, count, seed) changes: cached catalogs are keyed by it.

Cache (:func:`synthetic_catalog`): ``<samples cache>/<name>-n<count>-s<seed>-v<version>/`` under
:func:`earthops_runtime.cache.default_cache_dir`, built like the BigEarthNet entries -- in a hidden
temporary folder beside it, under an exclusive file lock, renamed into place with its marker
(``.earthops-cache.json``: identity plus every file and its size) already inside; a killed build leaves
only a temporary folder, removed by the next build; a valid entry is returned without taking the lock.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine

from earthops_runtime.cache import cached_entry, default_cache_dir, valid
from earthops_runtime.stac import conventions as stac

__all__ = [
    "GENERATOR_VERSION",
    "S1_CLASSES",
    "S1_COLLECTION",
    "S2_CLASSES",
    "S2_CLOUD_FRACTION",
    "S2_COLLECTION",
    "SYNTHETIC_NAMES",
    "generate_s1_iceberg",
    "generate_s2_landcover",
    "synthetic_catalog",
]

#: Version of the generators' output. Bump it whenever the bytes for a given (name, count, seed)
#: change: cache entries carry it in their name and marker, so old entries are never reused.
GENERATOR_VERSION = 2

S1_CLASSES: tuple[str, ...] = ("ship", "iceberg")
#: Land-cover classes in label index order (the ``labels`` raster holds these indices).
S2_CLASSES: tuple[str, ...] = ("water", "forest", "grassland", "cropland", "urban", "bare_soil")

S1_COLLECTION = "synthetic-s1-iceberg"
S2_COLLECTION = "synthetic-s2-landcover"
SYNTHETIC_NAMES: tuple[str, ...] = (S1_COLLECTION, S2_COLLECTION)
#: Item / collection property listing the class names in label index order.
CLASSES_PROPERTY = "earthops:classes"
#: Cloud fraction of the scenes :func:`synthetic_catalog` generates for ``synthetic-s2-landcover``
#: (exercises the cloud-mask asset and the chips' cloud drop rule).
S2_CLOUD_FRACTION = 0.1
S2_SCENE_SIZE = 1098

S2_PROCESSING_BASELINE = "05.10"
LABELS_NODATA = 255
_LICENSE = "CC0-1.0"
_PROVIDERS = (pystac.Provider("earthops (synthetic data generator)", roles=[pystac.ProviderRole.PRODUCER]),)

# Stream kinds of the seed sequences (first element of the spawn key): never reuse a number.
_S1, _S2 = 1, 2


def _rng(seed: int, *key: int) -> np.random.Generator:
    """The random stream of one purpose of one scene/chip: independent of every other stream."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(int(k) for k in key)))


def _check_args(count: int, seed: int) -> None:
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


# ==================================================================================================
# Sentinel-1 ship vs iceberg

S1_EPSG = 32622  # UTM 22N: Grand Banks, north-east Newfoundland shelf, southern Labrador Sea
S1_RESOLUTION = 10.0
#: Area the chips are spread over (upper-left corner, extent in metres): all at sea, from ~46 N
#: (east of the Avalon peninsula) to ~52.8 N (Labrador Sea), ~52.2 W to ~48.6 W.
_S1_AREA_WEST, _S1_AREA_NORTH = 420_000.0, 5_850_000.0
_S1_AREA_WIDTH, _S1_AREA_HEIGHT = 260_000.0, 600_000.0
_S1_GAP_M = 250.0  # between neighbouring chips
_S1_SEASON_START = datetime(2017, 3, 20, tzinfo=UTC)  # iceberg season, both Sentinel-1 satellites up
_S1_SEASON_DAYS = 140
#: Incidence angles: the range of the Statoil/C-CORE training chips (about 24.7-45.9 deg), skewed to far
#: range like theirs (mean about 39 deg): 24.7 + 21.2 x Beta(3, 1.4).
_S1_INCIDENCE = (24.7, 45.9)
_S1_INCIDENCE_BETA = (3.0, 1.4)
#: How hard the task is (see docs/datasets.md, "The ship/iceberg task"): the fraction of targets that
#: are a few point scatterers whatever their class, of chips with brash ice partly over the target, of
#: targets cut by the chip's edge, and of icebergs with bright facets that image like a ship.
_S1_SMALL_TARGET = 0.2
_S1_ICE_CLUTTER = 0.12
_S1_EDGE_CUT = 0.08
_S1_ICEBERG_FACETS = 0.35
_S1_ASSET = "backscatter"
_S1_POLS = ("HH", "HV")
_S1_CRS = CRS.from_epsg(S1_EPSG)


@dataclass(frozen=True)
class _S1Layout:
    """Chip ``i`` -> a cell of a grid over the area (a golden-ratio permutation: spread out, no two
    chips in one cell while ``count`` <= cells; beyond that a later pass a year on)."""

    chip_size: int
    cols: int
    rows: int
    multiplier: int
    shift: int

    @classmethod
    def for_seed(cls, seed: int, chip_size: int) -> _S1Layout:
        pitch = chip_size * S1_RESOLUTION + _S1_GAP_M
        cols, rows = int(_S1_AREA_WIDTH // pitch), int(_S1_AREA_HEIGHT // pitch)
        cells = cols * rows
        if cells < 1:
            raise ValueError(f"chip_size {chip_size} is too large for the synthetic S1 area")
        multiplier = max(1, int(cells * 0.6180339887))
        while math.gcd(multiplier, cells) != 1:
            multiplier += 1
        shift = int(_rng(seed, _S1, 0).integers(cells))
        return cls(chip_size, cols, rows, multiplier, shift)

    @property
    def cells(self) -> int:
        return self.cols * self.rows

    def place(self, i: int) -> tuple[Affine, int]:
        cell = (i * self.multiplier + self.shift) % self.cells
        row, col = divmod(cell, self.cols)
        pitch = self.chip_size * S1_RESOLUTION + _S1_GAP_M
        west = _S1_AREA_WEST + col * pitch
        north = _S1_AREA_NORTH - row * pitch
        return Affine(S1_RESOLUTION, 0.0, west, 0.0, -S1_RESOLUTION, north), i // self.cells


def _s1_is_iceberg(seed: int, i: int) -> int:
    """Chips come in pairs, one ship and one iceberg in random order: balanced for any count."""
    first = int(_rng(seed, _S1, 1, i // 2).random() < 0.5)
    return first if i % 2 == 0 else 1 - first


def _sinc2_psf(d: np.ndarray, width: float, sidelobe_gain: float) -> np.ndarray:
    """Intensity impulse response along one axis: sinc^2 main lobe, sidelobes scaled by a gain
    (Sentinel-1 processing weights them down, by how much varies)."""
    p = np.sinc(d / width) ** 2
    return np.where(np.abs(d) < width, p, p * sidelobe_gain)


def _point_targets(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, sy: np.ndarray, sx: np.ndarray,
                   amp_db: np.ndarray, amp_hv_db: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HH and HV intensity of point scatterers at (sy, sx) imaged through a sinc^2 impulse response
    (the cross-shaped range/azimuth sidelobes of bright targets, weighted down by a varying amount)."""
    width = float(rng.uniform(0.8, 1.2))
    gain = 10.0 ** (-rng.uniform(0.0, 8.0) / 10.0)
    py = _sinc2_psf(y[:, :1] - sy[None, :], width, gain)  # (n, k)
    px = _sinc2_psf(x[:1, :].T - sx[None, :], width, gain)  # (n, k)
    return (py * 10.0 ** (amp_db / 10.0)) @ px.T, (py * 10.0 ** (amp_hv_db / 10.0)) @ px.T


def _blobs(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, cy: float, cx: float, count: int,
           spread: float, scale: float) -> np.ndarray:
    """A smooth field in [0, 1]: ``count`` Gaussian blobs of size ``scale`` around (cy, cx)."""
    field = np.zeros_like(x)
    for _ in range(count):
        by, bx = cy + rng.normal(0, spread), cx + rng.normal(0, spread)
        field += np.exp(-((y - by) ** 2 + (x - bx) ** 2) / (2 * (scale * rng.uniform(0.6, 1.4)) ** 2))
    return field / max(float(field.max()), 1e-12)


def s1_chip_arrays(seed: int, i: int, chip_size: int = 75) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """HH and HV (dB, float32, ``chip_size`` square) of chip ``i`` and its truth (label, angle, shape,
    whether the target is small, occluded by ice clutter or cut by the chip's edge)."""
    n = chip_size
    is_iceberg = _s1_is_iceberg(seed, i)
    rng = _rng(seed, _S1, 2, i)
    y, x = np.mgrid[0:n, 0:n].astype(np.float64)

    # Sea clutter: backscatter falling with incidence angle, a sea-state offset, faint swell/wind rows,
    # the slight change of incidence across the chip (range = x).
    theta = _S1_INCIDENCE[0] + (_S1_INCIDENCE[1] - _S1_INCIDENCE[0]) * float(rng.beta(*_S1_INCIDENCE_BETA))
    hh_sea_db = -17.5 - 0.35 * (theta - 30.0) + rng.normal(0.0, 1.5)
    hv_sea_db = hh_sea_db - rng.uniform(4.5, 7.5)  # HV of the sea lies near the EW noise floor
    looks = float(rng.uniform(3.0, 5.0))
    k = 2 * np.pi / rng.uniform(8.0, 30.0)
    direction = rng.uniform(0.0, np.pi)
    swell_db = rng.uniform(0.1, 1.2) * np.sin(k * (x * np.cos(direction) + y * np.sin(direction))
                                              + rng.uniform(0, 2 * np.pi))
    swell_db -= 0.35 * 0.1 * (x - n / 2) * S1_RESOLUTION / 1000.0  # ~-0.035 dB per km of range
    sea_hh = 10.0 ** ((hh_sea_db + swell_db) / 10.0)
    sea_hv = 10.0 ** ((hv_sea_db + 0.5 * swell_db) / 10.0)

    # Where the target sits: near the centre (the chips were cut around detections), or, for a few,
    # near the edge so that part of it lies outside the chip.
    edge_cut = bool(rng.random() < _S1_EDGE_CUT)
    if edge_cut:
        along, inward = float(rng.uniform(0.2 * n, 0.8 * n)), float(rng.uniform(-1.0, 3.0))
        side = int(rng.integers(4))
        cy, cx = [(inward, along), (n - 1 - inward, along), (along, inward), (along, n - 1 - inward)][side]
    else:
        lo, hi = 0.3 * n, 0.7 * n - 1
        cy = float(np.clip((n - 1) / 2 + rng.normal(0.0, 0.06 * n), lo, hi))
        cx = float(np.clip((n - 1) / 2 + rng.normal(0.0, 0.06 * n), lo, hi))
    # Small targets (a short ship, a growler or bergy bit) are a few point scatterers to the radar, of
    # either class: only their brightness and cross-polarisation tell them apart, and those overlap.
    small = bool(rng.random() < _S1_SMALL_TARGET)
    # Targets brighten less with incidence than the sea darkens: contrast grows with the angle.
    angle_db = -0.12 * (theta - 38.0)
    truth: dict[str, Any] = {"is_iceberg": is_iceberg, "incidence_angle": theta, "center": (cy, cx),
                             "small": small, "edge_cut": edge_cut}

    if small:
        count = int(rng.integers(1, 4))
        extent = float(rng.uniform(0.5, 2.0))
        sy = cy + rng.normal(0, extent / 2, count)
        sx = cx + rng.normal(0, extent / 2, count)
        peak_db = float(np.clip(rng.normal(-3.0 if is_iceberg else 1.5, 5.0), -14.0, 16.0)) + angle_db
        amp_db = peak_db - rng.exponential(3.0, count)
        amp_db[0] = peak_db
        xpol_db = float(np.clip(rng.normal(9.5 if is_iceberg else 7.0, 3.0), 2.0, 16.0))
        target_hh, target_hv = _point_targets(rng, y, x, sy, sx, amp_db,
                                              amp_db - xpol_db - rng.normal(0.0, 1.5, count))
        target_looks = 10.0
        truth.update(peak_db=peak_db, xpol_db=xpol_db)
    elif not is_iceberg:
        # Ship: point scatterers along the hull (and its sides when beamy) through a sinc^2 response.
        length = float(rng.uniform(3.5, 18.0))
        beam = float(rng.uniform(1.0, 3.0))
        heading = rng.uniform(0.0, np.pi)
        n_along = max(2, round(length / 1.5))
        along = np.linspace(-length / 2, length / 2, n_along)
        rows_across = [0.0] if beam < 1.6 else [-beam / 3, beam / 3]
        s_ = np.concatenate([along + rng.normal(0, 0.3, n_along) for _ in rows_across])
        c = np.concatenate([np.full(n_along, off) for off in rows_across]) + rng.normal(0, 0.2, s_.size)
        sy = cy + s_ * np.sin(heading) + c * np.cos(heading)
        sx = cx + s_ * np.cos(heading) - c * np.sin(heading)
        peak_db = float(np.clip(rng.normal(3.0, 5.5), -12.0, 20.0)) + 0.3 * angle_db
        amp_db = peak_db - rng.exponential(4.0, s_.size)
        amp_db[rng.integers(s_.size)] = peak_db
        xpol_db = float(np.clip(rng.normal(7.5, 3.0), 2.0, 15.0))
        target_hh, target_hv = _point_targets(rng, y, x, sy, sx, amp_db,
                                              amp_db - xpol_db - rng.normal(0.0, 1.5, s_.size))
        target_looks = 10.0  # dominated by a few strong scatterers: fluctuates less than clutter
        truth.update(length_px=length, beam_px=beam, peak_db=peak_db, xpol_db=xpol_db)
    else:
        # Iceberg: an irregular rounded blob, textured, brighter face towards the radar (near range,
        # small x), a faint shadow in far range; some have bright facets that image like a ship's
        # scatterers (with sidelobes).
        radius = float(np.clip(rng.lognormal(np.log(4.0), 0.45), 2.0, 15.0))
        elong = float(rng.uniform(1.0, 2.2))
        orient = rng.uniform(0.0, np.pi)
        dy, dx = y - cy, x - cx
        u = dx * np.cos(orient) + dy * np.sin(orient)
        v = (-dx * np.sin(orient) + dy * np.cos(orient)) * elong
        dist = np.hypot(u, v)
        phi = np.arctan2(v, u)
        edge = np.ones_like(phi)
        for harmonic in range(2, 6):
            amplitude = rng.uniform(0.0, 0.18 / (harmonic - 1))
            edge += amplitude * np.cos(harmonic * phi + rng.uniform(0, 2 * np.pi))
        inside = 1.0 / (1.0 + np.exp(-(radius * edge - dist) / 0.7))
        level_db = float(np.clip(rng.normal(-4.0, 5.0), -18.0, 8.0)) + angle_db
        texture_db = 2.0 * (_blobs(rng, y, x, cy, cx, int(rng.integers(3, 7)), radius / 2, radius / 3) - 0.5) \
            * rng.normal(0, 2.0)
        face_db = rng.uniform(1.0, 4.0) * np.clip(-dx / radius, 0.0, 1.0)
        ice_db = level_db + texture_db + face_db
        xpol_db = float(np.clip(rng.normal(9.0, 3.0), 3.0, 16.0))
        target_hh = inside * 10.0 ** (ice_db / 10.0)
        target_hv = inside * 10.0 ** ((ice_db - xpol_db - 0.5 * texture_db) / 10.0)
        if rng.random() < _S1_ICEBERG_FACETS:
            facets = int(rng.integers(1, 4))
            fy, fx = cy + rng.normal(0, radius / 3, facets), cx + rng.normal(0, radius / 3, facets)
            facet_db = level_db + rng.uniform(4.0, 12.0, facets)
            fh, fv = _point_targets(rng, y, x, fy, fx, facet_db, facet_db - xpol_db + rng.normal(0, 1.5, facets))
            target_hh, target_hv = target_hh + fh, target_hv + fv
        shift = int(rng.integers(1, 4))
        shadow = np.zeros_like(inside)
        shadow[:, shift:] = inside[:, :-shift]
        shadow *= 1.0 - inside
        dim = 1.0 - rng.uniform(0.2, 0.7) * shadow
        sea_hh *= dim
        sea_hv *= dim
        target_looks = looks  # distributed target: speckled like the sea
        truth.update(radius_px=radius, level_db=level_db, xpol_db=xpol_db)

    # Occlusion: brash ice and growlers drifting over part of the chip, partly over the target too:
    # distributed clutter brighter than the sea, and a sprinkle of point returns in it.
    occluded = bool(rng.random() < _S1_ICE_CLUTTER)
    truth["occluded"] = occluded
    if occluded:
        field = _blobs(rng, y, x, cy + rng.normal(0, 6), cx + rng.normal(0, 6), int(rng.integers(2, 6)),
                       n / 6, n / 10)
        cover = np.clip((field - rng.uniform(0.3, 0.6)) / 0.15, 0.0, 1.0)
        ice_hh_db = float(rng.normal(-13.0, 2.5))
        ice_hh = 10.0 ** (ice_hh_db / 10.0) * cover
        ice_hv = 10.0 ** ((ice_hh_db - rng.uniform(6.0, 9.0)) / 10.0) * cover
        bits = int(rng.integers(3, 15))
        by, bx = rng.uniform(0, n, bits), rng.uniform(0, n, bits)
        keep = cover[np.clip(by.astype(int), 0, n - 1), np.clip(bx.astype(int), 0, n - 1)] > 0.5
        if keep.any():
            bit_db = ice_hh_db + rng.uniform(3.0, 12.0, int(keep.sum()))
            gh, gv = _point_targets(rng, y, x, by[keep], bx[keep], bit_db, bit_db - rng.uniform(6.0, 11.0, bit_db.size))
            ice_hh, ice_hv = ice_hh + gh, ice_hv + gv
        # the ice hides what lies under it: the target's return is partly absorbed, the sea's replaced
        target_hh *= 1.0 - 0.6 * cover
        target_hv *= 1.0 - 0.6 * cover
        sea_hh = sea_hh * (1.0 - cover) + ice_hh
        sea_hv = sea_hv * (1.0 - cover) + ice_hv

    def speckle(shape_looks: float) -> np.ndarray:
        return rng.gamma(shape_looks, 1.0 / shape_looks, (n, n))

    hh = sea_hh * speckle(looks) + target_hh * speckle(target_looks)
    hv = sea_hv * speckle(looks) + target_hv * speckle(target_looks)
    hh_db = np.clip(10.0 * np.log10(np.maximum(hh, 1e-5)), -50.0, 29.9).astype(np.float32)
    hv_db = np.clip(10.0 * np.log10(np.maximum(hv, 1e-5)), -50.0, 29.9).astype(np.float32)
    return hh_db, hv_db, truth


def _write_s1_chip(path: Path, hh: np.ndarray, hv: np.ndarray, transform: Affine) -> None:
    n = hh.shape[0]
    # Uncompressed: 45 KB a chip, and speckle hardly compresses (deflate saves ~25% at 3x the time).
    with rasterio.open(path, "w", driver="GTiff", width=n, height=n, count=2, dtype="float32",
                       crs=_S1_CRS, transform=transform, nodata=float("nan"), interleave="band") as ds:
        ds.write(np.stack([hh, hv]))
        for b, pol in enumerate(_S1_POLS, start=1):
            ds.set_band_description(b, pol)
        ds.units = ("dB", "dB")


def _s1_item(out: Path, seed: int, i: int, layout: _S1Layout) -> pystac.Item:
    item_id = f"s1-iceberg-s{seed}-{i:06d}"
    folder = out / S1_COLLECTION / item_id
    folder.mkdir(parents=True, exist_ok=True)
    hh, hv, truth = s1_chip_arrays(seed, i, layout.chip_size)
    transform, revisit = layout.place(i)
    path = folder / f"{item_id}.tif"
    _write_s1_chip(path, hh, hv, transform)

    rng = _rng(seed, _S1, 3, i)
    day = int(rng.integers(_S1_SEASON_DAYS))
    # Sentinel-1 passes over Newfoundland: descending ~09:35 UTC, ascending ~21:30 UTC.
    hour, minute = (9, 35) if rng.random() < 0.5 else (21, 30)
    when = (_S1_SEASON_START.replace(hour=hour, minute=minute)
            + timedelta(days=day + 365 * revisit, seconds=int(rng.integers(0, 300))))
    angle = round(truth["incidence_angle"], 4)
    props = {
        "platform": "sentinel-1a" if rng.random() < 0.5 else "sentinel-1b",
        "constellation": "sentinel-1", "instruments": ["c-sar"], "gsd": S1_RESOLUTION,
        "is_iceberg": int(truth["is_iceberg"]), "sar:incidence_angle": angle, "incidence_angle": angle,
        CLASSES_PROPERTY: list(S1_CLASSES),
        "earthops:generator": f"{S1_COLLECTION}/{GENERATOR_VERSION}", "earthops:seed": int(seed),
    }
    spec = stac.RasterAssetSpec(
        key=_S1_ASSET, path=path, title="HH and HV backscatter (sigma0), dB", roles=("data", "backscatter"),
        polarizations=_S1_POLS, unit="dB", nodata=float("nan"))
    item = stac.item_from_rasters(item_id, [spec], datetime=when, properties=props, statistics=True)
    stac.apply_sentinel1_sar(item, _S1_POLS, instrument_mode="EW", product_type="GRD")
    # Name the file's bands (STAC 1.1 core ``bands``, in file order, beside ``raster:bands``), so a
    # reader maps the spec's ``HH`` / ``HV`` to band 1 / 2 of this one asset.
    item.assets[_S1_ASSET].extra_fields["bands"] = [
        {"name": pol, "description": stac.S1_POLARIZATIONS[pol]} for pol in _S1_POLS]
    return item


def generate_s1_iceberg(out_dir: Path, *, count: int, seed: int, chip_size: int = 75) -> Path:
    """Write ``count`` synthetic Sentinel-1 ship/iceberg chips and their STAC catalog under ``out_dir``
    (one collection, ``synthetic-s1-iceberg``; one item and one 2-band GeoTIFF per chip).
    Returns the path of ``catalog.json``."""
    _check_args(count, seed)
    if not isinstance(chip_size, (int, np.integer)) or chip_size < 8:
        raise ValueError(f"chip_size must be an integer >= 8, got {chip_size!r}")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    layout = _S1Layout.for_seed(seed, int(chip_size))

    # One thread: per chip the work is small numpy arrays, two GDAL opens and pystac objects, all mostly
    # under the GIL (threads measured slower). One GDAL environment for all files, not one per open.
    with rasterio.Env():
        items = [_s1_item(out, seed, i, layout) for i in range(count)]
    icebergs = sum(it.properties["is_iceberg"] for it in items)
    collection = stac.new_collection(
        S1_COLLECTION, title="Synthetic Sentinel-1 ship vs iceberg chips",
        description=(
            f"{count} synthetic Sentinel-1 EW GRD chips of {chip_size}x{chip_size} px at 10 m (HH and HV "
            f"backscatter in dB, one 2-band GeoTIFF per chip) off Newfoundland and Labrador, like the "
            f"Statoil/C-CORE iceberg classifier data and calibrated to be as hard: sea clutter with gamma "
            f"speckle falling with incidence angle (24.7-45.9 deg), ships (elongated, cross-shaped sidelobes, "
            f"stronger HV) and icebergs (larger, diffuse, weaker HV), with small, ice-occluded and edge-cut "
            f"targets whose classes overlap. "
            f"Label: `is_iceberg` (0 ship, 1 iceberg). Generated by earthops (seed {seed}, generator "
            f"version {GENERATOR_VERSION})."),
        items=items, license=_LICENSE, providers=_PROVIDERS,
        keywords=["sentinel-1", "sar", "synthetic", "ship", "iceberg", "classification"],
        summaries={
            "platform": sorted({it.properties["platform"] for it in items}),
            "constellation": ["sentinel-1"], "instruments": ["c-sar"], "gsd": [S1_RESOLUTION],
            "proj:code": [f"EPSG:{S1_EPSG}"],
            "sar:instrument_mode": ["EW"], "sar:frequency_band": ["C"], "sar:polarizations": list(_S1_POLS),
            "sar:product_type": ["GRD"],
            "sar:incidence_angle": {"minimum": _S1_INCIDENCE[0], "maximum": _S1_INCIDENCE[1]},
            "is_iceberg": [0, 1], CLASSES_PROPERTY: list(S1_CLASSES),
            "earthops:class_counts": {"ship": count - icebergs, "iceberg": icebergs},
        })
    return _write(collection, out, "synthetic-s1-iceberg-catalog",
                  "Synthetic Sentinel-1 ship vs iceberg chips")


# ==================================================================================================
# Sentinel-2 land cover

S2_BAND_NAMES: tuple[str, ...] = stac.S2_L2A_BAND_NAMES  # B01 ... B12 without B10
_DN_OFFSET = 1000  # processing baseline >= 04.00: DN = reflectance * 10000 + 1000

#: Endmember surface reflectance per class (two each; a condition field mixes them) for
#: B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12.
_SPECTRA = np.array([
    [  # water: clear, turbid -- dark in NIR/SWIR
        [0.050, 0.045, 0.040, 0.025, 0.020, 0.015, 0.012, 0.010, 0.009, 0.006, 0.004, 0.003],
        [0.070, 0.070, 0.085, 0.070, 0.060, 0.040, 0.035, 0.030, 0.028, 0.020, 0.010, 0.008],
    ],
    [  # forest: dense conifer, broadleaf -- red edge, high NIR, low red
        [0.020, 0.025, 0.045, 0.025, 0.070, 0.220, 0.280, 0.300, 0.310, 0.300, 0.150, 0.070],
        [0.025, 0.030, 0.060, 0.035, 0.100, 0.280, 0.350, 0.380, 0.400, 0.380, 0.190, 0.090],
    ],
    [  # grassland: green, dry
        [0.040, 0.045, 0.080, 0.060, 0.120, 0.250, 0.290, 0.310, 0.320, 0.310, 0.240, 0.140],
        [0.060, 0.070, 0.100, 0.100, 0.150, 0.220, 0.250, 0.270, 0.280, 0.280, 0.300, 0.200],
    ],
    [  # cropland: green crop, harvested / bare field
        [0.030, 0.035, 0.070, 0.040, 0.110, 0.320, 0.400, 0.440, 0.460, 0.440, 0.250, 0.120],
        [0.070, 0.080, 0.110, 0.140, 0.170, 0.200, 0.220, 0.230, 0.240, 0.240, 0.320, 0.260],
    ],
    [  # urban: concrete/asphalt, bright roofs -- flat
        [0.100, 0.110, 0.120, 0.130, 0.140, 0.150, 0.160, 0.170, 0.170, 0.160, 0.180, 0.160],
        [0.160, 0.180, 0.200, 0.220, 0.230, 0.240, 0.250, 0.260, 0.260, 0.250, 0.270, 0.250],
    ],
    [  # bare soil: soil, sand -- rising to a bright SWIR
        [0.090, 0.100, 0.140, 0.190, 0.220, 0.240, 0.260, 0.270, 0.280, 0.280, 0.360, 0.320],
        [0.140, 0.160, 0.220, 0.280, 0.310, 0.330, 0.350, 0.360, 0.370, 0.370, 0.450, 0.400],
    ],
], dtype=np.float32)
#: Per-pixel texture (relative brightness standard deviation) per class.
_TEXTURE = np.array([0.03, 0.08, 0.05, 0.05, 0.15, 0.06], dtype=np.float32)
#: Length scale of each class's pattern, metres: large lakes, woods, fields, compact towns.
_CLASS_SCALE_M = np.array([2500.0, 1500.0, 800.0, 1500.0, 700.0, 1000.0])
#: Thick-cloud top-of-canopy reflectance (bright and flat in VIS/NIR, lower in B09 and SWIR).
_CLOUD = np.array([0.50, 0.50, 0.50, 0.50, 0.50, 0.50, 0.50, 0.50, 0.50, 0.42, 0.38, 0.30], dtype=np.float32)
#: Sensor noise (reflectance standard deviation) per band.
_NOISE = np.array([0.004, 0.003, 0.003, 0.003, 0.003, 0.003, 0.003, 0.003, 0.003, 0.004, 0.003, 0.003],
                  dtype=np.float32)


@dataclass(frozen=True)
class _Place:
    name: str
    epsg: int
    west: float  # upper-left corner of the place's area, metres (multiple of 60)
    north: float
    lon: float  # approximate longitude (overpass time)
    mix: tuple[float, ...]  # relative land-cover shares in S2_CLASSES order


_PLACES: tuple[_Place, ...] = (
    _Place("po-valley", 32632, 560_040, 5_050_020, 10.7, (0.05, 0.08, 0.12, 0.50, 0.18, 0.07)),
    _Place("beauce", 32631, 380_040, 5_380_020, 2.4, (0.03, 0.12, 0.15, 0.55, 0.10, 0.05)),
    _Place("brandenburg", 32633, 330_000, 5_880_000, 13.6, (0.12, 0.40, 0.15, 0.20, 0.08, 0.05)),
    _Place("andalusia", 32630, 250_020, 4_230_000, -4.9, (0.04, 0.12, 0.12, 0.30, 0.07, 0.35)),
    _Place("wielkopolska", 32633, 600_000, 5_850_000, 17.5, (0.06, 0.25, 0.15, 0.40, 0.10, 0.04)),
    _Place("finnish-lakeland", 32635, 380_040, 6_900_000, 26.1, (0.30, 0.50, 0.08, 0.06, 0.04, 0.02)),
    _Place("great-hungarian-plain", 32634, 330_000, 5_230_020, 19.7, (0.05, 0.10, 0.25, 0.45, 0.08, 0.07)),
    _Place("flanders", 32631, 540_000, 5_680_020, 4.6, (0.04, 0.10, 0.25, 0.30, 0.28, 0.03)),
)
_PLACE_EXTENT_M = 150_000.0
_S2_SEASON_START = datetime(2024, 4, 1, tzinfo=UTC)  # processing baseline 05.10 since December 2023
_S2_SEASON_DAYS = 180


def _native_shape(size: int, resolution: float) -> int:
    f = round(resolution / 10.0)
    return max(1, math.floor(size / f + 0.5))


def _bspline_matrix(n_out: int, cell: float, phase: float) -> np.ndarray:
    """(n_out, g) weights of a uniform cubic B-spline with knots every ``cell`` output pixels."""
    t = (np.arange(n_out) + 0.5) / cell + phase + 1.0
    i = np.floor(t).astype(np.int64)
    u = t - i
    w = np.stack([(1 - u) ** 3 / 6, (3 * u ** 3 - 6 * u ** 2 + 4) / 6,
                  (-3 * u ** 3 + 3 * u ** 2 + 3 * u + 1) / 6, u ** 3 / 6], axis=1)
    g = int(i.max()) + 3
    m = np.zeros((n_out, g), dtype=np.float64)
    rows = np.arange(n_out)
    for k in range(4):
        m[rows, i - 1 + k] = w[:, k]
    return m


def _smooth_field(rng: np.random.Generator, n: int, cell_px: float, detail: float = 0.4) -> np.ndarray:
    """A smooth random field on an ``n`` x ``n`` grid, unit standard deviation (float32): B-spline
    noise with knots every ``cell_px`` pixels plus an octave 4x finer weighted by ``detail``."""
    fine_cell = max(cell_px / 4.0, 2.0)
    by = _bspline_matrix(n, fine_cell, rng.uniform())
    bx = _bspline_matrix(n, fine_cell, rng.uniform())
    gy, gx = by.shape[1], bx.shape[1]
    # The coarse octave on the fine knots, then one upsampling of their sum to full resolution.
    cy = _bspline_matrix(gy, 4.0, rng.uniform())
    cx = _bspline_matrix(gx, 4.0, rng.uniform())
    coarse = cy @ rng.standard_normal((cy.shape[1], cx.shape[1])) @ cx.T
    knots = coarse / coarse.std() + detail * rng.standard_normal((gy, gx))
    field = (by.astype(np.float32) @ knots.astype(np.float32)) @ bx.T.astype(np.float32)
    std = float(field[:: max(1, n // 256), :: max(1, n // 256)].std())
    field /= np.float32(std if std > 0 else 1.0)
    return field


def _block_mean(a: np.ndarray, f: int, out: int) -> np.ndarray:
    """Area average of ``f`` x ``f`` blocks to an ``out`` x ``out`` grid (edge-padded or cropped).
    Sums of strided views in a fixed order: fast, and the same bits every time."""
    if f == 1:
        return a
    need = out * f
    n = a.shape[0]
    if need > n:
        a = np.pad(a, ((0, need - n), (0, need - n)), mode="edge")
    total = np.zeros((out, out), dtype=np.float32)
    for i in range(f):
        for j in range(f):
            total += a[i:need:f, j:need:f]
    total *= np.float32(1.0 / (f * f))
    return total


def _swath_edge(rng: np.random.Generator) -> tuple[int, float, float]:
    """A slanted nodata strip along one side of the scene (like the edge of the Sentinel-2 swath):
    ``(side, width, tilt)``, width and tilt in scene units."""
    width = float(rng.uniform(0.03, 0.12))
    return int(rng.integers(4)), width, float(rng.uniform(-width, width))


def _outside(edge: tuple[int, float, float] | None, n: int) -> np.ndarray | None:
    """Mask of the pixels (``n`` x ``n``, any resolution) beyond the swath edge, from pixel centres."""
    if edge is None:
        return None
    side, width, tilt = edge
    t = (np.arange(n, dtype=np.float64) + 0.5) / n
    across, along = {0: (t[None, :], t[:, None]), 1: (1 - t[None, :], t[:, None]),
                     2: (t[:, None], t[None, :]), 3: (1 - t[:, None], t[None, :])}[side]
    return across > 1.0 - width - tilt * (along - 0.5)


@dataclass
class _S2Scene:
    """Everything of one scene that all its bands share (10 m grids)."""

    index: int
    size: int
    place: _Place
    transform: Affine
    when: datetime
    platform: str
    classes: np.ndarray  # uint8 (size, size)
    brightness: np.ndarray  # float32: 1 + texture * z, per pixel
    condition: np.ndarray  # float32: brightness * endmember mix (0 first, 1 second)
    cloud_alpha: np.ndarray | None  # float32 cloud opacity, 0 where clear
    edge: tuple[int, float, float] | None
    #: Surface light left under the clouds (1 - 0.6 alpha); with the cloud's own light added, clouds
    #: brighten every band.
    cloud_keep: np.ndarray | None = dataclasses.field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.cloud_alpha is not None:
            self.cloud_keep = self.cloud_alpha * np.float32(-0.6)
            self.cloud_keep += np.float32(1.0)


def _s2_scene(seed: int, j: int, size: int, cloud_fraction: float) -> _S2Scene:
    """The layers of scene ``j`` that all its bands share. Every random layer has its own stream.
    (Computed in one thread: the smooth fields are BLAS products, and OpenBLAS called from several
    threads at once spins instead of working.)"""
    rng = _rng(seed, _S2, 0, j)
    place = _PLACES[(j + seed) % len(_PLACES)]
    slot = j // len(_PLACES)
    pitch = math.ceil((size * 10.0 + 2000.0) / 60.0) * 60.0
    per_row = max(1, int(_PLACE_EXTENT_M // pitch))
    revisit, cell = divmod(slot, per_row * per_row)
    row, col = divmod(cell, per_row)
    transform = Affine(10.0, 0.0, place.west + col * pitch, 0.0, -10.0, place.north - row * pitch)
    day = int(rng.integers(_S2_SEASON_DAYS)) + 5 * revisit
    overpass = timedelta(hours=10.5 - place.lon / 15.0, seconds=float(rng.integers(-240, 240)))
    when = (_S2_SEASON_START + timedelta(days=day) + overpass).replace(microsecond=0)
    platform = "sentinel-2a" if rng.random() < 0.5 else "sentinel-2b"
    shares = rng.dirichlet(np.asarray(place.mix) * 12.0 + 0.3)  # this scene's mix around the place's
    bias = 1.1 * np.log(shares / shares.max())
    edge = _swath_edge(_rng(seed, _S2, 4, j)) if j % 3 == 1 else None

    def class_field(c: int) -> np.ndarray:
        field = _smooth_field(_rng(seed, _S2, 1, j, c), size, _CLASS_SCALE_M[c] / 10.0)
        field += np.float32(bias[c])
        return field

    def condition_field() -> np.ndarray:
        # Endmember mix: smooth (water turbidity, forest type, grass dryness, urban fabric) ...
        field = _smooth_field(_rng(seed, _S2, 2, j), size, 60.0)
        field *= np.float32(0.25)
        field += np.float32(0.5)
        return np.clip(field, 0.0, 1.0, out=field)

    def cloud_field() -> np.ndarray:
        # Thresholded so that clouds cover ``cloud_fraction`` of the swath; none outside it.
        thick = _smooth_field(_rng(seed, _S2, 3, j), size, 150.0, detail=0.8)
        step = max(1, size // 512)
        sample = thick[::step, ::step]
        outside = _outside(edge, size)
        if outside is not None:
            sample = sample[~outside[::step, ::step]]
            thick[outside] = -np.inf
        thick -= np.float32(np.quantile(sample, 1.0 - cloud_fraction))
        thick *= np.float32(1.0 / 0.8)
        np.clip(thick, 0.0, 1.0, out=thick)
        alpha = np.sqrt(thick, out=thick)  # cloud opacity; > 0 exactly on the cloud mask
        alpha *= np.float32(0.95)
        return alpha

    def texture() -> np.ndarray:
        return _rng(seed, _S2, 5, j).standard_normal((size, size), dtype=np.float32)

    jobs: list[Callable[[], np.ndarray]] = [lambda c=c: class_field(c) for c in range(len(S2_CLASSES))]
    jobs += [condition_field, texture] + ([cloud_field] if cloud_fraction > 0 else [])
    results = (job() for job in jobs)  # lazily: one full-size field alive at a time besides the merge

    # Class map: arg-max of the per-class fields (ties to the lower index), merged in class order.
    best = next(results)
    classes = np.zeros((size, size), dtype=np.uint8)
    better = np.empty((size, size), dtype=bool)
    for c in range(1, len(S2_CLASSES)):
        field = next(results)
        np.greater(field, best, out=better)
        np.copyto(best, field, where=better)
        np.copyto(classes, np.uint8(c), where=better)
        del field
    del better
    del best
    condition = next(results)
    brightness = next(results)
    cloud_alpha = next(results) if cloud_fraction > 0 else None

    # ... or one value per rectangular parcel on cropland (bimodal: green crop or harvested).
    prng = _rng(seed, _S2, 6, j)
    heights = prng.integers(15, 50, size // 15 + 1)  # parcel edges, 150-500 m
    widths = prng.integers(15, 50, size // 15 + 1)
    parcels = prng.beta(0.6, 0.6, (heights.size, widths.size)).astype(np.float32)
    parcels = np.repeat(np.repeat(parcels, heights, axis=0)[:size], widths, axis=1)[:, :size]
    np.copyto(condition, parcels, where=classes == S2_CLASSES.index("cropland"))
    del parcels

    brightness *= _TEXTURE[classes]
    brightness += np.float32(1.0)
    condition *= brightness
    return _S2Scene(j, size, place, transform, when, platform, classes, brightness, condition, cloud_alpha,
                    edge)


def _s2_band(scene: _S2Scene, seed: int, b: int) -> tuple[np.ndarray, float]:
    """Band ``b`` (index into S2_BAND_NAMES) of a scene as uint16 DN at its native resolution."""
    name = S2_BAND_NAMES[b]
    resolution = float(stac.S2_BANDS_BY_NAME[name].resolution)
    # Reflectance in DN units (x 10000) throughout, in place where possible (big scenes).
    lo = _SPECTRA[:, 0, b] * np.float32(10000.0)
    diff = (_SPECTRA[:, 1, b] - _SPECTRA[:, 0, b]) * np.float32(10000.0)
    dn10 = np.take(lo, scene.classes, mode="clip")  # (no bounds-check pass: indices are < 6)
    dn10 *= scene.brightness
    tmp = np.take(diff, scene.classes, mode="clip")
    tmp *= scene.condition
    dn10 += tmp
    if scene.cloud_alpha is not None:
        dn10 *= scene.cloud_keep
        np.multiply(scene.cloud_alpha, _CLOUD[b] * np.float32(10000.0), out=tmp)
        dn10 += tmp
    del tmp
    f = round(resolution / 10.0)
    n = _native_shape(scene.size, resolution)
    dn = _block_mean(dn10, f, n)
    del dn10
    noise = _rng(seed, _S2, 7, scene.index, b).standard_normal((n, n), dtype=np.float32)
    noise *= _NOISE[b] * np.float32(10000.0)
    dn += noise
    del noise
    dn += np.float32(_DN_OFFSET + 0.5)  # + 0.5 then truncation: rounding (values are positive)
    np.clip(dn, 1.0, 65535.0, out=dn)
    out = dn.astype(np.uint16)
    outside = _outside(scene.edge, n)
    if outside is not None:
        out[outside] = stac.S2_L2A_NODATA
    return out, resolution


#: COG creation options. No overviews: they would double the writing time and the pipeline reads full
#: resolution windows; tiles of 512, DEFLATE with the horizontal predictor (what the public S2 COGs use).
_COG = {"driver": "COG", "compress": "DEFLATE", "predictor": 2, "level": 1, "blocksize": 512,
        "overviews": "NONE"}


def _write_cog(path: Path, data: np.ndarray, scene: _S2Scene, resolution: float, *,
               nodata: int | None, description: str) -> None:
    n = data.shape[0]
    t = scene.transform
    transform = Affine(resolution, 0.0, t.c, 0.0, -resolution, t.f)
    profile = dict(_COG, width=n, height=n, count=1, dtype=str(data.dtype),
                   crs=CRS.from_epsg(scene.place.epsg), transform=transform)
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data, 1)
        ds.set_band_description(1, description)


def s2_scene_arrays(seed: int, j: int, size: int = S2_SCENE_SIZE, cloud_fraction: float = 0.0,
                    ) -> dict[str, np.ndarray]:
    """Every raster of scene ``j`` in memory (band name -> uint16 DN at native resolution, ``labels``,
    and ``clouds`` when ``cloud_fraction > 0``): what :func:`generate_s2_landcover` writes."""
    scene = _s2_scene(seed, j, size, cloud_fraction)
    out = {name: _s2_band(scene, seed, b)[0] for b, name in enumerate(S2_BAND_NAMES)}
    out["labels"] = _labels(scene)
    if scene.cloud_alpha is not None:
        out["clouds"] = (scene.cloud_alpha > 0).astype(np.uint8)
    return out


def _labels(scene: _S2Scene) -> np.ndarray:
    labels = scene.classes.copy()
    outside = _outside(scene.edge, scene.size)
    if outside is not None:
        labels[outside] = LABELS_NODATA
    return labels


def _s2_item(out: Path, seed: int, j: int, size: int, cloud_fraction: float, workers: int) -> pystac.Item:
    item_id = f"s2-landcover-s{seed}-{j:05d}"
    folder = out / S2_COLLECTION / item_id
    folder.mkdir(parents=True, exist_ok=True)
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        return _s2_item_in(folder, item_id, seed, j, size, cloud_fraction, pool)
    finally:
        if pool is not None:
            pool.shutdown()


def _s2_item_in(folder: Path, item_id: str, seed: int, j: int, size: int, cloud_fraction: float,
                pool: ThreadPoolExecutor | None) -> pystac.Item:
    scene = _s2_scene(seed, j, size, cloud_fraction)

    def band_job(b: int) -> stac.RasterAssetSpec:
        name = S2_BAND_NAMES[b]
        band = stac.S2_BANDS_BY_NAME[name]
        dn, resolution = _s2_band(scene, seed, b)
        path = folder / f"{item_id}_{name}.tif"
        _write_cog(path, dn, scene, resolution, nodata=stac.S2_L2A_NODATA,
                   description=name)
        return stac.RasterAssetSpec(
            key=name, path=path, title=f"{name} {band.description} ({band.resolution:g} m)",
            media_type=str(pystac.MediaType.COG), roles=("data", "reflectance"), spectral_bands=(band,),
            scale=stac.S2_L2A_SCALE, offset=stac.S2_L2A_OFFSET_SINCE_PB0400, nodata=stac.S2_L2A_NODATA)

    def labels_job() -> stac.RasterAssetSpec:
        path = folder / f"{item_id}_labels.tif"
        _write_cog(path, _labels(scene), scene, 10.0, nodata=LABELS_NODATA,
                   description="class index: " + ", ".join(f"{i} {c}" for i, c in enumerate(S2_CLASSES)))
        return stac.RasterAssetSpec(
            key="labels", path=path, title="Land-cover class index (" + ", ".join(S2_CLASSES) + ")",
            media_type=str(pystac.MediaType.COG), roles=("labels",), nodata=LABELS_NODATA)

    def clouds_job() -> stac.RasterAssetSpec:
        assert scene.cloud_alpha is not None
        path = folder / f"{item_id}_clouds.tif"
        _write_cog(path, (scene.cloud_alpha > 0).astype(np.uint8), scene, 10.0, nodata=None,
                   description="cloud mask (1 cloud, 0 clear)")
        return stac.RasterAssetSpec(key="clouds", path=path, title="Cloud mask (1 cloud, 0 clear)",
                                    media_type=str(pystac.MediaType.COG), roles=("cloud",))

    jobs: list[Callable[[], stac.RasterAssetSpec]] = [
        lambda b=b: band_job(b) for b in range(len(S2_BAND_NAMES))]
    jobs.append(labels_job)
    if scene.cloud_alpha is not None:
        jobs.append(clouds_job)
    specs = list(pool.map(lambda job: job(), jobs)) if pool is not None else [job() for job in jobs]

    valid = ~_outside(scene.edge, size) if scene.edge is not None else None
    if scene.cloud_alpha is None:
        cloud_cover = 0.0
    elif valid is None:
        cloud_cover = 100.0 * float(np.count_nonzero(scene.cloud_alpha)) / scene.cloud_alpha.size
    else:
        cloud_cover = 100.0 * float(np.count_nonzero(scene.cloud_alpha[valid])) / max(1, int(valid.sum()))
    props = {
        "platform": scene.platform, "constellation": "sentinel-2", "instruments": ["msi"], "gsd": 10.0,
        "eo:cloud_cover": round(cloud_cover, 3), "s2:processing_baseline": S2_PROCESSING_BASELINE,
        CLASSES_PROPERTY: list(S2_CLASSES),
        "earthops:generator": f"{S2_COLLECTION}/{GENERATOR_VERSION}", "earthops:seed": int(seed),
        "earthops:place": scene.place.name, "earthops:nodata_border": scene.edge is not None,
    }
    return stac.item_from_rasters(item_id, specs, datetime=scene.when, properties=props,
                                  densify=max(0, min(8, size // 1000)))


def generate_s2_landcover(out_dir: Path, *, count: int, seed: int, size: int = S2_SCENE_SIZE,
                          cloud_fraction: float = 0.0) -> Path:
    """Write ``count`` synthetic Sentinel-2 L2A land-cover scenes of ``size`` x ``size`` px (10 m) and
    their STAC catalog under ``out_dir`` (one collection, ``synthetic-s2-landcover``; per item 12 band
    COGs at native resolution, ``labels`` and, when ``cloud_fraction > 0``, ``clouds``).
    Returns the path of ``catalog.json``. Sizes that are multiples of 6 keep the 10/20/60 m grids
    exactly aligned (1098, 5490); others round the 20 and 60 m sizes to the nearest pixel."""
    _check_args(count, seed)
    if not isinstance(size, (int, np.integer)) or size < 12:
        raise ValueError(f"size must be an integer >= 12, got {size!r}")
    if not 0.0 <= float(cloud_fraction) < 1.0:
        raise ValueError(f"cloud_fraction must be in [0, 1), got {cloud_fraction!r}")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # Bands of one scene in parallel (numpy and GDAL release the GIL); fewer at once for big scenes.
    workers = _workers() if size <= 2500 else min(2, _workers())
    items = [_s2_item(out, seed, j, int(size), float(cloud_fraction), workers) for j in range(count)]
    eo_bands = [stac.S2_BANDS_BY_NAME[n].eo_band().to_dict() for n in S2_BAND_NAMES]
    collection = stac.new_collection(
        S2_COLLECTION, title="Synthetic Sentinel-2 L2A land cover",
        description=(
            f"{count} synthetic Sentinel-2 L2A scenes of {size}x{size} px at 10 m in UTM, 12 bands as "
            f"separate COGs at native resolution (10/20/60 m), uint16 DN = reflectance x 10000 + 1000 "
            f"(processing baseline >= 04.00: scale 0.0001, offset -0.1, nodata 0), with a land-cover "
            f"class raster `labels` ({', '.join(f'{i} {c}' for i, c in enumerate(S2_CLASSES))}; nodata "
            f"{LABELS_NODATA})" + (", a cloud mask `clouds`" if cloud_fraction > 0 else "")
            + f" and nodata swath-edge strips on some scenes. Generated by earthops (seed {seed}, "
            f"generator version {GENERATOR_VERSION})."),
        items=items, license=_LICENSE, providers=_PROVIDERS,
        keywords=["sentinel-2", "l2a", "synthetic", "land cover", "segmentation"],
        summaries={
            "platform": sorted({it.properties["platform"] for it in items}),
            "constellation": ["sentinel-2"], "instruments": ["msi"], "gsd": [10, 20, 60],
            "proj:code": sorted({it.properties["proj:code"] for it in items}),
            "eo:bands": eo_bands,
            "eo:cloud_cover": {"minimum": min(it.properties["eo:cloud_cover"] for it in items),
                               "maximum": max(it.properties["eo:cloud_cover"] for it in items)},
            "s2:processing_baseline": [S2_PROCESSING_BASELINE],
            CLASSES_PROPERTY: list(S2_CLASSES),
        })
    return _write(collection, out, "synthetic-s2-landcover-catalog", "Synthetic Sentinel-2 L2A land cover")


# ==================================================================================================
# Catalog and cache


def _workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _write(collection: pystac.Collection, out: Path, catalog_id: str, title: str) -> Path:
    description = f"{title}: synthetic, deterministic sample data generated by earthops."
    catalog = pystac.Catalog(id=catalog_id, title=title, description=description)
    catalog.add_child(collection)
    return stac.write_catalog(catalog, out)


_GENERATORS: Mapping[str, Callable[[Path, int, int], Path]] = {
    S1_COLLECTION: lambda tree, count, seed: generate_s1_iceberg(tree, count=count, seed=seed),
    S2_COLLECTION: lambda tree, count, seed: generate_s2_landcover(
        tree, count=count, seed=seed, size=S2_SCENE_SIZE, cloud_fraction=S2_CLOUD_FRACTION),
}
_PARAMETERS: Mapping[str, Mapping[str, Any]] = {
    S1_COLLECTION: {"chip_size": 75},
    S2_COLLECTION: {"size": S2_SCENE_SIZE, "cloud_fraction": S2_CLOUD_FRACTION},
}


def cache_entry_name(name: str, *, count: int, seed: int) -> str:
    """Folder name of a synthetic catalog in the cache (keyed by name, count, seed, generator version)."""
    return f"{name}-n{count}-s{seed}-v{GENERATOR_VERSION}"


def synthetic_catalog(name: str, *, count: int, seed: int, cache_dir: Path | None = None) -> Path:
    """``catalog.json`` of the synthetic sample set ``name`` (``synthetic-s1-iceberg`` or
    ``synthetic-s2-landcover``) with ``count`` chips/scenes from ``seed``: generated once into the
    cache (``cache_dir``, default :func:`earthops_runtime.cache.default_cache_dir`), atomically, then
    reused. S1: 75x75 chips; S2: 1098x1098 scenes with :data:`S2_CLOUD_FRACTION` clouds."""
    if name not in _GENERATORS:
        raise ValueError(f"unknown synthetic sample set {name!r}; known: {', '.join(SYNTHETIC_NAMES)}")
    _check_args(count, seed)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    identity = {"kind": f"synthetic:{name}", "generator_version": GENERATOR_VERSION, "count": int(count),
                "seed": int(seed), "parameters": dict(_PARAMETERS[name])}
    entry = _cached(cache, cache_entry_name(name, count=count, seed=seed), identity,
                    lambda tree: _GENERATORS[name](tree, int(count), int(seed)))
    return entry / "catalog.json"


def _cached(cache: Path, name: str, identity: Mapping[str, Any], build: Callable[[Path], Any]) -> Path:
    return cached_entry(cache, name, identity, build, required=("catalog.json",))


def _valid(entry: Path, identity: Mapping[str, Any]) -> bool:
    return valid(entry, identity, required=("catalog.json",))

