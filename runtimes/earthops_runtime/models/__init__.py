"""EO models by name: the zoo (``iceberg-cnn``, ``resnet18-ms``, ``unet-small``) and custom
``package.module:factory`` models, built for a dataset's bands, classes, task and chip shape."""

from earthops_runtime.models.zoo import (
    ZOO,
    ZooModel,
    accepted_parameters,
    build_model,
    model_arguments,
    model_names,
)

__all__ = ["ZOO", "ZooModel", "accepted_parameters", "build_model", "model_arguments", "model_names"]
