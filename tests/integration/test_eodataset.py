"""EODataset end to end in embedded mode: real runtime process, local Ray, real data, real store."""

import numpy as np
import pytest

from earthops.api import parse_resource
from earthops.control.local import Executor
from earthops.control.status import get_condition
from earthops.core.store import Store
from tests.infra.pytest_datasets import example

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_address(ray_local):
    return ray_local.get_runtime_context().gcs_address


def _example(path: str, **changes):
    return parse_resource(example(path, **changes), path)


def _run(store: Store, resource, ray_address):
    return Executor(store, ray_address=ray_address, poll_interval=0.2).apply(resource).resource["status"]


def test_synthetic_s1_iceberg_chips_are_published_searchable_and_loadable(tmp_path, ray_address):
    store = Store.from_uri(tmp_path.as_uri())
    resource = _example("examples/ship-iceberg/01-dataset.yaml", **{"spec.source.sample.count": 120})
    status = _run(store, resource, ray_address)
    assert status["phase"] == "Succeeded", status["message"]
    assert status["scenes"] == {"total": 120, "processed": 120, "failed": 0}
    chips = status["chips"]
    assert chips["total"] == 120 == chips["train"] + chips["validation"] + chips["test"]
    assert chips["train"] > chips["validation"] > 0
    assert status["validation"]["passed"] is True
    run = f"datasets/default/iceberg-chips/{status['runId']}"
    assert store.is_published(run) and status["results"] == store.url(run)

    stats = store.read_json(f"{run}/stats.json")
    assert set(stats["splits"]["train"]["features"]) == {"HH", "HV", "band_avg"}
    hh = stats["splits"]["train"]["features"]["HH"]
    assert -40 < hh["mean"] < 0, "HH backscatter in dB"

    # the loader streams the shards with a feature subset, normalised by the training statistics
    from earthops_runtime.data.loader import ChipDataset
    from earthops_runtime.data.stats import normalization

    mean, std = normalization(stats, "train", ["band_avg", "HH"])
    ds = ChipDataset(store.url(run), "train", features=["band_avg", "HH"], normalization=(mean, std), seed=1)
    samples = list(ds)
    assert len(samples) == chips["train"]
    x, y = samples[0]
    assert tuple(x.shape) == (2, 75, 75) and int(y) in (0, 1)
    stacked = np.stack([s[0].numpy() for s in samples])
    assert abs(float(np.nanmean(stacked))) < 0.2, "normalised to about zero mean"

    # the catalog: root -> collection -> scene and label items; and the search index answers
    import pystac

    root = pystac.Catalog.from_file(str(store.local_path("catalog.json")))
    [collection] = list(root.get_children())
    items = list(collection.get_items(recursive=True))
    assert len(items) == 240, "a scene item and a label item per scene"
    from earthops_runtime.catalog.search import search

    found = search(store, collections=[collection.id])
    assert len(found) == 240
    some = items[0].bbox
    near = search(store, bbox=some)
    assert items[0].id in {f["id"] for f in near} and len(near) < 240

    # a rerun of the same generation is idempotent: nothing runs again
    again = Executor(store, ray_address=ray_address).apply(resource)
    assert again.skipped and again.resource["status"]["runId"] == status["runId"]


def test_synthetic_s2_landcover_segmentation_with_spectral_indices(tmp_path, ray_address):
    store = Store.from_uri(tmp_path.as_uri())
    resource = _example("examples/landcover-s2/01-dataset.yaml", **{"spec.source.sample.count": 2})
    status = _run(store, resource, ray_address)
    assert status["phase"] == "Succeeded", status["message"]
    run = f"datasets/default/landcover/{status['runId']}"
    stats = store.read_json(f"{run}/stats.json")
    features = stats["splits"]["train"]["features"]
    assert {"NDVI", "NDWI", "NBR", "B8A"} <= set(features)
    assert -1.0 - 1e-5 <= features["NDVI"]["min"] and features["NDVI"]["max"] <= 1.0 + 1e-5
    assert 0.0 < features["B04"]["mean"] < 0.5, "reflectance after the baseline-04 offset and scale"
    summary = store.read_json(f"{run}/summary.json")
    assert summary["labelTask"] == "segmentation" and len(summary["classes"]) == 6
    # the nodata strip of the second scene and the clouds drop chips by the spec's rules
    assert summary["droppedChips"].get("cloud", 0) + summary["droppedChips"].get("nodata", 0) > 0, summary


def test_real_bigearthnet_patches_flow_through_the_same_pipeline(tmp_path, ray_address, bigearthnet):
    store = Store.from_uri(tmp_path.as_uri())
    resource = _example("examples/bigearthnet/01-dataset.yaml")
    status = _run(store, resource, ray_address)
    assert status["phase"] == "Succeeded", status["message"]
    assert status["scenes"]["processed"] == 6
    run = f"datasets/default/bigearthnet-s2/{status['runId']}"
    summary = store.read_json(f"{run}/summary.json")
    assert summary["labelTask"] == "multilabel" and summary["classes"], summary
    # at most four 60x60 chips per 120x120 patch; patches reprojected into the UTM zone of their
    # centre lose edge chips to nodata
    assert 6 <= status["chips"]["total"] <= 6 * 4


@pytest.mark.parametrize(
    "changes, reason, fragment",
    [
        ({"spec.bands": ["HH", "HX"]}, "InvalidSpec", "spec.bands"),
        ({"spec.features.sar": ["ratio"], "spec.bands": ["HH"]}, "InvalidSpec", "spec.features.sar"),
    ],
    ids=["unknown-band", "sar-feature-without-its-pair"],
)
def test_bad_specs_fail_before_processing_with_the_field_named(tmp_path, ray_address, changes, reason, fragment):
    store = Store.from_uri(tmp_path.as_uri())
    changes = {"spec.source.sample.count": 10, **changes}
    if changes.get("spec.bands") == ["HH"]:
        changes["spec.validation.bandRanges"] = [{"band": "HH", "min": -60, "max": 30}]
    status = _run(store, _example("examples/ship-iceberg/01-dataset.yaml", **changes), ray_address)
    assert status["phase"] == "Failed"
    assert get_condition(status["conditions"], "Ready")["reason"] == reason
    assert fragment in status["message"]
    assert store.runs("datasets/default/iceberg-chips") == [], "nothing published"


def test_index_with_missing_bands_names_them(tmp_path, ray_address):
    store = Store.from_uri(tmp_path.as_uri())
    resource = _example("examples/landcover-s2/01-dataset.yaml", **{"spec.source.sample.count": 1,
                                                                    "spec.bands": ["B02", "B03", "B04"]})
    status = _run(store, resource, ray_address)
    assert status["phase"] == "Failed" and "spec.features.indices" in status["message"]
    assert "B08" in status["message"], "says which band to add"


def test_corrupt_scenes_are_skipped_within_the_budget_and_fail_the_run_beyond_it(tmp_path, ray_address):
    import rasterio

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    profile = {"driver": "GTiff", "width": 64, "height": 64, "count": 2, "dtype": "float32", "crs": "EPSG:32622",
               "transform": rasterio.transform.from_origin(500000, 5300000, 10, 10)}
    for i in range(4):
        with rasterio.open(scenes / f"s{i}.tif", "w", **profile) as dst:
            dst.write(np.full((2, 64, 64), -20.0 - i, dtype="float32"))
            dst.descriptions = ("HH", "HV")
    (scenes / "s4.tif").write_bytes((scenes / "s0.tif").read_bytes()[:300])  # truncated: corrupt
    doc = {"apiVersion": "earthops.dev/v1alpha1", "kind": "EODataset", "metadata": {"name": "files"},
           "spec": {"source": {"files": {"uris": [str(scenes / "*.tif")]}}, "bands": ["HH", "HV"],
                    "chips": {"size": 32}, "validation": {"maxFailedSceneFraction": 0.25}}}
    store = Store.from_uri((tmp_path / "store").as_uri())
    status = _run(store, parse_resource(doc), ray_address)
    assert status["phase"] == "Succeeded", status["message"]
    assert status["scenes"] == {"total": 5, "processed": 4, "failed": 1}
    failures = store.read_json(f"datasets/default/files/{status['runId']}/failures.json")
    assert failures[0]["scene"].startswith("s4") and failures[0]["reason"]
    from earthops_runtime.catalog.search import search

    items = search(store)  # plain files have no acquisition time: stamped and flagged, never invented silently
    assert items and all(i["properties"].get("earthops:datetime_unknown") is True for i in items)

    doc["spec"]["validation"]["maxFailedSceneFraction"] = 0.1
    status = _run(store, parse_resource(doc), ray_address)
    assert status["phase"] == "Failed"
    assert get_condition(status["conditions"], "Ready")["reason"] == "TooManyFailedScenes"
    assert len(store.runs("datasets/default/files")) == 1, "the failed generation published nothing"
