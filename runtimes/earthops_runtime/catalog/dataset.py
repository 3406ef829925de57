"""The STAC catalog of a dataset run, its search index, and the store's root catalog.

:func:`write_dataset_catalog` writes, through the run's (staging) store, a *self-contained* catalog
under ``stac/`` plus the run's search index ``index.parquet``::

    <run>/stac/collection.json                      Collection earthops-<ns>-<name>-<run-id>
    <run>/stac/<scene-id>/<scene-id>.json           one Item per source scene
    <run>/stac/<scene-id>-label/<scene-id>-label.json   one label Item per scene (label extension)
    <run>/stac/<scene-id>-label/labels.geojson      the scene's labels as a GeoJSON FeatureCollection
                                                    (property / vector labels; raster labels point
                                                    to the scene's label raster instead)
    <run>/index.parquet                             stac-geoparquet index of every item (index.py)

* **Collection**: extent from the scenes; summaries ``earthops:bands``, ``earthops:features``,
  ``earthops:chips`` (``[{"split", "count"}]``), ``earthops:label_task``, ``label:classes``,
  ``label:type``, ``label:tasks`` (and ``platform``/``constellation`` where the scenes say); assets
  ``stats`` (``../stats.json``), ``validation`` (``../validation.json``), ``shards``
  (``../shards/index.json``, when the run has it) and ``index`` (``../index.parquet``, role
  ``stac-items``, the stac-geoparquet convention); ``earthops:run`` names the run.
* **Scene items** keep a given source item's properties, assets and extensions, migrated by pystac to
  the versions of :mod:`earthops_runtime.stac.conventions` (projection v2 ``proj:code``, eo/raster v1.1,
  sar v1.0); without one, they are built from the :class:`Scene` (footprint from its bbox, eo:bands for
  Sentinel-2 band names, sar for Sentinel-1 polarisations). Asset hrefs of source data stay absolute
  (the data is not copied); ``derived_from`` and ``via`` links point to the source item.
* **Label items** carry the label extension (``label:properties``, ``label:classes``,
  ``label:type`` raster|vector, ``label:tasks``, ``label:description``, ``label:overviews`` with the
  scene's class counts) and a ``source`` link to their scene item.
* Links between the catalog's documents and to the run's files are relative, so the run folder can be
  moved or copied to S3 as it is. The collection and a sample of the items (all of them in small
  runs) are validated against the STAC core schemas (offline) before anything is written.

:func:`update_root_catalog` keeps ``<root>/catalog.json`` linking every published collection.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import random
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pystac
from pystac.extensions.eo import EOExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension
from pystac.extensions.sar import Polarization, SarExtension
from pystac.validation import validate_dict

from earthops_runtime.catalog.index import INDEX_NAME, write_index
from earthops_runtime.data.scene import SAR_BANDS, Scene
from earthops_runtime.stac import conventions as stac

with warnings.catch_warnings():
    # pystac flags the label extension as unmaintained ("pilot"); it is still the STAC way to describe
    # training labels, and its fields are the ones written here
    warnings.simplefilter("ignore", DeprecationWarning)
    from pystac.extensions.label import LabelClasses, LabelCount, LabelExtension, LabelOverview, LabelType

STAC_DIR = "stac"
COLLECTION_NAME = "collection.json"
ROOT_CATALOG = "catalog.json"
ROOT_CATALOG_ID = "earthops"
LABEL_SUFFIX = "-label"
LABELS_FILE = "labels.geojson"
#: Scene and label items validated per run (besides the collection), see :func:`_validation_sample`.
VALIDATE_PER_KIND = 16
#: Documents written at once.
WRITERS = 8
PARQUET = "application/vnd.apache.parquet"
GEOJSON = str(pystac.MediaType.GEOJSON)
_HIERARCHY = {"root", "parent", "child", "collection", "item", "items", "self"}
_LABEL_ASSET_KEYS = ("labels", "label", "mask", "label_mask", "labels_raster")
_RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".png", ".vrt", ".img")
_MEDIA_TYPES = {".tif": stac.GEOTIFF, ".tiff": stac.GEOTIFF, ".jp2": str(pystac.MediaType.JPEG2000),
                ".png": str(pystac.MediaType.PNG), ".json": stac.JSON, ".geojson": GEOJSON,
                ".parquet": PARQUET, ".xml": str(pystac.MediaType.XML)}
_EXTENSION_PREFIXES = {"eo": EOExtension, "proj": ProjectionExtension, "raster": RasterExtension,
                       "sar": SarExtension}
#: label:tasks of each EODataset task (label extension vocabulary)
_LABEL_TASKS = {"classification": ["classification"], "multilabel": ["classification"],
                "segmentation": ["segmentation"]}


def collection_id(namespace: str, name: str, run_id: str) -> str:
    """``earthops-<ns>-<name>-<run-id>``."""
    return f"earthops-{namespace}-{name}-{run_id}"


# --------------------------------------------------------------------------------------------------
# The dataset catalog


def write_dataset_catalog(
    run_store: Any,
    *,
    namespace: str,
    name: str,
    run_id: str,
    scenes: Sequence[Scene],
    summary: Mapping[str, Any],
    stats: Mapping[str, Any],
    validation: Mapping[str, Any],
    classes: Sequence[str] | None,
    label_task: str | None,
    features: Sequence[str] | Mapping[str, Sequence[str]] | None,
    source_items: Mapping[str, pystac.Item] | None = None,
    label_property: str | None = None,
    label_asset: str | None = None,
) -> dict[str, Any]:
    """Write the run's STAC catalog under ``stac/`` and its ``index.parquet`` through ``run_store``
    (the run's staging store: nothing is visible before the run is published).

    ``summary``: run facts; ``chips`` (split -> count), ``bands``, ``title``, ``description`` and
    ``license`` are used when present. ``stats`` / ``validation``: the run's statistics and validation
    report, which the run writes itself as ``stats.json`` / ``validation.json`` (linked as assets, not
    rewritten here; the report's ``passed`` / ``failed_checks`` / ``warnings`` go into the collection
    as ``earthops:validation``). ``shards/index.json`` is linked when the run has written it.
    ``classes``: class names in index order; ``label_task``: classification, multilabel or
    segmentation (None: unlabelled, no label items); ``features``: feature names, or a mapping of
    groups (``indices``, ``sar``; a ``names`` entry, the full channel list, wins).
    ``source_items``: scene id -> the source STAC item.
    ``label_property`` / ``label_asset``: where each scene's labels are (default: the scene property
    whose values are all class names / for segmentation an asset named ``labels``, ``mask``, ...).

    Returns ``{"collection_id", "collection" (key in the run), "items", "label_items", "index",
    "index_rows", "documents"}``.
    """
    stac.check_pystac_defaults()
    if not scenes:
        raise ValueError("a dataset catalog needs at least one scene")
    seen: set[str] = set()
    for scene in scenes:
        if scene.id in seen:
            raise ValueError(f"scene id {scene.id!r} appears twice")
        if not scene.id or "/" in scene.id or scene.id in (".", ".."):
            raise ValueError(f"scene id {scene.id!r} cannot name an item file (empty, '/', '.' or '..')")
        seen.add(scene.id)
    source_items = dict(source_items or {})
    classes = list(classes or [])
    cid = collection_id(namespace, name, run_id)
    # Links are written as dicts here rather than through pystac's catalog tree: the layout is fixed,
    # and pystac rescans every link of the collection (or walks the whole tree) for each link it
    # serialises, which is quadratic in the items (minutes at 10k scenes).
    external: dict[str, list[dict[str, Any]]] = {}
    scene_items = []
    for scene in scenes:
        item, links = _scene_item(scene, source_items.get(scene.id))
        scene_items.append(item)
        external[item.id] = links

    labelled = label_task is not None
    if labelled and label_property is None and label_asset is None:
        label_property, label_asset = _infer_label_source(scenes, classes, label_task)
    label_items: list[pystac.Item] = []
    label_files: dict[str, tuple[pystac.Item, dict[str, Any]]] = {}
    if labelled:
        for scene, item in zip(scenes, scene_items, strict=True):
            label_item, geojson, source_link = _label_item(
                scene, item, classes=classes, label_task=label_task, label_property=label_property,
                label_asset=label_asset)
            label_items.append(label_item)
            external[label_item.id] = [source_link]
            if geojson is not None:
                label_files[label_item.id] = (label_item, geojson)
    clash = {it.id for it in label_items} & seen
    if clash:
        raise ValueError(f"label item ids clash with scene ids: {sorted(clash)[:5]}")

    summaries = _summaries(scenes, scene_items, summary=summary, classes=classes, label_task=label_task,
                           features=features, label_property=label_property, label_items=label_items)
    chips = _chip_counts(summary)
    title = str(summary.get("title") or f"EODataset {namespace}/{name} ({run_id})")
    description = str(summary.get("description") or _description(namespace, name, run_id, len(scenes),
                                                                  chips, label_task, classes))
    all_items = [*scene_items, *label_items]
    # an item without a location could be anywhere: the extent says so rather than guess
    extent = stac.extent_of(all_items if all(it.bbox for it in all_items) else [_anywhere(it) for it in all_items])
    collection = pystac.Collection(
        id=cid, title=title, description=description, extent=extent, license=str(summary.get("license") or "other"),
        keywords=["earthops", "training data", *([label_task] if label_task else [])],
        summaries=pystac.Summaries(summaries))
    collection.stac_extensions = sorted({uri for it in all_items for uri in it.stac_extensions})
    # item_assets entries need two fields besides the per-item href (STAC 1.1): drop the bare ones
    described = {k: v for k, v in stac.item_assets_from(scene_items[0]).items() if len(v.to_dict()) >= 2}
    if described:
        collection.item_assets = described
    if label_items:
        LabelExtension.add_to(collection)
    collection.extra_fields["earthops:run"] = {"namespace": namespace, "name": name, "run_id": run_id}
    small = {k: validation[k] for k in ("passed", "failed_checks", "warnings") if k in validation}
    if small:
        collection.extra_fields["earthops:validation"] = small

    # the run's own files: written by the run (validation.json may sit beside status.json, outside
    # the staging folder, until publication), so linked here, never rewritten
    collection.add_asset("stats", pystac.Asset(
        "../stats.json", title="Per-band and per-feature statistics", media_type=stac.JSON, roles=["metadata"]))
    collection.add_asset("validation", pystac.Asset(
        "../validation.json", title="Validation report", media_type=stac.JSON, roles=["metadata"]))
    if run_store.exists("shards/index.json"):
        collection.add_asset("shards", pystac.Asset(
            "../shards/index.json", title="Chip shards (list of Parquet shards per split)", media_type=stac.JSON,
            roles=["data", "metadata"]))
    collection.add_asset("index", pystac.Asset(
        f"../{INDEX_NAME}", title="Search index of the items (stac-geoparquet)", media_type=PARQUET,
        roles=["stac-items"]))

    for label_item, _ in label_files.values():
        label_item.assets["labels"].href = f"./{LABELS_FILE}"

    # the self-contained layout pystac saves: stac/collection.json, stac/<item>/<item>.json
    up = {"href": f"../{COLLECTION_NAME}", "type": stac.JSON, "title": title}
    documents: dict[str, dict[str, Any]] = {}  # key in the run -> JSON
    col_doc = collection.to_dict(include_self_link=False, transform_hrefs=False)
    col_doc["links"] = [{"rel": "root", "href": f"./{COLLECTION_NAME}", "type": stac.JSON, "title": title}] + [
        {"rel": "item", "href": f"./{it.id}/{it.id}.json", "type": GEOJSON} for it in all_items]
    documents[f"{STAC_DIR}/{COLLECTION_NAME}"] = col_doc
    for item in all_items:
        doc = item.to_dict(include_self_link=False, transform_hrefs=False)
        doc["links"] = [*doc.get("links", []), *({"rel": rel, **up} for rel in ("root", "parent", "collection")),
                        *external.get(item.id, [])]
        doc["collection"] = cid
        documents[_item_key(item.id)] = doc
    for key in _validation_sample(documents, scene_items, label_items):
        doc = documents[key]
        try:
            validate_dict(doc, extensions=[], href=key)  # core schemas, shipped with pystac: offline
        except pystac.STACValidationError as exc:
            causes = getattr(exc, "source", None)
            causes = causes if isinstance(causes, list) else [causes] if causes is not None else []
            detail = "; ".join(f"{'/'.join(map(str, getattr(c, 'absolute_path', [])))}: {getattr(c, 'message', c)}"
                               for c in causes) or str(exc).splitlines()[0]
            raise stac.ConventionError(f"{key}: not valid STAC: {str(detail)[:300]}") from exc

    writes = [(f"{STAC_DIR}/{item_id}/{LABELS_FILE}", geojson) for item_id, (_, geojson) in label_files.items()]
    writes += list(documents.items())
    # one atomic (fsynced) object per document: in parallel, the disk or S3 waits overlap
    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        list(pool.map(lambda kv: run_store.write_json(*kv), writes))
    index_items = [_for_index(key, doc) for key, doc in documents.items() if doc.get("type") == "Feature"]
    rows = write_index(run_store, INDEX_NAME, index_items)
    return {
        "collection_id": cid,
        "collection": f"{STAC_DIR}/{COLLECTION_NAME}",
        "items": len(scene_items),
        "label_items": len(label_items),
        "index": INDEX_NAME,
        "index_rows": rows,
        "documents": len(documents),
    }


def _validation_sample(documents: Mapping[str, Any], scene_items: Sequence[pystac.Item],
                       label_items: Sequence[pystac.Item]) -> list[str]:
    """The collection and up to :data:`VALIDATE_PER_KIND` scene and label items, spread evenly: every
    item of a kind is built by the same code, and validating one costs ~15 ms (a 10k-scene run would
    spend minutes validating all)."""
    keys = [f"{STAC_DIR}/{COLLECTION_NAME}"]
    for items in (scene_items, label_items):
        if items:
            step = max(1, len(items) // VALIDATE_PER_KIND)
            keys += [_item_key(it.id) for it in items[::step][:VALIDATE_PER_KIND]]
            keys.append(_item_key(items[-1].id))
    return [k for k in dict.fromkeys(keys) if k in documents]


def _item_key(item_id: str) -> str:
    return f"{STAC_DIR}/{item_id}/{item_id}.json"


def _anywhere(item: pystac.Item) -> pystac.Item:
    """A stand-in with the world as bbox (for the extent when some item has no location)."""
    clone = item.clone()
    clone.bbox = [-180.0, -90.0, 180.0, 90.0]
    return clone


def _for_index(key: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    """An item document with its relative hrefs rebased from its own folder to the run folder (where
    index.parquet lies), plus a ``self`` link to its JSON."""
    folder = posixpath.dirname(key)

    def rebase(href: str) -> str:
        if "://" in href or href.startswith("/"):
            return href
        return posixpath.normpath(posixpath.join(folder, href))

    out = json.loads(json.dumps(doc))
    for link in out.get("links", []):
        link["href"] = rebase(link["href"])
    out["links"].insert(0, {"rel": "self", "href": key, "type": GEOJSON})
    for asset in out.get("assets", {}).values():
        asset["href"] = rebase(asset["href"])
    return out


def _description(namespace: str, name: str, run_id: str, scenes: int, chips: Mapping[str, int],
                 label_task: str | None, classes: Sequence[str]) -> str:
    parts = [f"Training chips of the EODataset {namespace}/{name}, run {run_id}, made by earthops from "
             f"{scenes} scene(s)."]
    if chips:
        parts.append("Chips: " + ", ".join(f"{k} {v}" for k, v in chips.items()) + ".")
    if label_task:
        parts.append(f"Labels: {label_task}" + (f" over {len(classes)} classes." if classes else "."))
    return " ".join(parts)


def _chip_counts(summary: Mapping[str, Any]) -> dict[str, int]:
    raw = summary.get("chips", summary.get("splits"))
    if isinstance(raw, Mapping):
        return {str(k): int(v) for k, v in raw.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {}


def _feature_names(features: Sequence[str] | Mapping[str, Sequence[str]] | None) -> list[str]:
    """Feature names in order, once each: a list, or a mapping of groups (``{"indices": [...], "sar":
    [...]}``) whose ``names`` entry, when present, is the full channel list and wins."""
    if not features:
        return []
    if isinstance(features, Mapping):
        groups = [features["names"]] if features.get("names") else list(features.values())
        names = [str(f) for group in groups for f in (group or [])]
    else:
        names = [str(f) for f in features]
    return list(dict.fromkeys(names))


def _summaries(scenes: Sequence[Scene], items: Sequence[pystac.Item], *, summary: Mapping[str, Any],
               classes: Sequence[str], label_task: str | None, features: Any, label_property: str | None,
               label_items: Sequence[pystac.Item]) -> dict[str, Any]:
    bands = list(summary.get("bands") or [])
    if not bands:
        for scene in scenes:
            for key in scene.assets:
                if key not in bands and key not in _LABEL_ASSET_KEYS and not key.endswith("metadata"):
                    bands.append(key)
    # (empty lists are left out: a summary needs at least one value)
    out: dict[str, Any] = {"earthops:bands": bands, "earthops:features": _feature_names(features)}
    chips = _chip_counts(summary)
    if chips:
        out["earthops:chips"] = [{"split": k, "count": v} for k, v in chips.items()]
    for key in ("platform", "constellation"):
        values = sorted({str(it.properties[key]) for it in items if it.properties.get(key)})
        if values:
            out[key] = values
    if label_task:
        out["earthops:label_task"] = [label_task]
        out["label:tasks"] = list(_LABEL_TASKS.get(label_task, [label_task]))
        out["label:type"] = sorted({it.properties["label:type"] for it in label_items})
        out["label:classes"] = [{"name": label_property, "classes": list(classes)}]
        if label_property:
            out["label:properties"] = [label_property]
    return {k: v for k, v in out.items() if v not in ([], None)}


# --------------------------------------------------------------------------------------------------
# Scene items


def _scene_item(scene: Scene, source: pystac.Item | None) -> tuple[pystac.Item, list[dict[str, Any]]]:
    """The scene's item and its links to outside the catalog (as dicts, absolute hrefs)."""
    if source is not None:
        item, links = _from_source(scene, source)
    else:
        item, links = _from_scene(scene), []
    via = scene.stac_href or (source.get_self_href() if source is not None else None)
    if via:
        links += [{"rel": rel, "href": via, "type": GEOJSON, "title": "Source item"} for rel in ("derived_from", "via")]
    return item, links


def _from_source(scene: Scene, source: pystac.Item) -> tuple[pystac.Item, list[dict[str, Any]]]:
    """The source item with absolute asset hrefs, migrated to our extension versions, without the
    source catalog's hierarchy links."""
    doc = source.to_dict(include_self_link=False, transform_hrefs=False)
    base = source.get_self_href()
    for key, asset in source.assets.items():
        doc["assets"][key]["href"] = asset.get_absolute_href() or asset.href
    links = []
    for link in doc.get("links", []):
        if link.get("rel") in _HIERARCHY or link.get("rel") in ("derived_from", "via"):
            continue
        href = link.get("href", "")
        if base and "://" not in href and not href.startswith("/"):
            href = pystac.utils.make_absolute_href(href, base)
        links.append({**link, "href": href})
    doc["links"] = []
    doc.pop("collection", None)
    doc["id"] = scene.id
    item = pystac.Item.from_dict(doc, migrate=True, preserve_dict=False)
    for key, value in scene.properties.items():
        item.properties.setdefault(key, value)
    _normalise_projection(item)
    if not item.datetime and not (item.common_metadata.start_datetime and item.common_metadata.end_datetime):
        _unknown_time(item, scene)
    return item, links


def _from_scene(scene: Scene) -> pystac.Item:
    geometry = bbox = None
    if scene.bbox is not None:
        w, s, e, n = (float(v) for v in scene.bbox)
        bbox = [w, s, e, n]
        geometry = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    props = {k: v for k, v in scene.properties.items() if k not in ("datetime",)}
    when = scene.datetime
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    unknown = when is None and not (props.get("start_datetime") and props.get("end_datetime"))
    if unknown:  # pystac refuses an item with no time at all: stamp it before creating the item
        when = datetime.now(UTC).replace(microsecond=0)
        props["earthops:datetime_unknown"] = True
    item = pystac.Item(id=scene.id, geometry=geometry, bbox=bbox, datetime=when, properties=props)
    platform = str(props.get("platform") or props.get("constellation") or "").lower()
    optical_ok = not platform or platform.startswith("sentinel-2")
    sar_pols = []
    for key, href in scene.assets.items():
        suffix = posixpath.splitext(href.split("?", 1)[0])[1].lower()
        roles = ["labels"] if key in _LABEL_ASSET_KEYS else ["metadata"] if suffix == ".json" else ["data"]
        asset = pystac.Asset(href=href, media_type=_MEDIA_TYPES.get(suffix), roles=roles, title=key)
        item.add_asset(key, asset)
        band = stac.S2_BANDS_BY_NAME.get(key)
        if band is not None and optical_ok:
            EOExtension.ext(asset, add_if_missing=True).apply(bands=[band.eo_band()])
        elif key.upper() in SAR_BANDS:
            sar_pols.append(key.upper())
    if sar_pols:
        have = all(k in props for k in ("sar:instrument_mode", "sar:frequency_band", "sar:polarizations",
                                        "sar:product_type"))
        if not have and (not platform or platform.startswith("sentinel-1")):
            stac.apply_sentinel1_sar(item, sar_pols, instrument_mode=str(props.get("sar:instrument_mode", "IW")),
                                     product_type=str(props.get("sar:product_type", "GRD")))
            have = True
        if have:
            for key in scene.assets:
                if key.upper() in SAR_BANDS:
                    SarExtension.ext(item.assets[key], add_if_missing=True).polarizations = [Polarization(key.upper())]
    _normalise_projection(item)
    _declare_extensions(item)
    return item


def _unknown_time(item: pystac.Item, scene: Scene) -> None:
    """STAC needs a time: a scene without one is stamped with the catalog's writing time and marked."""
    item.datetime = datetime.now(UTC).replace(microsecond=0)
    item.properties["earthops:datetime_unknown"] = True


def _normalise_projection(item: pystac.Item) -> None:
    """Projection v1 ``proj:epsg`` (as rio-stac and older APIs write it) -> v2 ``proj:code``."""
    for fields in (item.properties, *(a.extra_fields for a in item.assets.values())):
        epsg = fields.pop("proj:epsg", None)
        if epsg is not None and "proj:code" not in fields:
            fields["proj:code"] = f"EPSG:{int(epsg)}"


def _declare_extensions(item: pystac.Item) -> None:
    keys = set(item.properties) | {k for a in item.assets.values() for k in a.extra_fields}
    for prefix, ext in _EXTENSION_PREFIXES.items():
        if any(k.startswith(prefix + ":") for k in keys):
            ext.add_to(item)


# --------------------------------------------------------------------------------------------------
# Label items


def _infer_label_source(scenes: Sequence[Scene], classes: Sequence[str], label_task: str | None
                        ) -> tuple[str | None, str | None]:
    if label_task == "segmentation":
        for key in _LABEL_ASSET_KEYS:
            if all(key in s.assets for s in scenes):
                return None, key
    known = {str(c) for c in classes}
    keys: list[str] = []
    for scene in scenes:
        keys += [k for k in scene.properties if k not in keys]
    keys.sort(key=lambda k: (0 if "label" in k.lower() else 1 if "class" in k.lower() else 2))
    for key in keys:
        values = [_label_values(s.properties.get(key)) for s in scenes]
        if not all(values):
            continue
        flat = {v for vs in values for v in vs}
        if known and flat <= known:
            return key, None
        if not known and ("label" in key.lower() or "class" in key.lower()):
            return key, None
    return None, None


def _label_values(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in value):
        return [str(v) for v in value]
    return []


def _label_item(scene: Scene, scene_item: pystac.Item, *, classes: Sequence[str], label_task: str,
                label_property: str | None, label_asset: str | None
                ) -> tuple[pystac.Item, dict[str, Any] | None, dict[str, Any]]:
    """The label item, its GeoJSON labels (property labels) and its ``source`` link to the scene item
    (what the label extension's ``add_source`` writes, relative: ``../<scene>/<scene>.json``)."""
    label_href = scene.assets.get(label_asset) if label_asset else None
    if label_href is None and label_asset and label_asset in scene_item.assets:
        label_href = scene_item.assets[label_asset].get_absolute_href()
    is_raster = (label_href is not None and label_href.split("?", 1)[0].lower().endswith(_RASTER_SUFFIXES)) or (
        label_href is None and label_task == "segmentation")
    props: dict[str, Any] = {}
    for key in ("start_datetime", "end_datetime"):
        if key in scene_item.properties:
            props[key] = scene_item.properties[key]
    values = _label_values(scene.properties.get(label_property)) if label_property else []
    if label_property and label_property in scene.properties:
        props[label_property] = scene.properties[label_property]
    item = pystac.Item(id=f"{scene.id}{LABEL_SUFFIX}", geometry=scene_item.geometry, bbox=scene_item.bbox,
                       datetime=scene_item.datetime, properties=props)
    if scene_item.properties.get("earthops:datetime_unknown"):
        item.properties["earthops:datetime_unknown"] = True
    overviews = None
    if values:
        counts = {v: values.count(v) for v in dict.fromkeys(values)}
        overviews = [LabelOverview.create(property_key=label_property,
                                          counts=[LabelCount.create(name=k, count=c) for k, c in counts.items()])]
    what = {"classification": "class", "multilabel": "classes", "segmentation": "per-pixel classes"}.get(
        label_task, label_task)
    LabelExtension.ext(item, add_if_missing=True).apply(
        label_description=f"{what} of scene {scene.id}" + (f" (property {label_property})" if label_property else ""),
        label_type=LabelType.RASTER if is_raster else LabelType.VECTOR,
        label_properties=None if is_raster else ([label_property] if label_property else []),
        label_classes=[LabelClasses.create(classes=list(classes), name=None if is_raster else label_property)],
        label_tasks=list(_LABEL_TASKS.get(label_task, [label_task])),
        label_overviews=overviews,
    )
    band_keys = [k for k, a in scene_item.assets.items() if "data" in (a.roles or [])]
    source = {"rel": "source", "href": f"../{scene_item.id}/{scene_item.id}.json", "type": GEOJSON,
              "title": f"Scene {scene.id}"}
    if band_keys:
        source["label:assets"] = band_keys
    geojson = None
    if label_href is not None:
        suffix = posixpath.splitext(label_href.split("?", 1)[0])[1].lower()
        item.add_asset("labels", pystac.Asset(label_href, title="Labels", roles=["labels"],
                                              media_type=_MEDIA_TYPES.get(suffix)))
    elif not is_raster:
        # property labels: the tile-classification form of the label extension, one feature
        geojson = {"type": "FeatureCollection", "features": [{
            "type": "Feature", "id": scene.id, "geometry": scene_item.geometry,
            "properties": {label_property: scene.properties.get(label_property)} if label_property else {},
        }]}
        # a placeholder href, replaced by ./labels.geojson once hrefs are normalised
        item.add_asset("labels", pystac.Asset(LABELS_FILE, title="Labels (GeoJSON)", roles=["labels"],
                                              media_type=GEOJSON))
    return item, geojson, source


# --------------------------------------------------------------------------------------------------
# The root catalog


def _root_template() -> dict[str, Any]:
    return {
        "type": "Catalog",
        "stac_version": stac.STAC_VERSION,
        "id": ROOT_CATALOG_ID,
        "title": "earthops store",
        "description": "Every dataset and model collection published in this earthops store.",
        "links": [{"rel": "root", "href": f"./{ROOT_CATALOG}", "type": stac.JSON, "title": "earthops store"}],
    }


def _store_key(store: Any, href: str) -> str | None:
    """A store key for ``href`` (a key, or a URL inside the store), or None for an outside URL."""
    href = href.strip()
    prefix = store.uri.rstrip("/") + "/"
    if href.startswith(prefix):
        return href[len(prefix):]
    if "://" in href or href.startswith("/"):
        return None
    return posixpath.normpath(href.removeprefix("./"))


def _child_href(store: Any, collection_href: str) -> str:
    key = _store_key(store, collection_href)
    return f"./{key}" if key is not None else collection_href


def _same_href(a: str, b: str) -> bool:
    norm = lambda h: posixpath.normpath(h.removeprefix("./")) if "://" not in h else h  # noqa: E731
    return norm(a) == norm(b)


def update_root_catalog(store: Any, collection_href: str, *, title: str | None = None,
                        attempts: int = 3) -> dict[str, Any]:
    """Add a ``child`` link to ``collection_href`` (a key such as
    ``datasets/<ns>/<name>/<run>/stac/collection.json``, or a URL inside the store) in
    ``<root>/catalog.json``, creating the catalog if needed. Idempotent: a link already there is kept
    as it is. Call it after the run is published.

    Concurrency: read-modify-write with the store's atomic single-object write (readers see the old
    or the new catalog, never a torn one). Two writers racing can lose one's link (last write wins):
    each writer re-reads after writing and writes again if its link is missing (``attempts`` times,
    with a short random pause). That narrows the window without closing it; :func:`rebuild_root_catalog`
    recomputes the catalog from the published runs and repairs any lost link. Returns the catalog."""
    href = _child_href(store, collection_href)
    if title is None:
        key = _store_key(store, collection_href)
        with contextlib.suppress(Exception):
            title = store.read_json(key).get("title") if key else None
    catalog: dict[str, Any] = {}
    for attempt in range(max(1, attempts)):
        catalog = store.read_json(ROOT_CATALOG) if store.exists(ROOT_CATALOG) else _root_template()
        if _has_child(catalog, href):
            if attempt == 0:
                return catalog
        else:
            link = {"rel": "child", "href": href, "type": stac.JSON}
            if title:
                link["title"] = title
            catalog.setdefault("links", []).append(link)
            store.write_json(ROOT_CATALOG, catalog)
        time.sleep(random.uniform(0.0, 0.05))
        if _has_child(store.read_json(ROOT_CATALOG), href):
            return catalog
    return catalog


def _has_child(catalog: Mapping[str, Any], href: str) -> bool:
    return any(link.get("rel") == "child" and _same_href(link.get("href", ""), href)
               for link in catalog.get("links", []))


def published_files(store: Any, name: str, areas: Iterable[str] = ("datasets", "models")) -> list[str]:
    """Keys of the file ``name`` (relative to the run folder) in every published run of ``areas``
    (``<area>/<ns>/<resource>/<run-id>/<name>``), for the runs that have it."""
    keys = []
    for area in areas:
        for ns in store.children(area):
            for resource in store.children(f"{area}/{ns}"):
                for run_id in store.runs(f"{area}/{ns}/{resource}"):
                    key = f"{area}/{ns}/{resource}/{run_id}/{name}"
                    if store.exists(key):
                        keys.append(key)
    return keys


def published_collections(store: Any, areas: Iterable[str] = ("datasets", "models")) -> list[str]:
    """Keys of the ``stac/collection.json`` of every published run."""
    return published_files(store, f"{STAC_DIR}/{COLLECTION_NAME}", areas)


def rebuild_root_catalog(store: Any) -> dict[str, Any]:
    """Rewrite ``catalog.json`` from the store's content: a child link per published collection, plus
    the existing children that still resolve (model collections written elsewhere). Repairs links lost
    to concurrent :func:`update_root_catalog` calls."""
    catalog = store.read_json(ROOT_CATALOG) if store.exists(ROOT_CATALOG) else _root_template()
    kept = []
    for link in catalog.get("links", []):
        if link.get("rel") != "child":
            kept.append(link)
            continue
        key = _store_key(store, link.get("href", ""))
        if key is None or store.exists(key):
            kept.append(link)
    catalog["links"] = kept
    for key in published_collections(store):
        href = f"./{key}"
        if not _has_child(catalog, href):
            link = {"rel": "child", "href": href, "type": stac.JSON}
            with contextlib.suppress(Exception):
                if t := store.read_json(key).get("title"):
                    link["title"] = t
            catalog["links"].append(link)
    store.write_json(ROOT_CATALOG, catalog)
    return catalog


__all__ = ["collection_id", "published_collections", "rebuild_root_catalog", "update_root_catalog",
           "write_dataset_catalog"]
