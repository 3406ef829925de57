"""EODataset: ingest EO scenes, prepare chips, extract features, validate, shard, publish a catalog."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StringConstraints
from pydantic_core import PydanticCustomError

from earthops.api.base import ApiModel, Rule, StringSet, keyed_list, unique
from earthops.api.common import CommonStatus, RayCompute, Storage
from earthops.api.stac import (
    BBOX_RULES,
    DATETIME_RULES,
    SPEC_DATETIME_MAX_LENGTH,
    SearchError,
    check_spec_bbox,
    check_spec_datetime,
)


def _stac(check: Callable[[Any], Any]) -> AfterValidator:
    """A check of :mod:`earthops.api.stac` (the data plane's own semantics) as a field validator."""

    def run(value: Any) -> Any:
        try:
            return check(value)
        except SearchError as exc:
            raise PydanticCustomError("stac_query", "{message}", {"message": exc.message}) from None

    return AfterValidator(run)


#: `[west, south, east, north]` (or 6 numbers with heights), as :func:`earthops.api.stac.parse_bbox` reads it.
Bbox = Annotated[list[float], Field(min_length=4, max_length=6), _stac(check_spec_bbox)]
#: An RFC 3339 instant or interval `start/end` (`..` for an open end), as
#: :func:`earthops.api.stac.check_spec_datetime` reads it.
DatetimeRange = Annotated[str, StringConstraints(max_length=SPEC_DATETIME_MAX_LENGTH), _stac(check_spec_datetime)]
BandName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]*$", max_length=32)]


class SearchFilter(ApiModel):
    """What to take from a STAC API or catalog."""

    cel_rules = (
        *(Rule(rule, message, ".bbox") for rule, message in BBOX_RULES),
        *(Rule(rule, message, ".datetime") for rule, message in DATETIME_RULES),
        Rule("self.assets.all(band, band.matches('^[A-Za-z][A-Za-z0-9_]*$'))",
             "assets maps band names (a letter, then letters, digits or '_') to asset keys", ".assets"),
    )

    collections: StringSet = Field(default_factory=list)
    """Collection ids to search (empty: all)."""
    bbox: Bbox | None = None
    """Area of interest `[west, south, east, north]` in WGS84 degrees (or 6 numbers with heights
    `[west, south, zmin, east, north, zmax]`); west > east crosses the antimeridian."""
    datetime: DatetimeRange | None = None
    """Acquisition time: an RFC 3339 instant or interval `start/end` (`..` for an open end); a date
    (`2020-06-01`) is its whole day; date-times need a time zone (`Z` or `+02:00`); the start may not
    be after the end. The same semantics as `earthops search --datetime`."""
    filter: dict[str, Any] | None = None
    """A CQL2-JSON filter on item properties (e.g. `eo:cloud_cover` below a value)."""
    max_items: Annotated[int, Field(ge=1, le=1_000_000)] = 100
    """Take at most this many scenes."""
    assets: dict[str, Annotated[str, StringConstraints(min_length=1)]] = Field(default_factory=dict, max_length=64)
    """Band name -> asset key, where asset keys differ from band names (`B04: red`)."""


class StacApiSource(SearchFilter):
    """Search a STAC API (`/search`)."""

    url: Annotated[str, StringConstraints(pattern=r"^https?://")]
    """Root URL of the STAC API."""


class StacCatalogSource(SearchFilter):
    """Walk a static STAC catalog and filter its items the same way as a search."""

    href: Annotated[str, StringConstraints(min_length=1)]
    """URI of the catalog's root JSON (`s3://`, `file://`, `https://`)."""


class FilesSource(ApiModel):
    """GeoTIFF or COG files, local or in S3, one scene per file."""

    uris: Annotated[list[Annotated[str, StringConstraints(min_length=1)]], Field(min_length=1, max_length=10_000)]
    """File URIs or glob patterns (`s3://bucket/scenes/*.tif`)."""


class SampleSource(ApiModel):
    """Built-in sample data: real BigEarthNet patches, or deterministic synthetic scenes."""

    name: Literal["bigearthnet", "synthetic-s1-iceberg", "synthetic-s2-landcover"]
    """Which sample set."""
    count: Annotated[int, Field(ge=1, le=1_000_000)] = 100
    """Scenes (or chips) to generate; for `bigearthnet`, at most the patches that exist."""
    seed: Annotated[int, Field(ge=0)] = 0
    """Seed of the generators: the same seed gives the same data."""


class Source(ApiModel):
    """Where scenes come from. Exactly one of the members."""

    cel_rules = (
        Rule(
            "(has(self.stacApi) ? 1 : 0) + (has(self.catalog) ? 1 : 0) + (has(self.files) ? 1 : 0) + "
            "(has(self.sample) ? 1 : 0) == 1",
            "set exactly one of stacApi, catalog, files and sample",
        ),
    )

    stac_api: StacApiSource | None = None
    """Search a STAC API."""
    catalog: StacCatalogSource | None = None
    """Walk a static STAC catalog."""
    files: FilesSource | None = None
    """Files or globs."""
    sample: SampleSource | None = None
    """Built-in samples."""


class Resampling(ApiModel):
    """Resampling per band kind when bands are brought to the common grid."""

    optical: Literal["nearest", "bilinear", "cubic", "average"] = "bilinear"
    """Optical reflectance bands."""
    sar: Literal["nearest", "bilinear", "cubic", "average"] = "average"
    """SAR backscatter (averaging also reduces speckle)."""
    labels: Literal["nearest", "mode"] = "nearest"
    """Label rasters: never interpolated."""


class Grid(ApiModel):
    """The common grid every band is resampled to."""

    resolution: Annotated[float, Field(gt=0, le=100_000)] = 10.0
    """Pixel size in metres."""
    crs: Annotated[str, StringConstraints(pattern=r"^(auto-utm|EPSG:[0-9]{4,6})$")] = "auto-utm"
    """Target CRS: `EPSG:<code>`, or `auto-utm` for the UTM zone of each scene."""
    resampling: Resampling = Field(default_factory=Resampling)
    """Resampling per band kind."""


class RasterLabels(ApiModel):
    """Labels from a raster asset of each scene (segmentation masks, class maps)."""

    asset: Annotated[str, StringConstraints(min_length=1)]
    """Asset key of the label raster."""


class VectorLabels(ApiModel):
    """Labels from a vector file (GeoJSON, GeoPackage, GeoParquet)."""

    uri: Annotated[str, StringConstraints(min_length=1)]
    """URI of the vector file."""
    property: Annotated[str, StringConstraints(min_length=1)]
    """Feature property holding the class."""


class PropertyLabels(ApiModel):
    """Labels from a property of each item (one or several classes per scene)."""

    name: Annotated[str, StringConstraints(min_length=1)]
    """Item property name (e.g. `bigearthnet:labels`)."""


class Labels(ApiModel):
    """What each chip is labelled with. Exactly one of raster, vector and property."""

    cel_rules = (
        Rule(
            "(has(self.raster) ? 1 : 0) + (has(self.vector) ? 1 : 0) + (has(self.property) ? 1 : 0) == 1",
            "set exactly one of raster, vector and property",
        ),
        Rule("self.task != 'segmentation' || !has(self.property)",
             "segmentation needs per-pixel labels: use raster or vector, not property", ".task"),
    )

    task: Literal["classification", "multilabel", "segmentation"] = "classification"
    """The learning task."""
    raster: RasterLabels | None = None
    """Labels from a raster asset."""
    vector: VectorLabels | None = None
    """Labels from a vector file."""
    property: PropertyLabels | None = None
    """Labels from an item property."""
    classes: StringSet = Field(default_factory=list)
    """Class names in index order; default: the sorted set of labels found."""


class Chips(ApiModel):
    """How scenes are cut into training chips."""

    size: Annotated[int, Field(ge=8, le=4096)] = 64
    """Chip width and height in pixels."""
    stride: Annotated[int, Field(ge=1, le=4096)] | None = None
    """Step between chips in pixels (default: `size`, no overlap)."""
    max_nodata_fraction: Annotated[float, Field(ge=0, le=1)] = 0.1
    """Drop chips with more nodata pixels than this."""
    max_cloud_fraction: Annotated[float, Field(ge=0, le=1)] = 1.0
    """Drop optical chips whose cloud mask covers more than this."""


SarFeature = Literal["db", "linear", "ratio", "difference", "band_avg"]


class Features(ApiModel):
    """Derived features added as extra channels."""

    indices: Annotated[list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")]], Field(max_length=64)] = Field(default_factory=list)
    """Spectral indices by name from the Awesome Spectral Indices catalogue (`NDVI`, `NDWI`)."""
    sar: Annotated[list[SarFeature], Field(max_length=8)] = Field(default_factory=list)
    """SAR features: `db`/`linear` conversion, co/cross-pol `ratio` and `difference`, and
    `band_avg` (mean of the two polarisations)."""


class BandRange(ApiModel):
    """The accepted value range of one band."""

    cel_rules = (Rule("self.min <= self.max", "band range needs min <= max", ".min"),)

    band: BandName
    """Band name."""
    min: float
    """Smallest accepted value."""
    max: float
    """Largest accepted value."""


class Validation(ApiModel):
    """Checks on the prepared chips, and what to do when they fail."""

    policy: Literal["fail", "warn"] = "fail"
    """`fail` fails the dataset when a check fails; `warn` records it and publishes anyway."""
    band_ranges: Annotated[list[BandRange], *keyed_list("band")] = Field(default_factory=list)
    """Per-band value ranges."""
    max_nan_fraction: Annotated[float, Field(ge=0, le=1)] = 0.1
    """Largest accepted fraction of NaN/nodata pixels per feature over the dataset (chips keep up to
    `chips.maxNodataFraction` each, so the default matches that rule's default)."""
    min_class_fraction: Annotated[float, Field(ge=0, le=1)] = 0.0
    """Smallest accepted share of the rarest class (class balance)."""
    allowed_labels: StringSet = Field(default_factory=list)
    """Label set: any other label fails the check (empty: no check)."""
    max_failed_scene_fraction: Annotated[float, Field(ge=0, le=1)] = 0.1
    """Failure budget: corrupt or unreadable scenes are recorded and skipped while they are at most
    this fraction of the scenes; beyond it the run fails."""


class Split(ApiModel):
    """Train/validation/test split."""

    cel_rules = (
        Rule("self.train + self.validation + self.test > 0.999999 && self.train + self.validation + self.test < 1.000001",
             "split fractions train + validation + test must add up to 1", ".train"),
    )

    train: Annotated[float, Field(ge=0, le=1)] = 0.7
    """Fraction of chips for training."""
    validation: Annotated[float, Field(ge=0, le=1)] = 0.15
    """Fraction for validation."""
    test: Annotated[float, Field(ge=0, le=1)] = 0.15
    """Fraction for testing."""
    seed: Annotated[int, Field(ge=0)] = 0
    """Seed of the split."""
    method: Literal["random", "spatial-blocks"] = "spatial-blocks"
    """`spatial-blocks` keeps neighbouring chips in the same split so they do not leak."""
    block_size: Annotated[int, Field(ge=1, le=1024)] = 4
    """For spatial-blocks: block edge, in chips."""


class Output(ApiModel):
    """Where the dataset is written."""

    storage: Storage = Field(default_factory=Storage)
    """Store root and credentials."""
    chips_per_shard: Annotated[int, Field(ge=16, le=1_000_000)] = 2048
    """Chips per shard file (Parquet); a shard is the unit of shuffled, streamed reads."""


class EODatasetSpec(ApiModel):
    """What scenes to ingest and how to turn them into labelled, validated training chips."""

    source: Source
    """Where scenes come from."""
    bands: Annotated[list[BandName], AfterValidator(unique), Field(min_length=1, max_length=64,
                                                                   json_schema_extra={"x-kubernetes-list-type": "set"})]
    """Bands to read, by name (`B02`, `B8A`, `VV`, `HH`); their order is the channel order."""
    grid: Grid = Field(default_factory=Grid)
    """The common grid."""
    labels: Labels | None = None
    """Labels; none for unlabelled (inference or pre-training) data."""
    chips: Chips = Field(default_factory=Chips)
    """Chip size, stride and drop rules."""
    features: Features = Field(default_factory=Features)
    """Derived features."""
    validation: Validation = Field(default_factory=Validation)
    """Checks and policy."""
    split: Split = Field(default_factory=Split)
    """Train/validation/test split."""
    output: Output = Field(default_factory=Output)
    """Where shards, statistics and the catalog go."""
    compute: RayCompute = Field(default_factory=RayCompute)
    """Ray cluster shape (cluster mode)."""


class SceneCounts(ApiModel):
    """Scenes by outcome."""

    total: Annotated[int, Field(ge=0)] = 0
    """Scenes selected by the source."""
    processed: Annotated[int, Field(ge=0)] = 0
    """Scenes turned into chips."""
    failed: Annotated[int, Field(ge=0)] = 0
    """Scenes skipped as corrupt or incomplete (within the failure budget)."""


class ChipCounts(ApiModel):
    """Chips per split, and in all."""

    train: Annotated[int, Field(ge=0)] = 0
    """Training chips."""
    validation: Annotated[int, Field(ge=0)] = 0
    """Validation chips."""
    test: Annotated[int, Field(ge=0)] = 0
    """Test chips."""
    total: Annotated[int, Field(ge=0)] | None = None
    """Chips in all splits (train + validation + test)."""


class ValidationSummary(ApiModel):
    """Summary of the validation report (the full report is in the store)."""

    passed: bool = True
    """Whether every check passed."""
    failed_checks: Annotated[int, Field(ge=0)] = 0
    """Checks that failed."""
    warnings: Annotated[int, Field(ge=0)] = 0
    """Checks that warned."""


class EODatasetStatus(CommonStatus):
    """Observed state of an EODataset."""

    scenes: SceneCounts | None = None
    """Scenes by outcome."""
    chips: ChipCounts | None = None
    """Chips per split."""
    validation: ValidationSummary | None = None
    """Validation summary."""
    collection: str | None = None
    """URI of the run's STAC collection."""
