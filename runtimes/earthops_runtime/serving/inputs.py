"""Requests -> arrays: what a client may send, checked, and turned into the model's input.

Three input forms, in both protocols (see docs/serving.md for payloads):

* **chips** — model-ready float32 ``[N, C, H, W]``: the model's features in its order, already
  normalised with the card's statistics. v1: ``instances`` = a list of ``[C][H][W]`` arrays; v2:
  one FP32 input (any name that is not a band name, e.g. ``chips``).
* **bands** — raw bands named by band (``HH``, ``B04``...), ``[N, H, W]`` each (or ``[H, W]``),
  in stored units: optical bands as Sentinel-2 L2A digital numbers (integer data: scale 1e-4, and
  the -0.1 offset with ``processing_baseline`` >= 04.00) or reflectance (float data); SAR bands in
  dB, or linear power with ``sar_unit: linear``. ``scale``/``offset``/``nodata`` parameters
  override. NaN is nodata (as in training: 0 after normalisation); infinities are refused. The
  server derives the model's features with the dataset's own code
  (:func:`earthops_runtime.data.features.plan_for_features`) and normalises them with the card.
  v1: ``instances`` = a list of ``{band: [H][W]}``; v2: one input per band, named by band.
* **scene** — a GeoTIFF (:mod:`earthops_runtime.serving.scene`): v1 ``instances: [{"scene":
  {"b64": ...}}]`` or ``{"scene": {"uri": "s3://..."}}``; v2 a BYTES input ``scene`` (the file) or
  ``scene_uri``.

Everything a client can get wrong raises :class:`BadInput` naming the problem and what is accepted.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from earthops_runtime.data.features import plan_for_features
from earthops_runtime.data.readers import S2_BASELINE_PROPERTY, calibration_for
from earthops_runtime.data.scene import SAR_BANDS
from earthops_runtime.errors import SpecError
from earthops_runtime.serving.errors import BadInput
from earthops_runtime.serving.loaded import Card

#: v2 datatypes accepted for raw bands, and their numpy types.
BAND_DATATYPES = {"UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "INT8": np.int8, "INT16": np.int16,
                  "INT32": np.int32, "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
SCENE_INPUTS = ("scene", "scene_uri")
PARAMETERS = ("sar_unit", "processing_baseline", "scale", "offset", "nodata", "overlap", "bands", "bbox",
              "output", "output_uri")
SAR_UNITS = ("db", "linear")


@dataclass(frozen=True)
class Chips:
    """Model-ready, normalised chips."""

    x: np.ndarray  # float32 [N, C, H, W]


@dataclass(frozen=True)
class Bands:
    """Raw bands by name, stacked ``[N, B, H, W]`` in ``names`` order, with their stored dtype."""

    names: tuple[str, ...]
    x: np.ndarray
    integer: bool


@dataclass(frozen=True)
class Scene:
    """A GeoTIFF: its bytes or a store URI."""

    data: bytes | None = None
    uri: str | None = None


@dataclass(frozen=True)
class Parameters:
    """Request parameters (v1 ``parameters``, v2 request ``parameters``)."""

    sar_unit: str = "db"
    processing_baseline: str | None = None
    scale: float | None = None
    offset: float | None = None
    nodata: float | None = None
    overlap: int = 0
    bands: tuple[str, ...] | None = None
    bbox: tuple[float, float, float, float] | None = None
    output: str = "classes"
    output_uri: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


Decoded = Chips | Bands | Scene


# --- parameters ------------------------------------------------------------------------------------


def _number(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise BadInput("parameters", f"parameter {name}: {v!r} is not a number")
    try:
        f = float(v)
    except ValueError:
        raise BadInput("parameters", f"parameter {name}: {v!r} is not a number") from None
    if not math.isfinite(f):
        raise BadInput("parameters", f"parameter {name}: {v!r} must be finite")
    return f


def _names(name: str, v: Any) -> tuple[str, ...]:
    items = v.split(",") if isinstance(v, str) else v
    if not isinstance(items, list | tuple) or not all(isinstance(s, str) and s.strip() for s in items):
        raise BadInput("parameters", f"parameter {name}: {v!r}", accepted="band names, a list or comma-separated text")
    return tuple(s.strip() for s in items)


def parse_parameters(raw: Any) -> Parameters:
    """Request parameters, checked (unknown ones are kept in ``extra`` for KServe's own, e.g.
    ``binary_data_output``)."""
    if raw is None:
        return Parameters()
    if not isinstance(raw, Mapping):
        raise BadInput("parameters", f"parameters: {type(raw).__name__}, expected an object")
    p: dict[str, Any] = {}
    extra = {k: v for k, v in raw.items() if k not in PARAMETERS}
    if "sar_unit" in raw:
        unit = str(raw["sar_unit"]).lower()
        if unit not in SAR_UNITS:
            raise BadInput("parameters", f"parameter sar_unit: {raw['sar_unit']!r}", accepted=", ".join(SAR_UNITS))
        p["sar_unit"] = unit
    if raw.get("processing_baseline") is not None:
        p["processing_baseline"] = str(raw["processing_baseline"])
    for k in ("scale", "offset", "nodata"):
        if raw.get(k) is not None:
            p[k] = _number(k, raw[k])
    if raw.get("overlap") is not None:
        o = _number("overlap", raw["overlap"])
        if o != int(o) or o < 0:
            raise BadInput("parameters", f"parameter overlap: {raw['overlap']!r}",
                           accepted="a whole number of pixels >= 0, smaller than the chip size")
        p["overlap"] = int(o)
    if raw.get("bands") is not None:
        p["bands"] = _names("bands", raw["bands"])
    if raw.get("bbox") is not None:
        b = raw["bbox"]
        vals = b.split(",") if isinstance(b, str) else b
        if not isinstance(vals, list | tuple) or len(vals) != 4:
            raise BadInput("parameters", f"parameter bbox: {b!r}",
                           accepted="west,south,east,north in degrees (EPSG:4326)")
        w, s, e, n = (_number("bbox", v) for v in vals)
        if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
            raise BadInput("parameters", f"parameter bbox: {b!r}",
                           accepted="west < east within [-180, 180], south < north within [-90, 90]")
        p["bbox"] = (w, s, e, n)
    if raw.get("output") is not None:
        if raw["output"] not in ("classes", "probabilities"):
            raise BadInput("parameters", f"parameter output: {raw['output']!r}", accepted="classes, probabilities")
        p["output"] = raw["output"]
    if raw.get("output_uri") is not None:
        if not isinstance(raw["output_uri"], str) or not raw["output_uri"].startswith(("s3://", "file://", "/")):
            raise BadInput("parameters", f"parameter output_uri: {raw['output_uri']!r}",
                           accepted="a store URI (s3://bucket/key.tif, file:///path.tif)")
        p["output_uri"] = raw["output_uri"]
    return Parameters(**p, extra=extra)


# --- decoding v1 -----------------------------------------------------------------------------------


def _accepted_v1(card: Card) -> str:
    c, (h, w) = len(card.features), card.chip_shape
    return (f"{{\"instances\": [...]}} with chips [{c}][{h}][{w}] of the features {', '.join(card.features)}, "
            f"or raw bands {{band: [{h}][{w}]}}, or [{{\"scene\": {{\"b64\": GeoTIFF}} or {{\"uri\": URI}}}}]")


def decode_v1(body: Any, card: Card) -> tuple[Decoded, Parameters]:
    """A v1 body (already parsed JSON) -> an input form and its parameters."""
    if isinstance(body, bytes | str):
        raise BadInput("json", "the body is not JSON (send Content-Type: application/json)", accepted=_accepted_v1(card))
    if not isinstance(body, Mapping):
        raise BadInput("json", f"the body is a JSON {type(body).__name__}, expected an object", accepted=_accepted_v1(card))
    if "instances" not in body:
        hint = " (that is a v2 request: POST it to /v2/models/NAME/infer)" if "inputs" in body else ""
        raise BadInput("json", f"no \"instances\" in the body{hint}", accepted=_accepted_v1(card))
    params = parse_parameters(body.get("parameters"))
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise BadInput("json", "\"instances\" must be a non-empty list", accepted=_accepted_v1(card))
    first = instances[0]
    if isinstance(first, Mapping):
        if not all(isinstance(i, Mapping) for i in instances):
            raise BadInput("json", "instances mix objects and arrays", accepted=_accepted_v1(card))
        if "scene" in first:
            if len(instances) != 1:
                raise BadInput("scene", f"{len(instances)} scenes in one request", accepted="one scene per request")
            return _scene_v1(first), params
        return _bands_v1(instances, params, card), params
    try:
        x = np.asarray(instances, dtype=np.float32)
    except (ValueError, TypeError, OverflowError):
        raise BadInput("shape", "instances are not numeric arrays of one shape", accepted=_accepted_v1(card)) from None
    return Chips(x), params


def _scene_v1(instance: Mapping[str, Any]) -> Scene:
    scene = instance["scene"]
    accepted = "{\"scene\": {\"b64\": base64 GeoTIFF}} or {\"scene\": {\"uri\": \"s3://...\" or \"file://...\"}}"
    if not isinstance(scene, Mapping) or len({"b64", "uri"} & set(scene)) != 1:
        raise BadInput("scene", f"scene: {str(scene)[:80]!r}", accepted=accepted)
    if "uri" in scene:
        return Scene(uri=_scene_uri(scene["uri"]))
    return Scene(data=_b64(scene["b64"]))


def _b64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise BadInput("scene", "scene.b64 must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput("scene", "scene.b64 is not valid base64", accepted="standard base64 (RFC 4648) of a GeoTIFF") from None


def _scene_uri(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith(("s3://", "file://")):
        raise BadInput("scene", f"scene uri {str(value)[:200]!r}", accepted="s3://bucket/key.tif or file:///path.tif")
    return value


def _bands_v1(instances: list[Mapping[str, Any]], params: Parameters, card: Card) -> Bands:
    names = tuple(instances[0])
    unknown = [n for n in names if not _is_band(n)]
    if unknown:
        raise BadInput("bands", f"{', '.join(map(repr, unknown))} {'is not a band name' if len(unknown) == 1 else 'are not band names'}",
                       accepted="Sentinel-1 polarisations (HH, HV, VV, VH) and Sentinel-2 bands (B01-B12, B8A) or their "
                                "common names, {band: [H][W]} per instance")
    arrays: dict[str, list[np.ndarray]] = {n: [] for n in names}
    integer = True
    for i, inst in enumerate(instances):
        if tuple(inst) != names:
            raise BadInput("bands", f"instance {i} names the bands {', '.join(inst)}, instance 0 {', '.join(names)}",
                           accepted="the same bands in every instance")
        for n in names:
            try:
                a = np.asarray(inst[n])
            except (ValueError, TypeError):
                raise BadInput("shape", f"band {n} of instance {i} is not a 2-D numeric array") from None
            if a.dtype.kind not in "iuf" or a.ndim != 2:
                raise BadInput("shape" if a.dtype.kind in "iufb" else "dtype",
                               f"band {n} of instance {i}: {a.ndim}-D {a.dtype.name}", accepted="a 2-D array of numbers")
            integer = integer and a.dtype.kind in "iu"
            arrays[n].append(a)
    try:
        x = np.stack([np.stack(arrays[n]) for n in names], axis=1).astype(np.float32)
    except ValueError:
        raise BadInput("shape", "the bands' arrays differ in shape", accepted="every band [H][W] of the chip size") from None
    return Bands(names, x, integer)


# --- decoding v2 -----------------------------------------------------------------------------------


def _accepted_v2(card: Card) -> str:
    c, (h, w) = len(card.features), card.chip_shape
    return (f"one FP32 input [N, {c}, {h}, {w}] (the features {', '.join(card.features)}, normalised), or one "
            f"input per raw band named by band [N, {h}, {w}], or a BYTES input scene (a GeoTIFF) or scene_uri")


def decode_v2(inputs: Sequence[Any], card: Card, parameters: Any) -> tuple[Decoded, Parameters]:
    """v2 inputs (KServe ``InferInput``s) -> an input form and its parameters."""
    params = parse_parameters(dict(parameters) if parameters else None)
    if not inputs:
        raise BadInput("json", "no inputs", accepted=_accepted_v2(card))
    names = [i.name for i in inputs]
    if len(set(names)) != len(names):
        raise BadInput("json", f"inputs named twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    scene = [i for i in inputs if i.name in SCENE_INPUTS]
    if scene:
        if len(inputs) != 1:
            raise BadInput("scene", f"a scene input beside others ({', '.join(names)})", accepted="scene or scene_uri alone")
        return _scene_v2(scene[0]), params
    if len(inputs) == 1 and not _is_band(inputs[0].name):
        return Chips(_tensor(inputs[0], card, chips=True)), params
    unknown = [n for n in names if not _is_band(n)]
    if unknown:
        raise BadInput("bands", f"inputs {', '.join(unknown)} are not band names (several inputs are raw bands)",
                       accepted=_accepted_v2(card))
    arrays = [_tensor(i, card, chips=False) for i in inputs]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise BadInput("shape", f"the bands' shapes differ: {', '.join(f'{n} {list(a.shape)}' for n, a in zip(names, arrays, strict=True))}",
                       accepted="every band [N, H, W] of one shape")
    integer = all(np.issubdtype(a.dtype, np.integer) for a in arrays)
    x = np.stack(arrays, axis=1).astype(np.float32)
    return Bands(tuple(names), x, integer), params


def _is_band(name: str) -> bool:
    """A raw band name: a SAR polarisation, a Sentinel-2 band or a common name the feature code knows
    (whether the model's features can be derived from the bands sent is checked later)."""
    from earthops_runtime.data.features import band_symbol

    return name.upper() in SAR_BANDS or band_symbol(name) is not None


def _scene_v2(inp: Any) -> Scene:
    if inp.datatype != "BYTES":
        raise BadInput("dtype", f"input {inp.name}: datatype {inp.datatype}", accepted="BYTES")
    try:
        values = inp.as_numpy().reshape(-1)
    except Exception:  # noqa: BLE001 - kserve raises several types for bad BYTES
        raise BadInput("scene", f"input {inp.name}: unreadable BYTES data") from None
    if values.size != 1:
        raise BadInput("scene", f"input {inp.name}: {values.size} elements", accepted="one scene per request, shape [1]")
    value = values[0]
    raw = value if isinstance(value, bytes) else str(value).encode()
    if inp.name == "scene_uri":
        return Scene(uri=_scene_uri(raw.decode("utf-8", "replace")))
    binary = bool((inp.parameters or {}).get("binary_data_size")) if isinstance(inp.parameters, Mapping) else False
    if binary or raw[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return Scene(data=raw)
    return Scene(data=_b64(raw.decode("ascii", "replace")))  # JSON carries bytes as base64 text


def _tensor(inp: Any, card: Card, *, chips: bool) -> np.ndarray:
    datatypes = ("FP32",) if chips else tuple(BAND_DATATYPES)
    if inp.datatype not in datatypes:
        what = "model-ready chips" if chips else f"raw band {inp.name}"
        raise BadInput("dtype", f"input {inp.name}: datatype {inp.datatype} for {what}", accepted=", ".join(datatypes))
    try:
        a = inp.as_numpy()
    except Exception as exc:  # noqa: BLE001 - kserve raises several types for data that disagrees with its shape
        raise BadInput("shape", f"input {inp.name}: its data does not match its shape {list(inp.shape)} "
                                f"and datatype {inp.datatype}: {exc}") from None
    if not chips:
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3:
            raise BadInput("shape", f"input {inp.name}: shape {list(a.shape)}",
                           accepted=f"[N, {card.chip_shape[0]}, {card.chip_shape[1]}] or [H, W] per band")
    return a


# --- to the model's input ----------------------------------------------------------------------------


def check_chips(x: np.ndarray, card: Card) -> None:
    """Shape, chip size and finiteness of model-ready chips."""
    c, (h, w) = len(card.features), card.chip_shape
    if x.ndim != 4 or x.shape[1] != c:
        raise BadInput("shape", f"chips of shape {list(x.shape)}",
                       accepted=f"[N, {c}, {h}, {w}]: {c} channels, the features {', '.join(card.features)}")
    if tuple(x.shape[2:]) != (h, w):
        raise BadInput("chip_size", f"chips of {x.shape[2]}x{x.shape[3]} pixels", accepted=f"{h}x{w} (the model's chip size)")
    if x.shape[0] == 0:
        raise BadInput("shape", "no chips (N = 0)", accepted="N >= 1")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise BadInput("nan", f"{bad} values are NaN or infinite", accepted="finite values (model-ready chips carry no nodata; "
                                                                            "send raw bands to have nodata filled as in training)")


def calibrate(names: Sequence[str], x: np.ndarray, integer: bool, params: Parameters, *,
              file_scales: Sequence[float] | None = None, file_offsets: Sequence[float] | None = None,
              file_nodata: float | None = None) -> np.ndarray:
    """Stored band values -> the dataset's units (reflectance, dB), in place on float32 ``x`` [N, B, H, W],
    with the readers' own calibration rules (:func:`earthops_runtime.data.readers.calibration_for`)."""
    nodata = params.nodata if params.nodata is not None else file_nodata
    if nodata is not None:
        x[x == np.float32(nodata)] = np.nan
    properties = {S2_BASELINE_PROPERTY: params.processing_baseline or "00.00"}
    for i, name in enumerate(names):
        scale = params.scale if params.scale is not None else (file_scales[i] if file_scales else 1.0)
        offset = params.offset if params.offset is not None else (file_offsets[i] if file_offsets else 0.0)
        cal = calibration_for(name.upper() if name.upper() in SAR_BANDS else name, properties, file_scale=scale,
                              file_offset=offset, file_unit="linear" if params.sar_unit == "linear" else None,
                              integer=integer)
        cal.apply(x[:, i])
    return x


def band_features(names: Sequence[str], x: np.ndarray, card: Card) -> np.ndarray:
    """Calibrated raw bands [N, B, H, W] -> the model's features [N, C, H, W] (not normalised), by the
    dataset's own feature code."""
    if np.isinf(x).any():
        raise BadInput("nan", "raw bands hold infinite values", accepted="finite values, NaN for nodata")
    try:
        plan, where = plan_for_features(card.features, names)
    except SpecError as exc:
        raise BadInput("bands", exc.detail, accepted=f"bands that give the model's features {', '.join(card.features)}") from None
    return plan.apply(x)[:, where]


def check_band_chips(x: np.ndarray, names: Sequence[str], card: Card) -> None:
    h, w = card.chip_shape
    if x.shape[0] == 0:
        raise BadInput("shape", "no chips (N = 0)", accepted="N >= 1")
    if tuple(x.shape[2:]) != (h, w):
        raise BadInput("chip_size", f"bands of {x.shape[2]}x{x.shape[3]} pixels", accepted=f"{h}x{w} (the model's chip size)")


def normalise(features: np.ndarray, card: Card) -> np.ndarray:
    """Training's normalisation: ``(x - mean) / std`` per feature with the card's statistics, then
    nodata (NaN) as 0, as the trainer fills it (:func:`earthops_runtime.training.trainer.fill_nodata`)."""
    x = (features - card.mean[None, :, None, None]) / card.std[None, :, None, None]
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32, copy=False)


def denormalise(x: np.ndarray, card: Card) -> np.ndarray:
    """Model-ready chips back in the features' units (what observers get)."""
    return x * card.std[None, :, None, None] + card.mean[None, :, None, None]


__all__ = ["BAND_DATATYPES", "Bands", "Chips", "Decoded", "Parameters", "Scene", "band_features", "calibrate",
           "check_band_chips", "check_chips", "decode_v1", "decode_v2", "denormalise", "normalise", "parse_parameters"]
