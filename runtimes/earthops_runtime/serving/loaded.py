"""A registered model version loaded for serving: its card, its exported program, one forward.

``LoadedModel.load(uri)`` opens a registry version folder (``file://``, a path, or ``s3://`` with
the store's credentials from the environment, never from a spec), reads its STAC item (the model
card: features, normalisation, classes, chip size, task), loads the exported program (``model.pt2``)
or TorchScript (``model.ts``) on the chosen device, and runs one warm-up forward. Anything wrong is
a :class:`ModelLoadError` naming the URI.

``forward(x)`` takes normalised float32 chips ``[N, C, H, W]`` and returns probabilities (softmax,
sigmoid for multilabel, softmax over classes per pixel for segmentation), float32 on the CPU. On
CUDA it runs under autocast (float16); a model exported for one batch size only gets its chips in
batches of that size (the last one padded).
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch

from earthops.core.registry import ITEM_NAME
from earthops.core.store import Store, StoreError
from earthops_runtime.catalog.model import EXPORTED, TORCHSCRIPT

DEVICES = ("auto", "cpu", "cuda")


class ModelLoadError(RuntimeError):
    """A model version cannot be served; the message names its URI and why."""


def pick_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is present, else ``cpu``; ``cuda`` without one is an error."""
    if device not in DEVICES:
        raise ModelLoadError(f"--device {device!r}: accepted: {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda: no CUDA device is available here (use auto or cpu)")
    return device


def open_version(uri: str) -> Store:
    """A store rooted at a version folder; a local folder must exist (never created here)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme else uri).expanduser()
        if not path.is_dir():
            raise ModelLoadError(f"model {uri}: no such folder (expected a registry version folder "
                                 "models/<namespace>/<model>/<vN>)")
    try:
        return Store.from_uri(uri)
    except StoreError as exc:
        raise ModelLoadError(f"model {uri}: {exc}") from None


@dataclass(frozen=True)
class Card:
    """What serving needs from a version's STAC item."""

    name: str  # the registry's model name
    version: str
    task: str
    features: tuple[str, ...]
    mean: np.ndarray  # float32 [C]
    std: np.ndarray  # float32 [C]
    classes: tuple[str, ...]
    num_outputs: int  # output width (a multilabel vector may be wider than the named classes)
    chip_shape: tuple[int, int]
    batch: int  # -1: any batch size

    @classmethod
    def from_item(cls, item: dict[str, Any], uri: str) -> Card:
        try:
            props = item["properties"]
            model_input = props["mlm:input"][0]
            output = props["mlm:output"][0]
            scaling = model_input["value_scaling"]
            shape = model_input["input"]["shape"]
            ref = props.get("earthops:model") or {}
            classes = tuple(str(c.get("title", c.get("name"))) for c in output["classification:classes"])
            num_outputs = int(output["result"]["shape"][1])
            return cls(
                name=str(ref.get("name") or props.get("mlm:name")), version=str(ref.get("version") or item["id"]),
                task=str(props.get("earthops:task") or "classification"),
                features=tuple(str(b) for b in model_input["bands"]),
                mean=np.asarray([float(s["mean"]) for s in scaling], np.float32),
                std=np.asarray([float(s["stddev"]) if float(s["stddev"]) > 0 else 1.0 for s in scaling], np.float32),
                classes=classes + tuple(f"class_{i}" for i in range(len(classes), num_outputs)),
                num_outputs=num_outputs, chip_shape=(int(shape[2]), int(shape[3])), batch=int(shape[0]))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"model {uri}: its {ITEM_NAME} is not an earthops model card "
                                 f"({type(exc).__name__}: {exc})") from None


class LoadedModel:
    """One model version ready to predict (see the module docstring)."""

    def __init__(self, uri: str, card: Card, module: Any, device: str):
        self.uri = uri
        self.card = card
        self.module = module
        self.device = device
        #: The label answers carry (``model_version``): the registry version, or ``<model>-<version>``
        #: when a canary of another model has the same version number (set by the served model).
        self.version = card.version
        self._lock = threading.Lock()  # one forward at a time per model (the GPU or the CPU's threads)

    @classmethod
    def load(cls, uri: str, device: str = "auto") -> LoadedModel:
        uri = uri.rstrip("/")
        dev = pick_device(device)
        store = open_version(uri)
        try:
            if not store.exists(ITEM_NAME):
                raise ModelLoadError(f"model {uri}: no {ITEM_NAME} (is it a registry version folder "
                                     "models/<namespace>/<model>/<vN>?)")
            item = store.read_json(ITEM_NAME)
            card = Card.from_item(item, uri)
            asset = (item.get("assets") or {}).get("model") or {}
            href = str(asset.get("href", "")).removeprefix("./")
            kind = asset.get("mlm:artifact_type")
            if not href:
                raise ModelLoadError(f"model {uri}: the item has no model asset")
            data = io.BytesIO(store.read_bytes(href))
        except StoreError as exc:
            raise ModelLoadError(f"model {uri}: {exc}") from None
        try:
            if kind == EXPORTED:
                module = torch.export.load(data).module()
            elif kind == TORCHSCRIPT:
                module = torch.jit.load(data, map_location="cpu").eval()
            else:
                raise ModelLoadError(f"model {uri}: artifact type {kind!r} is not one earthops serves "
                                     f"({EXPORTED}, {TORCHSCRIPT})")
            module = module.to(dev)
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged artifact
            raise ModelLoadError(f"model {uri}: cannot load {href}: {type(exc).__name__}: "
                                 f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}") from None
        loaded = cls(uri, card, module, dev)
        loaded.warm_up()
        return loaded

    def warm_up(self) -> None:
        """One forward on zeros (the mean of the training data): the first request does not pay for
        lazy initialisation, and a model that cannot run fails at startup, not on a request."""
        h, w = self.card.chip_shape
        n = self.card.batch if self.card.batch > 0 else 1
        try:
            out = self.forward(np.zeros((n, len(self.card.features), h, w), np.float32))
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"model {self.uri}: the warm-up forward failed: {type(exc).__name__}: {exc}") from None
        expected = (n, self.card.num_outputs, h, w) if self.card.task == "segmentation" else (n, self.card.num_outputs)
        if out.shape != expected:
            raise ModelLoadError(f"model {self.uri}: the warm-up forward gave shape {out.shape}, the card says {expected}")

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Probabilities for normalised chips ``[N, C, H, W]`` (float32, finite)."""
        fixed = self.card.batch
        if fixed > 0 and len(x) != fixed:
            parts = [self.forward(_pad(x[i:i + fixed], fixed))[: len(x[i:i + fixed])] for i in range(0, len(x), fixed)]
            return np.concatenate(parts) if parts else np.zeros((0, self.card.num_outputs), np.float32)
        x = np.ascontiguousarray(x, np.float32)
        t = torch.from_numpy(x if x.flags.writeable else x.copy())  # binary v2 inputs are read-only views
        with self._lock, torch.inference_mode():
            if self.device == "cuda":
                t = t.to("cuda", non_blocking=True)
                with torch.autocast("cuda", dtype=torch.float16):
                    logits = self.module(t)
            else:
                logits = self.module(t)
            logits = logits.float()
            probs = torch.sigmoid(logits) if self.card.task == "multilabel" else torch.softmax(logits, dim=1)
            return probs.cpu().numpy()


def _pad(x: np.ndarray, n: int) -> np.ndarray:
    return x if len(x) == n else np.concatenate([x, np.zeros((n - len(x), *x.shape[1:]), x.dtype)])


__all__ = ["DEVICES", "Card", "LoadedModel", "ModelLoadError", "open_version", "pick_device"]
