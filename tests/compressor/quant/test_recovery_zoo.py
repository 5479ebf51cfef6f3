"""EfficientNet-Lite0 int8 static on 320 photo crops (disjoint from the 64 calibration crops): the recovery
defaults' measured floor, then quantization-aware distillation on top of them (slow: minutes on 2 cores)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

pytestmark = pytest.mark.slow


def _logits(path: Path, x: np.ndarray) -> np.ndarray:
    from devicefit.compressor.quant.calibration import session

    s = session(str(path), optimize=True, threads=2)
    return np.concatenate([s.run(None, {"x": x[i : i + 32]})[0] for i in range(0, len(x), 32)])


def _scores(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    cos = float(((ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))).mean())
    return float((ref.argmax(1) == got.argmax(1)).mean()), cos


def test_efficientnet_int8_static_recovery_floor(tmp_path: Path) -> None:
    """Int8Static's defaults (mse calibration, gptq rounding, bias correction) in the pipeline, then
    ``distill`` (what ``distill_steps`` runs last in the pipeline) on the same graph and calibration crops."""
    pytest.importorskip("efficientnet_lite_pytorch")
    import torch

    from devicefit.compressor.export import export_bundle
    from devicefit.compressor.plan import Plan
    from devicefit.compressor.quant import calibration as C
    from devicefit.compressor.quant import quantize_onnx
    from devicefit.compressor.quant.isa import int_format
    from devicefit.compressor.quant.recovery import distill
    from devicefit.compressor.techniques import Int8Static
    from devicefit.data import Dataset
    from devicefit.zoo import efficientnet_lite0, photos

    torch.set_num_threads(2)
    calib, ev = photos.splits()
    calib = calib[:64]
    assert len(ev) >= 256
    bundle = efficientnet_lite0.build()
    fp32 = export_bundle(bundle, tmp_path / "fp32.onnx").path
    out = tmp_path / "int8_gptq_bc.onnx"
    res = quantize_onnx(fp32, out, Plan.uniform(quant=Int8Static()),
                        calib=Dataset({"x": calib}), module=bundle.module, calib_samples=len(calib))
    assert not res.float_fallback_layers, res.float_fallback_layers
    assert res.int_ops.get("QLinearConv", 0) == 49 and res.int_ops.get("QLinearAdd", 0) == 9, res.int_ops
    ref = _logits(fp32, ev)
    agree, cos = _scores(ref, _logits(out, ev))
    seven_bit = int_format().reduce_range
    # measured 2026-12-04 (logits float out of QGemm): 8-bit weights (VNNI host) 0.897 / 0.9955;
    # 2026-12-03 (logits still 8-bit): 7-bit weights (AVX2 host) 0.878 / 0.9941
    assert cos >= 0.99 and agree >= 0.84, (agree, cos)

    q = onnx.load(str(out))
    ops = Counter(n.op_type for n in q.graph.node)
    feeds = C.batches(Dataset({"x": calib}), q, batch_size=16)
    r = distill(onnx.load(str(fp32)), q, feeds, steps=30, lr=0.02, batch_size=8, eval_every=10,
                weight_bound=64 if seven_bit else 127)
    assert not r.skipped and r.heldout_after < r.heldout_before, r
    assert Counter(n.op_type for n in q.graph.node) == ops
    qad = tmp_path / "int8_qad.onnx"
    onnx.save(q, str(qad))
    from devicefit.compressor.quant import inspect

    assert inspect(qad, []).int_ops == inspect(out, []).int_ops  # same int8 kernels after optimization
    int8 = [i for i in q.graph.initializer if i.name.endswith("weight_quantized")]
    assert len(int8) == 50 and all(i.data_type == onnx.TensorProto.INT8 for i in int8)
    agree_qad, cos_qad = _scores(ref, _logits(qad, ev))
    # measured 2026-12-04 (8-bit weights, float logits; 30 steps, 1 thread): held-out error 0.00575 -> 0.00236,
    # 0.944 / 0.9983 (2026-12-03 with 8-bit logits: 0.919 / 0.9981). The #16 goal (drop <= 0.02) is NOT
    # reached: 400 steps (lr 0.03, cosine decay) on 128 crops reach 0.956 (docs/concepts/quantization-accuracy.md).
    # These evaluation crops are mirror images of calibration crops (photos.splits()), which distillation trains
    # on: the agreement floor is optimistic; on a photo-disjoint split (bench/accuracy_recovery.py --split photo)
    # distillation halves the logit error but top-1 agreement stays within noise of the defaults'.
    assert cos_qad > cos and agree_qad >= agree - 0.01, (agree, cos, agree_qad, cos_qad)
    if not seven_bit:
        assert agree_qad >= 0.925 and cos_qad >= 0.9975, (agree_qad, cos_qad)
