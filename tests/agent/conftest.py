"""Tiny real models for the agent's fast tests (built offline with onnx.helper / the TFLite schema)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest


def write_tiny_onnx(path: Path, *, hidden: int = 64, vocab: int = 1000, seed: int = 0) -> Path:
    """A text-like model: int64 input_ids + attention_mask -> Gather, Mul, MatMul, Relu."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((vocab, hidden)).astype(np.float32), "emb"),
        numpy_helper.from_array(rng.standard_normal((hidden, hidden)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis"),
    ]
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["e"], name="gather"),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Unsqueeze", ["m", "axis"], ["m3"], name="unsqueeze"),
        helper.make_node("Mul", ["e", "m3"], ["em"], name="mul"),
        helper.make_node("MatMul", ["em", "w"], ["h"], name="matmul"),
        helper.make_node("Relu", ["h"], ["out"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_text",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "sequence", hidden])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def write_tiny_tflite(path: Path) -> Path:
    """y = a + b with a dynamic batch dim, written with LiteRT's own flatbuffer schema (no TensorFlow)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    model = s.ModelT()
    model.version = 3
    code = s.OperatorCodeT()
    code.builtinCode = s.BuiltinOperator.ADD
    code.deprecatedBuiltinCode = s.BuiltinOperator.ADD
    code.version = 1
    model.operatorCodes = [code]
    model.buffers = [s.BufferT() for _ in range(4)]
    tensors = []
    for i, name in enumerate(["a", "b", "y"]):
        t = s.TensorT()
        t.shape, t.shapeSignature = [1, 4], [-1, 4]
        t.type, t.buffer, t.name = s.TensorType.FLOAT32, i + 1, name
        tensors.append(t)
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1], [2]
    op.builtinOptionsType, op.builtinOptions = s.BuiltinOptions.AddOptions, s.AddOptionsT()
    sg = s.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators, sg.name = tensors, [0, 1], [2], [op], "main"
    model.subgraphs = [sg]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


def signed_artifact(tmp: Path, model: Path, key: Path, *, version: str, name: str, model_id: str) -> Any:
    """A copy of ``model`` in ``tmp/name`` with its manifest, signed by ``key`` at ``version`` (an Artifact)."""
    import shutil

    from devicefit.artifact import Artifact
    from devicefit.cli.keys import sign_artifact

    d = tmp / name
    d.mkdir()
    shutil.copy(model, d / model.name)
    Artifact.from_file(d / model.name, model_id=model_id).save()
    return sign_artifact(d, key, version=version)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_onnx(tmp_path_factory.mktemp("tiny") / "tiny_text.onnx")


@pytest.fixture(scope="session")
def tiny_onnx_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_onnx(tmp_path_factory.mktemp("tinyb") / "tiny_text_b.onnx", hidden=32, seed=1)


@pytest.fixture(scope="session")
def tiny_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_tflite(tmp_path_factory.mktemp("tfl") / "tiny_add.tflite")
