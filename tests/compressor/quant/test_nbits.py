"""MatMulNBits layout: our packing runs in onnxruntime's kernel exactly like the numpy dequant reference, and
matches onnxruntime's own packer on every real (non-padding) element."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from devicefit.compressor.quant import nbits
from devicefit.compressor.quant.mapping import map_layers


def _matmul_model(w: np.ndarray, b: np.ndarray) -> onnx.ModelProto:
    k, n = w.shape
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "fc.weight"], ["mm"], name="mm"),
         helper.make_node("Add", ["mm", "fc.bias"], ["y"], name="add")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", n])],
        [numpy_helper.from_array(w, "fc.weight"), numpy_helper.from_array(b, "fc.bias")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("bits", "block", "k"), [(4, 32, 80), (4, 16, 64), (8, 32, 80), (4, 128, 200)])
def test_kernel_matches_numpy_reference(bits: int, block: int, k: int) -> None:
    rng = np.random.default_rng(bits + block + k)
    n = 24
    w = rng.normal(size=(k, n)).astype(np.float32)
    b = rng.normal(size=n).astype(np.float32)
    model = _matmul_model(w, b)
    ln = map_layers(model, ["fc"]).first("fc")
    bq = nbits.rtn(w, bits=bits, block_size=block)
    nbits.write_matmulnbits(model, ln, bq, accuracy_level=0)
    assert [x.op_type for x in model.graph.node] == ["MatMulNBits"]  # bias Add folded into the op
    x = rng.normal(size=(5, k)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ bq.dequantize() + b, rtol=1e-4, atol=1e-4)
    # quantization error is what the bit width allows
    err = np.abs(bq.dequantize() - w).max()
    assert err <= (np.abs(w).max() * 2) / (2**bits - 1)
    B, _, zp = nbits.pack(bq)
    assert B.shape == (n, -(-k // block), block * bits // 8)
    q, z = nbits.unpack(B, zp, bits=bits, K=k, N=n, block_size=block)
    np.testing.assert_array_equal(q, bq.q)
    np.testing.assert_array_equal(z, bq.zero_points)


def test_packing_equals_onnxruntime_packer() -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    rng = np.random.default_rng(0)
    k, n, block = 96, 16, 32
    w = rng.normal(size=(k, n)).astype(np.float32)
    model = _matmul_model(w, np.zeros(n, np.float32))
    q = MatMulNBitsQuantizer(model, algo_config=DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=False))
    q.process()
    theirs = {t.name: numpy_helper.to_array(t) for t in q.model.model.graph.initializer}
    ours = nbits.rtn(w, bits=4, block_size=block)
    B, scales, _zp = nbits.pack(ours)
    np.testing.assert_allclose(theirs["fc.weight_scales"].ravel(), scales, rtol=1e-6)
    np.testing.assert_array_equal(theirs["fc.weight_Q4"], B)  # K is a block multiple: no padding bytes
    tq, tz = nbits.unpack(theirs["fc.weight_Q4"], theirs["fc.weight_zero_points"].ravel(), bits=4, K=k, N=n,
                          block_size=block)
    np.testing.assert_array_equal(tz, ours.zero_points)
    np.testing.assert_array_equal(tq, ours.q)


def test_accuracy_level_4_runs_int8_activations() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(64, 32)).astype(np.float32)
    model = _matmul_model(w, np.zeros(32, np.float32))
    ln = map_layers(model, ["fc"]).first("fc")
    bq = nbits.rtn(w, bits=4, block_size=32)
    nbits.write_matmulnbits(model, ln, bq, accuracy_level=4)
    x = rng.normal(size=(8, 64)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ref = x @ bq.dequantize()
    rel = np.linalg.norm(y - ref) / np.linalg.norm(ref)
    assert 0 < rel < 0.02  # int8 activations: close to, but not bit-equal with, the float path
