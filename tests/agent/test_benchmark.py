"""benchmark_onnx on real tiny models (onnxruntime + LiteRT), input generation, runner registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


# ---- the measuring rule (time floor) and the model's own memory ------------------------------------
class _Clock:
    """A simulated nanosecond clock: each run of :class:`_SimRunner` advances it by the next duration."""

    def __init__(self) -> None:
        self.ns = 0

    def __call__(self) -> int:
        return self.ns


class _SimRunner:
    """A runner whose runs take the durations given (cycled) on a simulated clock; holds ``hold_mb`` of
    touched memory from load to close, and ``run_mb`` more from the first run (an arena) to close."""

    def __init__(self, clock: _Clock, durations_ms: list[float], *, hold_mb: int = 0, run_mb: int = 0) -> None:
        self.clock, self.durations, self.calls = clock, durations_ms, 0
        self.held: np.ndarray | None = np.ones(hold_mb * 2**20 // 8) if hold_mb else None
        self.run_mb = run_mb
        self.arena: np.ndarray | None = None

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("x", "float32", (1, 4))]

    def run(self, feeds: Any) -> list[np.ndarray]:
        if self.run_mb and self.arena is None:
            self.arena = np.ones(self.run_mb * 2**20 // 8)
        self.clock.ns += round(self.durations[self.calls % len(self.durations)] * 1e6)
        self.calls += 1
        return [feeds["x"]]

    def session_options(self) -> dict[str, Any]:
        return {"runner": "sim"}

    def node_times(self, *, last_runs: int) -> list[Any]:
        return []

    def close(self) -> None:
        self.held = self.arena = None


def _sim_spec(monkeypatch: pytest.MonkeyPatch, make: Any, prepared: list[int]) -> None:
    from devicefit.agent.runners import RunnerSpec

    spec = RunnerSpec(name="sim", formats=("sim",), extensions=(".sim",), per_node=False,
                      factory=lambda path, threads=None, profile=False: make(), versions=lambda: {"sim": "1"},
                      available=lambda: True, prepare=lambda: prepared.append(1))
    monkeypatch.setitem(RUNNERS, "sim", spec)


def test_timed_runs_meet_both_the_run_count_and_the_time_floor() -> None:
    """At least ``runs`` timed runs and at least ``min_seconds`` of them, capped at ``max_runs``; warm-up runs
    are neither timed nor counted (a simulated clock: each run takes exactly its duration)."""
    clock = _Clock()

    def runs_made(duration_ms: float, **kw: Any) -> np.ndarray:
        runner = _SimRunner(clock, [duration_ms])
        times = bm.timed_runs(runner, {"x": np.zeros((1, 4), np.float32)}, clock=clock, **kw)
        assert runner.calls == times.size + kw["warmup"]
        return times

    # a 0.2 ms model: 30 runs are 6 ms; the 0.5 s floor takes 2,500 runs
    assert runs_made(0.2, warmup=5, runs=30).size == 30
    t = runs_made(0.2, warmup=5, runs=30, min_seconds=0.5)
    assert t.size == 2500 and t.sum() == pytest.approx(500.0) and set(t.tolist()) == {0.2}
    # capped: a 0.01 ms model stops at max_runs (a floor never runs away)
    assert runs_made(0.01, warmup=0, runs=30, min_seconds=0.5, max_runs=1000).size == 1000
    assert runs_made(0.01, warmup=0, runs=30, min_seconds=0.5).size == bm.MAX_RUNS
    # a 100 ms model: the run count is the binding part (30 runs are 3 s > 0.5 s)
    assert runs_made(100.0, warmup=1, runs=30, min_seconds=0.5).size == 30
    # runs above the cap are still made (the cap bounds what the floor adds, not what was asked)
    assert runs_made(1.0, warmup=0, runs=40, min_seconds=0.0, max_runs=10).size == 40


def test_report_gives_the_runs_made_their_time_and_spread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The report's ``runs`` are the runs made under the floor, ``timed_s`` their time, p10 / IQR their spread:
    exactly the percentiles of the simulated durations."""
    clock = _Clock()
    durations = [0.1, 0.2, 0.3, 0.4, 1.0]  # ms, cycled
    prepared: list[int] = []
    _sim_spec(monkeypatch, lambda: _SimRunner(clock, durations), prepared)
    model = tmp_path / "m.sim"
    model.write_bytes(b"sim")
    r = bm.benchmark_onnx(model, runs=10, warmup=0, threads=1, min_seconds=0.2, runner="sim", clock=clock)
    # 0.2 s at 0.4 ms a run on average: 500 runs (100 cycles) reach exactly 200 ms
    assert r.runs == 500 and r.timed_s == pytest.approx(0.2) and r.min_seconds == 0.2
    expect = np.array(durations * 100)
    p10, p25, p50, p75, p90 = np.percentile(expect, [10, 25, 50, 75, 90])
    assert r.p50_ms == pytest.approx(p50) == pytest.approx(0.3)
    assert r.p10_ms == pytest.approx(p10) and r.p90_ms == pytest.approx(p90)
    assert r.iqr_ms == pytest.approx(p75 - p25) == pytest.approx(0.2)
    assert r.min_ms == pytest.approx(0.1) and r.max_ms == pytest.approx(1.0) and r.mean_ms == pytest.approx(0.4)
    assert prepared == [1]  # the runtime was brought to its idle state before the RSS baseline
    # without a floor: exactly the runs asked
    r0 = bm.benchmark_onnx(model, runs=10, warmup=0, threads=1, runner="sim", clock=clock)
    assert r0.runs == 10 and r0.timed_s == pytest.approx(sum(durations) * 2 / 1e3) and r0.min_seconds == 0.0
    with pytest.raises(UserInputError, match="min_seconds=-1"):
        bm.benchmark_onnx(model, runs=10, runner="sim", min_seconds=-1.0)
    with pytest.raises(UserInputError, match="min_seconds=61"):
        bm.benchmark_onnx(model, runs=10, runner="sim", min_seconds=61.0)


def test_model_memory_is_what_the_model_adds_over_the_idle_process(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``model_memory_mb`` is the peak RSS over load + runs minus the RSS before the load: a model holding
    48 MB from its load and 32 MB more from its first run (an arena) reads ~80 MB, of which the runs added
    ~32 MB — while the whole process's peak holds the interpreter too. Real RSS (allocated, touched pages)."""
    clock = _Clock()
    _sim_spec(monkeypatch, lambda: _SimRunner(clock, [1.0], hold_mb=48, run_mb=32), [])
    model = tmp_path / "m.sim"
    model.write_bytes(b"sim")
    r = bm.benchmark_onnx(model, runs=5, warmup=1, runner="sim", clock=clock)
    assert 76 <= r.model_memory_mb <= 90, r
    assert 30 <= r.run_memory_mb <= 36, r
    assert r.peak_rss_mb - r.baseline_rss_mb == pytest.approx(r.model_memory_mb)
    assert r.baseline_rss_mb > 20 and r.peak_rss_mb > r.model_memory_mb + 20  # the process is more than the model
    assert r.own_memory_mb == r.model_memory_mb
    small = bm.benchmark_onnx(model, runs=5, warmup=1, runner="sim", clock=clock)
    assert abs(small.model_memory_mb - r.model_memory_mb) < 6  # a second load reads the same, not less


def test_model_memory_of_a_real_onnx_model_counts_its_weights(tmp_path: Path) -> None:
    """A 32 MB fp32 MatMul weight: the model's own memory is at least its weights and well below the whole
    process; the runtime's start-up (~10 MB, paid once) is not counted for the model."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((2048, 4096), 0.5, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2048])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4096])], [w])
    path = tmp_path / "big.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    size_mb = path.stat().st_size / 2**20
    r = bm.benchmark_onnx(path, runs=3, warmup=1, threads=1)
    assert size_mb == pytest.approx(32.0, rel=0.01)
    assert size_mb <= r.model_memory_mb <= 3 * size_mb, r
    assert r.peak_rss_mb >= r.baseline_rss_mb + r.model_memory_mb - 0.01


def test_new_report_fields_cross_the_wire_and_an_older_agents_report_still_gives_model_memory() -> None:
    from devicefit.protos import wire
    from devicefit.protos.devicefit.v1 import benchmark_pb2
    from devicefit.protos.report import BenchReport, own_memory_mb

    r = BenchReport(p50_ms=1.0, p90_ms=2.0, p99_ms=3.0, mean_ms=1.5, load_ms=9.0, peak_rss_mb=150.0, runs=700,
                    threads=2, baseline_rss_mb=60.0, p10_ms=0.8, iqr_ms=0.4, timed_s=0.7, min_seconds=0.5,
                    model_memory_mb=88.0, run_memory_mb=7.5)
    back = wire.report_from_proto(wire.report_to_proto(r, device_id="d", model_id="m", sha256="0" * 64))
    assert back == r and back.own_memory_mb == 88.0
    # an agent older than these fields: 0 on the wire; the model's memory is peak − baseline
    old = benchmark_pb2.BenchmarkReport(p50_ms=1.0, peak_rss_mb=150.0, baseline_rss_mb=60.0, runs=50)
    from devicefit.protos.schema import stamp

    old_report = wire.report_from_proto(stamp(old))
    assert old_report.model_memory_mb == 0.0 and old_report.own_memory_mb == 90.0
    assert own_memory_mb({"peak_rss_mb": 150.0}) == 0.0  # no baseline: unknown, not the whole process
    # an older client's request (no min_seconds) is a plain fixed-count benchmark
    assert benchmark_pb2.BenchmarkRequest(runs=5).min_seconds == 0.0


@pytest.mark.parametrize("value", [-0.5, 61.0, float("nan")])
def test_agent_refuses_a_time_floor_out_of_range(tmp_path: Path, value: float) -> None:
    from devicefit.agent.service import AgentService
    from devicefit.agent.store import ModelStore
    from devicefit.protos import errors as E
    from devicefit.protos.devicefit.v1 import benchmark_pb2
    from devicefit.protos.schema import stamp

    svc = AgentService(ModelStore(tmp_path / "store"), device_id="dev")
    rep = svc.benchmark(stamp(benchmark_pb2.BenchmarkRequest(runs=5, min_seconds=value)))
    assert not rep.status.ok and rep.status.code == E.INVALID_ARGUMENT, rep.status
    assert "min_seconds" in rep.status.message and "0..60" in rep.status.message
