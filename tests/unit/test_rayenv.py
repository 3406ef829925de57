"""The environment Ray's workers start with (earthops.core.rayenv)."""

from __future__ import annotations

import os

import pytest

from earthops.core.rayenv import RAY_WORKER_ENV, starting_ray_workers

pytestmark = pytest.mark.unit


def test_the_worker_environment_is_set_only_while_ray_starts(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    with starting_ray_workers():
        assert {k: os.environ.get(k) for k in RAY_WORKER_ENV} == RAY_WORKER_ENV == {"MALLOC_ARENA_MAX": "1"}
    assert "MALLOC_ARENA_MAX" not in os.environ
    with pytest.raises(RuntimeError), starting_ray_workers():  # restored when the start fails too
        raise RuntimeError("ray.init failed")
    assert "MALLOC_ARENA_MAX" not in os.environ


def test_a_value_the_caller_set_is_kept(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    with starting_ray_workers():
        assert os.environ["MALLOC_ARENA_MAX"] == "4"
    assert os.environ["MALLOC_ARENA_MAX"] == "4"
