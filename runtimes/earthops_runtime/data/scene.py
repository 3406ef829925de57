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


def band_kind(band: str) -> str:
    """``sar`` for SAR polarisations, else ``optical`` (selects the resampling per band kind)."""
    return "sar" if band.upper() in SAR_BANDS else "optical"
