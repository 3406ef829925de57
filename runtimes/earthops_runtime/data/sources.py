"""Where scenes come from: an EODataset's ``spec.source`` turned into :class:`Scene` objects.

:func:`resolve_scenes` takes one of the four sources of :class:`earthops.api.dataset.Source`:

The search of ``stacApi`` and ``catalog`` (and ``earthops search`` over the store) has one meaning,
:mod:`earthops_runtime.stac.query`: collections, bbox (the item **geometry** meets it), datetime
(RFC 3339 with a time zone; a date is its whole day; the item's ``start_datetime``/``end_datetime``
range when it has both, else its ``datetime``), CQL2 filter, and pgstac's default order (newest
first, then collection, then id, descending). A bad value is a :class:`SpecError` on its field
(``spec.source.<kind>.datetime``, ``.bbox``, ``.filter``) before anything is read or requested.

``stacApi``
    A search on a STAC API with pystac-client: POST ``/search`` with the query's ``collections``,
    ``bbox``, ``datetime`` and CQL2-JSON ``filter``, and ``max_items = maxItems``. Scenes come in the
    API's order.
``catalog``
    A static catalog (local path, ``file://``, ``s3://``, ``http(s)://``) walked with pystac through
    :class:`FsspecStacIO`, and the *same* query applied in-process (``Query.select``), so a catalog
    and an API holding the same items give the same scenes: an item's collection is its
    ``collection``, else the collection that links it; the first ``maxItems`` in pgstac's order.
``files``
    GeoTIFF/COG files, local or ``s3://``, given as URIs or globs (fsspec glob). Band naming rule:

    1. a **multi-band** file is one scene (id: the file name without extension); its bands are named
       by their band descriptions (GDAL ``DESCRIPTION``, e.g. ``B04``);
    2. a **single-band** file named ``<scene>_<band>.<ext>`` (``S2A_..._B04.tif``) is band ``<band>``
       of scene ``<scene>``: the files of one folder sharing ``<scene>`` form one scene (its
       description, if any, names the band as well);
    3. any other single-band file is one scene whose band is named by its description.

    An unreadable file named ``<scene>_<band>.<ext>`` joins its scene (and fails it).

    Each scene's bbox comes from the files (reprojected to WGS84), its datetime from the TIFF
    ``DATETIME`` tag or a ``YYYYMMDDTHHMMSS`` in the scene id. A file that cannot be opened becomes
    a scene carrying its error (``earthops:error``): :func:`band_assets` raises its SceneError.
``sample``
    ``sample_scenes(name, count, seed)`` (injected by the entrypoint) returns a ``catalog.json``,
    which is then walked as a ``catalog`` source limited to ``count`` scenes. Sample catalogs hold
    several sensors: collections none of whose items carry any spec band are left out.

Band mapping (the same for every source). For each spec band, per scene, the first that applies:

1. ``assets[band]`` of the source, when given: that asset key;
2. an asset whose key is the band name (``B04``), else one whose key is an alias of it, ignoring
   case (Sentinel-2 names and common names are aliases: ``B04`` <-> ``red``, ``B05`` <-> ``rededge1``,
   ``B8A`` <-> ``nir08``, ...; SAR ``VV`` <-> ``vv``);
3. a band of an asset (``eo:bands`` / STAC 1.1 ``bands``) whose ``name`` is the band or an alias;
4. a band whose common name (``common_name`` / ``eo:common_name``) is the band or an alias;
   single-band assets win over multi-band ones (``red`` over the ``visual`` RGB asset), several
   single-band candidates make it ambiguous (name the asset in ``assets`` then).

Thumbnails, overviews and metadata assets only match by rule 1 or 2. In the scene, a mapped band's
asset is keyed by the spec's band name; other assets keep their key. A band that maps in no scene is a
:class:`SpecError` (``spec.bands``); a band missing from some scenes only makes those scenes fail, in
:func:`band_assets`, with a :class:`SceneError` (the caller's failure budget decides).

What readers get in ``scene.properties`` (besides the item's own non-null properties, labels included):

``earthops:raster`` (:data:`RASTER_KEY`)
    ``{band: {"asset": source asset key, "index": 1-based band in the file, "scale": .., "offset": ..,
    "nodata": .., "unit": ..}}`` from ``raster:bands`` / STAC 1.1 ``bands`` (``raster:scale``,
    ``raster:offset``, ``nodata``, ``unit``; asset-level fields as defaults) or, for files, from the
    file. ``None`` means not given (scale 1, offset 0, no nodata, no unit); nodata keeps STAC's JSON
    form (``"nan"`` is a string). value = stored * scale + offset.
``earthops:error`` (:data:`ERROR_KEY`)
    Only on scenes that could not be read (files source): why.

S3 credentials come from the environment or ``EARTHOPS_STORE_CREDENTIALS_DIR``
(:func:`earthops.core.store.credentials`), never from the spec; :func:`earthops_runtime.data.readers.gdal_env` turns them into
GDAL's ``/vsis3/`` settings for rasterio.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import fsspec
import pystac
from pystac.utils import make_absolute_href

from earthops_runtime.data.scene import Scene
from earthops_runtime.errors import SceneError, SpecError
from earthops_runtime.stac import conventions as stac
from earthops_runtime.stac.query import Query, SearchError, item_bbox, item_time, parse_interval

if TYPE_CHECKING:
    from earthops.api.dataset import SearchFilter, Source

RASTER_KEY = "earthops:raster"
ERROR_KEY = "earthops:error"

SampleScenes = Callable[[str, int, int], Path]

_NON_DATA_ROLES = frozenset({"thumbnail", "overview", "metadata"})
_NON_RASTER_MEDIA = ("application/json", "application/geo+json", "text/", "application/xml", "image/png",
                     "image/jpeg", "application/x-hdf")
_GLOB_CHARS = re.compile(r"[*?\[]")
_MAX_AVAILABLE_LISTED = 60
_SEARCH_PAGE = 500
_HTTP_TIMEOUT_S = 60

#: Sentinel-2 band names and the names other catalogs give the same band (common names; Earth
#: Search's asset keys). ``rededge`` is the common name of three bands, so it is no alias.
_S2_ALIASES: tuple[frozenset[str], ...] = tuple(frozenset(g) for g in (
    {"b01", "coastal"}, {"b02", "blue"}, {"b03", "green"}, {"b04", "red"}, {"b05", "rededge1"},
    {"b06", "rededge2"}, {"b07", "rededge3"}, {"b08", "nir"}, {"b8a", "nir08"}, {"b09", "nir09"},
    {"b10", "cirrus"}, {"b11", "swir16"}, {"b12", "swir22"},
))


def band_aliases(band: str) -> frozenset[str]:
    """Lower-case names that denote ``band``: itself, plus its Sentinel-2 partner names."""
    low = band.lower()
    for group in _S2_ALIASES:
        if low in group:
            return group
    return frozenset({low})


# --------------------------------------------------------------------------------------------------
# Public API


def resolve_scenes(source: Source, bands: Sequence[str], *,
                   sample_scenes: SampleScenes | None = None) -> list[Scene]:
    """The scenes of ``source`` with their ``bands`` mapped (see the module docstring).

    Raises :class:`SpecError`: ``SourceUnavailable`` (API, catalog or bucket unreachable),
    ``EmptySource`` (nothing matched), ``InvalidSpec`` (unknown band, bad filter, ...).
    """
    bands = list(bands)
    if source.stac_api is not None:
        spec = source.stac_api
        items = _search_api(spec, "spec.source.stacApi")
        return _to_scenes(items, bands, spec.assets, "spec.source.stacApi",
                          lambda: _empty_search_message(spec, "the search"))
    if source.catalog is not None:
        spec = source.catalog
        query = _query(spec, "spec.source.catalog")  # checked before anything is read
        items = query.select(_walk_catalog(spec.href, "spec.source.catalog.href"))
        return _to_scenes(items, bands, spec.assets, "spec.source.catalog",
                          lambda: _empty_search_message(spec, f"the catalog {spec.href}"))
    if source.files is not None:
        items = _file_items(source.files.uris)
        return _to_scenes(items, bands, {}, "spec.source.files",
                          lambda: f"the files matched no scenes (uris={list(source.files.uris)})")
    if source.sample is not None:
        sample = source.sample
        if sample_scenes is None:
            raise SpecError("spec.source.sample", "this runtime cannot produce sample scenes "
                            "(no sample_scenes function was given)", reason="SourceUnavailable")
        try:
            href = os.fspath(sample_scenes(sample.name, sample.count, sample.seed))
        except Exception as exc:  # noqa: BLE001 - e.g. the sample package cannot be downloaded
            raise SpecError("spec.source.sample", f"cannot produce the sample {sample.name!r}: {exc}",
                            reason="SourceUnavailable") from exc
        from earthops.api.dataset import SearchFilter

        spec = SearchFilter(max_items=sample.count)
        walked = list(_walk_catalog(href, "spec.source.sample"))
        items = _query(spec, "spec.source.sample").select(_with_bands(walked, bands) if bands else walked)
        return _to_scenes(items, bands, {}, "spec.source.sample",
                          lambda: f"the sample {sample.name!r} (count={sample.count}, seed={sample.seed}) "
                                  f"has no scenes with bands {bands}")
    raise SpecError("spec.source", "set exactly one of stacApi, catalog, files and sample")


def band_assets(scene: Scene, bands: Sequence[str]) -> dict[str, str]:
    """``{band: href}`` of the spec's bands in ``scene``; :class:`SceneError` when any is missing
    (or the scene could not be read at all)."""
    error = scene.properties.get(ERROR_KEY)
    if error:
        raise SceneError(scene.id, str(error))
    mapped = scene.properties.get(RASTER_KEY) or {}
    missing = [b for b in bands if b not in mapped or b not in scene.assets]
    if missing:
        names = ", ".join(repr(b) for b in missing)
        others = ", ".join(sorted(k for k in scene.assets if k not in mapped)) or "none"
        raise SceneError(scene.id, f"no asset for band{'s' if len(missing) > 1 else ''} {names} "
                                   f"(mapped: {', '.join(sorted(mapped)) or 'none'}; other assets: {others})")
    return {b: scene.assets[b] for b in bands}


def check_bands(scenes: Sequence[Scene], bands: Sequence[str], available: Iterable[str] = ()) -> None:
    """:class:`SpecError` (``spec.bands``) when a band maps in none of ``scenes``."""
    readable = [s for s in scenes if not s.properties.get(ERROR_KEY)]
    unknown = [b for b in bands if not any(b in (s.properties.get(RASTER_KEY) or {}) for s in readable)]
    if not unknown:
        return
    names = sorted(set(available), key=str.lower)
    listed = ", ".join(names[:_MAX_AVAILABLE_LISTED]) + (" ..." if len(names) > _MAX_AVAILABLE_LISTED else "")
    quoted = ", ".join(repr(b) for b in unknown)
    verb = "is" if len(unknown) == 1 else "are"
    raise SpecError("spec.bands", f"band{'s' if len(unknown) > 1 else ''} {quoted} {verb} not in the source; "
                                  f"available: {listed or 'none'}")


# --------------------------------------------------------------------------------------------------
# Filesystems: fsspec with the store's credentials


def _s3_filesystem() -> fsspec.AbstractFileSystem:
    """The S3 filesystem for the current credentials, shared by this process (see
    :func:`earthops.core.store.shared_s3_filesystem`)."""
    from earthops.core.store import credentials, shared_s3_filesystem

    return shared_s3_filesystem(credentials())


class _Filesystems:
    """One fsspec filesystem per protocol for one resolution (S3 with the store's credentials)."""

    def __init__(self) -> None:
        self._fs: dict[str, fsspec.AbstractFileSystem] = {}

    def get(self, uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
        """The filesystem of ``uri`` and the path it takes."""
        protocol, path = _split_uri(uri)
        if protocol not in self._fs:
            if protocol == "s3":
                self._fs[protocol] = _s3_filesystem()
            elif protocol in ("http", "https"):
                self._fs[protocol] = fsspec.filesystem(protocol, client_kwargs={"trust_env": True})
            else:
                self._fs[protocol] = fsspec.filesystem(protocol)
        return self._fs[protocol], path


def _split_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") or len(parsed.scheme) == 1:  # len 1: a Windows drive letter
        path = parsed.path if parsed.scheme == "file" else uri
        return "file", os.path.abspath(os.path.expanduser(path))
    if parsed.scheme == "s3":
        return "s3", f"{parsed.netloc}{parsed.path}"
    return parsed.scheme, uri  # http(s) and other fsspec protocols take the URL


def _normalize_uri(uri: str) -> str:
    """Local paths absolute; URLs as given."""
    protocol, path = _split_uri(uri)
    return path if protocol == "file" else uri


class FsspecStacIO(pystac.StacIO):
    """A pystac StacIO over fsspec: local paths, ``file://``, ``s3://`` (with the store's credentials,
    :func:`earthops.core.store.credentials`) and ``http(s)://``."""

    def __init__(self, filesystems: _Filesystems | None = None) -> None:
        super().__init__()
        self.filesystems = filesystems or _Filesystems()

    def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
        href = source.href if isinstance(source, pystac.Link) else os.fspath(source)
        fs, path = self.filesystems.get(href)
        return fs.cat_file(path).decode("utf-8")

    def write_text(self, dest: Any, txt: str, *args: Any, **kwargs: Any) -> None:
        href = dest.href if isinstance(dest, pystac.Link) else os.fspath(dest)
        fs, path = self.filesystems.get(href)
        protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
        if "file" in protocols:
            fs.makedirs(path.rsplit("/", 1)[0] or "/", exist_ok=True)
        fs.pipe_file(path, txt.encode("utf-8"))

    def read_many(self, hrefs: Sequence[str]) -> list[bytes | BaseException]:
        """The bytes of many documents (concurrently where the filesystem is asynchronous: S3,
        HTTP); an error in place of a document that could not be read."""
        out: list[bytes | BaseException] = [b""] * len(hrefs)
        by_fs: dict[int, tuple[fsspec.AbstractFileSystem, list[tuple[int, str]]]] = {}
        for i, href in enumerate(hrefs):
            fs, path = self.filesystems.get(href)
            by_fs.setdefault(id(fs), (fs, []))[1].append((i, path))
        for fs, entries in by_fs.values():
            paths = [p for _, p in entries]
            try:
                got = fs.cat(paths, on_error="return") if len(paths) > 1 else {paths[0]: fs.cat_file(paths[0])}
            except Exception as exc:  # noqa: BLE001 - reported per document
                got = {p: exc for p in paths}
            for i, path in entries:
                out[i] = got.get(path, FileNotFoundError(path))
        return out


# --------------------------------------------------------------------------------------------------
# Errors


def _cause(exc: BaseException) -> str:
    """A short cause for people: the innermost errno message, else the first line."""
    text = str(exc) or type(exc).__name__
    errno_msg = re.findall(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno_msg:
        return errno_msg[-1].strip().rstrip(".:")
    for needle, cause in (("nosuchbucket", "the bucket does not exist"),
                          ("accessdenied", "access denied (check the credentials)"),
                          ("invalidaccesskeyid", "the access key is not known to the server"),
                          ("signaturedoesnotmatch", "the secret key does not match"),
                          ("read timed out", "timed out"), ("timeout", "timed out")):
        if needle in text.lower().replace(" ", "") or needle in text.lower():
            return cause
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"{type(exc).__name__}: {first[:300]}"


# --------------------------------------------------------------------------------------------------
# Search filters: the one query semantics (earthops_runtime.stac.query), for the API and the catalog

#: Spec fields whose name differs from the query parameter they feed.
_SPEC_FIELDS = {"limit": "maxItems"}


def _query(spec: SearchFilter, field_prefix: str) -> Query:
    """The spec's search as a :class:`Query`; a bad value is a :class:`SpecError` on its field. An
    empty ``collections`` list means every collection here (the spec's default)."""
    try:
        return Query.parse(collections=list(spec.collections) or None, bbox=spec.bbox, datetime=spec.datetime,
                           filter=spec.filter or None, limit=spec.max_items)
    except SearchError as exc:
        raise SpecError(f"{field_prefix}.{_SPEC_FIELDS.get(exc.parameter, exc.parameter)}", exc.message) from exc


def _bbox_polygon(b: Sequence[float]) -> dict[str, Any]:
    w, s, e, n = b
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def _empty_search_message(spec: SearchFilter, what: str) -> str:
    parts = [f"collections={list(spec.collections) or 'all'}", f"bbox={spec.bbox}", f"datetime={spec.datetime}"]
    if spec.filter:
        parts.append(f"filter={spec.filter}")
    return f"{what} matched no scenes ({', '.join(parts)})"


# --------------------------------------------------------------------------------------------------
# stacApi


def _search_api(spec: Any, field_prefix: str) -> list[dict[str, Any]]:
    import requests
    from pystac_client import Client
    from pystac_client.exceptions import APIError
    from pystac_client.stac_api_io import StacApiIO
    from urllib3.util.retry import Retry

    url_field = f"{field_prefix}.url"
    query = _query(spec, field_prefix)  # the same checks as the catalog source, before any request
    try:
        # a few quick retries (POST searches too) on connection errors and overloaded servers
        retry = Retry(total=3, backoff_factor=0.25, status_forcelist=(502, 503, 504), allowed_methods=None)
        client = Client.open(spec.url, stac_io=StacApiIO(timeout=_HTTP_TIMEOUT_S, max_retries=retry))
    except (requests.exceptions.RequestException, OSError) as exc:
        raise SpecError(url_field, f"cannot reach {spec.url}: {_cause(exc)}", reason="SourceUnavailable") from exc
    except APIError as exc:
        raise SpecError(url_field, f"cannot reach {spec.url}: {_api_error(exc)}", reason="SourceUnavailable") from exc
    except Exception as exc:
        raise SpecError(url_field, f"{spec.url} is not a STAC API: {_cause(exc)}", reason="SourceUnavailable") from exc
    from pystac_client.conformance import ConformanceClasses

    if not client.conforms_to(ConformanceClasses.ITEM_SEARCH):
        raise SpecError(url_field, f"{spec.url} is a STAC catalog without item search (/search); "
                                   "use it as spec.source.catalog instead")
    if spec.filter and not client.conforms_to(ConformanceClasses.FILTER):
        raise SpecError(f"{field_prefix}.filter", f"{spec.url} does not support CQL2 filters "
                                                  "(no filter conformance class): it would ignore the filter")
    kwargs: dict[str, Any] = {
        "method": "POST",
        "max_items": spec.max_items,
        "limit": min(spec.max_items, _SEARCH_PAGE),
    }
    # pystac-client spells the body's "filter-lang" filter_lang
    kwargs.update({key.replace("-", "_"): value for key, value in query.search_body().items()})
    try:
        search = client.search(**kwargs)
        return [dict(item) for item in search.items_as_dicts()]
    except (requests.exceptions.RequestException, OSError) as exc:
        raise SpecError(url_field, f"cannot reach {spec.url}: {_cause(exc)}", reason="SourceUnavailable") from exc
    except APIError as exc:
        status = getattr(exc, "status_code", None)
        if status is not None and 400 <= status < 500:
            raise SpecError(field_prefix, f"{spec.url} refused the search: {_api_error(exc)}") from exc
        raise SpecError(url_field, f"the search on {spec.url} failed: {_api_error(exc)}",
                        reason="SourceUnavailable") from exc
    except NotImplementedError as exc:  # pystac-client: the API lacks a conformance class
        raise SpecError(field_prefix, f"{spec.url} cannot run this search: {exc}") from exc


def _api_error(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    if not status:  # pystac-client wraps connection errors too
        return _cause(exc)
    return f"HTTP {status}: {' '.join(str(exc).split())[:400]}"


# --------------------------------------------------------------------------------------------------
# catalog


def _walk_catalog(href: str, field_name: str) -> Iterator[dict[str, Any]]:
    """Every item reachable from the catalog at ``href`` (child and item links), as JSON with absolute
    asset hrefs, ``collection`` filled in from the linking collection, and a self link."""
    io = FsspecStacIO()
    href = _normalize_uri(href)
    try:
        root = pystac.read_file(href, stac_io=io)
    except Exception as exc:
        raise SpecError(field_name, f"cannot read the catalog {href}: {_cause(exc)}",
                        reason="SourceUnavailable") from exc
    if isinstance(root, pystac.Item):
        d = root.to_dict(include_self_link=False, transform_hrefs=False)
        yield _absolute_item(d, href, None)
        return
    if not isinstance(root, pystac.Catalog):  # Collection is a Catalog
        raise SpecError(field_name, f"{href} is a {type(root).__name__}, not a STAC catalog or collection")
    todo: list[tuple[str, dict[str, Any]]] = [(href, root.to_dict(include_self_link=False, transform_hrefs=False))]
    seen = {href}
    while todo:
        node_href, node = todo.pop(0)
        collection_id = node.get("id") if node.get("type") == "Collection" else None
        item_hrefs: list[str] = []
        child_hrefs: list[str] = []
        for link in node.get("links", []):
            if link.get("rel") not in ("item", "child") or not link.get("href"):
                continue
            target = make_absolute_href(link["href"], node_href)
            if target in seen:
                continue
            seen.add(target)
            (item_hrefs if link["rel"] == "item" else child_hrefs).append(target)
        for item_href, raw in zip(item_hrefs, io.read_many(item_hrefs), strict=True):
            if isinstance(raw, BaseException):
                raise SpecError(field_name, f"cannot read the item {item_href}: {_cause(raw)}",
                                reason="SourceUnavailable") from raw
            yield _absolute_item(_json(raw, item_href, field_name), item_href, collection_id)
        for child_href, raw in zip(child_hrefs, io.read_many(child_hrefs), strict=True):
            if isinstance(raw, BaseException):
                raise SpecError(field_name, f"cannot read the catalog {child_href}: {_cause(raw)}",
                                reason="SourceUnavailable") from raw
            todo.append((child_href, _json(raw, child_href, field_name)))


def _json(raw: bytes, href: str, field_name: str) -> dict[str, Any]:
    import json

    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise SpecError(field_name, f"{href} is not JSON: {exc}", reason="SourceUnavailable") from exc
    if not isinstance(doc, dict):
        raise SpecError(field_name, f"{href} is not a STAC object", reason="SourceUnavailable")
    return doc


def _absolute_item(item: dict[str, Any], item_href: str, collection_id: str | None) -> dict[str, Any]:
    item = dict(item)
    if not item.get("collection") and collection_id:
        item["collection"] = collection_id
    assets = {}
    for key, asset in (item.get("assets") or {}).items():
        asset = dict(asset)
        if asset.get("href"):
            asset["href"] = make_absolute_href(asset["href"], item_href)
        assets[key] = asset
    item["assets"] = assets
    links = [lk for lk in item.get("links", []) if lk.get("rel") != "self"]
    item["links"] = [{"rel": "self", "href": item_href, "type": "application/geo+json"}, *links]
    return item


def _with_bands(items: list[dict[str, Any]], bands: Sequence[str]) -> list[dict[str, Any]]:
    """Items of the collections where some item carries some spec band (sample catalogs)."""
    keep: set[str | None] = set()
    for item in items:
        coll = item.get("collection")
        if coll in keep:
            continue
        table = _asset_table(item)
        if any(_map_band(item, table, b, {})[0] is not None for b in bands):
            keep.add(coll)
    return [it for it in items if it.get("collection") in keep]


# --------------------------------------------------------------------------------------------------
# files


def _expand_uris(uris: Sequence[str], filesystems: _Filesystems) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for i, uri in enumerate(uris):
        fs, path = filesystems.get(uri)
        protocol = "s3" if uri.startswith("s3://") else "file"
        if _GLOB_CHARS.search(path):
            try:
                found = sorted(fs.glob(path))
            except Exception as exc:
                raise SpecError(f"spec.source.files.uris[{i}]", f"cannot list {uri}: {_cause(exc)}",
                                reason="SourceUnavailable") from exc
            matches = [f"s3://{p}" if protocol == "s3" else p for p in found]
        else:
            matches = [f"s3://{path}" if protocol == "s3" else path]
        for m in matches:
            if m not in seen:
                seen.add(m)
                out.append(m)
    return out


@dataclass
class _FileInfo:
    uri: str
    count: int = 0
    descriptions: tuple[str | None, ...] = ()
    scales: tuple[float, ...] = ()
    offsets: tuple[float, ...] = ()
    nodata: tuple[float | None, ...] = ()
    units: tuple[str | None, ...] = ()
    bbox: tuple[float, float, float, float] | None = None
    crs: str | None = None
    datetime: str | None = None
    error: str | None = None


def _read_file_info(uri: str) -> _FileInfo:
    import rasterio
    import rasterio.warp

    from earthops_runtime.data.readers import gdal_env

    info = _FileInfo(uri)
    try:
        with gdal_env(), rasterio.open(uri) as ds:
            info.count = ds.count
            info.descriptions = tuple(d.strip() if d and d.strip() else None for d in ds.descriptions)
            info.scales = tuple(float(v) for v in ds.scales)
            info.offsets = tuple(float(v) for v in ds.offsets)
            info.nodata = tuple(ds.nodatavals)
            info.units = tuple(u or None for u in ds.units)
            if ds.crs is not None:
                b = ds.bounds
                w, s, e, n = rasterio.warp.transform_bounds(ds.crs, "EPSG:4326", b.left, b.bottom, b.right,
                                                            b.top, densify_pts=21)
                info.bbox = (w, s, e, n)
                auth = ds.crs.to_authority()
                info.crs = f"{auth[0]}:{auth[1]}" if auth else ds.crs.to_wkt()
            stamp = ds.tags().get("TIFFTAG_DATETIME")
            if stamp and re.fullmatch(r"\d{4}:\d{2}:\d{2} \d{2}:\d{2}:\d{2}", stamp.strip()):
                d, t = stamp.strip().split(" ")
                info.datetime = f"{d.replace(':', '-')}T{t}Z"
    except Exception as exc:  # noqa: BLE001 - reported on the scene (failure budget)
        info.error = f"cannot open {uri}: {_cause(exc)}"
    return info


_SCENE_BAND = re.compile(r"^(?P<scene>.+)_(?P<band>[A-Za-z0-9]+)$")
_ID_TIME = re.compile(r"(?<!\d)(\d{8})T(\d{6})(?!\d)")


def _stem(uri: str) -> str:
    name = PurePosixPath(urlparse(uri).path if "://" in uri else uri).name
    return name.split(".", 1)[0] if "." in name else name


def _parent(uri: str) -> str:
    return uri.rsplit("/", 1)[0] if "/" in uri else ""


def _file_items(uris: Sequence[str]) -> list[dict[str, Any]]:
    filesystems = _Filesystems()
    files = _expand_uris(uris, filesystems)
    if not files:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:
        infos = list(pool.map(_read_file_info, files))
    scenes: dict[tuple[str, str], list[tuple[str, _FileInfo]]] = {}
    order: list[tuple[str, str]] = []
    for info in infos:
        stem = _stem(info.uri)
        m = _SCENE_BAND.match(stem)
        if m and (info.error is not None or info.count == 1):  # an unreadable file fails its scene
            key, band = (_parent(info.uri), m["scene"]), m["band"]
        else:
            key, band = (_parent(info.uri), stem), None
            if (info.error is None and info.count == 1 and not info.descriptions[0]) or key in scenes:
                key = (info.uri, stem)  # unnamed single band, or a name taken by a group: its own scene
        if key not in scenes:
            scenes[key] = []
            order.append(key)
        scenes[key].append((band or "", info))
    return [_file_scene_item(key[1], scenes[key]) for key in order]


def _file_scene_item(scene_id: str, members: list[tuple[str, _FileInfo]]) -> dict[str, Any]:
    assets: dict[str, Any] = {}
    errors = [info.error for _, info in members if info.error]
    boxes = [info.bbox for _, info in members if info.bbox]
    crs = next((info.crs for _, info in members if info.crs), None)
    stamp = next((info.datetime for _, info in members if info.datetime), None)
    for band, info in members:
        key = band or _stem(info.uri)
        if key in assets:
            key = f"{key}_{len(assets)}"
        entries = []
        for i in range(info.count):
            names = [n for n in ((band if info.count == 1 and band else None), info.descriptions[i]) if n]
            entry: dict[str, Any] = {"name": names[0] if names else None}
            if len(names) > 1 and names[1] != names[0]:
                entry["earthops:aliases"] = names[1:]
            scale, offset, nodata = info.scales[i], info.offsets[i], info.nodata[i]
            if info.units[i]:
                entry["unit"] = info.units[i]
            if scale != 1.0:
                entry["raster:scale"] = scale
            if offset != 0.0:
                entry["raster:offset"] = offset
            if nodata is not None:
                entry["nodata"] = stac.json_number(nodata)
            entries.append(entry)
        assets[key] = {"href": info.uri, "type": "image/tiff; application=geotiff", "roles": ["data"],
                       "bands": entries}
    if stamp is None:
        m = _ID_TIME.search(scene_id)
        if m:
            d, t = m.groups()
            stamp = f"{d[:4]}-{d[4:6]}-{d[6:]}T{t[:2]}:{t[2:4]}:{t[4:]}Z"
    bbox = None
    if boxes:
        bbox = [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                max(b[3] for b in boxes)]
    props: dict[str, Any] = {"datetime": stamp}
    if crs:
        props["proj:code"] = crs
    if errors:
        props[ERROR_KEY] = "; ".join(errors)
    return {"type": "Feature", "id": scene_id, "bbox": bbox,
            "geometry": _bbox_polygon(bbox) if bbox else None, "properties": props, "assets": assets,
            "links": []}


# --------------------------------------------------------------------------------------------------
# Band mapping: items -> scenes


@dataclass(frozen=True)
class _BandEntry:
    asset: str
    index: int  # 0-based
    count: int  # bands of the asset
    name: str | None
    aliases: tuple[str, ...]
    common_name: str | None
    scale: Any
    offset: Any
    nodata: Any
    unit: Any


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _is_data_asset(asset: Mapping[str, Any]) -> bool:
    roles = set(asset.get("roles") or [])
    if roles and roles <= _NON_DATA_ROLES:
        return False
    media = str(asset.get("type") or "")
    return not any(media.startswith(m) for m in _NON_RASTER_MEDIA)


def _asset_table(item: Mapping[str, Any]) -> dict[str, list[_BandEntry]]:
    """Per asset key: its bands (from ``bands``, ``eo:bands``, ``raster:bands``; asset-level fields
    are defaults; an asset without band lists has one implicit band)."""
    table: dict[str, list[_BandEntry]] = {}
    for key, asset in (item.get("assets") or {}).items():
        lists = [asset.get("bands") or [], asset.get("eo:bands") or [], asset.get("raster:bands") or []]
        count = max(1, *(len(x) for x in lists))
        entries = []
        for i in range(count):
            b, e, r = (x[i] if i < len(x) and isinstance(x[i], dict) else {} for x in lists)
            entries.append(_BandEntry(
                asset=key, index=i, count=count,
                name=_first(b.get("name"), e.get("name")),
                aliases=tuple(b.get("earthops:aliases") or ()),
                common_name=_first(b.get("eo:common_name"), e.get("common_name"), b.get("common_name"),
                                   asset.get("eo:common_name") if count == 1 else None),
                scale=_first(r.get("scale"), b.get("raster:scale"), asset.get("raster:scale")),
                offset=_first(r.get("offset"), b.get("raster:offset"), asset.get("raster:offset")),
                nodata=_first(r.get("nodata"), b.get("nodata"), asset.get("nodata")),
                unit=_first(r.get("unit"), b.get("unit"), asset.get("unit")),
            ))
        table[key] = entries
    return table


def _band_in_asset(entries: list[_BandEntry], aliases: frozenset[str]) -> _BandEntry | None:
    if len(entries) == 1:
        return entries[0]
    for e in entries:
        names = [n for n in (e.name, *e.aliases, e.common_name) if n]
        if any(n.lower() in aliases for n in names):
            return e
    return None


def _map_band(item: Mapping[str, Any], table: dict[str, list[_BandEntry]], band: str,
              explicit: Mapping[str, str]) -> tuple[_BandEntry | None, str]:
    """The band entry serving ``band`` in ``item`` and how it was found, or (None, why not)."""
    aliases = band_aliases(band)
    assets = item.get("assets") or {}
    if band in explicit:
        key = explicit[band]
        if key not in table:
            return None, f"asset {key!r} (named for {band!r} in assets) is not in the item"
        entry = _band_in_asset(table[key], aliases)
        if entry is None:
            return None, f"asset {key!r} has {len(table[key])} bands and none is named {band!r}"
        return entry, "assets"
    keys = sorted(table)
    for key in ([band] if band in table else []) + [k for k in keys if k.lower() == band.lower()] + [
            k for k in keys if k.lower() in aliases]:
        entry = _band_in_asset(table[key], aliases)
        if entry is not None:
            return entry, "key"
    data = [e for key, entries in table.items() if _is_data_asset(assets.get(key) or {}) for e in entries]
    by_name = [e for e in data if any(n.lower() in aliases for n in (e.name, *e.aliases) if n)]
    by_common = [e for e in data if e.common_name and e.common_name.lower() in aliases]
    for candidates, how in ((by_name, "name"), (by_common, "common_name")):
        if not candidates:
            continue
        single = [e for e in candidates if e.count == 1]
        if len(single) == 1 or (not single and len({e.asset for e in candidates}) == 1):
            return (single or candidates)[0], how
        pool = single or candidates
        return None, (f"ambiguous: assets {', '.join(sorted({e.asset for e in pool}))} all match by {how}; "
                      f"name one in the source's assets")
    return None, "no asset matches"


def _available_names(item: Mapping[str, Any], table: dict[str, list[_BandEntry]]) -> set[str]:
    assets = item.get("assets") or {}
    names: set[str] = set()
    for key, entries in table.items():
        if not _is_data_asset(assets.get(key) or {}):
            continue
        names.add(key)
        for e in entries:
            names.update(n for n in (e.name, e.common_name) if n)
    return names


def _scene_from_item(item: Mapping[str, Any], bands: Sequence[str], explicit: Mapping[str, str],
                     available: set[str], ambiguity: dict[str, str]) -> Scene:
    table = _asset_table(item)
    if not (item.get("properties") or {}).get(ERROR_KEY):
        available |= _available_names(item, table)
    assets_json = item.get("assets") or {}
    mapped: dict[str, str] = {}
    raster: dict[str, dict[str, Any]] = {}
    used: set[str] = set()
    for band in bands:
        entry, how = _map_band(item, table, band, explicit)
        if entry is None:
            if how.startswith(("ambiguous", "asset ")):
                ambiguity.setdefault(band, how)
            continue
        mapped[band] = assets_json[entry.asset]["href"]
        used.add(entry.asset)
        raster[band] = {"asset": entry.asset, "index": entry.index + 1, "scale": entry.scale,
                        "offset": entry.offset, "nodata": entry.nodata, "unit": entry.unit}
    # other assets keep their key, except a spec band's name: an unmapped band must stay missing
    others = {k: a["href"] for k, a in assets_json.items()
              if a.get("href") and k not in used and k not in mapped and k not in bands}
    # null properties are dropped, as pgstac does: the same item gives the same scene from every source
    props = {k: v for k, v in (item.get("properties") or {}).items() if v is not None}
    props[RASTER_KEY] = raster
    self_href = next((lk.get("href") for lk in item.get("links") or [] if lk.get("rel") == "self"), None)
    # the scene's instant: its datetime, else the start of its range
    start = item_time(props.get("datetime")) or item_time(props.get("start_datetime"))
    bbox = item_bbox(item)
    return Scene(id=str(item.get("id")), assets={**mapped, **others}, datetime=start, bbox=bbox,
                 properties=props, collection=item.get("collection"), stac_href=self_href)


def _to_scenes(items: Iterable[Mapping[str, Any]], bands: Sequence[str], explicit: Mapping[str, str],
               field_prefix: str, empty_message: Callable[[], str]) -> list[Scene]:
    available: set[str] = set()
    ambiguity: dict[str, str] = {}
    scenes = [_scene_from_item(it, bands, explicit, available, ambiguity) for it in items]
    if not scenes:
        raise SpecError("spec.source", empty_message(), reason="EmptySource")
    readable = [s for s in scenes if not s.properties.get(ERROR_KEY)]
    if not readable:
        first = scenes[0].properties[ERROR_KEY]
        raise SpecError(field_prefix, f"none of the {len(scenes)} scenes can be read; first: {first}",
                        reason="SourceUnavailable")
    for band, why in ambiguity.items():  # a band mapped nowhere because of a spec problem: say which
        if not any(band in (s.properties.get(RASTER_KEY) or {}) for s in readable):
            raise SpecError("spec.bands", f"band {band!r}: {why}")
    check_bands(readable, bands, available)
    return scenes


__all__ = [
    "ERROR_KEY", "RASTER_KEY", "FsspecStacIO", "band_aliases", "band_assets", "check_bands",
    "parse_interval", "resolve_scenes",
]
