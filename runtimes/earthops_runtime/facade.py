"""What the control plane's CLI calls in the data plane directly — the one door besides the entrypoint.

``earthops search`` and ``earthops samples`` answer on the user's machine without starting a run (and
``earthops serve``/``run`` take a test chip for their example request here, and ``earthops catalog
serve`` starts the STAC API), so the CLI
(:mod:`earthops.control.cli`) imports this module, lazily, inside those commands; an
import-linter contract allows exactly that import and no other from the control plane into
:mod:`earthops_runtime`. Nothing here imports torch, ray or kserve.
"""

from __future__ import annotations

from earthops_runtime.catalog.search import SearchError, feature_collection, search
from earthops_runtime.samples import SampleFetchError, bigearthnet_catalog, fetch_bigearthnet


def serve_catalog(store: object, *, host: str, port: int, presign_seconds: int | None = None,
                  log_level: str = "warning") -> None:
    """``earthops catalog serve``: the STAC API over the store (imported here, when asked for)."""
    from earthops_runtime.stacapi.app import serve

    serve(store, host=host, port=port, presign_seconds=presign_seconds, log_level=log_level)


__all__ = ["SampleFetchError", "SearchError", "bigearthnet_catalog", "feature_collection", "fetch_bigearthnet",
           "search", "serve_catalog", "test_request"]


def test_request(model_uri: str, index: int = 0) -> dict[str, object]:
    """One chip of a registered model's dataset's test split as an Open Inference Protocol (v2) request.

    The chip is model-ready — the model's features in its order, normalised with its card's statistics,
    as the predictor's ``chips`` input takes it — so ``earthops serve --predict-once`` checks the served
    model on data it was not trained on. Returns ``{"request": <v2 body>, "chip": <chip id>, "label":
    <true class name, or None>}``; a :class:`~earthops.core.store.StoreError` or ``LookupError`` says
    why there is none (the dataset run was deleted, its test split is empty)."""
    import numpy as np

    from earthops.core.store import Store
    from earthops_runtime.data.shards import read_split

    store = Store.from_uri(model_uri)
    props = store.read_json("item.json")["properties"]
    model_input = props["mlm:input"][0]
    features = [str(b) for b in model_input["bands"]]
    dataset = props.get("earthops:dataset")
    if not dataset:
        raise LookupError(f"model {model_uri} names no dataset (earthops:dataset in its item.json)")
    chips = read_split(str(dataset), "test", features)
    if len(chips) <= index:
        raise LookupError(f"the test split of {dataset} has {len(chips)} chip(s)")
    mean = np.asarray([float(s["mean"]) for s in model_input["value_scaling"]], np.float32)[:, None, None]
    std = np.asarray([float(s["stddev"]) or 1.0 for s in model_input["value_scaling"]], np.float32)[:, None, None]
    x = np.nan_to_num((chips.x[index] - mean) / std, nan=0.0)[None].astype(np.float32)
    classes = [str(c.get("title", c.get("name"))) for c in props["mlm:output"][0].get("classification:classes", [])]
    label = None
    if chips.labels is not None and chips.labels.ndim == 1 and int(chips.labels[index]) < len(classes):
        label = classes[int(chips.labels[index])]
    request = {"inputs": [{"name": "chips", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    return {"request": request, "chip": chips.ids[index] if chips.ids else str(index), "label": label}
