"""Removing named submodules from a model (torch; no Ray).

A layer is a name of ``model.named_modules()`` (``conv3``, ``layer2.0``); a prefix names every layer
that starts with it (the outermost ones: a submodule inside a matched layer goes with it). The first
and the last child of the model (its input and output layers) are never removed.

Removal, in this order:

1. a model that declares how to leave layers out — a ``without(names)`` method returning the model
   rebuilt without those children (``iceberg-cnn`` does) — is rebuilt, and every weight whose name and
   shape are unchanged is copied from the built model, so a trial initialises what it shares with the
   base trial of its seed identically;
2. otherwise each layer becomes ``nn.Identity``, which only works for a layer whose output has its
   input's shape: one forward pass of a dummy batch through the intact model measures every layer to
   remove, and a shape-changing one is a :class:`SpecError` naming the layer and both shapes, before
   any trial runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from earthops_runtime.errors import SpecError


def children(model: nn.Module) -> list[str]:
    """The model's direct children, in order."""
    return [n for n, _ in model.named_children()]


def layer_names(model: nn.Module) -> list[str]:
    """Every named submodule (dotted), in order."""
    return [n for n, _ in model.named_modules() if n]


def _listing(model: nn.Module) -> str:
    top = children(model)
    nested = len(layer_names(model)) - len(top)
    return ", ".join(top) + (f" (and {nested} nested submodules such as {_nested_example(model)})" if nested else "")


def _nested_example(model: nn.Module) -> str:
    return next((n for n in layer_names(model) if "." in n), "")


def protected(model: nn.Module) -> tuple[str, str]:
    """The first and the last child: the layers that can never be removed."""
    top = children(model)
    return top[0], top[-1]


def _inside(name: str, outer: str) -> bool:
    return name == outer or name.startswith(outer + ".")


def resolve(model: nn.Module, *, layers: Sequence[str] | None = None, prefix: str | None = None, field: str,
            model_name: str = "the model") -> list[str]:
    """The layers a component removes (an explicit list or a prefix), checked: SpecError on ``field``
    for a layer the model does not have (listing those it has), a first or last layer, or a prefix that
    matches nothing removable."""
    names = layer_names(model)
    first, last = protected(model)
    if layers is not None:
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise SpecError(field, f"{model_name} has no layer {', '.join(unknown)}; its layers: {_listing(model)}")
        for n in layers:
            for edge, which in ((first, "first"), (last, "last")):
                if _inside(n, edge):
                    raise SpecError(field, f"{n} is {'' if n == edge else 'inside '}the {which} layer of {model_name} "
                                           f"({edge}), which cannot be removed; removable layers: "
                                           f"{', '.join(children(model)[1:-1])}")
        return list(layers)
    if prefix is None:
        raise ValueError("resolve: give layers or prefix")
    matched = [n for n in names if n.startswith(prefix) and not _inside(n, first) and not _inside(n, last)]
    outer = [n for n in matched if not any(n != m and _inside(n, m) for m in matched)]
    if not outer:
        raise SpecError(field, f"prefix {prefix!r} matches no removable layer of {model_name} (the first and last "
                               f"layers, {first} and {last}, never match); its layers: {_listing(model)}")
    return outer


def measure(model: nn.Module, names: Sequence[str], example: torch.Tensor) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Input and output shapes of the layers ``names`` in one forward pass of ``example``."""
    seen: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    hooks = []

    def hook(name: str) -> Any:
        def record(_module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if name not in seen and args and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor):
                seen[name] = (tuple(args[0].shape), tuple(output.shape))
        return record

    for n in names:
        hooks.append(model.get_submodule(n).register_forward_hook(hook(n)))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return seen


def remove(model: nn.Module, names: Sequence[str], *, example: torch.Tensor, field: str,
           model_name: str = "the model") -> nn.Module:
    """``model`` without the layers ``names`` (see the module docstring)."""
    top = set(children(model))
    without = getattr(model, "without", None)
    if callable(without) and all(n in top for n in names):
        try:
            rebuilt = without(list(names))
        except (ValueError, TypeError, RuntimeError) as exc:
            raise SpecError(field, f"{model_name} cannot be rebuilt without {', '.join(names)}: {exc}") from exc
        state = rebuilt.state_dict()
        shared = {k: v for k, v in model.state_dict().items() if k in state and state[k].shape == v.shape}
        state.update(shared)
        rebuilt.load_state_dict(state)
        return rebuilt
    shapes = measure(model, names, example)
    for n in names:
        if n not in shapes:
            raise SpecError(field, f"layer {n} of {model_name} is never called on a tensor in its forward pass: "
                                   "removing it would change nothing")
        shape_in, shape_out = shapes[n]
        if shape_in != shape_out:
            raise SpecError(field, f"layer {n} of {model_name} changes shapes, {list(shape_in)} in and "
                                   f"{list(shape_out)} out, so it cannot become an identity; remove shape-preserving "
                                   "layers, or give the model a without(names) method that rebuilds it")
    for n in names:
        parent_name, _, attr = n.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        parent._modules[attr] = nn.Identity()
    return model


__all__ = ["children", "layer_names", "measure", "protected", "remove", "resolve"]
