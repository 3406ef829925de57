"""The session's local Ray is real, on loopback, and runs tasks in parallel."""

import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_ray_runs_tasks_in_parallel_on_loopback(ray_local):
    ray = ray_local

    # A rendezvous, not a timing: each task announces itself and waits (up to a deadline) for the other
    # one. Two tasks that run one after the other never meet, however loaded the machine is.
    folder = tempfile.mkdtemp(prefix="earthops-ray-meet-")

    @ray.remote(num_cpus=1)
    def meet(me: str, other: str) -> bool:
        Path(folder, me).touch()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if Path(folder, other).exists():
                return True
            time.sleep(0.05)
        return False

    assert ray.get([meet.remote("a", "b"), meet.remote("b", "a")]) == [True, True], \
        "the two tasks did not run side by side"
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert [n["NodeManagerAddress"] for n in nodes] == ["127.0.0.1"], \
        [{k: n.get(k) for k in ("NodeID", "NodeManagerAddress", "NodeName", "Resources", "Labels")} for n in ray.nodes()]
    assert ray.cluster_resources()["CPU"] == 2


def test_embedded_ray_stays_on_loopback_after_ray_tune_was_imported():
    """The tuning runtime imports Ray Tune before it starts its local Ray: that Ray must still be on
    127.0.0.1 (Ray fixes its node-address mode when first imported). Its workers start with
    :data:`earthops.core.rayenv.RAY_WORKER_ENV`."""
    import json
    import os
    import subprocess
    import sys

    code = ("import json, os, ray.tune\nfrom earthops_runtime import raycluster\nr = raycluster.connect(None)\n"
            "environ = r.get(r.remote(lambda: open('/proc/self/environ', 'rb').read().decode()).remote())\n"
            "print(json.dumps([n['NodeManagerAddress'] for n in r.nodes() if n['Alive']]))\n"
            "print(json.dumps(environ.split(chr(0)) + ['driver:' + str(os.environ.get('MALLOC_ARENA_MAX'))]))\n"
            "r.shutdown()\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["EARTHOPS_RAY_NUM_CPUS"] = "1"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-2]) == ["127.0.0.1"]
    # its workers start with the environment earthops gives Ray's workers (glibc reads it at start)
    # (not set in the driver's own environment: only the Ray processes it started get it)
    environ = json.loads(out.stdout.strip().splitlines()[-1])
    assert "MALLOC_ARENA_MAX=1" in environ and "driver:None" in environ


def test_a_driver_credentials_stay_in_ray_only_while_it_runs(ray_local):
    """A tuning or ablation driver on an S3 store leaves its credentials in Ray's key-value store for
    its trials (earthops_runtime.trials.StoreHandler); they are deleted when the driver exits, so a
    long-lived Ray cluster does not collect every driver's credentials."""
    import os
    import subprocess
    import sys

    from ray.experimental import internal_kv

    from earthops_runtime import trials

    script = (
        "import sys, ray\n"
        "from ray.experimental import internal_kv\n"
        "from earthops_runtime import trials\n"
        "ray.init(address=sys.argv[1])\n"
        "ref = trials._share_credentials()\n"
        "print(ref, internal_kv._internal_kv_get(ref, namespace=trials.CREDENTIALS_NAMESPACE).decode())\n"
    )
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "driver-key", "AWS_SECRET_ACCESS_KEY": "driver-secret"}
    out = subprocess.run([sys.executable, "-c", script, ray_local.get_runtime_context().gcs_address],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    reference, shared = out.stdout.strip().splitlines()[-1].split(" ", 1)
    assert "driver-secret" in shared  # there while the driver ran
    assert internal_kv._internal_kv_get(reference, namespace=trials.CREDENTIALS_NAMESPACE) is None
