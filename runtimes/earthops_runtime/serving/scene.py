"""Whole scenes: a GeoTIFF in any CRS -> chips of the model's size -> predictions in the scene's grid.

The scene is windowed in its own grid (no resampling: send it at the resolution the model was
trained on) into chips of the model's chip size every ``chip - overlap`` pixels; the last row and
column of windows are moved back to end at the scene's edge, so every pixel is covered. With a
``bbox`` (degrees) only the windows over its part of the scene are predicted (a part smaller than a
chip grows to the chip around it); a bbox that misses the scene is refused. Band names come from the ``bands`` parameter or the file's band descriptions.
Windows are read a strip of rows at a time and calibrated with the readers' rules (the file's
scales, offsets and nodata first); the next chunk of chips is read while the previous one is
predicted.

Results, in the scene's grid:

* classifiers: a GeoJSON FeatureCollection, one Feature per chip: its footprint (EPSG:4326, as
  GeoJSON wants), and in ``properties`` the pixel window (``row``, ``col``, ``height``, ``width``),
  its bounds in the scene's CRS (``bounds``), the label(s) and the probabilities per class; the
  collection carries the scene's ``crs`` and ``transform``.
* segmentation: a Cloud-Optimized GeoTIFF in the scene's grid (or the bbox's part of it), one band
  of class indices (``output: classes``, nodata 255) or one float32 band of probability per class
  (``output: probabilities``); overlapping windows are averaged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
import rasterio.shutil
import rasterio.warp
import rasterio.windows
from rasterio.io import MemoryFile
from rasterio.windows import Window

from earthops_runtime.data.chips import chip_count
from earthops_runtime.data.readers import gdal_message
from earthops_runtime.serving.errors import BadInput
from earthops_runtime.serving.inputs import Parameters, calibrate
from earthops_runtime.serving.loaded import Card

CLASS_NODATA = 255


def window_starts(length: int, size: int, stride: int) -> list[int]:
    """Window offsets along one axis covering ``length`` pixels: every ``stride`` pixels, plus a last
    window flush with the end when the stride leaves a remainder. Empty when ``length < size``."""
    n = chip_count(length, size, stride)
    starts = [i * stride for i in range(n)]
    if starts and starts[-1] + size < length:
        starts.append(length - size)
    return starts


@dataclass(frozen=True)
class Layout:
    """The windows of a scene (row-major), inside ``area`` (the part of the scene predicted)."""

    area: Window
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    chip: tuple[int, int]

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)


def plan_windows(height: int, width: int, chip: tuple[int, int], overlap: int, area: Window | None = None) -> Layout:
    """The chips of a ``height`` x ``width`` scene (or of ``area`` of it)."""
    ch, cw = chip
    if overlap >= min(ch, cw):
        raise BadInput("parameters", f"parameter overlap: {overlap} pixels",
                       accepted=f"0 to {min(ch, cw) - 1} (less than the chip size {ch}x{cw})")
    area = area or Window(0, 0, width, height)
    area = _at_least_a_chip(area, height, width, chip)
    ah, aw = int(area.height), int(area.width)
    if ah < ch or aw < cw:
        raise BadInput("chip_size", f"the scene{' area' if (ah, aw) != (height, width) else ''} is {aw}x{ah} pixels, "
                                    f"smaller than the model's chip", accepted=f"at least {cw}x{ch} pixels")
    rows = [int(area.row_off) + r for r in window_starts(ah, ch, ch - overlap)]
    cols = [int(area.col_off) + c for c in window_starts(aw, cw, cw - overlap)]
    return Layout(area, tuple(rows), tuple(cols), chip)


def _at_least_a_chip(area: Window, height: int, width: int, chip: tuple[int, int]) -> Window:
    """An area smaller than a chip grows to one chip around its centre, inside the scene (a bbox over a
    small place still gets the chip that covers it)."""
    def grow(off: int, length: int, size: int, total: int) -> tuple[int, int]:
        if length >= size or total < size:
            return off, length
        start = off - (size - length) // 2
        return min(max(start, 0), total - size), size

    row, h = grow(int(area.row_off), int(area.height), chip[0], height)
    col, w = grow(int(area.col_off), int(area.width), chip[1], width)
    return Window(col, row, w, h)


class OpenScene:
    """An open GeoTIFF and what serving needs of it."""

    def __init__(self, data: bytes, label: str):
        self.label = label
        self._memfile = MemoryFile(data)
        try:
            self.ds = self._memfile.open()
        except (rasterio.errors.RasterioError, Exception) as exc:  # noqa: BLE001 - GDAL's errors vary
            self._memfile.close()
            raise BadInput("geotiff", f"{label} is not a readable GeoTIFF: {gdal_message(exc)[:300]}",
                           accepted="a GeoTIFF (or COG) with a CRS and geotransform") from None
        if self.ds.driver not in ("GTiff", "COG"):
            driver = self.ds.driver
            self.close()
            raise BadInput("geotiff", f"{label} is a {driver} file, not a GeoTIFF", accepted="a GeoTIFF (or COG)")
        if self.ds.crs is None or self.ds.transform.is_identity:
            self.close()
            raise BadInput("geotiff", f"{label} has no CRS or geotransform", accepted="a georeferenced GeoTIFF")

    def close(self) -> None:
        try:
            self.ds.close()
        except AttributeError:
            pass
        self._memfile.close()

    def band_names(self, params: Parameters) -> tuple[str, ...]:
        n = self.ds.count
        if params.bands is not None:
            if len(params.bands) != n:
                raise BadInput("bands", f"parameter bands names {len(params.bands)} bands, {self.label} has {n}",
                               accepted=f"{n} names, one per band of the file, in order")
            return params.bands
        names = tuple(d or "" for d in self.ds.descriptions)
        if not all(names):
            raise BadInput("bands", f"{self.label}'s bands have no names (band descriptions)",
                           accepted="band descriptions in the file, or parameter bands: names of the file's bands in order")
        return names

    def area(self, bbox: tuple[float, float, float, float] | None) -> Window | None:
        """The pixel window of ``bbox`` (degrees) in the scene, or None for the whole scene."""
        if bbox is None:
            return None
        left, bottom, right, top = rasterio.warp.transform_bounds("EPSG:4326", self.ds.crs, *bbox, densify_pts=21)
        full = Window(0, 0, self.ds.width, self.ds.height)
        win = rasterio.windows.from_bounds(left, bottom, right, top, transform=self.ds.transform)
        try:
            inter = rasterio.windows.intersection(win.round_offsets().round_lengths(), full)
        except rasterio.errors.WindowError:
            inter = None
        if inter is None or inter.width < 1 or inter.height < 1:
            w, s, e, n = rasterio.warp.transform_bounds(self.ds.crs, "EPSG:4326", *self.ds.bounds, densify_pts=21)
            raise BadInput("no_intersection", f"bbox {list(bbox)} does not intersect {self.label}",
                           accepted=f"a bbox overlapping the scene's extent [{w:.5f}, {s:.5f}, {e:.5f}, {n:.5f}]")
        return Window(int(inter.col_off), int(inter.row_off), int(inter.width), int(inter.height))

    def chunks(self, layout: Layout, names: Sequence[str], indexes: Sequence[int], params: Parameters,
               chunk: int) -> Iterator[tuple[list[tuple[int, int]], np.ndarray]]:
        """``(windows, raw)`` chunks of at most ``chunk`` chips: ``raw`` float32 ``[n, B, h, w]`` of the
        bands ``indexes`` (1-based) calibrated, nodata NaN. Reads one strip of rows per window row."""
        ch, cw = layout.chip
        integer = all(np.issubdtype(np.dtype(self.ds.dtypes[i - 1]), np.integer) for i in indexes)
        scales = [float(self.ds.scales[i - 1] or 1.0) for i in indexes]
        offsets = [float(self.ds.offsets[i - 1] or 0.0) for i in indexes]
        nodata = self.ds.nodata
        pending_w: list[tuple[int, int]] = []
        pending_x: list[np.ndarray] = []
        left, width = int(layout.area.col_off), int(layout.area.width)
        for row in layout.rows:
            try:
                strip = self.ds.read(list(indexes), window=Window(left, row, width, ch), out_dtype=np.float32)
            except (rasterio.errors.RasterioError, Exception) as exc:  # noqa: BLE001
                raise BadInput("geotiff", f"{self.label}: cannot read rows {row}-{row + ch}: "
                                          f"{gdal_message(exc)[:300]} (a corrupt or truncated file?)") from None
            for col in layout.cols:
                pending_w.append((row, col))
                pending_x.append(strip[:, :, col - left:col - left + cw])
                if len(pending_w) == chunk:
                    yield pending_w, self._calibrated(names, pending_x, integer, params, scales, offsets, nodata)
                    pending_w, pending_x = [], []
        if pending_w:
            yield pending_w, self._calibrated(names, pending_x, integer, params, scales, offsets, nodata)

    @staticmethod
    def _calibrated(names: Sequence[str], chips: list[np.ndarray], integer: bool, params: Parameters,
                    scales: list[float], offsets: list[float], nodata: float | None) -> np.ndarray:
        x = np.stack(chips)
        return calibrate(names, x, integer, params, file_scales=scales, file_offsets=offsets, file_nodata=nodata)


# --- results -----------------------------------------------------------------------------------------


def labels_of(probs: np.ndarray, card: Card) -> list[Any]:
    """Labels per chip: a class name, or (multilabel) the names over 0.5."""
    if card.task == "multilabel":
        return [[card.classes[k] for k in np.flatnonzero(p > 0.5)] for p in probs]
    return [card.classes[int(k)] for k in probs.argmax(axis=1)]


def footprints(ds: Any, layout: Layout, windows: Sequence[tuple[int, int]], probs: np.ndarray,
               card: Card) -> list[dict[str, Any]]:
    """GeoJSON Features of classified chips (see the module docstring)."""
    ch, cw = layout.chip
    t = ds.transform
    labels = labels_of(probs, card)
    features = []
    for (row, col), p, label in zip(windows, probs, labels, strict=True):
        corners = [t @ (col, row), t @ (col + cw, row), t @ (col + cw, row + ch), t @ (col, row + ch)]
        try:
            xs, ys = rasterio.warp.transform(ds.crs, "EPSG:4326", [c[0] for c in corners], [c[1] for c in corners])
        except Exception as exc:  # noqa: BLE001 - GDAL's errors vary (CPLE_AppDefinedError: reprojection failed)
            xs, ys, error = [], [], gdal_message(exc)[:200]
        if len(xs) != 4 or not np.all(np.isfinite(xs)) or not np.all(np.isfinite(ys)):
            # a geotransform that puts the scene where its CRS has no longitude and latitude
            raise BadInput("geotiff", f"the chip at row {row}, column {col} has corners {corners} in {ds.crs} that have "
                                      f"no longitude and latitude{': ' + error if not xs else ''}",
                           accepted="a geotransform placing the scene inside its CRS's area of use")
        ring = [[float(x), float(y)] for x, y in zip(xs, ys, strict=True)]
        xs_native, ys_native = [c[0] for c in corners], [c[1] for c in corners]
        properties: dict[str, Any] = {
            "row": row, "col": col, "height": ch, "width": cw,
            "bounds": [min(xs_native), min(ys_native), max(xs_native), max(ys_native)],
            "probabilities": {c: float(v) for c, v in zip(card.classes, p, strict=True)},
        }
        properties["labels" if card.task == "multilabel" else "label"] = label
        features.append({"type": "Feature", "id": f"r{row}_c{col}",
                         "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}, "properties": properties})
    return features


def feature_collection(ds: Any, features: list[dict[str, Any]], card: Card) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": features, "classes": list(card.classes),
            "crs": ds.crs.to_string(), "transform": list(ds.transform)[:6]}


class Mosaic:
    """Probabilities of overlapping segmentation chips, averaged in the scene's grid (of ``area``)."""

    def __init__(self, layout: Layout, num_classes: int):
        self.area = layout.area
        h, w = int(layout.area.height), int(layout.area.width)
        self.sum = np.zeros((num_classes, h, w), np.float32)
        self.count = np.zeros((h, w), np.float32)
        self.chip = layout.chip

    def add(self, windows: Sequence[tuple[int, int]], probs: np.ndarray) -> None:
        ch, cw = self.chip
        r0, c0 = int(self.area.row_off), int(self.area.col_off)
        for (row, col), p in zip(windows, probs, strict=True):
            self.sum[:, row - r0:row - r0 + ch, col - c0:col - c0 + cw] += p
            self.count[row - r0:row - r0 + ch, col - c0:col - c0 + cw] += 1

    def probabilities(self) -> np.ndarray:
        return self.sum / np.maximum(self.count, 1)[None]

    def cog(self, ds: Any, card: Card, output: str) -> bytes:
        """The mosaic as a COG in the scene's grid: class indices (uint8) or probabilities (float32)."""
        probs = self.probabilities()
        if output == "probabilities":
            data, dtype, nodata, names = probs, "float32", None, list(card.classes)
        else:
            classes = probs.argmax(axis=0).astype(np.uint8)
            classes[self.count == 0] = CLASS_NODATA
            data, dtype, nodata, names = classes[None], "uint8", CLASS_NODATA, ["class"]
        profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
                   "dtype": dtype, "crs": ds.crs, "transform": rasterio.windows.transform(self.area, ds.transform),
                   "nodata": nodata}
        with MemoryFile() as tmp:
            with tmp.open(**profile) as dst:
                dst.write(data)
                for i, name in enumerate(names, start=1):
                    dst.set_band_description(i, name)
                dst.update_tags(classes=json.dumps(list(card.classes)), model=f"{card.name}/{card.version}")
            with tmp.open() as src, MemoryFile() as out:
                # GDAL's COG driver: tiled, with overviews, the layout COG readers expect
                rasterio.shutil.copy(src, out.name, driver="COG", compress="DEFLATE")
                return out.read()


__all__ = ["CLASS_NODATA", "Layout", "Mosaic", "OpenScene", "feature_collection", "footprints", "labels_of",
           "plan_windows", "window_starts"]
