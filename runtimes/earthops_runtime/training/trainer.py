"""The one trainer shared by tuning trials, ablation trials and the final model.

``Trainer(DatasetInfo.open(uri), "iceberg-cnn", {"kernelSize": 3}, Training(epochs=8))`` builds the
model for the dataset, then :meth:`Trainer.train_epoch` runs one epoch of training and validation
and returns that epoch's metrics (names in :mod:`earthops_runtime.training.metrics`), and
:meth:`Trainer.fit` runs epochs until done or told to stop.

Reproducibility. The model is built with Python's ``random``, numpy and torch seeded by
``training.seed`` (same weights), the loader's order is a function of ``(seed, epoch)``, and
dropout draws from torch's generator. The trainer keeps its own generator states: it swaps them in
for its training steps and gives the caller's back after, so neither other trainers in the process
nor a tuner's driver shift its random stream, and it never reseeds the caller's. Those states go
into checkpoints: on the CPU the same seed gives the same metrics, and a trainer restored from a
checkpoint continues exactly as the uninterrupted one would have. On CUDA kernels may differ in the last bits (cuDNN autotuning
is on there: chip shapes are fixed, so the search pays once), which the tuner tolerates.

Learning rate. The rate of every optimiser step is ``training.learning_rate`` times a pure function
of the step (:func:`schedule_factor`), set before the step: the schedule's state is the step count,
and a checkpoint restored into a trainer with another learning rate (population-based training
mutates it) continues with the new one.

Device. ``auto`` takes CUDA when present, with mixed precision (bfloat16 where the GPU has it,
else float16 with a gradient scaler); the CPU trains in float32 (autocast on CPU is slower for
these convolutions, not faster). ``threads`` sets torch's intra-op threads, for several trials
sharing one machine. ``model_transform`` changes the model right after it is built, under the
seed's generator states (an ablation trial removing layers), before the output check.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from earthops.api.tuning import Training
from earthops.core.store import Store
from earthops_runtime.data.loader import steps_per_epoch
from earthops_runtime.errors import SpecError
from earthops_runtime.models.zoo import build_model, model_arguments
from earthops_runtime.training.allocator import retain_freed_memory
from earthops_runtime.training.data import DatasetInfo
from earthops_runtime.training.metrics import MetricAccumulator, loss_sum, mean_loss

CHECKPOINT_FILE = "trainer.pt"
CHECKPOINT_FORMAT = "earthops.trainer"
CHECKPOINT_VERSION = 1
#: ``step`` schedule: the rate is multiplied by this at each third of the epochs.
STEP_GAMMA = 0.1
#: ``onecycle`` (as PyTorch's ``OneCycleLR``): share of steps warming up, start and end divisors.
ONECYCLE_WARMUP = 0.3
ONECYCLE_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e4


# --- decisions (pure) ---------------------------------------------------------------------------


def resolve_device(requested: str, cuda_available: bool) -> str:
    """``cuda`` or ``cpu`` for ``auto``/``cpu``/``cuda`` (or a device string such as ``cuda:1``)."""
    if requested == "auto":
        return "cuda" if cuda_available else "cpu"
    if requested.startswith("cuda") and not cuda_available:
        raise SpecError("spec.training.device", f"{requested}: no CUDA device is available here; use auto or cpu")
    return requested


def amp_dtype(device_type: str, bf16_supported: bool) -> torch.dtype | None:
    """The autocast dtype: bfloat16 or float16 on CUDA, none (float32) elsewhere."""
    if device_type != "cuda":
        return None
    return torch.bfloat16 if bf16_supported else torch.float16


def schedule_factor(schedule: str, step: int, total_steps: int, steps_per_epoch: int, epochs: int) -> float:
    """The learning-rate multiplier of optimiser step ``step`` (0-based) of ``total_steps``.

    ``constant``: 1. ``cosine``: half a cosine from 1 to 0 over the steps. ``step``: times
    :data:`STEP_GAMMA` after each third of the epochs (per epoch, as ``StepLR``). ``onecycle``: a
    cosine rise from 1/25 to 1 over the first 30 % of the steps, then a cosine fall to 1/25e4 (as
    ``OneCycleLR``, without its momentum cycling). Steps past the end keep the last factor."""
    step = min(step, max(total_steps - 1, 0))
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / max(total_steps, 1)))
    if schedule == "step":
        every = max(1, epochs // 3)
        return STEP_GAMMA ** ((step // max(steps_per_epoch, 1)) // every)
    if schedule == "onecycle":
        warmup = max(1, round(ONECYCLE_WARMUP * total_steps))
        start, end = 1.0 / ONECYCLE_DIV, 1.0 / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV)
        if step < warmup:
            return start + (1.0 - start) * 0.5 * (1.0 - math.cos(math.pi * step / warmup))
        t = (step - warmup) / max(1, total_steps - warmup)
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"schedule {schedule!r}: expected constant, cosine, step or onecycle")


def make_optimizer(name: str, params: Any, learning_rate: float, weight_decay: float) -> torch.optim.Optimizer:
    """``adam`` (L2 penalty as weight decay), ``adamw`` (decoupled decay), ``sgd`` (momentum 0.9)."""
    if name == "adam":
        return torch.optim.Adam(params, lr=learning_rate, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=learning_rate, momentum=0.9, weight_decay=weight_decay)
    raise SpecError("spec.training.optimizer", f"{name!r}: expected adam, adamw or sgd")


def expected_output(task: str, batch: int, num_classes: int, chip_shape: tuple[int, int]) -> tuple[int, ...]:
    """The logits shape a model must return for a batch."""
    return (batch, num_classes, *chip_shape) if task == "segmentation" else (batch, num_classes)


def fill_nodata(x: torch.Tensor) -> torch.Tensor:
    """Nodata (NaN, and infinities) set to 0, in place: the training mean once normalised. Chips may
    keep a few nodata pixels (the dataset's ``maxNodataFraction``); one NaN would poison the loss
    and, through the gradients, every weight. Serving must fill the same way."""
    return x.nan_to_num_(0.0, 0.0, 0.0)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(cuda: torch.device | None = None) -> dict[str, Any]:
    """Python, numpy and torch generator states (and that of the CUDA device ``cuda``), as tensors
    and plain values so a checkpoint loads with ``weights_only=True``. Only the trainer's own CUDA
    device is touched: asking for all devices would create a CUDA context in CPU trials."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(cuda) if cuda is not None else None,
    }


def set_rng_state(state: Mapping[str, Any], cuda: torch.device | None = None) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if cuda is not None and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], cuda)


# --- the trainer --------------------------------------------------------------------------------


class Trainer:
    """Trains ``model_name`` (zoo name or ``package.module:factory``) with ``model_parameters``
    (manifest keys, camelCase) on ``dataset`` as ``training`` says.

    ``device``: overrides ``training.device`` (``auto``/``cpu``/``cuda``). ``loader_workers``:
    DataLoader processes (0: read in this process, with the loader's read-ahead threads; right for
    a trial holding one or two cores). ``max_train_batches``/``max_val_batches``: caps per epoch
    and per evaluation (tests, smoke runs). ``threads``: torch intra-op threads (None: leave as is).
    ``model_transform``: model -> model, applied once after building (ablation trials). The process
    keeps the memory a step frees for the next (:mod:`earthops_runtime.training.allocator`).

    Attributes: ``model``, ``device``, ``amp`` (mixed precision on), ``epoch`` (epochs done),
    ``step`` (optimiser steps done), ``history`` (metrics of every epoch done),
    ``model_parameters`` (the factory's arguments after conversion, snake_case),
    ``steps_per_epoch``, ``total_steps``."""

    def __init__(self, dataset: DatasetInfo, model_name: str, model_parameters: Mapping[str, Any] | None,
                 training: Training, *, device: str | None = None, loader_workers: int = 0,
                 max_train_batches: int | None = None, max_val_batches: int | None = None,
                 threads: int | None = None, model_transform: Callable[[torch.nn.Module], torch.nn.Module] | None = None):
        retain_freed_memory()
        if threads is not None:
            torch.set_num_threads(max(1, int(threads)))
        self.dataset = dataset
        self.training = training
        self.model_name = model_name
        self.device = torch.device(resolve_device(device or training.device, torch.cuda.is_available()))
        cuda = self.device.type == "cuda"
        self.amp_dtype = amp_dtype(self.device.type, cuda and torch.cuda.is_bf16_supported())
        self.amp = self.amp_dtype is not None
        if cuda:
            torch.backends.cudnn.benchmark = True
        self.max_train_batches = max_train_batches
        self.max_val_batches = max_val_batches
        self.loader_workers = loader_workers

        self._cuda = self.device if cuda else None
        self.model_parameters = model_arguments(model_name, model_parameters)
        outer = rng_state(self._cuda)
        try:
            seed_everything(training.seed)
            self.model = build_model(model_name, model_parameters or {}, in_channels=dataset.in_channels,
                                     num_classes=dataset.num_classes, task=dataset.task,
                                     chip_shape=dataset.chip_shape)
            if model_transform is not None:
                self.model = model_transform(self.model)
            self.model.to(self.device)
            self._rng = rng_state(self._cuda)
        finally:
            set_rng_state(outer, self._cuda)
        self._check_output()
        self.optimizer = make_optimizer(training.optimizer, self.model.parameters(), training.learning_rate,
                                        training.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        self.train_loader = dataset.loader("train", training.batch_size, shuffle=True, seed=training.seed,
                                           workers=loader_workers, pin_memory=cuda)
        self.val_loader = dataset.loader("validation", training.batch_size, shuffle=False,
                                         workers=loader_workers, pin_memory=cuda)
        full = steps_per_epoch(self.train_loader.dataset, training.batch_size, loader_workers)
        self.steps_per_epoch = full if max_train_batches is None else min(full, max_train_batches)
        self.total_steps = training.epochs * self.steps_per_epoch
        self.epoch = 0
        self.step = 0
        self.history: list[dict[str, float]] = []

    # -- helpers --

    def _check_output(self) -> None:
        """Fail before training if the model's logits do not fit the dataset (custom factories)."""
        want = expected_output(self.dataset.task, 2, self.dataset.num_classes, self.dataset.chip_shape)
        x = torch.zeros((2, self.dataset.in_channels, *self.dataset.chip_shape), device=self.device)
        self.model.eval()
        try:
            with torch.inference_mode(), self._autocast():
                got = tuple(self.model(x).shape)
        except RuntimeError as exc:
            raise SpecError("spec.model.name", f"{self.model_name} fails on a batch of {tuple(x.shape)} "
                                               f"chips: {exc}") from exc
        finally:
            self.model.train()
        if got != want:
            raise SpecError("spec.model.name", f"{self.model_name} returns logits of shape {got} for a batch of "
                                               f"{tuple(x.shape)}; a {self.dataset.task} dataset of "
                                               f"{self.dataset.num_classes} classes needs {want}")

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _batches(self, loader: torch.utils.data.DataLoader, limit: int | None) -> Iterator[tuple[torch.Tensor, ...]]:
        batches = loader if limit is None else itertools.islice(loader, limit)
        for x, y in batches:
            yield fill_nodata(x.to(self.device, non_blocking=True)), y.to(self.device, non_blocking=True)

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Run with this trainer's generator states, then give the caller's back: trainers and the
        code around them (a tuner's driver, another trainer in the same process) do not draw from
        each other's random streams."""
        outer = rng_state(self._cuda)
        set_rng_state(self._rng, self._cuda)
        try:
            yield
        finally:
            self._rng = rng_state(self._cuda)
            set_rng_state(outer, self._cuda)

    def _set_lr(self) -> float:
        t = self.training
        lr = t.learning_rate * schedule_factor(t.schedule, self.step, self.total_steps, self.steps_per_epoch, t.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    # -- training --

    def train_epoch(self) -> dict[str, float]:
        """One epoch of training, then validation; the epoch's metrics (also appended to ``history``)."""
        started = time.perf_counter()
        self.model.train()
        self.train_loader.dataset.set_epoch(self.epoch)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        terms = torch.zeros((), dtype=torch.float64, device=self.device)
        lr = self.training.learning_rate
        with self._own_rng():
            for x, y in self._batches(self.train_loader, self.steps_per_epoch):
                lr = self._set_lr()
                with self._autocast():
                    logits = self.model(x)
                batch_total, batch_terms = loss_sum(logits, y, self.dataset.task)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(mean_loss(batch_total, batch_terms)).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                total += batch_total.detach()
                terms += batch_terms
                self.step += 1
        self.epoch += 1
        n = float(terms)
        metrics = {"epoch": float(self.epoch), "train_loss": float(total) / n if n else math.nan}
        metrics.update(self.evaluate("validation"))
        metrics["lr"] = lr
        metrics["epoch_seconds"] = time.perf_counter() - started
        self.history.append(metrics)
        return metrics

    def fit(self, epochs: int | None = None,
            on_epoch: Callable[[dict[str, float]], bool | None] | None = None) -> dict[str, float]:
        """Train until ``epochs`` epochs are done in all (default ``training.epochs``; a restored
        trainer continues from its epoch), calling ``on_epoch(metrics)`` after each; it returning
        True stops. The last epoch's metrics ({} when nothing was left to do and none ran before)."""
        target = self.training.epochs if epochs is None else int(epochs)
        metrics = self.history[-1] if self.history else {}
        while self.epoch < target:
            metrics = self.train_epoch()
            if on_epoch is not None and on_epoch(metrics):
                break
        return metrics

    def evaluate(self, split: str = "validation") -> dict[str, float]:
        """Loss and metrics of the model on ``split`` (at most ``max_val_batches`` batches), named
        ``val_*`` for the validation split and ``<split>_*`` otherwise."""
        if split == "validation":
            loader = self.val_loader
        else:
            loader = self.dataset.loader(split, self.training.batch_size, shuffle=False, workers=self.loader_workers,
                                         pin_memory=self.device.type == "cuda")
        self.model.eval()
        try:
            with torch.inference_mode():
                acc = MetricAccumulator(self.dataset.task, self.dataset.num_classes, self.device)
                for x, y in self._batches(loader, self.max_val_batches):
                    with self._autocast():
                        logits = self.model(x)
                    acc.update(logits, y)
        finally:
            self.model.train()
        return acc.compute("val_" if split == "validation" else f"{split}_")

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """``batch`` normalised chips of the validation split (the first ones, repeated if there are
        fewer): float32 ``(B, C, H, W)`` on the CPU, for exporting and checking the model."""
        chips = self.dataset.chips("validation", shuffle=False)
        first = [fill_nodata(item[0].clone()) for item in itertools.islice(chips, batch)]
        return torch.stack([first[i % len(first)] for i in range(batch)])

    # -- checkpoints --

    def state_dict(self) -> dict[str, Any]:
        """Everything to continue exactly: model, optimiser, scheduler (step), scaler, epoch, RNGs."""
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "model_name": self.model_name, "model_parameters": dict(self.model_parameters),
            "epoch": self.epoch, "history": [dict(m) for m in self.history],
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": {"name": self.training.schedule, "step": self.step, "total_steps": self.total_steps},
            "scaler": self.scaler.state_dict(), "rng": dict(self._rng),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` of a trainer of the same model (same dataset features).
        The learning rate, schedule and epochs are this trainer's own (see the module docstring)."""
        if state.get("format") != CHECKPOINT_FORMAT or int(state.get("version", 0)) > CHECKPOINT_VERSION:
            raise ValueError(f"not an {CHECKPOINT_FORMAT} v{CHECKPOINT_VERSION} checkpoint "
                             f"(format={state.get('format')!r}, version={state.get('version')!r})")
        if state["model_name"] != self.model_name:
            raise ValueError(f"checkpoint of model {state['model_name']!r}, not {self.model_name!r}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.step = int(state["scheduler"]["step"])
        self.history = [dict(m) for m in state["history"]]
        self._rng = dict(state["rng"])
        if self._cuda is not None and self._rng["cuda"] is None:  # saved by a CPU trainer
            self._rng["cuda"] = torch.cuda.get_rng_state(self._cuda)

    def save_checkpoint(self, directory: str | Path) -> None:
        """Write :meth:`state_dict` to ``<directory>/trainer.pt``: a local folder (written atomically)
        or a store URI (``s3://...``, ``file://...``)."""
        buf = io.BytesIO()
        torch.save(self.state_dict(), buf)
        if isinstance(directory, str) and "://" in directory:
            Store.from_uri(directory).write_bytes(CHECKPOINT_FILE, buf.getvalue())
            return
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{CHECKPOINT_FILE}.{os.getpid()}.tmp"
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, folder / CHECKPOINT_FILE)

    def load_checkpoint(self, directory: str | Path) -> None:
        """Continue from ``<directory>/trainer.pt`` (a local folder or a store URI)."""
        if isinstance(directory, str) and "://" in directory:
            data = Store.from_uri(directory).read_bytes(CHECKPOINT_FILE)
        else:
            data = (Path(directory) / CHECKPOINT_FILE).read_bytes()
        self.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
