"""A known-truth dataset and model for AblationStudy tests, written directly as a published run.

Features: ``signal`` (class 1 chips are brighter: every pixel ~ N(±SEPARATION, 1)), which carries all
of the label, ``noise`` (N(0, 1), independent of the label) and, optionally, more noise features.
Chips of 8x8 px (or ``shape``), balanced classes, a train and a validation split; ``stats.json`` holds the train
split's per-feature mean and std (what the trainer normalises with). Small enough for 2 CPU cores.

The model (:func:`tiny`, ``tests.infra.known_truth:tiny``): ``stem`` (conv), ``extra`` (a
shape-preserving conv block the task does not need), ``reduce`` (a strided conv: changes shapes),
``pool``, ``flatten`` and ``head``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SHAPE = (8, 8)
SEPARATION = 1.0
CLASSES = ("low", "high")


def write_dataset(store_uri: str, key: str = "datasets/default/known-truth/g1-test", *,
                  features: Sequence[str] = ("signal", "noise"), n_train: int = 96, n_val: int = 48,
                  seed: int = 7, shape: tuple[int, int] = SHAPE) -> str:
    """Publish the dataset run at ``key`` of the store (chips of ``shape``); returns its URI."""
    from earthops.core.store import Store
    from earthops_runtime.data.shards import ShardWriter, write_index

    store = Store.from_uri(store_uri)
    rng = np.random.default_rng(seed)
    stats = {}
    with store.publish(key) as run:
        with ShardWriter(run, list(features), shape, "classification", CLASSES, 256, task_id="known") as writer:
            for split, n in (("train", n_train), ("validation", n_val)):
                y = np.arange(n) % 2
                x = rng.normal(0.0, 1.0, size=(n, len(features), *shape)).astype(np.float32)
                x[:, 0] += np.where(y == 1, SEPARATION, -SEPARATION)[:, None, None].astype(np.float32)
                writer.write(split, x, y.astype(np.int32), [f"{split}-{i}" for i in range(n)])
                if split == "train":
                    stats = {f: {"mean": float(x[:, c].mean()), "std": float(x[:, c].std())}
                             for c, f in enumerate(features)}
        write_index(run, [writer.summary])
        run.write_json("stats.json", {"splits": {"train": {"features": stats}}})
        run.write_json("summary.json", {"results": {"collection": f"{store_uri}/{key}/collection.json"}})
    return store.url(key)


def tiny(*, in_channels: int, num_classes: int, width: int = 8):
    """The known-truth model (see the module docstring)."""
    from torch import nn

    model = nn.Sequential()
    model.add_module("stem", nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU()))
    model.add_module("extra", nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU()))
    model.add_module("reduce", nn.Conv2d(width, width, 3, stride=2, padding=1))
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flatten", nn.Flatten())
    model.add_module("head", nn.Linear(width, num_classes))
    return model
