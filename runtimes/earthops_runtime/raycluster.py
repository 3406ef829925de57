"""Connecting a runtime entrypoint to Ray: the RayJob's cluster, a given address, or a local Ray."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from earthops.core.rayenv import starting_ray_workers

#: Object store of an embedded local Ray: small, so /dev/shm is not filled on a laptop or CI box.
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024


def connect(ray_address: str | None) -> Any:
    """``ray`` connected to: ``ray_address``; else the cluster the RayJob runs on (``RAY_ADDRESS``,
    set by KubeRay); else a new local Ray on loopback with this machine's CPUs
    (``EARTHOPS_RAY_NUM_CPUS`` to limit them). Idempotent within a process."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return ray
    if ray_address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=ray_address or os.environ["RAY_ADDRESS"], configure_logging=False, log_to_driver=False)
        return ray
    # a local Ray for embedded mode: no token auth and no dashboard (nothing to reach from outside)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    loopback_only()
    num_cpus = int(os.environ.get("EARTHOPS_RAY_NUM_CPUS") or os.cpu_count() or 1)
    with starting_ray_workers():  # in the workers' environment from their start
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            _node_ip_address="127.0.0.1",
            _temp_dir=os.path.join(tempfile.gettempdir(), "earthops-ray"),
            configure_logging=False,
            log_to_driver=False,
        )
    return ray


def loopback_only() -> None:
    """Keep a local Ray on 127.0.0.1. Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, when it is
    first imported; in its (default, on Linux) cluster mode it resolves ``_node_ip_address="127.0.0.1"``
    to the machine's outward address. A module that imported Ray before this point (Ray Tune, in the
    tuning runtime) has fixed that, so the setting is also made on the imported constant."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def cpus(ray: Any) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
