"""The drift reference: what the model's training data looked like, per band, from ``stats.json``.

The reference is a dataset's published statistics (``earthops_runtime.data.stats``): per split and
feature, exact moments, percentiles and a 64-bin histogram (between the sampled 1st and 99th
percentiles, with the counts below and above) of a uniform pixel sample. The training split's entry
of each band the model consumes is the band's reference; the validation split's label counts are the
reference for the predictions' class shares. The registry copies the dataset's ``stats.json`` into
every model version, so a model version folder is a reference too (the default); a
``monitoring.referenceDatasetRef`` names a dataset run folder instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from earthops.core.store import Store, StoreError
from earthops_runtime.errors import RunFailed

STATS_NAME = "stats.json"
REFERENCE_SPLIT = "train"
LABEL_SPLIT = "validation"


class ReferenceError(RunFailed, ValueError):
    """The reference cannot serve: missing, unreadable, or without statistics for a band the model
    needs. The message names the reference and the band."""

    def __init__(self, message: str, reason: str = "InvalidReference"):
        super().__init__(reason, message)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (str(self), self.reason)


@dataclass(frozen=True)
class BandReference:
    """One band's training distribution: ``edges`` (K+1, equal bins), ``probs`` over the K+2 cells
    (below the first edge, the K bins, above the last), exact ``mean``/``std``/``count``."""

    name: str
    edges: np.ndarray
    probs: np.ndarray
    mean: float
    std: float
    count: int
    sampled: int


@dataclass(frozen=True)
class Reference:
    """Every band the model consumes (in its channel order) and the label shares of its classes."""

    source: str
    bands: tuple[BandReference, ...]
    classes: tuple[str, ...]
    #: Validation label shares in ``classes`` order (multilabel: the share of chips carrying each
    #: class), or None when the dataset has no labels for that split.
    class_shares: np.ndarray | None
    task: str
    split: str = REFERENCE_SPLIT
    label_split: str = LABEL_SPLIT

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)


def reference_location(uri: str) -> tuple[str, str]:
    """``(folder URI, file name)`` of a reference: a ``.json`` file, or a folder holding ``stats.json``
    (a model version or a dataset run)."""
    uri = uri.rstrip("/")
    if uri.endswith(".json"):
        folder, _, name = uri.rpartition("/")
        return folder, name
    return uri, STATS_NAME


def read_json_at(folder: str, name: str, what: str) -> dict[str, Any]:
    """The JSON document ``name`` in the folder ``folder`` (a path, ``file://`` or ``s3://``); a
    :class:`ReferenceError` (``ReferenceNotFound``) naming ``what`` and the URI when it is not there.
    A local folder that does not exist is not created (as opening a store would)."""
    parsed = urlparse(folder)
    if parsed.scheme in ("", "file") and not Path(parsed.path if parsed.scheme else folder).is_dir():
        raise ReferenceError(f"{what} {folder}/{name}: not found (no such folder)", "ReferenceNotFound")
    try:
        store = Store.from_uri(folder)
        if not store.exists(name):
            raise ReferenceError(f"{what} {folder}/{name}: not found", "ReferenceNotFound")
        return store.read_json(name)
    except StoreError as exc:
        raise ReferenceError(f"{what} {folder}/{name}: {exc}", "ReferenceNotFound") from exc


def read_reference_document(uri: str) -> dict[str, Any]:
    """The ``stats.json`` document at ``uri`` (see :func:`reference_location`): a dataset run folder,
    a model version folder, or the file itself."""
    return read_json_at(*reference_location(uri), "reference")


@dataclass(frozen=True)
class ModelIO:
    """What a model version consumes and answers, from its STAC item (``mlm:input`` bands in channel
    order, ``classification:classes`` in output order, ``earthops:task``, ``earthops:model``)."""

    name: str
    version: str
    features: tuple[str, ...]
    classes: tuple[str, ...]
    task: str


def model_io(model_uri: str) -> ModelIO:
    """The :class:`ModelIO` of the registry version folder ``model_uri``."""
    item = read_json_at(model_uri.rstrip("/"), "item.json", "model")
    try:
        props = item["properties"]
        ref = props.get("earthops:model") or {}
        classes = props["mlm:output"][0].get("classification:classes") or []
        return ModelIO(name=str(ref.get("name") or props.get("mlm:name")), version=str(ref.get("version") or item["id"]),
                       features=tuple(str(b) for b in props["mlm:input"][0]["bands"]),
                       classes=tuple(str(c.get("title", c.get("name"))) for c in classes),
                       task=str(props.get("earthops:task") or "classification"))
    except (KeyError, IndexError, TypeError) as exc:
        raise ReferenceError(f"model {model_uri}: its item.json is not an earthops model card ({exc!r})",
                             "InvalidModel") from None


def _band(source: str, split: str, name: str, entry: Mapping[str, Any] | None) -> BandReference:
    if entry is None:
        raise ReferenceError(f"reference {source}: split {split!r} has no statistics for band {name!r}, which the "
                             "model consumes", "BandNotInReference")
    hist = entry.get("histogram")
    count = int(entry.get("count") or 0)
    if not hist or not count or entry.get("std") is None:
        raise ReferenceError(f"reference {source}: band {name!r} of split {split!r} has no values (count {count}): "
                             "nothing to compare with", "BandNotInReference")
    edges = np.asarray(hist["edges"], np.float64)
    counts = np.asarray([hist.get("below", 0), *hist["counts"], hist.get("above", 0)], np.float64)
    if edges.size != counts.size - 1 or not np.all(np.diff(edges) > 0):
        raise ReferenceError(f"reference {source}: band {name!r} of split {split!r} has a malformed histogram "
                             f"({edges.size} edges for {counts.size - 2} bins)", "InvalidReference")
    sampled = int(entry.get("sampled") or count)
    # a bin the sample left empty is not impossible: half a sampled value's worth in every cell
    scale = counts.sum() / max(sampled, 1)
    smoothed = counts + 0.5 * scale
    return BandReference(name=name, edges=edges, probs=smoothed / smoothed.sum(), mean=float(entry["mean"]),
                         std=float(entry["std"]), count=count, sampled=sampled)


def _class_shares(labels: Mapping[str, Any] | None, classes: Sequence[str], task: str) -> np.ndarray | None:
    if not labels or not classes:
        return None
    counts = labels.get("counts") or {}
    by_name = labels.get("keys") == "name"
    raw = np.asarray([float(counts.get(c if by_name else str(i), 0)) for i, c in enumerate(classes)])
    if task == "multilabel":
        samples = float(labels.get("samples") or 0)
        return raw / samples if samples else None
    total = raw.sum()
    return raw / total if total else None


def load_reference(doc: Mapping[str, Any], *, features: Sequence[str], classes: Sequence[str] = (),
                   task: str = "classification", source: str = "stats.json", split: str = REFERENCE_SPLIT,
                   label_split: str = LABEL_SPLIT) -> Reference:
    """The reference of a model consuming ``features`` (channel order) and predicting ``classes``
    from a ``stats.json`` document. Raises :class:`ReferenceError` naming the band and the source."""
    splits = doc.get("splits") if isinstance(doc, Mapping) else None
    if not isinstance(splits, Mapping):
        raise ReferenceError(f"reference {source}: not a dataset statistics document (no 'splits')", "InvalidReference")
    if split not in splits:
        raise ReferenceError(f"reference {source}: no statistics for split {split!r}; splits: "
                             f"{', '.join(sorted(splits)) or '(none)'}", "InvalidReference")
    if not features:
        raise ReferenceError(f"reference {source}: the model names no input bands", "InvalidReference")
    feats = splits[split].get("features") or {}
    missing = [f for f in features if f not in feats]
    if missing:
        raise ReferenceError(f"reference {source}: split {split!r} has no statistics for band"
                             f"{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}, which the model "
                             f"consumes; bands there: {', '.join(feats) or '(none)'}", "BandNotInReference")
    bands = tuple(_band(source, split, f, feats[f]) for f in features)
    labels = (splits.get(label_split) or {}).get("labels")
    return Reference(source=source, bands=bands, classes=tuple(classes),
                     class_shares=_class_shares(labels, classes, task), task=task, split=split,
                     label_split=label_split)


__all__ = ["LABEL_SPLIT", "REFERENCE_SPLIT", "BandReference", "ModelIO", "model_io", "read_json_at", "Reference", "ReferenceError", "load_reference",
           "read_reference_document", "reference_location"]
