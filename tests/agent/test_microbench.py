"""microbench: the graphs compute what they claim, and the measured figures are positive and plausible."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from devicefit.agent.microbench import (
    auto_bandwidth_mib,
    gemm_fp32_model,
    gemm_int8_model,
    measure_throughput,
    stream_add_model,
)


def _run(model: bytes, feed: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    out: np.ndarray = sess.run(None, {sess.get_inputs()[0].name: feed})[0]
    return out


def _initializer(model: bytes, name: str) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    m = onnx.load_from_string(model)
    return next(numpy_helper.to_array(t) for t in m.graph.initializer if t.name == name)


def test_int8_graph_is_an_exact_integer_gemm() -> None:
    m, n, k = 8, 16, 32
    model = gemm_int8_model(m, n, k, seed=3)
    # A < 128: onnxruntime's AVX2 u8 x s8 kernel (vpmaddubsw, on CPUs without VNNI) adds products in pairs
    # saturating at int16, so full-range A (255 x -128 twice) is not exact there; 2 x 127 x 127 < 32767 is
    # exact on every path. The microbench times this graph; it does not need the saturating range.
    a = np.random.default_rng(0).integers(0, 128, size=(m, k), dtype=np.uint8)
    b = _initializer(model, "B")
    assert b.dtype == np.int8
    expected = (a.astype(np.int32) - 128) @ b.astype(np.int32)
    got = _run(model, a)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)


def test_fp32_and_stream_graphs() -> None:
    model = gemm_fp32_model(4, 5, 6)
    a = np.random.default_rng(0).standard_normal((4, 6), dtype=np.float32)
    np.testing.assert_allclose(_run(model, a), a @ _initializer(model, "B"), rtol=1e-5, atol=1e-5)
    x = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(_run(stream_add_model(10), x), x + 1)


def test_measure_throughput_numbers_are_positive_and_plausible() -> None:
    r = measure_throughput(seconds_budget=0.8, gemm_size=256, bandwidth_mib=16, threads=1)
    fp32, int8, bw = r["peak_gops_fp32"], r["peak_gops_int8"], r["mem_bandwidth_gbs"]
    # one thread of any CPU that runs onnxruntime: 0.1 GOPS .. 1 TOPS; memory 0.1 .. 500 GB/s
    assert 0.1 < fp32 < 1000 and 0.1 < int8 < 4000 and 0.1 < bw < 500
    d = r["details"]
    assert d["threads"] == 1 and d["onnxruntime"] == ort.__version__
    assert d["fp32"]["op"] == "MatMul" and d["int8"]["op"] == "MatMulInteger"
    # the integer op survives onnxruntime's graph optimization: int8 kernels really ran
    assert "MatMulInteger" in d["int8"]["optimized_ops"]
    assert "MatMul" in d["fp32"]["optimized_ops"] or "FusedMatMul" in d["fp32"]["optimized_ops"]
    for kind in ("fp32", "int8"):
        g = d[kind]
        assert g["runs"] >= 3 and g["best_s"] <= g["median_s"]
        assert g["gops"] == pytest.approx(2 * g["m"] * g["n"] * g["k"] / g["best_s"] / 1e9)
        assert g["gops"] >= g["gops_median"]
    assert d["bandwidth"]["bytes_per_run"] == 2 * 16 * 2**20
    assert bw == pytest.approx(d["bandwidth"]["bytes_per_run"] / d["bandwidth"]["best_s"] / 1e9, rel=1e-3)


def test_bad_arguments_and_auto_size() -> None:
    with pytest.raises(ValueError, match="seconds_budget"):
        measure_throughput(seconds_budget=0)
    with pytest.raises(ValueError, match="gemm_size"):
        measure_throughput(gemm_size=4)
    assert auto_bandwidth_mib() >= 16
