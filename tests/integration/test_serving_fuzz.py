"""The predictor's decoders fuzzed (Hypothesis): JSON bodies (v1 and v2), the v2 binary tensor extension
and GeoTIFF scene bytes. Every input gets a 2xx or a 4xx with a JSON error — never a 5xx, a crash or a
hang — and the server still serves a good request afterwards.

Against the real predictor process on loopback, the same one ``test_serving.py`` starts (its fixtures:
two registered versions of iceberg-cnn on the session's ship/iceberg dataset). The inputs are drawn
around the valid space: valid requests with one part replaced (a value of another type, a wrong shape,
datatype, size or name, NaN and huge numbers, bytes cut short), arbitrary JSON, and GeoTIFFs written by
GDAL with random band counts, sizes, data types, CRSs, geotransforms and descriptions, then bit-flipped or
truncated. Derandomized: the same cases every run (``FUZZ_CASES`` of them in all).
"""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.io import MemoryFile
from rasterio.transform import Affine

from tests.integration.test_serving import NAME, client, normalise, predictor, registry  # noqa: F401 - fixtures

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CASES = {"json": 200, "binary": 150, "geotiff": 150}
FUZZ_CASES = sum(CASES.values())
V1, V2 = f"/v1/models/{NAME}:predict", f"/v2/models/{NAME}/infer"
PATHS = [V1, V2, f"/v2/models/{NAME}/versions/v1/infer", f"/v1/models/{NAME}:predict"]
CHIP = (3, 75, 75)  # (HH, HV, band_avg), 75 x 75
DATATYPES = ["FP32", "FP64", "FP16", "INT8", "INT32", "INT64", "UINT8", "UINT16", "BOOL", "BYTES", "BF16", "fp32", ""]


def fuzz_settings(kind: str):
    return settings(max_examples=CASES[kind], deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


def check(r: httpx.Response, predictor) -> None:  # noqa: F811 - the fixture's value
    """2xx, or a 4xx naming the problem; the process still runs."""
    assert predictor["proc"].poll() is None, "the predictor died"
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        body = r.json()
        assert body.get("error"), body


# --- JSON ------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30)
numbers = st.one_of(st.floats(width=32, allow_nan=False, allow_infinity=False, min_value=-100, max_value=100),
                    st.floats(), st.integers(-2**64, 2**64), st.sampled_from([1e39, -1e39, 0.0, -0.0]))
shapes = st.lists(st.integers(-2, 80), min_size=0, max_size=5)


@st.composite
def v2_inputs(draw) -> dict:
    name = draw(st.sampled_from(["chips", "HH", "HV", "band_avg", "scene", "x", ""]) | st.text(max_size=8))
    shape = draw(st.sampled_from([[1, *CHIP], [2, *CHIP], [1, 75, 75], [1]]) | shapes)
    size = int(np.prod(shape)) if shape and all(s >= 0 for s in shape) and np.prod(shape) <= 3 * 75 * 75 * 2 else 4
    if draw(st.booleans()):
        data: object = [draw(numbers)] * max(size, 0)
    else:
        data = draw(st.lists(numbers, max_size=8) | json_values)
    doc = {"name": name, "shape": shape, "datatype": draw(st.sampled_from(DATATYPES)), "data": data}
    for key in draw(st.lists(st.sampled_from(list(doc)), max_size=2)):
        doc[key] = draw(json_values)  # one part of another type
    if draw(st.booleans()):
        doc["parameters"] = draw(st.dictionaries(st.sampled_from(["binary_data_size", "content_type", "x"]),
                                                 json_values, max_size=2))
    return doc


@st.composite
def json_bodies(draw) -> tuple[str, bytes]:
    path = draw(st.sampled_from(PATHS))
    shape = (draw(st.integers(1, 2)), *CHIP)
    which = draw(st.integers(0, 4))
    if which == 0:
        body: object = draw(json_values)
    elif which == 1:  # v1 instances: chips, band dictionaries, scenes
        instance = draw(st.one_of(
            st.just(np.zeros(shape[1:], np.float32).tolist()),
            st.lists(st.lists(numbers, max_size=4), max_size=4),
            st.dictionaries(st.sampled_from(["HH", "HV", "VV", "B04", "scene", ""]),
                            json_values | st.just(np.zeros((75, 75)).tolist()), max_size=3),
            st.fixed_dictionaries({"scene": st.dictionaries(st.sampled_from(["b64", "uri", "x"]),
                                                            st.text(max_size=30) | json_values, max_size=2)})))
        body = {"instances": draw(st.lists(st.just(instance), min_size=0, max_size=3))}
    else:  # v2 inputs
        body = {"inputs": draw(st.lists(v2_inputs(), min_size=0, max_size=3))}
    if isinstance(body, dict) and draw(st.booleans()):
        body["parameters"] = draw(st.dictionaries(
            st.sampled_from(["overlap", "bbox", "sar_unit", "batch", "x"]),
            json_values | st.lists(numbers, min_size=4, max_size=4), max_size=3))
    text = json.dumps(body, allow_nan=True).encode()
    if draw(st.integers(0, 9)) == 0:  # bytes cut short or not UTF-8
        text = text[:draw(st.integers(0, len(text)))] + draw(st.binary(max_size=4))
    return path, text


@fuzz_settings("json")
@given(case=json_bodies())
def test_any_json_body_gets_a_2xx_or_a_4xx(client, predictor, case):  # noqa: F811
    path, body = case
    check(client.post(path, content=body, headers={"content-type": "application/json"}), predictor)


# --- the v2 binary tensor extension ------------------------------------------------------------------------


@st.composite
def binary_requests(draw) -> tuple[bytes, dict[str, str]]:
    n = draw(st.integers(1, 2))
    x = np.zeros((n, *CHIP), np.float32)
    tensor = {"name": "chips", "shape": list(x.shape), "datatype": "FP32",
              "parameters": {"binary_data_size": x.nbytes}}
    which = draw(st.integers(0, 5))
    payload = x.tobytes()
    if which == 0:
        tensor["parameters"]["binary_data_size"] = draw(st.integers(-10, 2 * x.nbytes) | json_values)
    elif which == 1:
        tensor["shape"] = draw(shapes)
    elif which == 2:
        tensor["datatype"] = draw(st.sampled_from(DATATYPES))
    elif which == 3:
        payload = payload[:draw(st.integers(0, len(payload)))]
    elif which == 4:
        tensor = draw(v2_inputs())
    else:
        payload = draw(st.binary(max_size=64)) * draw(st.integers(1, 1000))
    header_doc = {"inputs": [tensor], **draw(st.sampled_from([
        {}, {"outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]},
        {"outputs": [{"name": "nope", "parameters": {"binary_data": "yes"}}]}]))}
    header = json.dumps(header_doc).encode()
    length: object = len(header)
    if draw(st.integers(0, 3)) == 0:
        length = draw(st.sampled_from([-1, 0, len(header) - 1, len(header) + 1, 10**12, "abc", "", "1e3", "+1"]))
    body = header + payload
    if draw(st.integers(0, 5)) == 0:
        body = draw(st.binary(max_size=200))
    return body, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(length)}


@fuzz_settings("binary")
@given(case=binary_requests())
def test_any_v2_binary_request_gets_a_2xx_or_a_4xx(client, predictor, case):  # noqa: F811
    body, headers = case
    check(client.post(V2, content=body, headers=headers), predictor)


# --- GeoTIFF scene bytes ---------------------------------------------------------------------------------

CRSS = ["EPSG:32633", "EPSG:4326", "EPSG:3857", "EPSG:32760", "EPSG:3413", None]
BANDS = ["HH", "HV", "VV", "VH", "B04", "", "band_avg"]


@st.composite
def geotiffs(draw) -> bytes:
    count = draw(st.integers(1, 4))
    height, width = draw(st.integers(1, 170)), draw(st.integers(1, 170))
    dtype = draw(st.sampled_from(["float32", "float64", "uint8", "int16", "uint16", "int32", "complex64"]))
    size = draw(st.sampled_from([10.0, 0.0001, 1e6, -10.0]))
    transform = Affine(size, draw(st.sampled_from([0.0, 0.0, 2.0])), draw(st.sampled_from([500000.0, -180.0, 1e9])),
                       draw(st.sampled_from([0.0, 0.0, -1.0])), -abs(size) * draw(st.sampled_from([1, 1, -1])),
                       draw(st.sampled_from([6000000.0, 90.0, 0.0])))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    data = rng.normal(-20, draw(st.sampled_from([3.0, 1e30])), (count, height, width))
    if draw(st.booleans()):
        data[:, : height // 2] = draw(st.sampled_from([np.nan, np.inf, 0.0]))
    floating = dtype in ("float32", "float64", "complex64")
    nodata = draw(st.sampled_from([None, 0, -9999] if floating else [None, 0]))
    if not floating:
        limits = np.iinfo(dtype)
        data = np.clip(np.nan_to_num(data), limits.min, limits.max)
    with MemoryFile() as m:
        with m.open(driver="GTiff", width=width, height=height, count=count, dtype=dtype,
                    crs=draw(st.sampled_from(CRSS)), transform=transform, nodata=nodata) as d:
            d.write(data.astype(dtype))
            for i in range(1, count + 1):
                description = draw(st.sampled_from(BANDS))
                if description:
                    d.set_band_description(i, description)
        raw = bytearray(m.read())
    damage = draw(st.integers(0, 3))
    if damage == 1:  # bits flipped anywhere, headers included
        for at in draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=8)):
            raw[at] ^= 1 << draw(st.integers(0, 7))
    elif damage == 2:
        raw = raw[:draw(st.integers(0, len(raw)))]
    elif damage == 3:
        at = draw(st.integers(0, len(raw)))
        raw[at:at] = draw(st.binary(min_size=1, max_size=64))
    return bytes(raw)


@fuzz_settings("geotiff")
@given(tif=geotiffs(), form=st.sampled_from(["v1", "v2", "v2-binary"]),
       parameters=st.dictionaries(st.sampled_from(["overlap", "bbox"]),
                                  st.integers(-5, 100) | st.lists(st.floats(-200, 200), min_size=4, max_size=4),
                                  max_size=2))
def test_any_geotiff_scene_gets_a_2xx_or_a_4xx(client, predictor, tif, form, parameters):  # noqa: F811
    b64 = base64.b64encode(tif).decode()
    if form == "v1":
        r = client.post(V1, json={"instances": [{"scene": {"b64": b64}}], "parameters": parameters})
    elif form == "v2":
        r = client.post(V2, json={"inputs": [{"name": "scene", "shape": [1], "datatype": "BYTES", "data": [b64]}],
                                  "parameters": parameters})
    else:  # the scene's bytes as a binary BYTES tensor: a 4-byte little-endian length, then the bytes
        header = json.dumps({"inputs": [{"name": "scene", "shape": [1], "datatype": "BYTES",
                                         "parameters": {"binary_data_size": len(tif) + 4}}],
                             "parameters": parameters}).encode()
        r = client.post(V2, content=header + len(tif).to_bytes(4, "little") + tif,
                        headers={"Content-Type": "application/octet-stream",
                                 "Inference-Header-Content-Length": str(len(header))})
    check(r, predictor)


def test_the_predictor_serves_after_the_fuzzing(client, predictor, registry):  # noqa: F811
    """Runs last in this module: the server that took every case above still answers a good request."""
    assert client.get("/v2/health/ready").status_code == 200
    x = normalise(registry, np.zeros((2, *CHIP), np.float32))
    r = client.post(V1, json={"instances": x.tolist()})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2
    print(f"\n{FUZZ_CASES} fuzz cases: {CASES}")
