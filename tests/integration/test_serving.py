"""The predictor as a real process on loopback (``python -m earthops_runtime.serving``), serving a model
registered in a fixture on the session's ship/iceberg dataset: every protocol and input form, a real
Open Inference Protocol client (tritonclient, HTTP and gRPC), whole GeoTIFF scenes, the canary split,
bad input, metrics, and startup failure.

Two versions of ``iceberg-cnn`` (a quarter of its width, different seeds) are served as one name, v2 as
a 20% canary: every answer names its version, and is compared with that version's exported program
run in this process on the same chips.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from rasterio.io import MemoryFile
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds

from earthops.core.store import Store
from earthops_runtime.data.features import plan_features
from earthops_runtime.data.loader import ChipDataset
from earthops_runtime.models import build_model
from earthops_runtime.registry import ModelCard, load_model, register_model
from earthops_runtime.training.data import DatasetInfo
from tests.infra.proc import free_port, spawn, stop, wait_for

pytestmark = pytest.mark.integration

NAME = "iceberg"
CANARY_PERCENT = 20
MAX_PAYLOAD = 4 << 20
ROOT = Path(__file__).resolve().parents[2]
#: Scenes' default grid: UTM 33N, 10 m pixels.
UTM33 = from_origin(500000, 6000000, 10, 10)


# --- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(iceberg_dataset, tmp_path_factory):
    """Two registered versions of iceberg-cnn on the dataset (its features, statistics, classes)."""
    info = DatasetInfo.open(iceberg_dataset.run_uri)
    store = Store.from_uri(tmp_path_factory.mktemp("serving-store").as_uri())
    uris = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model("iceberg-cnn", {"width": 0.25}, in_channels=info.in_channels, num_classes=info.num_classes,
                            task=info.task, chip_shape=info.chip_shape)
        card = ModelCard(architecture="iceberg-cnn", parameters={"width": 0.25}, task=info.task, classes=list(info.classes),
                         features=list(info.features), chip_shape=info.chip_shape, mean=list(info.mean),
                         std=list(info.std), metrics={"val_accuracy": 0.5}, hyperparameters={"seed": seed},
                         dataset_uri=info.uri, dataset_collection=info.collection)
        example = torch.randn(2, info.in_channels, *info.chip_shape)
        uris.append(register_model(store, namespace="default", name=NAME, model=model, example_input=example,
                                   card=card).uri)
    modules = {v: load_model(store, "default", NAME, v, exported=True)[0] for v in ("v1", "v2")}
    return {"store": store, "uris": uris, "info": info, "modules": modules}


@pytest.fixture(scope="module")
def raw_chips(registry):
    """Eight real validation chips in the dataset's units (dB), not normalised: (HH, HV, band_avg)."""
    info = registry["info"]
    chips = ChipDataset(info.uri, "validation", features=list(info.features), shuffle=False)
    return np.stack([x.numpy().copy() for (x, _), _ in zip(chips, range(8))])


@pytest.fixture(scope="module")
def predictor(registry, tmp_path_factory):
    """The predictor command, v1 with v2 as canary, HTTP and gRPC on free loopback ports."""
    log = tmp_path_factory.mktemp("predictor") / "predictor.log"
    http, grpc = free_port(), free_port()
    v1, v2 = registry["uris"]
    proc = spawn([sys.executable, "-m", "earthops_runtime.serving", "--model-uri", v1, "--model-name", NAME,
                  "--canary-model-uri", v2, "--canary-percent", str(CANARY_PERCENT), "--host", "127.0.0.1",
                  "--http_port", str(http), "--grpc_port", str(grpc), "--device", "cpu",
                  "--max-batch-size", "16", "--max-batch-wait-ms", "2", "--max-payload-bytes", str(MAX_PAYLOAD)],
                 log_path=log, cwd=ROOT)
    try:
        wait_for(lambda: "earthops predictor ready at" in log.read_text(), timeout=120, what="predictor",
                 proc=proc, log_path=log)
        url = re.search(r"ready at (http://\S+)", log.read_text()).group(1)
        yield {"url": url, "grpc": f"127.0.0.1:{grpc}", "proc": proc, "log": log}
    finally:
        stop(proc)


@pytest.fixture
def client(predictor):
    with httpx.Client(base_url=predictor["url"], timeout=60) as c:
        yield c


def expected(registry, version: str, normalised: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(registry["modules"][version](torch.from_numpy(normalised)), dim=1).numpy()


def normalise(registry, features: np.ndarray) -> np.ndarray:
    info = registry["info"]
    mean = np.asarray(info.mean, np.float32)[None, :, None, None]
    std = np.asarray(info.std, np.float32)[None, :, None, None]
    return np.nan_to_num((features - mean) / std).astype(np.float32)


def geotiff(data: np.ndarray, bands: tuple[str, ...], *, crs: str = "EPSG:32633",
            transform=UTM33) -> bytes:
    with MemoryFile() as m:
        with m.open(driver="GTiff", width=data.shape[2], height=data.shape[1], count=len(bands), dtype="float32",
                    crs=crs, transform=transform) as d:
            d.write(data.astype(np.float32))
            for i, b in enumerate(bands, 1):
                d.set_band_description(i, b)
        return m.read()


# --- every protocol and input form ---------------------------------------------------------------------


def test_ready_and_metadata(client):
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get(f"/v2/models/{NAME}").json()
    assert meta["inputs"][0]["shape"] == [-1, 3, 75, 75]
    assert client.get(f"/v1/models/{NAME}").json()["ready"] is True


def test_v1_chips_equal_the_model_in_process(client, registry, raw_chips):
    x = normalise(registry, raw_chips)
    r = client.post(f"/v1/models/{NAME}:predict", json={"instances": x.tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    version = body["model_version"]
    assert r.headers["x-earthops-model-version"] == version
    np.testing.assert_allclose(np.asarray(body["predictions"]), expected(registry, version, x), atol=1e-5)
    assert body["classes"] == list(registry["info"].classes)
    assert body["labels"] == [body["classes"][k] for k in np.asarray(body["predictions"]).argmax(1)]


def test_v2_json_and_binary_equal_the_model_in_process(client, registry, raw_chips):
    x = normalise(registry, raw_chips)
    tensor = {"name": "chips", "shape": list(x.shape), "datatype": "FP32"}
    r = client.post(f"/v2/models/{NAME}/infer", json={"inputs": [{**tensor, "data": x.ravel().tolist()}]})
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    probs = np.asarray(out["probabilities"]["data"], np.float32).reshape(out["probabilities"]["shape"])
    np.testing.assert_allclose(probs, expected(registry, r.json()["model_version"], x), atol=1e-5)

    # the binary tensor extension, both ways: JSON header + raw little-endian data
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    r = client.post(f"/v2/models/{NAME}/versions/v2/infer", content=header + x.tobytes(),
                    headers={"Content-Type": "application/octet-stream",
                             "Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 200, r.text
    size = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:size])
    assert meta["model_version"] == "v2" and r.headers["x-earthops-model-version"] == "v2"
    probs = np.frombuffer(r.content[size:], np.float32).reshape(meta["outputs"][0]["shape"])
    np.testing.assert_allclose(probs, expected(registry, "v2", x), atol=1e-5)


#: tritonclient's gRPC client in a child process: its protos and KServe's declare the same ``inference.*``
#: messages, and protobuf refuses a symbol twice in one process (whichever test imported KServe's gRPC
#: module first in the session breaks the other); the child writes each pinned version's outputs and the
#: error for an unknown version.
GRPC_CLIENT = """
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
address, name, chips, out = sys.argv[1:5]
x = np.load(chips)
client = grpcclient.InferenceServerClient(address)
assert client.is_server_ready()
inp = grpcclient.InferInput("chips", list(x.shape), "FP32")
inp.set_data_from_numpy(x)
answers = {}
for pinned in ("v1", "v2"):
    result = client.infer(name, [inp], model_version=pinned)
    answers[pinned] = result.get_response().model_version
    np.save(f"{out}-{pinned}.npy", result.as_numpy("probabilities"))
try:
    client.infer(name, [inp], model_version="v7")
    answers["v7"] = None
except Exception as exc:
    answers["v7"] = str(exc)
client.close()
print(json.dumps(answers))
"""


def test_tritonclient_http_and_grpc(predictor, registry, raw_chips, tmp_path):
    import tritonclient.http as httpclient

    x = normalise(registry, raw_chips)
    http = httpclient.InferenceServerClient(predictor["url"].removeprefix("http://"))
    assert http.is_server_ready() and http.is_model_ready(NAME)
    inp = httpclient.InferInput("chips", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    result = http.infer(NAME, [inp], outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=True)])
    version = result.get_response()["model_version"]
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected(registry, version, x), atol=1e-5)
    http.close()

    np.save(tmp_path / "chips.npy", x)
    done = subprocess.run([sys.executable, "-c", GRPC_CLIENT, predictor["grpc"], NAME, str(tmp_path / "chips.npy"),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    for pinned in ("v1", "v2"):
        assert answers[pinned] == pinned
        np.testing.assert_allclose(np.load(tmp_path / f"out-{pinned}.npy"), expected(registry, pinned, x), atol=1e-5)
    assert answers["v7"] and "no version 'v7'" in answers["v7"]


def test_raw_bands_features_and_normalisation_by_the_server(client, registry, raw_chips):
    """HH and HV in dB (or linear power) by name: the server derives band_avg with the dataset's
    feature code and normalises with the card; the answer equals the model on the dataset's chips."""
    info = registry["info"]
    assert info.features == ("HH", "HV", "band_avg")
    x = normalise(registry, raw_chips)
    instances = [{"HH": c[0].tolist(), "HV": c[1].tolist()} for c in raw_chips]
    r = client.post(f"/v1/models/{NAME}:predict", json={"instances": instances})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.asarray(r.json()["predictions"]), expected(registry, r.json()["model_version"], x),
                               atol=1e-4)
    # the dataset's own feature code made the chips' band_avg: the same as the server's
    plan = plan_features(["HH", "HV"], sar=["band_avg"])
    np.testing.assert_allclose(plan.apply(raw_chips[:, :2])[:, 2], raw_chips[:, 2], atol=1e-5)

    linear = (10 ** (raw_chips[:, :2] / 10)).astype(np.float32)
    # one input per band, in any order (here HV first)
    inputs = [{"name": b, "shape": [len(linear), 75, 75], "datatype": "FP32", "data": linear[:, i].ravel().tolist()}
              for i, b in ((1, "HV"), (0, "HH"))]
    r = client.post(f"/v2/models/{NAME}/versions/v1/infer", json={"inputs": inputs, "parameters": {"sar_unit": "linear"}})
    assert r.status_code == 200, r.text
    probs = np.asarray(r.json()["outputs"][0]["data"], np.float32).reshape(-1, 2)
    np.testing.assert_allclose(probs, expected(registry, "v1", x), atol=1e-3)


def test_geotiff_scene_footprints_follow_the_geotransform(client, registry):
    """A 2-band UTM scene (HH, HV in dB) of 160x200 pixels, 10-pixel overlap: each chip's footprint is
    its window through the scene's geotransform, and its prediction equals the model's on that window."""
    rng = np.random.default_rng(7)
    data = rng.normal((-20, -26), 3, (160, 200, 2)).transpose(2, 0, 1).astype(np.float32)
    transform = from_origin(431000, 7210000, 10, 10)
    tif = geotiff(data, ("HH", "HV"), crs="EPSG:32622", transform=transform)
    r = client.post(f"/v2/models/{NAME}/versions/v1/infer",
                    json={"inputs": [{"name": "scene", "shape": [1], "datatype": "BYTES",
                                      "data": [base64.b64encode(tif).decode()]}], "parameters": {"overlap": 10}})
    assert r.status_code == 200, r.text
    fc = json.loads(r.json()["outputs"][0]["data"][0])
    assert fc["crs"] == "EPSG:32622" and fc["transform"] == list(transform)[:6]
    rows, cols = [0, 65, 85], [0, 65, 125]  # stride 65, the last window flush with the edge
    got = sorted((f["properties"]["row"], f["properties"]["col"]) for f in fc["features"])
    assert got == [(r_, c_) for r_ in rows for c_ in cols]
    plan = plan_features(["HH", "HV"], sar=["band_avg"])
    for f in fc["features"]:
        p = f["properties"]
        row, col = p["row"], p["col"]
        left, top = transform @ (col, row)
        right, bottom = transform @ (col + 75, row + 75)
        assert p["bounds"] == pytest.approx([left, bottom, right, top])
        # the footprint (EPSG:4326) is the window's corners: back in the scene's CRS they are the bounds
        ring = f["geometry"]["coordinates"][0]
        xs, ys = warp_transform("EPSG:4326", "EPSG:32622", [pt[0] for pt in ring], [pt[1] for pt in ring])
        np.testing.assert_allclose(xs[:4], [left, right, right, left], atol=1e-3)
        np.testing.assert_allclose(ys[:4], [top, top, bottom, bottom], atol=1e-3)
        chip = plan.apply(data[:, row:row + 75, col:col + 75][None])
        want = expected(registry, "v1", normalise(registry, chip))[0]
        np.testing.assert_allclose([p["probabilities"][c] for c in fc["classes"]], want, atol=1e-4)
        assert p["label"] == fc["classes"][int(want.argmax())]


def test_geotiff_scene_by_uri_with_a_bbox(client, registry, tmp_path):
    data = np.random.default_rng(3).normal(-22, 3, (2, 300, 300)).astype(np.float32)
    path = tmp_path / "scene.tif"
    path.write_bytes(geotiff(data, ("HH", "HV")))
    # a bbox over the north-west 150 x 150 pixels of the scene: only the windows over that part
    bbox = transform_bounds("EPSG:32633", "EPSG:4326", 500000, 5998500, 501500, 6000000)
    r = client.post(f"/v1/models/{NAME}:predict", json={"instances": [{"scene": {"uri": path.as_uri()}}],
                                                         "parameters": {"bbox": list(bbox)}})
    assert r.status_code == 200, r.text
    windows = {(f["properties"]["row"], f["properties"]["col"]) for f in r.json()["predictions"][0]["features"]}
    assert {(0, 0), (75, 75)} <= windows and all(row <= 150 and col <= 150 for row, col in windows)
    assert len(windows) < 16  # the whole scene has 4 x 4 chips
    # a bbox inside one chip still gets the chip around it
    tiny = transform_bounds("EPSG:32633", "EPSG:4326", 501000, 5998000, 501050, 5998050)
    r = client.post(f"/v1/models/{NAME}:predict", json={"instances": [{"scene": {"uri": path.as_uri()}}],
                                                         "parameters": {"bbox": list(tiny)}})
    [one] = r.json()["predictions"][0]["features"]
    row, col = one["properties"]["row"], one["properties"]["col"]  # the bbox is rows 195-200, columns 100-105
    assert row <= 195 and row + 75 >= 200 and col <= 100 and col + 75 >= 105
    r = client.post(f"/v1/models/{NAME}:predict", json={"instances": [{"scene": {"uri": path.as_uri()}}],
                                                         "parameters": {"bbox": [-10, 40, -9, 41]}})
    assert r.status_code == 400 and r.json()["reason"] == "no_intersection"


def test_canary_split_by_percent_and_pinned_versions(client, registry):
    x = normalise(registry, np.zeros((1, 3, 75, 75), np.float32))
    versions = [client.post(f"/v1/models/{NAME}:predict", json={"instances": x.tolist()}).json()["model_version"]
                for _ in range(100)]
    assert versions.count("v2") == CANARY_PERCENT and versions.count("v1") == 100 - CANARY_PERCENT
    for v in ("v1", "v2"):
        r = client.post(f"/v2/models/{NAME}/versions/{v}/infer",
                        json={"inputs": [{"name": "chips", "shape": list(x.shape), "datatype": "FP32",
                                          "data": x.ravel().tolist()}]})
        assert r.json()["model_version"] == v


# --- bad input ---------------------------------------------------------------------------------------------


def bad_requests(registry) -> list[tuple[str, dict, int, str]]:
    """(path, httpx kwargs, status, reason) — one per kind of mistake."""
    v1, v2 = f"/v1/models/{NAME}:predict", f"/v2/models/{NAME}/infer"
    good = normalise(registry, np.zeros((1, 3, 75, 75), np.float32))

    def t(x, datatype="FP32", name="chips", shape=None):
        return {"json": {"inputs": [{"name": name, "shape": list(shape or np.shape(x)), "datatype": datatype,
                                     "data": np.asarray(x).ravel().tolist()}]}}

    corrupt = geotiff(np.zeros((2, 80, 80)), ("HH", "HV"))[:2000]
    return [
        (v1, {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, ""),
        (v2, {"content": b"[1, 2", "headers": {"content-type": "application/json"}}, 400, "json"),
        (v1, {"json": {"inputs": []}}, 400, "json"),
        (v1, {"json": {"instances": []}}, 400, "json"),
        (v1, {"json": {"instances": "abc"}}, 400, "json"),
        ("/v1/models/nosuchmodel:predict", {"json": {"instances": good.tolist()}}, 404, "unknown_model"),
        (f"/v2/models/{NAME}/versions/v9/infer", t(good), 404, "unknown_version"),
        (v1, {"json": {"instances": good[:, :2].tolist()}}, 400, "shape"),
        (v2, t(good[:, :, :64, :64]), 400, "chip_size"),
        (v2, t(good, shape=[1, 3, 75, 74]), 400, "shape"),
        (v2, t(good.astype(np.int32), datatype="INT32"), 400, "dtype"),
        (v2, {"content": json.dumps({"inputs": [{"name": "chips", "shape": [1, 3, 75, 75], "datatype": "FP32",
                                                  "data": [float("nan")] + [0.0] * (3 * 75 * 75 - 1)}]}),
              "headers": {"content-type": "application/json"}}, 400, ""),
        (v1, {"json": {"instances": [[[[1e39] * 75] * 75] * 3]}}, 400, "nan"),
        (v1, {"json": {"instances": [{"HH": np.zeros((75, 75)).tolist()}]}}, 400, "bands"),
        (v1, {"json": {"instances": [{"HH": [[1, 2]], "XX": [[1, 2]]}]}}, 400, "bands"),
        (v2, {"json": {"inputs": [{"name": "HH", "shape": [1, 75, 75], "datatype": "BOOL",
                                   "data": [True] * 5625}]}}, 400, "dtype"),
        (v1, {"json": {"instances": [{"scene": {"b64": base64.b64encode(corrupt).decode()}}]}}, 400, "geotiff"),
        (v1, {"json": {"instances": [{"scene": {"b64": "%%%"}}]}}, 400, "scene"),
        (v1, {"json": {"instances": [{"scene": {"b64": base64.b64encode(b"hello").decode()}}]}}, 400, "geotiff"),
        (v1, {"json": {"instances": [{"scene": {"b64": base64.b64encode(geotiff(np.zeros((1, 80, 80)), ("HH",))).decode()}}]}},
         400, "bands"),
        (v1, {"json": {"instances": [{"scene": {"b64": base64.b64encode(geotiff(np.zeros((2, 40, 90)), ("HH", "HV"))).decode()}}]}},
         400, "chip_size"),
        (v1, {"json": {"instances": [{"scene": {"uri": "file:///no/such/scene.tif"}}]}}, 404, "scene"),
        (v1, {"json": {"instances": good.tolist(), "parameters": {"sar_unit": "furlongs"}}}, 400, "parameters"),
        (v1, {"json": {"instances": [{"scene": {"b64": ""}}], "parameters": {"overlap": -3}}}, 400, "parameters"),
        (v1, {"content": b"x" * (MAX_PAYLOAD + 1), "headers": {"content-type": "application/json"}}, 413, "too_large"),
    ]


def test_bad_input_gets_a_4xx_naming_the_problem(client, registry):
    for path, kwargs, status, reason in bad_requests(registry):
        r = client.post(path, **kwargs)
        assert r.status_code == status, (path, str(kwargs)[:200], r.status_code, r.text[:300])
        body = r.json()
        assert body["error"], body
        if reason:
            assert body["reason"] == reason, (str(kwargs)[:200], body)
    assert client.post(f"/v1/models/{NAME}:predict",
                       json={"instances": np.zeros((1, 3, 75, 75)).tolist()}).status_code == 200


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))


def test_a_thousand_malformed_requests_leave_the_server_serving(client, predictor, registry):
    bad = [b for b in bad_requests(registry) if b[2] != 413 and "scene" not in str(b[1])[:60]]
    for path, kwargs, _, _ in bad * 3:  # warm every error path first
        client.post(path, **kwargs)
    before = rss_kib(predictor["proc"].pid)
    for i in range(1000):
        path, kwargs, status, _ = bad[i % len(bad)]
        assert client.post(path, **kwargs).status_code == status
    after = rss_kib(predictor["proc"].pid)
    assert after - before < 40 * 1024, f"RSS grew from {before} to {after} KiB over 1,000 malformed requests"
    assert client.get("/v2/health/ready").status_code == 200
    r = client.post(f"/v1/models/{NAME}:predict", json={"instances": np.zeros((2, 3, 75, 75)).tolist()})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2


def test_metrics_by_stage_batch_class_and_error_reason(client, registry, raw_chips):
    x = normalise(registry, raw_chips)
    client.post(f"/v1/models/{NAME}:predict", json={"instances": x.tolist()})
    client.post(f"/v1/models/{NAME}:predict", json={"instances": x[:, :1].tolist()})
    text = client.get("/metrics").text
    for stage in ("decode", "features", "forward", "encode"):
        assert re.search(rf'earthops_serving_stage_seconds_count{{model="{NAME}",stage="{stage}",version="v[12]"}} [1-9]',
                         text), stage
    assert re.search(r'earthops_serving_batch_size_count\{model="iceberg",version="v[12]"\} [1-9]', text)
    classes = set(re.findall(r'earthops_serving_predictions_total\{class="([^"]+)",model="iceberg",version="v[12]"\}', text))
    assert classes and classes <= set(registry["info"].classes)
    assert re.search(r'earthops_serving_errors_total\{model="iceberg",reason="shape"\} [1-9]', text)


# --- startup -----------------------------------------------------------------------------------------------


def test_a_model_that_cannot_load_is_a_startup_error(tmp_path):
    missing = (tmp_path / "models" / "default" / "nothing" / "v1").as_uri()
    done = subprocess.run([sys.executable, "-m", "earthops_runtime.serving", "--model-uri", missing, "--model-name", "x",
                           "--http_port", str(free_port()), "--host", "127.0.0.1"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"error: model {missing}" in done.stderr and "ready" not in done.stdout
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "item.json").write_text("{}")
    done = subprocess.run([sys.executable, "-m", "earthops_runtime.serving", "--model-uri", str(broken),
                           "--model-name", "x", "--http_port", "0"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 1 and f"model {broken}" in done.stderr and "model card" in done.stderr, done.stderr[-2000:]

