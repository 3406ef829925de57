"""Registers the handlers of every kind. Imported by the operator process.

A kind that runs is run as a RayJob (:mod:`~earthops.control.handlers.rayjobs`); a served kind
(ModelDeployment) gets a KServe InferenceService (:mod:`~earthops.control.handlers.serving`). Every
kind has one of the two (tests/unit/test_rbac.py checks the watched kinds against kopf's registry)."""

from earthops.control.handlers import rayjobs, serving

RAYJOB_KINDS = rayjobs.register_all()
SERVED_KINDS = serving.register_all()
