"""The KServe model: one served name, one or two registry versions (a canary), every input form.

``EOModel(name, [LoadedModel, ...], weights=[...])`` is a ``kserve.Model``: KServe's data plane
decodes v1 / v2 REST (JSON and the binary tensor extension) and gRPC v2 and calls :meth:`predict`,
which picks the version (a request pinned to one by ``/v2/models/NAME/versions/V/infer`` or a gRPC
``model_version``, else the canary split), decodes the input form (:mod:`.inputs`), derives and
normalises the features off the event loop, predicts through the version's :class:`MicroBatcher`
(the forward on a worker thread), encodes the answer, and hands the batch to the observers.
The answering version is in the response (v2 ``model_version``, v1 ``model_version``) and in the
``x-earthops-model-version`` header.

Canary split: a smooth weighted round robin over the versions' percentages (nginx's algorithm):
deterministic, and any window of 100 requests holds each version's share to within one request.
"""

from __future__ import annotations

import asyncio
import base64
import json
import posixpath
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
from kserve import Model
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from earthops.core.store import Store, StoreError
from earthops_runtime.data.features import plan_for_features
from earthops_runtime.errors import SpecError
from earthops_runtime.serving import inputs as forms
from earthops_runtime.serving import metrics
from earthops_runtime.serving.batching import MicroBatcher
from earthops_runtime.serving.errors import BadInput
from earthops_runtime.serving.loaded import LoadedModel
from earthops_runtime.serving.observe import Observers
from earthops_runtime.serving.scene import Mosaic, OpenScene, feature_collection, footprints, plan_windows

VERSION_HEADER = "x-earthops-model-version"
#: Set by the REST app from ``/v2/models/NAME/versions/V/...``: the version the request asks for.
PIN_HEADER = "x-earthops-pinned-version"
DEFAULT_MAX_SCENE_BYTES = 1 << 30
#: v1 bodies and answers with more values than this are decoded / encoded on a worker thread, not on
#: the event loop (about the 256 KiB of JSON above which v2 bodies are decoded off the loop).
_DECODE_INLINE_VALUES = 32 << 10
#: Pixel values (width x height x bands of a scene, and H x W x classes of a segmentation mosaic) at
#: most: a small compressed GeoTIFF can declare a huge grid (1 GiB of float32 for the mosaic).
DEFAULT_MAX_SCENE_PIXELS = 1 << 28


class Router:
    """Smooth weighted round robin: ``next()`` names the version for the next request."""

    def __init__(self, weights: Mapping[str, int]):
        if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"canary weights {dict(weights)}: need non-negative weights with a positive sum")
        self.weights = dict(weights)
        self._current = dict.fromkeys(weights, 0)

    def next(self) -> str:
        total = sum(self.weights.values())
        for v, w in self.weights.items():
            self._current[v] += w
        best = max(self._current, key=lambda v: self._current[v])
        self._current[best] -= total
        return best


class EOModel(Model):
    """See the module docstring."""

    def __init__(self, name: str, versions: Sequence[LoadedModel], *, weights: Sequence[int] | None = None,
                 observers: Observers | None = None, max_batch_size: int = 32, max_batch_wait_ms: float = 2.0,
                 max_scene_bytes: int = DEFAULT_MAX_SCENE_BYTES, scene_uri_prefixes: Sequence[str] = (),
                 output_uri_prefixes: Sequence[str] = (), max_scene_pixels: int = DEFAULT_MAX_SCENE_PIXELS):
        super().__init__(name, return_response_headers=True)
        if not versions:
            raise ValueError("a served model needs at least one version")
        named = [f"{v.card.name}/{v.card.version}" for v in versions]
        if len(set(named)) != len(named):
            raise ValueError(f"versions served under {name!r} must differ, got {', '.join(named)} "
                             "(the canary must be another registry version)")
        tags = [v.version for v in versions]
        if len(set(tags)) != len(tags):  # a canary of another model with the same version number
            # the primary keeps its registry version (what a drift monitor of it filters on)
            tags = tags[:1] + [f"{v.card.name}-{v.card.version}" for v in versions[1:]]
            for v, tag in zip(versions, tags, strict=True):
                v.version = tag
        self.versions = {v.version: v for v in versions}
        self.router = Router(dict(zip(tags, weights or [100 // len(tags)] * len(tags), strict=True)))
        self.observers = observers or Observers()
        self.max_scene_bytes = max_scene_bytes
        self.max_scene_pixels = max_scene_pixels
        #: Scene URIs a client may ask for (none: any file:// or s3:// URI the process can read)
        self.scene_uri_prefixes = tuple(scene_uri_prefixes)
        #: Where clients may have results written (none: nowhere, results come back inline)
        self.output_uri_prefixes = tuple(output_uri_prefixes)
        self.max_batch_size = max_batch_size
        self._io = ThreadPoolExecutor(max_workers=4, thread_name_prefix="earthops-decode")
        self.batchers = {v.version: MicroBatcher(v.forward, max_batch_size=max_batch_size,
                                                 max_wait_ms=max_batch_wait_ms,
                                                 on_batch=self._on_batch(v.version))
                         for v in versions}
        self.ready = True  # versions are loaded and warmed up before they get here

    @property
    def primary(self) -> LoadedModel:
        return next(iter(self.versions.values()))

    def load(self) -> bool:
        self.ready = True
        return True

    def _on_batch(self, version: str):
        def record(size: int, seconds: float) -> None:
            metrics.BATCH_SIZE.labels(self.name, version).observe(size)
            metrics.STAGE_SECONDS.labels(self.name, version, "forward").observe(seconds)
        return record

    @contextmanager
    def _stage(self, version: str, stage: str):
        start = time.perf_counter()
        yield
        metrics.STAGE_SECONDS.labels(self.name, version, stage).observe(time.perf_counter() - start)

    # --- metadata (v2 GET /v2/models/NAME) -------------------------------------------------------

    def get_input_types(self) -> list[dict[str, Any]]:
        card = self.primary.card
        return [{"name": "chips", "datatype": "FP32", "shape": [-1, len(card.features), *card.chip_shape]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        card = self.primary.card
        shape = [-1, card.num_outputs, *card.chip_shape] if card.task == "segmentation" else [-1, card.num_outputs]
        return [{"name": "probabilities", "datatype": "FP32", "shape": shape},
                {"name": "class_index", "datatype": "INT64", "shape": [-1, *shape[2:]] if card.task != "multilabel" else shape}]

    # --- the request path ------------------------------------------------------------------------

    def pick(self, headers: Mapping[str, str] | None, request: Any) -> LoadedModel:
        pinned = (headers or {}).get(PIN_HEADER) or (getattr(request, "model_version", None) or None)
        if pinned:
            if pinned not in self.versions:
                raise BadInput("unknown_version", f"model {self.name} has no version {pinned!r}",
                               accepted=f"versions served: {', '.join(self.versions)}", status=404)
            return self.versions[pinned]
        return self.versions[self.router.next()]

    async def predict(self, payload: Any, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> Any:
        model = None
        try:
            model = self.pick(headers, payload)
            response = await self._predict(model, payload, (headers or {}).get("x-request-id"))
        except BadInput as exc:
            metrics.ERRORS.labels(self.name, exc.code).inc()
            exc.counted = True
            raise
        if response_headers is not None:
            response_headers[VERSION_HEADER] = model.version
        return response

    async def _predict(self, model: LoadedModel, payload: Any, request_id: str | None) -> Any:
        card = model.card
        v2 = isinstance(payload, InferRequest)
        with self._stage(model.version, "decode"):
            if v2:
                decoded, params = forms.decode_v2(payload.inputs, card, payload.parameters)
            elif _values_in(payload) > _DECODE_INLINE_VALUES:  # np.asarray of nested lists: seconds, off the loop
                decoded, params = await asyncio.get_running_loop().run_in_executor(self._io, forms.decode_v1, payload, card)
            else:
                decoded, params = forms.decode_v1(payload, card)
        if isinstance(decoded, forms.Scene):
            return await self._scene(model, decoded, params, payload, request_id)
        with self._stage(model.version, "features"):
            if isinstance(decoded, forms.Chips):
                forms.check_chips(decoded.x, card)
                x, features = decoded.x, None
            else:
                forms.check_band_chips(decoded.x, decoded.names, card)
                x, features = await asyncio.get_running_loop().run_in_executor(self._io, _from_bands, decoded, params, card)
        probs = await self.batchers[model.version].predict(x)
        with self._stage(model.version, "encode"):
            if probs.size > _DECODE_INLINE_VALUES:  # probs.tolist() of a segmentation batch, off the loop
                response = await asyncio.get_running_loop().run_in_executor(self._io, self._encode, model, probs,
                                                                            payload, request_id)
            else:
                response = self._encode(model, probs, payload, request_id)
        self._count(model, probs)
        if self.observers:
            self._observe(model, features if features is not None else forms.denormalise(x, card), probs, request_id)
        return response

    def _observe(self, model: LoadedModel, features: np.ndarray, probs: np.ndarray, request_id: str | None) -> None:
        card = model.card
        self.observers.publish(model_name=self.name, model_version=model.version, features=features,
                               feature_names=card.features, outputs=probs, class_names=card.classes,
                               task=card.task, request_id=request_id)

    def _count(self, model: LoadedModel, probs: np.ndarray) -> None:
        card = model.card
        if card.task == "multilabel":
            counts = (probs > 0.5).sum(axis=0)
        else:
            counts = np.bincount(probs.argmax(axis=1).reshape(-1), minlength=card.num_outputs)
        for name, n in zip(card.classes, counts, strict=True):
            if n:
                metrics.PREDICTIONS.labels(self.name, model.version, name).inc(int(n))

    def _encode(self, model: LoadedModel, probs: np.ndarray, payload: Any, request_id: str | None) -> Any:
        card = model.card
        index = (probs > 0.5).astype(np.int64) if card.task == "multilabel" else probs.argmax(axis=1).astype(np.int64)
        if isinstance(payload, InferRequest):
            outputs = [InferOutput("probabilities", list(probs.shape), "FP32", data=probs.astype(np.float32)),
                       InferOutput("class_index", list(index.shape), "INT64", data=index)]
            return self._v2(model, payload, outputs, request_id)
        if card.task == "multilabel":
            labels: list[Any] = [[card.classes[k] for k in np.flatnonzero(row)] for row in index]
        elif card.task == "segmentation":
            labels = index.tolist()
        else:
            labels = [card.classes[int(k)] for k in index]
        return {"predictions": probs.tolist(), "labels": labels, "classes": list(card.classes),
                "model_name": self.name, "model_version": model.version}

    def _v2(self, model: LoadedModel, request: InferRequest, outputs: list[InferOutput], request_id: str | None) -> InferResponse:
        if request.from_grpc:
            # KServe 0.21's to_grpc tests an ndarray's truth value when outputs go raw: hand them over raw
            for out in outputs:
                if isinstance(out.data, np.ndarray):
                    out.set_data_from_numpy(out.data, binary_data=True)
        return InferResponse(response_id=request.id or request_id or str(uuid.uuid4()), model_name=self.name,
                             model_version=model.version, infer_outputs=outputs, from_grpc=request.from_grpc,
                             use_binary_outputs=request.use_binary_outputs, requested_outputs=request.request_outputs)

    # --- scenes --------------------------------------------------------------------------------------

    async def _scene(self, model: LoadedModel, scene: forms.Scene, params: forms.Parameters, payload: Any,
                     request_id: str | None) -> Any:
        card = model.card
        loop = asyncio.get_running_loop()
        with self._stage(model.version, "decode"):
            data = scene.data if scene.data is not None else await loop.run_in_executor(self._io, self._read_uri, scene.uri)
            label = scene.uri or "the scene"
            opened = await loop.run_in_executor(self._io, OpenScene, data, label)
        try:
            names = opened.band_names(params)
            try:
                plan_for_features(card.features, names)
            except SpecError as exc:
                raise BadInput("bands", f"{label}: {exc.detail}",
                               accepted=f"a GeoTIFF whose bands give the model's features {', '.join(card.features)}") from None
            self._check_pixels(label, "scene", opened.ds.width, opened.ds.height, opened.ds.count)
            layout = plan_windows(opened.ds.height, opened.ds.width, card.chip_shape, params.overlap, opened.area(params.bbox))
            if card.task == "segmentation":
                self._check_pixels(label, "mosaic", int(layout.area.width), int(layout.area.height), card.num_outputs)
            chunks = opened.chunks(layout, names, list(range(1, len(names) + 1)), params, self.max_batch_size)
            mosaic = Mosaic(layout, card.num_outputs) if card.task == "segmentation" else None
            features_out: list[dict[str, Any]] = []

            def next_chunk() -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray] | None:
                item = next(chunks, None)
                if item is None:
                    return None
                windows, raw = item
                feats = forms.band_features(names, raw, card)
                return windows, forms.normalise(feats, card), feats

            pending = loop.run_in_executor(self._io, next_chunk)
            try:
                while True:
                    with self._stage(model.version, "features"):
                        item = await pending
                    if item is None:
                        break
                    windows, x, feats = item
                    pending = loop.run_in_executor(self._io, next_chunk)  # read the next chunk during this forward
                    probs = await self.batchers[model.version].predict(x)
                    self._count(model, probs)
                    if mosaic is not None:
                        mosaic.add(windows, probs)
                    else:
                        features_out.extend(footprints(opened.ds, layout, windows, probs, card))
                    if self.observers:
                        self._observe(model, feats, probs, request_id)
            finally:
                if not pending.done():
                    await asyncio.wait([pending])
            with self._stage(model.version, "encode"):
                if mosaic is None:
                    return self._scene_geojson(model, feature_collection(opened.ds, features_out, card), payload, request_id)
                cog = await loop.run_in_executor(self._io, mosaic.cog, opened.ds, card, params.output)
                return await self._scene_cog(model, cog, params, payload, request_id)
        finally:
            opened.close()

    def _check_pixels(self, label: str, what: str, width: int, height: int, count: int) -> None:
        """413 for a scene (or the mosaic of its predicted area) over ``max_scene_pixels`` values."""
        pixels = width * height * count
        if pixels > self.max_scene_pixels:
            raise BadInput("too_large", f"{label}: the {what} is {width}x{height}x{count} = {pixels} pixel values",
                           accepted=f"at most {self.max_scene_pixels} (--max-scene-pixels)", status=413)

    def _read_uri(self, uri: str) -> bytes:
        """A scene's bytes from ``file://`` or ``s3://`` (the store's credentials), within the allowed
        prefixes and the size limit."""
        given, uri = uri, normalised_uri(uri, "scene", "scene")
        if self.scene_uri_prefixes and not any(uri.startswith(p) for p in self.scene_uri_prefixes):
            raise BadInput("scene", f"scene {given}: not under an allowed prefix",
                           accepted=f"URIs under {', '.join(self.scene_uri_prefixes)}", status=403)
        parent, _, name = uri.rstrip("/").rpartition("/")
        try:
            if urlparse(uri).scheme == "file":
                path = Path(urlparse(uri).path)  # normalised_uri decoded it
                size = path.stat().st_size if path.is_file() else None
            else:
                store = Store.from_uri(parent)
                size = store.fs.size(f"{store.uri.removeprefix('s3://')}/{name}") if store.exists(name) else None
        except (StoreError, OSError) as exc:
            raise BadInput("scene", f"scene {uri}: {exc}") from None
        if size is None:
            raise BadInput("scene", f"scene {uri}: no such file", accepted="an existing file:// or s3:// GeoTIFF", status=404)
        if size > self.max_scene_bytes:
            raise BadInput("too_large", f"scene {uri}: {size} bytes", accepted=f"at most {self.max_scene_bytes} bytes",
                           status=413)
        try:
            return path.read_bytes() if urlparse(uri).scheme == "file" else store.read_bytes(name)
        except (StoreError, OSError) as exc:
            raise BadInput("scene", f"scene {uri}: {exc}") from None

    def _scene_geojson(self, model: LoadedModel, fc: dict[str, Any], payload: Any, request_id: str | None) -> Any:
        if isinstance(payload, InferRequest):
            text = json.dumps(fc).encode()
            out = InferOutput("geojson", [1], "BYTES", data=np.array([text], dtype=object))
            return self._v2(model, payload, [out], request_id)
        return {"predictions": [fc], "model_name": self.name, "model_version": model.version}

    async def _scene_cog(self, model: LoadedModel, cog: bytes, params: forms.Parameters, payload: Any,
                         request_id: str | None) -> Any:
        if params.output_uri:
            uri = params.output_uri if "://" in params.output_uri else f"file://{params.output_uri}"
            uri = normalised_uri(uri, "output_uri", "parameter output_uri")
            if not any(uri.startswith(p) for p in self.output_uri_prefixes):
                allowed = ", ".join(self.output_uri_prefixes) or "none: the predictor was started without --output-uri-prefix"
                raise BadInput("output_uri", f"parameter output_uri {params.output_uri}: not under an allowed prefix",
                               accepted=f"URIs under {allowed}; or leave output_uri out for the result inline", status=403)
            parent, _, name = uri.rpartition("/")
            try:
                await asyncio.get_running_loop().run_in_executor(self._io, lambda: Store.from_uri(parent).write_bytes(name, cog))
            except StoreError as exc:
                raise BadInput("output_uri", f"parameter output_uri {params.output_uri}: {exc}") from None
            result: dict[str, Any] = {"uri": uri}
        else:
            result = {"b64": base64.b64encode(cog).decode()}
        if isinstance(payload, InferRequest):
            if "uri" in result:
                out = InferOutput("cog_uri", [1], "BYTES", data=np.array([result["uri"].encode()], dtype=object))
            else:
                binary = payload.from_grpc or payload.use_binary_outputs or any(
                    o.name == "cog" and o.binary_data for o in payload.request_outputs or [])
                value = cog if binary else result["b64"].encode()
                out = InferOutput("cog", [1], "BYTES", data=np.array([value], dtype=object),
                                  parameters=None if binary else {"content_encoding": "base64"})
            return self._v2(model, payload, [out], request_id)
        return {"predictions": [{"cog": result}], "model_name": self.name, "model_version": model.version}


def normalised_uri(uri: str, reason: str, what: str) -> str:
    """``uri`` with its path percent-decoded and normalised (``a/./b``, ``a//b``: ``a/b``), what a
    prefix is compared with and what is read or written; a ``..`` segment (also ``%2e%2e``) is refused
    with 400, for ``file://`` and ``s3://`` alike: the OS or the object store must not resolve the
    URI to somewhere the prefix check did not see."""
    parsed = urlparse(uri)
    path = unquote(parsed.path)
    if ".." in path.split("/") or ".." in unquote(parsed.netloc).split("/"):
        raise BadInput(reason, f"{what} {uri}: a '..' segment", accepted="a URI without '..' path segments")
    norm = posixpath.normpath(path) if path else ""
    if norm.startswith("//"):  # POSIX normpath keeps a leading '//'
        norm = "/" + norm.lstrip("/")
    return f"{parsed.scheme}://{parsed.netloc}{norm}"


def _values_in(payload: Any) -> int:
    """About how many values a v1 body holds: the product of the lengths down its first elements
    (instances x bands x rows x columns), without walking all of it."""
    n, node = 1, payload.get("instances") if isinstance(payload, Mapping) else None
    for _ in range(8):
        if isinstance(node, list) and node:
            n, node = n * len(node), node[0]
        elif isinstance(node, Mapping) and node:
            n, node = n * len(node), next(iter(node.values()))
        else:
            break
    return n


def _from_bands(decoded: forms.Bands, params: forms.Parameters, card: Any) -> tuple[np.ndarray, np.ndarray]:
    raw = forms.calibrate(decoded.names, decoded.x, decoded.integer, params)
    features = forms.band_features(decoded.names, raw, card)
    return forms.normalise(features, card), features


__all__ = ["PIN_HEADER", "VERSION_HEADER", "EOModel", "Router", "normalised_uri"]
