"""A scene as the pipeline sees it, whatever source it came from (STAC API, static catalog, files,
samples): an id, band assets, when, where, and the properties that may carry labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

#: Band names of Sentinel-1 (both polarisation pairs).
SAR_BANDS = frozenset({"VV", "VH", "HH", "HV"})


@dataclass(frozen=True)
class Scene:
    """One input scene. Hrefs are local paths, ``file://`` or ``s3://`` URIs (or ``http(s)://``)."""

    id: str
    #: Asset key -> href. Band assets are keyed by the band name the spec uses (``B04``, ``HH``) once
    #: :func:`earthops_runtime.data.sources.resolve_scenes` mapped them; other assets keep their key.
    assets: dict[str, str]
    datetime: datetime | None = None
    #: WGS84 ``(west, south, east, north)``, when known.
    bbox: tuple[float, float, float, float] | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    collection: str | None = None
    #: Href of the source STAC item, for lineage links.
    stac_href: str | None = None


class SceneError(Exception):
    """A scene cannot be used (corrupt, incomplete, unreadable); the run records it and goes on
    within its failure budget."""

    def __init__(self, scene_id: str, reason: str):
        self.scene_id = scene_id
        self.reason = reason
        super().__init__(f"scene {scene_id}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:  # pickled across Ray workers with its own arguments
        return type(self), (self.scene_id, self.reason)


class SpecError(ValueError):
    """The spec cannot work with the data (unknown band, index with missing bands, empty search):
    the run fails before processing, with a message naming the field and what is accepted."""

    def __init__(self, field: str, message: str, reason: str = "InvalidSpec"):
        self.field = field
        self.detail = message
        self.reason = reason
        super().__init__(f"{field}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:  # a trial's SpecError reaches the Ray driver intact
        return type(self), (self.field, self.detail, self.reason)


def band_kind(band: str) -> str:
    """``sar`` for SAR polarisations, else ``optical`` (selects the resampling per band kind)."""
    return "sar" if band.upper() in SAR_BANDS else "optical"
