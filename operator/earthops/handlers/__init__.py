"""kopf wiring: thin handlers that call the pure functions in :mod:`earthops.reconcile` and
:mod:`earthops.status`, apply the result, patch status and post events.

Importing :mod:`earthops.handlers.kinds` registers the handlers of every kind with kopf's default
registry. Each kind's capability adds its module there; a kind without a runtime yet is answered by
:mod:`earthops.handlers.unsupported`.
"""
