"""STAC documents of the model registry: one MLM item per version, one collection per model.

Pure functions (no torch, no I/O): :mod:`earthops_runtime.registry` measures the model (parameters,
output shape, which export worked), reads the dataset's collection, and calls these to get the JSON.

Layout (all links relative, so a store can be moved or copied to S3 as it is)::

    <root>/catalog.json                             child link -> models/<ns>/<model>/collection.json
    <root>/models/<ns>/<model>/collection.json      Collection earthops-models-<ns>-<model>: item links to
                                                    every version, extent and summaries of them all
    <root>/models/<ns>/<model>/<vN>/item.json       Item <model>-<vN> (mlm v1.4.0, classification v2.0.0)
    <root>/models/<ns>/<model>/<vN>/index.parquet   the item in the search index (with a self link)

The item follows the ML-Model extension v1.4.0:

* ``mlm:input``: one input ``chips``, ``bands`` = the dataset features in channel order, shape
  ``[batch, channel, height, width]`` (batch ``-1`` when the exported program takes any batch size),
  ``value_scaling`` one ``z-score`` per band with the training split's mean and std — what a client
  must apply before calling the model. The model asset lists the bands (STAC 1.1 ``bands``), as the
  schema wants every input band defined on the ``mlm:model`` asset.
* ``mlm:output``: the measured output shape (batch ``-1`` likewise), ``classification:classes`` with
  the class names (``name`` is the classification extension's identifier, ``title`` the name as
  the dataset spells it).
* ``mlm:tasks``: the generic and the specific MLM task (``classification`` + ``scene-classification``;
  ``segmentation`` + ``semantic-segmentation``); ``earthops:task`` keeps the dataset's own word
  (``multilabel`` is not an MLM task).
* Assets: ``model`` (the exported program ``model.pt2``, ``mlm:artifact_type`` ``torch.export.save``;
  or TorchScript ``model.ts``, ``torch.jit.save``, when the model cannot be exported), ``weights``
  (``weights.pt``, the state_dict; ``mlm:weights``), ``stats`` (the training statistics, for drift).
* Properties beyond mlm: ``earthops:metrics``, ``earthops:objective`` (the metric and goal that
  selected the model, when an experiment did), ``earthops:parameters`` (the architecture's
  parameters, with which the model is rebuilt for the weights), ``earthops:task``,
  ``earthops:dataset`` (run URI), ``earthops:experiment``, ``earthops:model`` (namespace, name,
  version).
* Links: ``derived_from`` the training dataset's STAC collection, ``via`` the experiment run.
  Geometry and bbox: the dataset collection's spatial extent (where the model has seen data), the
  whole world when it cannot be read. ``datetime``: the registration time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from earthops_runtime.catalog.index import format_datetime, parse_datetime
from earthops_runtime.stac import conventions as stac

MLM_SCHEMA = "https://stac-extensions.github.io/mlm/v1.4.0/schema.json"
CLASSIFICATION_SCHEMA = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
ROOT_HREF = "../../../../catalog.json"  # from models/<ns>/<model>/<vN>/item.json
COLLECTION_ROOT_HREF = "../../../catalog.json"  # from models/<ns>/<model>/collection.json
WORLD = (-180.0, -90.0, 180.0, 90.0)
OCTET_PYTORCH = "application/octet-stream; framework=pytorch"
#: MLM tasks of each EODataset label task: the generic name (as label:tasks says it) and the specific one.
TASKS: Mapping[str, tuple[str, ...]] = {
    "classification": ("classification", "scene-classification"),
    "multilabel": ("classification", "scene-classification"),
    "segmentation": ("segmentation", "semantic-segmentation"),
}
#: mlm:framework spellings the extension recommends.
FRAMEWORKS: Mapping[str, str] = {"pytorch": "PyTorch", "torch": "PyTorch"}
_CLASS_NAME = re.compile(r"[^0-9A-Za-z_-]+")


@dataclass
class ModelCard:
    """What the trainer knows about a model that the weights do not say: how it was built, on which
    data, with which normalisation, and how well it did. The registry turns it into the MLM item.

    ``architecture``/``parameters``: the zoo name (or ``package.module:factory``) and its parameters
    as in the manifest (camelCase), enough to rebuild the module for the weights. ``task``:
    classification, multilabel or segmentation. ``classes``: names in output index order.
    ``features``: input channels in order; ``mean``/``std``: their training-split normalisation (one
    per feature). ``chip_shape``: (height, width). ``metrics``: final metrics, the objective first.
    ``hyperparameters``: the training settings (optimiser, learning rate, batch size, epochs, seed, the
    tuned values). ``dataset_uri``: the dataset run; ``dataset_collection``: its STAC collection URL.
    ``experiment``: ``{kind, namespace, name, runId, uri}`` of the run that produced the model.
    ``objective``: ``{metric, goal}`` the model was selected by (its value is in ``metrics``), when
    an experiment selected it.
    """

    architecture: str
    parameters: dict[str, Any]
    task: str
    classes: list[str]
    features: list[str]
    chip_shape: tuple[int, int]
    mean: list[float]
    std: list[float]
    metrics: dict[str, float]
    hyperparameters: dict[str, Any]
    dataset_uri: str
    dataset_collection: str | None
    experiment: dict[str, Any] = field(default_factory=dict)
    framework: str = "pytorch"
    objective: dict[str, Any] | None = None


@dataclass(frozen=True)
class Artifact:
    """The runnable form of a version: which file, how it was made, and whether any batch size works."""

    file: str
    artifact_type: str
    dynamic_batch: bool
    note: str | None = None  # why the preferred form could not be made


EXPORTED = "torch.export.save"
TORCHSCRIPT = "torch.jit.save"


def check_card(card: ModelCard) -> None:
    """Refuse a card whose parts disagree (ValueError naming the field): a wrong normalisation in the
    item would make every prediction of a served model silently wrong."""
    n = len(card.features)
    if n == 0:
        raise ValueError("card.features: a model needs at least one input feature")
    for name in ("mean", "std"):
        values = getattr(card, name)
        if len(values) != n:
            raise ValueError(f"card.{name}: {len(values)} values for {n} features {list(card.features)}")
    if any(not (s > 0) for s in card.std):
        raise ValueError(f"card.std: every value must be > 0, got {list(card.std)}")
    if len(card.chip_shape) != 2 or any(int(v) < 1 for v in card.chip_shape):
        raise ValueError(f"card.chip_shape: expected (height, width) > 0, got {card.chip_shape}")
    if card.task not in TASKS:
        raise ValueError(f"card.task: {card.task!r}; accepted: {', '.join(TASKS)}")
    if not card.classes:
        raise ValueError(f"card.classes: a {card.task} model needs its class names")
    if not card.architecture:
        raise ValueError("card.architecture: empty")
    if not card.dataset_uri:
        raise ValueError("card.dataset_uri: empty (the registry records which data trained the model)")


def item_id(name: str, version: str) -> str:
    """``<model>-<vN>``."""
    return f"{name}-{version}"


def collection_id(namespace: str, name: str) -> str:
    """``earthops-models-<ns>-<model>`` (dataset collections are ``earthops-<ns>-<name>-<run>``)."""
    return f"earthops-models-{namespace}-{name}"


def mlm_tasks(task: str) -> list[str]:
    return list(TASKS[task])


def output_dim_order(task: str, ndim: int) -> list[str]:
    """Names of the output dimensions: ``batch, class`` (scores per class) or ``batch, class, height,
    width`` (segmentation maps)."""
    names = ["batch", "class", "height", "width"] if task == "segmentation" else ["batch", "class"]
    if ndim != len(names):
        raise ValueError(f"a {task} model should output {len(names)} dimensions ({', '.join(names)}), "
                         f"this one outputs {ndim}")
    return names


def class_objects(classes: Sequence[str]) -> list[dict[str, Any]]:
    """Classification extension class objects: ``value`` = output index, ``name`` an identifier
    (letters, digits, ``-``, ``_``), ``title`` the class as named."""
    out = []
    for i, label in enumerate(classes):
        ident = _CLASS_NAME.sub("_", str(label)).strip("_") or f"class_{i}"
        out.append({"value": i, "name": ident, "title": str(label)})
    return out


def footprint(collection: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[float]]:
    """Geometry and bbox of a dataset collection's overall spatial extent (first bbox); the world
    when there is none. A bbox crossing the antimeridian (west > east) becomes two polygons."""
    bbox = None
    if collection:
        boxes = ((collection.get("extent") or {}).get("spatial") or {}).get("bbox") or []
        if boxes and len(boxes[0]) in (4, 6):
            half = len(boxes[0]) // 2
            bbox = [float(boxes[0][i]) for i in (0, 1, half, half + 1)]
    w, s, e, n = bbox or WORLD

    def box(w: float, e: float) -> list[list[list[float]]]:
        return [[[w, s], [e, s], [e, n], [w, n], [w, s]]]

    if w <= e:
        return {"type": "Polygon", "coordinates": box(w, e)}, [w, s, e, n]
    return {"type": "MultiPolygon", "coordinates": [box(w, 180.0), box(-180.0, e)]}, [w, s, e, n]


def model_item(card: ModelCard, *, namespace: str, name: str, version: str, created: datetime,
               artifact: Artifact, output_shape: Sequence[int], total_parameters: int,
               framework_version: str, dataset_collection: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The version's STAC item (a dict, links and asset hrefs relative to the version folder).

    ``output_shape``: the model's output on the example input (its batch dimension is replaced by
    -1 when the artifact takes any batch size). ``dataset_collection``: the dataset's collection
    document, for the footprint."""
    check_card(card)
    if created.tzinfo is None:
        raise ValueError("created must be timezone-aware (UTC)")
    batch = -1 if artifact.dynamic_batch else int(output_shape[0])
    height, width = (int(v) for v in card.chip_shape)
    bands = [str(f) for f in card.features]
    geometry, bbox = footprint(dataset_collection)
    properties: dict[str, Any] = {
        "datetime": format_datetime(created.astimezone(UTC)),
        "title": f"{namespace}/{name} {version}",
        "description": f"{card.architecture} {card.task} model over {', '.join(bands)}, registered by earthops.",
        "mlm:name": name,
        "mlm:architecture": card.architecture,
        "mlm:tasks": mlm_tasks(card.task),
        "mlm:framework": FRAMEWORKS.get(card.framework.lower(), card.framework),
        "mlm:framework_version": framework_version,
        # runs on CPU or CUDA alike: no accelerator is required (null), none is excluded
        "mlm:accelerator": None,
        "mlm:accelerator_constrained": False,
        "mlm:total_parameters": int(total_parameters),
        "mlm:pretrained": False,
        "mlm:pretrained_source": None,
        "mlm:input": [{
            "name": "chips",
            "bands": bands,
            "input": {"shape": [batch, len(bands), height, width],
                      "dim_order": ["batch", "channel", "height", "width"], "data_type": "float32"},
            "value_scaling": [{"type": "z-score", "mean": float(m), "stddev": float(s)}
                              for m, s in zip(card.mean, card.std, strict=True)],
            "resize_type": None,
            "description": "Chips of the training dataset's features, standardised per band with the "
                           "training split's statistics.",
        }],
        "mlm:output": [{
            "name": "scores",
            "tasks": mlm_tasks(card.task),
            "result": {"shape": [batch, *(int(v) for v in output_shape[1:])],
                       "dim_order": output_dim_order(card.task, len(output_shape)), "data_type": "float32"},
            "classification:classes": class_objects(card.classes),
            "post_processing_function": None,
            "description": "Unnormalised class scores (logits): softmax (multilabel: sigmoid) for probabilities.",
        }],
        "mlm:hyperparameters": dict(card.hyperparameters),
        "earthops:task": card.task,
        "earthops:parameters": dict(card.parameters),
        "earthops:metrics": {str(k): float(v) for k, v in card.metrics.items()},
        **({"earthops:objective": dict(card.objective)} if card.objective else {}),
        "earthops:dataset": card.dataset_uri,
        "earthops:experiment": dict(card.experiment),
        "earthops:model": {"namespace": namespace, "name": name, "version": version},
    }
    model_roles = ["mlm:model", "mlm:compiled", "model", "data"]
    model_asset: dict[str, Any] = {
        "href": f"./{artifact.file}", "type": OCTET_PYTORCH, "roles": model_roles,
        "title": "Exported program (torch.export)" if artifact.artifact_type == EXPORTED else "TorchScript (traced)",
        "mlm:artifact_type": artifact.artifact_type,
        "bands": [{"name": b} for b in bands],
    }
    if artifact.note:
        model_asset["description"] = artifact.note
    assets: dict[str, Any] = {
        "model": model_asset,
        "weights": {"href": "./weights.pt", "type": OCTET_PYTORCH, "roles": ["mlm:weights", "weights", "data"],
                    "title": "Weights (state_dict, CPU tensors; rebuild the architecture with earthops:parameters)"},
        "stats": {"href": "./stats.json", "type": stac.JSON, "roles": ["metadata"],
                  "title": "Training data statistics (the dataset's stats.json), the drift reference"},
    }
    links = [
        {"rel": "root", "href": ROOT_HREF, "type": stac.JSON, "title": "earthops store"},
        {"rel": "parent", "href": "../collection.json", "type": stac.JSON},
        {"rel": "collection", "href": "../collection.json", "type": stac.JSON},
    ]
    if card.dataset_collection:
        links.append({"rel": "derived_from", "href": card.dataset_collection, "type": stac.JSON,
                      "title": "Training dataset"})
    if card.experiment.get("uri"):
        what = " ".join(str(card.experiment[k]) for k in ("kind", "name", "runId") if card.experiment.get(k))
        links.append({"rel": "via", "href": str(card.experiment["uri"]), "title": what or "Experiment run"})
    return {
        "type": "Feature",
        "stac_version": stac.STAC_VERSION,
        "stac_extensions": [MLM_SCHEMA, CLASSIFICATION_SCHEMA],
        "id": item_id(name, version),
        "collection": collection_id(namespace, name),
        "geometry": geometry,
        "bbox": bbox,
        "properties": properties,
        "links": links,
        "assets": assets,
    }


def rebuild_arguments(item: Mapping[str, Any]) -> dict[str, Any]:
    """The model zoo's ``build_model`` arguments that rebuild a version's module for its weights:
    ``name``, ``parameters``, ``in_channels``, ``num_classes``, ``task``, ``chip_shape``."""
    props = item["properties"]
    model_input = props["mlm:input"][0]
    return {
        "name": props["mlm:architecture"],
        "parameters": dict(props.get("earthops:parameters") or {}),
        "in_channels": len(model_input["bands"]),
        # the measured output width (a multilabel vector may be wider than the named classes)
        "num_classes": int(props["mlm:output"][0]["result"]["shape"][1]),
        "task": props["earthops:task"],
        "chip_shape": tuple(int(v) for v in model_input["input"]["shape"][2:4]),
    }


def index_entry(item: Mapping[str, Any]) -> dict[str, Any]:
    """The item as the search index stores it: hrefs relative to the version folder (where both
    item.json and index.parquet lie) plus a ``self`` link, so a search hit points at its item."""
    return {**item, "links": [{"rel": "self", "href": "./item.json", "type": "application/geo+json"},
                              *item.get("links", [])]}


def model_collection(namespace: str, name: str, items: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The model's collection over its versions (``{"v1": item, ...}``): item links, the union of
    their footprints, first to last registration, and summaries of what varies between versions."""
    if not items:
        raise ValueError(f"model {namespace}/{name}: a collection needs at least one version")
    docs = list(items.values())
    boxes = [d["bbox"] for d in docs]
    times = [parse_datetime(d["properties"]["datetime"]) for d in docs]
    crosses = any(b[0] > b[2] for b in boxes)
    spatial = [list(WORLD)] if crosses else [[min(b[0] for b in boxes), min(b[1] for b in boxes),
                                               max(b[2] for b in boxes), max(b[3] for b in boxes)]]

    def values(key: str) -> list[Any]:
        seen: list[Any] = []
        for d in docs:
            v = d["properties"].get(key)
            for x in v if isinstance(v, list) else [v]:
                if x is not None and x not in seen:
                    seen.append(x)
        return seen

    summaries = {k: values(k) for k in ("mlm:architecture", "mlm:tasks", "mlm:framework", "earthops:task")}
    title = f"Model {namespace}/{name}"
    return {
        "type": "Collection",
        "stac_version": stac.STAC_VERSION,
        "stac_extensions": [MLM_SCHEMA],
        "id": collection_id(namespace, name),
        "title": title,
        "description": f"Registered versions of the model {namespace}/{name} (earthops model registry).",
        "license": "other",
        "keywords": ["earthops", "model", *values("mlm:architecture")],
        "extent": {"spatial": {"bbox": spatial},
                   "temporal": {"interval": [[format_datetime(min(times)), format_datetime(max(times))]]}},
        "summaries": {k: v for k, v in summaries.items() if v},
        "links": [{"rel": "root", "href": COLLECTION_ROOT_HREF, "type": stac.JSON, "title": "earthops store"},
                  {"rel": "parent", "href": COLLECTION_ROOT_HREF, "type": stac.JSON, "title": "earthops store"},
                  *({"rel": "item", "href": f"./{v}/item.json", "type": "application/geo+json", "title": v}
                    for v in items)],
    }


def validate(doc: Mapping[str, Any], what: str) -> None:
    """Validate against the STAC core schemas that ship with pystac (offline; the mlm schema is on
    the web only, its fields are checked by the unit tests). :class:`stac.ConventionError` naming
    ``what`` and the failing field."""
    import pystac
    from pystac.validation import validate_dict

    try:
        validate_dict(dict(doc), extensions=[], href=what)
    except pystac.STACValidationError as exc:
        raise stac.ConventionError(f"{what}: not valid STAC: {str(exc).splitlines()[0][:300]}") from exc


__all__ = ["CLASSIFICATION_SCHEMA", "EXPORTED", "MLM_SCHEMA", "TORCHSCRIPT", "Artifact", "ModelCard", "check_card",
           "class_objects", "collection_id", "footprint", "index_entry", "item_id", "mlm_tasks", "model_collection",
           "model_item", "output_dim_order", "rebuild_arguments", "validate"]
