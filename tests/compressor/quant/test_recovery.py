"""Post-quantization recovery on QDQ graphs: per-layer error and empirical bias correction."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from quant_helpers import TinyCase, run

from devicefit.compressor.plan import Plan
from devicefit.compressor.quant import calibration as C
from devicefit.compressor.quant import inspect, quantize_onnx
from devicefit.compressor.quant.recovery import correct_biases, layer_errors, round_weights
from devicefit.compressor.techniques import Int8Static
from devicefit.data import Dataset


def _static(tiny: TinyCase, tmp_path: Path) -> Path:
    out = tmp_path / "static.onnx"
    # per-tensor weights: the coarse grid whose rounding shifts output means the most
    quantize_onnx(tiny.onnx, out, Plan.uniform(quant=Int8Static(per_channel=False)), calib=tiny.calib,
                  module=tiny.module)
    return out


def _feeds(data: Dataset, model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    return C.batches(data, model, batch_size=32)


def test_layer_errors_cover_every_quantized_layer(tiny: TinyCase, tmp_path: Path) -> None:
    fp32, q = onnx.load(tiny.onnx), onnx.load(_static(tiny, tmp_path))
    errs = layer_errors(fp32, q, _feeds(tiny.eval, q))
    assert {e.op_type for e in errs} >= {"Conv", "Gemm", "MatMul"}
    assert all(np.isfinite(e.sqnr_db) and 5.0 < e.sqnr_db < 80.0 for e in errs), errs


def test_bias_correction_removes_output_mean_shift_and_keeps_the_graph(tiny: TinyCase, tmp_path: Path) -> None:
    path = _static(tiny, tmp_path)
    fp32, q = onnx.load(tiny.onnx), onnx.load(path)
    ops_before = Counter(n.op_type for n in q.graph.node)
    applied = correct_biases(fp32, q, _feeds(tiny.calib, q))
    assert len(applied) >= 2, applied  # the Conv and the Gemm layers (MatMul + Add biases are not int32)
    fixed = tmp_path / "corrected.onnx"
    onnx.save(q, fixed)
    assert Counter(n.op_type for n in q.graph.node) == ops_before  # only bias values changed
    assert inspect(fixed, []).int_ops == inspect(path, []).int_ops  # same int8 fusions after optimization

    ref, before, after = run(tiny.onnx, tiny.eval), run(path, tiny.eval), run(fixed, tiny.eval)
    shift_before = np.abs((before - ref).mean(axis=0)).mean()
    shift_after = np.abs((after - ref).mean(axis=0)).mean()
    assert shift_after < 0.8 * shift_before, (shift_before, shift_after)
    assert np.mean((after - ref) ** 2) < np.mean((before - ref) ** 2)


def test_output_aware_rounding_lowers_layer_error_on_the_same_grid(tiny: TinyCase, tmp_path: Path) -> None:
    path = tmp_path / "static.onnx"
    quantize_onnx(tiny.onnx, path, Plan.uniform(quant=Int8Static()), calib=tiny.calib, module=tiny.module)
    fp32, q = onnx.load(tiny.onnx), onnx.load(path)
    before = {e.node: e.sqnr_db for e in layer_errors(fp32, q, _feeds(tiny.calib, q))}
    ratios = round_weights(fp32, q, _feeds(tiny.calib, q))
    assert ratios and all(r <= 1.0 for r in ratios.values()), ratios  # Gemm layers (fc1, head)
    assert min(ratios.values()) < 0.9, ratios
    fixed = tmp_path / "rounded.onnx"
    onnx.save(q, fixed)
    assert inspect(fixed, []).int_ops == inspect(path, []).int_ops
    after = {e.node: e.sqnr_db for e in layer_errors(fp32, q, _feeds(tiny.calib, q))}
    improved = [n for n in ratios if ratios[n] < 0.9]
    assert all(after[n] > before[n] for n in improved), (before, after)


def test_int8_static_bias_correction_option_in_the_pipeline(tiny: TinyCase, tmp_path: Path) -> None:
    plain, fixed = tmp_path / "plain.onnx", tmp_path / "bc.onnx"
    tech = Int8Static(per_channel=False, bias_correction=True)
    assert "bias_correction=True" in tech.label() and "bias_correction" not in Int8Static().label()
    quantize_onnx(tiny.onnx, plain, Plan.uniform(quant=Int8Static(per_channel=False)), calib=tiny.calib,
                  module=tiny.module)
    res = quantize_onnx(tiny.onnx, fixed, Plan.uniform(quant=tech), calib=tiny.calib, module=tiny.module)
    assert any(n.startswith("bias correction on") for n in res.notes), res.notes
    ref, before, after = run(tiny.onnx, tiny.eval), run(plain, tiny.eval), run(fixed, tiny.eval)
    assert np.mean((after - ref) ** 2) < np.mean((before - ref) ** 2)
