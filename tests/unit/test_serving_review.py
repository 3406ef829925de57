"""Review findings in the predictor: each test fails without its fix."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import orjson
import pytest
from rasterio.io import MemoryFile
from rasterio.transform import from_origin

from earthops_runtime.serving import inputs as forms
from earthops_runtime.serving.errors import BadInput
from earthops_runtime.serving.loaded import Card, LoadedModel
from earthops_runtime.serving.model import EOModel, normalised_uri
from earthops_runtime.serving.protocol import decode_request

pytestmark = pytest.mark.unit


def served(task: str = "segmentation", classes: int = 2, **kwargs) -> EOModel:
    names = tuple(f"c{i}" for i in range(classes))
    card = Card(name="ice", version="v1", task=task, features=("HH",), mean=np.zeros(1, np.float32),
                std=np.ones(1, np.float32), classes=names, num_outputs=classes, chip_shape=(4, 4), batch=-1)
    return EOModel("ice", [LoadedModel("file:///store/models/default/ice/v1", card, module=None, device="cpu")], **kwargs)


def geotiff(width: int, height: int, count: int = 1) -> bytes:
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count, "dtype": "float32",
               "crs": "EPSG:32633", "transform": from_origin(500000, 7000000, 10, 10), "compress": "deflate"}
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(np.zeros((count, height, width), np.float32))
            for i in range(1, count + 1):
                dst.set_band_description(i, "HH")
        return mem.read()


def scene(model: EOModel, data: bytes) -> BadInput:
    with pytest.raises(BadInput) as err:
        asyncio.run(model._scene(model.primary, forms.Scene(data=data), forms.Parameters(), {}, None))
    return err.value


def test_a_scene_with_too_many_pixels_is_refused_with_413_before_it_is_read():
    err = scene(served(max_scene_pixels=999), geotiff(100, 10))
    assert err.status == 413 and "100x10x1 = 1000" in err.message and "999" in str(err.accepted)
    # the scene fits, its 10-class mosaic does not
    err = scene(served(classes=10, max_scene_pixels=5000), geotiff(100, 10))
    assert err.status == 413 and "mosaic" in err.message


@pytest.mark.parametrize("uri", ["file:///data/scenes/../secret.tif", "file:///data/scenes/%2e%2e/secret.tif",
                                 "file:///data/scenes/%2E%2E%2Fsecret.tif", "s3://bucket/scenes/../other/x.tif"])
def test_scene_uris_with_dot_dot_are_refused_before_anything_is_read(uri, tmp_path):
    model = served(scene_uri_prefixes=["file:///data/scenes/", "s3://bucket/scenes/"])
    with pytest.raises(BadInput) as err:
        model._read_uri(uri)
    assert err.value.status == 400 and uri in err.value.message and "'..'" in err.value.message


def test_output_uris_with_dot_dot_are_refused_and_others_compared_normalised(tmp_path):
    model = served(output_uri_prefixes=[f"file://{tmp_path}/out/"])
    with pytest.raises(BadInput) as err:
        asyncio.run(model._scene_cog(model.primary, b"cog", forms.Parameters(output_uri=f"{tmp_path}/out/%2e%2e/x.tif"),
                                     {}, None))
    assert err.value.status == 400 and "'..'" in err.value.message
    answer = asyncio.run(model._scene_cog(model.primary, b"cog", forms.Parameters(output_uri=f"{tmp_path}/out/./a//x.tif"),
                                          {}, None))
    assert answer["predictions"][0]["cog"]["uri"] == f"file://{tmp_path}/out/a/x.tif"
    assert (tmp_path / "out" / "a" / "x.tif").read_bytes() == b"cog"
    assert normalised_uri("s3://b/scenes/./x%20y.tif", "scene", "scene") == "s3://b/scenes/x y.tif"


@pytest.mark.parametrize("shape", [[2**62, 4], [2**63 - 1, 2], [2**40, 2**40, 0], [2**62, 2**62, 0]])
def test_a_shape_whose_product_overflows_is_a_bad_shape_not_a_500(shape):
    body = orjson.dumps({"inputs": [{"name": "chips", "shape": shape, "datatype": "FP32", "data": []}]})
    with pytest.raises(BadInput) as err:
        decode_request(body, {}, "ice")
    assert err.value.code == "shape" and err.value.status == 400


def test_large_v1_bodies_are_decoded_and_answers_encoded_off_the_event_loop(monkeypatch):
    model = served(task="segmentation", classes=2)
    threads: dict[str, str] = {}
    decode, encode = forms.decode_v1, model._encode

    def decode_v1(payload, card):
        threads["decode"] = threading.current_thread().name
        return decode(payload, card)

    def encode_v1(*args):
        threads["encode"] = threading.current_thread().name
        return encode(*args)

    async def predict(x):
        return np.full((len(x), 2, 4, 4), 0.5, np.float32)

    monkeypatch.setattr(forms, "decode_v1", decode_v1)
    monkeypatch.setattr(model, "_encode", encode_v1)
    monkeypatch.setattr(model.batchers["v1"], "predict", predict)

    async def call(n: int) -> tuple[dict, str]:
        answer = await model._predict(model.primary, {"instances": np.zeros((n, 1, 4, 4)).tolist()}, None)
        return answer, threading.current_thread().name

    answer, loop_thread = asyncio.run(call(4))  # small: inline
    assert threads == {"decode": loop_thread, "encode": loop_thread} and len(answer["predictions"]) == 4
    answer, loop_thread = asyncio.run(call(4096))  # 65536 values: on the decode pool
    assert threads["decode"].startswith("earthops-decode") and threads["encode"].startswith("earthops-decode")
    assert len(answer["predictions"]) == 4096 and answer["labels"][0] == [[0] * 4] * 4


@pytest.mark.parametrize("path", ["/v2/models/ice/versions/v1/infer", "/v2/models/ice/infer"])
def test_a_client_pin_header_never_picks_the_version(path):
    from earthops_runtime.serving.model import PIN_HEADER
    from earthops_runtime.serving.server import EarthopsLayer

    seen: list[list[bytes]] = []

    async def inner(scope, receive, send):
        seen.append([v for k, v in scope["headers"] if k == PIN_HEADER.encode()])

    class Repository:
        def get_model(self, name):
            return served() if name == "ice" else None

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    layer = EarthopsLayer(inner, Repository(), 1 << 20)
    scope = {"type": "http", "path": path, "raw_path": path.encode(),
             "headers": [(PIN_HEADER.encode(), b"v2"), (b"content-length", b"2")]}
    asyncio.run(layer(scope, receive, None))
    assert seen == [[b"v1"] if "versions" in path else []]


def test_observers_drop_beyond_the_bytes_waiting_not_only_the_batch_count():
    from earthops_runtime.serving import metrics
    from earthops_runtime.serving.observe import Observers

    release = threading.Event()
    seen: list[int] = []

    class Slow:
        def observe(self, batch):
            release.wait(10)
            seen.append(batch.features.nbytes)

    observers = Observers([Slow()], max_pending=100, max_pending_bytes=800)  # 3 batches of 264 bytes
    dropped = metrics.OBSERVER_DROPPED.labels(model="bytes")._value.get()

    def publish():
        observers.publish(model_name="bytes", model_version="v1", features=np.zeros((1, 1, 8, 8), np.float32),
                          feature_names=["a"], outputs=np.zeros((1, 2), np.float32), class_names=["x", "y"],
                          task="classification", request_id=None)

    for _ in range(5):
        publish()
    assert metrics.OBSERVER_DROPPED.labels(model="bytes")._value.get() == dropped + 2
    release.set()
    observers.drain(timeout=10)
    publish()  # the bytes delivered are free again
    observers.drain(timeout=10)
    assert len(seen) == 4 and metrics.OBSERVER_DROPPED.labels(model="bytes")._value.get() == dropped + 2
    observers.close()


def test_a_band_is_a_raw_band_name_and_a_model_s_derived_feature_is_not():
    from earthops_runtime.serving.inputs import _is_band

    assert _is_band("HH") and _is_band("B04") and _is_band("red")
    assert not _is_band("NDVI") and not _is_band("HH_HV_ratio")  # the docstring no longer promises these


def test_closing_the_observers_delivers_the_queue_then_closes_each_observer_that_can():
    from earthops_runtime.serving.observe import Observers

    events: list[str] = []

    class Monitor:
        def observe(self, batch):
            events.append("observe")

        def close(self):
            events.append("close")

    class BrokenClose(Monitor):
        def close(self):
            raise RuntimeError("no")

    class Plain:
        def observe(self, batch):
            pass

    observers = Observers([BrokenClose(), Plain(), Monitor()])
    observers.publish(model_name="m", model_version="v1", features=np.zeros((1, 1, 2, 2), np.float32),
                      feature_names=["a"], outputs=np.zeros((1, 2), np.float32), class_names=["x", "y"],
                      task="classification", request_id=None)
    observers.close()
    assert events == ["observe", "observe", "close"]
