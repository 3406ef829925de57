"""The runtime-input codec: how the control plane tells a runtime which published runs it references.

The control plane resolves a resource's references to the URIs of their published runs
(:func:`earthops.control.reconcile.inputs.resolve_inputs`) and writes them on the runtime's command
line as ``--input key=<URI>``; the data plane (``python -m earthops_runtime run``) reads them back into
``inputs={key: uri}``. Both sides use these two functions, so the format is written once.
"""

from __future__ import annotations

from collections.abc import Mapping

INPUT_FLAG = "--input"


def input_args(inputs: Mapping[str, str]) -> list[str]:
    """``["--input", "dataset=<URI>", ...]`` in key order: the runtime command's inputs."""
    out: list[str] = []
    for key in sorted(inputs):
        out += [INPUT_FLAG, f"{key}={inputs[key]}"]
    return out


def parse_input_args(values: list[str] | None) -> dict[str, str]:
    """``["dataset=<URI>"]`` -> ``{"dataset": "<URI>"}``; ValueError on a value without ``key=``."""
    out: dict[str, str] = {}
    for value in values or []:
        key, sep, uri = value.partition("=")
        if not sep or not key or not uri:
            raise ValueError(f"{INPUT_FLAG} {value!r}: expected key=URI (e.g. dataset=s3://bucket/datasets/...)")
        if key in out:
            raise ValueError(f"{INPUT_FLAG} {key}=...: given twice")
        out[key] = uri
    return out
