"""Open Inference Protocol (v2) REST bodies <-> KServe's ``InferRequest``/``InferResponse``, numpy first.

KServe 0.21 decodes a binary tensor into a Python list one ``.item()`` at a time, on the event loop
(seconds for a batch of chips), and encodes JSON outputs the same way. The predictor's v2 REST route
parses bodies here instead: the JSON part with orjson, binary tensors as zero-copy views of the body,
JSON data straight into numpy; and encodes answers from numpy (``tobytes``/``tolist``). KServe's data
plane still finds the model and calls it, and gRPC is KServe's own path.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse, RequestedOutput

from earthops_runtime.serving.errors import BadInput

HEADER_LENGTH = "inference-header-content-length"
#: v2 datatypes and their numpy types (BYTES: Python objects).
DATATYPES: Mapping[str, Any] = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
                                "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
                                "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
                                "BYTES": np.object_}
_ACCEPTED = ('{"inputs": [{"name", "shape", "datatype", "data"}], "parameters"?, "outputs"?} as JSON, or that header '
             'with "parameters": {"binary_data_size": n} per input followed by the raw tensors and the header\'s '
             "length in Inference-Header-Content-Length")


def _bad(message: str) -> BadInput:
    return BadInput("json", message, accepted=_ACCEPTED)


def decode_request(body: bytes, headers: Mapping[str, str], model_name: str) -> InferRequest:
    """A v2 REST body (JSON, or JSON + binary tensors) -> an ``InferRequest`` whose inputs hold numpy
    arrays or raw bytes."""
    declared = headers.get(HEADER_LENGTH)
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise _bad(f"Inference-Header-Content-Length {declared!r} is not a whole number") from None
        if not 0 < length <= len(body):
            raise _bad(f"Inference-Header-Content-Length {length} for a body of {len(body)} bytes")
        head, rest = memoryview(body)[:length], memoryview(body)[length:]
    else:
        head, rest = memoryview(body), memoryview(b"")
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"the body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _bad(f"the body is a JSON {type(doc).__name__}, expected an object")
    tensors = doc.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise _bad('"inputs" must be a non-empty list')
    inputs: list[InferInput] = []
    offset = 0
    for i, spec in enumerate(tensors):
        inp, size = _input(i, spec, rest[offset:], len(body))
        inputs.append(inp)
        offset += size
    if offset != len(rest):
        raise _bad(f"{len(rest) - offset} bytes after the binary tensors the header declares ({offset} bytes)")
    parameters = doc.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise _bad('"parameters" must be an object')
    outputs = doc.get("outputs")
    requested = None
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
            raise _bad('"outputs" must be a list of {"name": ..., "parameters"?: {"binary_data": bool}}')
        requested = [RequestedOutput(o["name"], o.get("parameters") if isinstance(o.get("parameters"), dict) else None)
                     for o in outputs]
    request_id = doc.get("id")
    return InferRequest(model_name, inputs, request_id=str(request_id) if request_id is not None else None,
                        parameters=parameters, request_outputs=requested)


def _input(i: int, spec: Any, rest: memoryview, body_size: int) -> tuple[InferInput, int]:
    if not isinstance(spec, dict):
        raise _bad(f"inputs[{i}] is not an object")
    name, shape, datatype = spec.get("name"), spec.get("shape"), spec.get("datatype")
    if not isinstance(name, str) or not name:
        raise _bad(f"inputs[{i}].name must be a non-empty string")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadInput("shape", f"inputs[{i}] ({name}).shape {shape!r}", accepted="a list of whole numbers >= 0")
    if not isinstance(datatype, str) or datatype not in DATATYPES:  # a list or object is not hashable
        raise BadInput("dtype", f"inputs[{i}] ({name}).datatype {datatype!r}", accepted=", ".join(DATATYPES))
    params = spec.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise _bad(f"inputs[{i}] ({name}).parameters must be an object")
    params = params or {}
    count = math.prod(shape)  # Python ints: np.prod wraps around in int64
    if count > body_size:  # every value takes at least a byte of the body (which is within the payload limit)
        raise BadInput("shape", f"inputs[{i}] ({name}).shape {shape}: {count} values, more than a body of "
                                f"{body_size} bytes holds", accepted="a shape matching the data sent")
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size > len(rest):
            raise _bad(f"inputs[{i}] ({name}).binary_data_size {size!r}: {len(rest)} bytes of tensor data are left")
        raw = bytes(rest[:size]) if datatype == "BYTES" else rest[:size]
        if datatype != "BYTES" and size != count * np.dtype(DATATYPES[datatype]).itemsize:
            raise BadInput("shape", f"inputs[{i}] ({name}): {size} bytes for shape {shape} of {datatype} "
                                    f"({count * np.dtype(DATATYPES[datatype]).itemsize} bytes)")
        inp = InferInput(name, shape, datatype, parameters=params)
        inp._raw_data = raw  # noqa: SLF001 - KServe's own field for binary data (as_numpy reads it)
        return inp, size
    if "data" not in spec:
        raise _bad(f"inputs[{i}] ({name}) has neither data nor parameters.binary_data_size")
    data = spec["data"]
    if datatype == "BYTES":
        values = data if isinstance(data, list) else [data]
        return InferInput(name, shape, datatype, data=values, parameters=params or None), 0
    try:
        array = np.asarray(data, dtype=DATATYPES[datatype])
    except (ValueError, TypeError, OverflowError):
        raise BadInput("dtype", f"inputs[{i}] ({name}).data is not an array of {datatype} numbers") from None
    if array.size != count:
        raise BadInput("shape", f"inputs[{i}] ({name}): {array.size} values for shape {shape} ({count})")
    try:
        array = array.reshape(shape)
    except ValueError as exc:  # a zero-size tensor with dimensions numpy cannot hold
        raise BadInput("shape", f"inputs[{i}] ({name}).shape {shape}: {exc}") from None
    return InferInput(name, shape, datatype, data=array, parameters=params or None), 0


def _bytes_tensor(values: np.ndarray) -> bytes:
    """The protocol's binary BYTES layout: each element as a 4-byte little-endian length and its bytes."""
    parts = []
    for v in values.ravel():
        b = v if isinstance(v, bytes) else str(v).encode()
        parts.append(struct.pack("<I", len(b)) + b)
    return b"".join(parts)


def encode_response(response: InferResponse, request: InferRequest) -> tuple[bytes, int | None]:
    """``(body, json_length)``: JSON, or JSON + binary outputs (``json_length`` then set) as asked —
    per output (``outputs[].parameters.binary_data``) or for all (``parameters.binary_data_output``)."""
    default = bool((request.parameters or {}).get("binary_data_output", False))
    by_name = {o.name: o for o in response.outputs}
    wanted = request.request_outputs or []
    unknown = [o.name for o in wanted if o.name not in by_name]
    if unknown:
        raise BadInput("outputs", f"no output {', '.join(map(repr, unknown))}", accepted=", ".join(by_name))
    chosen = [(by_name[o.name], o.binary_data) for o in wanted] if wanted else [(o, None) for o in response.outputs]
    entries: list[dict[str, Any]] = []
    raws: list[bytes] = []
    for out, asked in chosen:
        binary = default if asked is None else bool(asked)
        data = out.data if isinstance(out.data, np.ndarray) else np.asarray(out.data)
        entry: dict[str, Any] = {"name": out.name, "shape": list(out.shape), "datatype": out.datatype}
        params = dict(out.parameters or {})
        if binary:
            raw = _bytes_tensor(data) if out.datatype == "BYTES" else np.ascontiguousarray(data).tobytes()
            params["binary_data_size"] = len(raw)
            raws.append(raw)
        elif out.datatype == "BYTES":
            entry["data"] = [v.decode() if isinstance(v, bytes) else str(v) for v in data.ravel()]
        else:
            entry["data"] = data.ravel().tolist()
        if params:
            entry["parameters"] = params
        entries.append(entry)
    doc: dict[str, Any] = {"id": response.id, "model_name": response.model_name,
                           "model_version": response.model_version, "outputs": entries}
    if response.parameters:
        doc["parameters"] = dict(response.parameters)
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not raws:
        return head, None
    return b"".join([head, *raws]), len(head)


__all__ = ["DATATYPES", "HEADER_LENGTH", "decode_request", "encode_response"]
