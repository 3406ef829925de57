"""Serving benchmark: the predictor (a real process on loopback) against the raw exported program.

For each model — ``iceberg-cnn`` (the paper's SAR chip classifier: HH, HV, band_avg, 75x75 chips) and
``resnet18-ms`` (Sentinel-2, 12 bands + NDVI, 64x64 chips) — registered with random weights:

* **raw forward** — the registry's exported program (``model.pt2``) called in this process on the same
  normalised chips, batch after batch: the ceiling.
* **v1 JSON**, **v2 JSON**, **v2 binary** — the same chips through the server, one request at a time on a
  keep-alive connection (bodies encoded before the clock starts), at batch 1 and batch 32: requests/s,
  chips/s and their ratio to the raw forward; p50/p99 latency at batch 1 and the p99 overhead over the
  raw forward's p99.
* **scene** — a whole GeoTIFF (``EARTHOPS_BENCH_SCENE_CHIPS`` chips, default 64) by file URI through
  the server (windows read, features derived, normalised, batched, predicted, GeoJSON) against the same
  work in this process with rasterio windowed reads + the dataset's feature code + the forward.

``EARTHOPS_BENCH_SERVING_DEVICE`` (default ``cpu``; ``cuda`` in ``tests/bench/gpu.sh``) is the device of the
server (``--device``) and of the raw forward alike, which then does what the server does on a GPU: the
batch to the device, float16 autocast, the probabilities back to the host.

Client and server share the machine (2 cores on the dev machine): the busy cores column says how loaded
it was while each mode ran; figures from a loaded machine compare nothing. Goals (issue 15): v2 binary
>= 0.8 of raw throughput at batch 32, p99 overhead <= 5 ms at batch 1. Checks: the server's outputs equal
the raw forward's on the same chips (not a timing assertion).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window

from earthops.core.store import Store
from earthops_runtime.data.features import plan_for_features
from earthops_runtime.models import build_model
from earthops_runtime.registry import ModelCard, load_model, register_model
from tests.bench.measure import measured
from tests.infra.proc import spawn, stop, wait_for

pytestmark = pytest.mark.bench

ROOT = Path(__file__).resolve().parents[2]
REQUESTS_1 = int(os.environ.get("EARTHOPS_BENCH_SERVING_REQUESTS", "100"))
REQUESTS_32 = int(os.environ.get("EARTHOPS_BENCH_SERVING_BATCHES", "8"))
SCENE_CHIPS = int(os.environ.get("EARTHOPS_BENCH_SCENE_CHIPS", "64"))
#: torch's intra-op threads in the server and for the raw forward alike (OpenMP threads beside other
#: load slow down by far more than the load: the same count on both sides keeps the comparison fair)
THREADS = int(os.environ.get("EARTHOPS_BENCH_THREADS", "1"))
DEVICE = os.environ.get("EARTHOPS_BENCH_SERVING_DEVICE", "cpu")
if DEVICE not in ("cpu", "cuda"):
    raise ValueError(f"EARTHOPS_BENCH_SERVING_DEVICE={DEVICE!r}: accepted: cpu, cuda")
S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]

MODELS = {
    "iceberg-cnn": dict(parameters={}, bands=["HH", "HV"], features=["HH", "HV", "band_avg"], chip=75,
                        classes=["ship", "iceberg"], mean=-22.0, std=4.0, scene=(-22.0, 4.0)),
    "resnet18-ms": dict(parameters={"width": 32}, bands=S2, features=[*S2, "NDVI"], chip=64,
                        classes=["water", "forest", "crop", "urban", "bare"], mean=0.15, std=0.1, scene=(0.15, 0.05)),
}


def register(store: Store, name: str) -> tuple[str, dict]:
    spec = MODELS[name]
    torch.manual_seed(0)
    n = len(spec["features"])
    model = build_model(name, spec["parameters"], in_channels=n, num_classes=len(spec["classes"]),
                        task="classification", chip_shape=(spec["chip"], spec["chip"]))
    card = ModelCard(architecture=name, parameters=spec["parameters"], task="classification", classes=spec["classes"],
                     features=spec["features"], chip_shape=(spec["chip"], spec["chip"]), mean=[spec["mean"]] * n,
                     std=[spec["std"]] * n, metrics={}, hyperparameters={}, dataset_uri=f"{store.uri}/none",
                     dataset_collection=None)
    version = register_model(store, namespace="bench", name=name, model=model,
                             example_input=torch.randn(2, n, spec["chip"], spec["chip"]), card=card,
                             training_stats={"splits": {}})
    return version.uri, spec


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000, q))


def scene_file(path: Path, spec: dict) -> Path:
    """A GeoTIFF of about SCENE_CHIPS chips (a square of whole chips) in the model's raw bands."""
    side = int(np.ceil(np.sqrt(SCENE_CHIPS))) * spec["chip"]
    mean, std = spec["scene"]
    data = np.random.default_rng(1).normal(mean, std, (len(spec["bands"]), side, side)).astype(np.float32)
    if spec["bands"] == S2:
        data = np.clip(data, 0.01, 1)
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=len(spec["bands"]), dtype="float32",
                       crs="EPSG:32633", transform=from_origin(500000, 6000000, 10, 10), tiled=True,
                       blockxsize=256, blockysize=256) as d:
        d.write(data)
        for i, b in enumerate(spec["bands"], 1):
            d.set_band_description(i, b)
    return path


def raw_forward(module, t: torch.Tensor) -> np.ndarray:
    """The model's probabilities for a batch on :data:`DEVICE`, as the server computes them."""
    with torch.inference_mode():
        if DEVICE == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                logits = module(t.to("cuda", non_blocking=True))
        else:
            logits = module(t)
        return torch.softmax(logits.float(), 1).cpu().numpy()


def raw_scene(module, path: Path, spec: dict) -> int:
    """What the server does for a scene, in this process: windowed reads, features, normalise, forward."""
    chip = spec["chip"]
    plan, where = plan_for_features(spec["features"], spec["bands"])
    chips = 0
    with rasterio.open(path) as ds:
        for row in range(0, ds.height - chip + 1, chip):
            strip = ds.read(window=Window(0, row, ds.width, chip), out_dtype=np.float32)
            x = np.stack([strip[:, :, c:c + chip] for c in range(0, ds.width - chip + 1, chip)])
            features = plan.apply(x)[:, where]
            x = np.nan_to_num((features - spec["mean"]) / spec["std"]).astype(np.float32)
            for i in range(0, len(x), 32):
                raw_forward(module, torch.from_numpy(x[i:i + 32]))
            chips += len(x)
    return chips


@pytest.mark.parametrize("name", list(MODELS))
def test_bench_serving(name, tmp_path):
    store = Store.from_uri(tmp_path.joinpath("store").as_uri())
    uri, spec = register(store, name)
    module = load_model(store, "bench", name, "v1", exported=True)[0].to(DEVICE)
    log = tmp_path / "predictor.log"
    torch.set_num_threads(THREADS)
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    proc = spawn([sys.executable, "-m", "earthops_runtime.serving", "--model-uri", uri, "--model-name", name,
                  "--host", "127.0.0.1", "--http_port", "0", "--device", DEVICE, "--max-batch-size", "32",
                  "--max-batch-wait-ms", "0", "--max-payload-bytes", str(1 << 30)], log_path=log, cwd=ROOT, env=env)
    rows: list[tuple[str, int, float, float, float, str]] = []
    try:
        wait_for(lambda: "earthops predictor ready at" in log.read_text(), timeout=180, what="predictor", proc=proc,
                 log_path=log)
        url = re.search(r"ready at (http://\S+)", log.read_text()).group(1)
        n = len(spec["features"])
        chip = spec["chip"]
        client = httpx.Client(base_url=url, timeout=600)
        raw_rate: dict[int, float] = {}
        raw_p99: dict[int, float] = {}
        for batch, count in ((1, REQUESTS_1), (32, REQUESTS_32)):
            x = np.random.default_rng(batch).normal(0, 1, (batch, n, chip, chip)).astype(np.float32)
            t = torch.from_numpy(x)

            def raw(t=t, count=count):
                times = []
                for _ in range(count):
                    started = time.perf_counter()
                    raw_forward(module, t)
                    times.append(time.perf_counter() - started)
                return times

            raw()  # warm
            wall, busy, times = measured(raw)
            raw_rate[batch] = count / wall
            raw_p99[batch] = percentile_ms(times, 99)
            note = f"p50 {percentile_ms(times, 50):.2f} p99 {raw_p99[batch]:.2f} ms" if batch == 1 else ""
            rows.append(("raw forward", batch, count / wall, count * batch / wall, 1.0, note, busy))
            want = raw_forward(module, t)
            header = orjson.dumps({"inputs": [{"name": "chips", "shape": list(x.shape), "datatype": "FP32",
                                               "parameters": {"binary_data_size": x.nbytes}}],
                                   "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]})
            bodies = {
                "v1 JSON": (f"/v1/models/{name}:predict", orjson.dumps({"instances": x.tolist()}),
                            {"content-type": "application/json"}),
                "v2 JSON": (f"/v2/models/{name}/infer", orjson.dumps({"inputs": [
                    {"name": "chips", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}),
                    {"content-type": "application/json"}),
                "v2 binary": (f"/v2/models/{name}/infer", header + x.tobytes(),
                              {"content-type": "application/octet-stream",
                               "inference-header-content-length": str(len(header))}),
            }
            for mode, (path, body, headers) in bodies.items():
                r = client.post(path, content=body, headers=headers)
                assert r.status_code == 200, r.text[:500]
                np.testing.assert_allclose(outputs(r, mode), want, atol=1e-4 if DEVICE == "cpu" else 1e-3)

                def serve(path=path, body=body, headers=headers, count=count):
                    times = []
                    for _ in range(count):
                        started = time.perf_counter()
                        client.post(path, content=body, headers=headers).raise_for_status()
                        times.append(time.perf_counter() - started)
                    return times

                wall, busy, times = measured(serve)
                note = ""
                if batch == 1:
                    note = (f"p50 {percentile_ms(times, 50):.2f} p99 {percentile_ms(times, 99):.2f} ms "
                            f"(+{percentile_ms(times, 99) - raw_p99[1]:.2f})")
                rows.append((mode, batch, count / wall, count * batch / wall, (count / wall) / raw_rate[batch], note, busy))

        scene = scene_file(tmp_path / "scene.tif", spec)
        raw_scene(module, scene, spec)  # warm the page cache and the model
        wall, busy, chips = measured(raw_scene, module, scene, spec)
        raw_chips_s = chips / wall
        rows.append(("scene: raw reads + forward", 32, 1 / wall, raw_chips_s, 1.0, f"{chips} chips", busy))

        def scene_request():
            r = client.post(f"/v2/models/{name}/infer", json={"inputs": [
                {"name": "scene_uri", "shape": [1], "datatype": "BYTES", "data": [scene.as_uri()]}]})
            r.raise_for_status()
            return len(json.loads(r.json()["outputs"][0]["data"][0])["features"])

        assert scene_request() == chips
        wall, busy, got = measured(scene_request)
        rows.append(("scene: server (GeoJSON)", 32, 1 / wall, got / wall, (got / wall) / raw_chips_s, f"{got} chips", busy))
        client.close()
    finally:
        stop(proc)
    print(f"\n{name} on {os.cpu_count()} cores, {THREADS} torch thread(s) (client, server and raw forward on one machine):")
    print(f"  {'mode':28} {'batch':>5} {'req/s':>9} {'chips/s':>9} {'vs raw':>7} {'busy cores':>10}  latency")
    for mode, batch, rps, cps, ratio, note, busy in rows:
        print(f"  {mode:28} {batch:>5} {rps:>9.1f} {cps:>9.1f} {ratio:>7.2f} {busy:>10.1f}  {note}")


def outputs(r: httpx.Response, mode: str) -> np.ndarray:
    if mode == "v1 JSON":
        return np.asarray(r.json()["predictions"], np.float32)
    if mode == "v2 JSON":
        out = r.json()["outputs"][0]
        return np.asarray(out["data"], np.float32).reshape(out["shape"])
    size = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:size])
    return np.frombuffer(r.content[size:], np.float32).reshape(meta["outputs"][0]["shape"])
