"""The shared core: what both the control plane and the data plane need, and nothing else.

The store (:mod:`.store`), the errors both sides raise (:mod:`.errors`), the runtime-input codec
(:mod:`.inputs`), run identity (:mod:`.runs`), the model registry reader (:mod:`.registry`) and the
environment of Ray's workers (:mod:`.rayenv`). It
imports only :mod:`earthops.api` and light libraries (fsspec, s3fs, pydantic).
"""
