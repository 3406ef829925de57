"""Read a scene's bands onto a common grid, window by window.

:class:`SceneReader` opens every band asset of a :class:`~earthops_runtime.data.scene.Scene` (local
paths, ``file://``, ``s3://``, ``http(s)://`` or a GDAL ``/vsi...`` path), builds the scene's
:class:`~earthops_runtime.data.grid.TargetGrid` and reads *windows* of that grid: each band goes through
its own :class:`rasterio.vrt.WarpedVRT` (target CRS, transform and size; the resampling of its band
kind), so only the source blocks under a window are fetched and a big scene is never loaded whole.
A band file that already lies on the grid (same CRS and pixel size, whole-pixel offset: Sentinel-2
10 m bands on a 10 m grid, the usual case) is read straight from the file instead — the values the
warp gives, nodata and masks included, at about four times the speed.

Values come back as ``float32`` in physical units:

The scene is what :mod:`earthops_runtime.data.sources` makes: ``scene.assets[band]`` is the href
of each spec band, and ``scene.properties["earthops:raster"]`` (:data:`RASTER_PROPERTY`) says per band
``{"asset": source asset key, "index": 1-based band in the file, "scale", "offset", "nodata"}`` from
the STAC ``raster:bands`` / ``bands`` (``None``: not given; an optional ``"unit"`` is honoured too). A
scene carrying ``earthops:error`` (a file the source could not open) fails at once with that reason.

* **nodata -> NaN**: the file's nodata value, else the band's ``nodata`` from ``earthops:raster``;
  NaN in float files is nodata too; a per-dataset mask or alpha band is honoured; pixels outside a
  band's footprint are NaN.
* **scale / offset** (``value = stored * scale + offset``), first match wins:

  1. the GeoTIFF's own scale/offset (``src.scales`` / ``src.offsets``) when it stores any (not 1/0);
  2. ``scale`` / ``offset`` of the band in ``earthops:raster`` (the STAC ``raster:bands``);
  3. Sentinel-2 L2A product knowledge, for the S2 spectral bands of a scene with
     ``s2:processing_baseline`` in its properties: scale 1e-4 when none was found, and — from
     processing baseline 04.00 on, when neither the file nor the hint gives an offset —
     offset -0.1, i.e. ``reflectance = (DN - 1000) / 10000``. A scene whose
     ``earthsearch:boa_offset_applied`` is true already had the offset applied and gets none.
* **SAR** bands (VV, VH, HH, HV) stay as stored (dB). A band stored as linear power is converted to dB
  (``10 log10``; values <= 0 become NaN) when ``scene.properties["earthops:sar_scale"]`` is ``"linear"``
  (or a ``{band: "linear"|"db"}`` mapping), or its unit (``earthops:raster`` ``unit``, else the file's) is
  ``linear``/``power``/``linear power``/``intensity``; a unit of ``amplitude`` gives ``20 log10``.
  Resampling happens before the conversion, so averaging is done on power, as it should be.

Labels (``labels(window)``), per the spec's ``labels``:

* ``raster``: an asset of the scene, warped with the ``labels`` resampling (``nearest``/``mode``) ->
  ``int32`` (h, w), :data:`LABEL_NODATA` (-1) where the label raster has nodata or no coverage;
  values are the raster's codes.
* ``vector``: a GeoJSON file (local, ``file://``, ``s3://``, ``http(s)://``; RFC 7946 WGS84 or a legacy
  ``crs`` member), its features' ``property`` rasterised onto the window -> ``int32`` (h, w) class
  indices (:attr:`SceneReader.label_classes` names them), -1 where no feature lies. Indices: the
  position in ``labels.classes`` when given (features of other classes are left out); else the
  integer values themselves when all are integers; else the sorted distinct values of the whole file
  (the same mapping for every scene). Later features are drawn over earlier ones.
  GeoPackage/GeoParquet need an OGR binding (pyogrio) and are refused with a clear message.
* ``property``: the item property's value (one class or a list), the same for every window.

Errors: a band the scene does not have -> :class:`SceneError` naming the band and the available
assets; an asset that cannot be opened or read (missing object, corrupt or truncated file) ->
:class:`SceneError` naming the band, the href and GDAL's own message.

S3 access: GDAL's ``/vsis3/`` is configured from the standard variables (``AWS_ENDPOINT_URL`` -> GDAL's
``AWS_S3_ENDPOINT`` host:port, ``AWS_HTTPS`` from its scheme and path-style addressing; credentials,
session token and region), read from the environment or the mounted Secret folder named by
``EARTHOPS_STORE_CREDENTIALS_DIR`` exactly as the store reads them (:func:`earthops.core.store.credentials`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import rasterio
import rasterio.errors
import rasterio.features
import rasterio.warp
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.session import Session
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from earthops_runtime.data.grid import Footprint, TargetGrid, crs_string, grid_for_scene
from earthops_runtime.data.scene import Scene, band_kind
from earthops_runtime.errors import SceneError, SpecError

#: Scene property with each band's asset, band index, scale, offset and nodata (written by
#: :mod:`earthops_runtime.data.sources` as ``RASTER_KEY``).
RASTER_PROPERTY = "earthops:raster"
#: Scene property of a scene the source could not read (``sources.ERROR_KEY``): why.
ERROR_PROPERTY = "earthops:error"
#: Scene property saying how SAR bands are stored: ``"db"`` (default) or ``"linear"``, or per band.
SAR_SCALE_PROPERTY = "earthops:sar_scale"
#: Sentinel-2 processing baseline (STAC ``s2`` extension), e.g. ``"05.09"``.
S2_BASELINE_PROPERTY = "s2:processing_baseline"
#: Earth Search marks L2A items whose offset was already applied to the DNs.
BOA_OFFSET_APPLIED_PROPERTY = "earthsearch:boa_offset_applied"
#: Label value of unlabelled pixels (no feature, label nodata, outside the label raster).
LABEL_NODATA = -1

S2_L2A_SCALE = 1e-4
S2_OFFSET_SINCE_PB0400 = -0.1
S2_SPECTRAL_BANDS = frozenset(
    {"B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
     "coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "nir09",
     "cirrus", "swir16", "swir22"})
_LINEAR_UNITS = frozenset({"linear", "power", "linear power", "linear_power", "intensity"})
_AMPLITUDE_UNITS = frozenset({"amplitude", "linear amplitude"})
_RESAMPLING = {"nearest": Resampling.nearest, "bilinear": Resampling.bilinear, "cubic": Resampling.cubic,
               "average": Resampling.average, "mode": Resampling.mode}


# --------------------------------------------------------------------------------------------------
# Calibration


@dataclass(frozen=True)
class BandCalibration:
    """How stored values of one band become physical values."""

    scale: float = 1.0
    offset: float = 0.0
    #: Stored nodata value (None: none declared; NaN is always nodata in float files).
    nodata: float | None = None
    #: ``None`` (as stored), ``"power"`` (10 log10) or ``"amplitude"`` (20 log10): convert to dB.
    to_db: str | None = None
    #: Where scale/offset came from: ``file``, ``stac``, ``sentinel-2`` or ``none``.
    source: str = "none"

    def apply(self, a: np.ndarray) -> np.ndarray:
        """Calibrate ``a`` (float32, NaN nodata) in place and return it."""
        if self.scale != 1.0:
            a *= np.float32(self.scale)
        if self.offset != 0.0:
            a += np.float32(self.offset)
        if self.to_db is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                a[~(a > 0)] = np.nan
                np.log10(a, out=a)
            a *= np.float32(10.0 if self.to_db == "power" else 20.0)
        return a


def processing_baseline(value: Any) -> tuple[int, int] | None:
    """``"04.00"``, ``4.0``, ``"N0400"``, ``"0509"`` -> ``(major, minor)``; None if unreadable."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        major = int(value)
        return major, round((float(value) - major) * 100)
    text = str(value).strip().upper().removeprefix("N")
    if m := re.fullmatch(r"(\d{1,2})\.(\d{1,2})", text):
        return int(m.group(1)), int(m.group(2))
    if m := re.fullmatch(r"(\d{2})(\d{2})", text):
        return int(m.group(1)), int(m.group(2))
    return None


def _hint_for(properties: Mapping[str, Any], band: str) -> dict[str, Any]:
    hints = properties.get(RASTER_PROPERTY) or {}
    hint = hints.get(band) if isinstance(hints, Mapping) else None
    return dict(hint) if isinstance(hint, Mapping) else {}


def _number(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, str):
        v = {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(v.lower(), v)
    return float(v)


def _sar_storage(band: str, properties: Mapping[str, Any], unit: str | None) -> str | None:
    declared = properties.get(SAR_SCALE_PROPERTY)
    if isinstance(declared, Mapping):
        declared = declared.get(band)
    if isinstance(declared, str):
        d = declared.strip().lower()
        if d in ("db", "decibel", "decibels"):
            return None
        if d in _LINEAR_UNITS:
            return "power"
        if d in _AMPLITUDE_UNITS:
            return "amplitude"
        raise SpecError(SAR_SCALE_PROPERTY, f"{declared!r} for {band}: use 'db' or 'linear'")
    u = (unit or "").strip().lower()
    if u in _LINEAR_UNITS:
        return "power"
    if u in _AMPLITUDE_UNITS:
        return "amplitude"
    return None


def calibration_for(band: str, properties: Mapping[str, Any], *, file_scale: float = 1.0,
                    file_offset: float = 0.0, file_nodata: float | None = None, file_unit: str | None = None,
                    integer: bool = True) -> BandCalibration:
    """The calibration of one band: the file's metadata, else the band's ``earthops:raster`` entry
    (STAC ``raster:bands``), else product knowledge (Sentinel-2 L2A).

    Pure: the numbers of the open file are passed in (``integer``: its data type is an integer one).
    """
    hint = _hint_for(properties, band)
    nodata = file_nodata if file_nodata is not None else _number(hint.get("nodata"))
    unit = hint.get("unit") or file_unit
    file_has = (file_scale not in (None, 1.0)) or (file_offset not in (None, 0.0))
    if file_has:
        scale, offset, source = float(file_scale or 1.0), float(file_offset or 0.0), "file"
    else:
        h_scale, h_offset = _number(hint.get("scale")), _number(hint.get("offset"))
        scale = h_scale if h_scale is not None else 1.0
        offset = h_offset if h_offset is not None else 0.0
        source = "stac" if (h_scale is not None or h_offset is not None) else "none"
        baseline = processing_baseline(properties.get(S2_BASELINE_PROPERTY))
        if baseline is not None and band in S2_SPECTRAL_BANDS and band_kind(band) == "optical":
            if h_scale is None and integer:
                scale, source = S2_L2A_SCALE, "sentinel-2"
            if (h_offset is None and baseline >= (4, 0)
                    and not properties.get(BOA_OFFSET_APPLIED_PROPERTY, False)):
                offset, source = S2_OFFSET_SINCE_PB0400, "sentinel-2"
    to_db = _sar_storage(band, properties, unit) if band_kind(band) == "sar" else None
    return BandCalibration(scale=scale, offset=offset, nodata=nodata, to_db=to_db, source=source)


# --------------------------------------------------------------------------------------------------
# Paths and GDAL environment


def gdal_path(href: str) -> str:
    """A GDAL dataset name for an asset href: local path, ``file://``, ``s3://`` (``/vsis3/``),
    ``http(s)://`` (``/vsicurl/``), ``gs://`` (``/vsigs/``), or a ``/vsi...`` path as is."""
    if href.startswith("/vsi"):
        return href
    parsed = urlparse(href)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        return unquote(parsed.path)
    if scheme in ("s3", "gs"):
        return f"/vsi{scheme}/{parsed.netloc}{parsed.path}"
    if scheme in ("http", "https"):
        return f"/vsicurl/{href}"
    if scheme and len(scheme) > 1:
        raise ValueError(f"unsupported URI scheme {scheme!r} in {href}")
    return href  # a local path (a one-letter "scheme" is a Windows drive)


def _is_remote(path: str) -> bool:
    return path.startswith("/vsi")


def gdal_s3_options(environ: Mapping[str, str] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """``(options, credentials)`` for GDAL's ``/vsis3/`` from the standard AWS variables.

    ``options``: ``AWS_S3_ENDPOINT`` (host:port of ``AWS_ENDPOINT_URL``), ``AWS_HTTPS`` (YES for
    https), ``AWS_VIRTUAL_HOSTING=FALSE`` (path-style, what S3-compatible servers expect) and
    ``AWS_REGION``. GDAL variables set explicitly in the environment are left alone. ``credentials``:
    the key id, secret and session token (handed to GDAL through a rasterio session).
    """
    from earthops.core.store import StoreError, credentials

    env = dict(os.environ if environ is None else environ)
    try:
        creds = credentials(env)
    except StoreError as exc:
        raise SpecError("output.storage", str(exc), reason="CredentialsUnavailable") from exc
    options: dict[str, str] = {}
    endpoint = creds.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        if not parsed.netloc:
            raise SpecError("AWS_ENDPOINT_URL", f"{endpoint!r} is not a URL (expected http(s)://host:port)")
        derived = {"AWS_S3_ENDPOINT": parsed.netloc,
                   "AWS_HTTPS": "YES" if parsed.scheme.lower() == "https" else "NO",
                   "AWS_VIRTUAL_HOSTING": "FALSE"}
        options.update({k: v for k, v in derived.items() if k not in env})
    region = creds.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        options["AWS_REGION"] = region
    secret = {k: creds[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
              if creds.get(k)}
    return options, secret


def gdal_env(environ: Mapping[str, str] | None = None) -> Any:
    """A ``rasterio.Env`` that reads ``s3://`` with the store's S3 settings (see :func:`gdal_s3_options`)."""
    import rasterio

    options, secret = gdal_s3_options(environ)
    return rasterio.Env(session=_GdalCredentials(secret), **options)


class _GdalCredentials(Session):
    """Hands credentials to GDAL as config options (rasterio refuses them as plain Env options and its
    own AWSSession needs boto3)."""

    def __init__(self, credentials: Mapping[str, str]):
        self._session = None
        self.credentials = dict(credentials)

    @classmethod
    def hascreds(cls, config: Mapping[str, Any]) -> bool:
        return True

    def get_credential_options(self) -> dict[str, str]:
        return dict(self.credentials)


# --------------------------------------------------------------------------------------------------
# Errors


def gdal_message(exc: BaseException) -> str:
    """GDAL's own words from a rasterio exception chain (rasterio often says only 'see previous')."""
    parts: list[str] = []
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e).strip()
        if text and "See previous exception" not in text and text not in parts:
            parts.append(text)
        e = e.__cause__ or e.__context__
    return "; ".join(parts) or type(exc).__name__


_GDAL_ERRORS: tuple[type[BaseException], ...] = (rasterio.errors.RasterioError, CPLE_BaseError)


# --------------------------------------------------------------------------------------------------
# Vector labels (GeoJSON)


def _read_bytes(uri: str) -> bytes:
    parsed = urlparse(uri)
    if parsed.scheme.lower() in ("", "file") or len(parsed.scheme) == 1:
        path = unquote(parsed.path) if parsed.scheme.lower() == "file" else uri
        with open(path, "rb") as f:
            return f.read()
    import fsspec

    options: dict[str, Any] = {}
    if parsed.scheme.lower() == "s3":
        from earthops.core.store import credentials

        creds = credentials()
        options = {"key": creds.get("AWS_ACCESS_KEY_ID"), "secret": creds.get("AWS_SECRET_ACCESS_KEY"),
                   "token": creds.get("AWS_SESSION_TOKEN"),
                   "client_kwargs": {k: v for k, v in (("endpoint_url", creds.get("AWS_ENDPOINT_URL")),
                                                      ("region_name", creds.get("AWS_REGION"))) if v},
                   "skip_instance_cache": True}
    with fsspec.open(uri, "rb", **options) as f:
        return f.read()


def _geojson_crs(doc: Mapping[str, Any]) -> str:
    crs = doc.get("crs")
    if isinstance(crs, Mapping) and isinstance(crs.get("properties"), Mapping):
        name = str(crs["properties"].get("name", ""))
        if m := re.search(r"EPSG:{1,2}(\d+)$", name):
            return f"EPSG:{m.group(1)}"
        if name.upper().endswith("CRS84") or not name:
            return "EPSG:4326"
        return name
    return "EPSG:4326"


@dataclass(frozen=True)
class _VectorLayer:
    crs: str
    geometries: tuple[dict[str, Any], ...]
    values: tuple[Any, ...]


@lru_cache(maxsize=4)
def _load_geojson(uri: str) -> _VectorLayer:
    lower = urlparse(uri).path.lower()
    if not lower.endswith((".json", ".geojson")):
        raise SpecError("labels.vector.uri", f"{uri}: only GeoJSON (.geojson, .json) vector labels are supported "
                                             "(GeoPackage/GeoParquet need an OGR binding such as pyogrio)")
    doc = json.loads(_read_bytes(uri))
    if doc.get("type") == "FeatureCollection":
        features = doc.get("features") or []
    elif doc.get("type") == "Feature":
        features = [doc]
    else:
        raise SpecError("labels.vector.uri", f"{uri}: not a GeoJSON Feature or FeatureCollection")
    geoms, values = [], []
    for f in features:
        if f.get("geometry"):
            geoms.append(f["geometry"])
            values.append((f.get("properties") or {}))
    return _VectorLayer(_geojson_crs(doc), tuple(geoms), tuple(values))


# --------------------------------------------------------------------------------------------------
# The reader


def _spec_get(obj: Any, name: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


@dataclass
class _Band:
    name: str
    asset: str
    href: str
    path: str
    kind: str
    resampling: Resampling
    calibration: BandCalibration
    #: 1-based band of the file holding this band (multi-band assets).
    index: int = 1
    dataset: Any = None
    vrt: Any = None
    #: Stored nodata used for the band (None: none), and the value that marks nodata in the output.
    src_nodata: float | None = None
    fill: float = math.nan
    #: (rows, cols) from grid pixels to file pixels when the file lies on the grid itself (same CRS
    #: and pixel size, whole-pixel offset): read directly, no warp. None: warp.
    shift: tuple[int, int] | None = None
    #: The file has a per-dataset mask or alpha band (honoured like the warper does).
    masked: bool = False
    #: Read straight into the output's dtype (GDAL converts): every stored value, and so the nodata
    #: comparison, is exact in it. Else read as stored and converted here.
    direct: bool = False


class SceneReader:
    """Windowed reads of a scene's bands (and labels) on its target grid.

    ``grid_spec``: the spec's ``grid`` (an :class:`earthops.api.dataset.Grid`, or a mapping with
    ``resolution``, ``crs``, ``resampling``); ``labels_spec``: the spec's ``labels`` or None.
    ``grid``: use this grid instead of building one (e.g. to put an S1 and an S2 scene of one area on
    the same pixels). ``reference_band``: the grid covers this band's footprint instead of the union of
    all bands. ``environ``: where S3 settings come from (default ``os.environ``).

    Use as a context manager (or call :meth:`close`): it keeps the band files open between reads.
    """

    def __init__(self, scene: Scene, bands: Sequence[str], grid_spec: Any = None, labels_spec: Any = None, *,
                 grid: TargetGrid | None = None, reference_band: str | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.scene = scene
        self.bands: tuple[str, ...] = tuple(bands)
        self._bands: list[_Band] = []
        self._label_band: _Band | None = None
        self._extra: dict[tuple[str, str], _Band] = {}
        if not self.bands:
            raise SpecError("bands", "at least one band is needed")
        self.labels_spec = labels_spec
        self.label_kind: str | None = None
        self.label_classes: list[str] | None = None
        resampling = _spec_get(grid_spec, "resampling")
        self._resampling = {k: _spec_get(resampling, k, d)
                            for k, d in (("optical", "bilinear"), ("sar", "average"), ("labels", "nearest"))}
        for kind, name in self._resampling.items():
            if name not in _RESAMPLING or (kind == "labels" and name not in ("nearest", "mode")):
                raise SpecError(f"grid.resampling.{kind}", f"unknown resampling {name!r}")
        if scene.properties.get(ERROR_PROPERTY):
            raise SceneError(scene.id, str(scene.properties[ERROR_PROPERTY]))
        missing = [b for b in self.bands if b not in scene.assets]
        if missing:
            raise SceneError(scene.id, f"band{'s' if len(missing) > 1 else ''} {', '.join(missing)} not in the "
                                       f"scene; available assets: {', '.join(sorted(scene.assets)) or 'none'}")
        paths: dict[str, str] = {}
        for b in self.bands:
            try:
                paths[b] = gdal_path(scene.assets[b])
            except ValueError as exc:
                raise SceneError(scene.id, f"asset {b} ({scene.assets[b]}): {exc}") from exc
        remote = any(_is_remote(p) for p in paths.values())
        self._env_options: dict[str, Any] = {"GDAL_HTTP_MAX_RETRY": "3", "GDAL_HTTP_RETRY_DELAY": "1"}
        if remote:
            # no directory listing per open: sidecar files (.aux.xml, .ovr) are not looked for remotely
            self._env_options["GDAL_DISABLE_READDIR_ON_OPEN"] = "EMPTY_DIR"
        self._credentials: dict[str, str] = {}
        try:
            s3_options, self._credentials = gdal_s3_options(environ)
            self._env_options.update(s3_options)
        except SpecError:
            if remote:  # a broken credentials folder matters only when something is remote
                raise
        self._vector: tuple[list[dict[str, Any]], np.ndarray, list[tuple[float, float, float, float]]] | None = None
        self._property_value: Any = None
        try:
            with self._env():
                for b in self.bands:
                    self._bands.append(self._open_band(b, b, paths[b], band_kind(b)))
                if grid is None:
                    if reference_band is not None:
                        ref = [x for x in self._bands if x.name == reference_band]
                        if not ref:
                            raise SpecError("grid.reference_band", f"{reference_band} is not one of the bands read "
                                                                   f"({', '.join(self.bands)})")
                        footprints = [Footprint.of(ref[0].dataset)]
                    else:
                        footprints = [Footprint.of(x.dataset) for x in self._bands]
                    grid = grid_for_scene(footprints, _spec_get(grid_spec, "crs", "auto-utm"),
                                          float(_spec_get(grid_spec, "resolution", 10.0)))
                self.grid: TargetGrid = grid
                for band in self._bands:
                    band.vrt = self._warped(band, np.float32, np.nan)
                if labels_spec is not None:
                    self._open_labels(labels_spec)
        except BaseException:
            self.close()
            raise

    # -- lifecycle ---------------------------------------------------------------------------------
    def __enter__(self) -> SceneReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        extra = [*([self._label_band] if self._label_band else []), *self._extra.values()]
        for band in [*self._bands, *extra]:
            for handle in (band.vrt, band.dataset):
                if handle is not None:
                    with contextlib.suppress(Exception):
                        handle.close()
            band.vrt = band.dataset = None

    # -- public facts ------------------------------------------------------------------------------
    @property
    def kinds(self) -> dict[str, str]:
        """Band -> ``optical`` | ``sar``."""
        return {b.name: b.kind for b in self._bands}

    @property
    def calibrations(self) -> dict[str, BandCalibration]:
        return {b.name: b.calibration for b in self._bands}

    @property
    def resampling(self) -> dict[str, str]:
        """Band -> resampling name used to bring it to the grid."""
        return {b.name: b.resampling.name for b in self._bands}

    # -- reads -------------------------------------------------------------------------------------
    def read(self, window: Window, out: np.ndarray | None = None) -> np.ndarray:
        """The bands over ``window`` of the grid: ``float32`` (C, h, w), physical values, NaN nodata.
        ``out``: a float32 (C, h, w) array to read into (a long run reuses one instead of page-faulting
        a fresh one per window); returned."""
        window = self._check(window)
        h, w = int(window.height), int(window.width)
        out = _output(out, (len(self._bands), h, w), np.float32)
        with self._env():
            for i, band in enumerate(self._bands):
                self._read_band(band, window, out[i])
                band.calibration.apply(out[i])
        return out

    def read_block(self, row_off: int, col_off: int, height: int, width: int) -> np.ndarray:
        """:meth:`read` of the window at (``row_off``, ``col_off``) of size ``height`` x ``width``."""
        return self.read(Window(col_off, row_off, width, height))

    def read_asset(self, asset: str, window: Window, resampling: str = "nearest") -> np.ndarray:
        """Any other asset of the scene (a cloud mask such as S2 ``SCL``) over ``window``, as stored
        (no calibration): ``float32`` (h, w), NaN where nodata or not covered. The asset stays open
        until :meth:`close`."""
        window = self._check(window)
        if resampling not in _RESAMPLING:
            raise ValueError(f"unknown resampling {resampling!r}")
        key = (asset, resampling)
        with self._env():
            band = self._extra.get(key)
            if band is None:
                if asset not in self.scene.assets:
                    raise SceneError(self.scene.id, f"asset {asset} not in the scene; available assets: "
                                                    f"{', '.join(sorted(self.scene.assets))}")
                band = self._open_band(asset, asset, gdal_path(self.scene.assets[asset]), "other",
                                       resampling=_RESAMPLING[resampling])
                self._extra[key] = band
                band.vrt = self._warped(band, np.float32, np.nan)
            out = np.empty((int(window.height), int(window.width)), dtype=np.float32)
            self._read_band(band, window, out)
            return out

    def labels(self, window: Window, out: np.ndarray | None = None) -> Any:
        """Labels over ``window``: ``int32`` (h, w) for raster and vector labels (-1: unlabelled);
        the scene's class (or class list) for property labels; None without a labels spec.
        ``out``: an int32 (h, w) array that raster and vector labels are written into (returned)."""
        window = self._check(window)
        if self.label_kind is None:
            return None
        if self.label_kind == "property":
            return self._property_value
        out = _output(out, (int(window.height), int(window.width)), np.int32)
        if self.label_kind == "raster":
            assert self._label_band is not None
            with self._env():
                self._read_band(self._label_band, window, out)
            return out
        return self._rasterize(window, out)

    # -- internals ---------------------------------------------------------------------------------
    def _env(self) -> rasterio.Env:
        return rasterio.Env(session=_GdalCredentials(self._credentials), **self._env_options)

    @contextlib.contextmanager
    def _errors(self, band: _Band, what: str) -> Iterator[None]:
        try:
            yield
        except SceneError:
            raise
        except _GDAL_ERRORS as exc:
            raise SceneError(self.scene.id, f"asset {band.asset} ({band.href}): {what}: {gdal_message(exc)}") from exc

    def _open_band(self, name: str, asset: str, path: str, kind: str, *,
                   resampling: Resampling | None = None) -> _Band:
        href = self.scene.assets[asset]
        band = _Band(name=name, asset=asset, href=href, path=path, kind=kind,
                     resampling=resampling or _RESAMPLING[self._resampling.get(kind, "nearest")],
                     calibration=BandCalibration())
        with self._errors(band, "cannot open"):
            band.dataset = rasterio.open(path)
        ds = band.dataset
        try:
            if ds.crs is None:
                raise SceneError(self.scene.id, f"asset {asset} ({href}): no CRS (not georeferenced)")
            if kind in ("optical", "sar"):
                raw_index = _hint_for(self.scene.properties, name).get("index") or 1
                try:
                    band.index = int(raw_index)
                except (TypeError, ValueError):
                    band.index = 0
                if not 1 <= band.index <= ds.count:
                    raise SceneError(self.scene.id, f"asset {asset} ({href}): band {name} is band {raw_index} of "
                                                    f"the file, which has {ds.count}")
                i = band.index - 1
                band.calibration = calibration_for(
                    name, self.scene.properties, file_scale=ds.scales[i], file_offset=ds.offsets[i],
                    file_nodata=ds.nodatavals[i], file_unit=ds.units[i] or None,
                    integer=np.issubdtype(np.dtype(ds.dtypes[i]), np.integer))
        except BaseException:
            ds.close()
            raise
        return band

    def _warped(self, band: _Band, dtype: Any, nodata: float) -> WarpedVRT | None:
        ds = band.dataset
        i = band.index - 1
        src_nodata = band.calibration.nodata if band.kind in ("optical", "sar") else ds.nodatavals[i]
        floating = np.issubdtype(np.dtype(ds.dtypes[i]), np.floating)
        if src_nodata is None and floating:
            src_nodata = float("nan")
        band.src_nodata, band.fill = src_nodata, nodata
        band.masked = any(f in (MaskFlags.per_dataset, MaskFlags.alpha) for f in ds.mask_flag_enums[i])
        band.shift = _grid_shift(ds, self.grid)
        if floating and np.issubdtype(np.dtype(dtype), np.integer):
            band.shift = None  # float label rasters: let GDAL convert NaN and nodata
        if band.shift is not None:
            band.direct = _exact_in(np.dtype(ds.dtypes[i]), np.dtype(dtype))
            return None  # read straight from the file
        kwargs: dict[str, Any] = {}
        if src_nodata is not None:
            kwargs["src_nodata"] = src_nodata
        with self._errors(band, "cannot warp to the grid"):
            return WarpedVRT(ds, crs=self.grid.crs, transform=self.grid.transform, width=self.grid.width,
                             height=self.grid.height, resampling=band.resampling, nodata=nodata,
                             dtype=np.dtype(dtype).name, **kwargs)

    def _read_band(self, band: _Band, window: Window, out: np.ndarray) -> None:
        """One band over a grid window into ``out``: straight from the file when it lies on the grid
        (the values a warp would give, at a fraction of the cost), else through its WarpedVRT."""
        with self._errors(band, "cannot read"):
            if band.shift is None:
                band.vrt.read(band.index, window=window, out=out)
                return
            ds = band.dataset
            r0, c0 = int(window.row_off) - band.shift[0], int(window.col_off) - band.shift[1]
            h, w = out.shape
            rs, re_ = max(r0, 0), min(r0 + h, ds.height)
            cs, ce = max(c0, 0), min(c0 + w, ds.width)
            if rs >= re_ or cs >= ce:
                out.fill(band.fill)
                return
            if (rs, re_, cs, ce) != (r0, r0 + h, c0, c0 + w):
                out.fill(band.fill)
            target = out[rs - r0:re_ - r0, cs - c0:ce - c0]
            src_window = Window(cs, rs, ce - cs, re_ - rs)
            nd = band.src_nodata
            if band.direct:  # GDAL converts into the target: no temporary, one pass fewer
                ds.read(band.index, window=src_window, out=target)
                if nd is not None and not math.isnan(nd):
                    target[target == nd] = band.fill
            else:
                raw = ds.read(band.index, window=src_window)
                target[...] = raw
                if nd is not None and not math.isnan(nd):
                    target[raw == nd] = band.fill
            if band.masked:
                target[ds.read_masks(band.index, window=src_window) == 0] = band.fill

    def _check(self, window: Window) -> Window:
        if not isinstance(window, Window):
            window = Window(*window)
        ints = [float(v).is_integer() for v in (window.col_off, window.row_off, window.width, window.height)]
        if not all(ints) or not self.grid.contains(window):
            raise ValueError(f"window {window} is not an integer window inside the {self.grid.width}x"
                             f"{self.grid.height} grid")
        return Window(int(window.col_off), int(window.row_off), int(window.width), int(window.height))

    def _open_labels(self, spec: Any) -> None:
        raster, vector, prop = (_spec_get(spec, k) for k in ("raster", "vector", "property"))
        classes = list(_spec_get(spec, "classes", None) or [])
        if raster is not None:
            asset = _spec_get(raster, "asset")
            if asset not in self.scene.assets:
                raise SceneError(self.scene.id, f"label asset {asset} not in the scene; available assets: "
                                                f"{', '.join(sorted(self.scene.assets))}")
            band = self._open_band("labels", asset, gdal_path(self.scene.assets[asset]), "labels",
                                   resampling=_RESAMPLING[self._resampling["labels"]])
            self._label_band = band
            band.vrt = self._warped(band, np.int32, LABEL_NODATA)
            self.label_kind = "raster"
            self.label_classes = classes or None
        elif vector is not None:
            self._open_vector(str(_spec_get(vector, "uri")), str(_spec_get(vector, "property")), classes)
            self.label_kind = "vector"
        elif prop is not None:
            name = _spec_get(prop, "name")
            if name not in self.scene.properties:
                raise SceneError(self.scene.id, f"no item property {name!r} for the labels (labels.property.name); "
                                                f"properties: {', '.join(sorted(self.scene.properties))}")
            self._property_value = self.scene.properties[name]
            self.label_kind = "property"
            self.label_classes = classes or None

    def _open_vector(self, uri: str, prop: str, classes: list[str]) -> None:
        try:
            layer = _load_geojson(uri)
        except (OSError, ValueError) as exc:
            if isinstance(exc, SpecError):
                raise
            raise SceneError(self.scene.id, f"vector labels {uri}: cannot read: {exc}") from exc
        pairs = [(g, p[prop]) for g, p in zip(layer.geometries, layer.values, strict=True)
                 if p.get(prop) is not None]
        values = [v for _, v in pairs]
        if classes:
            index = {c: i for i, c in enumerate(classes)}
            codes = [index.get(str(v), None) for v in values]
            self.label_classes = classes
        elif values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            codes = list(values)
            self.label_classes = None
        else:
            names = sorted({str(v) for v in values})
            index = {c: i for i, c in enumerate(names)}
            codes = [index[str(v)] for v in values]
            self.label_classes = names
        keep = [(g, c) for (g, _), c in zip(pairs, codes, strict=True) if c is not None]
        geoms = [g for g, _ in keep]
        if geoms and layer.crs != self.grid.crs:
            try:
                geoms = rasterio.warp.transform_geom(layer.crs, self.grid.crs, geoms)
            except _GDAL_ERRORS as exc:
                raise SceneError(self.scene.id, f"vector labels {uri}: cannot reproject from {layer.crs}: "
                                                f"{gdal_message(exc)}") from exc
        boxes = [_geom_bounds(g) for g in geoms]
        self._vector = (list(geoms), np.asarray([c for _, c in keep], dtype=np.int64), boxes)

    def _rasterize(self, window: Window, out: np.ndarray) -> np.ndarray:
        assert self._vector is not None
        geoms, codes, boxes = self._vector
        left, bottom, right, top = self.grid.window_bounds(window)
        shapes = [(g, int(c)) for g, c, b in zip(geoms, codes, boxes, strict=True)
                  if b[0] < right and b[2] > left and b[1] < top and b[3] > bottom]
        out.fill(LABEL_NODATA)
        if shapes:
            rasterio.features.rasterize(shapes, out=out, transform=self.grid.window_transform(window))
        return out


def _output(out: np.ndarray | None, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """The array a read writes into: ``out`` when it has ``shape`` and ``dtype``, a new one without."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    if out.shape != shape or out.dtype != dtype:
        name = np.dtype(dtype).name
        raise ValueError(f"out: expected {'an' if name[0] in 'aeiou' else 'a'} {name} array of shape {shape}, "
                         f"got {out.dtype} {out.shape}")
    return out


def _exact_in(stored: np.dtype, target: np.dtype) -> bool:
    """Every value of ``stored`` is exact in ``target`` (the same as a numpy cast, and nodata compares
    alike after the conversion): integers of up to 16 bits into float32, integers into wider ones,
    float32 into float32."""
    if stored == target:
        return True
    if np.issubdtype(stored, np.integer):
        if target == np.float32:
            return stored.itemsize <= 2
        return np.issubdtype(target, np.integer) and np.can_cast(stored, target, casting="safe")
    return False


def _grid_shift(ds: Any, grid: TargetGrid) -> tuple[int, int] | None:
    """(row, col) offset of the grid's pixels in the file's when the file lies on the grid: same CRS,
    same north-up pixel size, whole-pixel offset (to 1e-6 px). None otherwise."""
    t = ds.transform
    g = grid.transform
    if t.b != 0 or t.d != 0 or not math.isclose(t.a, g.a, rel_tol=1e-9) or not math.isclose(t.e, g.e, rel_tol=1e-9):
        return None
    cols = (g.c - t.c) / t.a
    rows = (g.f - t.f) / t.e
    if abs(cols - round(cols)) > 1e-6 or abs(rows - round(rows)) > 1e-6:
        return None
    if crs_string(ds.crs) != grid.crs and ds.crs != CRS.from_user_input(grid.crs):
        return None
    return -round(rows), -round(cols)


def _geom_bounds(geom: Mapping[str, Any]) -> tuple[float, float, float, float]:
    xs: list[float] = []
    ys: list[float] = []

    def walk(c: Any) -> None:
        if c and isinstance(c[0], (int, float)):
            xs.append(float(c[0]))
            ys.append(float(c[1]))
        else:
            for sub in c:
                walk(sub)

    if geom.get("type") == "GeometryCollection":
        boxes = [_geom_bounds(g) for g in geom.get("geometries", [])]
        if not boxes:
            return (math.inf, math.inf, -math.inf, -math.inf)
        return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
    walk(geom.get("coordinates") or [])
    if not xs:
        return (math.inf, math.inf, -math.inf, -math.inf)
    return min(xs), min(ys), max(xs), max(ys)


__all__ = [
    "BOA_OFFSET_APPLIED_PROPERTY", "BandCalibration", "ERROR_PROPERTY", "LABEL_NODATA", "RASTER_PROPERTY",
    "S2_BASELINE_PROPERTY", "SAR_SCALE_PROPERTY", "SceneReader", "calibration_for", "gdal_message",
    "gdal_path", "gdal_s3_options", "processing_baseline",
]
