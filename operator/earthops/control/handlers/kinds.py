"""Registers the handlers of every kind. Imported by the operator process.

A kind that runs is run as a RayJob (:mod:`~earthops.control.handlers.rayjobs`); a served kind
(ModelDeployment) gets a KServe InferenceService (:mod:`~earthops.control.handlers.serving`); a kind
without a runtime is answered by :mod:`earthops.control.handlers.unsupported`."""

from earthops.control.handlers import rayjobs, serving, unsupported

RAYJOB_KINDS = rayjobs.register_all()
SERVED_KINDS = serving.register_all()
UNSUPPORTED_KINDS = unsupported.register_all()
