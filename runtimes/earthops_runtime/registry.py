"""The model registry: immutable, numbered model versions in the store, described in STAC (MLM).

``register_model`` publishes ``<store>/models/<ns>/<model>/<vN>/`` in one atomic step
(:meth:`earthops.core.store.Store.publish`)::

    weights.pt      the state_dict (CPU tensors): rebuild the architecture, load the weights
    model.pt2       the exported program (torch.export, eval mode, any batch size when the model
                    allows it) — or model.ts (TorchScript, traced) when the model cannot be exported
    item.json       the STAC item with the ML-Model extension (earthops_runtime.catalog.model)
    stats.json      the training data statistics (the dataset's stats.json): the drift reference
    index.parquet   the item in the search index, so ``earthops search`` finds models

then rewrites the model's ``collection.json`` (its versions) and links it from the root catalog.

Versions. The next number is one more than the highest folder under the model (published or
being published, so a registration never takes a number another one is writing on S3). A published
version is immutable: the store refuses to publish it twice, so two registrations racing for one
number cannot both win; the loser takes the next number and tries again. On S3 the refusal is a
check before copying (S3 has no atomic rename), so the race is narrowed to that window, not closed.

Reading (``load_model``) and listing go through :mod:`earthops.core.registry`, the control plane's
JSON-only view, so ``latest`` and the error messages are the same everywhere.
"""

from __future__ import annotations

import copy
import io
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from earthops.core.registry import (
    AREA,
    COLLECTION_NAME,
    ITEM_NAME,
    LATEST,
    RegistryError,
    check_names,
    next_version,
    read_item,
    version_key,
    versions,
)
from earthops.core.store import Store, StoreError, run_prefix
from earthops_runtime.catalog.dataset import update_root_catalog
from earthops_runtime.catalog.index import INDEX_NAME, write_index
from earthops_runtime.catalog.model import (
    EXPORTED,
    TORCHSCRIPT,
    Artifact,
    ModelCard,
    check_card,
    index_entry,
    model_collection,
    model_item,
    rebuild_arguments,
    validate,
)

WEIGHTS_NAME = "weights.pt"
STATS_NAME = "stats.json"
#: Registrations racing for a version number: how many numbers one registration tries.
ATTEMPTS = 5


@dataclass(frozen=True)
class RegisteredVersion:
    """A published model version: ``uri`` is its folder, ``item_href`` its STAC item."""

    name: str
    version: str
    uri: str
    item_href: str


# --- registering -----------------------------------------------------------------------------------


def register_model(store: Store, *, namespace: str, name: str, model: torch.nn.Module, example_input: torch.Tensor,
                   card: ModelCard, training_stats: dict[str, Any] | None = None) -> RegisteredVersion:
    """Publish ``model`` as the next version of ``<namespace>/<name>`` (see the module docstring).

    ``example_input``: a float32 ``(B, C, H, W)`` batch as the model gets it (normalised), on any
    device; it fixes the exported program's shapes. ``training_stats``: the dataset's ``stats.json``
    document; by default it is read from ``card.dataset_uri``. The caller's model is not changed
    (a CPU copy in eval mode is exported). Raises ValueError for a card or input that disagree,
    :class:`earthops.core.store.StoreError` when the store or the dataset cannot be read or written."""
    check_names(namespace, name)
    check_card(card)
    x = example_input.detach().to("cpu", torch.float32)
    expected = (len(card.features), *(int(v) for v in card.chip_shape))
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
        raise ValueError(f"example_input: shape {tuple(x.shape)}, expected (batch, {', '.join(map(str, expected))}) "
                         f"for the features {list(card.features)} and chip shape {tuple(card.chip_shape)}")
    module = copy.deepcopy(model).to("cpu").eval()
    with torch.no_grad():
        output_shape = tuple(module(x).shape)
    artifact, program = export_program(module, x)
    weights = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, weights)
    stats = training_stats if training_stats is not None else _url_store(card.dataset_uri).read_json(STATS_NAME)
    dataset_collection = _optional_json(card.dataset_collection)
    total = sum(p.numel() for p in module.parameters())

    prefix = run_prefix(AREA, namespace, name)
    for attempt in range(ATTEMPTS):
        version = next_version(store.children(prefix))
        item = model_item(card, namespace=namespace, name=name, version=version, created=datetime.now(UTC),
                          artifact=artifact, output_shape=output_shape, total_parameters=total,
                          framework_version=torch.__version__.split("+")[0], dataset_collection=dataset_collection)
        validate(item, f"{prefix}/{version}/{ITEM_NAME}")
        key = version_key(namespace, name, version)
        try:
            with store.publish(key) as run:
                run.write_bytes(WEIGHTS_NAME, weights.getvalue())
                run.write_bytes(artifact.file, program)
                run.write_json(STATS_NAME, stats)
                run.write_json(ITEM_NAME, item)
                write_index(run, INDEX_NAME, [index_entry(item)])
        except StoreError:
            # another registration published this number first: take the next one
            if attempt + 1 < ATTEMPTS and store.is_published(key):
                continue
            raise
        break
    write_model_collection(store, namespace, name)
    update_root_catalog(store, f"{prefix}/{COLLECTION_NAME}", title=f"Model {namespace}/{name}")
    return RegisteredVersion(name=name, version=version, uri=store.url(key),
                             item_href=store.url(f"{key}/{ITEM_NAME}"))


def export_program(module: torch.nn.Module, x: torch.Tensor) -> tuple[Artifact, bytes]:
    """The runnable artifact of an eval-mode CPU module: ``torch.export`` with a dynamic batch
    dimension; with the example's batch size when the model fixes it; a TorchScript trace when it
    cannot be exported at all (data-dependent control flow, unsupported ops). The artifact says which
    and why."""
    # a batch of 1 would be specialised (0/1 specialisation): export on two or more
    batch = x if x.shape[0] > 1 else torch.cat([x, x])
    failures: list[str] = []
    for dynamic in (True, False):
        try:
            program = torch.export.export(module, (batch if dynamic else x,),
                                          dynamic_shapes=({0: torch.export.Dim.DYNAMIC},) if dynamic else None)
        except Exception as exc:  # noqa: BLE001 - torch.export raises many types; the fallback is the answer
            failures.append(_first_line(exc))
            continue
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        note = None if dynamic else f"exported for batch size {x.shape[0]} only: {failures[0]}"
        return Artifact("model.pt2", EXPORTED, dynamic, note), buffer.getvalue()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # a deliberate fallback (TorchScript is deprecated, traces warn about shapes): the item says why
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(module, x)
        torch.jit.save(traced, buffer)
    return (Artifact("model.ts", TORCHSCRIPT, _any_batch(traced, module, x),
                     f"torch.export failed ({failures[-1]}); traced with TorchScript on the example input"),
            buffer.getvalue())


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


def _any_batch(traced: torch.nn.Module, module: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether a traced module still matches the model at another batch size (traces can bake the
    example's shapes in)."""
    other = torch.cat([x, x[:1]])
    try:
        with torch.no_grad():
            return bool(torch.allclose(traced(other), module(other), rtol=1e-4, atol=1e-5))
    except RuntimeError:
        return False


def write_model_collection(store: Store, namespace: str, name: str, attempts: int = ATTEMPTS) -> dict[str, Any]:
    """Rewrite ``models/<ns>/<name>/collection.json`` from the published versions (one atomic write).

    Two registrations finishing together could each write a listing without the other's version;
    each one lists again after writing and rewrites while the versions changed meanwhile."""
    key = f"{run_prefix(AREA, namespace, name)}/{COLLECTION_NAME}"
    doc: dict[str, Any] = {}
    for _ in range(attempts):
        found = versions(store, namespace, name)
        items = {v: store.read_json(f"{version_key(namespace, name, v)}/{ITEM_NAME}") for v in found}
        doc = model_collection(namespace, name, items)
        validate(doc, key)
        store.write_json(key, doc)
        if versions(store, namespace, name) == found:
            break
    return doc


# --- loading ---------------------------------------------------------------------------------------


def load_model(store: Store, namespace: str, name: str, version: str = LATEST, *,
               exported: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``(module, item)`` of a registered version, on the CPU, ready for inference.

    ``exported=False``: the architecture rebuilt by the model zoo from the item
    (``mlm:architecture``, ``earthops:parameters``, bands, classes, chip shape) with the weights
    loaded, in eval mode — for fine-tuning or ablation. ``exported=True``: the exported program's
    module (or the TorchScript module) — no model code needed, what serving runs. Raises
    :class:`earthops.core.registry.RegistryError` naming the models or versions that exist."""
    version, item = read_item(store, namespace, name, version)
    key = version_key(namespace, name, version)
    if exported:
        asset = item["assets"]["model"]
        data = io.BytesIO(store.read_bytes(f"{key}/{asset['href'].removeprefix('./')}"))
        kind = asset.get("mlm:artifact_type")
        if kind == EXPORTED:
            return torch.export.load(data).module(), item
        if kind == TORCHSCRIPT:
            return torch.jit.load(data, map_location="cpu").eval(), item
        raise RegistryError(f"{store.url(key)}: model artifact type {kind!r} is not one earthops loads "
                            f"({EXPORTED}, {TORCHSCRIPT})")
    from earthops_runtime.models import build_model

    arguments = rebuild_arguments(item)
    module = build_model(arguments.pop("name"), arguments.pop("parameters"), **arguments)
    state = torch.load(io.BytesIO(store.read_bytes(f"{key}/{WEIGHTS_NAME}")), map_location="cpu", weights_only=True)
    module.load_state_dict(state)
    return module.eval(), item


# --- reading what the dataset says -----------------------------------------------------------------


def _url_store(uri: str) -> Store:
    """A store rooted at ``uri`` (a dataset run folder, possibly in another store than the model's).
    A local folder that does not exist is an error here, not created as opening a store would."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") and not Path(parsed.path if parsed.scheme else uri).exists():
        raise StoreError(f"read {uri}: not found")
    return Store.from_uri(uri)


def _optional_json(url: str | None) -> dict[str, Any] | None:
    """The JSON document at ``url``, or None when there is none or it cannot be read: the dataset
    collection only refines the item's footprint (the world otherwise)."""
    if not url:
        return None
    parent, _, name = url.rstrip("/").rpartition("/")
    try:
        return _url_store(parent).read_json(name)
    except StoreError:
        return None


__all__ = ["ModelCard", "RegisteredVersion", "export_program", "load_model", "register_model",
           "write_model_collection"]
