"""The search loop's own logic on a synthetic device (a test double for compress + measure).

The double's "device" runs each layer at a dtype-dependent efficiency the latency model does not know,
and reports per-node times named after the layers; its metric drop is the sum of hidden per-layer drops.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest

import devicefit.compressor.search.measure as measure_mod
from devicefit.compressor.latency import CalibratedModel, LayerSpec, NodeMap, Roofline
from devicefit.compressor.plan import Plan
from devicefit.compressor.search.candidate import Budget, Candidate, Materialized, Timing
from devicefit.compressor.search.config import SearchConfig
from devicefit.compressor.search.problem import SearchProblem
from devicefit.compressor.search.sensitivity import SensitivityTable
from devicefit.compressor.search.session import FitSession
from devicefit.compressor.search.space import SpaceConfig, build_space
from devicefit.compressor.search.studydb import open_study
from devicefit.errors import UserInputError

ROOF = Roofline(peak_gops_fp32=50.0, peak_gops_int8=200.0, mem_bandwidth_gbs=10.0)
SPECS = [LayerSpec(f"l{i}", "linear", 250_000, 250_000 * 64, 64 * 500, 64 * 500) for i in range(6)]
EFF = {"fp32": 3.0, "int8dyn": 5.0, "int8": 6.0, "int4w": 2.5}
DROP = {"int8_dynamic": 0.001, "int8_static": 0.004, "int4_weight_only": 0.006}
SENSITIVE = "l0"  # quantizing l0 costs 10x more


def _true_layer_ms(layer: str, dtype: str, cost: Any) -> float:
    return EFF[dtype] * ROOF.layer_ms(cost)


class FakeDevice:
    device_id = "fake-board"
    batch_size = 1
    runtime = "onnxruntime"
    reference_level = None

    def fp32(self) -> Materialized:
        return self.materialize(Plan(), name="fp32")

    def mark_reference(self, p50_ms: float) -> None:
        pass

    def __init__(self, problem: SearchProblem, tmp: Path) -> None:
        self.problem = problem
        self.tmp = tmp
        self.materialized: list[Plan] = []

    def materialize(self, plan: Plan, *, name: str) -> Materialized:
        self.materialized.append(plan)
        path = self.tmp / f"{name}.onnx"
        path.write_bytes(b"x")
        drop = 0.0
        for layer, choice in plan.resolve([s.name for s in SPECS]).items():
            if choice.quant is not None:
                # the thorough int8 static recovery (bias correction; what a fit's finish restores) loses 4x less
                recovered = 0.25 if getattr(choice.quant, "bias_correction", False) else 1.0
                drop += DROP[choice.quant.method] * (10 if layer == SENSITIVE else 1) * recovered
        return Materialized(path, 4_000_000, 1_500_000, 96_000_000, {"name": "cosine", "baseline": 1.0,
                                                                     "compressed": 1.0 - drop, "drop": drop})

    def measure(self, path: Path) -> Timing:
        plan = self.materialized[-1]
        return self._timing({s.name: _label(plan, s.name) for s in SPECS})

    def measure_labels(self, labels: dict[str, str]) -> float:
        return self._timing(labels).p50_ms

    def _timing(self, labels: dict[str, str]) -> Timing:
        costs = self.problem.costs(labels)
        per = [{"name": c.name, "op_type": "MatMul", "mean_ms": _true_layer_ms(c.name, c.dtype, c)} for c in costs]
        other = 0.5
        total = sum(p["mean_ms"] for p in per) + other
        per.append({"name": "softmax", "op_type": "Softmax", "mean_ms": other})
        return Timing(total, total * 1.05, total, 80.0, per_node=per, profiled_e2e_ms=total, device=self.device_id)

    def runtime_key(self) -> tuple[dict[str, str], int]:
        return {"onnxruntime": "test"}, 2


def _label(plan: Plan, layer: str) -> str:
    c = plan.choice_for(layer)
    return c.quant.method if c.quant is not None else "float"


def _problem(budget: Budget) -> SearchProblem:
    space = build_space(SPECS, config=SpaceConfig(families={"quant": ("int8_dynamic", "int8_static", "int4_weight_only")}))
    sens = SensitivityTable("cosine", 1.0, 8)
    for s in SPECS:
        sens.drops[s.name] = {k: v * (10 if s.name == SENSITIVE else 1) for k, v in DROP.items()}
        sens.devs[s.name] = dict(sens.drops[s.name])
    return SearchProblem(SPECS, total_params=1_600_000, space=space, sensitivity=sens,
                         latency=CalibratedModel(ROOF, device_id="fake-board"), budget=budget)


def _add_baseline(loop: FitSession, dev: FakeDevice) -> Candidate:
    """The fp32 baseline, measured first (as fit does)."""
    problem = loop.problem
    base = problem.predict(problem.float_labels(), trial=-1)
    mat = dev.materialize(Plan(), name="fp32")
    timing = dev.measure(mat.path)
    problem.learn(base, timing, None, NodeMap({n: n for n in problem.space.layers}, {}), score=False)
    base.measured_ms, base.metric, base.size_bytes, base.measured_memory_mb = timing.p50_ms, mat.metric, 6_400_000, 80.0
    loop.add_baseline(base)
    return base


def _run(tmp_path: Path, budget: Budget, monkeypatch: pytest.MonkeyPatch, **cfg: Any) -> tuple[FitSession, Any, FakeDevice]:
    monkeypatch.setattr(measure_mod, "node_map_for", lambda path, layers, reference=None: NodeMap({n: n for n in layers}, {}))
    problem = _problem(budget)
    dev = FakeDevice(problem, tmp_path)
    loop = FitSession(problem, dev, config=SearchConfig(**{"trials": 40, "max_measurements": 5, **cfg}))
    base = _add_baseline(loop, dev)
    study = open_study(f"sqlite:///{tmp_path / 'study.db'}", "t", seed=0)
    loop.search(study)
    loop.exploit()
    return loop, loop.outcome(base), dev


def test_loop_finds_fastest_passing_and_calibrates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base_ms = 6 * EFF["fp32"] * ROOF.layer_ms(_problem(Budget()).costs({s.name: "float" for s in SPECS})[0]) + 0.5
    budget = Budget(latency_ms=0.6 * base_ms, accuracy_drop=0.02)
    loop, out, dev = _run(tmp_path, budget, monkeypatch)
    assert out.best is not None and out.best.passes(budget)
    assert out.best.measured_ms is not None and out.best.measured_ms <= budget.latency_ms
    # measurement cap respected; every measured candidate got a prediction error recorded
    assert 1 <= out.measurements <= 5 and len(dev.materialized) == out.measurements + 1
    assert len(out.errors) == out.measurements
    # predictions made before measuring (fp32-calibrated + dtype prior) are within 15%; after learning the
    # measured candidates, their re-predictions are within 2%
    assert out.median_error() is not None and out.median_error() < 0.15
    for c in out.candidates:
        if c.measured and c.trial >= 0:
            assert loop.problem.predict(c.labels).predicted_ms == pytest.approx(c.measured_ms, rel=0.02)
    # fastest passing: no measured passing candidate is faster by more than the tie margin
    passing = [c for c in out.candidates if c.passes(budget)]
    assert all(c.measured_ms >= out.best.measured_ms * (1 - loop.config.tie) for c in passing)  # type: ignore[operator]
    # the seeds went in first: trial 0 = fp32, then the uniform schemes
    trials = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'study.db'}").get_trials()
    assert set(trials[0].params.values()) == {"float"}
    assert {frozenset(t.params.values()) for t in trials[1:4]} == {frozenset({q}) for q in DROP}
    assert all(set(t.constraints) == {"latency", "size", "memory", "accuracy_drop"} for t in trials)
    assert all(t.user_attrs["devicefit"]["worker"] == "main" for t in trials)


def test_loop_reports_shortfall_when_budget_impossible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    budget = Budget(latency_ms=0.001, accuracy_drop=0.0001)
    _loop, out, _dev = _run(tmp_path, budget, monkeypatch, trials=20, max_measurements=3)
    assert out.best is None and out.closest is not None
    assert out.closest.measured and out.closest.shortfall(budget)["latency_ms"] > 0
    assert out.chosen is out.closest


def test_worker_trials_tagged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from devicefit.compressor.search.worker import join_study

    monkeypatch.setattr(measure_mod, "node_map_for", lambda path, layers, reference=None: NodeMap({n: n for n in layers}, {}))
    problem = _problem(Budget(latency_ms=1.0))
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = open_study(storage, "w", seed=1)
    loop = FitSession(problem, FakeDevice(problem, tmp_path), config=SearchConfig(trials=5, max_measurements=0))
    assert join_study(loop, study, worker_id="host-a:1") == 5
    assert {t.user_attrs["devicefit"]["worker"] for t in study.get_trials()} == {"host-a:1"}


def test_calibration_probes_make_first_predictions_accurate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from devicefit.compressor.search.probes import probe_plans, run_probes

    monkeypatch.setattr(measure_mod, "node_map_for", lambda path, layers, reference=None: NodeMap({n: n for n in layers}, {}))
    problem = _problem(Budget(latency_ms=100.0))
    plans = probe_plans(problem)
    assert set(plans) == set(DROP)
    # the first half of the layers, in network order
    assert [layer for layer, lab in plans["int8_static"].items() if lab != "float"] == ["l0", "l1", "l2"]
    dev = FakeDevice(problem, tmp_path)
    loop = FitSession(problem, dev, config=SearchConfig(trials=1, max_measurements=3))
    base = problem.predict(problem.float_labels(), trial=-1)
    mat = dev.materialize(Plan(), name="fp32")
    problem.learn(base, dev.measure(mat.path), None, NodeMap({s.name: s.name for s in SPECS}, {}), score=False)
    before = {q: problem.predict(problem.space.uniform(q)).predicted_ms for q in DROP}
    probes = run_probes(loop)
    assert len(probes) == 3 and all(p.measured and "probe:" in p.tags[-1] for p in probes)
    # probes are calibration, not candidates: not selectable, not counted, no prediction error recorded
    assert loop.measurements == 0 and not loop.by_hash and problem.latency.errors == []
    for q in DROP:
        truth = dev.measure_labels(problem.space.uniform(q))
        pred = problem.predict(problem.space.uniform(q))
        assert pred.uncalibrated == ()
        assert pred.predicted_ms == pytest.approx(truth, rel=0.03), q
        assert abs(before[q] - truth) > abs(pred.predicted_ms - truth)
    assert run_probes(loop) == []  # nothing left to calibrate


def test_probes_cover_every_layer_kind() -> None:
    """A CNN: two convolutions then two linear layers — each scheme is probed on the first half of each kind."""
    specs = [LayerSpec("c0", "conv", 320, 600_000, 64, 2048), LayerSpec("c1", "conv", 18_000, 37_000_000, 2048, 4096),
             LayerSpec("f0", "linear", 262_000, 262_000, 1024, 256), LayerSpec("f1", "linear", 2570, 2560, 256, 10)]
    space = build_space(specs, config=SpaceConfig(families={"quant": ("int8_static",)}))
    sens = SensitivityTable("accuracy", 1.0, 8)
    problem = SearchProblem(specs, total_params=284_000, space=space, sensitivity=sens,
                            latency=CalibratedModel(ROOF, device_id="d"), budget=Budget())
    from devicefit.compressor.search.probes import probe_plans

    plans = probe_plans(problem)
    assert {k: v for k, v in plans["int8_static"].items() if v != "float"} == {"c0": "int8_static", "f0": "int8_static"}
    # every layer has its own shape here: the other half gets a probe of its own
    second = plans["int8_static (2nd half)"]
    assert {k: v for k, v in second.items() if v != "float"} == {"c1": "int8_static", "f1": "int8_static"}
    assert len(plans) == 2


def test_float_layer_the_runtime_runs_as_int8_is_learned_and_then_predicted_as_int8() -> None:
    """l1 stays float in the plan, between two static int8 layers; the device's kernels say it ran int8.
    The measurement is learned as l1 at int8, and later plans with the same sandwich are costed so."""
    specs = [LayerSpec(f"l{i}", "conv", 20_000, 20_000_000, 10_000, 10_000) for i in range(3)]
    specs = [LayerSpec(s.name, s.kind, s.params + i, s.macs, s.in_elems, s.out_elems) for i, s in enumerate(specs)]
    space = build_space(specs, config=SpaceConfig(families={"quant": ("int8_static",)}))
    problem = SearchProblem(specs, total_params=60_003, space=space, sensitivity=SensitivityTable("accuracy", 1.0, 8),
                            latency=CalibratedModel(ROOF, device_id="d"), budget=Budget(), consumers={"l0": ("l1",), "l1": ("l2",)})
    labels = {"l0": "int8_static", "l1": "float", "l2": "int8_static"}
    assert [c.dtype for c in problem.latency_costs(problem.costs(labels))] == ["int8", "fp32", "int8"]
    nm = NodeMap({"q0": "l0", "q1": "l1", "q2": "l2"}, {})
    per = [{"name": f"q{i}", "op_type": "QLinearConv", "mean_ms": 0.1} for i in range(3)]
    problem.learn(problem.predict(labels), Timing(0.35, 0.4, 0.35, 50.0, per_node=per), None, nm, score=False)
    assert problem.latency.quantizes_sandwiched
    assert "l1|int8" in {k for k in problem.latency.layer_ratios} and "l1|fp32" not in problem.latency.layer_ratios
    assert [c.dtype for c in problem.latency_costs(problem.costs(labels))] == ["int8", "int8", "int8"]
    # the file's size is still the plan's: the runtime quantizes the weight at load time
    assert problem.predict(labels).predicted_size_bytes > problem.predict(space.uniform("int8_static")).predicted_size_bytes


def _fp32_ms() -> float:
    return 6 * EFF["fp32"] * ROOF.layer_ms(_problem(Budget()).costs({s.name: "float" for s in SPECS})[0]) + 0.5


def test_uniform_anchors_are_measured_and_never_dominate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each uniform single-scheme plan predicted faster than fp32 is measured even when its predicted latency
    misses the budget (no margin here), so no uniform config beats the result on latency and drop alike."""
    budget = Budget(latency_ms=0.6 * _fp32_ms(), accuracy_drop=0.05)
    loop, out, _dev = _run(tmp_path, budget, monkeypatch, latency_margin=0.0, explore_margin=0.0)
    anchors = [c for c in out.candidates if c.labels in loop.anchors() and c.measured and "anchor" in c.tags]
    predicted_faster = [a for a in loop.anchors() if loop.problem.predict(a).predicted_ms < out.baseline.measured_ms]
    assert predicted_faster and {loop.problem.space.plan(a).fingerprint() for a in predicted_faster} <= {
        loop.problem.space.plan(c.labels).fingerprint() for c in anchors}
    chosen = out.chosen
    for a in anchors:
        assert not (a.measured_ms < chosen.measured_ms * (1 - loop.config.tie) and a.drop < chosen.drop)  # type: ignore[operator]


def test_never_hands_back_a_model_measured_slower_than_fp32(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A device on which every quantized kernel is slower than fp32: whatever passes the other budgets, the
    fp32 model is the answer, and no compressed model is offered as the closest one."""
    for k in ("int8dyn", "int8", "int4w"):
        monkeypatch.setitem(EFF, k, 40.0)  # efficiencies scale the roofline, whose int8 peak is 4x fp32
    # fp32 (6.4 MB) misses the size budget, the quantized files (4 MB) meet it; latency budget 5x fp32
    budget = Budget(latency_ms=5 * _fp32_ms(), size_mb=5.0, accuracy_drop=0.05)
    _loop, out, _dev = _run(tmp_path, budget, monkeypatch, trials=15, max_measurements=3)
    measured = [c for c in out.candidates if c.measured and c.plan_hash != out.baseline.plan_hash]
    assert measured and all(c.measured_ms > out.baseline.measured_ms for c in measured)  # type: ignore[operator]
    assert any(c.passes(budget) for c in measured)  # without the guard one of these would be handed back
    assert out.best is None and out.chosen is out.baseline


def test_a_storage_only_plan_as_fast_as_fp32_wins_a_size_bound_fit() -> None:
    """A GRU's int8 weights run in float (no int8 GRU kernel): the file is 0.4x, the speed fp32's, give or take
    the noise. With fp32 over the size budget, such a candidate measured within the tie of fp32 is the answer;
    one measured clearly slower is still never handed back, and a passing fp32 beats an equally fast one."""
    from devicefit.compressor.search import policy

    def cand(trial: int, ms: float, size: int, drop: float = 0.0) -> Candidate:
        return Candidate(trial, {}, f"h{trial}", ms, size, 10.0, drop, measured_ms=ms, size_bytes=size,
                         measured_memory_mb=10.0, metric={"drop": drop})

    budget, cfg = Budget(latency_ms=5.0, size_mb=0.1), SearchConfig()
    fp32 = cand(-1, 1.00, 189_000)
    same = cand(1, 1.03, 75_000)  # 3% slower: a tie (cfg.tie = 5%)
    slower = cand(2, 1.20, 75_000)
    assert policy.best_passing([fp32, same, slower], budget, cfg, fp32) is same
    assert policy.best_passing([fp32, slower], budget, cfg, fp32) is None
    assert policy.slower_than_fp32(same, fp32, budget) and not policy.slower_than_fp32(same, fp32, budget, cfg.tie)
    roomy = Budget(latency_ms=5.0, size_mb=1.0)  # fp32 passes too: it wins the tie on its lower drop
    assert policy.best_passing([fp32, cand(3, 1.03, 75_000, drop=0.001)], roomy, cfg, fp32) is fp32


def test_a_finishable_anchor_is_measured_whatever_its_quick_drop() -> None:
    """Uniform int8 static predicted at its quick drop (0.4: EfficientNet with minmax calibration) against a
    0.02 budget: still measured when the finish would restore its recovery, and not otherwise."""
    from devicefit.compressor.search import policy

    anchor = {"l0": "int8_static"}
    c = Candidate(0, anchor, "h", 1.0, 1e6, 10.0, 0.4)
    fp32 = Candidate(-1, {"l0": "float"}, "f", 2.0, 4e6, 10.0, 0.0, measured_ms=2.0, metric={"drop": 0.0})
    budget = Budget(latency_ms=1.2, accuracy_drop=0.02)
    assert not policy.is_anchor(c, [anchor], fp32, budget)
    assert policy.is_anchor(c, [anchor], fp32, budget, finishable=True)
    assert not policy.is_anchor(c, [{"l0": "int8_dynamic"}], fp32, budget, finishable=True)  # not an anchor


def test_anchors_measured_when_every_drop_prediction_misses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-layer sensitivities that rule every plan out (they overstate the drop 100x here): the exploit pass
    still measures the uniform plans predicted faster than fp32 — measurements, not predictions, decide."""
    budget = Budget(latency_ms=0.6 * _fp32_ms(), accuracy_drop=0.02)
    orig = _problem

    def pessimistic(b: Budget) -> SearchProblem:
        p = orig(b)
        for layer in p.sensitivity.drops:
            p.sensitivity.drops[layer] = {k: min(1.0, 100 * v) for k, v in p.sensitivity.drops[layer].items()}
        return p

    monkeypatch.setattr(f"{__name__}._problem", pessimistic)
    loop, out, _dev = _run(tmp_path, budget, monkeypatch, trials=20, max_measurements=4)
    measured = [c for c in out.candidates if c.measured and c.plan_hash != out.baseline.plan_hash]
    assert measured and all(c.labels in loop.anchors() for c in measured)
    assert out.best is not None and out.best.passes(budget)  # the true drops are small: a uniform plan passes


def test_exploit_does_not_measure_plans_predicted_slower_than_fp32(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing can pass (latency budget 0.05 × fp32), and the only plans within the drop budget use int8
    dynamic, which this device runs 60x slower than its prior says: once that is measured, the exploit
    pass's "measure anyway" fallback spends no measurement on a plan predicted slower than fp32."""
    monkeypatch.setitem(EFF, "int8dyn", 300.0)
    monkeypatch.setitem(DROP, "int8_static", 0.5)
    monkeypatch.setitem(DROP, "int4_weight_only", 0.5)
    budget = Budget(latency_ms=0.05 * _fp32_ms(), accuracy_drop=0.05)
    _loop, out, _dev = _run(tmp_path, budget, monkeypatch, trials=20, max_measurements=5)
    exploited = [c for c in out.candidates if c.measured and "exploit" in c.tags]
    assert all(c.predicted_ms < out.baseline.measured_ms for c in exploited), [  # type: ignore[operator]
        (c.predicted_ms, c.measured_ms) for c in exploited]
    assert out.chosen is out.baseline


def test_exploit_fallback_checks_the_whole_plans_drop_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-layer sensitivities of 0 (a slice too small to see one layer's damage) while the device's int8
    static and int4 plans lose far more than the budget: with nothing passing (latency budget 0.05 × fp32),
    the measure-anyway fallback asks the joint fake-compress estimate first and measures none of them."""
    monkeypatch.setitem(DROP, "int8_static", 0.2)
    monkeypatch.setitem(DROP, "int4_weight_only", 0.2)
    orig = _problem

    def blind(b: Budget) -> SearchProblem:
        p = orig(b)
        for layer in p.sensitivity.drops:
            p.sensitivity.drops[layer] = {k: 0.0 for k in p.sensitivity.drops[layer]}

        def joint(labels: dict[str, str]) -> float:  # the true plan drop (what fake-compressing it all shows)
            return sum(DROP.get(v, 0.0) * (10 if k == SENSITIVE else 1) for k, v in labels.items())

        p.joint = joint
        return p

    monkeypatch.setattr(f"{__name__}._problem", blind)
    budget = Budget(latency_ms=0.05 * _fp32_ms(), accuracy_drop=0.05)
    _loop, out, _dev = _run(tmp_path, budget, monkeypatch, trials=20, max_measurements=5)
    exploited = [c for c in out.candidates if c.measured and "exploit" in c.tags]
    assert exploited and all(c.drop <= 0.05 for c in exploited), [(c.plan_hash, c.drop) for c in exploited]


class NoisyDevice(FakeDevice):
    """The synthetic device with a deterministic load: every timed block runs 2% slower than the one before
    (a drift the bracketing fp32 blocks cancel exactly), and block number ``spike`` runs 3x slower."""

    def __init__(self, problem: SearchProblem, tmp: Path, spike: int) -> None:
        super().__init__(problem, tmp)
        self.truth: dict[Path, float] = {}
        self.blocks = 0
        self.spike = spike

    def materialize(self, plan: Plan, *, name: str) -> Materialized:
        mat = super().materialize(plan, name=name)
        self.truth[mat.path] = self._timing({s.name: _label(plan, s.name) for s in SPECS}).p50_ms
        return mat

    def block_p50(self, path: Path) -> float:
        self.blocks += 1
        return self.truth[path] * 1.02 ** self.blocks * (3.0 if self.blocks == self.spike else 1.0)


def _noisy_session(problem: SearchProblem, tmp_path: Path, *, spike: int, confirm_rounds: int) -> tuple[FitSession, NoisyDevice]:
    """A session on a :class:`NoisyDevice` whose fp32 baseline is registered at its true latency."""
    dev = NoisyDevice(problem, tmp_path, spike=spike)
    base = problem.predict(problem.float_labels(), trial=-1)
    fp32 = dev.fp32()
    base.measured_ms, base.metric, base.path = dev.truth[fp32.path], fp32.metric, fp32.path
    base.size_bytes, base.measured_memory_mb = 6_400_000, 80.0
    loop = FitSession(problem, dev, config=SearchConfig(trials=1, max_measurements=3, confirm_rounds=confirm_rounds))
    loop.add_baseline(base)
    return loop, dev


def test_choice_is_made_on_paired_remeasurements_not_on_single_noisy_ones(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #17: the fastest passing candidate's single measurement was hit by a load spike (+30%), so on first
    measurements another passing candidate looks fastest. The paired re-measurement with fp32 (5 rounds, one of
    them spiked again) restores the truth: the truly fastest is chosen, its confirmed latency is its true one,
    and the report's confidence says in how many rounds it beat the runner-up."""
    from devicefit.compressor.search.confirm import paired_rounds

    monkeypatch.setattr(measure_mod, "node_map_for", lambda path, layers, reference=None: NodeMap({n: n for n in layers}, {}))
    budget = Budget(latency_ms=0.9 * _fp32_ms(), accuracy_drop=0.2)
    problem = _problem(budget)
    # block 4 = the first round's second candidate block (ref, c1, ref, c2 ...): the truly fastest one's, see below
    loop, dev = _noisy_session(problem, tmp_path, spike=4, confirm_rounds=5)
    cands = [loop.evaluate(problem.predict(problem.space.uniform(q), trial=i)) for i, q in enumerate(DROP)]
    passing = sorted((c for c in cands if c.passes(budget)), key=lambda c: dev.truth[c.path])  # type: ignore[index]
    assert len(passing) >= 2
    fastest, runner_up = passing[0], passing[1]
    truth = {c.plan_hash: dev.truth[c.path] for c in passing}  # type: ignore[index]
    fastest.measured_ms = 1.3 * truth[fastest.plan_hash]  # the spike on its single measurement
    assert fastest.measured_ms > runner_up.measured_ms  # type: ignore[operator]
    assert loop.best_passing() is not fastest  # first measurements pick the wrong one
    # the rounds visit the candidates fastest-measured first: the spiked block 4 is the truly fastest one's
    order = sorted(passing, key=lambda c: c.latency_ms)
    assert order[1] is fastest
    confidence = loop.confirm()
    assert loop.best_passing() is fastest and confidence is not None and confidence["pick"] == fastest.plan_hash
    # the drift cancels exactly; the spiked round is outvoted by the median of 5
    assert fastest.measured_ms == pytest.approx(truth[fastest.plan_hash], rel=1e-9)
    assert runner_up.measured_ms == pytest.approx(truth[runner_up.plan_hash], rel=1e-9)
    assert confidence["rounds"] == 5 and confidence["runner_up"] == runner_up.plan_hash
    assert confidence["faster_than_runner_up_share"] == pytest.approx(4 / 5)
    assert fastest.paired is not None and fastest.paired["first_ms"] == pytest.approx(1.3 * truth[fastest.plan_hash])
    # the rule itself: rotation visits every candidate first once per len(candidates) rounds
    seen: list[str] = []
    paired_rounds(lambda p: seen.append(p.name) or 1.0, Path("ref"), {"a": Path("a"), "b": Path("b")}, rounds=2)
    assert seen == ["ref", "a", "ref", "b", "ref", "ref", "b", "ref", "a", "ref"]


def test_the_finish_recovers_a_plan_that_misses_only_the_accuracy_budget(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #16: the search compresses int8 static the quick way; uniform int8 static then misses the accuracy
    budget (drop 0.06 > 0.02) while meeting the latency one, and nothing passes. The finish compresses that plan
    again with the thorough recovery (drop 0.015): it passes, becomes the result, and its plan is the one its
    file was compressed with (plan.yaml must replay it). A TFLite session has nothing to finish (its quantizer
    ignores those settings)."""
    from devicefit import defaults
    from devicefit.compressor.techniques import Int8Static

    monkeypatch.setattr(measure_mod, "node_map_for", lambda path, layers, reference=None: NodeMap({n: n for n in layers}, {}))
    budget = Budget(latency_ms=0.9 * _fp32_ms(), accuracy_drop=0.02)
    problem = _problem(budget)
    loop, dev = _noisy_session(problem, tmp_path, spike=0, confirm_rounds=3)
    quick = loop.evaluate(problem.predict(problem.space.uniform("int8_static"), trial=0))
    assert quick.drop == pytest.approx(0.06) and quick.shortfall(budget).keys() == {"accuracy_drop"}
    assert loop.best_passing() is None
    n = len(dev.materialized)
    out = loop.choose()
    best = out.best
    assert best is not None and best.finished and not best.distilled and best.passes(budget)
    assert best.drop == pytest.approx(0.015) and best.measured_ms is not None and "finish" in best.tags
    assert len(dev.materialized) == n + 1 and dev.materialized[-1] == loop.plan_of(best)
    assert loop.finished_last is best and best in out.candidates and out.measurements == loop.measurements
    (q,) = {r.quant for r in loop.plan_of(best).rules}
    assert isinstance(q, Int8Static) and (q.calibration, q.rounding, q.bias_correction) == ("mse", "gptq", True)
    assert q.distill_steps == defaults.FINISH_QAD_STEPS
    assert loop.plan_of(quick) == problem.space.plan(quick.labels)  # the search's own candidates: their labels' plan
    # a finish that does not help is still measured and listed; the choice stands
    loop2, _dev2 = _noisy_session(_problem(Budget(latency_ms=0.9 * _fp32_ms(), accuracy_drop=0.001)), tmp_path,
                                  spike=0, confirm_rounds=3)
    miss = loop2.evaluate(loop2.problem.predict(loop2.problem.space.uniform("int8_static"), trial=0))
    out2 = loop2.choose()
    tried = loop2.finished_last
    assert tried is not None and tried.finished and tried.drop == pytest.approx(0.015) and tried in out2.candidates
    assert out2.best is None and out2.measurements == 2 and miss.drop == pytest.approx(0.06)
    # TFLite: the same candidate is returned as it is
    tfl = FitSession(problem, dev, config=SearchConfig(trials=1, space=SpaceConfig(format="tflite")))
    assert tfl.format == "tflite" and tfl.finish(quick) is quick


def test_a_latency_ratio_budget_is_set_from_the_measured_baseline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``Budget(latency_ratio=0.6)``: the limit becomes 0.6 × the fp32 p50 the baseline measured, and the
    search meets it like a budget in milliseconds."""
    budget = Budget(latency_ratio=0.6, accuracy_drop=0.02)
    assert budget.latency_ms is None and budget.resolved(10.0).latency_ms == pytest.approx(6.0)
    assert Budget(latency_ms=5.0, latency_ratio=0.6).resolved(10.0).latency_ms == pytest.approx(5.0)  # the stricter
    with pytest.raises(UserInputError, match="latency_ratio"):
        Budget(latency_ratio=0.0)
    loop, out, _dev = _run(tmp_path, budget, monkeypatch)
    assert out.baseline.measured_ms is not None
    assert loop.budget.latency_ms == pytest.approx(0.6 * out.baseline.measured_ms, rel=1e-12)
    assert loop.budget.latency_ratio == 0.6 and Budget.from_dict(loop.budget.to_dict()) == loop.budget
    assert out.best is not None and out.best.passes(loop.budget)
    assert out.best.measured_ms is not None and out.best.measured_ms <= 0.6 * out.baseline.measured_ms


def test_a_close_call_on_latency_is_decided_by_paired_rounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one candidate whose drop passes was measured once during a load spike, 9.5% over the latency budget
    that its true speed meets: the confirm phase re-measures it paired with fp32 (a close call contends, even
    alone), and it passes at its true latency. A candidate over the drop budget is never re-measured."""
    monkeypatch.setattr(measure_mod, "node_map_for", lambda path, layers, reference=None: NodeMap({n: n for n in layers}, {}))
    problem = _problem(Budget())
    loop, dev = _noisy_session(problem, tmp_path, spike=0, confirm_rounds=3)
    dyn, static = (loop.evaluate(problem.predict(problem.space.uniform(q), trial=i))
                   for i, q in enumerate(("int8_dynamic", "int8_static")))
    truth = dev.truth[Path(dyn.path)]  # type: ignore[arg-type]
    problem.budget = Budget(latency_ms=1.05 * truth, accuracy_drop=0.02)  # dynamic drops 0.015, static 0.06
    dyn.measured_ms = 1.15 * truth  # the spike on its single measurement
    assert not dyn.passes(loop.budget) and loop.best_passing() is None
    blocks_before = dev.blocks
    confidence = loop.confirm()
    assert dev.blocks - blocks_before == 3 * 3  # (ref, dyn, ref) × 3 rounds: int8 static was not re-measured
    assert dyn.measured_ms == pytest.approx(truth, rel=1e-9) and dyn.passes(loop.budget)
    assert static.paired is None
    assert confidence is not None and confidence["pick"] == dyn.plan_hash and confidence["runner_up"] is None
    assert loop.best_passing() is dyn


def test_a_budget_out_of_reach_is_said_early_and_stops_the_trials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #17: a latency budget no plan in the space can meet (0.2 × fp32; int8 dynamic, the fastest scheme,
    runs at about 0.46 × fp32 here) is found out of reach before the trials: the seeds are measured (the user
    gets a measured closest candidate), then the trials stop — not after the 300 allowed — and the outcome
    says why, with the fastest plan's ratio to fp32."""
    fp32_ms = _fp32_ms()
    budget = Budget(latency_ms=0.2 * fp32_ms, accuracy_drop=0.05)
    loop, out, _dev = _run(tmp_path, budget, monkeypatch, trials=300, max_measurements=4)
    reach = out.reach
    assert reach is not None and not reach.reachable
    # every trial run was an enqueued seed plan (fp32, the uniform plans, keep-float variants): none sampled
    ran = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'study.db'}").get_trials()
    assert len(ran) == out.trials == reach.stopped_after and 4 <= out.trials < 10
    assert all("fixed_params" in t.system_attrs for t in ran)
    # the bound is the fastest plan of the space: the uniform plan the device runs fastest (int8 dynamic here)
    truths = {q: _dev.measure_labels(loop.problem.space.uniform(q)) for q in DROP}
    assert reach.labels == loop.problem.space.uniform(min(truths, key=lambda q: truths[q]))
    truth = min(truths.values())
    assert reach.bound_ms == pytest.approx(truth, rel=0.05)
    assert reach.bound_ratio == pytest.approx(truth / fp32_ms, rel=0.05) and 0.4 < reach.bound_ratio < 0.7
    assert reach.budget_ratio == pytest.approx(0.2)
    # no plan the search saw is predicted faster than the bound (with the final calibration)
    assert min(loop.problem.predict(c.labels).predicted_ms for c in out.candidates) >= reach.bound_ms * (1 - 1e-9)
    # the closest candidate is a measured one, and the outcome tells the user why the budget was missed
    assert out.best is None and out.closest is not None and out.closest.measured and out.closest is not out.baseline
    (warning,) = out.warnings()
    assert warning.startswith("latency budget out of reach") and f"{reach.bound_ratio:.2f} × fp32" in warning
    assert f"stopped after {out.trials} trials" in warning
    assert reach.to_dict()["stopped_after_trials"] == out.trials


def test_a_budget_within_reach_runs_every_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reachable budget (0.6 × fp32) is never cut short: all the trials run and nothing is said."""
    budget = Budget(latency_ms=0.6 * _fp32_ms(), accuracy_drop=0.05)
    _loop, out, _dev = _run(tmp_path, budget, monkeypatch, trials=30)
    assert out.reach is not None and out.reach.reachable and out.reach.stopped_after is None
    assert out.trials == 30 and out.warnings() == [] and out.best is not None


def test_a_measured_plan_faster_than_predicted_keeps_the_budget_within_reach(tmp_path: Path) -> None:
    """Predictions can be wrong: the bound is the fastest plan predicted *or measured*, and the margin is the
    wide exploration one while the bound's dtypes were never measured on the device."""
    from devicefit.compressor.search.reach import assess

    budget = Budget(latency_ms=0.2 * _fp32_ms())
    problem = _problem(budget)
    cfg = SearchConfig()
    anchors = [problem.space.uniform(q) for q in DROP]
    prior = assess(problem, budget, cfg, starts=anchors, measured=[], fp32_ms=_fp32_ms())
    assert prior is not None and prior.uncalibrated and prior.margin == cfg.explore_margin
    # calibrate on fp32 and each uniform plan, as the baseline and the probes do
    dev = FakeDevice(problem, tmp_path)
    nm = NodeMap({s.name: s.name for s in SPECS}, {})
    for labels in [problem.float_labels(), *anchors]:
        problem.learn(problem.predict(labels), dev._timing(labels), None, nm, score=False)
    before = assess(problem, budget, cfg, starts=anchors, measured=[], fp32_ms=_fp32_ms())
    assert before is not None and not before.reachable and before.source == "predicted"
    assert before.margin == cfg.reach_margin and before.uncalibrated == ()
    assert before.bound_ms == pytest.approx(min(dev.measure_labels(a) for a in anchors), rel=1e-6)
    fast = problem.predict(problem.space.uniform("int8_static"))
    fast.measured_ms, fast.metric = 0.19 * _fp32_ms(), {"drop": 0.0}
    after = assess(problem, budget, cfg, starts=anchors, measured=[fast], fp32_ms=_fp32_ms())
    assert after is not None and after.reachable and after.source == "measured" and after.labels == fast.labels
    # a bound within the margin over the budget counts as reachable (prediction error), beyond it does not
    near = Budget(latency_ms=before.bound_ms / (1 + cfg.reach_margin / 2))
    far = Budget(latency_ms=before.bound_ms / (1 + cfg.reach_margin * 2))
    assert assess(problem, near, cfg, starts=anchors, measured=[], fp32_ms=_fp32_ms()).reachable  # type: ignore[union-attr]
    assert not assess(problem, far, cfg, starts=anchors, measured=[], fp32_ms=_fp32_ms()).reachable  # type: ignore[union-attr]
    assert assess(problem, Budget(), cfg, starts=anchors, measured=[], fp32_ms=_fp32_ms()) is None


class LoadedDevice(FakeDevice):
    """Every candidate is read while the machine runs 2.6× slower than when the baseline was measured (the
    load that the evaluator's bracketing fp32 blocks report)."""

    LOAD = 2.6

    def measure(self, path: Path) -> Timing:
        t = super().measure(path)
        per_node = [{**n, "mean_ms": n["mean_ms"] * self.LOAD} for n in t.per_node]
        return Timing(t.p50_ms * self.LOAD, t.p90_ms * self.LOAD, t.mean_ms * self.LOAD, t.peak_rss_mb, per_node=per_node,
                      profiled_e2e_ms=t.p50_ms * self.LOAD, device=t.device, load=self.LOAD, rounds=3, spread=0.01)


def test_candidates_are_compared_at_the_baselines_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A candidate read during a 2.6× load spike (its raw p50 above fp32's) is judged at the baseline's load:
    its latency is the reading ÷ the load, it passes a budget its true speed meets, it is not "slower than
    fp32", and the reading is kept."""
    monkeypatch.setattr(measure_mod, "node_map_for", lambda path, layers, reference=None: NodeMap({n: n for n in layers}, {}))
    fp32_ms = _fp32_ms()
    problem = _problem(Budget(latency_ms=0.9 * fp32_ms, accuracy_drop=0.02))
    dev = LoadedDevice(problem, tmp_path)
    base = problem.predict(problem.float_labels(), trial=-1)
    base.measured_ms, base.metric, base.path = fp32_ms, dev.fp32().metric, tmp_path / "fp32.onnx"
    base.size_bytes, base.measured_memory_mb = 6_400_000, 80.0
    loop = FitSession(problem, dev, config=SearchConfig(trials=1, max_measurements=3, confirm_rounds=0))
    loop.add_baseline(base)
    labels = problem.space.uniform("int8_dynamic")
    truth = FakeDevice._timing(dev, labels).p50_ms
    cand = loop.evaluate(problem.predict(labels, trial=0))
    assert cand.raw_ms == pytest.approx(2.6 * truth) and cand.raw_ms > fp32_ms  # as read: slower than fp32
    assert cand.measured_ms == pytest.approx(truth, rel=1e-12) and cand.load == 2.6
    assert cand.passes(loop.budget) and loop.best_passing() is cand
    assert loop.problem.prediction_errors()[-1]["load"] == 2.6
    out = loop.outcome()
    assert out.best is cand and out.chosen is not out.baseline


def test_worker_seeds_differ_per_worker_and_are_stable() -> None:
    from devicefit.compressor.search.studydb import worker_seed

    seeds = {worker_seed(0, f"host:{pid}") for pid in range(100, 200)}
    assert len(seeds) == 100  # no two workers propose the same start-up trials
    assert worker_seed(0, "host:1") == worker_seed(0, "host:1") != worker_seed(1, "host:1")
    assert all(0 <= s < 2**31 for s in seeds)


class SlowBoard(FakeDevice):
    """A second board of the same kind running everything ``factor`` times slower (e.g. a throttled unit)."""

    device_id = "slow-board"
    factor = 2.0

    def _timing(self, labels: dict[str, str]) -> Timing:
        t = super()._timing(labels)
        return Timing(t.p50_ms * self.factor, t.p90_ms * self.factor, t.mean_ms * self.factor, t.peak_rss_mb,
                      per_node=[{**p, "mean_ms": p["mean_ms"] * self.factor} for p in t.per_node],
                      profiled_e2e_ms=t.p50_ms * self.factor, device=self.device_id)


def test_a_workers_measurements_are_shared_at_the_fits_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker on a board 2x slower shares what it measured — in trials and in its exploit phase, after its trials
    finished — and the fit reads each latency through that board's own fp32 ratio: at the fit's board's scale."""
    from devicefit.compressor.search.worker import join_study

    monkeypatch.setattr(measure_mod, "node_map_for", lambda path, layers, reference=None: NodeMap({n: n for n in layers}, {}))
    study = open_study(f"sqlite:///{tmp_path / 's.db'}", "pool", seed=0)
    fast_problem, slow_problem = _problem(Budget(latency_ms=1e9)), _problem(Budget(latency_ms=1e9))
    (tmp_path / "slow").mkdir()
    slow = SlowBoard(slow_problem, tmp_path / "slow")
    worker = FitSession(slow_problem, slow, config=SearchConfig(trials=6, max_measurements=4))
    slow_base = _add_baseline(worker, slow)
    join_study(worker, study, worker_id="w1")
    measured = [c for c in worker.measures.measured() if c.trial >= 0]
    assert measured and any("exploit" in c.tags for c in measured)  # some measured after their trial finished

    fast = FakeDevice(fast_problem, tmp_path)
    leader = FitSession(fast_problem, fast, config=SearchConfig(trials=1, max_measurements=1))
    fast_base = _add_baseline(leader, fast)
    assert slow_base.measured_ms == pytest.approx(2 * fast_base.measured_ms)
    shared = {c.plan_hash: c for c in leader.from_study(study) if c.measured}
    assert {c.plan_hash for c in measured} <= set(shared)  # every plan the worker measured reached the fit
    for c in measured:
        got = shared[c.plan_hash]
        assert got.reused and got.device == "slow-board"
        assert got.measured_ms == pytest.approx(c.measured_ms / 2, rel=1e-9)  # the slow board's reading, halved
        assert got.measured_ms == pytest.approx(fast.measure_labels(c.labels), rel=1e-9)  # = this board's latency


class DistillingDevice(NoisyDevice):
    """Distillation after 2:4 pruning wins back 90% of a 2:4 layer's drop (the pattern is trained around)."""

    def materialize(self, plan: Plan, *, name: str) -> Materialized:
        mat = super().materialize(plan, name=name)
        if plan.distill is None:
            return mat
        choices = plan.resolve([s.name for s in SPECS]).values()
        if not all(c.prune is not None for c in choices if c.quant is not None and c.quant.method == "int8_sparse24"):
            return mat
        drop = 0.1 * mat.metric["drop"]  # every 2:4 layer trained around its pattern (all layers are 2:4 here)
        return replace(mat, metric={**mat.metric, "drop": drop, "compressed": 1.0 - drop})


def test_the_finish_distills_2_4_sparse_layers_around_their_pattern(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """2:4 sparse int8 (devicefit's kernel) cut in by magnitude misses the accuracy budget (0.03 > 0.02). The finish
    prunes those layers 2:4 first and distills (the zeros stay zero, so the packing keeps the trained pattern):
    drop 0.003, the result; plan.yaml replays exactly that. Without a distillation config nothing is added."""
    from devicefit.compressor.techniques import SemiStructuredPrune, Sparse24Int8

    monkeypatch.setattr(measure_mod, "node_map_for", lambda path, layers, reference=None: NodeMap({n: n for n in layers}, {}))
    monkeypatch.setitem(EFF, "s24", 1.5)
    monkeypatch.setitem(DROP, "int8_sparse24", 0.008)  # x 0.25: the device's rule for a bias-corrected layer
    budget = Budget(latency_ms=0.9 * _fp32_ms(), accuracy_drop=0.02)
    space = build_space(SPECS, config=SpaceConfig(families={"quant": ("int8_sparse24",)}, kernels=True))
    problem = SearchProblem(SPECS, total_params=1_600_000, space=space, sensitivity=_problem(budget).sensitivity,
                            latency=CalibratedModel(ROOF, device_id="fake-board"), budget=budget)
    problem.sensitivity.drops = {s.name: {"int8_sparse24": 0.002 * (10 if s.name == SENSITIVE else 1)} for s in SPECS}
    problem.sensitivity.devs = {k: dict(v) for k, v in problem.sensitivity.drops.items()}
    dev = DistillingDevice(problem, tmp_path, spike=0)
    base = problem.predict(problem.float_labels(), trial=-1)
    fp32 = dev.fp32()
    base.measured_ms, base.metric, base.path = dev.truth[fp32.path], fp32.metric, fp32.path
    base.size_bytes, base.measured_memory_mb = 6_400_000, 80.0
    loop = FitSession(problem, dev, config=SearchConfig(trials=1, max_measurements=3, confirm_rounds=3))
    loop.add_baseline(base)
    quick = loop.evaluate(problem.predict(problem.space.uniform("int8_sparse24"), trial=0))
    assert quick.drop == pytest.approx(0.03) and quick.shortfall(budget).keys() == {"accuracy_drop"}
    out = loop.choose()
    best = out.best
    assert best is not None and best.distilled and best.finished and best.passes(budget)
    assert best.drop == pytest.approx(0.003)
    plan = loop.plan_of(best)
    assert dev.materialized[-1] == plan and plan.distill == loop.config.distill
    for rule in plan.rules:
        assert isinstance(rule.quant, Sparse24Int8) and rule.prune == SemiStructuredPrune(n=2, m=4)
    # no distillation configured: the finish has nothing to add to a 2:4 plan (the packing prunes by magnitude)
    plain = FitSession(problem, dev, config=SearchConfig(trials=1, distill=None))
    assert plain.finish(quick) is quick
