"""Channel dependencies — the one answer to "which layers shrink when a layer loses output channels", read
by both the search (which layers it may channel-prune alone, whose MACs shrink with them) and the structured
pruner (:mod:`.structured`, which layers it must never shrink).

The answer comes from the same two sources the pruner applies:

* BERT-style transformer sites (:func:`.transformer.find_sites`): removing heads from ``query`` / ``key`` /
  ``value`` shrinks the attention output projection's input; removing FFN channels from
  ``intermediate.dense`` shrinks ``output.dense``'s input; the residual writers never shrink.
* torch-pruning's ``DependencyGraph`` for everything else: the group of a layer's output channels lists the
  layers whose **input** channels go with them (consumers — through BatchNorms, depthwise convs, flattens)
  and the other layers whose **output** channels must go too (producers coupled through a residual add).

A layer is *prunable alone* when its group has consumers (otherwise its output is a model output) and no
other producer (a coupled group would shrink layers the search does not price). Depthwise convs pass
channels through: they are consumers, never prunable themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from devicefit.compressor.attention import attention_projections
from devicefit.compressor.layers import is_rewritable
from devicefit.compressor.prune import transformer as tr


@dataclass(frozen=True)
class Deps:
    """Prunable layers and the layers that shrink with each."""

    prunable: frozenset[str]
    consumers: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"prunable": sorted(self.prunable), "consumers": {k: list(v) for k, v in self.consumers.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Deps:
        return cls(frozenset(d.get("prunable", [])), {k: tuple(v) for k, v in d.get("consumers", {}).items()})


def is_depthwise(mod: nn.Module) -> bool:
    return isinstance(mod, nn.modules.conv._ConvNd) and mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels


def dependency_graph(module: nn.Module, example_inputs: Sequence[torch.Tensor]) -> Any:
    """torch-pruning's ``DependencyGraph`` of ``module`` (in eval mode) on ``example_inputs``."""
    was_training = module.training
    module.eval()
    try:
        return tp.DependencyGraph().build_dependency(module, example_inputs=tuple(example_inputs))
    finally:
        module.train(was_training)


def _out_group(dg: Any, layer: nn.Module) -> Any:
    pruner = dg.get_pruner_of_module(layer)
    return dg.get_pruning_group(layer, pruner.prune_out_channels, [0])


def channel_group(dg: Any, layer: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(consumers, coupled producers) of ``layer``'s output channels in ``dg``: the modules whose input
    channels go with them, and the other Linear / Conv layers whose output channels must go too."""
    consumers: list[nn.Module] = []
    producers: list[nn.Module] = []
    for dep, _ in _out_group(dg, layer):
        target = dep.target.module
        if target is layer:
            continue
        if dg.is_in_channel_pruning_fn(dep.handler):
            consumers.append(target)
        elif is_rewritable(target) and not is_depthwise(target):
            producers.append(target)
    return consumers, producers


def is_output_layer(dg: Any, layer: nn.Module) -> bool:
    """True when no layer consumes ``layer``'s output channels (they reach the model output)."""
    return not any(dg.is_in_channel_pruning_fn(dep.handler) for dep, _ in _out_group(dg, layer))


def find_deps(module: nn.Module, example_inputs: Sequence[torch.Tensor], layers: Sequence[str]) -> Deps:
    """Which of ``layers`` (names in ``module``) can lose output channels alone, and their consumers."""
    named = dict(module.named_modules())
    order = {m: i for i, m in enumerate(named.values())}
    name_of = {m: n for n, m in named.items()}
    heads = attention_projections(module)  # a head layout torch-pruning does not follow: never pruned alone
    wanted = [n for n in layers if n in named and is_rewritable(named[n]) and not is_depthwise(named[n])
              and n not in heads]
    attn, ffn = tr.find_sites(module)
    site: dict[str, tuple[str, ...]] = {}
    for a in attn:
        site.update(dict.fromkeys(a.qkv, (a.out,)))  # heads: the output projection reads fewer columns
    for f in ffn:
        site[f.up] = (f.down,)
    in_sites = set(site) | tr.residual_writers(attn, ffn)
    prunable: set[str] = set()
    consumers: dict[str, tuple[str, ...]] = {}
    for n in wanted:
        if n in site:
            prunable.add(n)
            consumers[n] = site[n]
    rest = [n for n in wanted if n not in in_sites]
    if not rest:
        return Deps(frozenset(prunable), consumers)
    try:
        dg = dependency_graph(module, example_inputs)
    except Exception:  # a graph torch-pruning cannot trace: the pruner cannot prune it either
        return Deps(frozenset(prunable), consumers)
    for n in rest:
        try:
            cons, coupled = channel_group(dg, named[n])
        except Exception:
            continue
        names = [name_of[m] for m in sorted(set(cons), key=lambda m: order.get(m, len(order))) if m in name_of]
        if cons and not coupled:
            prunable.add(n)
            consumers[n] = tuple(c for c in names if c in named and isinstance(named[c], (nn.Linear, nn.modules.conv._ConvNd)))
    return Deps(frozenset(prunable), consumers)


__all__ = ["Deps", "channel_group", "dependency_graph", "find_deps", "is_depthwise", "is_output_layer"]
