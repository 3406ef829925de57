"""kopf wiring: thin handlers that call the pure functions in :mod:`earthops.control.reconcile` and
:mod:`earthops.control.status`, apply the result, patch status and post events.

Importing :mod:`earthops.control.handlers.kinds` registers the handlers of every kind with kopf's default
registry. Each kind's capability adds its module there.
"""
