"""Apply a plan's **prune** and **lowrank** families to a copy of a module (the quant family and
distillation are applied later by ``devicefit.compress``).

Order, per layer (layer names = ``named_modules()`` names of the *input* module):

1. **structured** pruning (``ChannelPrune``) — physically removes channels / heads, may shrink the input
   side of later layers too;
2. **low-rank** (``LowRank``) — ``<layer>`` becomes ``<layer>.down`` [→ ``<layer>.core``] → ``<layer>.up``;
   on an already channel-pruned layer it factorizes the smaller weight;
3. **unstructured / N:M** (``MagnitudePrune``, ``WandaPrune``, ``SemiStructuredPrune``) — masks applied last;
   on a factorized layer they apply to each factor (``<layer>.down``, ``<layer>.up`` …), Wanda statistics
   then come from the factorized model. With calibration data the mean contribution of the removed
   weights is folded into the bias (``W_removed · E[x]``, :func:`~devicefit.compressor.prune.calib.fold_mean_shift`;
   MiniLM 50 %: cosine magnitude 0.72 → 0.82, Wanda 0.87 → 0.89).

A layer has at most one prune technique (the plan holds one per family), so structured + unstructured on
the same layer cannot be requested. Anything that cannot be applied is **refused with a reason** (and
left unchanged), never silently skipped: a rank that would not reduce MACs, a classifier's output
channels, the transformer residual stream, an N:M group size that does not divide the input length,
calibration-hungry techniques without data.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from devicefit.compressor.layers import REWRITABLE, is_rewritable, layer_names
from devicefit.compressor.lowrank.apply import apply_lowrank
from devicefit.compressor.plan import Plan
from devicefit.compressor.prune.calib import collect_input_stats, fold_mean_shift
from devicefit.compressor.prune.structured import prune_structured
from devicefit.compressor.techniques import ChannelPrune, LowRank, Technique
from devicefit.data import Dataset
from devicefit.errors import DevicefitError, UserInputError


@dataclass(frozen=True)
class StructuralStep:
    """One layer × technique: what was done (``detail``) or why it was refused."""

    layer: str
    family: str
    method: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"layer": self.layer, "family": self.family, "method": self.method, "detail": self.detail}


@dataclass
class StructuralResult:
    """The new module plus the steps applied and refused."""

    module: nn.Module
    applied: list[StructuralStep] = field(default_factory=list)
    refused: list[StructuralStep] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"applied": [s.to_dict() for s in self.applied], "refused": [s.to_dict() for s in self.refused]}


def _step(layer: str, tech: Technique, detail: str) -> StructuralStep:
    return StructuralStep(layer, tech.family, tech.method, detail)


def _targets(module: nn.Module, layer: str) -> list[str]:
    """The layer itself, or the Linear/Conv factors it was replaced by."""
    m = module.get_submodule(layer)
    if is_rewritable(m):
        return [layer]
    return [f"{layer}.{n}" for n, c in m.named_modules() if n and is_rewritable(c)]


def apply_structural(
    module: nn.Module,
    plan: Plan,
    calib: Dataset | None,
    example_inputs: Sequence[torch.Tensor],
    input_names: Sequence[str],
    *,
    channel_multiple: int = 8,
) -> StructuralResult:
    """Deep-copy ``module`` and apply the plan's prune + lowrank families (see the module docstring).

    ``channel_multiple``: structured pruning keeps channel counts at multiples of it (8 suits AVX2 / NEON;
    16 measured faster on AVX-512 hosts; 1 = exact ratios). Each technique's ``structural_stage`` says which
    step applies it; a mask technique applies itself (:meth:`~devicefit.compressor.techniques.Technique.apply_mask`)."""
    m = copy.deepcopy(module).eval()
    names = layer_names(m)
    result = StructuralResult(m)
    names_in = list(input_names)

    def supported(layer: str, tech: Technique) -> bool:
        mod = m.get_submodule(layer)
        if tech.structural_stage is None:
            result.refused.append(_step(layer, tech, f"{type(tech).__name__} has no torch-side application"))
            return False
        if not is_rewritable(mod):
            only = "/".join(t.__name__ for t in REWRITABLE)
            result.refused.append(_step(layer, tech, f"{type(mod).__name__} is not rewritten (only {only}); quantization applies"))
            return False
        return True

    prune = {n: t for n, t in plan.layers_with("prune", names).items() if supported(n, t)}
    lowrank = {n: t for n, t in plan.layers_with("lowrank", names).items() if supported(n, t)}

    def needs_data(layer: str, tech: Technique) -> bool:
        if calib is None and tech.needs_calibration:
            result.refused.append(_step(layer, tech, "needs calibration data (pass --data)"))
            return False
        return True

    def stage(techs: dict[str, Technique], name: str) -> dict[str, Technique]:
        return {n: t for n, t in techs.items() if t.structural_stage == name and needs_data(n, t)}

    # 1. structured
    structured = cast("dict[str, ChannelPrune]", stage(prune, "channels"))
    if structured:
        out = prune_structured(
            m, structured, example_inputs=example_inputs, data=calib, input_names=names_in,
            channel_multiple=channel_multiple,
        )
        for n, t in structured.items():
            if n in out.applied:
                result.applied.append(_step(n, t, out.applied[n]))
            else:
                result.refused.append(_step(n, t, out.refused.get(n, "not applied")))
    # 2. low-rank
    factorize = cast("dict[str, LowRank]", stage(lowrank, "factorize"))
    if factorize:
        lr = apply_lowrank(m, factorize, data=calib, input_names=names_in, example_inputs=example_inputs)
        for n, lt in factorize.items():
            if n in lr.applied:
                result.applied.append(_step(n, lt, lr.applied[n]))
            else:
                result.refused.append(_step(n, lt, lr.refused[n]))
    # 3. unstructured / N:M on the (possibly factorized) layers
    masks = stage(prune, "mask")
    if masks:
        _apply_masks(m, masks, calib, names_in, result)
    _check_runs(m, example_inputs)
    return result


def _apply_masks(
    m: nn.Module, techs: dict[str, Technique], calib: Dataset | None, input_names: list[str], result: StructuralResult
) -> None:
    targets = {n: _targets(m, n) for n in techs}
    every = [t for tg in targets.values() for t in tg]
    stats = collect_input_stats(m, every, calib, input_names) if calib is not None else {}
    for layer, tech in techs.items():
        tg = targets[layer]
        before = {t: _weight(m, t).clone() for t in tg if t in stats}
        try:
            got = tech.apply_mask(m, tg, calib, input_names, stats)
        except UserInputError as exc:
            result.refused.append(_step(layer, tech, str(exc)))
            continue
        for t, w0 in before.items():  # keep each layer's output mean: fold W_removed · E[x] into the bias
            fold_mean_shift(m.get_submodule(t), w0 - _weight(m, t), stats[t].mean)
        detail = ", ".join(f"{k} sparsity {v:.3f}" for k, v in got.items())
        note = " (zeros, dense shapes kept" + ("; bias mean-corrected)" if before else ")")
        result.applied.append(_step(layer, tech, detail + note))


def _weight(m: nn.Module, name: str) -> torch.Tensor:
    weight = m.get_submodule(name).weight
    assert isinstance(weight, torch.Tensor)
    return weight.detach()


@torch.no_grad()
def _check_runs(m: nn.Module, example_inputs: Sequence[torch.Tensor]) -> None:
    try:
        m(*example_inputs)
    except Exception as exc:  # a broken graph must not travel further down the pipeline
        raise DevicefitError(
            f"the pruned/factorized model no longer runs on the example inputs: {exc}",
            "report this with the plan; exclude the layer named in the error from the plan meanwhile",
        ) from exc
