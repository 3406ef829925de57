"""Losses and metrics per label task, and their accumulation over an epoch without per-batch syncs.

Metrics (the names the tuner, the scheduler and the registry see):

* every task: ``train_loss``, ``val_loss``, ``val_accuracy``, ``val_f1``, plus ``epoch``, ``lr``,
  ``epoch_seconds`` from the trainer;
* ``segmentation`` adds ``val_iou``; ``multilabel`` adds ``val_f1_micro``.

Definitions:

* losses: cross-entropy (classification), binary cross-entropy on logits (multilabel, per label),
  cross-entropy over pixels not labelled 255 (segmentation). An epoch's loss is the sum over the
  epoch divided by the number of terms (chips, chip-labels or labelled pixels), so it does not
  depend on how the chips were batched.
* accuracy: correct / total chips (classification) or labelled pixels (segmentation); multilabel:
  the fraction of correct label decisions (1 - Hamming loss; logit > 0 means present), since
  exact-set accuracy over 19 BigEarthNet labels is near zero for any model and ranks nothing.
* F1: macro F1, the mean over classes of ``2 TP / (2 TP + FP + FN)``, over the classes that occur in
  the targets or the predictions (as scikit-learn's ``f1_score(average="macro")``: a class absent
  from both has no F1 rather than a 0 or 1 that would move the mean). Multilabel ``val_f1`` is the
  same macro mean over labels, so rare labels count as much as common ones, and ``val_f1_micro``
  pools the counts of all labels (dominated by common labels).
* IoU (segmentation): ``TP / (TP + FP + FN)`` per class, averaged over the classes present in the
  targets or predictions.

An undefined metric (no chips, no class present) is NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from earthops_runtime.data.shards import IGNORE_INDEX

TASKS = ("classification", "multilabel", "segmentation")
_COMMON = ("epoch", "lr", "epoch_seconds", "train_loss", "val_loss", "val_accuracy", "val_f1")
_EXTRA = {"classification": (), "multilabel": ("val_f1_micro",), "segmentation": ("val_iou",)}


def metric_names(task: str) -> tuple[str, ...]:
    """The metrics a trainer reports every epoch for a dataset of ``task``."""
    return _COMMON + _EXTRA[task]


# --- losses -------------------------------------------------------------------------------------


def loss_sum(logits: torch.Tensor, target: torch.Tensor, task: str) -> tuple[torch.Tensor, torch.Tensor | int]:
    """The summed loss of a batch and its number of terms (chips, chip-labels or labelled pixels).

    Sums rather than means: the epoch loss is exact whatever the batching, and a segmentation batch
    whose pixels are all ignored adds zero instead of NaN. Computed in float32 (also under AMP)."""
    logits = logits.float()
    if task == "classification":
        return F.cross_entropy(logits, target, reduction="sum"), target.shape[0]
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, target.float(), reduction="sum"), target.numel()
    if task == "segmentation":
        total = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
        return total, (target != IGNORE_INDEX).sum()
    raise ValueError(f"task {task!r}: expected one of {', '.join(TASKS)}")


def mean_loss(total: torch.Tensor, count: torch.Tensor | int) -> torch.Tensor:
    """``total / count``, and 0 for no terms (a batch of ignored pixels trains nothing)."""
    if isinstance(count, torch.Tensor):
        return total / count.clamp_min(1)
    return total / max(count, 1)


# --- metrics from counts (pure) -----------------------------------------------------------------


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int | None = None) -> torch.Tensor:
    """``(K, K)`` int64 counts, rows = target class, columns = predicted class; positions where the
    target is ``ignore_index`` are left out."""
    pred, target = pred.reshape(-1), target.reshape(-1)
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    flat = target.long() * num_classes + pred.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _per_class(cm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cm = cm.double()
    tp = cm.diagonal()
    return tp, cm.sum(0) - tp, cm.sum(1) - tp  # TP, FP, FN


def accuracy(cm: torch.Tensor) -> float:
    """Correct / total of a confusion matrix."""
    total = float(cm.sum())
    return float(cm.diagonal().sum()) / total if total else math.nan


def _mean_present(num: torch.Tensor, den: torch.Tensor) -> float:
    present = den > 0
    return float((num[present] / den[present]).mean()) if bool(present.any()) else math.nan


def f1_from_counts(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> float:
    """Macro F1 over the classes with any TP, FP or FN (see the module docstring)."""
    tp, fp, fn = tp.double(), fp.double(), fn.double()
    return _mean_present(2 * tp, 2 * tp + fp + fn)


def macro_f1(cm: torch.Tensor) -> float:
    """Macro F1 of a confusion matrix, over the classes present in targets or predictions."""
    return f1_from_counts(*_per_class(cm))


def mean_iou(cm: torch.Tensor) -> float:
    """Mean IoU of a confusion matrix, over the classes present in targets or predictions."""
    tp, fp, fn = _per_class(cm)
    return _mean_present(tp, tp + fp + fn)


def multilabel_counts(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(K, 4)`` int64 per-label counts TP, FP, FN, TN of ``logits > 0`` against 0/1 ``target``."""
    pred, truth = logits > 0, target > 0.5
    return torch.stack([(pred & truth).sum(0), (pred & ~truth).sum(0), (~pred & truth).sum(0),
                        (~pred & ~truth).sum(0)], dim=1)


def multilabel_metrics(counts: torch.Tensor) -> dict[str, float]:
    """Accuracy (per label decision), macro F1 and micro F1 from :func:`multilabel_counts` sums."""
    c = counts.double()
    tp, fp, fn, tn = c.unbind(1)
    total = float(c.sum())
    micro_den = float(2 * tp.sum() + fp.sum() + fn.sum())
    return {
        "accuracy": float((tp + tn).sum()) / total if total else math.nan,
        "f1": f1_from_counts(tp, fp, fn),
        "f1_micro": float(2 * tp.sum()) / micro_den if micro_den else math.nan,
    }


# --- accumulation -------------------------------------------------------------------------------


class MetricAccumulator:
    """Sums a split's loss and counts batch by batch on the model's device; :meth:`compute` reads
    them back once (no host sync per batch, which on a GPU would stall the pipeline)."""

    def __init__(self, task: str, num_classes: int, device: torch.device):
        if task not in TASKS:
            raise ValueError(f"task {task!r}: expected one of {', '.join(TASKS)}")
        self.task = task
        self.num_classes = num_classes
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.terms = torch.zeros((), dtype=torch.float64, device=device)
        width = 4 if task == "multilabel" else num_classes
        self.counts = torch.zeros((num_classes, width), dtype=torch.int64, device=device)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: its logits and targets as the loader gives them."""
        total, terms = loss_sum(logits, target, self.task)
        self.loss += total.detach()
        self.terms += terms
        if self.task == "multilabel":
            self.counts += multilabel_counts(logits.detach(), target)
        else:
            ignore = IGNORE_INDEX if self.task == "segmentation" else None
            self.counts += confusion_matrix(logits.detach().argmax(1), target, self.num_classes, ignore)

    def compute(self, prefix: str = "val_") -> dict[str, float]:
        """``{prefix}loss``, ``{prefix}accuracy``, ``{prefix}f1`` and the task's extra metrics."""
        terms = float(self.terms)
        out = {f"{prefix}loss": float(self.loss) / terms if terms else math.nan}
        counts = self.counts.cpu()
        if self.task == "multilabel":
            out.update({f"{prefix}{k}": v for k, v in multilabel_metrics(counts).items()})
        else:
            out[f"{prefix}accuracy"] = accuracy(counts)
            out[f"{prefix}f1"] = macro_f1(counts)
            if self.task == "segmentation":
                out[f"{prefix}iou"] = mean_iou(counts)
        return out
