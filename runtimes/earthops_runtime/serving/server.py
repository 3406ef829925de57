"""The predictor's server: models built from registry URIs, KServe's REST (and gRPC) data plane,
earthops' limits and error bodies, and one line when it is ready.

* :func:`build_models` loads the version (and a canary) into one :class:`EOModel`.
* :func:`create_app` is the ASGI app (FastAPI) with KServe's v1/v2 routes, ``/metrics``, and an
  earthops layer in front: bodies over ``max_payload_bytes`` get 413, ``/v2/models/NAME/versions/V/...``
  pins a version (404 for one that is not served), and every refusal is a JSON body
  ``{"error", "reason", "accepted"}``. Tests drive it in process through ``httpx.ASGITransport``.
* :func:`serve` runs it with uvicorn (and KServe's gRPC v2 server when asked) until SIGINT/SIGTERM,
  printing one line with the URL once the models are warm and the port is open.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, ORJSONResponse
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.server import RESTServer
from starlette.concurrency import run_in_threadpool

from earthops_runtime.serving import metrics, protocol
from earthops_runtime.serving.errors import BadInput
from earthops_runtime.serving.loaded import LoadedModel, ModelLoadError
from earthops_runtime.serving.model import DEFAULT_MAX_SCENE_PIXELS, PIN_HEADER, EOModel
from earthops_runtime.serving.observe import Observers

log = logging.getLogger(__name__)

DEFAULT_MAX_PAYLOAD_BYTES = 64 << 20
#: Bodies up to this size are decoded on the event loop (a thread hop costs more than parsing them).
_DECODE_INLINE_BYTES = 256 << 10
_VERSIONED = re.compile(r"^/v2/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)(?P<rest>/infer|/ready)?$")
_MODEL_IN_PATH = re.compile(r"^/v[12]/models/(?P<name>[^/:]+)")


def build_models(model_uri: str, model_name: str, *, canary_model_uri: str | None = None,
                 canary_percent: int | None = None, device: str = "auto", observers: Sequence[object] = (),
                 max_batch_size: int = 32, max_batch_wait_ms: float = 2.0,
                 scene_uri_prefixes: Sequence[str] = (), output_uri_prefixes: Sequence[str] = (),
                 max_scene_pixels: int = DEFAULT_MAX_SCENE_PIXELS) -> list[EOModel]:
    """The served models: ``model_name`` answered by ``model_uri`` (and ``canary_model_uri`` for
    ``canary_percent`` of the requests). Raises :class:`~earthops_runtime.serving.loaded.ModelLoadError`
    naming the URI of a version that cannot be loaded or run."""
    if (canary_model_uri is None) != (canary_percent is None):
        raise ValueError("a canary needs both --canary-model-uri and --canary-percent")
    if canary_percent is not None and not 0 <= canary_percent <= 100:
        raise ValueError(f"--canary-percent {canary_percent}: accepted: 0 to 100")
    versions = [LoadedModel.load(model_uri, device)]
    weights = [100]
    if canary_model_uri is not None:
        versions.append(LoadedModel.load(canary_model_uri, device))
        weights = [100 - int(canary_percent or 0), int(canary_percent or 0)]
        _check_compatible(versions[0], versions[1])
    return [EOModel(model_name, versions, weights=weights, observers=Observers(observers),
                    max_batch_size=max_batch_size, max_batch_wait_ms=max_batch_wait_ms,
                    scene_uri_prefixes=scene_uri_prefixes, output_uri_prefixes=output_uri_prefixes,
                    max_scene_pixels=max_scene_pixels)]


def _check_compatible(main: LoadedModel, canary: LoadedModel) -> None:
    """Clients send one payload to the name: both versions must take the same input and name the same classes."""
    a, b = main.card, canary.card
    for what, x, y in (("features", a.features, b.features), ("chip size", a.chip_shape, b.chip_shape),
                       ("task", a.task, b.task), ("classes", a.classes, b.classes)):
        if x != y:
            raise ModelLoadError(f"canary {canary.uri}: its {what} {y} differ from {main.uri}'s {x}; "
                                 "a canary must take the same requests and answer with the same classes")


# --- the ASGI app --------------------------------------------------------------------------------------


def _error(status: int, body: dict[str, Any], model: str = "") -> JSONResponse:
    metrics.ERRORS.labels(model, str(body.get("reason", "error"))).inc()
    return JSONResponse(status_code=status, content=body)


def _model_of(request: Any) -> str:
    m = _MODEL_IN_PATH.match(request.url.path)
    return m.group("name") if m else ""


def _handlers(repository: ModelRepository) -> dict[Any, Callable[..., Any]]:
    def served() -> str:
        return ", ".join(repository.get_models()) or "(none)"

    async def bad_input(request: Any, exc: InvalidInput) -> JSONResponse:
        if isinstance(exc, BadInput):
            if not exc.counted:  # refused before the model saw it (the v2 body decoder)
                metrics.ERRORS.labels(_model_of(request), exc.code).inc()
            return JSONResponse(status_code=exc.status, content=exc.body())
        return _error(400, {"error": str(exc), "reason": "invalid_input"}, _model_of(request))

    async def not_found(request: Any, exc: ModelNotFound) -> JSONResponse:
        return _error(404, {"error": str(exc), "reason": "unknown_model", "accepted": f"models served: {served()}"})

    async def invalid_request(request: Any, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()[:5])
        return _error(400, {"error": f"not a valid inference request: {problems}", "reason": "json",
                            "accepted": "a v2 inference request: {\"inputs\": [{\"name\", \"shape\", \"datatype\", "
                                        "\"data\"}]} (JSON), or the binary tensor extension"}, _model_of(request))

    return {BadInput: bad_input, InvalidInput: bad_input, ModelNotFound: not_found,
            RequestValidationError: invalid_request}


class EarthopsLayer:
    """ASGI middleware: the payload limit (413) and version-pinned v2 routes (see the module docstring)."""

    def __init__(self, app: Any, repository: ModelRepository, max_payload_bytes: int):
        self.app = app
        self.repository = repository
        self.max_payload_bytes = max_payload_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        m = _VERSIONED.match(scope["path"])
        pin = PIN_HEADER.encode()
        if any(k.lower() == pin for k, _ in scope["headers"]):  # only the path pins a version, never a client
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() != pin]}
        if m:
            model = self.repository.get_model(m.group("name"))
            versions = list(getattr(model, "versions", {}) or {})
            if model is not None and m.group("version") not in versions:
                await _send_json(send, 404, {"error": f"model {m.group('name')} has no version {m.group('version')!r}",
                                             "reason": "unknown_version", "accepted": f"versions served: {', '.join(versions)}"},
                                 m.group("name"))
                await _drain(receive)
                return
            path = f"/v2/models/{m.group('name')}{m.group('rest') or ''}"
            scope = {**scope, "path": path, "raw_path": path.encode(),
                     "headers": [*scope["headers"], (PIN_HEADER.encode(), m.group("version").encode())]}
        declared = dict(scope["headers"]).get(b"content-length")
        limit = self.max_payload_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._too_large(send, int(declared), scope)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                await self._too_large(send, size, scope)
                while more:
                    more = (await receive()).get("more_body", False)
                return
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Any, size: int, scope: dict[str, Any]) -> None:
        m = _MODEL_IN_PATH.match(scope["path"])
        await _send_json(send, 413, {"error": f"the request body has {size} bytes or more, over the limit",
                                     "reason": "too_large",
                                     "accepted": f"at most {self.max_payload_bytes} bytes (--max-payload-bytes); send a "
                                                 "large scene as a store URI (scene_uri / {\"scene\": {\"uri\": ...}})"},
                         m.group("name") if m else "")


async def _send_json(send: Any, status: int, body: dict[str, Any], model: str) -> None:
    metrics.ERRORS.labels(model, str(body["reason"])).inc()
    data = orjson.dumps(body)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


async def _drain(receive: Any) -> None:
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False) and message["type"] != "http.disconnect"


class App:
    """The ASGI app and the KServe pieces behind it (the gRPC server shares the data plane)."""

    def __init__(self, models: Sequence[EOModel], *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES):
        if max_payload_bytes < 1:
            raise ValueError(f"--max-payload-bytes {max_payload_bytes}: must be >= 1")
        self.models = list(models)
        self.repository = ModelRepository()
        for m in self.models:
            self.repository.update(m)
        self.dataplane = DataPlane(model_registry=self.repository)
        self.extension = ModelRepositoryExtension(model_registry=self.repository)
        rest = RESTServer("earthops_runtime.serving:app", self.dataplane, self.extension, http_port=0)
        app = FastAPI(title="earthops predictor", docs_url=None, redoc_url=None, default_response_class=ORJSONResponse)
        # v2 inference decoded and encoded from numpy (protocol.py); before KServe's route for the same path
        app.add_api_route("/v2/models/{model_name}/infer", self.v2_infer, methods=["POST"])
        rest._register_endpoints(app)  # noqa: SLF001 - KServe's routes on an app of our own (one per App)
        rest._add_exception_handlers(app)  # noqa: SLF001
        for exc, handler in _handlers(self.repository).items():
            app.add_exception_handler(exc, handler)
        self.fastapi = app
        self.asgi = EarthopsLayer(app, self.repository, max_payload_bytes)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.asgi(scope, receive, send)

    async def v2_infer(self, request: Request, model_name: str) -> Response:
        """``POST /v2/models/NAME/infer``: KServe's v2 endpoint, with the body decoded and the answer
        encoded by :mod:`.protocol` (large bodies off the event loop)."""
        body = await request.body()
        headers = dict(request.headers)
        if len(body) > _DECODE_INLINE_BYTES:
            infer_request = await run_in_threadpool(protocol.decode_request, body, headers, model_name)
        else:
            infer_request = protocol.decode_request(body, headers, model_name)
        if not await self.dataplane.model_ready(model_name, True):  # ModelNotFound for an unknown name
            raise ModelNotReady(model_name)
        response, response_headers = await self.dataplane.infer(model_name=model_name, request=infer_request,
                                                                headers=headers)
        content, json_length = protocol.encode_response(response, infer_request)
        out = {k: v for k, v in response_headers.items() if k.lower() not in ("content-length", "content-type")}
        if json_length is None:
            return Response(content, headers=out, media_type="application/json")
        out[protocol.HEADER_LENGTH] = str(json_length)
        return Response(content, headers=out, media_type="application/octet-stream")

    def close(self) -> None:
        for m in self.models:
            m.observers.close()


def create_app(models: Sequence[EOModel], *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> App:
    """The in-process ASGI app (see the module docstring)."""
    return App(models, max_payload_bytes=max_payload_bytes)


def serve(models: Sequence[EOModel], *, http_port: int = 8080, host: str = "0.0.0.0", grpc_port: int | None = None,
          max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, grpc_max_threads: int = 4,
          announce: Callable[[str], None] | None = None) -> None:
    """Serve until interrupted. ``announce(line)`` gets the ready line (default: print to stdout)."""
    import uvicorn

    app = create_app(models, max_payload_bytes=max_payload_bytes)
    config = uvicorn.Config(app, host=host, port=http_port, log_config=None, timeout_keep_alive=65,
                            loop="asyncio", lifespan="off", access_log=False)
    server = uvicorn.Server(config)

    async def main() -> None:
        tasks = [asyncio.create_task(server.serve(), name="rest")]
        grpc = None
        if grpc_port is not None:
            from kserve.protocol.grpc.server import GRPCServer

            grpc = GRPCServer(grpc_port, app.dataplane, app.extension,
                              kwargs={"grpc_max_send_message_length": max_payload_bytes,
                                      "grpc_max_receive_message_length": max_payload_bytes}, grace_period=5)
            tasks.append(asyncio.create_task(grpc.start(grpc_max_threads), name="grpc"))
        while not server.started:
            done = [t for t in tasks if t.done()]
            if done:
                done[0].result()
                raise SystemExit(f"error: the HTTP server on {host}:{http_port} stopped before it started")
            await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        line = ready_line(f"http://{shown}:{port}", models, grpc_port)
        (announce or _print)(line)
        await tasks[0]
        if grpc is not None:
            await grpc.stop()
            for t in tasks[1:]:
                t.cancel()

    try:
        asyncio.run(main())
    finally:
        app.close()


def ready_line(url: str, models: Sequence[EOModel], grpc_port: int | None) -> str:
    """``earthops predictor ready at URL ...``: the URL first, then what is served where."""
    parts = []
    for m in models:
        split = ", ".join(f"{v} {w}%" for v, w in m.router.weights.items())
        parts.append(f"model {m.name} ({split}): {url}/v2/models/{m.name}/infer, {url}/v1/models/{m.name}:predict")
    grpc = f"; gRPC v2 on port {grpc_port}" if grpc_port is not None else ""
    return f"earthops predictor ready at {url} — {'; '.join(parts)}{grpc}"


def _print(line: str) -> None:
    print(line, flush=True)
    sys.stdout.flush()


__all__ = ["DEFAULT_MAX_PAYLOAD_BYTES", "App", "build_models", "create_app", "ready_line", "serve"]
