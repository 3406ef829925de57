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


#: Every test says what it needs: exactly one of these markers (``make unit`` / ``make integration`` /
#: ``make bench`` select by them; a test with none would silently never run in those targets).
LEVELS = ("unit", "integration", "e2e", "bench")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects anything
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [item.nodeid for item in items if not {m.name for m in item.iter_markers()} & set(LEVELS)]
    if unmarked:
        shown = "\n  ".join(unmarked[:20])
        raise pytest.UsageError(f"{len(unmarked)} tests have none of the markers {', '.join(LEVELS)} "
                                f"(set pytestmark in the module):\n  {shown}")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any network connection in the test fails (offline checks: caches, vendored schemas)."""

    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
