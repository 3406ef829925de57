"""Kinds whose runtime is not built in this version: the operator says so in their status.

Without this, such a resource would sit with no status at all and nobody would know why. With it, the
resource is Failed with reason ``RuntimeNotAvailable``, a Warning event is posted, and the status
follows each spec generation. A kind's capability replaces this by registering its own handlers.
"""

from __future__ import annotations

from typing import Any

import kopf

from earthops.api import GROUP, KINDS, VERSION, KindInfo
from earthops.control.handlers.metrics import RECONCILES
from earthops.control.status import Execution, derive

REASON = "RuntimeNotAvailable"


def unsupported_status(info: KindInfo, generation: int | None, previous: dict[str, Any] | None) -> dict[str, Any]:
    message = (f"this version of the earthops operator cannot run {info.kind} yet (no runtime is built for it); "
               "the resource is kept but nothing runs")
    return derive(info, generation=generation, previous=previous, execution=Execution("Failed", REASON, message))


def register(info: KindInfo) -> None:
    @kopf.on.resume(GROUP, VERSION, info.plural)
    @kopf.on.create(GROUP, VERSION, info.plural)
    @kopf.on.update(GROUP, VERSION, info.plural, field="spec")
    def _answer(body: kopf.Body, meta: kopf.Meta, status: kopf.Status, patch: kopf.Patch, **_: Any) -> None:
        previous = {k: v for k, v in dict(status).items() if k != "kopf"}
        new = unsupported_status(info, meta.get("generation"), previous)
        if previous.get("observedGeneration") != new.get("observedGeneration") or previous.get("phase") != new["phase"]:
            kopf.warn(body, reason=REASON, message=new["message"])
        patch.status.update(new)
        RECONCILES.labels(info.kind, "unsupported").inc()


def register_all() -> list[str]:
    kinds = [info for info in KINDS.values() if info.runtime is None]
    for info in kinds:
        register(info)
    return [info.kind for info in kinds]
