"""The trainer on real published dataset runs (built once per session by the EODataset runtime):
metrics per task, determinism, checkpoint resume, the zoo's models end to end, and the errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch

from earthops.api.tuning import Training
from earthops.core.store import StoreError
from earthops_runtime.errors import SpecError
from earthops_runtime.training import CHECKPOINT_FILE, DatasetInfo, Trainer, metric_names

pytestmark = pytest.mark.integration
SMALL_CNN = {"width": 0.25}


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal metrics, but for the wall-clock time."""
    drop = {"epoch_seconds"}
    return {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}


@pytest.fixture(scope="module")
def iceberg(iceberg_dataset) -> DatasetInfo:
    return DatasetInfo.open(iceberg_dataset.run_uri)


@pytest.fixture(scope="module")
def landcover(landcover_dataset) -> DatasetInfo:
    return DatasetInfo.open(landcover_dataset.run_uri)


def _copy_run(uri: str, dest: Path, change_index) -> str:
    """A copy of a run with its shard index edited (datasets the EODataset runtime would not publish)."""
    run = dest / "run"
    shutil.copytree(urlparse(uri).path, run)
    index_path = run / "shards" / "index.json"
    index = json.loads(index_path.read_text())
    change_index(index)
    index_path.write_text(json.dumps(index))
    return run.as_uri()


# --- the dataset as training sees it ------------------------------------------------------------


def test_dataset_info_reads_features_labels_shape_and_normalisation(iceberg, iceberg_dataset):
    assert iceberg.features == ("HH", "HV", "band_avg") and iceberg.in_channels == 3
    assert iceberg.task == "classification" and iceberg.classes == ("ship", "iceberg") and iceberg.num_classes == 2
    assert iceberg.chip_shape == (75, 75) and iceberg.counts["train"] > 0 and iceberg.counts["validation"] > 0
    assert iceberg.mean[0] < -10 and all(s > 0 for s in iceberg.std)  # dB backscatter, from stats.json
    assert iceberg.collection == f"{iceberg_dataset.run_uri}/stac/collection.json"
    subset = DatasetInfo.open(iceberg_dataset.run_uri, ["HV", "HH"])
    assert subset.features == ("HV", "HH") and subset.mean == (iceberg.mean[1], iceberg.mean[0])


def test_dataset_errors_say_what_is_wrong(iceberg_dataset, tmp_path):
    with pytest.raises(SpecError) as err:
        DatasetInfo.open(iceberg_dataset.run_uri, ["HH", "VV"], field="spec.components.features")
    assert err.value.field == "spec.components.features"
    assert "VV not in the dataset; available: HH, HV, band_avg" in str(err.value)

    unlabelled = _copy_run(iceberg_dataset.run_uri, tmp_path / "a", lambda ix: ix.update(label=None))
    with pytest.raises(SpecError, match="has no labels"):
        DatasetInfo.open(unlabelled)

    no_validation = _copy_run(iceberg_dataset.run_uri, tmp_path / "b",
                              lambda ix: (ix["splits"].pop("validation"), ix["counts"].pop("validation")))
    with pytest.raises(SpecError, match="has no validation chips .*validation fraction > 0") as err:
        DatasetInfo.open(no_validation)
    assert err.value.field == "spec.datasetRef"

    with pytest.raises(StoreError, match="no such folder"):
        DatasetInfo.open((tmp_path / "nothing").as_uri())


# --- training -----------------------------------------------------------------------------------


def test_iceberg_cnn_learns_and_reports_validation_metrics_every_epoch(iceberg):
    trainer = Trainer(iceberg, "iceberg-cnn", SMALL_CNN, Training(epochs=2, batch_size=32, learning_rate=3e-3))
    assert trainer.device.type in ("cpu", "cuda") and trainer.amp == (trainer.device.type == "cuda")
    seen: list[dict[str, float]] = []
    last = trainer.fit(on_epoch=seen.append)
    assert [m["epoch"] for m in seen] == [1.0, 2.0] and last == seen[-1] and trainer.history == seen
    assert set(last) == set(metric_names("classification"))
    assert all(math.isfinite(v) for v in last.values())
    assert 0 <= last["val_accuracy"] <= 1 and 0 <= last["val_f1"] <= 1 and last["lr"] == 3e-3
    assert seen[1]["train_loss"] < seen[0]["train_loss"]
    test = trainer.evaluate("test")
    assert set(test) == {"test_loss", "test_accuracy", "test_f1"}
    x = trainer.example_input(3)
    assert x.shape == (3, 3, 75, 75) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert abs(float(x.mean())) < 3  # normalised


def test_on_epoch_returning_true_stops(iceberg):
    trainer = Trainer(iceberg, "iceberg-cnn", SMALL_CNN, Training(epochs=5), max_train_batches=1, max_val_batches=1)
    trainer.fit(on_epoch=lambda m: m["epoch"] >= 2)
    assert trainer.epoch == 2


def test_the_same_seed_gives_the_same_metrics(iceberg):
    def run(seed: int) -> list[dict[str, float]]:
        training = Training(epochs=2, batch_size=16, seed=seed, schedule="cosine")
        trainer = Trainer(iceberg, "iceberg-cnn", {**SMALL_CNN, "dropout": 0.3}, training, device="cpu",
                          max_train_batches=3, max_val_batches=1)
        trainer.fit()
        return trainer.history

    first, again, other = run(7), run(7), run(8)
    assert all(_same(a, b) for a, b in zip(first, again, strict=True))
    assert not _same(first[-1], other[-1])


def test_trainers_keep_their_random_streams_to_themselves(iceberg):
    """Interleaved trainers match trainers run one after the other, and the caller's generator is
    left where it was."""
    def make() -> Trainer:
        return Trainer(iceberg, "iceberg-cnn", {**SMALL_CNN, "dropout": 0.5}, Training(epochs=2, batch_size=16),
                       device="cpu", max_train_batches=2, max_val_batches=1)

    torch.manual_seed(99)
    torch.rand(100), torch.rand(100)
    expected = torch.rand(3)
    torch.manual_seed(99)
    alone = make()
    alone.fit()
    a, b = make(), make()
    for _ in range(2):
        a.train_epoch()
        torch.rand(100)  # the caller draws in between
        b.train_epoch()
    assert torch.equal(torch.rand(3), expected)
    assert all(_same(x, y) and _same(x, z) for x, y, z in zip(alone.history, a.history, b.history, strict=True))


@pytest.mark.parametrize("uri_form", [False, True])
def test_a_restored_trainer_continues_as_if_never_stopped(iceberg, tmp_path, uri_form):
    training = Training(epochs=2, batch_size=16, seed=3, schedule="onecycle", optimizer="adamw", weight_decay=0.01)

    def trainer() -> Trainer:
        return Trainer(iceberg, "iceberg-cnn", {**SMALL_CNN, "dropout": 0.3}, training, device="cpu",
                       max_train_batches=2, max_val_batches=1)

    whole = trainer()
    whole.fit()
    first = trainer()
    first.fit(epochs=1)
    folder = tmp_path / "ckpt"
    first.save_checkpoint(folder.as_uri() if uri_form else folder)
    assert (folder / CHECKPOINT_FILE).is_file()
    torch.manual_seed(12345)  # whatever happened in between, the checkpoint's RNG state wins
    resumed = trainer()
    resumed.load_checkpoint(folder.as_uri() if uri_form else folder)
    assert resumed.epoch == 1 and resumed.step == first.step
    resumed.fit()
    assert resumed.epoch == 2
    assert all(_same(a, b) for a, b in zip(whole.history, resumed.history, strict=True))
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_checkpoint_of_another_model_is_refused(iceberg, tmp_path):
    cnn = Trainer(iceberg, "iceberg-cnn", SMALL_CNN, Training(epochs=1), max_train_batches=1, max_val_batches=1)
    cnn.save_checkpoint(tmp_path)
    resnet = Trainer(iceberg, "resnet18-ms", {"width": 4}, Training(epochs=1))
    with pytest.raises(ValueError, match="checkpoint of model 'iceberg-cnn', not 'resnet18-ms'"):
        resnet.load_checkpoint(tmp_path)


def test_unet_small_on_landcover_reports_iou(landcover):
    assert landcover.task == "segmentation" and landcover.in_channels == 15 and landcover.num_classes == 6
    threads = torch.get_num_threads()
    try:
        trainer = Trainer(landcover, "unet-small", {"width": 8}, Training(epochs=1, batch_size=8, schedule="step"),
                          max_train_batches=4, max_val_batches=2, threads=1)
        assert torch.get_num_threads() == 1
        metrics = trainer.fit()
    finally:
        torch.set_num_threads(threads)
    assert set(metrics) == set(metric_names("segmentation"))
    assert 0 <= metrics["val_iou"] <= metrics["val_f1"] <= 1 and 0 <= metrics["val_accuracy"] <= 1
    assert math.isfinite(metrics["val_loss"])
    assert math.isfinite(metrics["train_loss"])  # nodata pixels are filled, not propagated


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resnet18_ms_trains_on_sar_chips(iceberg, optimizer):
    trainer = Trainer(iceberg, "resnet18-ms", {"width": 8, "smallInput": "false"},
                      Training(epochs=1, batch_size=16, optimizer=optimizer), max_train_batches=2, max_val_batches=1)
    metrics = trainer.fit()
    assert math.isfinite(metrics["train_loss"]) and 0 <= metrics["val_accuracy"] <= 1


def test_a_custom_model_by_import_path_trains(iceberg):
    trainer = Trainer(iceberg, "tests.unit.custom_models:tiny", {"hidden": "6"}, Training(epochs=1),
                      max_train_batches=1, max_val_batches=1)
    assert trainer.model_parameters == {"hidden": 6}
    assert math.isfinite(trainer.fit()["val_loss"])


# --- errors -------------------------------------------------------------------------------------


def test_a_model_for_another_task_names_the_model_and_the_dataset_task(iceberg, landcover):
    with pytest.raises(SpecError, match="iceberg-cnn is a classification/multilabel model but the dataset's task "
                                        "is segmentation") as err:
        Trainer(landcover, "iceberg-cnn", SMALL_CNN, Training())
    assert err.value.field == "spec.model.name"
    with pytest.raises(SpecError, match="unet-small is a segmentation model but the dataset's task is classification"):
        Trainer(iceberg, "unet-small", {}, Training())


def test_a_custom_model_with_the_wrong_output_is_refused_before_training(iceberg):
    with pytest.raises(SpecError, match=r"returns logits of shape \(2, 3\).*needs \(2, 2\)") as err:
        Trainer(iceberg, "tests.unit.custom_models:wrong_width", {}, Training())
    assert err.value.field == "spec.model.name"


def test_bad_model_parameters_fail_before_any_data_is_read(iceberg):
    with pytest.raises(SpecError) as err:
        Trainer(iceberg, "iceberg-cnn", {"kernelSize": 2.5}, Training())
    assert err.value.field == "spec.model.parameters.kernelSize"


# --- S3 -----------------------------------------------------------------------------------------


def test_training_reads_a_run_and_writes_checkpoints_on_s3(iceberg_dataset, s3_env, s3_bucket):
    from earthops.core.store import Store

    local = Path(urlparse(iceberg_dataset.run_uri).path)
    run = Store.from_uri(f"s3://{s3_bucket}/earthops/datasets/default/iceberg-chips/g1")
    for path in local.rglob("*"):
        if path.is_file():
            run.write_bytes(path.relative_to(local).as_posix(), path.read_bytes())
    info = DatasetInfo.open(run.uri, ["HH", "HV"])
    assert info.uri.startswith("s3://") and info.in_channels == 2 and info.num_classes == 2
    training = Training(epochs=2, batch_size=16, seed=5)
    trainer = Trainer(info, "iceberg-cnn", SMALL_CNN, training, device="cpu", max_train_batches=2, max_val_batches=1)
    trainer.fit(epochs=1)
    checkpoints = f"s3://{s3_bucket}/earthops/experiments/default/t/_tune/r1/trial-0"
    trainer.save_checkpoint(checkpoints)
    assert Store.from_uri(checkpoints).exists(CHECKPOINT_FILE)
    resumed = Trainer(info, "iceberg-cnn", SMALL_CNN, training, device="cpu", max_train_batches=2, max_val_batches=1)
    resumed.load_checkpoint(checkpoints)
    assert _same(resumed.fit(), trainer.fit())
