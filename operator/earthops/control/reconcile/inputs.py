"""Inputs of a run: where the resources it references published their runs (pure).

A kind names its references by input key (``KINDS[kind].references(spec)``: ``{key: (kind, name,
field)}``, e.g. ``{"dataset": ("EODataset", "iceberg-chips", "spec.datasetRef.name")}`` for a
TuningExperiment). A referenced resource is usable once it is in its kind's ``ready_phase``: its ``status.results`` is then the URI of its
published run. The runtime receives them as ``python -m earthops_runtime run ... --input key=<URI>``
and its entrypoint as ``inputs={key: uri}``.

The operator and the embedded executor resolve inputs with :func:`resolve_inputs`, each with its own
way of reading the referenced resources' status; what is not usable yet becomes a
:class:`~earthops.control.status.Blocker` (``DatasetReady=False``, reason ``DatasetNotReady``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from earthops.api import KINDS, Resource
from earthops.control.status import Blocker, Met

#: (kind, name) -> the referenced resource's status (``{}`` when it has none yet), or None if it does not exist.
Lookup = Callable[[str, str], Mapping[str, Any] | None]


def condition_type(kind: str) -> str:
    """The condition that says whether a referenced kind is usable: ``DatasetReady`` for EODataset."""
    return f"{kind.removeprefix('EO')}Ready"


def not_ready_reason(kind: str) -> str:
    """``DatasetNotReady`` for EODataset."""
    return f"{kind.removeprefix('EO')}NotReady"


#: Referenced kinds whose failure fails the referencing resource instead of holding it Pending: a
#: study takes a TuningExperiment's best trial, which a failed experiment does not have (a resource
#: waits for a failed EODataset, whose owner may run it again).
FAIL_WITH = frozenset({"TuningExperiment"})


def failed_reason(kind: str) -> str:
    """``TuningExperimentFailed`` for a referenced TuningExperiment that failed."""
    return f"{kind.removeprefix('EO')}Failed"


@dataclass(frozen=True)
class Inputs:
    """The resolved inputs of a resource, or what it still waits for."""

    inputs: dict[str, str]
    blockers: tuple[Blocker, ...] = ()
    met: tuple[Met, ...] = ()

    @property
    def ready(self) -> bool:
        return not self.blockers


def resolve_inputs(resource: Resource[Any, Any], lookup: Lookup, *, wait: bool) -> Inputs:
    """Resolve ``resource``'s references to the URIs of their published runs.

    ``wait``: the caller will try again later (the operator), so a reference that is not usable is a
    blocker that holds the resource Pending; otherwise (a one-shot embedded run, where nothing else
    will make it usable) the blocker fails the resource."""
    inputs: dict[str, str] = {}
    blockers: list[Blocker] = []
    met: list[Met] = []
    for key, (kind, name, _field) in sorted(KINDS[resource.kind].references(resource.spec).items()):
        ready = KINDS[kind].ready_phase
        what = f"{kind} {name!r}"
        status = lookup(kind, name)
        if status is None:
            problem = f"{what} not found in namespace {resource.namespace}"
        elif status.get("phase") == "Failed" and kind in FAIL_WITH:
            blockers.append(Blocker(condition_type(kind), failed_reason(kind),
                                    f"{what} failed ({status.get('message') or 'no message'}): it has no result to "
                                    f"use; fix it, or reference one that succeeded", failed=True))
            continue
        elif status.get("phase") != ready:
            problem = f"{what} is {status.get('phase') or 'not started'}, not {ready}"
        elif not status.get("results"):
            problem = f"{what} is {ready} but names no published run (status.results)"
        else:
            inputs[key] = str(status["results"])
            met.append(Met(condition_type(kind), f"{what} is {ready}: {status['results']}"))
            continue
        suffix = "; waiting for it" if wait else ""
        blockers.append(Blocker(condition_type(kind), not_ready_reason(kind), problem + suffix, failed=not wait))
    return Inputs(inputs, tuple(blockers), tuple(met))
