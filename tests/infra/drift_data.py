"""Known-truth data for drift monitoring tests: synthetic Sentinel-1 ship/iceberg chips (HH, HV,
band_avg in dB) and Sentinel-2 land-cover chips (B02, B03, B04, B08 reflectance), drawn by the
project's own generators, a training reference (``stats.json`` as the dataset pipeline writes it)
and a disjoint pool of test chips. Cached per process: the tests reuse one draw."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from earthops_runtime.data.stats import DatasetStats
from earthops_runtime.data.synthetic import s1_chip_arrays, s2_scene_arrays

S1_BANDS = ("HH", "HV", "band_avg")
S1_CLASSES = ("ship", "iceberg")
S2_BANDS = ("B02", "B03", "B04", "B08")


@dataclass(frozen=True)
class Pool:
    """A reference document (train split features, validation split labels) and test chips."""

    stats: dict
    chips: np.ndarray  # (N, C, H, W) float32
    labels: np.ndarray  # (N,)
    bands: tuple[str, ...]


def _s1(seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    chips, labels = [], []
    for i in range(count):
        hh, hv, truth = s1_chip_arrays(seed, i)
        chips.append(np.stack([hh, hv, (hh + hv) / 2]))
        labels.append(truth["is_iceberg"])
    return np.stack(chips).astype(np.float32), np.array(labels)


@functools.cache
def s1_pool(train: int = 400, test: int = 600) -> Pool:
    """Reference from ``train`` chips (seed 11), validation labels and ``test`` chips from seed 12."""
    x, y = _s1(11, train)
    tx, ty = _s1(12, test)
    stats = DatasetStats(seed=1)
    stats.update("train", x, S1_BANDS).update_labels("train", y)
    stats.update("validation", tx[:100], S1_BANDS).update_labels("validation", ty[:100])
    return Pool(stats.to_dict(), tx, ty, S1_BANDS)


def _s2(seed: int, scenes: int, size: int = 240, chip: int = 30) -> np.ndarray:
    out = []
    for j in range(scenes):
        arrays = s2_scene_arrays(seed, j, size=size)
        dn = np.stack([arrays[b] for b in S2_BANDS]).astype(np.float32)
        refl = np.where(dn == 0, np.nan, (dn - 1000.0) / 10000.0)
        k = size // chip
        out.append(refl.reshape(len(S2_BANDS), k, chip, k, chip).transpose(1, 3, 0, 2, 4).reshape(-1, len(S2_BANDS),
                                                                                                    chip, chip))
    return np.concatenate(out).astype(np.float32)


@functools.cache
def s2_pool() -> Pool:
    """Reference from 12 scenes of seed 21, test chips from 6 scenes of seed 22 (64 chips a scene)."""
    stats = DatasetStats(seed=2)
    stats.update("train", _s2(21, 12), S2_BANDS)
    test = _s2(22, 6)
    return Pool(stats.to_dict(), test, np.zeros(len(test), np.int64), S2_BANDS)


def probabilities(labels: np.ndarray, classes: int = 2, confidence: float = 0.9) -> np.ndarray:
    """Softmax-like outputs that predict ``labels``."""
    out = np.full((labels.size, classes), (1.0 - confidence) / (classes - 1), np.float32)
    out[np.arange(labels.size), labels] = confidence
    return out


class PeakClassifier(torch.nn.Module):
    """Ship or iceberg from the brightest HH pixel of a normalised chip (ships peak brighter): a
    model whose predictions follow the data, trained in no time, exportable."""

    def __init__(self, threshold: float = 0.0, sharpness: float = 4.0):
        super().__init__()
        self.register_buffer("threshold", torch.tensor(float(threshold)))
        self.sharpness = float(sharpness)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x[:, 0].amax(dim=(1, 2)) - self.threshold) * self.sharpness
        return torch.stack([z, -z], dim=1)  # class 0 (ship) when the peak is bright


def peak_classifier(in_channels: int, num_classes: int, task: str, chip_shape: tuple[int, int],
                    threshold: float = 0.0) -> torch.nn.Module:
    """The zoo-style factory of :class:`PeakClassifier` (``tests.infra.drift_data:peak_classifier``)."""
    del in_channels, num_classes, task, chip_shape
    return PeakClassifier(threshold)


def fitted_peak_classifier(pool: Pool) -> tuple[torch.nn.Module, float]:
    """A :class:`PeakClassifier` whose threshold splits the normalised training peaks at their median
    (about half ships, as in the data) and that threshold."""
    from earthops_runtime.data.stats import normalization

    mean, std = normalization(pool.stats, "train", pool.bands)
    x, _ = _s1(11, 400)
    peaks = ((x[:, 0] - mean[0]) / std[0]).reshape(len(x), -1).max(axis=1)
    threshold = float(np.median(peaks))
    return PeakClassifier(threshold), threshold


PEAK_ARCHITECTURE = "tests.infra.drift_data:peak_classifier"


def register_peak_model(store, namespace: str, name: str, *, without: str | None = None):
    """Register a fitted :class:`PeakClassifier` on :func:`s1_pool`'s reference as ``namespace/name``
    (its stats.json: the pool's, the drift reference a deployment of it uses by default; ``without``:
    a band left out of the training split's statistics, a reference the model cannot use)."""
    from earthops_runtime.catalog.model import ModelCard
    from earthops_runtime.data.stats import normalization
    from earthops_runtime.registry import register_model

    pool = s1_pool()
    mean, std = normalization(pool.stats, "train", S1_BANDS)
    model, threshold = fitted_peak_classifier(pool)
    card = ModelCard(architecture=PEAK_ARCHITECTURE, parameters={"threshold": threshold}, task="classification",
                     classes=list(S1_CLASSES), features=list(S1_BANDS), chip_shape=(75, 75), mean=mean.tolist(),
                     std=std.tolist(), metrics={"val_accuracy": 0.5}, hyperparameters={"seed": 0},
                     dataset_uri=f"{store.uri}/datasets/{namespace}/iceberg-chips/g1-test", dataset_collection=None)
    stats = pool.stats
    if without is not None:
        train = stats["splits"]["train"]
        stats = {**stats, "splits": {**stats["splits"], "train": {
            **train, "features": {k: v for k, v in train["features"].items() if k != without}}}}
    return register_model(store, namespace=namespace, name=name, model=model,
                          example_input=torch.zeros(2, 3, 75, 75), card=card, training_stats=stats)


def v2_bands(hh: np.ndarray, hv: np.ndarray) -> dict:
    """An Open Inference Protocol v2 request of raw HH and HV bands (dB), ``[N, H, W]`` each."""
    return {"inputs": [{"name": "HH", "datatype": "FP32", "shape": list(hh.shape), "data": hh.reshape(-1).tolist()},
                       {"name": "HV", "datatype": "FP32", "shape": list(hv.shape), "data": hv.reshape(-1).tolist()}]}
