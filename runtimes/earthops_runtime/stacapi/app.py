"""A STAC API over the store: stac-fastapi (routes, landing page, conformance, OpenAPI, extensions)
with a backend (:class:`StoreClient`) over the store's published collections and search indexes.

Why stac-fastapi's core packages fit here: ``stac-fastapi.api/types/extensions`` 7.0 install beside
kserve 0.21 with the project's own fastapi 0.165 and starlette 1.10 (``pip install --dry-run -c
constraints.txt``), so the API lives in the project's environment, no venv of its own.

What a request means is :mod:`earthops_runtime.stac.query` (and :mod:`earthops_runtime.stac.text`),
answered by :mod:`earthops_runtime.catalog.search` — the functions ``earthops search`` calls. So that
the parameters are parsed once, by those semantics, the search requests reach the backend as given
(GET: strings; POST: the JSON body as is), not through stac-fastapi's own bbox/datetime validators; a
bad value raises :class:`SearchError` and answers 400 in the STAC API error format (``code``,
``description``) naming the parameter. An unknown collection answers 404.

Conformance (the landing page's ``conformsTo``): core, collections, OGC API Features (core, GeoJSON,
OpenAPI 3.0), item search, filter (CQL2 text and JSON, basic CQL2, advanced comparison operators,
basic spatial functions), sort, fields, free text (basic and advanced), for ``/search`` and for a
collection's items. Paging: ``next`` links carrying a ``token`` (the offset of the next page); a POST
search's ``next`` link is a POST with the same body and the token.

Hrefs: items and collections link to the API (self, parent, collection, root, items); their assets
keep their store URLs (``s3://``, ``file://``), never with credentials: user information and signing
query parameters are removed from every href served (:func:`safe_href`). With ``presign_seconds``
and an S3 store, each ``s3://`` asset of the store also gets an ``alternate.https`` presigned link
(the alternate-assets extension) for clients without S3 access.
"""

# no `from __future__ import annotations`: FastAPI reads the request classes' annotations at run time
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import attr
from fastapi import Path, Request
from fastapi import Query as Param
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from stac_fastapi.api.app import StacApi
from stac_fastapi.api.models import CollectionUri, ItemUri, create_request_model
from stac_fastapi.extensions import FieldsExtension, FilterExtension, SortExtension, TokenPaginationExtension
from stac_fastapi.extensions.fields.fields import FieldsConformanceClasses
from stac_fastapi.extensions.filter.filter import FilterConformanceClasses
from stac_fastapi.extensions.free_text.free_text import FreeTextAdvancedExtension, FreeTextConformanceClasses
from stac_fastapi.extensions.sort.sort import SortConformanceClasses
from stac_fastapi.types.config import ApiSettings
from stac_fastapi.types.conformance import BASE_CONFORMANCE_CLASSES
from stac_fastapi.types.core import BaseCoreClient
from stac_fastapi.types.errors import NotFoundError
from stac_fastapi.types.extension import ApiExtension
from stac_fastapi.types.requests import get_base_url
from stac_fastapi.types.search import APIRequest

from earthops_runtime.catalog import dataset as dataset_catalog
from earthops_runtime.catalog import search
from earthops_runtime.stac.query import Query, SearchError

TITLE = "earthops STAC API"
DEFAULT_LIMIT = 10
#: The largest page served; a larger ``limit`` is cut to it (the STAC API lets a server do so).
MAX_LIMIT = 10_000
#: How long the list of published runs and collections is reused before the store is read again.
REFRESH_SECONDS = 2.0
GEOJSON = "application/geo+json"
JSON = "application/json"
#: Query parameters that sign or authorise a URL (S3, Azure SAS, OAuth): never served.
CREDENTIAL_PARAMETERS = frozenset({
    "x-amz-signature", "x-amz-credential", "x-amz-security-token", "x-amz-algorithm", "x-amz-date",
    "x-amz-expires", "x-amz-signedheaders", "awsaccesskeyid", "signature", "sig", "se", "sp", "sv", "sr",
    "skoid", "sktid", "skt", "ske", "sks", "skv", "token", "access_token", "x-goog-signature",
    "x-goog-credential",
})
CQL2_CLASSES = [
    FilterConformanceClasses.FILTER, FilterConformanceClasses.SEARCH, FilterConformanceClasses.ITEMS,
    FilterConformanceClasses.CQL2_TEXT, FilterConformanceClasses.CQL2_JSON, FilterConformanceClasses.BASIC_CQL2,
    FilterConformanceClasses.ADVANCED_COMPARISON_OPERATORS, FilterConformanceClasses.BASIC_SPATIAL_FUNCTIONS,
]


def safe_href(href: Any) -> Any:
    """``href`` without user information (``https://user:secret@host``) and signing query parameters."""
    if not isinstance(href, str) or "://" not in href:
        return href
    parts = urllib.parse.urlsplit(href)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = parts.query
    if query:
        kept = [(k, v) for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True)
                if k.lower() not in CREDENTIAL_PARAMETERS]
        query = urllib.parse.urlencode(kept)
    if netloc == parts.netloc and query == parts.query:
        return href
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# --------------------------------------------------------------------------------------------------
# What the store holds


class StoreCatalog:
    """The store's published collections and search indexes, read again at most every
    :data:`REFRESH_SECONDS` (a run published meanwhile appears then; runs are never half visible:
    only published runs are read)."""

    def __init__(self, store: Any, *, refresh_seconds: float = REFRESH_SECONDS):
        self.store = store
        self.refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._read_at = -1e9
        self._files: dict[str, str] = {}
        self._collections: dict[str, dict[str, Any]] = {}

    def _refresh(self) -> None:
        with self._lock:
            if time.monotonic() - self._read_at < self.refresh_seconds:
                return
            files = search.local_index_files(self.store)
            collections: dict[str, dict[str, Any]] = {}
            for key in self._collection_keys():
                try:
                    doc = self.store.read_json(key)
                except Exception:  # noqa: BLE001 - a collection that cannot be read is not served
                    continue
                if isinstance(doc, dict) and doc.get("type") == "Collection" and isinstance(doc.get("id"), str):
                    doc["_url"] = self.store.url(key)
                    collections.setdefault(doc["id"], doc)
            self._files, self._collections = files, collections
            self._read_at = time.monotonic()

    def _collection_keys(self) -> list[str]:
        keys = dataset_catalog.published_collections(self.store, ("datasets",))
        for ns in self.store.children("models"):
            for model in self.store.children(f"models/{ns}"):
                key = f"models/{ns}/{model}/collection.json"
                if self.store.exists(key):
                    keys.append(key)
        return keys

    @property
    def files(self) -> dict[str, str]:
        self._refresh()
        return self._files

    @property
    def collections(self) -> dict[str, dict[str, Any]]:
        self._refresh()
        return self._collections

    def collection(self, collection_id: str) -> dict[str, Any]:
        found = self.collections.get(collection_id)
        if found is None:
            raise NotFoundError(f"collection {collection_id!r} not found; there are: "
                                f"{', '.join(sorted(self.collections)) or 'none'}")
        return found


# --------------------------------------------------------------------------------------------------
# Requests as given (the semantics parse them)


@attr.s
class SearchGetRequest(APIRequest):
    """``GET /search`` parameters as strings."""

    collections: Annotated[str | None, Param(description="Collection ids, comma-separated")] = attr.ib(default=None)
    ids: Annotated[str | None, Param(description="Item ids, comma-separated")] = attr.ib(default=None)
    bbox: Annotated[str | None, Param(description="W,S,E,N in WGS84 degrees")] = attr.ib(default=None)
    intersects: Annotated[str | None, Param(description="GeoJSON geometry (instead of bbox)")] = attr.ib(default=None)
    datetime: Annotated[str | None, Param(description="RFC 3339 instant or interval")] = attr.ib(default=None)
    limit: Annotated[str | None, Param(description=f"Page size, 1 to {MAX_LIMIT}")] = attr.ib(default=None)


@attr.s
class ItemsGetRequest(APIRequest):
    """``GET /collections/{collection_id}/items`` parameters as strings."""

    collection_id: Annotated[str, Path(description="Collection ID")] = attr.ib()
    bbox: Annotated[str | None, Param(description="W,S,E,N in WGS84 degrees")] = attr.ib(default=None)
    datetime: Annotated[str | None, Param(description="RFC 3339 instant or interval")] = attr.ib(default=None)
    limit: Annotated[str | None, Param(description=f"Page size, 1 to {MAX_LIMIT}")] = attr.ib(default=None)


def _split(value: Any) -> Any:
    return [v for v in value.split(",")] if isinstance(value, str) else value


def _limit(value: Any) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise SearchError("limit", f"{value!r}: expected a positive integer (at most {MAX_LIMIT})") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SearchError("limit", f"{value!r}: expected a positive integer (at most {MAX_LIMIT})")
    return min(value, MAX_LIMIT)


def _offset(token: Any) -> int:
    if token in (None, ""):
        return 0
    try:
        offset = int(str(token))
    except ValueError:
        offset = -1
    if offset < 0:
        raise SearchError("token", f"{token!r}: not a token of this API (take it from a 'next' link)")
    return offset


def _fields(value: Any, given: bool) -> tuple[list[str] | None, list[str]] | None:
    """(include, exclude) of the fields extension (GET ``a,-b``; POST ``{"include": [], "exclude": []}``):
    include None when not given, [] when given empty or null; None when the request has no ``fields``."""
    if not given:
        return None
    if value is None:
        raise SearchError("fields", "null: expected {\"include\": [...], \"exclude\": [...]} or leave it out")
    if isinstance(value, Mapping):
        include, exclude = value.get("include"), value.get("exclude") or []
        if not value:
            include = []  # {}: the default set
        if (include is not None and not isinstance(include, list)) or not isinstance(exclude, list) or \
                not all(isinstance(v, str) for v in [*(include or []), *exclude]):
            raise SearchError("fields", f"{value!r}: expected include/exclude lists of field names")
        return (None if "include" not in value and value else list(include or [])), list(exclude)
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SearchError("fields", f"{value!r}: expected field names such as 'id,properties.datetime,-assets'")
    include = [v.strip().lstrip("+") for v in value if v.strip() and not v.strip().startswith("-")]
    exclude = [v.strip()[1:] for v in value if v.strip().startswith("-")]
    return (include or (None if exclude else [])), exclude


#: What an item keeps when ``fields`` names no field to include (given empty): the extension's default set.
DEFAULT_FIELDS = ("type", "stac_version", "id", "geometry", "bbox", "links", "assets", "properties.datetime",
                  "properties.start_datetime", "properties.end_datetime")
#: What an item keeps besides the fields it includes.
ALWAYS = ("type", "stac_version", "id", "links")


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


def _pick(item: Mapping[str, Any], paths: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in paths:
        src: Any = item
        dst = out
        parts = path.split(".")
        for i, part in enumerate(parts):
            if not isinstance(src, dict) or part not in src:
                break
            if i == len(parts) - 1:
                dst[part] = src[part]
            else:
                src = src[part]
                dst = dst.setdefault(part, {})
    return out


def apply_fields(item: dict[str, Any], include: list[str] | None, exclude: list[str]) -> dict[str, Any]:
    """The item as the fields extension shapes it: with fields to include, those (dotted paths) and
    :data:`ALWAYS`; with include given empty, the default set (:data:`DEFAULT_FIELDS`); without include,
    every field; then minus the excluded ones — but a field both included and excluded, or included
    more specifically than an exclusion (``-properties,+properties.platform``), is kept."""
    included = include or []
    if include is None:
        base = [k for k in item if k != "properties"] + [f"properties.{k}" for k in item.get("properties") or {}]
    else:
        base = list(ALWAYS if include else DEFAULT_FIELDS)
    kept = [p for p in (*base, *included) if p in included or not any(_under(p, e) for e in exclude)]
    out = _pick(item, kept)
    for path in exclude:  # an exclusion inside an included field
        if path in included or not any(_under(path, k) and path != k for k in kept):
            continue
        parts, node = path.split("."), out
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return out


# --------------------------------------------------------------------------------------------------
# The backend


@attr.s
class StoreClient(BaseCoreClient):
    """stac-fastapi's core client over a :class:`StoreCatalog`."""

    catalog: StoreCatalog = attr.ib(default=None)
    presign_seconds: int | None = attr.ib(default=None)

    # -- landing page and collections ----------------------------------------------------------------
    def landing_page(self, **kwargs: Any) -> Any:
        page = super().landing_page(**kwargs)
        base = get_base_url(kwargs["request"])
        page["id"] = "earthops"
        page["title"] = TITLE
        page["description"] = "Datasets and models published by earthops, searchable with the STAC API"
        page["links"] = [link for link in page["links"] if link.get("rel") != "child"]
        for cid, doc in sorted(self.catalog.collections.items()):
            page["links"].append({"rel": "child", "type": JSON, "title": doc.get("title") or cid,
                                  "href": f"{base}collections/{urllib.parse.quote(cid)}"})
        return page

    def _collection(self, doc: Mapping[str, Any], base: str) -> dict[str, Any]:
        cid = doc["id"]
        url = f"{base}collections/{urllib.parse.quote(cid)}"
        out = {k: v for k, v in doc.items() if k != "_url"}
        out.setdefault("stac_version", "1.1.0")
        out.setdefault("license", "other")
        kept = []
        for link in doc.get("links") or []:
            if link.get("rel") in ("self", "root", "parent", "item", "child", "collection", "items"):
                continue
            link = dict(link)
            link["href"] = safe_href(search._resolve(str(link.get("href", "")), doc["_url"].rsplit("/", 1)[0]))
            kept.append(link)
        out["links"] = kept + [
            {"rel": "self", "type": JSON, "href": url},
            {"rel": "root", "type": JSON, "href": base},
            {"rel": "parent", "type": JSON, "href": base},
            {"rel": "items", "type": GEOJSON, "href": f"{url}/items"},
        ]
        if self.extension_is_enabled("FilterExtension"):
            out["links"].append({"rel": "http://www.opengis.net/def/rel/ogc/1.0/queryables",
                                 "type": "application/schema+json", "href": f"{url}/queryables"})
        for asset in (out.get("assets") or {}).values():
            if isinstance(asset, dict) and "href" in asset:
                asset["href"] = safe_href(search._resolve(str(asset["href"]), doc["_url"].rsplit("/", 1)[0]))
        return out

    def all_collections(self, **kwargs: Any) -> Any:
        base = get_base_url(kwargs["request"])
        collections = [self._collection(doc, base) for _, doc in sorted(self.catalog.collections.items())]
        return {"collections": collections, "links": [
            {"rel": "self", "type": JSON, "href": f"{base}collections"},
            {"rel": "root", "type": JSON, "href": base},
            {"rel": "parent", "type": JSON, "href": base}],
            "numberMatched": len(collections), "numberReturned": len(collections)}

    def get_collection(self, collection_id: str, **kwargs: Any) -> Any:
        return self._collection(self.catalog.collection(collection_id), get_base_url(kwargs["request"]))

    # -- items -----------------------------------------------------------------------------------------
    def _item(self, item: dict[str, Any], base: str) -> dict[str, Any]:
        cid = item.get("collection")
        kept = [dict(link, href=safe_href(link.get("href"))) for link in item.get("links") or []
                if link.get("rel") not in ("self", "root", "parent", "collection")]
        links = [{"rel": "root", "type": JSON, "href": base}]
        if cid is not None:
            curl = f"{base}collections/{urllib.parse.quote(cid)}"
            links += [{"rel": "self", "type": GEOJSON, "href": f"{curl}/items/{urllib.parse.quote(item['id'])}"},
                      {"rel": "parent", "type": JSON, "href": curl},
                      {"rel": "collection", "type": JSON, "href": curl}]
        item["links"] = kept + links
        for asset in (item.get("assets") or {}).values():
            if not isinstance(asset, dict):
                continue
            asset["href"] = safe_href(asset.get("href"))
            signed = self._presign(asset.get("href"))
            if signed:
                asset.setdefault("alternate", {})["https"] = {"href": signed}
        return item

    def _presign(self, href: Any) -> str | None:
        store = self.catalog.store
        if not self.presign_seconds or store.is_local or not isinstance(href, str):
            return None
        root = store.url("").rstrip("/") + "/"
        if not href.startswith(root):
            return None
        try:
            return str(store.fs.sign(href, expiration=int(self.presign_seconds)))
        except Exception:  # noqa: BLE001 - a file system that cannot sign: no alternate link
            return None

    def _page(self, request: Request, args: Mapping[str, Any], *, method: str,
              body: Mapping[str, Any] | None = None, path: str = "search") -> dict[str, Any]:
        base = get_base_url(request)
        limit = _limit(args.get("limit"))
        offset = _offset(args.get("token"))
        fields = _fields(args.get("fields"), "fields" in args)
        lang = args.get("filter-lang") or args.get("filter_lang")
        flt = args.get("filter")
        if lang not in (None, "cql2-text", "cql2-json"):
            raise SearchError("filter-lang", f"{lang!r}: accepted: cql2-text, cql2-json")
        if lang == "cql2-text" and not isinstance(flt, (str, type(None))):
            raise SearchError("filter", "filter-lang is cql2-text but the filter is not text")
        split = _split if method == "GET" else (lambda v: v)  # a POST body is taken as it is
        query = Query.parse(collections=split(args.get("collections")), ids=split(args.get("ids")),
                            bbox=split(args.get("bbox")), datetime=args.get("datetime") or None,
                            filter=flt, q=args.get("q"), sortby=args.get("sortby"), intersects=args.get("intersects"),
                            limit=offset + limit + 1, strict=True)
        for cid in query.collections or ():
            self.catalog.collection(cid)  # 404 for an unknown collection
        found = list(search.run_query(query, self.catalog.files))
        page = [self._item(it, base) for it in found[offset:offset + limit]]
        if fields is not None:
            page = [apply_fields(it, *fields) for it in page]
        links: list[dict[str, Any]] = [{"rel": "root", "type": JSON, "href": base}]
        url = str(request.url)
        links.append({"rel": "self", "type": GEOJSON, "href": url})
        if len(found) > offset + limit:
            token = str(offset + limit)
            if method == "GET":
                params = [(k, v) for k, v in request.query_params.multi_items() if k != "token"] + [("token", token)]
                href = str(request.url.replace(query=urllib.parse.urlencode(params)))
                links.append({"rel": "next", "type": GEOJSON, "method": "GET", "href": href})
            else:
                links.append({"rel": "next", "type": GEOJSON, "method": "POST", "href": f"{base}{path}",
                              "body": {**(body or {}), "token": token}, "merge": False})
        return {"type": "FeatureCollection", "features": page, "links": links, "numberReturned": len(page)}

    def get_search(self, request: Request, **kwargs: Any) -> Any:
        return self._page(request, _get_args(kwargs), method="GET")

    def post_search(self, search_request: Any, request: Request, **kwargs: Any) -> Any:
        if not isinstance(search_request, Mapping):
            raise SearchError("body", "expected a JSON object")
        return self._page(request, search_request, method="POST", body=search_request)

    def item_collection(self, collection_id: str, request: Request, **kwargs: Any) -> Any:
        self.catalog.collection(collection_id)
        args = _get_args(kwargs)
        args["collections"] = [collection_id]
        page = self._page(request, args, method="GET")
        base = get_base_url(request)
        curl = f"{base}collections/{urllib.parse.quote(collection_id)}"
        page["links"] += [{"rel": "collection", "type": JSON, "href": curl},
                          {"rel": "parent", "type": JSON, "href": curl}]
        return page

    def get_item(self, item_id: str, collection_id: str, **kwargs: Any) -> Any:
        request = kwargs["request"]
        self.catalog.collection(collection_id)
        query = Query.parse(collections=[collection_id], ids=[item_id], limit=1)
        found = list(search.run_query(query, self.catalog.files))
        if not found:
            raise NotFoundError(f"item {item_id!r} not found in collection {collection_id!r}")
        return self._item(found[0], get_base_url(request))


def _get_args(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """GET parameters by their STAC API names (stac-fastapi's extension models rename a few)."""
    args = {k: v for k, v in kwargs.items() if v is not None and k != "request"}
    if "filter_expr" in args:
        args["filter"] = args.pop("filter_expr")
    if "filter_lang" in args:
        args["filter-lang"] = args.pop("filter_lang")
    args.pop("filter_crs", None)
    if isinstance(args.get("sortby"), list):
        args["sortby"] = ",".join(args["sortby"])
    if isinstance(args.get("fields"), list):
        args["fields"] = ",".join(args["fields"])
    return args


@attr.s
class StoreFilters:
    """Queryables (filter extension): the index columns an expression can name, as a JSON schema."""

    catalog: StoreCatalog = attr.ib()

    def get_queryables(self, collection_id: str | None = None, **kwargs: Any) -> dict[str, Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        request = kwargs.get("request")
        base = get_base_url(request) if request is not None else "/"
        files = self.catalog.files
        if collection_id is not None:
            self.catalog.collection(collection_id)
        props: dict[str, Any] = {
            "id": {"description": "Item id", "type": "string"},
            "collection": {"description": "Collection id", "type": "string"},
            "datetime": {"description": "Acquisition time", "type": "string", "format": "date-time"},
            "geometry": {"description": "Footprint", "$ref": "https://geojson.org/schema/Geometry.json"},
        }
        for path in files:
            schema = pq.read_schema(path)
            for field in schema:
                if field.name in search.CORE_COLUMNS or field.name in props:
                    continue
                kind = ("number" if pa.types.is_floating(field.type) else "integer" if pa.types.is_integer(field.type)
                        else "boolean" if pa.types.is_boolean(field.type)
                        else "array" if pa.types.is_list(field.type) else "string")
                props[field.name] = {"type": kind}
        suffix = f"collections/{urllib.parse.quote(collection_id)}/queryables" if collection_id else "queryables"
        return {"$schema": "https://json-schema.org/draft/2019-09/schema", "$id": f"{base}{suffix}",
                "type": "object", "title": "Queryables", "properties": props, "additionalProperties": True}


# --------------------------------------------------------------------------------------------------
# The app


def _extensions(catalog: StoreCatalog) -> list[ApiExtension]:
    return [
        FilterExtension(client=StoreFilters(catalog), conformance_classes=list(CQL2_CLASSES)),
        # sort 1.0 (what pystac-client looks for) and 1.1 (what stac-fastapi and the suite name)
        SortExtension(conformance_classes=[SortConformanceClasses.ITEM_SEARCH_SORT, SortConformanceClasses.FEATURES_SORT,
                                           "https://api.stacspec.org/v1.0.0/item-search#sort",
                                           "https://api.stacspec.org/v1.0.0/ogcapi-features#sort"]),
        FieldsExtension(conformance_classes=[FieldsConformanceClasses.SEARCH, FieldsConformanceClasses.ITEMS]),
        FreeTextAdvancedExtension(conformance_classes=[
            FreeTextConformanceClasses.SEARCH, FreeTextConformanceClasses.SEARCH_ADVANCED,
            FreeTextConformanceClasses.ITEMS, FreeTextConformanceClasses.ITEMS_ADVANCED]),
        TokenPaginationExtension(),
    ]


def create_app(store: Any, *, presign_seconds: int | None = None, refresh_seconds: float = REFRESH_SECONDS) -> Any:
    """The FastAPI application of the STAC API over ``store``."""
    catalog = StoreCatalog(store, refresh_seconds=refresh_seconds)
    extensions = _extensions(catalog)
    get_models = [e.get_request_model("GET") for e in extensions if e.get_request_model("GET")]
    search_get = create_request_model("SearchGetRequest", base_model=SearchGetRequest, mixins=get_models,
                                      request_type="GET")
    items_get = create_request_model("ItemsGetRequest", base_model=ItemsGetRequest, mixins=get_models,
                                     request_type="GET")
    client = StoreClient(catalog=catalog, presign_seconds=presign_seconds, extensions=extensions,
                         base_conformance_classes=list(BASE_CONFORMANCE_CLASSES))
    api = StacApi(
        settings=ApiSettings(enable_response_models=False, stac_fastapi_title=TITLE, stac_fastapi_landing_id="earthops",
                             stac_fastapi_description="Datasets and models published by earthops",
                             stac_fastapi_version="1.0.0"),
        stac_version="1.1.0",
        client=client,
        extensions=extensions,
        title=TITLE,
        description="Datasets and models published by earthops",
        search_get_request_model=search_get,
        search_post_request_model={},  # the body as given: the semantics parse it
        items_get_request_model=items_get,
        collection_get_request_model=CollectionUri,
        item_get_request_model=ItemUri,
    )
    app = api.app

    def bad_input(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SearchError)
        return JSONResponse(status_code=400, content={"code": "InvalidParameterValue",
                                                      "description": str(exc), "parameter": exc.parameter})

    def bad_request(request: Request, exc: Exception) -> JSONResponse:
        """A parameter stac-fastapi's models refuse (``filter-lang`` outside its two values, a body
        that is not JSON): the same error format, naming the parameter."""
        assert isinstance(exc, RequestValidationError)
        first = (exc.errors() or [{}])[0]
        loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "body", "path")]
        parameter = (loc[0] if loc else "body").replace("filter_lang", "filter-lang")
        message = first.get("msg", "invalid")
        value = first.get("input")
        return JSONResponse(status_code=400, content={
            "code": "InvalidParameterValue", "parameter": parameter,
            "description": f"{parameter}: {value!r}: {message}" if value is not None else f"{parameter}: {message}"})

    app.add_exception_handler(SearchError, bad_input)
    app.add_exception_handler(RequestValidationError, bad_request)
    return app


def serve(store: Any, *, host: str = "127.0.0.1", port: int = 8000, presign_seconds: int | None = None,
          log_level: str = "warning") -> None:
    """Run the API with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(store, presign_seconds=presign_seconds), host=host, port=port, log_level=log_level)


__all__ = ["StoreCatalog", "StoreClient", "apply_fields", "create_app", "safe_href", "serve"]
