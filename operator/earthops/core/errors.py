"""Errors that cross the line between the planes: raised by the shared core, understood by both."""

from __future__ import annotations


class StoreError(RuntimeError):
    """A store operation failed; the message names the URI and the cause."""


__all__ = ["StoreError"]
