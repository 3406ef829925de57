"""The predictor's pure pieces: the canary router, scene windows, the micro-batcher, the observers, and
the plan that derives a model's features from raw bands with the dataset's own code."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from earthops_runtime.data.features import plan_features, plan_for_features, sar_feature_op
from earthops_runtime.errors import SpecError
from earthops_runtime.serving import metrics
from earthops_runtime.serving.batching import MicroBatcher
from earthops_runtime.serving.errors import BadInput
from earthops_runtime.serving.model import Router
from earthops_runtime.serving.observe import Observers
from earthops_runtime.serving.scene import Mosaic, plan_windows, window_starts
from tests.infra.observers import Broken, Recorder

pytestmark = pytest.mark.unit


# --- canary split ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("percent", [0, 1, 5, 20, 33, 50, 99, 100])
def test_the_router_splits_every_hundred_requests_by_the_percent(percent):
    router = Router({"v1": 100 - percent, "v2": percent})
    picks = [router.next() for _ in range(1000)]
    for start in range(0, 1000, 100):
        assert picks[start:start + 100].count("v2") == percent
    # smooth: the canary's requests are spread out, not bunched
    if 0 < percent <= 50:
        gaps = np.diff([i for i, v in enumerate(picks) if v == "v2"])
        assert gaps.max() - gaps.min() <= 1


def test_the_router_refuses_weights_that_split_nothing():
    for weights in ({}, {"v1": 0}, {"v1": -1, "v2": 101}):
        with pytest.raises(ValueError, match="weights"):
            Router(weights)


# --- scene windows ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("length", "size", "stride", "starts"), [
    (100, 32, 32, [0, 32, 64, 68]), (96, 32, 32, [0, 32, 64]), (96, 32, 24, [0, 24, 48, 64]),
    (32, 32, 32, [0]), (31, 32, 32, []), (75, 75, 65, [0]), (160, 75, 65, [0, 65, 85])])
def test_windows_cover_the_whole_length(length, size, stride, starts):
    assert window_starts(length, size, stride) == starts
    if starts:
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s:s + size] = True
        assert covered.all() and starts[-1] + size == length


def test_plan_windows_refuses_a_scene_smaller_than_a_chip_and_an_overlap_of_a_chip():
    with pytest.raises(BadInput, match="smaller than the model's chip") as e:
        plan_windows(60, 200, (75, 75), 0)
    assert e.value.code == "chip_size"
    with pytest.raises(BadInput, match="overlap") as e:
        plan_windows(200, 200, (75, 75), 75)
    layout = plan_windows(200, 300, (75, 75), 10)
    assert layout.rows == (0, 65, 125) and layout.cols == (0, 65, 130, 195, 225) and layout.count == 15


def test_the_mosaic_averages_overlapping_chips():
    layout = plan_windows(4, 6, (4, 4), 2)  # columns 0 and 2: columns 2-3 are seen twice
    mosaic = Mosaic(layout, 2)
    a = np.zeros((2, 4, 4), np.float32)
    a[0] = 1.0
    b = np.zeros((2, 4, 4), np.float32)
    b[1] = 1.0
    mosaic.add([(0, 0), (0, 2)], np.stack([a, b]))
    probs = mosaic.probabilities()
    assert probs[0, 0, 0] == 1.0 and probs[0, 0, 5] == 0.0
    np.testing.assert_allclose(probs[:, :, 2:4], 0.5)


# --- micro-batching ---------------------------------------------------------------------------------------


def test_concurrent_requests_are_gathered_into_batches_and_get_their_own_rows():
    sizes: list[int] = []
    threads: set[str] = set()

    def forward(x: np.ndarray) -> np.ndarray:
        threads.add(threading.current_thread().name)
        return x.reshape(len(x), -1).sum(axis=1, keepdims=True) * 2

    batcher = MicroBatcher(forward, max_batch_size=8, max_wait_ms=50, on_batch=lambda n, s: sizes.append(n))

    async def main():
        xs = [np.full((n, 1, 2, 2), float(i), np.float32) for i, n in enumerate([1, 2, 3, 1, 5, 1, 2])]
        results = await asyncio.gather(*(batcher.predict(x) for x in xs))
        for i, (x, y) in enumerate(zip(xs, results, strict=True)):
            np.testing.assert_array_equal(y[:, 0], np.full(len(x), 8.0 * i))
        # one request larger than a batch is split and put back together
        big = np.arange(20 * 4, dtype=np.float32).reshape(20, 1, 2, 2)
        np.testing.assert_array_equal((await batcher.predict(big))[:, 0], big.reshape(20, -1).sum(1) * 2)

    asyncio.run(main())
    assert max(sizes) == 8 and sum(sizes) == 15 + 20 and len(sizes) < 7 + 3
    assert all(t.startswith("earthops-forward") for t in threads)  # never on the event loop's thread


def test_a_failing_forward_fails_its_batch_only():
    calls = {"n": 0}

    def forward(x: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("device lost")
        return x[:, :1, 0, 0]

    batcher = MicroBatcher(forward, max_batch_size=4, max_wait_ms=0)

    async def main():
        with pytest.raises(RuntimeError, match="device lost"):
            await batcher.predict(np.zeros((1, 1, 1, 1), np.float32))
        assert (await batcher.predict(np.ones((2, 1, 1, 1), np.float32))).tolist() == [[1.0], [1.0]]

    asyncio.run(main())


def test_the_batcher_refuses_nonsense_settings():
    with pytest.raises(ValueError, match="max batch size"):
        MicroBatcher(lambda x: x, max_batch_size=0)
    with pytest.raises(ValueError, match="wait"):
        MicroBatcher(lambda x: x, max_wait_ms=-1)


# --- observers ----------------------------------------------------------------------------------------------


def test_observers_get_a_frozen_copy_and_a_broken_one_is_counted_not_raised():
    recorder = Recorder()
    observers = Observers([Broken(), recorder])
    features = np.ones((2, 3, 4, 4), np.float32)
    before = metrics.OBSERVER_ERRORS.labels(observer="Broken")._value.get()
    observers.publish(model_name="m", model_version="v1", features=features, feature_names=["a", "b", "c"],
                      outputs=np.full((2, 2), 0.5, np.float32), class_names=["x", "y"], task="classification",
                      request_id="r-1")
    features[:] = 7  # the caller's buffer is reused: the observer's copy must not change
    observers.drain(timeout=10)
    [batch] = recorder.batches
    assert batch.features.sum() == 2 * 3 * 16 and not batch.features.flags.writeable
    assert batch.feature_names == ("a", "b", "c") and batch.class_names == ("x", "y") and batch.request_id == "r-1"
    assert metrics.OBSERVER_ERRORS.labels(observer="Broken")._value.get() == before + 1
    with pytest.raises(AttributeError):
        batch.task = "segmentation"  # frozen
    observers.close()


def test_an_observer_needs_observe():
    with pytest.raises(TypeError, match="observe"):
        Observers([object()])


def test_publish_returns_before_a_slow_observer_finishes_and_drops_beyond_the_bound():
    release = threading.Event()

    class Slow:
        def observe(self, batch):
            release.wait(10)

    observers = Observers([Slow()], max_pending=3)
    dropped = metrics.OBSERVER_DROPPED.labels(model="m")._value.get()
    for _ in range(5):  # the first waits in observe, two more queue, two are dropped
        observers.publish(model_name="m", model_version="v1", features=np.zeros((1, 1, 1, 1), np.float32),
                          feature_names=["a"], outputs=np.zeros((1, 2), np.float32), class_names=["x", "y"],
                          task="classification", request_id=None)
    assert metrics.OBSERVER_DROPPED.labels(model="m")._value.get() == dropped + 2
    release.set()
    observers.drain(timeout=10)
    observers.close()


# --- features from raw bands: the dataset's own code ----------------------------------------------------


@pytest.mark.parametrize(("name", "op"), [("band_avg", "band_avg"), ("HH_HV_ratio", "ratio"), ("VV_VH_difference", "difference"),
                                          ("HH_linear", "linear"), ("VH_db", "db"), ("HH_HV_band_avg", "band_avg"),
                                          ("B04", None), ("NDVI", None), ("HH_ratio", None), ("XX_YY_ratio", None)])
def test_sar_feature_names_are_read_back(name, op):
    assert sar_feature_op(name) == op


def test_a_model_s_features_are_derived_from_raw_bands_in_any_order():
    plan, where = plan_for_features(["HH", "HV", "band_avg"], ["HV", "HH"])
    x = np.random.default_rng(0).normal(-20, 3, (2, 2, 8, 8)).astype(np.float32)
    out = plan.apply(x)[:, where]
    reference = plan_features(["HH", "HV"], sar=["band_avg"]).apply(x[:, ::-1])
    np.testing.assert_allclose(out, reference)
    plan, where = plan_for_features(["B04", "B08", "NDVI"], ["B02", "B03", "B04", "B08"])
    assert [plan.names[i] for i in where] == ["B04", "B08", "NDVI"]


def test_missing_bands_are_named():
    with pytest.raises(SpecError, match="band HV missing"):
        plan_for_features(["HH", "HV", "band_avg"], ["HH"])
    with pytest.raises(SpecError, match="NDVI.*B08"):
        plan_for_features(["B04", "NDVI"], ["B04"])


def test_a_canary_of_another_model_with_the_same_version_is_labelled_by_model():
    from earthops_runtime.serving.loaded import Card, LoadedModel
    from earthops_runtime.serving.model import EOModel

    def loaded(model: str) -> LoadedModel:
        card = Card(name=model, version="v1", task="classification", features=("HH",), mean=np.zeros(1, np.float32),
                    std=np.ones(1, np.float32), classes=("a", "b"), num_outputs=2, chip_shape=(2, 2), batch=-1)
        return LoadedModel(f"file:///store/models/default/{model}/v1", card, module=None, device="cpu")

    served = EOModel("ships", [loaded("ships"), loaded("ships-b")], weights=[90, 10])
    assert list(served.versions) == ["v1", "ships-b-v1"]
    assert served.versions["ships-b-v1"].version == "ships-b-v1"
    with pytest.raises(ValueError, match="must differ"):
        EOModel("ships", [loaded("ships"), loaded("ships")], weights=[90, 10])
