"""The session's local Ray is real, on loopback, and runs tasks in parallel."""

import time

import pytest

pytestmark = pytest.mark.integration


def test_ray_runs_tasks_in_parallel_on_loopback(ray_local):
    ray = ray_local

    @ray.remote(num_cpus=1)
    def nap(seconds: float) -> tuple[float, float]:
        start = time.time()
        time.sleep(seconds)
        return start, time.time()

    (s1, e1), (s2, e2) = ray.get([nap.remote(1.0), nap.remote(1.0)])
    assert s1 < e2 and s2 < e1, "the two tasks did not run side by side"
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert [n["NodeManagerAddress"] for n in nodes] == ["127.0.0.1"]
    assert ray.cluster_resources()["CPU"] == 2
