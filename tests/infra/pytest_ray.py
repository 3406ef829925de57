"""pytest plugin: one local Ray per test session, on loopback.

``ray.init`` takes seconds, so it happens once. The driver is the pytest process itself: Ray starts its
GCS and raylet with fate sharing (they die with the driver, also on SIGKILL). Token auth is off for
the test cluster (Ray 2.60 turns it on by default and writes a token under $HOME), the dashboard is
off, and the object store is small so /dev/shm is not filled.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.infra.proc import unavailable

OBJECT_STORE_BYTES = 200 * 1024 * 1024


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A started local Ray (the ``ray`` module); its address is ``ray.get_runtime_context().gcs_address``."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError as exc:
        unavailable(f"ray is not installed: {exc}")
    from earthops.core.rayenv import starting_ray_workers
    from earthops_runtime.raycluster import loopback_only

    loopback_only()  # also when a test module imported Ray (Ray Tune) before this fixture
    try:
        with starting_ray_workers():  # the workers' environment, as earthops starts a local Ray
            ray.init(
                num_cpus=2,
                include_dashboard=False,
                object_store_memory=OBJECT_STORE_BYTES,
                _node_ip_address="127.0.0.1",
                _temp_dir=str(tmp_path_factory.mktemp("ray")),
                configure_logging=False,
                log_to_driver=False,
            )
    except Exception as exc:  # noqa: BLE001 - any start failure means: no Ray for these tests
        unavailable(f"ray did not start: {exc}")
    try:
        yield ray
    finally:
        ray.shutdown()
