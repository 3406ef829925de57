"""The EODataset entrypoint: scenes -> chips -> features -> validated shards + STAC, on Ray.

Driver (this process): check the spec against the data before any pixel is read (features, bands,
validation rules), resolve the scenes, spread them over Ray tasks, follow them (progress in
``status.json``), apply the failure budget, merge statistics and label counts, validate, and publish
the run atomically: shards, ``stats.json``, ``validation.json``, ``summary.json``, the STAC collection
with scene and label items, and the GeoParquet search index. Then the root catalog links the run.

Tasks (Ray workers): read each scene in windows on the common grid, cut chips, drop chips by the
nodata/cloud rules, add features, label and split each chip, write Parquet shards into the run's
staging folder, and return their shard summary, statistics and failures.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from earthops.api import EODataset
from earthops.core.store import Store, StoreError
from earthops_runtime.data.scene import Scene
from earthops_runtime.entrypoint import SUMMARY_FILE, Outcome, Run, Runtime
from earthops_runtime.errors import RunFailed, SceneError, SpecError

FAILURES_FILE = "failures.json"
SCENES_PER_TASK_MAX = 64


# --- labels ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelPlan:
    """How chips get their labels: the task, the class names (index order), where labels come from."""

    task: str | None  # classification, multilabel, segmentation; None: unlabelled
    classes: tuple[str, ...] = ()
    source: str = ""  # property, raster, vector
    property_name: str | None = None

    def index_of(self, value: Any) -> int:
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, (int, np.integer)) and 0 <= int(value) < len(self.classes) and \
                str(value) not in self.classes:
            return int(value)
        if str(value) not in self.classes:
            raise ValueError(f"label {value!r} is not one of the classes {list(self.classes)}")
        return self.classes.index(str(value))

    def chip_labels(self, raw: Any, n: int) -> np.ndarray | None:
        """Labels of a batch of ``n`` chips in the shard format."""
        if self.task is None:
            return None
        if self.source == "property":
            if self.task == "multilabel":
                out = np.zeros((n, len(self.classes)), dtype=np.uint8)
                for i, value in enumerate(raw):
                    for v in (value if isinstance(value, (list, tuple)) else [value]):
                        out[i, self.index_of(v)] = 1
                return out
            return np.asarray([self.index_of(v) for v in raw], dtype=np.int64)
        masks = np.asarray(raw)  # (N, H, W) int32 class indices, -1 unlabelled
        if self.task == "segmentation":
            out = masks.astype(np.uint8)  # one pass each, no int32 temporary
            out[masks < 0] = 255
            return out
        # classification from a label raster: the majority class of the chip's labelled pixels
        out = np.empty(n, dtype=np.int64)
        for i in range(n):
            valid = masks[i][masks[i] >= 0]
            out[i] = np.bincount(valid).argmax() if valid.size else -1
        return out


def plan_labels(spec: Any, scenes: list[Scene]) -> LabelPlan:
    labels = spec.labels
    if labels is None:
        return LabelPlan(None)
    classes = tuple(labels.classes)
    if labels.property is not None:
        name = labels.property.name
        missing = [s.id for s in scenes if name not in s.properties]
        if len(missing) == len(scenes):
            found = sorted({k for s in scenes for k in s.properties})[:30]
            raise SpecError("spec.labels.property.name", f"no scene has the property {name!r}; properties: {found}")
        if not classes:
            values = [s.properties[name] for s in scenes if name in s.properties]
            flat = [v for value in values for v in (value if isinstance(value, (list, tuple)) else [value])]
            if flat and all(isinstance(v, (int, bool)) for v in flat):
                classes = tuple(str(i) for i in range(int(max(flat)) + 1))
            else:
                classes = tuple(sorted({str(v) for v in flat}))
        return LabelPlan(labels.task, classes, "property", name)
    if not classes:
        from_scenes = next((s.properties.get("earthops:classes") for s in scenes if s.properties.get("earthops:classes")),
                           None)
        if not from_scenes and labels.raster is not None:
            raise SpecError("spec.labels.classes", "raster labels need class names: list them in spec.labels.classes "
                            "(index order), or use a source whose items carry earthops:classes")
        classes = tuple(from_scenes or ())
    return LabelPlan(labels.task, classes, "raster" if labels.raster is not None else "vector")


# --- tasks ------------------------------------------------------------------------------------------


@dataclass
class TaskResult:
    shards: dict[str, Any] | None
    stats: Any
    scenes_done: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of the task (its process, all threads): what load does not change
    peak_memory_mib: float = 0.0
    #: Where the task's time went: reading and cutting chips, features, labels and splits, shard
    #: writes, statistics (summed over tasks into the run's summary, ``stageSeconds``).
    stage_seconds: dict[str, float] = field(default_factory=dict)


class _Stages:
    """Seconds per stage of a task: ``with stages("shards"): ...``, and iterators timed per item."""

    def __init__(self, into: dict[str, float]):
        self.seconds = into
        self._name = ""
        self._t = 0.0

    def __call__(self, name: str) -> _Stages:
        self._name = name
        return self

    def __enter__(self) -> None:
        self._t = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.seconds[self._name] = self.seconds.get(self._name, 0.0) + time.perf_counter() - self._t

    def timed(self, name: str, items: Any) -> Any:
        it = iter(items)
        while True:
            with self(name):
                item = next(it, _Stages)
            if item is _Stages:
                return
            yield item


def process_scenes(scenes: list[Scene], spec_wire: dict[str, Any], run_uri: str, task_index: int,
                   labels: LabelPlan, feature_names: tuple[str, ...]) -> TaskResult:
    """One Ray task: chips of ``scenes`` into shards under ``run_uri`` (the run's staging folder)."""
    from earthops.api.dataset import EODatasetSpec
    from earthops_runtime.data.chips import (
        ChipFilter,
        assign_split,
        cut_chips,
        scl_cloud_mask,
        split_block_size_m,
    )
    from earthops_runtime.data.features import plan_features
    from earthops_runtime.data.readers import SceneReader
    from earthops_runtime.data.shards import ShardWriter
    from earthops_runtime.data.stats import DatasetStats

    started, cpu_started = time.monotonic(), time.process_time()
    spec = EODatasetSpec.model_validate(spec_wire)
    plan = plan_features(spec.bands, spec.features.indices, spec.features.sar)
    ranges = {r.band: (r.min, r.max) for r in spec.validation.band_ranges}
    stats = DatasetStats((spec.split.seed, task_index), ranges=ranges)
    size = spec.chips.size
    stride = spec.chips.stride or size
    block_m = split_block_size_m(spec.split.block_size, size, spec.grid.resolution)
    fractions = (spec.split.train, spec.split.validation, spec.split.test)
    result = TaskResult(shards=None, stats=stats)
    stage = _Stages(result.stage_seconds)
    chip_filter = ChipFilter.from_spec(spec.chips)
    writer = ShardWriter(Store.from_uri(run_uri), feature_names, (size, size), labels.task, labels.classes,
                         spec.output.chips_per_shard, task_id=f"t{task_index:05d}")
    with writer:
        for scene in scenes:
            try:
                with SceneReader(scene, spec.bands, spec.grid, spec.labels) as reader:
                    cloud = None
                    if spec.chips.max_cloud_fraction < 1.0:
                        if "clouds" in scene.assets:
                            cloud = (lambda w, r=reader: r.read_asset("clouds", w, resampling="nearest") > 0)  # noqa: E731
                        elif "SCL" in scene.assets:
                            cloud = scl_cloud_mask(reader)
                    batches = cut_chips(reader, size, stride, chip_filter=chip_filter, cloud_mask=cloud,
                                        extra_channels=len(plan.derived), reuse_buffers=True)
                    for batch in stage.timed("read and cut chips", batches):
                        if not len(batch):
                            continue
                        with stage("features"):
                            x = plan.fill(batch.arrays)  # derived features beside the bands: nothing copied
                        with stage("labels and splits"):
                            try:
                                y = labels.chip_labels(batch.labels, len(batch))
                            except ValueError as exc:
                                raise SceneError(scene.id, str(exc)) from None
                            splits = np.asarray([
                                assign_split(spec.split.method, spec.split.seed, fractions, tuple(c), block_m, cid)
                                for c, cid in zip(batch.centres, batch.ids, strict=True)])
                        for split in ("train", "validation", "test"):
                            pick = np.flatnonzero(splits == split)
                            if not pick.size:
                                continue
                            ys = None if y is None else y[pick]
                            if ys is not None and labels.task == "classification" and (ys < 0).any():
                                keep = ys >= 0
                                pick, ys = pick[keep], ys[keep]
                                if not pick.size:
                                    continue
                            rows = None if pick.size == len(x) else pick  # a split's chips, not gathered
                            with stage("shard writes"):
                                writer.write(split, x, ys, [batch.ids[i] for i in pick], {
                                    "scene_id": [scene.id] * pick.size, "row": batch.rows[pick],
                                    "col": batch.cols[pick], "x": batch.centres[pick, 0], "y": batch.centres[pick, 1]},
                                    rows=rows)
                            with stage("statistics"):
                                stats.update(split, x, feature_names, rows=rows)
                                if ys is not None:
                                    stats.update_labels(split, ys, task=labels.task,
                                                        ignore_index=255 if labels.task == "segmentation" else None)
                result.scenes_done.append(scene.id)
            except SceneError as exc:
                result.failures.append({"scene": scene.id, "reason": exc.reason})
            except StoreError:  # the store failing is the run's: chips of scenes done before may be lost with it
                raise
            except Exception as exc:  # noqa: BLE001 - any per-scene failure is the scene's, within the budget
                result.failures.append({"scene": scene.id, "reason": f"{type(exc).__name__}: {exc}"})
        for reason, count in chip_filter.counts()["dropped"].items():
            result.dropped[reason] = result.dropped.get(reason, 0) + count
        with stage("shard writes"):
            writer.close()
    result.shards = writer.summary.to_dict()
    result.seconds = time.monotonic() - started
    result.cpu_seconds = time.process_time() - cpu_started
    result.peak_memory_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the worker's peak RSS
    return result


# --- driver -----------------------------------------------------------------------------------------


def _sample_scenes(name: str, count: int, seed: int) -> Path:
    if name == "bigearthnet":
        from earthops_runtime.samples import bigearthnet_catalog

        return bigearthnet_catalog()
    from earthops_runtime.data.synthetic import synthetic_catalog

    return synthetic_catalog(name, count=count, seed=seed)


def _batches(scenes: list[Scene], workers: int) -> list[list[Scene]]:
    """About four tasks per worker (load balance), at most SCENES_PER_TASK_MAX scenes per task."""
    per_task = max(1, min(SCENES_PER_TASK_MAX, -(-len(scenes) // (4 * workers))))
    return [scenes[i:i + per_task] for i in range(0, len(scenes), per_task)]


def _run(run: Run) -> Outcome:
    """The EODataset's work (see the module docstring). An EODataset references nothing: no inputs."""
    from earthops_runtime.catalog.dataset import update_root_catalog
    from earthops_runtime.data.features import plan_features
    from earthops_runtime.data.sources import resolve_scenes
    from earthops_runtime.data.validation import check_spec

    resource, reporter = run.resource, run.reporter
    spec = resource.spec
    plan = plan_features(spec.bands, spec.features.indices, spec.features.sar)
    check_spec(spec.validation, plan.names)
    reporter.report(message="resolving scenes", stage="resolving scenes")
    scenes = resolve_scenes(spec.source, spec.bands, sample_scenes=_sample_scenes)
    if spec.source.sample is not None:
        scenes = scenes[: spec.source.sample.count]
    labels = plan_labels(spec, scenes)
    reporter.report(done=0, total=len(scenes), message=f"{len(scenes)} scenes", stage="processing scenes")
    result = _process(resource, run.store, run.key, reporter, run.ray_address, scenes, labels, plan.names)
    update_root_catalog(run.store, f"{run.key}/stac/collection.json",
                        title=f"EODataset {resource.namespace}/{resource.name}")
    return Outcome(result["results"], result["message"])


def _replay(resource: EODataset, summary: dict[str, Any]) -> Outcome:
    results = summary["results"]
    scenes = results["scenes"]["total"]
    return Outcome({**results, "chips": chip_counts(results["chips"])}, "already published", done=scenes, total=scenes)


def chip_counts(by_split: dict[str, int]) -> dict[str, int]:
    """The status's chip counts: per split, and ``total`` (what ``earthops get`` shows; the split
    breakdown is in ``describe``)."""
    splits = {s: int(by_split.get(s, 0)) for s in ("train", "validation", "test")}
    return {**splits, "total": sum(splits.values())}


#: The entrypoint (``earthops_runtime.dataset:run`` in ``earthops.api.KINDS``).
run = Runtime(unit="scenes", body=_run, replay=_replay)


def _process(resource: EODataset, store: Store, run_key: str, reporter: Any, ray_address: str | None,
             scenes: list[Scene], labels: LabelPlan, names: tuple[str, ...]) -> dict[str, Any]:
    from earthops_runtime import raycluster
    from earthops_runtime.catalog.dataset import write_dataset_catalog
    from earthops_runtime.data.shards import write_index
    from earthops_runtime.data.stats import merge_all
    from earthops_runtime.data.validation import validate

    spec = resource.spec
    ray = raycluster.connect(ray_address)
    started = time.monotonic()
    with store.publish(run_key) as run:
        task = ray.remote(num_cpus=1, max_retries=1)(process_scenes)
        spec_ref = ray.put(spec.wire())
        pending = {task.remote(batch, spec_ref, run.uri, i, labels, names): len(batch)
                   for i, batch in enumerate(_batches(scenes, raycluster.cpus(ray)))}
        results: list[TaskResult] = []
        done = 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            done += pending.pop(ready[0])
            try:
                results.append(ray.get(ready[0]))
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, StoreError):  # said as the store's error, not as a crashed task
                    raise exc.cause from None
                raise
            failed = sum(len(r.failures) for r in results)
            reporter.report(done=done, message=f"{done}/{len(scenes)} scenes, {failed} failed")
        failures = [f for r in results for f in r.failures]
        reporter.report(stage="validating, writing statistics and the catalog")
        if len(failures) > spec.validation.max_failed_scene_fraction * len(scenes) or len(failures) == len(scenes):
            shown = "; ".join(f"{f['scene']}: {f['reason']}" for f in failures[:3])
            raise RunFailed("TooManyFailedScenes", f"{len(failures)} of {len(scenes)} scenes failed (budget "
                            f"{spec.validation.max_failed_scene_fraction:.0%}): {shown}")
        stats = merge_all(r.stats for r in results)
        stats_dict = stats.to_dict()
        report = validate(stats_dict, stats_dict.get("labels"), spec.validation, list(labels.classes))
        store.write_json(f"{run_key}/validation.json", report.to_dict())  # kept beside status.json either way
        if not report.passed:
            raise RunFailed("ValidationFailed", f"validation failed (policy fail): {report.message()}; report: "
                            f"{store.url(run_key + '/validation.json')}")
        index = write_index(run, [r.shards for r in results if r.shards])
        chips = {s: index.counts.get(s, 0) for s in ("train", "validation", "test")}
        dropped: dict[str, int] = {}
        for r in results:
            for k, v in r.dropped.items():
                dropped[k] = dropped.get(k, 0) + v
        run.write_json("stats.json", stats_dict)
        run.write_json(FAILURES_FILE, failures)
        good = [s for s in scenes if s.id not in {f["scene"] for f in failures}]
        catalog = write_dataset_catalog(
            run, namespace=resource.namespace, name=resource.name, run_id=run_key.rsplit("/", 1)[-1], scenes=good,
            summary={"chips": chips, "bands": list(spec.bands), "title": f"EODataset {resource.name}"},
            stats=stats_dict, validation=report.to_dict(), classes=list(labels.classes), label_task=labels.task,
            features={"bands": list(spec.bands), "indices": list(spec.features.indices), "sar": list(spec.features.sar),
                      "names": list(names)},
            label_property=labels.property_name,
        )
        results_status = {
            "scenes": {"total": len(scenes), "processed": len(scenes) - len(failures), "failed": len(failures)},
            "chips": chip_counts(chips),
            "validation": report.summary(),
            "collection": store.url(f"{run_key}/{catalog['collection']}"),
        }
        elapsed = time.monotonic() - started
        summary = {
            "results": results_status,
            "features": list(names),
            "classes": list(labels.classes),
            "labelTask": labels.task,
            "droppedChips": dropped,
            "shards": {"files": len(index.files)},
            "seconds": round(elapsed, 3),
            "taskSeconds": round(sum(r.seconds for r in results), 3),
            "taskCpuSeconds": round(sum(r.cpu_seconds for r in results), 3),
            "peakWorkerMemoryMiB": round(max(r.peak_memory_mib for r in results), 1),
            "stageSeconds": {k: round(sum(r.stage_seconds.get(k, 0.0) for r in results), 3)
                             for k in dict.fromkeys(k for r in results for k in r.stage_seconds)},
        }
        run.write_json(SUMMARY_FILE, summary)
    total_chips = sum(chips.values())
    # the time of this step only: the run's own duration (Ray's start included) is the resource's
    # startTime..completionTime, which `earthops run` and `describe` show
    return {"results": results_status,
            "message": f"{total_chips} chips from {len(scenes) - len(failures)} scenes (scene processing "
                       f"{elapsed:.1f} s)" + (f"; {len(failures)} scenes skipped" if failures else "")}

