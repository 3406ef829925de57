"""Shared test set-up: the real infrastructure fixtures live in tests/infra as pytest plugins."""

import socket

import pytest

pytest_plugins = [
    "tests.infra.pytest_kube",
    "tests.infra.pytest_s3",
    "tests.infra.pytest_samples",
    "tests.infra.pytest_ray",
    "tests.infra.pytest_stacapi",
    "tests.infra.pytest_datasets",
]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any network connection in the test fails (offline checks: caches, vendored schemas)."""

    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
