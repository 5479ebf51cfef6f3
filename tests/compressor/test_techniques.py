"""One technique object: a technique defined in one place is picked up by the CLI names, plan files, the
search space, the latency model, sensitivity and the torch passes, without editing any other module."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from devicefit.compressor.fake import FakeOp
from devicefit.compressor.latency.roofline import (
    DTYPE_COSTS,
    DtypeCost,
    LayerSpec,
    dtype_of,
    plan_costs,
    register_dtype,
)
from devicefit.compressor.plan import LayerChoice, Plan
from devicefit.compressor.search.sensitivity import applied
from devicefit.compressor.search.space import SpaceConfig, build_space
from devicefit.compressor.shortcuts import QUANT_SCHEMES, parse_prune, parse_quant, usage
from devicefit.compressor.structural import apply_structural
from devicefit.compressor.techniques import (
    TECHNIQUES,
    Int4WeightOnly,
    Int8Static,
    LowRank,
    Technique,
    register,
    technique_from_dict,
    unregister,
)
from devicefit.errors import UserInputError


def _ternary(w: torch.Tensor, tech: Technique, act: torch.Tensor | None) -> torch.Tensor:
    scale = w.abs().mean(dim=1, keepdim=True)
    return torch.sign(w) * scale


@dataclass(frozen=True)
class TernaryWeightOnly(Technique):
    """A small new technique, defined only here: weights in {-s, 0, +s} per output row, 2 bits stored."""

    family: ClassVar[Any] = "quant"
    method: ClassVar[str] = "ternary_weight_only"
    layer_types: ClassVar[tuple[str, ...]] = ("linear",)
    cli_names: ClassVar[Mapping[str, Mapping[str, Any]] | None] = {"ternary": {}}
    search_default: ClassVar[bool] = True
    compute_dtype: ClassVar[str] = "int2w"
    onnx_pass: ClassVar[Any] = "weights"
    scale_rows: bool = True

    def fake(self) -> FakeOp:
        return FakeOp(_ternary)


@dataclass(frozen=True)
class FirstRowPrune(Technique):
    """A new mask technique: zero the first output row of each target (applied by the technique itself)."""

    family: ClassVar[Any] = "prune"
    method: ClassVar[str] = "first_row"
    structural_stage: ClassVar[Any] = "mask"

    def apply_mask(self, module: Any, targets: list[str], calib: Any, input_names: list[str],
                   stats: Mapping[str, Any]) -> dict[str, float]:
        out = {}
        for t in targets:
            w = module.get_submodule(t).weight
            with torch.no_grad():
                w[0] = 0.0
            out[t] = float((w == 0).float().mean())
        return out


@pytest.fixture
def registered() -> Iterator[None]:
    register_dtype("int2w", DtypeCost(weight_bytes=0.25, act_bytes=4.0))
    register(TernaryWeightOnly)
    register(FirstRowPrune)
    try:
        yield
    finally:
        unregister(TernaryWeightOnly)
        unregister(FirstRowPrune)
        DTYPE_COSTS.pop("int2w", None)


SPECS = [LayerSpec("fc", "linear", 4096, 4096, 64, 64), LayerSpec("conv", "conv", 1000, 50000, 300, 800)]


def test_a_new_technique_reaches_cli_plans_search_and_latency(registered: None) -> None:
    # CLI names (both spellings) and the listed schemes
    assert parse_quant("ternary") == TernaryWeightOnly()
    assert parse_quant("ternary:scale_rows=false") == TernaryWeightOnly(scale_rows=False)
    assert "ternary" in QUANT_SCHEMES and "ternary" in usage("quant")
    # plan files, with - for _
    plan = Plan.from_yaml("layers:\n  - match: fc\n    quant: {method: ternary-weight-only}\n")
    assert plan.choice_for("fc").quant == TernaryWeightOnly()
    assert Plan.from_yaml(plan.to_yaml()) == plan
    # the default search space offers it on the layer kinds it declares
    space = build_space(SPECS, config=SpaceConfig())
    assert "ternary_weight_only" in SpaceConfig().families["quant"]
    assert space.has("fc", "ternary_weight_only") and not space.has("conv", "ternary_weight_only")
    # the latency model reads its compute dtype and that dtype's costs
    assert dtype_of(TernaryWeightOnly()) == "int2w"
    (fc,) = plan_costs(SPECS[:1], {"fc": LayerChoice(quant=TernaryWeightOnly())})
    assert fc.dtype == "int2w" and fc.weight_bytes == pytest.approx(4096 * 0.25)


def test_a_new_technique_reaches_sensitivity_and_the_torch_passes(registered: None) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    space = build_space([LayerSpec("0", "linear", 48, 48, 8, 6)], config=SpaceConfig(families={"quant": ("ternary_weight_only",)}))
    before = net[0].weight.detach().clone()
    with applied(net, "0", space.option("0", "ternary_weight_only"), {}):
        assert torch.equal(net[0].weight, _ternary(before, TernaryWeightOnly(), None))
    assert torch.equal(net[0].weight, before)  # restored
    # a mask technique applies itself through apply_structural
    res = apply_structural(net, Plan.uniform(prune=FirstRowPrune(), match="0"), None, (torch.randn(2, 8),), ["x"])
    assert [s.method for s in res.applied] == ["first_row"] and not res.refused
    assert bool((res.module[0].weight[0] == 0).all()) and not bool((net[0].weight[0] == 0).all())


def test_registry_rejects_clashes() -> None:
    @dataclass(frozen=True)
    class Clash(Technique):
        family: ClassVar[Any] = "quant"
        method: ClassVar[str] = "clash"
        cli_names: ClassVar[Mapping[str, Mapping[str, Any]] | None] = {"int4": {}}

    with pytest.raises(ValueError, match="int4"):
        register(Clash)
    assert ("quant", "clash") not in TECHNIQUES


def test_hyphen_and_underscore_spellings() -> None:
    assert parse_quant("int8-static") == parse_quant("int8_static") == Int8Static()
    assert parse_quant("int4-gptq:group_size=64") == Int4WeightOnly(group_size=64, algorithm="gptq")
    assert parse_quant("int8-weight-only").method == "int8_weight_only"
    assert technique_from_dict("quant", {"method": "int8-static", "calibration": "mse"}) == Int8Static(calibration="mse")
    assert Plan.from_yaml("layers:\n  - match: '*'\n    quant: {method: int4-weight-only}\n").rules[0].quant == Int4WeightOnly()
    with pytest.raises(UserInputError, match="int8_dynamic"):
        parse_quant("int9-static")


def test_lowrank_asvd_method_is_a_field() -> None:
    assert LowRank(kind="asvd").to_dict() == {"method": "lowrank", "ratio": 0.5, "kind": "asvd", "energy": None}
    whiten = LowRank(kind="asvd", asvd_method="whiten")
    assert whiten.to_dict()["asvd_method"] == "whiten" and "asvd_method=whiten" in whiten.label()
    assert technique_from_dict("lowrank", whiten.to_dict()) == whiten
    assert LowRank(kind="svd", asvd_method="whiten") == LowRank(kind="svd")  # only ASVD reads it
    with pytest.raises(UserInputError, match="asvd_method"):
        LowRank(kind="asvd", asvd_method="qr")
    # the search's candidates use the one-shot method (the refit costs minutes per candidate)
    space = build_space(SPECS[:1])
    lr = [o.lowrank for o in space.options["fc"] if o.lowrank is not None]
    assert lr and all(t.asvd_method == "whiten" for t in lr)  # type: ignore[attr-defined]


def test_prune_cli_names_come_from_the_registry() -> None:
    assert parse_prune("2:4").method == "nm"
    assert usage("prune").startswith("structured:R, magnitude:R, wanda:R, N:M")


def test_cli_help_lists_the_registry() -> None:
    from devicefit.cli.compress import USAGE

    assert {f: usage(f) for f in USAGE} == USAGE  # type: ignore[arg-type]


def test_finished_restores_only_the_quick_search_settings() -> None:
    """A fit compresses its chosen plan again with the thorough values of the fields the search set quick
    (``quick_fields``); a value the user chose is kept, and techniques without quick settings are unchanged."""
    from dataclasses import replace

    from devicefit import defaults
    from devicefit.compressor.plan import LayerRule, Plan
    from devicefit.compressor.techniques import Int8Dynamic, Int8Static, LowRank

    quick = Int8Static(**Int8Static.search_settings)
    done = quick.finished()
    assert (done.calibration, done.rounding, done.bias_correction) == ("mse", "gptq", True)
    assert done.distill_steps == defaults.FINISH_QAD_STEPS and done.per_channel == quick.per_channel
    chosen = replace(quick, calibration="percentile")  # the user's setting, not the search's
    assert chosen.finished().calibration == "percentile" and chosen.finished().rounding == "gptq"
    assert replace(quick, distill_steps=30).finished().distill_steps == 30
    assert Int8Dynamic().finished() is not None and Int8Dynamic().finished() == Int8Dynamic()
    lowrank = LowRank(ratio=0.5, **LowRank.search_settings)
    assert lowrank.finished() is lowrank  # its search settings choose the method: not quick ones
    plan = Plan((LayerRule("a", quant=quick), LayerRule("b", lowrank=lowrank, quant=Int8Dynamic())))
    fin = plan.finished()
    assert fin.rules[0].quant == done and fin.rules[1] == plan.rules[1] and Plan().finished() == Plan()
