"""benchmark_onnx on real tiny models (onnxruntime + LiteRT), input generation, runner registry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from devicefit.agent import benchmark as bm
from devicefit.agent.runners import RUNNERS, TensorSpec, format_of, runner_for
from devicefit.agent.runners.litert_runner import LiteRTRunner, import_interpreter
from devicefit.agent.runners.onnxruntime_runner import OnnxRuntimeRunner, parse_trace
from devicefit.errors import ModelLoadError, UserInputError


def test_report_stats_and_options(tiny_onnx: Path) -> None:
    r = bm.benchmark_onnx(tiny_onnx, runs=30, warmup=3, threads=1)
    assert r.runs == 30 and r.warmup == 3 and r.threads == 1 and r.source == "host"
    assert 0 < r.min_ms <= r.p50_ms <= r.p90_ms <= r.p99_ms <= r.max_ms
    assert r.min_ms <= r.mean_ms <= r.max_ms
    assert r.load_ms > 0
    assert r.peak_rss_mb >= r.baseline_rss_mb > 10  # a Python process with onnxruntime loaded
    assert r.session_options["intra_op_num_threads"] == 1
    assert r.session_options["execution_mode"] == "sequential"
    assert r.session_options["graph_optimization_level"] == "all"
    assert r.runtime["runner"] == "onnxruntime" and r.runtime["onnxruntime"].count(".") >= 1
    assert r.per_node == []
    d = r.to_dict()
    for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "load_ms", "peak_rss_mb", "runs", "source", "threads"):
        assert key in d
    back = bm.BenchReport.from_dict(json.loads(json.dumps(d)))
    assert back == r


def test_per_node_sum_within_end_to_end(tiny_onnx: Path) -> None:
    r = bm.benchmark_onnx(tiny_onnx, runs=20, warmup=2, threads=1, per_node=True)
    names = [n.name for n in r.per_node]
    assert {"gather", "mul", "matmul", "relu"} <= set(names)  # the graph's own node names
    assert {n.op_type for n in r.per_node} >= {"Gather", "MatMul", "Relu"}
    assert all(n.mean_ms >= 0 for n in r.per_node)
    assert 0 < r.per_node_total_ms <= r.per_node_e2e_ms
    assert r.to_dict()["per_node_total_ms"] == pytest.approx(sum(n.mean_ms for n in r.per_node))


def test_parse_trace_drops_warmup_and_averages() -> None:
    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},  # warm-up
        {"cat": "Node", "name": "a_kernel_time", "ts": 10, "dur": 90, "args": {"op_name": "Conv"}},
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
        {"cat": "Node", "name": "a_kernel_time", "ts": 210, "dur": 40, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "a_fence_before", "ts": 209, "dur": 5, "args": {}},
        {"cat": "Node", "name": "b_kernel_time", "ts": 260, "dur": 20, "args": {"op_name": "Relu"}},
        {"cat": "Session", "name": "model_run", "ts": 400, "dur": 100},
        {"cat": "Node", "name": "a_kernel_time", "ts": 410, "dur": 60, "args": {"op_name": "Conv"}},
    ]
    nodes = parse_trace(events, last_runs=2)
    assert [(n.name, n.op_type) for n in nodes] == [("a", "Conv"), ("b", "Relu")]
    assert nodes[0].mean_ms == pytest.approx(0.050) and nodes[1].mean_ms == pytest.approx(0.010)
    assert parse_trace(events, last_runs=0) == []


def test_generated_inputs_are_valid_for_int64_text_inputs(tiny_onnx: Path) -> None:
    runner = OnnxRuntimeRunner(tiny_onnx, threads=1)
    specs = runner.inputs()
    assert [(s.name, s.dtype) for s in specs] == [("input_ids", "int64"), ("attention_mask", "int64")]
    feeds = bm.make_inputs(specs, batch_size=2)
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    assert ids.shape == mask.shape == (2, bm.DEFAULT_SEQ_LEN)
    assert ids.dtype == mask.dtype == np.int64
    assert ids.min() >= 1 and ids.max() < 1000
    assert (mask == 1).all()
    (out,) = runner.run(feeds)
    assert out.shape == (2, bm.DEFAULT_SEQ_LEN, 64) and np.isfinite(out).all()


def test_make_inputs_dtypes_and_dims() -> None:
    specs = [
        TensorSpec("pixel_values", "float32", ("N", 3, 8, 8)),
        TensorSpec("token_type_ids", "int64", ("batch", "seq")),
        TensorSpec("position_ids", "int32", (1, 5)),
        TensorSpec("flag", "bool", (2,)),
        TensorSpec("q", "uint8", (4, "w")),
    ]
    f = bm.make_inputs(specs, batch_size=3)
    assert f["pixel_values"].shape == (3, 3, 8, 8) and f["pixel_values"].dtype == np.float32
    assert f["token_type_ids"].shape == (3, bm.DEFAULT_SEQ_LEN) and not f["token_type_ids"].any()
    assert f["position_ids"].tolist() == [[0, 1, 2, 3, 4]]
    assert f["flag"].all() and f["q"].shape == (4, bm.DEFAULT_SEQ_LEN) and f["q"].dtype == np.uint8
    with pytest.raises(UserInputError, match="batch_size"):
        bm.make_inputs(specs, batch_size=0)


def test_supplied_inputs_checked(tiny_onnx: Path) -> None:
    ids = np.full((1, 7), 5, dtype=np.int32)  # int32 -> cast to the model's int64
    r = bm.benchmark_onnx(tiny_onnx, runs=3, warmup=0, threads=1, inputs={"input_ids": ids, "attention_mask": ids})
    assert r.runs == 3
    with pytest.raises(UserInputError, match=r"missing \['attention_mask'\]"):
        bm.benchmark_onnx(tiny_onnx, runs=1, inputs={"input_ids": ids})
    with pytest.raises(UserInputError, match="dtype float32"):
        bm.benchmark_onnx(tiny_onnx, runs=1, inputs={"input_ids": ids.astype(np.float32), "attention_mask": ids})


def test_bad_arguments_and_files(tmp_path: Path, tiny_onnx: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        bm.benchmark_onnx(tmp_path / "missing.onnx")
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="onnxruntime could not load"):
        bm.benchmark_onnx(bad, runs=1)
    with pytest.raises(UserInputError, match="runs=0"):
        bm.benchmark_onnx(tiny_onnx, runs=0)
    with pytest.raises(UserInputError, match="threads=0"):
        bm.benchmark_onnx(tiny_onnx, threads=0)
    odd = tmp_path / "model.pb"
    odd.write_bytes(b"x")
    with pytest.raises(UserInputError, match="no runner handles"):
        bm.benchmark_onnx(odd)


def test_registry_capabilities() -> None:
    assert set(RUNNERS) >= {"onnxruntime", "litert"}
    assert RUNNERS["onnxruntime"].per_node and not RUNNERS["litert"].per_node
    assert not any(s.needs_torch for s in RUNNERS.values())
    assert runner_for("m.onnx").name == "onnxruntime" and runner_for("tflite").name == "litert"
    assert format_of("x.TFLITE") == "tflite"
    caps = RUNNERS["litert"].capabilities()
    assert caps["formats"] == ["tflite"] and caps["available"] is True


def test_litert_runner_runs_a_real_tflite(tiny_tflite: Path) -> None:
    runner = LiteRTRunner(tiny_tflite, threads=1)
    assert runner.module_name == "ai_edge_litert.interpreter"
    assert [(s.name, s.dtype, s.shape) for s in runner.inputs()] == [
        ("a", "float32", (None, 4)),
        ("b", "float32", (None, 4)),
    ]
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    (y,) = runner.run({"a": a, "b": 2 * a})  # batch 3: resized from the signature's -1
    np.testing.assert_allclose(y, 3 * a)
    r = bm.benchmark_onnx(tiny_tflite, runs=10, warmup=1, threads=1, batch_size=2)
    assert r.runtime["runner"] == "litert" and "ai-edge-litert" in r.runtime
    assert r.p50_ms <= r.p99_ms
    with pytest.raises(UserInputError, match="per-node"):
        bm.benchmark_onnx(tiny_tflite, per_node=True)


def test_litert_import_fallback() -> None:
    # tflite-runtime is not installed here; the fallback order is exercised with a missing first choice.
    name, mod = import_interpreter(("devicefit_no_such_module.interpreter", "ai_edge_litert.interpreter"))
    assert name == "ai_edge_litert.interpreter" and hasattr(mod, "Interpreter")
    with pytest.raises(ModelLoadError, match="no TFLite interpreter"):
        import_interpreter(("devicefit_no_such_module.interpreter", "tflite_runtime_missing.interpreter"))
