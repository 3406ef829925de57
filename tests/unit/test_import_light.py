"""The control plane and the contract must not pull in the data plane's heavy libraries."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

HEAVY = ["torch", "ray", "kserve", "rasterio", "pystac", "numpy"]


@pytest.mark.parametrize(
    "modules",
    [
        ["earthops"],
        ["earthops.api", "earthops.control.crds", "earthops.core.store", "earthops.control.status", "earthops.control.display"],
        ["earthops.control.cli", "earthops.control.local"],
        ["earthops.control.handlers.kinds", "earthops.control.handlers.process"],
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
    """operator/ and runtimes/ are source roots, not packages: from the repository root (on sys.path
    first, as under pytest or `python -c`), `import operator` must still be the standard library's."""
    root = Path(__file__).resolve().parents[2]
    assert not (root / "operator" / "__init__.py").exists() and not (root / "runtimes" / "__init__.py").exists()
    code = "import json, operator, sysconfig; print(json.dumps([operator.__file__, sysconfig.get_paths()['stdlib']]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    origin, stdlib = json.loads(out.stdout)
    assert Path(origin).resolve().is_relative_to(Path(stdlib).resolve()), origin
