"""Segmentation scenes and the in-process app: a U-Net registered in a real S3 store (SeaweedFS) and
served from ``s3://`` with the store's credentials from the environment; a Sentinel-2 GeoTIFF (digital
numbers, nodata) read from S3 and predicted into a COG in the scene's grid, written to S3 or returned
inline; the stitched classes and probabilities compared with the model run in this process window by
window. In process (``httpx.ASGITransport``): what observers get, and arbitrary payloads -> 2xx or 4xx.
"""

from __future__ import annotations

import asyncio
import base64
import re
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.io import MemoryFile
from rasterio.transform import from_origin

from earthops.core.store import Store
from earthops_runtime.data.features import plan_features
from earthops_runtime.models import build_model
from earthops_runtime.registry import ModelCard, load_model, register_model
from earthops_runtime.serving import build_models, create_app
from tests.infra.observers import Broken, Recorder
from tests.infra.proc import free_port, spawn, stop, unique_name, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NAME = "landcover"
BANDS = ("B02", "B03", "B04", "B08")
FEATURES = [*BANDS, "NDVI"]
CLASSES = ["water", "forest", "urban"]
CHIP = 32
MEAN = [0.05, 0.07, 0.06, 0.25, 0.4]
STD = [0.02, 0.03, 0.03, 0.08, 0.2]
TRANSFORM = from_origin(600000, 5300000, 10, 10)


def register(store: Store) -> str:
    torch.manual_seed(3)
    model = build_model("unet-small", {"width": 8, "depth": 2}, in_channels=len(FEATURES), num_classes=len(CLASSES),
                        task="segmentation", chip_shape=(CHIP, CHIP))
    card = ModelCard(architecture="unet-small", parameters={"width": 8, "depth": 2}, task="segmentation",
                     classes=CLASSES, features=FEATURES, chip_shape=(CHIP, CHIP), mean=MEAN, std=STD,
                     metrics={"val_miou": 0.3}, hyperparameters={}, dataset_uri=f"{store.uri}/datasets/none",
                     dataset_collection=None)
    return register_model(store, namespace="default", name=NAME, model=model,
                          example_input=torch.randn(2, len(FEATURES), CHIP, CHIP), card=card,
                          training_stats={"splits": {}}).uri


def scene_dn(height: int = 80, width: int = 100) -> np.ndarray:
    """Sentinel-2 L2A digital numbers (uint16, 0 = nodata in a corner)."""
    rng = np.random.default_rng(11)
    dn = rng.integers(200, 4000, (len(BANDS), height, width)).astype(np.uint16)
    dn[:, :3, :3] = 0
    return dn


def geotiff(dn: np.ndarray) -> bytes:
    with MemoryFile() as m:
        with m.open(driver="GTiff", width=dn.shape[2], height=dn.shape[1], count=len(BANDS), dtype="uint16",
                    crs="EPSG:32631", transform=TRANSFORM, nodata=0) as d:
            d.write(dn)
            for i, b in enumerate(BANDS, 1):
                d.set_band_description(i, b)
        return m.read()


def in_process_mosaic(module, dn: np.ndarray, overlap: int) -> np.ndarray:
    """The expected probabilities: every window through the dataset's feature code, the card's
    normalisation and the exported program here, averaged where windows overlap."""
    reflectance = dn.astype(np.float32) * 1e-4
    reflectance[dn == 0] = np.nan
    features = plan_features(list(BANDS), ["NDVI"]).apply(reflectance[None])[0]
    x = np.nan_to_num((features - np.array(MEAN, np.float32)[:, None, None]) / np.array(STD, np.float32)[:, None, None])
    h, w = dn.shape[1:]
    step = CHIP - overlap
    rows = sorted({*range(0, h - CHIP + 1, step), h - CHIP})
    cols = sorted({*range(0, w - CHIP + 1, step), w - CHIP})
    total = np.zeros((len(CLASSES), h, w), np.float32)
    count = np.zeros((h, w), np.float32)
    with torch.no_grad():
        for r in rows:
            for c in cols:
                logits = module(torch.from_numpy(x[None, :, r:r + CHIP, c:c + CHIP].astype(np.float32)))
                total[:, r:r + CHIP, c:c + CHIP] += torch.softmax(logits, 1)[0].numpy()
                count[r:r + CHIP, c:c + CHIP] += 1
    return total / count


@pytest.fixture(scope="module")
def s3(s3_server):
    bucket = s3_server.create_bucket(unique_name("serving-scenes", random_bytes=4))
    env = s3_server.env()
    yield {"env": env, "root": f"s3://{bucket}/earthops", "store": Store.from_uri(f"s3://{bucket}/earthops", env=env)}
    s3_server.delete_bucket(bucket)


@pytest.fixture(scope="module")
def s3_predictor(s3, tmp_path_factory):
    uri = register(s3["store"])
    assert uri.startswith("s3://")
    log = tmp_path_factory.mktemp("s3-predictor") / "predictor.log"
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("AWS_")} | s3["env"]
    proc = spawn([sys.executable, "-m", "earthops_runtime.serving", "--model-uri", uri, "--model-name", NAME,
                  "--host", "127.0.0.1", "--http_port", "0", "--max-batch-size", "4",
                  "--output-uri-prefix", f"{s3['root']}/predictions/"], log_path=log, env=env, cwd=ROOT)
    try:
        wait_for(lambda: "earthops predictor ready at" in log.read_text(), timeout=120, what="predictor", proc=proc,
                 log_path=log)
        url = re.search(r"ready at (http://\S+)", log.read_text()).group(1)
        module = load_model(s3["store"], "default", NAME, "v1", exported=True)[0]
        yield {"url": url, "module": module}
    finally:
        stop(proc)


def test_a_scene_on_s3_becomes_a_cog_of_classes_in_its_grid_on_s3(s3, s3_predictor):
    dn = scene_dn()
    s3["store"].write_bytes("scenes/s2.tif", geotiff(dn))
    with httpx.Client(base_url=s3_predictor["url"], timeout=120) as c:
        r = c.post(f"/v1/models/{NAME}:predict", json={
            "instances": [{"scene": {"uri": f"{s3['root']}/scenes/s2.tif"}}],
            "parameters": {"overlap": 8, "output_uri": f"{s3['root']}/predictions/s2-classes.tif"}})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["cog"] == {"uri": f"{s3['root']}/predictions/s2-classes.tif"}
    with httpx.Client(base_url=s3_predictor["url"], timeout=120) as c:  # results go only where allowed
        r = c.post(f"/v1/models/{NAME}:predict", json={
            "instances": [{"scene": {"uri": f"{s3['root']}/scenes/s2.tif"}}],
            "parameters": {"output_uri": f"{s3['root']}/models/default/{NAME}/v1/model.pt2"}})
    assert r.status_code == 403 and r.json()["reason"] == "output_uri", r.text
    with MemoryFile(s3["store"].read_bytes("predictions/s2-classes.tif")) as m, m.open() as cog:
        assert cog.crs.to_epsg() == 32631 and cog.transform == TRANSFORM and cog.shape == dn.shape[1:]
        assert cog.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert cog.dtypes == ("uint8",) and cog.nodata == 255
        classes = cog.read(1)
    expected = in_process_mosaic(s3_predictor["module"], dn, overlap=8).argmax(0)
    assert (classes == expected).mean() > 0.999  # float ties aside, the same classes pixel for pixel


def test_probabilities_inline_and_over_v2(s3, s3_predictor):
    dn = scene_dn(64, 70)
    tif = geotiff(dn)
    expected = in_process_mosaic(s3_predictor["module"], dn, overlap=0)
    with httpx.Client(base_url=s3_predictor["url"], timeout=120) as c:
        r = c.post(f"/v1/models/{NAME}:predict", json={"instances": [{"scene": {"b64": base64.b64encode(tif).decode()}}],
                                                        "parameters": {"output": "probabilities"}})
        assert r.status_code == 200, r.text
        cog = base64.b64decode(r.json()["predictions"][0]["cog"]["b64"])
        with MemoryFile(cog) as m, m.open() as d:
            assert d.count == len(CLASSES) and d.descriptions == tuple(CLASSES) and d.transform == TRANSFORM
            np.testing.assert_allclose(d.read(), expected, atol=1e-4)
        r = c.post(f"/v2/models/{NAME}/infer", json={
            "inputs": [{"name": "scene", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(tif).decode()]}]})
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        assert out["name"] == "cog" and out["parameters"]["content_encoding"] == "base64"
        with MemoryFile(base64.b64decode(out["data"][0])) as m, m.open() as d:
            assert (d.read(1) == expected.argmax(0)).mean() > 0.999


def test_segmentation_chips_as_raw_digital_numbers(s3_predictor):
    dn = scene_dn(CHIP, CHIP)
    x_dn = dn[None].astype(np.int64)
    with httpx.Client(base_url=s3_predictor["url"], timeout=120) as c:
        r = c.post(f"/v1/models/{NAME}:predict", json={
            "instances": [{b: x_dn[0, i].tolist() for i, b in enumerate(BANDS)}], "parameters": {"nodata": 0}})
    assert r.status_code == 200, r.text
    probs = np.asarray(r.json()["predictions"], np.float32)
    assert probs.shape == (1, len(CLASSES), CHIP, CHIP)
    np.testing.assert_allclose(probs[0], in_process_mosaic(s3_predictor["module"], dn, 0), atol=1e-4)
    assert np.asarray(r.json()["labels"]).shape == (1, CHIP, CHIP)


# --- in process: observers, and every payload answered ----------------------------------------------------


@pytest.fixture(scope="module")
def local_model(tmp_path_factory):
    store = Store.from_uri(tmp_path_factory.mktemp("serving-local").as_uri())
    return register(store)


@pytest.fixture(scope="module")
def app(local_model):
    recorder = Recorder()
    models = build_models(local_model, NAME, device="cpu", observers=[Broken(), recorder], max_batch_size=4,
                          max_batch_wait_ms=0)
    application = create_app(models, max_payload_bytes=1 << 20)
    yield application, recorder, models[0]
    application.close()


def call(application, method: str, path: str, **kwargs) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://predictor") as c:
            return await c.request(method, path, **kwargs)
    return asyncio.run(go())


def test_observers_get_every_decoded_batch_before_normalisation(app):
    application, recorder, model = app
    dn = scene_dn(CHIP, CHIP)
    r = call(application, "POST", f"/v1/models/{NAME}:predict", headers={"x-request-id": "req-42"},
             json={"instances": [{b: dn[i].tolist() for i, b in enumerate(BANDS)}] * 2, "parameters": {"nodata": 0}})
    assert r.status_code == 200, r.text  # the broken observer does not fail the request
    model.observers.drain(timeout=30)
    batch = recorder.batches[-1]
    assert batch.model_name == NAME and batch.model_version == "v1" and batch.request_id == "req-42"
    assert batch.feature_names == tuple(FEATURES) and batch.class_names == tuple(CLASSES) and batch.task == "segmentation"
    reflectance = dn.astype(np.float32) * 1e-4
    reflectance[dn == 0] = np.nan
    want = plan_features(list(BANDS), ["NDVI"]).apply(reflectance[None])[0]
    np.testing.assert_allclose(batch.features[0], want, atol=1e-6)  # dataset units, nodata NaN, not normalised
    assert batch.outputs.shape == (2, len(CLASSES), CHIP, CHIP)
    np.testing.assert_allclose(batch.outputs, np.asarray(r.json()["predictions"]), atol=1e-6)

    # model-ready chips reach observers de-normalised, in the same units
    x = np.zeros((1, len(FEATURES), CHIP, CHIP), np.float32)
    call(application, "POST", f"/v1/models/{NAME}:predict", json={"instances": x.tolist()})
    model.observers.drain(timeout=30)
    np.testing.assert_allclose(recorder.batches[-1].features[0, :, 0, 0], MEAN, atol=1e-6)

    # a scene: one observed batch per chunk of chips (max batch size 4)
    before = len(recorder.batches)
    r = call(application, "POST", f"/v1/models/{NAME}:predict",
             json={"instances": [{"scene": {"b64": base64.b64encode(geotiff(scene_dn(64, 96))).decode()}}]})
    assert r.status_code == 200, r.text
    model.observers.drain(timeout=30)
    assert [b.features.shape[0] for b in recorder.batches[before:]] == [4, 2]


bodies = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["instances", "inputs", "name", "shape", "datatype", "data", "parameters", "scene", "b64",
                         "uri", "B02", "B03", "B04", "B08", "overlap", "bbox", "output"]), inner, max_size=5),
    max_leaves=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(body=bodies, path=st.sampled_from([f"/v1/models/{NAME}:predict", f"/v2/models/{NAME}/infer",
                                          f"/v2/models/{NAME}/versions/v1/infer", "/v1/models/other:predict"]),
       raw=st.booleans())
def test_any_payload_gets_2xx_or_4xx(app, body, path, raw):
    application, _, _ = app
    import json

    content = json.dumps(body).encode() if not raw else json.dumps(body).encode()[: max(1, len(json.dumps(body)) // 2)]
    r = call(application, "POST", path, content=content, headers={"content-type": "application/json"})
    assert 200 <= r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        assert r.json()["error"]


def test_the_in_process_app_limits_payloads(app):
    application, _, _ = app
    r = call(application, "POST", f"/v1/models/{NAME}:predict", content=b"[" + b"0," * (1 << 20) + b"0]",
             headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["reason"] == "too_large"
    assert call(application, "GET", "/v2/health/ready").status_code == 200
    # refusals before the model (the v2 body decoder) are counted by reason too
    from earthops_runtime.serving import metrics

    before = metrics.ERRORS.labels(NAME, "json")._value.get()
    r = call(application, "POST", f"/v2/models/{NAME}/infer", content=b'{"inputs": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["reason"] == "json"
    assert metrics.ERRORS.labels(NAME, "json")._value.get() == before + 1


def test_port_zero_and_canary_flags_are_checked(local_model):
    with pytest.raises(ValueError, match="canary"):
        build_models(local_model, NAME, canary_model_uri=local_model)
    with pytest.raises(ValueError, match="must differ"):
        build_models(local_model, NAME, canary_model_uri=local_model, canary_percent=10)
    assert free_port() > 0


class Branchy(torch.nn.Module):
    """Data-dependent control flow: torch.export refuses it, so the registry keeps a TorchScript trace."""

    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))
        return scores if x.sum() > -1e9 else -scores


@pytest.mark.parametrize("kind", ["torchscript", "multilabel"])
def test_torchscript_artifacts_and_multilabel_models_are_served(kind, tmp_path):
    store = Store.from_uri(tmp_path.as_uri())
    torch.manual_seed(5)
    classes = ["ship", "iceberg", "ice"]
    task = "multilabel" if kind == "multilabel" else "classification"
    module = Branchy(2, 3) if kind == "torchscript" else build_model(
        "iceberg-cnn", {"width": 0.25}, in_channels=2, num_classes=3, task=task, chip_shape=(16, 16))
    card = ModelCard(architecture="tests.integration.test_serving_scenes:Branchy" if kind == "torchscript" else "iceberg-cnn",
                     parameters={} if kind == "torchscript" else {"width": 0.25}, task=task, classes=classes,
                     features=["HH", "HV"], chip_shape=(16, 16), mean=[-20.0, -25.0], std=[3.0, 3.0], metrics={},
                     hyperparameters={}, dataset_uri=f"{store.uri}/none", dataset_collection=None)
    uri = register_model(store, namespace="default", name="m", model=module, example_input=torch.randn(2, 2, 16, 16),
                         card=card, training_stats={"splits": {}}).uri
    item = store.read_json("models/default/m/v1/item.json")
    assert item["assets"]["model"]["href"] == ("./model.ts" if kind == "torchscript" else "./model.pt2")
    application = create_app(build_models(uri, "m", device="cpu"))
    try:
        x = np.random.default_rng(0).normal(0, 1, (3, 2, 16, 16)).astype(np.float32)
        r = call(application, "POST", "/v1/models/m:predict", json={"instances": x.tolist()})
        assert r.status_code == 200, r.text
        with torch.no_grad():
            logits = module.eval()(torch.from_numpy(x))
        want = torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, 1)
        np.testing.assert_allclose(r.json()["predictions"], want.numpy(), atol=1e-5)
        if task == "multilabel":
            assert r.json()["labels"] == [[c for c, p in zip(classes, row, strict=True) if p > 0.5] for row in want.numpy()]
            out = call(application, "POST", "/v2/models/m/infer", json={"inputs": [
                {"name": "chips", "shape": [3, 2, 16, 16], "datatype": "FP32", "data": x.ravel().tolist()}]}).json()
            index = next(o for o in out["outputs"] if o["name"] == "class_index")
            assert index["shape"] == [3, 3] and index["data"] == (want.numpy() > 0.5).astype(int).ravel().tolist()
    finally:
        application.close()


def test_scene_uris_outside_the_allowed_prefixes_are_refused(local_model, tmp_path):
    allowed = tmp_path / "scenes"
    allowed.mkdir()
    (allowed / "s.tif").write_bytes(geotiff(scene_dn(40, 40)))
    (tmp_path / "secret.tif").write_bytes(geotiff(scene_dn(40, 40)))
    application = create_app(build_models(local_model, NAME, device="cpu", scene_uri_prefixes=[allowed.as_uri() + "/"]))
    try:
        ok = call(application, "POST", f"/v1/models/{NAME}:predict",
                  json={"instances": [{"scene": {"uri": (allowed / "s.tif").as_uri()}}]})
        assert ok.status_code == 200, ok.text
        r = call(application, "POST", f"/v1/models/{NAME}:predict",
                 json={"instances": [{"scene": {"uri": (tmp_path / "secret.tif").as_uri()}}]})
        assert r.status_code == 403 and r.json()["reason"] == "scene" and allowed.as_uri() in r.json()["accepted"]
    finally:
        application.close()
