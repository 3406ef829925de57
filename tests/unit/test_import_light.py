"""The control plane and the contract must not pull in the data plane's heavy libraries."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

HEAVY = ["torch", "ray", "kserve", "rasterio", "pystac", "numpy"]


@pytest.mark.parametrize(
    "modules",
    [
        ["earthops"],
        ["earthops.api", "earthops.crds", "earthops.store", "earthops.status", "earthops.display"],
        ["earthops.cli", "earthops.local"],
        ["earthops.handlers.kinds", "earthops.handlers.process"],
    ],
)
def test_importing_the_control_plane_pulls_in_no_heavy_library(modules):
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(json.dumps(sorted(h for h in {HEAVY!r} if h in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [], f"{modules} imported heavy libraries: {out.stdout}"


def test_no_importable_package_is_called_operator():
    import operator

    # the standard library module, not our operator/ folder
    assert hasattr(operator, "itemgetter")
    assert "site-packages" not in (operator.__file__ or "") or "earthops" not in (operator.__file__ or "")
