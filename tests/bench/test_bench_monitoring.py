"""Monitoring benchmark: what drift monitoring costs serving (issue 16's goal: overhead <= 5% at batch 32).

* **observer vs forward** (in this process): one batch of 32 ship/iceberg chips (HH, HV, band_avg,
  75x75) added to a window sketch (the monitor's whole per-batch work: bins, moments, chip means,
  predicted classes) against the registered iceberg-cnn's exported forward on the same batch.
* **serving throughput, monitoring off vs on** (side by side in one run): two real predictor processes
  on loopback serving the same registered version, one with the monitoring flags (window 500 requests,
  reports to a local store), one without; v2 binary requests of 32 chips, one at a time, the two servers
  taking turns round after round so that load changes hit both alike; chips/s per mode and the overhead.

The machine's busy cores while each mode ran are printed beside it (tests/bench/measure.py): on a shared
machine the figures compare little. Not a timed test: nothing is asserted about speed.
"""

from __future__ import annotations

import os
import re
import sys
import time

import httpx
import numpy as np
import orjson
import pytest
import torch

from earthops.core.store import Store
from earthops_runtime.catalog.model import ModelCard
from earthops_runtime.data.stats import normalization
from earthops_runtime.models import build_model
from earthops_runtime.monitoring.reference import load_reference
from earthops_runtime.monitoring.sketch import WindowSketch
from earthops_runtime.registry import load_model, register_model
from tests.bench.measure import measured
from tests.infra.drift_data import S1_BANDS, S1_CLASSES, probabilities, s1_pool
from tests.infra.proc import spawn, stop, wait_for

pytestmark = pytest.mark.bench

ROUNDS = int(os.environ.get("EARTHOPS_BENCH_MONITORING_ROUNDS", "6"))
REQUESTS = int(os.environ.get("EARTHOPS_BENCH_MONITORING_REQUESTS", "10"))  # per round and mode
THREADS = int(os.environ.get("EARTHOPS_BENCH_THREADS", "1"))
BATCH = 32
READY = re.compile(r"earthops predictor ready at (http://\S+)")


def _best(fn, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def test_bench_monitoring_overhead(tmp_path) -> None:
    torch.set_num_threads(THREADS)
    pool = s1_pool()
    store = Store.from_uri((tmp_path / "store").as_uri())
    mean, std = normalization(pool.stats, "train", S1_BANDS)
    torch.manual_seed(0)
    model = build_model("iceberg-cnn", {}, in_channels=3, num_classes=2, task="classification", chip_shape=(75, 75))
    card = ModelCard(architecture="iceberg-cnn", parameters={}, task="classification", classes=list(S1_CLASSES),
                     features=list(S1_BANDS), chip_shape=(75, 75), mean=mean.tolist(), std=std.tolist(),
                     metrics={"val_accuracy": 0.5}, hyperparameters={"seed": 0},
                     dataset_uri=f"{store.uri}/datasets/default/iceberg-chips/g1-bench", dataset_collection=None)
    version = register_model(store, namespace="default", name="iceberg", model=model,
                             example_input=torch.zeros(2, 3, 75, 75), card=card, training_stats=pool.stats)

    # --- the observer's work per batch against the forward ---------------------------------------------
    features = pool.chips[:BATCH]
    x = (features - mean[:, None, None]) / std[:, None, None]
    module, _ = load_model(store, "default", "iceberg", version.version, exported=True)
    reference = load_reference(pool.stats, features=S1_BANDS, classes=S1_CLASSES, source="bench")
    outputs = probabilities(pool.labels[:BATCH])
    with torch.inference_mode():
        forward = _best(lambda: module(torch.from_numpy(x)))
    sketch = WindowSketch(reference)
    observe = _best(lambda: sketch.update(features, outputs))
    print(f"\nper batch of {BATCH} chips: forward {forward * 1e3:.1f} ms, monitor sketch update {observe * 1e3:.2f} ms "
          f"({observe / forward:.1%} of the forward; off the request path, on the monitor's thread)")

    # --- serving throughput, monitoring off and on --------------------------------------------------------
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    servers = {}
    base = ["--model-uri", version.uri, "--model-name", "iceberg", "--http_port", "0", "--host", "127.0.0.1",
            "--max-batch-size", str(BATCH)]
    monitoring = ["--monitor-reference", version.uri, "--monitor-window", "500", "--monitor-interval", "5m",
                  "--monitor-store", store.uri, "--monitor-deployment", "default/iceberg"]
    try:
        for mode, extra in (("monitoring off", []), ("monitoring on", monitoring)):
            log = tmp_path / f"{mode.replace(' ', '-')}.log"
            proc = spawn([sys.executable, "-m", "earthops_runtime.serving", *base, *extra], log_path=log, env=env)
            wait_for(lambda log=log: READY.search(log.read_text(errors="replace")) is not None, timeout=240,
                     what=f"predictor ({mode})", proc=proc, log_path=log)
            servers[mode] = (proc, READY.search(log.read_text())[1])
        header = orjson.dumps({"inputs": [{"name": "chips", "shape": list(x.shape), "datatype": "FP32",
                                           "parameters": {"binary_data_size": x.nbytes}}]})
        body = header + np.ascontiguousarray(x, np.float32).tobytes()
        headers = {"content-type": "application/octet-stream", "inference-header-content-length": str(len(header))}
        totals = {mode: [0.0, 0.0] for mode in servers}  # wall seconds, busy core-seconds
        with httpx.Client(timeout=120) as client:
            def send(url: str, n: int) -> None:
                for _ in range(n):
                    r = client.post(f"{url}/v2/models/iceberg/infer", content=body, headers=headers)
                    assert r.status_code == 200, r.text[:300]

            for _, url in servers.values():
                send(url, 2)  # warm
            for _ in range(ROUNDS):
                for mode, (_, url) in servers.items():
                    wall, busy, _ = measured(send, url, REQUESTS)
                    totals[mode][0] += wall
                    totals[mode][1] += busy * wall
        assert store.list("deployments") == []  # no window of 500 requests closed: nothing written mid-benchmark
    finally:
        for proc, _ in servers.values():
            stop(proc)
    chips = ROUNDS * REQUESTS * BATCH
    rate = {mode: chips / wall for mode, (wall, _) in totals.items()}
    print(f"serving at batch {BATCH}, {ROUNDS} rounds x {REQUESTS} requests per mode, turn about, "
          f"torch threads {THREADS}:")
    print(f"{'mode':<16}{'chips/s':>10}{'busy cores':>12}")
    for mode, (wall, core_s) in totals.items():
        print(f"{mode:<16}{rate[mode]:>10.1f}{core_s / wall:>12.2f}")
    print(f"overhead of monitoring: {1 - rate['monitoring on'] / rate['monitoring off']:+.1%} of throughput "
          f"(goal <= 5%)")
