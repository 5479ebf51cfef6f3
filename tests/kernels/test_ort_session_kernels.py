"""``cpu_session`` runs models using devicefit's own ops without the caller registering anything, and falls back to
the exact standard-op lowering when the kernel library cannot be built (no compiler)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from devicefit.kernels import (
    KernelBuildError,
    builder,
    ort_session,
    pack_lowbit,
    pack_sparse24,
    quantize_lowbit_rtn,
    reference,
)
from devicefit.kernels.ops import lowbit_node, single_op_model, sparse24_node

X = np.random.default_rng(1).normal(size=(5, 96)).astype(np.float32)


def _models() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The two one-op models and their outputs on X by the numpy reference (bit-identical to the kernels)."""
    rng = np.random.default_rng(0)
    k, n = 96, 24
    w = rng.normal(size=(n, k)).astype(np.float32)
    b = rng.normal(size=n).astype(np.float32)
    sw = pack_sparse24(w)
    s24, s24_inits = sparse24_node("X", "Y", sw, prefix="fc.weight_s24", bias=b)
    codes, scales, zeros = quantize_lowbit_rtn(w, bits=3, group_size=32)
    lw = pack_lowbit(codes, scales, zeros, bits=3, group_size=32)
    lb, lb_inits = lowbit_node("X", "Y", lw, prefix="fc.weight_lowbit3", bias=b)
    models = {"sparse24": single_op_model(s24, s24_inits, k=k, n=n), "lowbit": single_op_model(lb, lb_inits, k=k, n=n)}
    return models, {"sparse24": reference.sparse24_matmul(X, sw, b), "lowbit": reference.lowbit_matmul(X, lw, b)}


MODELS, WANT = _models()


def _no_library(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(**_: Any) -> Path:
        raise KernelBuildError("no C compiler found (simulated)")

    monkeypatch.setattr(builder, "library_path", fail)
    monkeypatch.delenv(ort_session.CUSTOM_OPS_ENV, raising=False)
    monkeypatch.setattr(ort_session, "_warned_lowering", False)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_custom_op_model_runs_without_registration(kernel_lib: Path, name: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ort_session.CUSTOM_OPS_ENV, raising=False)
    import onnxruntime as ort

    model = MODELS[name].SerializeToString()
    with pytest.raises(Exception, match=r"ai\.devicefit"):  # plain onnxruntime refuses it
        ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    sess = ort_session.cpu_session(model)
    y = sess.run(None, {"X": X})[0]
    want = WANT[name]
    np.testing.assert_array_equal(y, want)
    # a path works too, and so do caller-made options (the library is added to them)
    path = tmp_path / "m.onnx"
    path.write_bytes(model)
    y2 = ort_session.cpu_session(path, ort_session.session_options(threads=1)).run(None, {"X": X})[0]
    np.testing.assert_array_equal(y2, want)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_without_the_library_the_lowering_runs_with_identical_outputs(
    name: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Runs with or without a compiler: the library is made unavailable, and the exact lowering's outputs equal
    the numpy reference the kernels are bit-identical to (tests/kernels/test_ops.py)."""
    model = MODELS[name].SerializeToString()
    assert any(nd.domain == "ai.devicefit" for nd in MODELS[name].graph.node)
    _no_library(monkeypatch)
    with caplog.at_level(logging.WARNING, logger=ort_session.__name__):
        sess = ort_session.cpu_session(model)
        sess2 = ort_session.cpu_session(model)
    np.testing.assert_array_equal(sess.run(None, {"X": X})[0], WANT[name])
    np.testing.assert_array_equal(sess2.run(None, {"X": X})[0], WANT[name])
    warnings = [r for r in caplog.records if "lowering" in r.getMessage()]
    assert len(warnings) == 1 and "simulated" in warnings[0].getMessage()  # one warning, with the reason


def test_plain_models_never_touch_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(**_: Any) -> Path:
        raise AssertionError("library_path called for a model without ai.devicefit ops")

    monkeypatch.setattr(builder, "library_path", boom)
    h, tp = onnx.helper, onnx.TensorProto
    g = h.make_graph([h.make_node("Relu", ["X"], ["Y"])], "g", [h.make_tensor_value_info("X", tp.FLOAT, [2])],
                     [h.make_tensor_value_info("Y", tp.FLOAT, [2])])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 9
    y = ort_session.cpu_session(m.SerializeToString()).run(None, {"X": np.array([-1, 2], np.float32)})[0]
    np.testing.assert_array_equal(y, [0, 2])
    # and a model onnxruntime refuses for another reason still raises that error
    bad = h.make_model(h.make_graph([h.make_node("NoSuchOp", ["X"], ["Y"])], "g",
                                    [h.make_tensor_value_info("X", tp.FLOAT, [2])],
                                    [h.make_tensor_value_info("Y", tp.FLOAT, [2])]),
                       opset_imports=[h.make_opsetid("", 17)])
    bad.ir_version = 9
    with pytest.raises(Exception, match="NoSuchOp"):
        ort_session.cpu_session(bad.SerializeToString())


def test_verify_sees_integer_compute_with_and_without_the_library(kernel_lib: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    from devicefit.compressor.quant import verify

    path = tmp_path / "s24.onnx"
    onnx.save(MODELS["sparse24"], path)
    insp = verify.inspect(path, ["fc"])
    assert insp.layers["fc"].kind == "int" and insp.layers["fc"].ops == ["Sparse24MatMul"]
    _no_library(monkeypatch)
    insp = verify.inspect(path, ["fc"])
    assert insp.layers["fc"].kind == "int", insp.layers
    assert set(insp.layers["fc"].ops) <= {"MatMulInteger", "MatMulIntegerToFloat"}


def test_the_agent_never_runs_a_stand_in_and_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent measures the model it was sent: without the library it refuses the custom-op model (no lowering),
    saying how to build the library or how to compress without it."""
    from devicefit.agent.runners import onnxruntime_runner
    from devicefit.errors import ModelLoadError

    _no_library(monkeypatch)
    monkeypatch.setattr(onnxruntime_runner, "_own_kernels", lambda: [])
    path = tmp_path / "s24.onnx"
    path.write_bytes(MODELS["sparse24"].SerializeToString())
    with pytest.raises(RuntimeError, match="kernel library, which is unavailable here"):
        ort_session.cpu_session(path, lowering=False)
    with pytest.raises(ModelLoadError) as err:
        onnxruntime_runner.OnnxRuntimeRunner(path)
    assert "ai.devicefit" in str(err.value) and "python -m devicefit.kernels build" in err.value.fix
    assert "--kernels standard" in err.value.fix
