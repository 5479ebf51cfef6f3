"""The memory budget binds on the model's own memory, predicted and measured as the same quantity.

A synthetic device (a test double for compress + measure, as in ``test_study``): the file size follows the
plan (4 bytes a weight in float, 1 in int8, 0.5 in int4), and the agent reports the model's own memory by
a hidden rule (1.5 × size + 1 MB) next to a whole-process peak RSS 60 MB above it. The fp32 model cannot
meet the memory budget; the search must find a quantized plan under it, judge every candidate on its
own memory (never the process's) and learn the rule in the memory model it predicts with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import devicefit.compressor.search.measure as measure_mod
from devicefit.compressor.latency import CalibratedModel, LayerSpec, NodeMap, Roofline
from devicefit.compressor.plan import Plan
from devicefit.compressor.search import policy
from devicefit.compressor.search.candidate import Budget, Materialized, Timing
from devicefit.compressor.search.config import SearchConfig
from devicefit.compressor.search.problem import MemoryModel, SearchProblem
from devicefit.compressor.search.sensitivity import SensitivityTable
from devicefit.compressor.search.session import FitSession
from devicefit.compressor.search.space import SpaceConfig, build_space
from devicefit.compressor.search.studydb import open_study

ROOF = Roofline(peak_gops_fp32=50.0, peak_gops_int8=200.0, mem_bandwidth_gbs=10.0)
PARAMS = 250_000
SPECS = [LayerSpec(f"l{i}", "linear", PARAMS, PARAMS * 64, 64 * 500, 64 * 500) for i in range(6)]
BYTES = {"float": 4.0, "int8_dynamic": 1.0, "int8_static": 1.0, "int4_weight_only": 0.5}
DROP = {"int8_dynamic": 0.001, "int8_static": 0.003, "int4_weight_only": 0.004}
#: the agent's whole process around the model (interpreter, runtime): what the budget must NOT be checked on
PROCESS_MB = 60.0


def own_memory_mb(size_bytes: float) -> float:
    """The hidden rule of the simulated agent: the model's own peak memory for a file of this size."""
    return 1.5 * size_bytes / 1e6 + 1.0


def _label(plan: Plan, layer: str) -> str:
    c = plan.choice_for(layer)
    return c.quant.method if c.quant is not None else "float"


class MemoryDevice:
    """Materializes a plan into a file whose size follows its dtypes; measures the model's own memory."""

    device_id = "mem-board"
    batch_size = 1
    runtime = "onnxruntime"
    reference_level = None

    def __init__(self, problem: SearchProblem, tmp: Path) -> None:
        self.problem, self.tmp = problem, tmp
        self.sizes: dict[Path, int] = {}
        self.labels: dict[Path, dict[str, str]] = {}

    def fp32(self) -> Materialized:
        return self.materialize(Plan(), name="fp32")

    def mark_reference(self, p50_ms: float) -> None:
        pass

    def materialize(self, plan: Plan, *, name: str) -> Materialized:
        path = self.tmp / f"{name}.onnx"
        path.write_bytes(b"x")
        labels = {s.name: _label(plan, s.name) for s in SPECS}
        size = int(sum(PARAMS * BYTES[lab] for lab in labels.values()) + 20_000)
        drop = sum(DROP.get(lab, 0.0) for lab in labels.values())
        self.sizes[path], self.labels[path] = size, labels
        return Materialized(path, size, PARAMS * len(SPECS), PARAMS * 64 * len(SPECS),
                            {"name": "cosine", "baseline": 1.0, "compressed": 1.0 - drop, "drop": drop})

    def measure(self, path: Path) -> Timing:
        costs = self.problem.costs(self.labels[path])
        per = [{"name": c.name, "op_type": "MatMul", "mean_ms": 3.0 * ROOF.layer_ms(c)} for c in costs]
        total = sum(p["mean_ms"] for p in per)
        own = own_memory_mb(self.sizes[path])
        return Timing(total, total * 1.05, total, PROCESS_MB + own, per_node=per, profiled_e2e_ms=total,
                      device=self.device_id, model_memory_mb=own)

    def block_p50(self, path: Path) -> float:
        return self.measure(path).p50_ms

    def runtime_key(self) -> tuple[dict[str, str], int]:
        return {"onnxruntime": "test"}, 2


def _run(tmp_path: Path, budget: Budget, monkeypatch: pytest.MonkeyPatch) -> tuple[FitSession, Any]:
    mapping = lambda path, layers, reference=None: NodeMap({n: n for n in layers}, {})  # noqa: E731
    monkeypatch.setattr(measure_mod, "node_map_for", mapping)
    space = build_space(SPECS, config=SpaceConfig(families={"quant": tuple(DROP)}))
    sens = SensitivityTable("cosine", 1.0, 8)
    for s in SPECS:
        sens.drops[s.name] = dict(DROP)
        sens.devs[s.name] = dict(DROP)
    problem = SearchProblem(SPECS, total_params=PARAMS * len(SPECS), space=space, sensitivity=sens,
                            latency=CalibratedModel(ROOF, device_id="mem-board"), budget=budget)
    loop = FitSession(problem, MemoryDevice(problem, tmp_path),
                      config=SearchConfig(trials=40, max_measurements=5, confirm_rounds=0))
    base = loop.baseline()  # the fit's own baseline phase: fp32 exported, measured, learned
    loop.search(open_study(f"sqlite:///{tmp_path / 'study.db'}", "mem", seed=0))
    loop.exploit()
    return loop, loop.outcome(base)


def test_memory_is_the_binding_budget_and_fp32_is_rejected_for_it(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # fp32: 6 MB of weights -> 10.03 MB of its own (70 MB whole process); the budget: 5 MB of its own,
    # which needs at least five of the six layers in 8 bits or less
    budget = Budget(memory_mb=5.0, accuracy_drop=0.02)
    loop, out = _run(tmp_path, budget, monkeypatch)
    base = out.baseline
    fp32_own = own_memory_mb(PARAMS * 4 * 6 + 20_000)
    assert base.measured_memory_mb == pytest.approx(fp32_own) == pytest.approx(10.03)
    assert not base.passes(budget) and base.shortfall(budget) == {"memory_mb": pytest.approx((10.03 - 5) / 5, abs=1e-4)}
    best = out.best
    assert best is not None and best.passes(budget) and best is not base
    assert best.measured_memory_mb is not None and best.measured_memory_mb <= 5.0
    assert best.measured_memory_mb == pytest.approx(own_memory_mb(best.size_bytes or 0))
    floats = sum(1 for lab in best.labels.values() if lab == "float")
    assert floats <= 1, best.labels
    measured = [c for c in out.candidates if c.measured]
    assert len(measured) >= 2
    for c in measured:  # every candidate judged on its own memory, never on the process's (60 MB more)
        assert c.measured_memory_mb == pytest.approx(own_memory_mb(c.size_bytes or 0))
        assert c.measured_memory_mb < PROCESS_MB
    # the prediction is of the same quantity: after the measurements, the memory model reproduces the rule
    for c in measured:
        assert loop.problem.memory.predict((c.size_bytes or 0) / 1e6) == pytest.approx(c.measured_memory_mb, rel=0.01)
    # the baseline itself was learned (its size is known when it is learned)
    assert (base.size_bytes / 1e6, fp32_own) in loop.problem.memory.points  # type: ignore[operator]


def test_memory_prediction_gates_measurement_on_the_models_own_memory() -> None:
    """``looks_feasible`` compares the predicted *own* memory with the budget: with the prior (2 MB + 1.6 ×
    size), a 20 MB file predicts 34 MB and passes a 40 MB budget — a whole-process prior (60 MB + …) never
    would — while a 30 MB file (50 MB) is over it by more than the 10% margin."""
    m = MemoryModel()
    assert m.predict(20.0) == pytest.approx(34.0) and m.predict(30.0) == pytest.approx(50.0)
    budget = Budget(memory_mb=40.0)
    cfg = SearchConfig()
    from devicefit.compressor.search.candidate import Candidate

    def cand(size_mb: float) -> Candidate:
        return Candidate(0, {}, "h", predicted_ms=1.0, predicted_size_bytes=size_mb * 1e6,
                         predicted_memory_mb=m.predict(size_mb), predicted_drop=0.0)

    assert policy.looks_feasible(cand(20.0), budget, cfg)
    assert not policy.looks_feasible(cand(30.0), budget, cfg)
    # measurements refit the line: two points 10 MB apart on 1.5 × size + 1
    m.observe(10.0, 16.0)
    m.observe(20.0, 31.0)
    m.observe(5.0, 0.0)  # not measured (an agent that did not report it): ignored
    assert m.points == [(10.0, 16.0), (20.0, 31.0)]
    assert m.predict(30.0) == pytest.approx(46.0) and m.predict(0.0) == pytest.approx(1.0)
