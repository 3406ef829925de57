"""Losses and metrics with known answers, and the trainer's pure decisions (schedules, devices)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from earthops_runtime.errors import SpecError
from earthops_runtime.training.metrics import (
    MetricAccumulator,
    accuracy,
    confusion_matrix,
    loss_sum,
    macro_f1,
    mean_iou,
    mean_loss,
    metric_names,
    multilabel_counts,
    multilabel_metrics,
)
from earthops_runtime.training.trainer import amp_dtype, expected_output, resolve_device, schedule_factor

pytestmark = pytest.mark.unit

# targets 0 0 0 1 1 2, predictions 0 0 1 1 2 2: per class TP 2,1,1; FP 0,1,1; FN 1,1,0
TARGET = torch.tensor([0, 0, 0, 1, 1, 2])
PRED = torch.tensor([0, 0, 1, 1, 2, 2])


def test_confusion_matrix_counts_target_rows_and_predicted_columns():
    assert confusion_matrix(PRED, TARGET, 3).tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_confusion_matrix_leaves_out_ignored_pixels():
    target = torch.tensor([[0, 255], [1, 1]])
    pred = torch.tensor([[0, 1], [0, 1]])
    assert confusion_matrix(pred, target, 2, ignore_index=255).tolist() == [[1, 0], [1, 1]]


def test_accuracy_f1_and_iou_have_their_textbook_values():
    cm = confusion_matrix(PRED, TARGET, 3)
    assert accuracy(cm) == pytest.approx(4 / 6)
    f1 = [2 * 2 / (4 + 0 + 1), 2 / (2 + 1 + 1), 2 / (2 + 1 + 0)]
    assert macro_f1(cm) == pytest.approx(sum(f1) / 3)
    iou = [2 / 3, 1 / 3, 1 / 2]
    assert mean_iou(cm) == pytest.approx(sum(iou) / 3)


def test_classes_absent_from_targets_and_predictions_do_not_count():
    cm = confusion_matrix(PRED, TARGET, 5)  # classes 3 and 4 never occur
    assert macro_f1(cm) == pytest.approx(macro_f1(confusion_matrix(PRED, TARGET, 3)))
    assert mean_iou(cm) == pytest.approx(mean_iou(confusion_matrix(PRED, TARGET, 3)))
    # a class only predicted (false positives) counts, with F1 and IoU 0
    cm = confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 0]), 2)
    assert macro_f1(cm) == pytest.approx((2 / 3 + 0) / 2) and mean_iou(cm) == pytest.approx((1 / 2 + 0) / 2)


def test_nothing_to_score_is_nan():
    empty = torch.zeros(3, 3, dtype=torch.int64)
    assert math.isnan(accuracy(empty)) and math.isnan(macro_f1(empty)) and math.isnan(mean_iou(empty))


def test_multilabel_metrics_per_label_decision_macro_and_micro():
    logits = torch.tensor([[3.0, -1.0, 2.0], [-2.0, 1.0, -1.0], [1.0, 1.0, -3.0]])
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    counts = multilabel_counts(logits, target)
    assert counts.tolist() == [[2, 0, 0, 1], [1, 1, 0, 1], [0, 1, 1, 1]]  # TP FP FN TN per label
    m = multilabel_metrics(counts)
    assert m["accuracy"] == pytest.approx(6 / 9)
    assert m["f1"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)
    assert m["f1_micro"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))


def test_losses_are_sums_with_their_term_counts():
    logits = torch.randn(4, 3)
    target = torch.tensor([0, 2, 1, 1])
    total, n = loss_sum(logits, target, "classification")
    assert n == 4 and total.item() == pytest.approx(F.cross_entropy(logits, target).item() * 4, rel=1e-6)
    labels = torch.tensor([[1.0, 0.0, 1.0]] * 4)
    total, n = loss_sum(logits, labels, "multilabel")
    assert n == 12 and total.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, labels).item() * 12,
                                                     rel=1e-6)


def test_a_segmentation_batch_of_ignored_pixels_adds_nothing():
    logits = torch.randn(2, 4, 3, 3)
    total, n = loss_sum(logits, torch.full((2, 3, 3), 255), "segmentation")
    assert total.item() == 0 and n.item() == 0 and mean_loss(total, n).item() == 0
    target = torch.full((2, 3, 3), 255)
    target[0, 0, 0] = 2
    total, n = loss_sum(logits, target, "segmentation")
    assert n.item() == 1 and total.item() == pytest.approx(-F.log_softmax(logits[0, :, 0, 0], 0)[2].item(), rel=1e-6)


@pytest.mark.parametrize(("task", "shape"), [("classification", ()), ("segmentation", (5, 5)), ("multilabel", None)])
def test_accumulated_metrics_do_not_depend_on_batching(task, shape):
    g = torch.Generator().manual_seed(0)
    k = 4
    if task == "segmentation":
        logits = torch.randn(10, k, *shape, generator=g)
        target = torch.randint(0, k, (10, *shape), generator=g)
        target[target == 3] = 255
    elif task == "multilabel":
        logits = torch.randn(10, k, generator=g)
        target = (torch.rand(10, k, generator=g) > 0.5).float()
    else:
        logits = torch.randn(10, k, generator=g)
        target = torch.randint(0, k, (10,), generator=g)
    whole, parts = (MetricAccumulator(task, k, torch.device("cpu")) for _ in range(2))
    whole.update(logits, target)
    for lo, hi in ((0, 3), (3, 4), (4, 10)):
        parts.update(logits[lo:hi], target[lo:hi])
    a, b = whole.compute(), parts.compute()
    assert set(a) == {f"val_{m}" for m in ("loss", "accuracy", "f1")} | (
        {"val_iou"} if task == "segmentation" else {"val_f1_micro"} if task == "multilabel" else set())
    assert a == pytest.approx(b, rel=1e-6)  # float32 sums within a batch


def test_metric_names_per_task():
    assert metric_names("classification") == ("epoch", "lr", "epoch_seconds", "train_loss", "val_loss", "val_accuracy",
                                              "val_f1")
    assert metric_names("segmentation")[-1] == "val_iou" and metric_names("multilabel")[-1] == "val_f1_micro"


# --- the trainer's decisions --------------------------------------------------------------------


def test_schedules():
    total, per_epoch, epochs = 100, 10, 10
    assert {schedule_factor("constant", s, total, per_epoch, epochs) for s in range(total)} == {1.0}
    cosine = [schedule_factor("cosine", s, total, per_epoch, epochs) for s in range(total)]
    assert cosine[0] == 1.0 and cosine[50] == pytest.approx(0.5) and all(a > b for a, b in zip(cosine, cosine[1:]))
    step = [schedule_factor("step", s, total, per_epoch, epochs) for s in (0, 29, 30, 59, 60, 99)]
    assert step == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.001])
    one = [schedule_factor("onecycle", s, total, per_epoch, epochs) for s in range(total)]
    assert one[0] == pytest.approx(1 / 25) and max(one) == one[30] == pytest.approx(1.0)
    assert one[-1] < 1e-3 and all(a < b for a, b in zip(one[:30], one[1:31]))
    assert schedule_factor("onecycle", 500, total, per_epoch, epochs) == one[-1]  # past the end: stays
    with pytest.raises(ValueError, match="schedule 'linear'"):
        schedule_factor("linear", 0, total, per_epoch, epochs)


def test_devices_and_mixed_precision():
    assert resolve_device("auto", True) == "cuda" and resolve_device("auto", False) == "cpu"
    assert resolve_device("cpu", True) == "cpu" and resolve_device("cuda", True) == "cuda"
    with pytest.raises(SpecError) as err:
        resolve_device("cuda", False)
    assert err.value.field == "spec.training.device"
    assert amp_dtype("cuda", True) is torch.bfloat16 and amp_dtype("cuda", False) is torch.float16
    assert amp_dtype("cpu", True) is None


def test_expected_output_shapes():
    assert expected_output("segmentation", 2, 6, (64, 64)) == (2, 6, 64, 64)
    assert expected_output("multilabel", 2, 19, (120, 120)) == (2, 19)
