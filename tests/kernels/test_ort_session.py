"""The single definition of onnxruntime session options (used by agent and host alike)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from devicefit.kernels import ort_session


def _add_one() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        [onnx.numpy_helper.from_array(np.ones(2, np.float32), "c")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_options() -> None:
    import onnxruntime as ort

    so = ort_session.session_options(threads=2, optimization="basic")
    assert so.intra_op_num_threads == 2 and so.inter_op_num_threads == 1
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL and so.log_severity_level == 3
    with pytest.raises(ValueError, match="optimization"):
        ort_session.session_options(optimization="max")


def test_custom_ops_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ort_session.CUSTOM_OPS_ENV, "/a.so:/b.so")
    assert ort_session.custom_ops_libraries(["/b.so", "/c.so"]) == ["/b.so", "/c.so", "/a.so"]


def test_run_batches_casts_and_concatenates() -> None:
    sess = ort_session.cpu_session(_add_one())
    batches = [{"inp": np.zeros((2, 2), np.float64)}, {"inp": np.ones((1, 2), np.float64)}]
    out = ort_session.run_batches(sess, batches)
    np.testing.assert_array_equal(out, [[1, 1], [1, 1], [2, 2]])
    with pytest.raises(KeyError, match="no array 'z'"):
        ort_session.feeds(sess, {"inp": np.zeros((1, 2))}, ["z"])


def test_kernels_module_imports_only_numpy() -> None:
    import subprocess
    import sys

    code = ("import sys, devicefit.kernels.ort_session; "
            "print(any(m in sys.modules for m in ('onnxruntime', 'onnx', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
