"""earthops: Kubernetes-native machine learning on Earth-observation data.

Three layers, one folder each; a module may import only its own layer and the ones below it (``make
lint`` checks this with import-linter):

* :mod:`earthops.api` — the contract: pydantic models of the four kinds, the source of the CRDs.
* :mod:`earthops.core` — the shared core both planes stand on: the store, errors, the runtime-input
  codec, run keys, the model registry reader.
* :mod:`earthops.control` — the control plane: reconcile (pure), status derivation, the kopf handlers,
  the embedded executor and the CLI.

The data plane is the separate package :mod:`earthops_runtime`, which stands on ``api`` and ``core``.
Nothing in this package imports torch, ray, kserve or rasterio; the CLI reaches the data plane only by
running its entrypoint as a process, or through :mod:`earthops_runtime.facade`, imported lazily.
"""

__version__ = "0.1.0"
