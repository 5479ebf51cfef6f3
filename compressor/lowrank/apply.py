"""Apply ``LowRank`` plan entries to a module: replace each named layer, in place, by its factorization.

Naming after low-rank (what the quant and search passes see): a Linear ``<name>`` becomes
``<name>.down`` (in → r, no bias) and ``<name>.up`` (r → out, bias); a 1×1 conv the same with 1×1 convs;
a k×k conv ``<name>.down`` → ``<name>.core`` → ``<name>.up`` (Tucker-2) or ``<name>.down`` (kh×1) →
``<name>.up`` (1×kw) (spatial). ``<name>`` itself stays a module (an ``nn.Sequential``) whose output has
the original shape, so hooks and hidden-state distillation on ``<name>`` still work.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from devicefit.compressor.lowrank.asvd import asvd_linear
from devicefit.compressor.lowrank.conv import spatial_svd_conv, tucker2_conv
from devicefit.compressor.lowrank.refit import REFIT_SAMPLES, refit_asvd
from devicefit.compressor.lowrank.svd import LowRankRefused, svd_linear
from devicefit.compressor.prune.calib import collect_input_stats, get_module, output_spatial, set_module
from devicefit.compressor.techniques import LowRank
from devicefit.data import Dataset
from devicefit.errors import UserInputError


@dataclass
class LowRankOutcome:
    """layer → what was done (ranks, params before → after) and layer → why it was refused."""

    applied: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


ONE_SHOT_SAMPLES = 256  # one-shot ASVD statistics (the fit's candidates use these: many are built per search)


def _is_kxk(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)


def apply_lowrank(
    module: nn.Module,
    layers: Mapping[str, LowRank],
    *,
    data: Dataset | None = None,
    input_names: Sequence[str] = (),
    example_inputs: Sequence[torch.Tensor] | None = None,
    max_samples: int | None = None,
) -> LowRankOutcome:
    """Factorize the named layers of ``module`` **in place**; refusals are listed, not raised.

    ``kind="asvd"`` needs ``data``; each layer's ``asvd_method`` says how it is fitted: ``"refit"`` (default,
    :mod:`.refit`: layer by layer in network order, each fitted to the original layer from the inputs it
    now receives, output directions weighted by the model output's Gauss–Newton matrix; the other layers
    are factorized first), ``"whiten"`` / ``"scale"`` (:mod:`.asvd`: one shot from statistics collected
    before any replacement). ``example_inputs`` give conv spatial sizes for the MAC check of ``tucker2`` /
    ``spatial``. ``max_samples``: calibration samples used (default: :data:`ONE_SHOT_SAMPLES` one shot,
    :data:`~.refit.REFIT_SAMPLES` for the refit).
    """
    out = LowRankOutcome()
    asvd_layers = [n for n, t in layers.items() if t.kind == "asvd" and not _is_kxk(get_module(module, n))]
    if asvd_layers and data is None:
        raise UserInputError("LowRank(kind='asvd') needs calibration data", "pass data (or use kind='svd')")
    refit_layers = [n for n in asvd_layers if layers[n].asvd_method == "refit"]
    one_shot = [n for n in asvd_layers if layers[n].asvd_method != "refit"]
    original = copy.deepcopy(module) if refit_layers else None
    stats = {}
    if one_shot:
        assert data is not None
        stats = collect_input_stats(
            module, one_shot, data, input_names, max_samples=max_samples or ONE_SHOT_SAMPLES,
            gram=any(layers[n].asvd_method == "whiten" for n in one_shot),
        )
    spatial = output_spatial(module, example_inputs) if example_inputs is not None else {}
    for name, tech in layers.items():
        if name in refit_layers:
            continue
        layer = get_module(module, name)
        try:
            new = _factorize(name, layer, tech, stats, spatial)
        except LowRankRefused as exc:
            out.refused[name] = str(exc)
            continue
        _record(out, name, tech, layer, new)
        set_module(module, name, new)
    if refit_layers:
        assert data is not None and original is not None
        before = {n: get_module(module, n) for n in refit_layers}
        replaced, refused = refit_asvd(module, original, {n: layers[n] for n in refit_layers}, data, input_names,
                                       max_samples=max_samples or REFIT_SAMPLES)
        out.refused.update(refused)
        for name, new in replaced.items():
            _record(out, name, layers[name], before[name], new)
    return out


def _record(out: LowRankOutcome, name: str, tech: LowRank, layer: nn.Module, new: nn.Module) -> None:
    ranks = [int(m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)  # type: ignore[arg-type]
             for m in list(new.children())[:-1]]
    out.applied[name] = f"{tech.kind} rank {'×'.join(map(str, ranks))}, params {_params(layer)}→{_params(new)}"
    new.train(layer.training)


def _factorize(
    name: str, layer: nn.Module, tech: LowRank, stats: Mapping[str, object], spatial: Mapping[str, tuple[int, ...]],
) -> nn.Module:
    kw = {"ratio": tech.ratio, "energy": tech.energy, "name": name}
    if tech.kind in ("svd", "asvd"):
        if _is_kxk(layer):
            raise LowRankRefused(f"{name}: {tech.kind} factorizes Linear / 1×1 conv layers", "use kind='tucker2'")
        if tech.kind == "svd":
            return svd_linear(layer, **kw)  # type: ignore[arg-type]
        return asvd_linear(layer, stats[name], method=tech.asvd_method, **kw)  # type: ignore[arg-type]
    if tech.kind == "tucker2":
        return tucker2_conv(layer, spatial=spatial.get(name), **kw)  # type: ignore[arg-type]
    return spatial_svd_conv(layer, spatial=spatial.get(name), **kw)  # type: ignore[arg-type]
