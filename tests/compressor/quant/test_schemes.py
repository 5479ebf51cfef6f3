"""Every scheme on the tiny export: which integer kernels onnxruntime really runs (optimized graph), the
error it costs, mixed plans in one graph, and detection of a forced float fallback."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from quant_helpers import LAYERS, TinyCase, run, sqnr

from devicefit.compressor.plan import LayerRule, Plan
from devicefit.compressor.quant import ort_int8, quantize_onnx, verify, weights
from devicefit.compressor.quant.mapping import map_layers
from devicefit.compressor.techniques import (
    Float16,
    Int4WeightOnly,
    Int8Dynamic,
    Int8Static,
    Int8WeightOnly,
    KeepFloat,
    SmoothQuant,
    Technique,
)
from devicefit.errors import UserInputError

LINEARS = ["fc1", "fc2", "fc3", "head"]


@pytest.mark.parametrize(
    ("tech", "ops", "min_db"),
    [
        (Int8Dynamic(), {"ConvInteger", "DynamicQuantizeMatMul"}, 25),
        (Int8Static(), {"QLinearConv", "QGemm", "MatMulIntegerToFloat"}, 20),
        (Int8Static(calibration="mse"), {"QLinearConv", "QGemm", "MatMulIntegerToFloat"}, 20),
        (Int8Static(calibration="entropy", per_channel=False), {"QLinearConv", "QGemm", "MatMulIntegerToFloat"}, 15),
        (Int8Static(calibration="percentile"), {"QLinearConv", "QGemm", "MatMulIntegerToFloat"}, 15),
        (SmoothQuant(alpha=0.5), {"QGemm", "MatMulIntegerToFloat"}, 20),
        (Int8WeightOnly(), {"MatMulNBits"}, 30),
        (Int4WeightOnly(group_size=16), {"MatMulNBits"}, 10),
    ],
    ids=lambda v: v.label() if isinstance(v, Technique) else None,
)
def test_scheme_runs_integer_kernels(tiny: TinyCase, tmp_path: Path, tech: Technique, ops: set[str], min_db: float) -> None:
    out = tmp_path / "q.onnx"
    res = quantize_onnx(tiny.onnx, out, Plan.uniform(quant=tech), layer_names=LAYERS, calib=tiny.calib)
    assert res.float_fallback_layers == [], res.fallback_reasons
    assert ops <= set(res.int_ops), res.int_ops
    applies = LINEARS if "linear" not in tech.layer_types or tech.layer_types == ("linear",) else LAYERS
    assert set(res.schemes) == set(applies)
    for layer in applies:
        if layer in res.schemes and not (isinstance(tech, Int8WeightOnly) and layer == "conv"):
            assert res.layer_status[layer] == "int", (layer, res.layer_status)
    db = sqnr(run(tiny.onnx, tiny.eval), run(out, tiny.eval))
    assert min_db < db < 80  # quantized: close to fp32, but not identical


def test_linear_only_schemes_skip_conv_with_a_reason(tiny: TinyCase, tmp_path: Path) -> None:
    res = quantize_onnx(tiny.onnx, tmp_path / "q.onnx", Plan.uniform(quant=Int4WeightOnly()), layer_names=LAYERS)
    assert "conv" in res.skipped and "linear" in res.skipped["conv"]
    # a float Conv is re-laid out (NCHWc) with new weight names, so it may read as "missing"; not a fallback
    assert res.layer_status["conv"] in ("float", "missing") and "conv" not in res.float_fallback_layers


def test_float16_halves_storage_and_stays_close(tiny: TinyCase, tmp_path: Path) -> None:
    out = tmp_path / "h.onnx"
    res = quantize_onnx(tiny.onnx, out, Plan.uniform(quant=Float16()), layer_names=LAYERS)
    m = onnx.load(str(out))
    fp16 = {t.name for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    assert {f"{layer}.weight_fp16" for layer in ("conv", "fc1", "head")} <= fp16 | {"fc2.weight_fp16"}
    assert res.int_ops == {} and res.float_fallback_layers == []
    def weight_bytes(model: onnx.ModelProto) -> int:
        return sum(len(t.raw_data) for t in model.graph.initializer)

    assert weight_bytes(m) < 0.55 * weight_bytes(onnx.load(str(tiny.onnx)))
    assert sqnr(run(tiny.onnx, tiny.eval), run(out, tiny.eval)) > 50


def test_mixed_plan_in_one_graph(tiny: TinyCase, tmp_path: Path) -> None:
    """int8 static conv, dynamic fc1, GPTQ int4 fc2, SmoothQuant fc3, float head — all in one file."""
    plan = Plan((
        LayerRule("*", quant=Int8Static(calibration="mse")),
        LayerRule("fc1", quant=Int8Dynamic()),
        LayerRule("fc2", quant=Int4WeightOnly(group_size=16, algorithm="gptq")),
        LayerRule("fc3", quant=SmoothQuant(alpha=0.5)),
        LayerRule("head", quant=KeepFloat()),
    ))
    out = tmp_path / "mixed.onnx"
    res = quantize_onnx(tiny.onnx, out, plan, layer_names=LAYERS, calib=tiny.calib)
    assert res.float_fallback_layers == []
    assert {"QLinearConv", "DynamicQuantizeMatMul", "MatMulNBits", "MatMulIntegerToFloat"} <= set(res.int_ops)
    assert res.layer_status == {"conv": "int", "fc1": "int", "fc2": "int", "fc3": "int", "head": "float"}
    assert "head" not in res.schemes
    assert sqnr(run(tiny.onnx, tiny.eval), run(out, tiny.eval)) > 15


def test_forced_fallback_is_reported(tiny: TinyCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the static pass emit int8 weights + DequantizeLinear in front of the float compute node (what an
    unfused QDQ pattern looks like). onnxruntime runs DQ→Conv / DQ→Gemm in float: those layers must be
    flagged. (It does fuse a per-channel DQ→MatMul into an 8-bit MatMulNBits, so fc2 / fc3 really run an
    integer kernel and must *not* be flagged: the check reads the optimized graph, not the file.)"""

    def unfusable(model: onnx.ModelProto, nodes: list[str], ranges: object, **kw: object) -> onnx.ModelProto:
        lmap = map_layers(model, None)
        for lns in lmap.nodes.values():
            if lns[0].node in nodes:
                weights.int8_dequant(model, lns[0])
        return model

    monkeypatch.setattr(ort_int8, "static_int8", unfusable)
    out = tmp_path / "f.onnx"
    res = quantize_onnx(tiny.onnx, out, Plan.uniform(quant=Int8Static()), layer_names=LAYERS, calib=tiny.calib)
    assert res.float_fallback_layers == ["conv", "fc1", "head"]
    assert all("runs in float" in res.fallback_reasons[x] for x in ("conv", "fc1", "head"))
    insp = verify.inspect(out, LAYERS)
    assert {x: insp.layers[x].kind for x in LAYERS} == {"conv": "float", "fc1": "float", "fc2": "int",
                                                         "fc3": "int", "head": "float"}
    assert insp.layers["fc2"].ops == ["MatMulNBits"]
    assert "DequantizeLinear" in insp.op_counts  # the unfused DQ is still there, feeding a float Conv


def test_calibration_required_and_unmapped_layers(tiny: TinyCase, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="calibration"):
        quantize_onnx(tiny.onnx, tmp_path / "x.onnx", Plan.uniform(quant=Int8Static()), layer_names=LAYERS)
    res = quantize_onnx(tiny.onnx, tmp_path / "y.onnx", Plan.uniform(quant=Int8Dynamic()),
                        layer_names=[*LAYERS, "ghost"])
    assert res.unmapped_layers == ["ghost"] and any("ghost" in n for n in res.notes)
    assert any("fused 1 GELU" in n for n in res.notes)  # fc2 -> gelu -> fc3 became one Gelu op
