"""Training throughput and trials per device, on whatever device the machine has (CUDA with mixed
precision where there is one: ``tests/bench/gpu.sh`` runs this on a GPU machine).

Data: the synthetic ship/iceberg dataset of ``examples/ship-iceberg/01-dataset.yaml`` with
``EARTHOPS_BENCH_TRAINING_SAMPLES`` (default 1600) chips of 75 x 75 px (HH, HV, band_avg).

* **training throughput**: the one :class:`~earthops_runtime.training.Trainer` (``device: auto``: CUDA
  with bfloat16 or float16 autocast when present, float32 on the CPU) on ``iceberg-cnn`` at widths
  ``EARTHOPS_BENCH_TRAINING_WIDTHS`` (default ``0.25,1.0``) and batch sizes
  ``EARTHOPS_BENCH_TRAINING_BATCHES`` (default ``32,128``): after one warm-up epoch,
  ``EARTHOPS_BENCH_TRAINING_EPOCHS`` (default 2) epochs timed; train chips per second, seconds per
  epoch, the precision used. Nothing is asserted about speed.
* **trials per device**: the real tuning entrypoint, no early stopping, the same
  ``EARTHOPS_BENCH_TRAINING_TRIALS`` (default 4) configurations of the tuning benchmark's search space
  at ``maxConcurrentTrials`` 1 and K: on a GPU K = ``EARTHOPS_BENCH_TRIALS_PER_GPU`` (default 2; the
  local Ray has 2 CPUs) trials share one GPU (``gpu: 1/K``, ``cpu: 2/K`` each); on a CPU machine K = 2
  trials of 1 CPU. Printed: T1 / T_K (how much faster K trials at once are) and the busy cores.

Run with ``make bench`` (or ``pytest -m bench -s tests/bench/test_bench_training.py``).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.bench.measure import measured

pytestmark = [pytest.mark.bench, pytest.mark.timeout(3600)]

SAMPLES = int(os.environ.get("EARTHOPS_BENCH_TRAINING_SAMPLES", "1600"))
WIDTHS = [float(w) for w in os.environ.get("EARTHOPS_BENCH_TRAINING_WIDTHS", "0.25,1.0").split(",")]
BATCHES = [int(b) for b in os.environ.get("EARTHOPS_BENCH_TRAINING_BATCHES", "32,128").split(",")]
EPOCHS = int(os.environ.get("EARTHOPS_BENCH_TRAINING_EPOCHS", "2"))
TRIALS = int(os.environ.get("EARTHOPS_BENCH_TRAINING_TRIALS", "4"))
PER_GPU = int(os.environ.get("EARTHOPS_BENCH_TRIALS_PER_GPU", "2"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, ray_local: Any) -> str:
    from tests.infra.pytest_datasets import build, example

    doc = example("examples/ship-iceberg/01-dataset.yaml", **{"spec.source.sample.count": SAMPLES})
    address = ray_local.get_runtime_context().gcs_address
    return build(tmp_path_factory.mktemp("datasets").as_uri(), doc, address).run_uri


def test_training_throughput(dataset: str) -> None:
    import torch

    from earthops.api.tuning import Training
    from earthops_runtime.training import DatasetInfo, Trainer

    info = DatasetInfo.open(dataset)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"\ntraining throughput on {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'} "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads): {info.counts} chips")
    print(f"{'width':>6} {'batch':>6} {'precision':>10} {'s/epoch':>8} {'chips/s':>9} {'busy cores':>11}")
    for width in WIDTHS:
        for batch in BATCHES:
            training = Training.model_validate({"epochs": EPOCHS + 1, "batchSize": batch, "device": "auto",
                                                "learningRate": 1e-3, "seed": 0})
            trainer = Trainer(info, "iceberg-cnn", {"width": width}, training)
            trainer.train_epoch()  # warm-up: cuDNN autotuning, allocator, first reads
            if device == "cuda":
                torch.cuda.synchronize()
            wall, cores, metrics = measured(lambda t=trainer: [t.train_epoch() for _ in range(EPOCHS)])
            assert all(m["train_loss"] == m["train_loss"] for m in metrics)  # finite, not NaN
            precision = str(trainer.amp_dtype).replace("torch.", "") if trainer.amp else "float32"
            chips = info.counts["train"] * EPOCHS
            print(f"{width:6g} {batch:6d} {precision:>10} {wall / EPOCHS:8.2f} {chips / wall:9.0f} {cores:11.2f}")


def test_trials_per_device(tmp_path: Any, dataset: str, ray_local: Any) -> None:
    from tests.bench.test_bench_tuning import manifest, run_earthops

    address = ray_local.get_runtime_context().gcs_address
    gpus = ray_local.cluster_resources().get("GPU", 0)
    k = PER_GPU if gpus else 2
    resources = {"gpu": round(1 / k, 4), "cpu": round(2 / k, 4)} if gpus else {"cpu": 1}
    store = tmp_path.as_uri()
    walls: dict[int, tuple[float, float]] = {}
    for slots in (1, k):
        doc = manifest(f"per-device-{slots}", {"name": "none"}, TRIALS, slots)
        doc["spec"]["training"]["device"] = "auto"
        doc["spec"]["resources"] = resources if slots > 1 or not gpus else {"gpu": 1, "cpu": 1}
        wall, cores, row = measured(run_earthops, store, doc, dataset, address)
        assert row["trials"] == TRIALS, row
        walls[slots] = (wall, cores)
    (t1, c1), (tk, ck) = walls[1], walls[k]
    where = f"{int(gpus)} GPU(s), {k} trials per GPU" if gpus else f"CPU, {k} trials of 1 CPU"
    print(f"\ntrials per device ({where}): {TRIALS} trials, no early stopping")
    print(f"  1 at a time: {t1:8.1f} s   busy cores {c1:.2f}")
    print(f"  {k} at a time: {tk:8.1f} s   busy cores {ck:.2f}")
    print(f"  T1 / T{k} = {t1 / tk:.2f}  ({k} would be perfect packing)")
