"""Which layers can lose output channels on their own, and which layers shrink with them.

A cheap functional probe (one forward per layer on the example inputs): mark a quarter of a layer's output
channels NaN and follow them. A Linear/Conv whose input carries NaN in exactly those channel positions
(and nowhere else) is a *consumer* (its input channels go when the producer's output channels go): the
probe zeroes them there, as removing the columns would. A depthwise conv passes the channels through (it
shrinks too). If NaN still reaches the model output — through a residual add, a norm over channels, an
attention score, the output layer itself — the layer cannot be pruned alone (it would need a dependency
group across the residual stream), so it is not ``prunable``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Deps:
    """Probe result: prunable layers and the layers that shrink with each."""

    prunable: frozenset[str]
    consumers: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"prunable": sorted(self.prunable), "consumers": {k: list(v) for k, v in self.consumers.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Deps:
        return cls(frozenset(d.get("prunable", [])), {k: tuple(v) for k, v in d.get("consumers", {}).items()})


def _channel_axis(mod: nn.Module) -> int:
    return 1 if isinstance(mod, nn.modules.conv._ConvNd) else -1


def _is_depthwise(mod: nn.Module) -> bool:
    return isinstance(mod, nn.modules.conv._ConvNd) and mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels


def _nan_channels(x: torch.Tensor, axis: int) -> tuple[torch.Tensor, bool]:
    """(mask of channels that are NaN everywhere, whether NaN appears outside those channels)."""
    moved = x.movedim(axis, -1).reshape(-1, x.shape[axis])
    nan = torch.isnan(moved)
    full = nan.all(0)
    partial = bool((nan.any(0) & ~full).any())
    return full, partial


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        for o in out:
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


def _probe_one(model: nn.Module, mods: dict[str, nn.Module], name: str, example: Sequence[torch.Tensor]) -> tuple[bool, tuple[str, ...]]:
    target = mods[name]
    axis = _channel_axis(target)
    weight = target.weight
    width = int(weight.shape[0]) if isinstance(weight, torch.Tensor) else 1
    k = max(1, width // 4)
    consumers: list[str] = []
    broken = [False]
    handles = []

    def poison(_m: nn.Module, _inp: Any, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        idx = [slice(None)] * out.dim()
        idx[axis] = slice(0, k)
        out[tuple(idx)] = float("nan")
        return out

    def make_pre(other: str, mod: nn.Module) -> Any:
        ax = _channel_axis(mod)

        def pre(_m: nn.Module, args: tuple[Any, ...]) -> Any:
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor) or not torch.isnan(x).any():
                return None
            full, partial = _nan_channels(x, ax)
            if partial or int(full.sum()) != k:
                broken[0] = True
                return None
            consumers.append(other)
            if _is_depthwise(mod):
                return None  # passes the channels through; the next pointwise layer cleans them
            return (torch.nan_to_num(x, nan=0.0), *args[1:])

        return pre

    handles.append(target.register_forward_hook(poison))
    for other, mod in mods.items():
        if other != name:
            handles.append(mod.register_forward_pre_hook(make_pre(other, mod)))
    try:
        with torch.no_grad():
            out = _first_tensor(model(*example))
    except Exception:
        return False, ()
    finally:
        for h in handles:
            h.remove()
    ok = out is not None and not bool(torch.isnan(out).any()) and not broken[0]
    return ok, tuple(dict.fromkeys(consumers))


def find_deps(module: nn.Module, example_inputs: Sequence[torch.Tensor], layers: Sequence[str]) -> Deps:
    """Probe every named Linear/Conv layer in ``layers`` (non-depthwise ones) of ``module``."""
    named = dict(module.named_modules())
    mods = {n: named[n] for n in layers if n in named and isinstance(named[n], (nn.Linear, nn.modules.conv._ConvNd))}
    was_training = module.training
    module.eval()
    prunable: set[str] = set()
    consumers: dict[str, tuple[str, ...]] = {}
    try:
        for name, mod in mods.items():
            if _is_depthwise(mod):
                continue
            ok, deps = _probe_one(module, mods, name, tuple(example_inputs))
            if ok:
                prunable.add(name)
                consumers[name] = deps
    finally:
        module.train(was_training)
    return Deps(frozenset(prunable), consumers)
