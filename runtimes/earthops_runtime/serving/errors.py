"""A request the predictor refuses: a 4xx with a JSON body naming the problem and what is accepted.

``BadInput(reason, message, accepted=..., status=400)`` is KServe's ``InvalidInput`` (so KServe's own
paths and the gRPC server treat it as a client error, ``INVALID_ARGUMENT``); the REST app answers it
as ``{"error": message, "reason": reason, "accepted": accepted}`` with its status and counts it in
``earthops_serving_errors_total{reason}``.
"""

from __future__ import annotations

from kserve.errors import InvalidInput


class BadInput(InvalidInput):
    """A refused request. ``reason``: a short word for metrics (``shape``, ``dtype``, ``json``...)."""

    def __init__(self, reason: str, message: str, *, accepted: str | None = None, status: int = 400):
        self.code = reason
        self.message = message
        self.accepted = accepted
        self.status = status
        self.counted = False  # in earthops_serving_errors_total already (by the model that refused it)
        super().__init__(f"{message}; accepted: {accepted}" if accepted else message)

    def body(self) -> dict[str, object]:
        out: dict[str, object] = {"error": str(self), "reason": self.code}
        if self.accepted:
            out["accepted"] = self.accepted
        return out


__all__ = ["BadInput"]
