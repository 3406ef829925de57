"""The layer contracts in pyproject.toml hold on the tree, and each one fails on a planted violation.

``make lint`` runs the same contracts; these tests prove they can fail: each plants one import that a
contract forbids into a copy of the packages and checks that import-linter names that contract broken,
with the planted import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")

#: contract id -> (file in the copy, line appended to it, the import import-linter must report)
PLANTED = {
    "planes": ("earthops/core/runs.py", "from earthops.control import status as _planted  # noqa\n",
               "earthops.core.runs -> earthops.control.status"),
    "light": ("earthops/control/display.py", "\ndef _planted():\n    import torch  # noqa\n",
              "earthops.control.display -> torch"),
    "control": ("earthops/control/status.py", "\ndef _planted():\n    from earthops.control import cli  # noqa\n",
                "earthops.control.status -> earthops.control.cli"),
    "runtime": ("earthops_runtime/stac/query.py", "\ndef _planted():\n    from earthops_runtime.catalog import search  # noqa\n",
                "earthops_runtime.stac.query -> earthops_runtime.catalog.search"),
}


def _lint(tree: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    args = [str(LINT), "--no-cache", "--config", str(ROOT / "pyproject.toml")]
    for c in contracts:
        args += ["--contract", c]
    return subprocess.run(args, cwd=tree, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of both packages (sources only), importable ahead of the installed ones."""
    out = tmp_path_factory.mktemp("layers")
    for package in (ROOT / "operator" / "earthops", ROOT / "runtimes" / "earthops_runtime"):
        shutil.copytree(package, out / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    return out


def test_the_tree_keeps_every_contract(tree: Path) -> None:
    result = _lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("contract", sorted(PLANTED))
def test_a_planted_violation_breaks_its_contract(tree: Path, tmp_path: Path, contract: str) -> None:
    path, line, reported = PLANTED[contract]
    planted = tmp_path / "tree"
    shutil.copytree(tree, planted)
    target = planted / path
    target.write_text((target.read_text() if target.exists() else "") + line)
    result = _lint(planted, contract)
    assert result.returncode != 0, f"contract {contract} did not notice {reported}:\n{result.stdout}"
    assert "BROKEN" in result.stdout and reported in result.stdout, result.stdout


def test_the_cli_may_reach_the_data_plane_only_through_the_facade(tree: Path, tmp_path: Path) -> None:
    """The facade is the one exception: the same lazy import from another control-plane module breaks
    the layering."""
    planted = tmp_path / "tree"
    shutil.copytree(tree, planted)
    target = planted / "earthops/control/local/executor.py"
    target.write_text(target.read_text() + "\ndef _planted():\n    from earthops_runtime import facade  # noqa\n")
    result = _lint(planted, "planes")
    assert result.returncode != 0 and "earthops.control.local.executor -> earthops_runtime.facade" in result.stdout, \
        result.stdout
