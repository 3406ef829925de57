"""Registers the handlers of every kind. Imported by the operator process.

A kind with a runtime is run as a RayJob (ModelDeployment, served by KServe, will have its own);
a kind without one is answered by :mod:`earthops.control.handlers.unsupported`."""

from earthops.control.handlers import rayjobs, unsupported

RAYJOB_KINDS = rayjobs.register_all()
UNSUPPORTED_KINDS = unsupported.register_all()
