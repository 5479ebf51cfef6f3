"""EfficientNet-Lite0 int8 static on 320 photo crops: the recovery defaults' measured floor (slow: the gptq rounding
and bias correction passes take minutes on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _logits(path: Path, x: np.ndarray) -> np.ndarray:
    from devicefit.compressor.quant.calibration import session

    s = session(str(path), optimize=True, threads=2)
    return np.concatenate([s.run(None, {"x": x[i : i + 32]})[0] for i in range(0, len(x), 32)])


def test_efficientnet_int8_static_defaults_floor(tmp_path: Path) -> None:
    """Int8Static's defaults: mse calibration, gptq rounding and bias correction, in the pipeline."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from devicefit.compressor.export import export_bundle
    from devicefit.compressor.plan import Plan
    from devicefit.compressor.quant import quantize_onnx
    from devicefit.compressor.techniques import Int8Static
    from devicefit.data import Dataset
    from devicefit.zoo import efficientnet_lite0, photos

    calib, ev = photos.splits()
    calib = calib[:64]
    bundle = efficientnet_lite0.build()
    fp32 = export_bundle(bundle, tmp_path / "fp32.onnx").path
    out = tmp_path / "int8_gptq_bc.onnx"
    res = quantize_onnx(fp32, out, Plan.uniform(quant=Int8Static()),
                        calib=Dataset({"x": calib}), module=bundle.module, calib_samples=len(calib))
    assert not res.float_fallback_layers and res.int_ops.get("QLinearConv", 0) >= 49, res.int_ops
    ref, got = _logits(fp32, ev), _logits(out, ev)
    cos = float(((ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))).mean())
    agree = float((ref.argmax(1) == got.argmax(1)).mean())
    # measured 2026-12-03 (host without VNNI, 7-bit weights; bench/accuracy_recovery.py): 0.878 / 0.9941
    # (minmax alone 0.616 / 0.937, + bias correction 0.834 / 0.9865, + gptq rounding 0.834 / 0.9873, both
    # 0.866 / 0.9931). The #16 goal (drop <= 0.02) is NOT reached.
    assert cos >= 0.99 and agree >= 0.84, (agree, cos)
