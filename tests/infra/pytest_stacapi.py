"""pytest plugin: a real STAC API server (stac-fastapi-pgstac on PostgreSQL + PostGIS) for the session.

Fixtures:

* ``stac_api`` (session): a started :class:`tests.infra.stacapi.StacApiServer`; ``stac_api.url`` is
  the API root for pystac-client, ``stac_api.load(collections=[...], items=[...])`` upserts STAC dicts
  or pystac objects with pypgstac, ``stac_api.delete_collection(id)`` removes one. The database is
  shared by the session: give each test its own collection ids (see ``stac_collection``).
* ``stac_collection`` (function): a collection id unique to the test, deleted afterwards.

When the server is not installed (``make stacapi``) or does not start, the dependent tests are skipped
locally and fail in CI (:func:`tests.infra.proc.unavailable`).

Register with ``-p tests.infra.pytest_stacapi`` or in the root ``tests/conftest.py``'s ``pytest_plugins``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.infra.proc import unavailable, unique_name
from tests.infra.stacapi import StacApiServer, missing


@pytest.fixture(scope="session")
def stac_api() -> Iterator[StacApiServer]:
    problem = missing()
    if problem:
        unavailable(f"STAC API server: {problem}")
    server = StacApiServer()
    try:
        server.start()
    except Exception as exc:  # noqa: BLE001 - any start failure means: no STAC API for this session
        unavailable(f"STAC API server (stac-fastapi-pgstac) did not start: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stac_collection(stac_api: StacApiServer, request: pytest.FixtureRequest) -> Iterator[str]:
    collection_id = unique_name(request.node.name, prefix="")
    try:
        yield collection_id
    finally:
        try:
            stac_api.delete_collection(collection_id)
        except Exception:  # noqa: BLE001 - cleanup of a throwaway database must not fail a test
            pass
