"""pytest plugin: one real kube-apiserver per test session (see tests/infra/kube.py).

Register it in tests/conftest.py with ``pytest_plugins = ["tests.infra.pytest_kube"]`` (or ``-p
tests.infra.pytest_kube``). Fixtures:

- ``kube_apiserver`` (session): a started :class:`~tests.infra.kube.KubeApiServer` with the KubeRay and
  KServe CRDs and earthops' own ``crds/*.yaml`` installed, plus a garbage-collecting controller manager.
  When the binaries cannot be had or the server does not start, :func:`tests.infra.proc.unavailable`
  skips the dependent tests (fails them under ``CI=true``).
- ``kube_api_client`` (session): an admin ``kubernetes.client.ApiClient`` for it.
- ``kube_controller_manager``: the same server, for tests that need garbage collection or namespace
  deletion (unavailable when ``KUBEBUILDER_ASSETS`` has no kube-controller-manager).
- ``kube_namespace`` (function): a fresh namespace per test, deleted afterwards.

Environment: ``KUBEBUILDER_ASSETS`` (use these binaries), ``EARTHOPS_CACHE`` (cache root),
``EARTHOPS_ENVTEST_BUILD=0`` (never build during a test run: skip instead), ``EARTHOPS_KEEP_KUBE_DIR=1``
(keep the server's directory with its logs).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.infra import kube
from tests.infra.kube import EnvtestUnavailable, KubeApiServer
from tests.infra.proc import unavailable, unique_name


@pytest.fixture(scope="session")
def kube_apiserver() -> Iterator[KubeApiServer]:
    try:
        bin_dir = kube.ensure_binaries()
        crds = kube.third_party_crds()
    except EnvtestUnavailable as e:
        unavailable(str(e))
    # envtest asset bundles (setup-envtest) ship no kube-controller-manager: then run without it, and
    # the tests that need garbage collection ask for the `kube_controller_manager` fixture.
    has_kcm = os.access(bin_dir / "kube-controller-manager", os.X_OK)
    server = KubeApiServer(bin_dir=bin_dir, crds=crds, controller_manager=has_kcm)
    try:
        server.start()
    except Exception as e:  # noqa: BLE001 - any start failure means: no API server for these tests
        unavailable(f"kube-apiserver did not start: {e}")
    try:
        # Our own CRDs are installed apart from the third-party ones: a broken generated CRD is a
        # bug to report as an error, not an unavailable test server.
        ours = kube.project_crds()
        if ours:
            server.install_crds(ours)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kube_api_client(kube_apiserver: KubeApiServer) -> Any:
    """The admin ApiClient of the session's server."""
    return kube_apiserver.admin


@pytest.fixture
def kube_controller_manager(kube_apiserver: KubeApiServer) -> KubeApiServer:
    """The session's server, for tests that need its controller manager (garbage collection,
    namespace deletion); unavailable when the binaries came without kube-controller-manager."""
    if not kube_apiserver.controller_manager:
        unavailable(f"no kube-controller-manager in {kube_apiserver.bin_dir} (garbage collection needs it)")
    return kube_apiserver


@pytest.fixture
def kube_namespace(kube_apiserver: KubeApiServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new namespace named after the test (``t-<test>-<random>``); deleted, without waiting, after it."""
    name = kube_apiserver.create_namespace(unique_name(request.node.name))
    yield name
    kube_apiserver.delete_namespace(name)
