"""String shortcuts → technique configs (shared by `devicefit compress` and `fit`)."""

from __future__ import annotations

import pytest

from devicefit.compressor.shortcuts import (
    QUANT_SCHEMES,
    parse_lowrank,
    parse_prune,
    parse_quant,
    shortcut_plan,
)
from devicefit.compressor.techniques import (
    ChannelPrune,
    Int4WeightOnly,
    Int8Static,
    LowRank,
    MagnitudePrune,
    SemiStructuredPrune,
    SmoothQuant,
    WandaPrune,
)
from devicefit.errors import UserInputError


def test_quant_schemes() -> None:
    assert parse_quant("int4") == Int4WeightOnly(algorithm="rtn")
    assert parse_quant("int4_gptq:group_size=64") == Int4WeightOnly(group_size=64, algorithm="gptq")
    assert parse_quant("int8_static:calibration=mse,per_channel=false") == Int8Static(calibration="mse", per_channel=False)
    assert parse_quant("smoothquant:alpha=0.75") == SmoothQuant(alpha=0.75)
    for name in QUANT_SCHEMES:
        assert parse_quant(name).method  # every listed name parses with defaults


@pytest.mark.parametrize("bad", ["int5", "int8_static:calib=mse", "int4:group_size=7", "smoothquant:alpha"])
def test_quant_errors_name_the_options(bad: str) -> None:
    with pytest.raises(UserInputError):
        parse_quant(bad)


def test_prune_and_lowrank() -> None:
    assert parse_prune("structured:0.5") == ChannelPrune(ratio=0.5)
    assert parse_prune("magnitude:0.3") == MagnitudePrune(ratio=0.3)
    assert parse_prune("wanda:0.5") == WandaPrune(ratio=0.5)
    assert parse_prune("2:4") == SemiStructuredPrune(n=2, m=4)
    assert parse_lowrank("asvd:0.5") == LowRank(ratio=0.5, kind="asvd")
    assert parse_lowrank("svd:energy=0.9") == LowRank(ratio=None, energy=0.9, kind="svd")
    for bad in ("foo:0.5", "magnitude", "magnitude:x"):
        with pytest.raises(UserInputError):
            parse_prune(bad)
    with pytest.raises(UserInputError, match="svd"):
        parse_lowrank("qr:0.5")


def test_shortcut_plan() -> None:
    plan = shortcut_plan(quant="int8_dynamic", prune="2:4", distill_steps=50)
    c = plan.choice_for("any.layer")
    assert c.quant is not None and c.quant.method == "int8_dynamic" and c.prune == SemiStructuredPrune()
    assert plan.distill is not None and plan.distill.steps == 50
    assert shortcut_plan().rules == ()
