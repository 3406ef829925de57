"""The common grid every band of a scene is resampled to.

A :class:`TargetGrid` is a CRS, a north-up affine transform and a size. :func:`grid_for_scene` builds
one from a scene's extent and the spec's ``grid`` (``crs``, ``resolution``):

* ``crs: auto-utm`` takes the UTM zone of the scene centre — ``EPSG:326<zone>`` north of the equator,
  ``EPSG:327<zone>`` south of it — with the two standard exceptions (south-west Norway: zone 32V is
  widened to 3°E–12°E; Svalbard, 72°N–84°N: zones 31X, 33X, 35X and 37X only). Beyond the UTM limits
  (north of 84°N, south of 80°S) it takes Universal Polar Stereographic (``EPSG:32661`` /
  ``EPSG:32761``), the projection UTM hands over to. ``EPSG:<n>`` is taken as given.
* The grid's edges are multiples of the resolution in the target CRS, so two scenes on the same CRS
  and resolution share pixel edges (chips of neighbouring scenes line up, no half-pixel shifts).
* It covers the union of the footprints given (every band of the scene, or one reference band),
  expanded outwards to the next pixel edge.

Everything here is pure: coordinates in, grid out (PROJ does the transforms, no file is opened).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as transform_points
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from earthops_runtime.errors import SpecError

Bounds = tuple[float, float, float, float]

#: UTM's latitude limits; beyond them ``auto-utm`` uses UPS.
UTM_NORTH_LIMIT = 84.0
UTM_SOUTH_LIMIT = -80.0
UPS_NORTH = "EPSG:32661"
UPS_SOUTH = "EPSG:32761"

#: A grid side longer than this cannot be a GDAL raster (int32 sizes).
MAX_GRID_SIDE = 2**31 - 1
#: Snapping tolerance, in pixels: an edge this close to a pixel edge is on it (floating-point noise
#: from reprojected bounds must not add a whole row or column of nodata).
_SNAP_TOLERANCE = 1e-6


@runtime_checkable
class HasFootprint(Protocol):
    """Anything with a CRS and bounds in it: a :class:`Footprint`, an open rasterio dataset."""

    @property
    def crs(self) -> Any: ...

    @property
    def bounds(self) -> Sequence[float]: ...


@dataclass(frozen=True)
class Footprint:
    """The extent of one raster: ``bounds`` ``(left, bottom, right, top)`` in ``crs``."""

    crs: str
    bounds: Bounds

    @classmethod
    def of(cls, obj: HasFootprint) -> Footprint:
        crs = obj.crs
        if crs is None:
            raise ValueError("a footprint needs a CRS")
        return cls(crs=crs_string(crs), bounds=tuple(float(v) for v in obj.bounds))  # type: ignore[arg-type]


@dataclass(frozen=True)
class TargetGrid:
    """A north-up grid: ``transform`` maps (col, row) pixel corners to ``crs`` coordinates."""

    crs: str
    transform: Affine
    width: int
    height: int
    resolution: float

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"grid size must be positive, got {self.width}x{self.height}")
        t = self.transform
        if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
            raise ValueError(f"grid transform must be north-up with square pixels, got {tuple(t)[:6]}")

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return self.height, self.width

    @property
    def bounds(self) -> Bounds:
        """``(left, bottom, right, top)`` in the grid CRS."""
        t = self.transform
        return t.c, t.f + t.e * self.height, t.c + t.a * self.width, t.f

    @property
    def full_window(self) -> Window:
        return Window(0, 0, self.width, self.height)

    def contains(self, window: Window) -> bool:
        """Whether ``window`` lies entirely inside the grid (integer offsets and sizes)."""
        return (window.col_off >= 0 and window.row_off >= 0 and window.width > 0 and window.height > 0
                and window.col_off + window.width <= self.width
                and window.row_off + window.height <= self.height)

    def window_transform(self, window: Window) -> Affine:
        """The transform of a window of this grid (its top-left pixel at the window's offsets)."""
        t = self.transform
        return Affine(t.a, 0.0, t.c + t.a * window.col_off, 0.0, t.e, t.f + t.e * window.row_off)

    def window_bounds(self, window: Window) -> Bounds:
        t = self.window_transform(window)
        return t.c, t.f + t.e * window.height, t.c + t.a * window.width, t.f

    def xy(self, row: float, col: float) -> tuple[float, float]:
        """Grid-CRS coordinates of the *centre* of pixel (``row``, ``col``); fractional ok."""
        t = self.transform
        return float(t.c + t.a * (col + 0.5)), float(t.f + t.e * (row + 0.5))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (``proj:code``-style CRS, 6-term transform, shape)."""
        return {"crs": self.crs, "transform": list(self.transform)[:6], "width": self.width,
                "height": self.height, "resolution": self.resolution}


# --------------------------------------------------------------------------------------------------
# CRS choice


def crs_string(crs: Any) -> str:
    """``EPSG:n`` for a CRS with an EPSG code, else its WKT."""
    c = crs if isinstance(crs, CRS) else CRS.from_user_input(crs)
    epsg = c.to_epsg()
    return f"EPSG:{epsg}" if epsg is not None else c.to_wkt()


def normalize_lon(lon: float) -> float:
    """Longitude folded into ``[-180, 180)``."""
    return ((float(lon) + 180.0) % 360.0) - 180.0


def utm_zone(lon: float, lat: float) -> int:
    """The UTM zone number (1..60) of a point, with the Norway (32V) and Svalbard (X band) exceptions."""
    lon = normalize_lon(lon)
    zone = min(int((lon + 180.0) // 6.0) + 1, 60)
    if 56.0 <= lat < 64.0 and 3.0 <= lon < 12.0:
        return 32
    if 72.0 <= lat <= UTM_NORTH_LIMIT and 0.0 <= lon < 42.0:
        if lon < 9.0:
            return 31
        if lon < 21.0:
            return 33
        if lon < 33.0:
            return 35
        return 37
    return zone


def utm_crs(lon: float, lat: float) -> str:
    """``EPSG:326zz`` (north) / ``EPSG:327zz`` (south) for a point; UPS beyond 84°N / 80°S."""
    if lat > UTM_NORTH_LIMIT:
        return UPS_NORTH
    if lat < UTM_SOUTH_LIMIT:
        return UPS_SOUTH
    zone = utm_zone(lon, lat)
    return f"EPSG:{(32600 if lat >= 0 else 32700) + zone}"


def bbox_centre(bounds_wgs84: Sequence[float]) -> tuple[float, float]:
    """Centre ``(lon, lat)`` of a WGS84 bbox; ``west > east`` means it crosses the antimeridian."""
    west, south, east, north = (float(v) for v in bounds_wgs84)
    span = (east - west) % 360.0 if west > east else east - west
    return normalize_lon(west + span / 2.0), (south + north) / 2.0


def resolve_crs(crs_spec: str, centre_lonlat: tuple[float, float]) -> str:
    """The target CRS of a scene: ``auto-utm`` -> :func:`utm_crs` of the centre, else the given CRS."""
    if crs_spec == "auto-utm":
        return utm_crs(*centre_lonlat)
    try:
        crs = CRS.from_user_input(crs_spec)
    except Exception as exc:  # noqa: BLE001 - rasterio raises CRSError; any failure is a bad spec
        raise SpecError("grid.crs", f"{crs_spec!r} is not a known CRS ({exc}); use auto-utm or EPSG:<code>") from exc
    if crs.is_geographic:
        raise SpecError("grid.crs", f"{crs_spec} is geographic (degrees); grid.resolution is in metres: "
                                    "use a projected CRS or auto-utm")
    return crs_string(crs)


# --------------------------------------------------------------------------------------------------
# Grid construction


def align_bounds(bounds: Sequence[float], resolution: float) -> Bounds:
    """Expand ``bounds`` outwards to multiples of ``resolution`` (noise below 1e-6 px ignored)."""
    left, bottom, right, top = (float(v) for v in bounds)
    r = float(resolution)
    return (math.floor(left / r + _SNAP_TOLERANCE) * r, math.floor(bottom / r + _SNAP_TOLERANCE) * r,
            math.ceil(right / r - _SNAP_TOLERANCE) * r, math.ceil(top / r - _SNAP_TOLERANCE) * r)


def grid_from_bounds(crs: str, bounds: Sequence[float], resolution: float) -> TargetGrid:
    """The aligned grid covering ``bounds`` (already in ``crs``)."""
    if not resolution > 0:
        raise SpecError("grid.resolution", f"must be positive, got {resolution}")
    left, bottom, right, top = align_bounds(bounds, resolution)
    if not all(math.isfinite(v) for v in (left, bottom, right, top)):
        raise ValueError(f"bounds {tuple(bounds)} are not finite in {crs}")
    width = max(1, round((right - left) / resolution))
    height = max(1, round((top - bottom) / resolution))
    if width > MAX_GRID_SIDE or height > MAX_GRID_SIDE:
        raise SpecError("grid.resolution", f"{resolution} m over {tuple(bounds)} gives a {width}x{height} grid, "
                                           "larger than a raster can be")
    return TargetGrid(crs=crs, transform=Affine(resolution, 0.0, left, 0.0, -resolution, top),
                      width=width, height=height, resolution=float(resolution))


def _same_crs(a: str, b: str) -> bool:
    return a == b or CRS.from_user_input(a) == CRS.from_user_input(b)


def _footprints(extent: Any) -> list[Footprint] | None:
    """The footprints in ``extent``, or None when it is a plain WGS84 bbox."""
    if isinstance(extent, Footprint):
        return [extent]
    if isinstance(extent, HasFootprint):
        return [Footprint.of(extent)]
    items = list(extent)
    if len(items) == 4 and all(isinstance(v, (int, float)) for v in items):
        return None
    if not items:
        raise ValueError("grid_for_scene needs a WGS84 bbox or at least one footprint")
    return [f if isinstance(f, Footprint) else Footprint.of(f) for f in items]


def _centre_of(footprints: list[Footprint]) -> tuple[float, float]:
    crs0 = footprints[0].crs
    if all(_same_crs(f.crs, crs0) for f in footprints):
        # One CRS (the usual case): the centre of the union in that CRS, as a point.
        left = min(f.bounds[0] for f in footprints)
        bottom = min(f.bounds[1] for f in footprints)
        right = max(f.bounds[2] for f in footprints)
        top = max(f.bounds[3] for f in footprints)
        xs, ys = transform_points(crs0, "EPSG:4326", [(left + right) / 2.0], [(bottom + top) / 2.0])
        return normalize_lon(xs[0]), float(ys[0])
    # Mixed CRSs: centre of the union of their WGS84 bboxes (on a circle for longitude).
    boxes = [transform_bounds(f.crs, "EPSG:4326", *f.bounds, densify_pts=21) for f in footprints]
    lons = [bbox_centre(b)[0] for b in boxes]
    sx = sum(math.cos(math.radians(v)) for v in lons)
    sy = sum(math.sin(math.radians(v)) for v in lons)
    lon = math.degrees(math.atan2(sy, sx))
    return normalize_lon(lon), (min(b[1] for b in boxes) + max(b[3] for b in boxes)) / 2.0


def grid_for_scene(extent: Any, crs_spec: str = "auto-utm", resolution: float = 10.0) -> TargetGrid:
    """The target grid of a scene.

    ``extent`` is either a WGS84 bbox ``(west, south, east, north)`` (``west > east`` crosses the
    antimeridian), or one footprint, or several (the union is covered): a :class:`Footprint` or
    anything with ``.crs`` and ``.bounds`` such as an open rasterio dataset — pass just the reference
    band to follow one band's footprint. ``crs_spec`` is ``auto-utm`` or ``EPSG:<n>``; ``resolution``
    is the pixel size in target-CRS units (metres).
    """
    footprints = _footprints(extent)
    if footprints is None:
        bbox = tuple(float(v) for v in extent)
        west, south, east, north = bbox
        if not (-90.0 <= south <= north <= 90.0):
            raise ValueError(f"not a WGS84 bbox (west, south, east, north): {bbox}")
        crs = resolve_crs(crs_spec, bbox_centre(bbox))
        bounds = transform_bounds("EPSG:4326", crs, west, south, east, north, densify_pts=21)
        return grid_from_bounds(crs, bounds, resolution)
    crs = resolve_crs(crs_spec, _centre_of(footprints) if crs_spec == "auto-utm" else (0.0, 0.0))
    boxes = [f.bounds if _same_crs(f.crs, crs) else transform_bounds(f.crs, crs, *f.bounds, densify_pts=21)
             for f in footprints]
    union = (min(b[0] for b in boxes), min(b[1] for b in boxes),
             max(b[2] for b in boxes), max(b[3] for b in boxes))
    return grid_from_bounds(crs, union, resolution)


__all__ = [
    "Footprint", "TargetGrid", "align_bounds", "bbox_centre", "crs_string", "grid_for_scene",
    "grid_from_bounds", "normalize_lon", "resolve_crs", "utm_crs", "utm_zone",
    "UPS_NORTH", "UPS_SOUTH",
]
