"""The control plane: reconcile (pure decisions), status derivation, the kopf handlers, the embedded
executor and the CLI. It stands on :mod:`earthops.api` and :mod:`earthops.core`; it never imports the
data plane, except the CLI through the lazily imported :mod:`earthops_runtime.facade`."""
