"""Serving (ModelDeployment's data plane): a KServe predictor for registered EO models.

``python -m earthops_runtime.serving`` (:mod:`.__main__`) is the predictor command; the Python API
is :func:`build_models` + :func:`serve` (or :func:`create_app` for an in-process ASGI app).
Every decoded input batch passes :class:`.observe.Observers` (drift monitoring's hook, with
:class:`ObservedBatch`). See docs/serving.md.
"""

from earthops_runtime.serving.observe import ObservedBatch, Observer, Observers

__all__ = ["ObservedBatch", "Observer", "Observers", "build_models", "create_app", "serve"]


def __getattr__(name: str):
    # kserve and torch load on first use: importing the hook (ObservedBatch) stays light
    if name in ("build_models", "create_app", "serve"):
        from earthops_runtime.serving import server

        return getattr(server, name)
    raise AttributeError(name)
