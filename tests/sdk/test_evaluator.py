"""The fit's evaluator and ``devicefit bench`` measure by one rule (the agent's ``timed_runs``: at least
``runs`` timed runs and at least a time floor), and a candidate's memory is the model's own.

A simulated device records every benchmark request and answers from a table; no wall clock is involved.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from devicefit import defaults
from devicefit.bundle import ModelBundle
from devicefit.errors import DeviceError, UserInputError
from devicefit.fitting.evaluator import ROUNDS, FitEvaluator
from devicefit.protos.report import BenchReport

#: the knobs of the measuring rule a request sets (what must be the same for `bench` and the fit's baseline)
RULE = ("runs", "warmup", "min_seconds", "threads", "batch_size")


class SimDevice:
    """Answers benchmarks from ``p50`` (by model id) and records each request."""

    id = "sim"

    def __init__(self, p50: dict[str, float], *, model_mb: float = 42.0, old_agent: bool = False,
                 runtimes: dict[str, str | None] | None = None) -> None:
        self.p50, self.model_mb, self.old_agent = p50, model_mb, old_agent
        self.runtimes = runtimes or {"onnxruntime": "1.0"}
        self.calls: list[tuple[str | None, dict[str, Any]]] = []

    def info(self) -> dict[str, Any]:
        return {"device_id": "sim-board", "runtimes": self.runtimes}

    def deploy(self, path: Path, *, progress: bool = False, activate: bool = True) -> Any:
        return SimpleNamespace(sha256=Path(path).stem, model_id=Path(path).stem)

    def benchmark(self, model_id: str | None = None, **kw: Any) -> BenchReport:
        self.calls.append((model_id, kw))
        p50 = self.p50[str(model_id)]
        own = 0.0 if self.old_agent else self.model_mb
        return BenchReport(p50_ms=p50, p90_ms=p50 * 1.1, p99_ms=p50 * 1.2, mean_ms=p50, load_ms=1.0,
                           peak_rss_mb=60.0 + self.model_mb, runs=kw["runs"], threads=kw.get("threads") or 2,
                           baseline_rss_mb=60.0, model_memory_mb=own, min_seconds=kw.get("min_seconds", 0.0),
                           batch_size=kw.get("batch_size", 1))


def _evaluator(tmp_path: Path, device: SimDevice, module: Any = None, **kw: Any) -> FitEvaluator:
    bundle = ModelBundle("m", module, (), ["x"], ["y"], "cosine")
    return FitEvaluator(bundle, device, workdir=tmp_path / "work", **kw)  # type: ignore[arg-type]


def test_the_baseline_is_measured_in_blocks_under_the_bench_rule(tmp_path: Path) -> None:
    """The fp32 baseline: three blocks, each under the rule of ``devicefit bench`` (RUNS runs and at least
    MIN_SECONDS), the first with per-node times; its p50 is the median block p50."""
    dev = SimDevice({"fp32": 0.2})
    ev = _evaluator(tmp_path, dev)
    timing = ev.measure(Path("fp32.onnx"))
    assert len(dev.calls) == 3
    for i, (model_id, kw) in enumerate(dev.calls):
        assert model_id == "fp32" and kw["runs"] == defaults.RUNS and kw["min_seconds"] == defaults.MIN_SECONDS
        assert kw["per_node"] == (i == 0)
    assert dev.calls[0][1]["warmup"] == defaults.WARMUP
    assert timing.p50_ms == 0.2 and timing.rounds == 3 and timing.spread == 0.0
    assert timing.model_memory_mb == 42.0 and timing.peak_rss_mb == 102.0  # own memory, and the process's


def test_candidates_are_interleaved_in_short_time_floored_blocks(tmp_path: Path) -> None:
    """After the reference is set, a candidate's blocks and the reference's alternate, each at least
    ``runs // ROUNDS`` runs and BLOCK_MIN_SECONDS; then the per-node run (whose report gives the memory)."""
    dev = SimDevice({"fp32": 0.2, "cand": 0.1}, model_mb=12.5)
    ev = _evaluator(tmp_path, dev)
    base = ev.measure(Path("fp32.onnx"))
    ev.mark_reference(base.p50_ms)
    dev.calls.clear()
    timing = ev.measure(Path("cand.onnx"))
    blocks = [(m, kw) for m, kw in dev.calls if not kw["per_node"]]
    per_node = [(m, kw) for m, kw in dev.calls if kw["per_node"]]
    assert [m for m, _ in blocks[:3]] == ["fp32", "cand", "fp32"] and len(per_node) == 1
    assert all(kw["runs"] == defaults.RUNS // ROUNDS and kw["min_seconds"] == defaults.BLOCK_MIN_SECONDS
               for _, kw in blocks)
    assert per_node[0][0] == "cand" and per_node[0][1]["runs"] == defaults.RUNS
    assert timing.p50_ms == 0.1 and timing.load == pytest.approx(1.0) and timing.model_memory_mb == 12.5
    # the confirm phase's blocks are the same blocks
    dev.calls.clear()
    assert ev.block_p50(Path("cand.onnx")) == 0.1
    assert dev.calls[0][1]["runs"] == defaults.RUNS // ROUNDS
    assert dev.calls[0][1]["min_seconds"] == defaults.BLOCK_MIN_SECONDS


def test_a_tflite_fit_measures_by_the_same_rule_without_per_node_times(tmp_path: Path) -> None:
    """``format="tflite"``: the same blocks as an ONNX fit (baseline, interleaved candidate, confirm), but no
    request asks the LiteRT runner for per-op times (it has none: the agent would refuse)."""
    dev = SimDevice({"fp32": 0.04, "cand": 0.02}, runtimes={"onnxruntime": "1.0", "litert": "2.1"})
    ev = _evaluator(tmp_path, dev, module=torch.nn.Linear(4, 4), format="tflite")
    assert ev.runtime == "litert"
    base = ev.measure(Path("fp32.tflite"))
    ev.mark_reference(base.p50_ms)
    timing = ev.measure(Path("cand.tflite"))
    ev.block_p50(Path("cand.tflite"))
    assert len(dev.calls) >= 3 + 3 + 1 + 1 and not any(kw["per_node"] for _, kw in dev.calls)
    assert [kw["min_seconds"] for _, kw in dev.calls[:3]] == [defaults.MIN_SECONDS] * 3
    assert base.p50_ms == 0.04 and timing.p50_ms == 0.02 and timing.load == pytest.approx(1.0)
    assert _evaluator(tmp_path, SimDevice({})).runtime == "onnxruntime"


def test_a_tflite_fit_refuses_an_agent_without_litert_and_an_onnx_input(tmp_path: Path) -> None:
    no_litert = SimDevice({}, runtimes={"onnxruntime": "1.0", "litert": None, "tflite_runtime": None})
    with pytest.raises(DeviceError, match="no LiteRT runtime") as err:
        _evaluator(tmp_path, no_litert, module=torch.nn.Linear(4, 4), format="tflite")
    assert "ai-edge-litert" in (err.value.fix or "")
    litert = SimDevice({}, runtimes={"litert": "2.1"})
    with pytest.raises(UserInputError, match="needs the PyTorch model") as err2:
        _evaluator(tmp_path, litert, format="tflite")  # an ONNX graph: nothing to convert to TFLite from
    assert "--format onnx" in (err2.value.fix or "")
    with pytest.raises(UserInputError, match="unknown export format"):
        _evaluator(tmp_path, litert, format="coreml")


def test_an_older_agent_still_gives_the_models_own_memory(tmp_path: Path) -> None:
    """An agent without ``model_memory_mb`` on the wire: the model's memory is peak − baseline RSS, never the
    whole process's peak."""
    dev = SimDevice({"fp32": 1.0}, model_mb=30.0, old_agent=True)
    timing = _evaluator(tmp_path, dev).measure(Path("fp32.onnx"))
    assert timing.model_memory_mb == 30.0 and timing.peak_rss_mb == 90.0


def test_bench_on_a_device_and_on_the_host_sends_the_fit_baselines_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`devicefit bench FILE --on URL` and `devicefit bench FILE` ask exactly what a fit's first baseline block
    asks (runs, warm-up, time floor, threads, batch): the two p50s are taken by one rule."""
    import devicefit.agent.benchmark as bm
    import devicefit.device as device_mod
    from devicefit.cli import main

    model = tmp_path / "fp32.onnx"
    model.write_bytes(b"onnx")
    dev = SimDevice({"fp32": 0.2})

    class _Conn:
        def __enter__(self) -> SimDevice:
            return dev

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(device_mod, "connect", lambda url: _Conn())
    assert main(["bench", str(model), "--on", "grpc://sim:1", "--json"]) == 0
    bench_on = dev.calls[-1][1]
    host: dict[str, Any] = {}

    def fake_host(path: Any, **kw: Any) -> BenchReport:
        host.update(kw)
        return dev.benchmark("fp32", **kw)

    monkeypatch.setattr(bm, "benchmark_onnx", fake_host)
    assert main(["bench", str(model), "--json"]) == 0
    capsys.readouterr()
    dev.calls.clear()
    _evaluator(tmp_path, dev).measure(model)
    fit_first = dev.calls[0][1]
    assert {k: bench_on[k] for k in RULE} == {k: fit_first[k] for k in RULE} == {k: host[k] for k in RULE}
    assert fit_first["min_seconds"] == defaults.MIN_SECONDS == 0.5 and fit_first["runs"] == defaults.RUNS
    # the human output says how many runs were made, in how long, and the spread
    monkeypatch.setattr(bm, "benchmark_onnx", lambda path, **kw: BenchReport(
        p50_ms=0.2, p90_ms=0.3, p99_ms=0.4, mean_ms=0.21, load_ms=3.0, peak_rss_mb=70.0, runs=2500, threads=2,
        p10_ms=0.15, iqr_ms=0.05, timed_s=0.5, min_seconds=0.5, model_memory_mb=4.2, run_memory_mb=0.3))
    assert main(["bench", str(model)]) == 0
    out = capsys.readouterr().out
    assert "spread: p10 0.150 ms  IQR 0.050 ms  (2500 runs in 0.50 s, floor 0.5 s)" in out
    assert "memory: model 4.2 MB (runs added 0.3)  process peak RSS 70.0 MB" in out
