"""Request decoding, property-based: whatever a client sends, the decoders and the checks after them
either give the model's input or refuse it with a :class:`BadInput` naming the problem — never another
exception (which would be a 500)."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kserve.protocol.infer_type import InferInput

from earthops_runtime.serving import inputs as forms
from earthops_runtime.serving.errors import BadInput
from earthops_runtime.serving.loaded import Card
from earthops_runtime.serving.scene import OpenScene, plan_windows

pytestmark = pytest.mark.unit

CARD = Card(name="iceberg", version="v1", task="classification", features=("HH", "HV", "band_avg"),
            mean=np.array([-20, -25, -22.5], np.float32), std=np.array([4, 3, 3.2], np.float32),
            classes=("ship", "iceberg"), num_outputs=2, chip_shape=(4, 4), batch=-1)

json_scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.sampled_from(["HH", "HV", "XX", "scene", "b64", "uri", "B04", "x"]),
                                             inner, max_size=4), max_leaves=60)
arrays = st.integers(0, 3).flatmap(lambda n: st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5))
                                   .map(lambda s: np.random.default_rng(n).normal(-20, 5, (n, *s)).tolist()))
parameters = st.none() | st.dictionaries(st.sampled_from(list(forms.PARAMETERS) + ["binary_data_output"]),
                                         json_scalars | st.lists(json_scalars, max_size=5), max_size=4)


def model_input(decoded: forms.Decoded, params: forms.Parameters) -> None:
    """What the server does with a decoded request up to the forward (scenes: up to the windows)."""
    if isinstance(decoded, forms.Chips):
        forms.check_chips(decoded.x, CARD)
        assert decoded.x.shape[1:] == (3, 4, 4)
    elif isinstance(decoded, forms.Bands):
        forms.check_band_chips(decoded.x, decoded.names, CARD)
        raw = forms.calibrate(decoded.names, decoded.x.copy(), decoded.integer, params)
        features = forms.band_features(decoded.names, raw, CARD)
        x = forms.normalise(features, CARD)
        assert x.shape[1:] == (3, 4, 4) and np.isfinite(x).all()
    else:
        if decoded.data is None:
            return
        scene = OpenScene(decoded.data, "the scene")
        try:
            names = scene.band_names(params)
            plan_windows(scene.ds.height, scene.ds.width, CARD.chip_shape, params.overlap, scene.area(params.bbox))
            assert names
        finally:
            scene.close()


def outcome(run) -> str:
    try:
        run()
    except BadInput as exc:
        assert str(exc) and exc.code and 400 <= exc.status < 500
        return "refused"
    return "accepted"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=json_values | st.fixed_dictionaries({"instances": json_values | arrays}, optional={"parameters": parameters}))
def test_any_v1_body_is_decoded_or_refused(body):
    outcome(lambda: model_input(*forms.decode_v1(body, CARD)))


@settings(max_examples=300, deadline=None)
@given(instances=st.lists(st.fixed_dictionaries({}, optional={
    "HH": arrays.map(lambda a: a[0][0] if a and a[0] else a) | json_values,
    "HV": st.just(np.zeros((4, 4)).tolist()) | json_values,
    "B04": st.just(np.ones((4, 4), int).tolist())}), min_size=1, max_size=3), params=parameters)
def test_any_raw_band_instances_are_decoded_or_refused(instances, params):
    outcome(lambda: model_input(*forms.decode_v1({"instances": instances, "parameters": params}, CARD)))


datatypes = st.sampled_from(["FP32", "FP64", "FP16", "INT32", "UINT16", "UINT8", "BOOL", "BYTES", "INT64", "XYZ"])
shapes = st.lists(st.integers(-1, 5), min_size=0, max_size=5)


@settings(max_examples=400, deadline=None)
@given(tensors=st.lists(st.tuples(st.sampled_from(["chips", "HH", "HV", "scene", "scene_uri", "VV", "foo"]), shapes,
                                  datatypes, st.lists(json_scalars, max_size=40)), min_size=0, max_size=3),
       params=parameters)
def test_any_v2_inputs_are_decoded_or_refused(tensors, params):
    def run():
        inputs = [InferInput(name, shape, datatype, data) for name, shape, datatype, data in tensors]
        model_input(*forms.decode_v2(inputs, CARD, params))
    outcome(run)


@settings(max_examples=200, deadline=None)
@given(blob=st.binary(max_size=600) | st.sampled_from([b"II*\x00" + bytes(200), b"MM\x00*" + bytes(100)]))
def test_any_bytes_as_a_scene_are_read_or_refused(blob):
    body = {"instances": [{"scene": {"b64": base64.b64encode(blob).decode()}}]}
    assert outcome(lambda: model_input(*forms.decode_v1(body, CARD))) == "refused"


def test_what_is_accepted_decodes_as_expected():
    x = np.zeros((2, 3, 4, 4), np.float32)
    decoded, _ = forms.decode_v1({"instances": x.tolist()}, CARD)
    assert isinstance(decoded, forms.Chips) and decoded.x.shape == (2, 3, 4, 4)
    decoded, params = forms.decode_v1({"instances": [{"HV": x[0, 0].tolist(), "HH": x[0, 1].tolist()}],
                                       "parameters": {"sar_unit": "linear", "overlap": 2}}, CARD)
    assert isinstance(decoded, forms.Bands) and decoded.names == ("HV", "HH") and params.sar_unit == "linear"
    assert params.overlap == 2
    hh = InferInput("HH", [1, 4, 4], "UINT16", [5] * 16)
    hv = InferInput("HV", [2, 4, 4], "FP32", [1.0] * 32)
    with pytest.raises(BadInput, match="shapes differ"):
        forms.decode_v2([hh, hv], CARD, None)
    decoded, _ = forms.decode_v2([InferInput("HH", [1, 4, 4], "FP32", [-20.0] * 16),
                                  InferInput("HV", [1, 4, 4], "FP32", [-25.0] * 16)], CARD, None)
    features = forms.band_features(decoded.names, decoded.x, CARD)
    np.testing.assert_allclose(features[0, :, 0, 0], [-20, -25, -22.5])
    np.testing.assert_allclose(forms.normalise(features, CARD)[0, :, 0, 0], [0, 0, 0], atol=1e-6)


def test_linear_sar_and_digital_numbers_are_calibrated_as_the_readers_do():
    params = forms.parse_parameters({"sar_unit": "linear"})
    x = np.full((1, 2, 2, 2), 0.01, np.float32)
    forms.calibrate(["HH", "HV"], x, False, params)
    np.testing.assert_allclose(x, -20.0, atol=1e-5)
    dn = np.full((1, 1, 2, 2), 2000.0, np.float32)
    forms.calibrate(["B04"], dn, True, forms.parse_parameters({"processing_baseline": "05.09"}))
    np.testing.assert_allclose(dn, 0.1, atol=1e-6)  # 2000 * 1e-4 - 0.1
    nodata = np.array([[[[0.0, 1000.0]]]], np.float32)
    forms.calibrate(["B04"], nodata, True, forms.parse_parameters({"nodata": 0}))
    assert np.isnan(nodata[0, 0, 0, 0]) and nodata[0, 0, 0, 1] == pytest.approx(0.1)


@pytest.mark.parametrize(("raw", "match"), [
    ({"sar_unit": "furlongs"}, "sar_unit"), ({"overlap": 2.5}, "overlap"), ({"overlap": -1}, "overlap"),
    ({"bbox": [10, 10, 5, 20]}, "bbox"), ({"bbox": "1,2,3"}, "bbox"), ({"scale": "x"}, "scale"),
    ({"scale": float("inf")}, "scale"), ({"output": "mask"}, "output"), ({"output_uri": "ftp://x"}, "output_uri"),
    ({"bands": [1, 2]}, "bands"), ([1], "parameters")])
def test_bad_parameters_are_named(raw, match):
    with pytest.raises(BadInput, match=match):
        forms.parse_parameters(raw)


# --- v2 REST bodies (protocol.py) ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(head=json_values | st.fixed_dictionaries({"inputs": st.lists(st.fixed_dictionaries(
    {"name": st.sampled_from(["chips", "HH", "HV", "scene"]), "shape": shapes, "datatype": datatypes},
    optional={"data": st.lists(json_scalars, max_size=20) | json_scalars,
              "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-2, 80) | json_scalars})}),
    max_size=3)}, optional={"outputs": json_values, "parameters": parameters}),
       tail=st.binary(max_size=80), declared=st.none() | st.integers(-5, 2000) | st.just("x"))
def test_any_v2_body_is_decoded_or_refused(head, tail, declared):
    import json

    from earthops_runtime.serving.protocol import decode_request

    text = json.dumps(head).encode()
    headers = {} if declared is None else {"inference-header-content-length": str(len(text) if declared == 0 else declared)}

    def run():
        request = decode_request(text + tail, headers, "iceberg")
        model_input(*forms.decode_v2(request.inputs, CARD, request.parameters))
    outcome(run)


def test_binary_v2_bodies_round_trip():
    import json

    from kserve.protocol.infer_type import InferOutput, InferResponse

    from earthops_runtime.serving.protocol import decode_request, encode_response

    x = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    head = json.dumps({"inputs": [{"name": "chips", "shape": [2, 3, 4, 4], "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}, {"name": "class_index"}]}).encode()
    request = decode_request(head + x.tobytes(), {"inference-header-content-length": str(len(head))}, "m")
    np.testing.assert_array_equal(request.inputs[0].as_numpy(), x)
    probs = np.full((2, 2), 0.5, np.float32)
    response = InferResponse("id", "m", [InferOutput("probabilities", [2, 2], "FP32", data=probs),
                                         InferOutput("class_index", [2], "INT64", data=np.array([0, 1]))], model_version="v1")
    body, length = encode_response(response, request)
    meta = json.loads(body[:length])
    assert meta["model_version"] == "v1" and [o["name"] for o in meta["outputs"]] == ["probabilities", "class_index"]
    assert meta["outputs"][1]["data"] == [0, 1]
    np.testing.assert_array_equal(np.frombuffer(body[length:], np.float32).reshape(2, 2), probs)
    with pytest.raises(BadInput, match="bytes after"):
        decode_request(head + x.tobytes() + b"extra", {"inference-header-content-length": str(len(head))}, "m")
