"""MatMul (+ bias Add) nodes rewritten onto the custom ops: the rewritten model equals the numpy
reference of the packed weights, and lowers back to standard ops with identical outputs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from devicefit.kernels import lowering, pack, reference, rewrite

onnx = pytest.importorskip("onnx")


def _mlp(rng: np.random.Generator, k: int, h: int, n: int) -> tuple[object, list[np.ndarray]]:
    """X -> MatMul(W1) -> Add(b1) -> Relu -> MatMul(W2) -> Y (a Linear without bias at the end)."""
    hp, tp, nh = onnx.helper, onnx.TensorProto, onnx.numpy_helper
    w1, b1 = rng.standard_normal((k, h)).astype(np.float32), rng.standard_normal(h).astype(np.float32)
    w2 = rng.standard_normal((h, n)).astype(np.float32)
    nodes = [hp.make_node("MatMul", ["X", "W1"], ["mm1"], name="fc1"), hp.make_node("Add", ["mm1", "b1"], ["a1"]),
             hp.make_node("Relu", ["a1"], ["r1"]), hp.make_node("MatMul", ["r1", "W2"], ["Y"], name="fc2")]
    graph = hp.make_graph(nodes, "mlp", [hp.make_tensor_value_info("X", tp.FLOAT, ["B", k])],
                          [hp.make_tensor_value_info("Y", tp.FLOAT, ["B", n])],
                          initializer=[nh.from_array(w1, "W1"), nh.from_array(b1, "b1"), nh.from_array(w2, "W2")])
    model = hp.make_model(graph, opset_imports=[hp.make_opsetid("", 21)])
    model.ir_version = 10
    return model, [w1, b1, w2]


def test_to_sparse24_fuses_bias_and_matches_reference(run_model: Callable[..., np.ndarray]) -> None:
    rng = np.random.default_rng(11)
    model, (w1, b1, w2) = _mlp(rng, 96, 128, 24)
    sparse, replaced = rewrite.to_sparse24(model)
    assert replaced == ["fc1", "fc2"]
    assert [nd.op_type for nd in sparse.graph.node] == ["Sparse24MatMul", "Relu", "Sparse24MatMul"]
    assert {i.name for i in sparse.graph.initializer}.isdisjoint({"W1", "b1", "W2"})
    x = rng.standard_normal((5, 96)).astype(np.float32)
    h = np.maximum(reference.sparse24_matmul(x, pack.pack_sparse24(w1.T), b1), 0)
    want = reference.sparse24_matmul(h, pack.pack_sparse24(w2.T))
    np.testing.assert_array_equal(run_model(sparse, x), want)
    np.testing.assert_array_equal(run_model(lowering.lower_model(sparse), x), want)


def test_to_lowbit_only_the_named_nodes(run_model: Callable[..., np.ndarray]) -> None:
    rng = np.random.default_rng(12)
    model, (w1, b1, w2) = _mlp(rng, 64, 256, 16)
    low, replaced = rewrite.to_lowbit(model, bits=3, group_size=64, names=["fc1"])
    assert replaced == ["fc1"]
    assert [nd.op_type for nd in low.graph.node] == ["LowBitMatMul", "Relu", "MatMul"]
    x = rng.standard_normal((3, 64)).astype(np.float32)
    q, s, z = pack.quantize_lowbit_rtn(w1.T, bits=3, group_size=64)
    h = reference.lowbit_matmul(x, pack.pack_lowbit(q, s, z, bits=3, group_size=64), b1)  # exact (see test_ops)
    want = np.maximum(h, 0).astype(np.float64) @ w2.astype(np.float64)  # then a float32 MatMul in onnxruntime
    bound = 256 * 2.0**-23 * (np.abs(np.maximum(h, 0)).astype(np.float64) @ np.abs(w2).astype(np.float64))
    assert (np.abs(run_model(low, x) - want) <= bound).all()
