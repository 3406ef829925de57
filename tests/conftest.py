"""Shared test set-up: the real infrastructure fixtures live in tests/infra as pytest plugins."""

pytest_plugins = [
    "tests.infra.pytest_kube",
    "tests.infra.pytest_s3",
    "tests.infra.pytest_samples",
    "tests.infra.pytest_ray",
    "tests.infra.pytest_stacapi",
]
