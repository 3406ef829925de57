"""The STAC API conformance suite (stac-api-validator) for the tests, in its own cached venv.

``bash tests/stacvalidator/setup.sh`` (``make stacapi``, so ``make test``) builds the venv at
``${EARTHOPS_CACHE:-~/.cache/earthops}/stacvalidator-venv-<sha256(requirements)[:16]>``;
:func:`ensure` builds it when it is missing (pip from the package registry) and raises when that
fails, so a missing suite fails the test instead of skipping it. :func:`validate` runs the suite
(offline: ``tests/stacvalidator/run.py`` answers the schema URLs from pystac's local copies) against
an API root and returns what it printed and its exit status.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SUITE_DIR = REPO_ROOT / "tests" / "stacvalidator"
SETUP_SCRIPT = SUITE_DIR / "setup.sh"
RUNNER = SUITE_DIR / "run.py"

#: The validator's ``--conformance`` option for each conformance class an API may claim. Classes it
#: has no check for (free text, the CQL2 sub-classes it tests under ``filter``) map to None.
VALIDATOR_CLASSES: dict[str, str | None] = {
    "https://api.stacspec.org/v1.0.0/core": "core",
    "https://api.stacspec.org/v1.0.0/collections": "collections",
    "https://api.stacspec.org/v1.0.0/ogcapi-features": "features",
    "https://api.stacspec.org/v1.0.0/item-search": "item-search",
    "https://api.stacspec.org/v1.0.0-rc.2/item-search#filter": "filter",
    "https://api.stacspec.org/v1.1.0/item-search#sort": "item-search#sort",
    "https://api.stacspec.org/v1.0.0/item-search#sort": "item-search#sort",
    "https://api.stacspec.org/v1.0.0/ogcapi-features#sort": "features#sort",
    "https://api.stacspec.org/v1.0.0/item-search#fields": "item-search#fields",
    "https://api.stacspec.org/v1.1.0/ogcapi-features#sort": "features#sort",
    "https://api.stacspec.org/v1.0.0/ogcapi-features#fields": "features#fields",
}


def venv_dir() -> Path:
    out = subprocess.run(["bash", str(SETUP_SCRIPT), "--print-venv"], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def ensure() -> Path:
    """The suite's venv, built now when missing. Raises RuntimeError saying why it cannot be built."""
    check = subprocess.run(["bash", str(SETUP_SCRIPT), "--check"], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        build = subprocess.run(["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, check=False, timeout=900)
        if build.returncode != 0:
            raise RuntimeError(f"the STAC API conformance suite could not be installed "
                               f"(bash {SETUP_SCRIPT}):\n{build.stderr[-3000:]}")
    return venv_dir()


@dataclass(frozen=True)
class Report:
    returncode: int
    output: str

    @property
    def errors(self) -> list[str]:
        """The lines under ``Errors:`` (the suite prints ``Errors: none`` when there are none)."""
        lines = self.output.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("Errors:"):
                if line.strip() == "Errors: none":
                    return []
                return [x for x in lines[i + 1:] if x.startswith("- ")]
        return [f"no 'Errors:' section in the suite's output (exit {self.returncode})"]


def validate(root_url: str, classes: list[str], *, collection: str, geometry: str, fields_nested_property: str,
             timeout: float = 300.0) -> Report:
    """Run stac-api-validator against ``root_url`` for the validator's ``classes``."""
    venv = ensure()
    argv = [str(venv / "bin" / "python"), str(RUNNER), "--root-url", root_url, "--collection", collection,
            "--geometry", geometry, "--fields-nested-property", fields_nested_property, "--log-level", "WARNING"]
    for cls in classes:
        argv += ["--conformance", cls]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
           "LANG": "C.UTF-8", "NO_PROXY": "127.0.0.1,localhost"}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    return Report(result.returncode, result.stdout + result.stderr)
