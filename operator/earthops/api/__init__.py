"""The earthops contract: pydantic models of the four kinds, from which the CRDs are generated.

Light by design: this package imports pydantic and nothing heavy.
"""

from earthops.api.manifests import ManifestError, load_manifests, parse_resource
from earthops.api.resources import (
    API_VERSION,
    CATEGORY,
    GROUP,
    KINDS,
    VERSION,
    AblationStudy,
    EODataset,
    KindInfo,
    ModelDeployment,
    Resource,
    TuningExperiment,
    kind_for,
)

__all__ = [
    "API_VERSION", "CATEGORY", "GROUP", "KINDS", "VERSION", "AblationStudy", "EODataset", "KindInfo",
    "ManifestError", "ModelDeployment", "Resource", "TuningExperiment", "kind_for", "load_manifests",
    "parse_resource",
]
