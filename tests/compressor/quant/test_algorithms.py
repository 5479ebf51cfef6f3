"""GPTQ / AWQ / SmoothQuant / calibration ranges / ISA rule, on controlled data."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from quant_helpers import TinyCase, run

from devicefit.compressor.quant import calibration as C
from devicefit.compressor.quant import smoothquant
from devicefit.compressor.quant.awq import InputStats, awq
from devicefit.compressor.quant.gptq import HessianAccumulator, gptq
from devicefit.compressor.quant.isa import int_format
from devicefit.compressor.quant.mapping import canonicalize, map_layers
from devicefit.compressor.quant.nbits import rtn
from devicefit.data import Dataset
from devicefit.metrics import sqnr_db


def _outlier_inputs(n: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    outliers = rng.choice(k, size=4, replace=False)  # the same channels for every n
    mix = rng.normal(size=(16, k))
    # correlated channels (real activations live near a low-dimensional subspace) + noise + outlier channels
    x = (rng.normal(size=(n, 16)) @ mix + 0.3 * rng.normal(size=(n, k))).astype(np.float32)
    x[:, outliers] *= 30.0
    return x


def test_gptq_beats_rtn_on_outlier_activations() -> None:
    k, n = 128, 64
    rng = np.random.default_rng(1)
    w = rng.normal(scale=0.05, size=(k, n)).astype(np.float32)
    x = _outlier_inputs(2560, k, 0)
    x_cal, x_test = x[:2048], x[2048:]  # held-out rows of the same distribution
    acc = HessianAccumulator(k)
    for i in range(0, len(x_cal), 256):
        acc.add(x_cal[i : i + 256])
    ref = x_test @ w
    q_rtn = rtn(w, bits=4, block_size=32).dequantize()
    q_gptq = gptq(w, acc.hessian(), bits=4, group_size=32).dequantize()
    db_rtn, db_gptq = sqnr_db(ref, x_test @ q_rtn), sqnr_db(ref, x_test @ q_gptq)
    assert db_gptq > db_rtn + 1.5, (db_rtn, db_gptq)
    # GPTQ codes stay on the 4-bit grid of the group scales
    bq = gptq(w, acc.hessian(), bits=4, group_size=32)
    assert bq.q.max() <= 15 and bq.scales.shape == (n, k // 32)


def test_hessian_matches_definition() -> None:
    x = _outlier_inputs(300, 16)
    acc = HessianAccumulator(16)
    acc.add(x[:100])
    acc.add(x[100:])
    np.testing.assert_allclose(acc.hessian(), 2.0 / 300 * x.T.astype(np.float64) @ x, rtol=1e-4)


def test_awq_not_worse_than_rtn_and_picks_a_scale() -> None:
    k, n = 128, 64
    w = np.random.default_rng(2).normal(scale=0.05, size=(k, n)).astype(np.float32)
    stats = InputStats(k)
    stats.add(_outlier_inputs(2048, k))
    res = awq(w, stats, bits=4, group_size=32)
    assert res.error <= res.rtn_error and res.alpha > 0
    assert res.input_scale.shape == (k,)


def test_smoothing_preserves_the_fp32_function(tiny: TinyCase, tmp_path: Path) -> None:
    """Before quantization, smoothing is an exact rewrite (LayerNorm fold for fc2, inserted Mul for fc3)."""
    model = onnx.load(str(tiny.onnx))
    lmap = canonicalize(model, map_layers(model, ["fc2", "fc3"]))
    amax: dict[str, smoothquant.AbsMax] = {}

    def update(v: dict[str, np.ndarray]) -> None:
        for t, a in v.items():
            amax.setdefault(t, smoothquant.AbsMax()).add(a)

    groups = {lmap.first(x).input: [lmap.first(x)] for x in ("fc2", "fc3")}
    C.capture(model, groups, C.batches(tiny.calib, model), update)
    how = smoothquant.apply(model, groups, {t: a.value for t, a in amax.items() if a.value is not None}, 0.5)
    assert sorted(v.split(":")[0] for v in how.values()) == ["folded", "mul"]
    out = tmp_path / "smoothed.onnx"
    onnx.save(model, str(out))
    np.testing.assert_allclose(run(out, tiny.eval), run(tiny.onnx, tiny.eval), rtol=1e-4, atol=1e-4)


def test_calibration_ranges(tiny: TinyCase) -> None:
    model = onnx.load(str(tiny.onnx))
    feeds = C.batches(tiny.calib, model, batch_size=32)
    x = tiny.calib.inputs["x"]
    got = {m: C.collect_ranges(model, {"x": C.RangeSpec(m, 99.0)}, feeds)["x"] for m in
           ("minmax", "percentile", "entropy", "mse")}
    assert got["minmax"] == pytest.approx((float(x.min()), float(x.max())), rel=1e-6)
    lo, hi = got["percentile"]
    assert x.min() < lo < 0 < hi < x.max()  # 1% cut off in total
    for m in ("entropy", "mse"):
        assert x.min() <= got[m][0] <= 0 <= got[m][1] <= x.max(), m
    assert len(C.batches(tiny.calib, model, batch_size=32, limit=40)) == 2  # 40 samples, 32 at a time


def test_capture_runs_intermediate_tensors(tiny: TinyCase) -> None:
    model = onnx.load(str(tiny.onnx))
    seen: list[tuple[int, ...]] = []
    C.capture(model, ["layer_norm"], C.batches(Dataset({"x": tiny.calib.inputs["x"][:10]}), model, batch_size=4),
              lambda v: seen.append(v["layer_norm"].shape))
    assert seen == [(4, 4, 16), (4, 4, 16), (2, 4, 16)]


def _profile(arch: str, isa: tuple[str, ...]) -> SimpleNamespace:
    return SimpleNamespace(id="board", cpu=SimpleNamespace(arch=arch, isa=isa))


@pytest.mark.parametrize(
    ("arch", "isa", "act", "reduce"),
    [
        ("x86_64", ("avx2", "avx512f", "avx512_vnni"), "uint8", False),
        ("x86_64", ("avx2", "avx_vnni"), "uint8", False),
        ("x86_64", ("avx2", "fma"), "uint8", True),
        ("aarch64", ("neon", "dotprod"), "int8", False),
        ("aarch64", ("neon",), "uint8", False),
        ("armv7l", ("neon",), "uint8", False),
    ],
)
def test_isa_rule(arch: str, isa: tuple[str, ...], act: str, reduce: bool) -> None:
    fmt = int_format(_profile(arch, isa))
    assert (fmt.activation, fmt.weight, fmt.reduce_range) == (act, "int8", reduce)
    assert fmt.reason
