"""devicefit.runtime: onnxruntime sessions and batched runs over a Dataset (no torch)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from devicefit.data import Dataset
from devicefit.errors import ModelLoadError, UserInputError
from devicefit.runtime import make_session, run_onnx

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0


@pytest.fixture
def matmul_onnx(tmp_path: Path) -> Path:
    """y = x @ W (x: float32 [batch, 4]); built with onnx.helper, no torch."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["inp", "W"], ["y"])],
        "mm",
        [helper.make_tensor_value_info("inp", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(W, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = tmp_path / "mm.onnx"
    onnx.save(model, str(path))
    return path


def test_run_onnx_batches_and_casts(matmul_onnx: Path) -> None:
    x = np.random.default_rng(0).standard_normal((23, 4))  # float64 on purpose: cast to the model's float32
    ds = Dataset({"x": x})
    out = run_onnx(matmul_onnx, ds, batch_size=5)  # single input: fed whatever its name
    assert out.shape == (23, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, x.astype(np.float32) @ W, rtol=1e-5, atol=1e-5)
    sess = make_session(matmul_onnx, threads=1, optimization="basic")
    np.testing.assert_array_equal(run_onnx(sess, ds, batch_size=64), run_onnx(sess, ds, batch_size=7))


def test_named_inputs(matmul_onnx: Path) -> None:
    ds = Dataset({"a": np.ones((2, 4), np.float32), "b": np.zeros((2, 4), np.float32)})
    np.testing.assert_allclose(run_onnx(matmul_onnx, ds, input_names=["b"]), np.zeros((2, 3)))
    with pytest.raises(UserInputError, match=r"no array .inp."):
        run_onnx(matmul_onnx, ds)  # two arrays, one model input, no names given


def test_errors(matmul_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        make_session(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"junk")
    with pytest.raises(ModelLoadError, match="cannot load"):
        make_session(bad)
    with pytest.raises(UserInputError, match="optimization"):
        make_session(matmul_onnx, optimization="max")  # type: ignore[arg-type]


def test_runtime_does_not_import_torch() -> None:
    code = "import sys, devicefit.runtime; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
