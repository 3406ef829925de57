"""earthops STAC conventions: one set of extension versions, band tables and item helpers.

Every STAC document earthops writes (sample catalogs, dataset collections, model items) goes through
this module, so the whole store speaks one dialect:

* STAC **1.1.0** core, and exactly the extension versions pystac 1.15 writes by default:

  ========== ======= ==================================================================
  projection v2.0.0  ``proj:code`` ("EPSG:32633"; ``proj:epsg`` is v1 and never written),
                     ``proj:shape`` / ``proj:transform`` per asset (bands differ in size)
  eo         v1.1.0  ``eo:bands`` per asset (name, common_name, center_wavelength and
                     full_width_half_max in micrometres)
  raster     v1.1.0  ``raster:bands`` per asset (data_type, nodata, scale, offset, unit,
                     spatial_resolution, optional statistics)
  sar        v1.0.0  ``sar:instrument_mode``, ``sar:frequency_band``, ``sar:center_frequency``,
                     ``sar:polarizations`` (item: all; asset: its own), ``sar:product_type``
  ========== ======= ==================================================================

  rio-stac 0.12 writes projection v1.1 (``proj:epsg``); its output is not used as is. A pystac upgrade
  that changes a default is caught by :func:`check_pystac_defaults` (called by the builders here)
  instead of silently mixing versions in one store.
* Raster facts (CRS, grid, data type) are read from the files with rasterio; product knowledge the
  files do not carry (L2A reflectance scale, nodata, dB units) comes from the tables below.
* Assets are created with absolute local hrefs; :func:`write_catalog` saves a *self-contained* catalog:
  every link and every asset href relative, so the folder can be moved or uploaded as is.
* Extension schemas live on the web, so :func:`validate_core` validates offline against the core
  schemas that ship with pystac (the extension fields are still checked by the unit tests).
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import rasterio
import rasterio.warp
from pystac.extensions.eo import Band, EOExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension, Statistics
from pystac.extensions.sar import FrequencyBand, Polarization, SarExtension
from rasterio.crs import CRS

# --------------------------------------------------------------------------------------------------
# Versions

STAC_VERSION = "1.1.0"
PROJECTION_SCHEMA = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
EO_SCHEMA = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
RASTER_SCHEMA = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
SAR_SCHEMA = "https://stac-extensions.github.io/sar/v1.0.0/schema.json"
EXTENSION_SCHEMAS: Mapping[str, str] = {
    "projection": PROJECTION_SCHEMA,
    "eo": EO_SCHEMA,
    "raster": RASTER_SCHEMA,
    "sar": SAR_SCHEMA,
}

GEOTIFF = str(pystac.MediaType.GEOTIFF)  # "image/tiff; application=geotiff"
JSON = str(pystac.MediaType.JSON)


class ConventionError(RuntimeError):
    """The installed pystac writes other versions than the earthops conventions, or inputs disagree."""


@functools.cache
def check_pystac_defaults() -> None:
    """Fail loudly if the installed pystac would write other versions than the ones above."""
    found = {
        "stac": pystac.get_stac_version(),
        "projection": ProjectionExtension.get_schema_uri(),
        "eo": EOExtension.get_schema_uri(),
        "raster": RasterExtension.get_schema_uri(),
        "sar": SarExtension.get_schema_uri(),
    }
    wanted = {"stac": STAC_VERSION, **EXTENSION_SCHEMAS}
    diff = {k: (wanted[k], found[k]) for k in wanted if wanted[k] != found[k]}
    if diff:
        lines = ", ".join(f"{k}: wanted {w}, pystac {pystac.__version__} writes {f}"
                          for k, (w, f) in diff.items())
        raise ConventionError(f"STAC conventions differ from the installed pystac ({lines}); "
                              "update earthops_runtime.stac.conventions deliberately")


# --------------------------------------------------------------------------------------------------
# Band tables


@dataclass(frozen=True)
class SpectralBand:
    """One optical band: eo:bands fields plus its native resolution."""

    name: str
    common_name: str | None
    center_wavelength: float  # micrometres
    full_width_half_max: float  # micrometres
    resolution: float  # native ground sampling distance, metres
    description: str

    def eo_band(self) -> Band:
        return Band.create(name=self.name, common_name=self.common_name, description=self.description,
                           center_wavelength=self.center_wavelength,
                           full_width_half_max=self.full_width_half_max)


#: Sentinel-2 MSI bands (S2A/S2B nominal values). L2A products have all but B10 (cirrus).
S2_BANDS: tuple[SpectralBand, ...] = (
    SpectralBand("B01", "coastal", 0.443, 0.027, 60, "Coastal aerosol"),
    SpectralBand("B02", "blue", 0.490, 0.098, 10, "Blue"),
    SpectralBand("B03", "green", 0.560, 0.045, 10, "Green"),
    SpectralBand("B04", "red", 0.665, 0.038, 10, "Red"),
    SpectralBand("B05", "rededge", 0.704, 0.019, 20, "Vegetation red edge 1"),
    SpectralBand("B06", "rededge", 0.740, 0.018, 20, "Vegetation red edge 2"),
    SpectralBand("B07", "rededge", 0.783, 0.028, 20, "Vegetation red edge 3"),
    SpectralBand("B08", "nir", 0.842, 0.145, 10, "Near infrared"),
    SpectralBand("B8A", "nir08", 0.865, 0.033, 20, "Narrow near infrared"),
    SpectralBand("B09", "nir09", 0.945, 0.026, 60, "Water vapour"),
    SpectralBand("B10", "cirrus", 1.375, 0.075, 60, "Cirrus (L1C only)"),
    SpectralBand("B11", "swir16", 1.610, 0.143, 20, "Short-wave infrared 1.6 µm"),
    SpectralBand("B12", "swir22", 2.190, 0.242, 20, "Short-wave infrared 2.2 µm"),
)
S2_BANDS_BY_NAME: Mapping[str, SpectralBand] = {b.name: b for b in S2_BANDS}
S2_L2A_BAND_NAMES: tuple[str, ...] = tuple(b.name for b in S2_BANDS if b.name != "B10")

#: L2A digital numbers -> surface reflectance. Processing baseline 04.00 (January 2022) added a
#: -1000 DN offset (raster offset -0.1); BigEarthNet (2017-2018) predates it, so offset 0.
S2_L2A_SCALE = 0.0001
S2_L2A_OFFSET = 0.0
S2_L2A_OFFSET_SINCE_PB0400 = -0.1
S2_L2A_NODATA = 0

#: Sentinel-1 C-SAR.
S1_FREQUENCY_BAND = FrequencyBand.C
S1_CENTER_FREQUENCY_GHZ = 5.405
S1_POLARIZATIONS: Mapping[str, str] = {
    "VV": "vertical transmit, vertical receive",
    "VH": "vertical transmit, horizontal receive",
    "HH": "horizontal transmit, horizontal receive",
    "HV": "horizontal transmit, vertical receive",
}
S1_INSTRUMENT_MODES: Mapping[str, str] = {
    "IW": "Interferometric Wide swath", "EW": "Extra Wide swath", "SM": "StripMap", "WV": "Wave",
}


def apply_sentinel1_sar(item: pystac.Item, polarizations: Sequence[str], *, instrument_mode: str = "IW",
                        product_type: str = "GRD") -> None:
    """Item-level SAR fields of a Sentinel-1 product (assets carry their own ``sar:polarizations``)."""
    unknown = [p for p in polarizations if p not in S1_POLARIZATIONS]
    if unknown or instrument_mode not in S1_INSTRUMENT_MODES:
        raise ValueError(f"not a Sentinel-1 polarisation/mode: {unknown or instrument_mode}")
    SarExtension.ext(item, add_if_missing=True).apply(
        instrument_mode=instrument_mode, frequency_band=S1_FREQUENCY_BAND,
        polarizations=[Polarization(p) for p in polarizations], product_type=product_type,
        center_frequency=S1_CENTER_FREQUENCY_GHZ)


# --------------------------------------------------------------------------------------------------
# Items from rasters


@dataclass(frozen=True)
class RasterAssetSpec:
    """One raster file to become one asset.

    ``spectral_bands`` / ``polarizations``, when given, have one entry per band of the file. ``scale``,
    ``offset``, ``nodata`` and ``unit`` are product knowledge and win over the file's own metadata
    (GDAL reports scale 1 / offset 0 / no nodata for files that store none); leave them ``None`` to take
    what the file says.
    """

    key: str
    path: Path
    title: str | None = None
    roles: tuple[str, ...] = ("data",)
    media_type: str = GEOTIFF
    spectral_bands: tuple[SpectralBand, ...] = ()
    polarizations: tuple[str, ...] = ()
    scale: float | None = None
    offset: float | None = None
    nodata: float | None = None
    unit: str | None = None


def proj_crs_fields(crs: CRS) -> dict[str, Any]:
    """Projection v2 fields naming a CRS: ``code`` ("EPSG:n" or another authority) else ``wkt2``."""
    auth = crs.to_authority()
    if auth is not None:
        return {"code": f"{auth[0]}:{auth[1]}"}
    return {"code": None, "wkt2": crs.to_wkt()}


def footprint(crs: CRS, bounds: Sequence[float], *, densify: int = 0) -> tuple[dict[str, Any], list[float]]:
    """WGS84 GeoJSON polygon and bbox of ``bounds`` (left, bottom, right, top) given in ``crs``.

    ``densify`` adds points along each edge of the polygon (large scenes: edges curve in lon/lat). The
    bbox comes from a densified transform either way, so it always encloses the true footprint.
    """
    left, bottom, right, top = bounds
    ring: list[tuple[float, float]] = []
    corners = [(left, top), (right, top), (right, bottom), (left, bottom)]
    for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1], strict=True):
        for i in range(densify + 1):
            t = i / (densify + 1)
            ring.append((x0 + (x1 - x0) * t, y0 + (y1 - y0) * t))
    ring.append(ring[0])
    # Counter-clockwise exterior ring (RFC 7946): the corners above run clockwise in a north-up CRS.
    ring.reverse()
    geom = rasterio.warp.transform_geom(crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
    w, s, e, n = rasterio.warp.transform_bounds(crs, "EPSG:4326", left, bottom, right, top, densify_pts=21)
    coords = geom["coordinates"][0] if geom["type"] == "Polygon" else None
    if coords is not None:
        lons = [c[0] for c in coords]
        lats = [c[1] for c in coords]
        w, s, e, n = min(w, *lons), min(s, *lats), max(e, *lons), max(n, *lats)
    geometry = {"type": geom["type"], "coordinates": _as_lists(geom["coordinates"])}
    return geometry, [w, s, e, n]


def _as_lists(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    return float(value)


def _data_type(dtype: str) -> DataType:
    names = {"complex64": "cfloat32", "complex128": "cfloat64", "complex_int16": "cint16"}
    return DataType(names.get(dtype, dtype))


def raster_bands(ds: rasterio.io.DatasetReader, spec: RasterAssetSpec | None = None, *,
                 statistics: bool = False) -> list[RasterBand]:
    """``raster:bands`` of an open dataset: file facts plus the spec's product knowledge."""
    bands: list[RasterBand] = []
    metres = ds.crs is not None and ds.crs.is_projected and (ds.crs.linear_units or "").lower() in {
        "metre", "meter", "m"}
    for i in range(ds.count):
        scale = spec.scale if spec and spec.scale is not None else ds.scales[i]
        offset = spec.offset if spec and spec.offset is not None else ds.offsets[i]
        nodata = spec.nodata if spec and spec.nodata is not None else ds.nodatavals[i]
        unit = spec.unit if spec and spec.unit is not None else (ds.units[i] or None)
        band = RasterBand.create(
            data_type=_data_type(ds.dtypes[i]),
            nodata=json_number(nodata) if nodata is not None else None,
            unit=unit,
            scale=float(scale) if scale is not None and scale != 1 else None,
            offset=float(offset) if offset is not None and offset != 0 else None,
            spatial_resolution=float(abs(ds.res[0])) if metres and ds.res[0] == ds.res[1] else None,
        )
        if statistics:
            band.statistics = _statistics(ds, i + 1, nodata)
        bands.append(band)
    return bands


def json_number(v: float) -> float | int | str:
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return int(v) if float(v).is_integer() else float(v)


def _statistics(ds: rasterio.io.DatasetReader, bidx: int, nodata: float | None) -> Statistics:
    data = ds.read(bidx).astype("float64")
    valid = np.isfinite(data)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        valid &= data != nodata
    values = data[valid]
    if values.size == 0:
        return Statistics.create(valid_percent=0.0)
    return Statistics.create(minimum=float(values.min()), maximum=float(values.max()),
                             mean=float(values.mean()), stddev=float(values.std()),
                             valid_percent=round(100.0 * values.size / data.size, 4))


def item_from_rasters(item_id: str, assets: Sequence[RasterAssetSpec], *, datetime: datetime,
                      properties: Mapping[str, Any] | None = None, statistics: bool = False,
                      densify: int = 0) -> pystac.Item:
    """A STAC item for a set of co-registered rasters (one asset per file).

    Geometry and bbox: WGS84 footprint of the union of the files' bounds. Projection: ``proj:code`` on
    the item (all files must share one CRS), ``proj:shape`` / ``proj:transform`` on each asset (bands may
    differ in resolution). Raster fields on every asset; eo / sar fields where the spec names bands /
    polarisations. Asset hrefs are absolute until :func:`write_catalog` makes them relative.
    ``statistics`` reads every pixel (min/max/mean/stddev/valid_percent in stored values, nodata and NaN
    excluded): meant for patches and chips, not for whole scenes.
    """
    check_pystac_defaults()
    if not assets:
        raise ValueError("an item needs at least one raster asset")
    if datetime.tzinfo is None:
        raise ValueError("datetime must be timezone-aware (UTC)")
    opened: list[tuple[RasterAssetSpec, dict[str, Any]]] = []
    crs: CRS | None = None
    left = bottom = math.inf
    right = top = -math.inf
    for spec in assets:
        with rasterio.open(spec.path) as ds:
            if ds.crs is None:
                raise ConventionError(f"{spec.path} has no CRS")
            if crs is None:
                crs = ds.crs
            elif ds.crs != crs:
                raise ConventionError(f"{spec.path} is in {ds.crs}, other assets of {item_id} in {crs}")
            for name, named in (("spectral_bands", spec.spectral_bands),
                                ("polarizations", spec.polarizations)):
                if named and len(named) != ds.count:
                    n = len(named)
                    raise ValueError(f"{spec.path} has {ds.count} bands but the spec names {n} {name}")
            b = ds.bounds
            left, bottom = min(left, b.left), min(bottom, b.bottom)
            right, top = max(right, b.right), max(top, b.top)
            opened.append((spec, {
                "shape": [ds.height, ds.width],
                "transform": [float(v) for v in list(ds.transform)[:6]],
                "raster": raster_bands(ds, spec, statistics=statistics),
            }))
    assert crs is not None
    geometry, bbox = footprint(crs, (left, bottom, right, top), densify=densify)
    item = pystac.Item(id=item_id, geometry=geometry, bbox=bbox, datetime=datetime,
                       properties=dict(properties or {}))
    ProjectionExtension.ext(item, add_if_missing=True).apply(
        **proj_crs_fields(crs), bbox=[float(left), float(bottom), float(right), float(top)])
    for spec, facts in opened:
        asset = pystac.Asset(href=os.fspath(Path(spec.path).resolve()), title=spec.title,
                             media_type=spec.media_type, roles=list(spec.roles))
        item.add_asset(spec.key, asset)
        proj = ProjectionExtension.ext(asset, add_if_missing=True)
        proj.shape = facts["shape"]
        proj.transform = facts["transform"]
        RasterExtension.ext(asset, add_if_missing=True).apply(facts["raster"])
        if spec.spectral_bands:
            eo = EOExtension.ext(asset, add_if_missing=True)
            eo.apply(bands=[b.eo_band() for b in spec.spectral_bands])
        if spec.polarizations:
            sar = SarExtension.ext(asset, add_if_missing=True)
            sar.polarizations = [Polarization(p) for p in spec.polarizations]
    return item


def add_file_asset(item: pystac.Item, key: str, path: Path, *, title: str | None = None,
                   media_type: str = JSON, roles: Iterable[str] = ("metadata",)) -> pystac.Asset:
    """A non-raster sidecar (labels, metadata) as an asset with an absolute href."""
    asset = pystac.Asset(href=os.fspath(Path(path).resolve()), title=title, media_type=media_type,
                         roles=list(roles))
    item.add_asset(key, asset)
    return asset


# --------------------------------------------------------------------------------------------------
# Collections


def extent_of(items: Sequence[pystac.Item]) -> pystac.Extent:
    """Spatial extent (union of bboxes) and temporal extent (first to last datetime) of items."""
    if not items:
        raise ValueError("no items")
    bboxes = [it.bbox for it in items if it.bbox]
    spatial = [min(b[0] for b in bboxes), min(b[1] for b in bboxes),
               max(b[2] for b in bboxes), max(b[3] for b in bboxes)]
    times = [t for it in items for t in (it.datetime, it.common_metadata.start_datetime,
                                         it.common_metadata.end_datetime) if t is not None]
    return pystac.Extent(pystac.SpatialExtent([spatial]), pystac.TemporalExtent([[min(times), max(times)]]))


def item_assets_from(item: pystac.Item) -> dict[str, pystac.ItemAssetDefinition]:
    """Collection ``item_assets`` describing a representative item's assets (no per-file fields:
    hrefs, grids and statistics differ from item to item)."""
    per_item = {"href", "proj:shape", "proj:transform", "proj:bbox", "proj:geometry", "proj:centroid"}
    out: dict[str, pystac.ItemAssetDefinition] = {}
    for key, asset in item.assets.items():
        d = {k: v for k, v in asset.to_dict().items() if k not in per_item}
        if "raster:bands" in d:
            d["raster:bands"] = [{k: v for k, v in b.items() if k != "statistics"} for b in d["raster:bands"]]
        out[key] = pystac.ItemAssetDefinition(d)
    return out


def new_collection(collection_id: str, *, title: str, description: str, items: Sequence[pystac.Item],
                   license: str, providers: Sequence[pystac.Provider] = (), keywords: Sequence[str] = (),
                   summaries: Mapping[str, Any] | None = None) -> pystac.Collection:
    """A collection over ``items`` with computed extent, ``item_assets`` from the first item, and the
    union of the items' extensions (the item_assets use them too). Adds the items."""
    check_pystac_defaults()
    collection = pystac.Collection(
        id=collection_id, title=title, description=description, extent=extent_of(items), license=license,
        providers=list(providers) or None, keywords=list(keywords) or None,
        summaries=pystac.Summaries(dict(summaries or {})))
    collection.stac_extensions = sorted({uri for it in items for uri in it.stac_extensions})
    collection.item_assets = item_assets_from(items[0])
    for it in items:
        collection.add_item(it)
    return collection


# --------------------------------------------------------------------------------------------------
# Writing and validating


def write_catalog(catalog: pystac.Catalog, dest_dir: Path) -> Path:
    """Save ``catalog`` self-contained under ``dest_dir`` (pystac's default layout:
    ``catalog.json``, ``<collection>/collection.json``, ``<collection>/<item>/<item>.json``), with every
    link and asset href relative. Assets must already lie inside ``dest_dir``. Returns catalog.json."""
    check_pystac_defaults()
    dest_dir = Path(dest_dir).resolve()
    root = dest_dir / "catalog.json"
    # A file path, not the folder: pystac takes a folder name with a dot in it for a file.
    catalog.normalize_hrefs(os.fspath(root))
    for item in catalog.get_items(recursive=True):
        for key, asset in item.assets.items():
            href = Path(asset.get_absolute_href() or asset.href)
            if not href.is_absolute() or not href.resolve().is_relative_to(dest_dir):
                raise ConventionError(
                    f"asset {item.id}/{key} ({href}) lies outside the catalog folder {dest_dir}")
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    if not root.is_file():
        raise ConventionError(f"pystac did not write {root}")
    return root


def iter_stac_files(catalog_json: Path) -> Iterable[tuple[Path, dict[str, Any]]]:
    """Every STAC JSON reachable from a root catalog through relative child/item links, as on disk."""
    seen: set[Path] = set()
    todo = [Path(catalog_json).resolve()]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        doc = json.loads(path.read_text())
        yield path, doc
        for link in doc.get("links", []):
            if link.get("rel") in {"child", "item"}:
                href = link["href"]
                if "://" in href or os.path.isabs(href):
                    raise ConventionError(f"{path}: {link['rel']} link {href!r} is not relative")
                todo.append((path.parent / href).resolve())


def validate_core(catalog_json: Path) -> int:
    """Validate every catalog, collection and item JSON on disk against the STAC **core** schemas that
    ship with pystac (no network). Extension schemas are only on the web, so they are not checked
    here. Raises :class:`pystac.STACValidationError`; returns the number of documents validated."""
    from pystac.validation import validate_dict

    n = 0
    for path, doc in iter_stac_files(catalog_json):
        validate_dict(doc, extensions=[], href=os.fspath(path))
        n += 1
    return n
