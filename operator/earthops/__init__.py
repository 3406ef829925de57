"""earthops: Kubernetes-native machine learning on Earth-observation data.

The package is the contract (:mod:`earthops.api`), the store (:mod:`earthops.store`) and the control
plane (reconcile, handlers, the embedded executor, the CLI). It never imports torch, ray, kserve or
rasterio: those live in the data plane, :mod:`earthops_runtime`.
"""

__version__ = "0.1.0"
