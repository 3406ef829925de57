"""What a trainer needs to know about a dataset run, read once: features, labels, shape, normalisation.

:meth:`DatasetInfo.open` reads a published EODataset run (``file://``, ``s3://`` or a path): its
``shards/index.json`` (features, chip shape, label task and classes, chips per split: what the
loader will actually read), ``stats.json`` (the training split's per-feature mean and std, for
normalising inputs in every split and later at inference) and ``summary.json`` (the dataset's STAC
collection, for lineage). It fails with a :class:`SpecError` for anything that makes the run
unusable for training (unknown features, no labels, an empty training or validation split), before
a model is built or a trial scheduled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from earthops.core.store import StoreError
from earthops_runtime.data.loader import ChipDataset
from earthops_runtime.data.shards import ShardIndex, open_source, read_index
from earthops_runtime.data.stats import normalization
from earthops_runtime.errors import SpecError

DATASET_FIELD = "spec.datasetRef"


def select_features(available: Sequence[str], features: Sequence[str] | None, field: str) -> tuple[str, ...]:
    """The features to train on, in the requested order (all, in the dataset's order, for None)."""
    if features is None:
        return tuple(available)
    names = [features] if isinstance(features, str) else list(features)
    listed = ", ".join(available)
    unknown = [f for f in names if f not in available]
    if unknown:
        raise SpecError(field, f"feature{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} not in the dataset; "
                               f"available: {listed}")
    if not names:
        raise SpecError(field, f"choose at least one feature of {listed}")
    twice = sorted({f for f in names if names.count(f) > 1})
    if twice:
        raise SpecError(field, f"feature {', '.join(twice)} named twice")
    return tuple(names)


def check_trainable(index: ShardIndex, uri: str) -> None:
    """SpecError unless the run has labels and chips in both its train and validation splits."""
    if index.label_task is None:
        raise SpecError(DATASET_FIELD, f"the dataset at {uri} has no labels (spec.labels of the EODataset): "
                                       "a model cannot be trained on it")
    counts = index.counts
    for split, why in (("train", "nothing to train on"), ("validation", "no metric to report or tune")):
        if not counts.get(split):
            raise SpecError(DATASET_FIELD, f"the dataset at {uri} has no {split} chips ({why}); chips per split: "
                                           f"{counts}; give the EODataset's spec.split a {split} fraction > 0")


def num_classes_of(index: ShardIndex) -> int:
    """Width of the model output: the classes (multilabel: the label vector's width)."""
    if index.label_task == "multilabel" and index.label_width:
        return int(index.label_width)
    return len(index.classes)


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset run as training sees it. ``mean``/``std``: the training split's statistics per
    feature, in ``features`` order (applied to every split). ``counts``: chips per split."""

    uri: str
    features: tuple[str, ...]
    task: str
    classes: tuple[str, ...]
    num_classes: int
    chip_shape: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    collection: str | None
    counts: Mapping[str, int]

    @property
    def in_channels(self) -> int:
        return len(self.features)

    @classmethod
    def open(cls, uri: str, features: Sequence[str] | None = None, *, field: str = "features",
             env: Mapping[str, str] | None = None) -> DatasetInfo:
        """Read the run at ``uri``; ``features`` to train on (default: all); ``field`` names them in
        errors (e.g. ``spec.components.features``); ``env``: S3 settings as for ``Store.from_uri``."""
        store, _ = open_source(uri, env=env)
        index, _ = read_index(store)
        check_trainable(index, uri)
        names = select_features(index.features, features, field)
        if not store.exists("stats.json"):
            raise StoreError(f"no {store.url('stats.json')}: the run has no statistics to normalise inputs "
                             "(is it a published EODataset run?)")
        mean, std = normalization(store.read_json("stats.json"), "train", list(names))
        summary: dict[str, Any] = store.read_json("summary.json") if store.exists("summary.json") else {}
        return cls(
            uri=uri.rstrip("/"), features=names, task=str(index.label_task), classes=tuple(index.classes),
            num_classes=num_classes_of(index), chip_shape=tuple(index.chip_shape),  # type: ignore[arg-type]
            mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
            collection=(summary.get("results") or {}).get("collection"), counts=dict(index.counts),
        )

    def chips(self, split: str, *, shuffle: bool, seed: int = 0, env: Mapping[str, str] | None = None) -> ChipDataset:
        """The normalised chips of ``split``, in this dataset's feature order."""
        return ChipDataset(self.uri, split, features=list(self.features), normalization=(self.mean, self.std),
                           shuffle=shuffle, seed=seed, env=env)

    def loader(self, split: str, batch_size: int, *, shuffle: bool, seed: int = 0, workers: int = 0,
               pin_memory: bool = False, env: Mapping[str, str] | None = None) -> DataLoader:
        """A DataLoader over :meth:`chips`. Call ``loader.dataset.set_epoch(epoch)`` before each epoch
        (the order is a function of ``(seed, epoch)``). Workers are not kept between epochs, so they
        see the new epoch; with 0 workers the loader's own read-ahead threads still overlap I/O. The
        DataLoader draws its workers' base seed from a generator of its own, seeded by ``seed``, not
        from torch's global one (which every ``iter(loader)`` would otherwise advance)."""
        return DataLoader(self.chips(split, shuffle=shuffle, seed=seed, env=env), batch_size=batch_size,
                          num_workers=workers, pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed))
