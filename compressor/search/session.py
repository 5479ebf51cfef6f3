"""The fit engine: one object whose methods are the phases of a fit, in the order they run.

    session = FitSession.open(bundle, profile, evaluator, config, cache_dir=..., store=...)  # analyze, sensitivity
    session.baseline()          # fp32 exported and measured: the load reference and first calibration point
    session.probe()             # each quant scheme measured on half the layers (calibration)
    session.search(study)       # Optuna trials: predicted everywhere, measured where promising
    session.exploit()           # the most promising unmeasured plans, re-predicted, measured
    outcome = session.choose()  # top contenders re-measured paired with fp32 (confirm), the fastest kept (or the
                                # closest miss), then finished: distilled, int8 recovery (finish)

* **Seeds** (``enqueue_trial``): the fp32 model, every uniform single-technique plan (the *anchors*), int8
  dynamic with the most sensitive layers kept float (sensitivity order), structural + int8 uniform plans.
* **Every trial is predicted** (calibrated latency model, size, memory, additive sensitivity drop). A trial
  is *materialized and measured* when :mod:`.policy` says so — its prediction looks feasible (a latency
  margin wider while its dtypes are uncalibrated) or it is an anchor, and it could beat the fastest passing
  candidate so far — up to ``max_measurements``. The latency model is recalibrated after each.
* **Exploit** re-predicts the unmeasured trials with the final model and measures the most promising ones
  with the measurements left; **choose** keeps the fastest passing measured candidate (ties within ``tie``
  → lower drop), or the closest one with its shortfall, and **finishes** it: compressed again with
  distillation when its plan has prune / low-rank parts and with the thorough int8 static recovery where the
  search used quick settings (one more measurement).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna

from devicefit.compressor.latency.store import MeasurementStore
from devicefit.compressor.plan import Plan
from devicefit.compressor.search import policy, trials
from devicefit.compressor.search.candidate import Candidate, Evaluator, plan_hash
from devicefit.compressor.search.config import SearchConfig
from devicefit.compressor.search.confirm import paired_rounds
from devicefit.compressor.search.measure import Measurements, node_map
from devicefit.compressor.search.problem import SearchProblem
from devicefit.compressor.search.progress import NoProgress, PhaseProgress
from devicefit.compressor.search.reach import Reach, assess
from devicefit.compressor.search.setup import ModelFacts, analyze_model, build_problem
from devicefit.errors import UserInputError


@dataclass
class SearchOutcome:
    """What a search found: every candidate, the winner (``best``) or the ``closest`` miss."""

    candidates: list[Candidate]
    baseline: Candidate
    best: Candidate | None
    closest: Candidate | None
    trials: int
    measurements: int
    seconds: float
    errors: list[dict[str, Any]]
    #: how sure the pick is (:meth:`.confirm.Paired.confidence`), when contenders were re-measured
    confidence: dict[str, Any] | None = None
    #: the verdict on the latency budget (:mod:`.reach`), when there is one
    reach: Reach | None = None

    @property
    def chosen(self) -> Candidate:
        return self.best or self.closest or self.baseline

    def warnings(self) -> list[str]:
        """What the user must be told: a latency budget found out of reach (and missed)."""
        if self.reach is not None and not self.reach.reachable and self.best is None:
            return [self.reach.message()]
        return []

    def median_error(self) -> float | None:
        """Median relative prediction error over the candidates measured (None before any)."""
        return statistics.median(e["rel_error"] for e in self.errors) if self.errors else None


class FitSession:
    """One process's part of a fit (the fit itself or a ``search-worker``)."""

    def __init__(self, problem: SearchProblem, evaluator: Evaluator, *, config: SearchConfig,
                 store: MeasurementStore | None = None, profile_id: str = "", progress: PhaseProgress | None = None,
                 worker_id: str = "main", facts: ModelFacts | None = None, latency_path: Path | None = None) -> None:
        self.problem = problem
        self.evaluator = evaluator
        self.config = config
        self.progress: PhaseProgress = progress or NoProgress()
        self.worker_id = worker_id
        self.facts = facts
        self.latency_path = latency_path
        self.measures = Measurements(problem, evaluator, store=store, profile_id=profile_id, reuse=config.reuse,
                                     note=self._note_measure)
        #: trial number -> candidate, for the trials this process ran (and the plans it exploited)
        self.candidates: dict[int, Candidate] = {}
        self._anchors = policy.anchors(problem.space)
        self._baseline: Candidate | None = None
        #: the last verdict on the latency budget (:meth:`assess_reach`) and the measurement count it was made at
        self.reach: Reach | None = None
        self._reach_key: tuple[int, int] = (-1, -1)
        #: the candidate :meth:`finish` measured last (kept or not)
        self.finished_last: Candidate | None = None
        self._start_clock()

    @classmethod
    def open(cls, bundle: Any, profile: Any, evaluator: Evaluator, config: SearchConfig, *, cache_dir: Path,
             store: MeasurementStore | None = None, progress: PhaseProgress | None = None,
             worker_id: str = "main") -> FitSession:
        """Phases *analyze* and *sensitivity*: the per-layer table, the space, the sensitivity table (cached
        under ``cache_dir``) and the latency model persisted for the evaluator's device."""
        progress = progress or NoProgress()
        facts = analyze_model(bundle, config, progress)
        problem, latency_path = build_problem(bundle, profile, facts, config, device_id=evaluator.device_id,
                                              cache_dir=cache_dir, progress=progress)
        return cls(problem, evaluator, config=config, store=store, profile_id=str(getattr(profile, "id", "")),
                   progress=progress, worker_id=worker_id, facts=facts, latency_path=latency_path)

    # ------------------------------------------------------------------------------ the whole fit
    def run(self, study: optuna.Study, *, wait: Callable[[], object] | None = None) -> SearchOutcome:
        """Every phase after :meth:`open`, in order; ``study`` may be shared with ``search-worker`` processes,
        whose measured candidates compete too (``wait``: called after this process's search, to let the
        workers of a device pool finish first)."""
        self.baseline()
        self.probe()
        self.search(study)
        if wait is not None:
            self.progress.start("pool", None, "waiting for the pool's other boards")
            wait()
            self.progress.finish("pool")
        others = self.from_study(study)
        self.exploit(extra=others)
        return self.choose(others=others)

    def join(self, study: optuna.Study, *, worker_id: str) -> int:
        """A ``search-worker``'s part: baseline, probe, then trials and exploit on a study another process
        seeded. Returns the number of trials run here."""
        from devicefit.compressor.search.worker import join_study

        self.baseline()
        self.probe()
        return join_study(self, study, worker_id=worker_id)

    # ------------------------------------------------------------------------------ phases
    def baseline(self) -> Candidate:
        """Phase *baseline*: the fp32 export, measured; its p50 rescales the persisted calibration to today's
        device speed, becomes the first calibration point, the load reference of every later measurement and
        the base of a relative latency budget (:meth:`.Budget.resolved`)."""
        problem, ev = self.problem, self.evaluator
        self.progress.start("baseline", 3, "fp32 export")
        fp32 = ev.fp32()
        self.progress.update("baseline", 1, description="fp32 measure")
        timing = ev.measure(fp32.path)
        if timing.batch_size != ev.batch_size:
            raise UserInputError(f"the benchmark ran at batch {timing.batch_size}, not the batch_size={ev.batch_size} asked",
                                 "update the agent (its BenchmarkRequest must honour batch_size)")
        # the persisted calibration was learned on other days: rescale it to the device's speed now
        problem.latency.anchor_session(problem.latency_costs(problem.costs(problem.float_labels())), timing.p50_ms)
        base = problem.predict(problem.float_labels(), trial=-1)
        base.size_bytes, base.params, base.macs = fp32.size_bytes, fp32.params, fp32.macs  # before learn: its memory is learned
        split = problem.learn(base, timing, None, node_map(fp32.path, problem.space.layers), score=False)
        base.measured_ms, base.p90_ms, base.measured_memory_mb = timing.p50_ms, timing.p90_ms, timing.model_memory_mb or None
        base.metric, base.path, base.device = dict(fp32.metric), fp32.path, timing.device
        base.tags.append("fp32")
        self.add_baseline(base)
        ev.mark_reference(timing.p50_ms)
        self.measures.record(base, Plan(), timing, split, role="baseline")
        self.progress.finish("baseline", f"fp32 p50 {timing.p50_ms:.2f} ms on {timing.device}")
        self._start_clock()  # the search's minutes start now
        return base

    def add_baseline(self, base: Candidate) -> None:
        """Register the measured fp32 baseline (:meth:`baseline` does; tests with a simulated device too); a
        latency budget given relative to fp32 becomes milliseconds here, at the baseline's load."""
        if base.measured_ms is not None:
            self.problem.budget = self.problem.budget.resolved(base.measured_ms)
        self._baseline = base
        self.measures.add(base)

    def probe(self) -> list[Candidate]:
        """Phase *probe*: calibration measurements of each quant scheme in the model (:mod:`.probes`)."""
        from devicefit.compressor.search.probes import run_probes

        if not self.config.probe:
            return []
        self.progress.start("probe", None, "each quant scheme on every other layer, measured (calibration)")
        probes = run_probes(self, note=lambda msg: self.progress.update("probe", len(self.probes), None, msg))
        ok = [p for p in probes if p.measured]
        self.progress.finish("probe", ", ".join(f"{p.tags[-1]} {p.measured_ms:.2f} ms (prior said {p.predicted_ms:.2f})"
                                                for p in ok) or "nothing to calibrate")
        return probes

    def search(self, study: optuna.Study, *, enqueue: bool = True) -> None:
        """Phase *search*: optimize until the trial / minute budget is spent (seeds enqueued first unless
        joining a study another process seeded) — or, once the seeds ran, as soon as the latency budget is out
        of reach (:mod:`.reach`: no plan predicted or measured within it, up to a margin); that is said at
        the start and the outcome carries it (:attr:`SearchOutcome.reach`)."""
        seeds = self.seeds() if enqueue else []
        first = len(self.candidates)
        reach = self.assess_reach()
        if reach is not None and not reach.reachable:
            said = f"{reach.message()} — measuring the {len(seeds)} seed plans, then stopping unless a measurement " \
                   "says otherwise"
            self.progress.note("trials", said)
            self.progress.update("trials", 0, self.config.trials or None, said)

        def stop() -> bool:
            if len(self.candidates) - first < len(seeds):
                return False
            verdict = self.assess_reach()
            return verdict is not None and not verdict.reachable

        def tick(done: int, n: int, number: int) -> None:
            verdict = self.reach
            text = f"trial {number}"
            if verdict is not None and not verdict.reachable and verdict.bound_ratio is not None:
                text += f"; latency budget out of reach (fastest plan {verdict.bound_ratio:.2f} × fp32)"
            self.progress.update("trials", done, n or None, text)

        trials.optimize(study, self.problem.space, self.consider, budget=self.budget, worker_id=self.worker_id,
                        trials=self.config.trials, deadline=self.deadline, seeds=seeds, on_trial=tick, stop=stop)
        reach = self.assess_reach()
        if reach is not None and not reach.reachable:
            self.reach = replace(reach, stopped_after=len(self.candidates) - first)
            self.progress.finish("trials", self.reach.message())

    def assess_reach(self) -> Reach | None:
        """The verdict on the latency budget (:func:`.reach.assess`), computed again only after a new
        measurement; kept in :attr:`reach`. None without a latency budget or before the fp32 baseline."""
        fp32 = self.measures.fp32()
        if self.budget.latency_ms is None or fp32 is None or fp32.measured_ms is None:
            return None
        key = (self.measures.count, len(self.probes))
        if self.reach is None or self._reach_key != key:
            self.reach = assess(self.problem, self.budget, self.config, starts=self._anchors,
                                measured=[*self.measures.measured(), *self.probes], fp32_ms=fp32.measured_ms)
            self._reach_key = key
        return self.reach

    def from_study(self, study: optuna.Study) -> list[Candidate]:
        """The candidates other processes recorded in ``study`` (measured ones carry their numbers)."""
        from devicefit.compressor.search.studydb import candidates_from_study

        fp32 = self.measures.fp32()
        return [c for c in candidates_from_study(study, self.problem, fp32_ms=fp32.measured_ms if fp32 else None)
                if c.trial not in self.candidates]

    def consider(self, labels: dict[str, str], trial: int) -> Candidate:
        """One trial: predict ``labels``; measure them when the policy says they are worth it."""
        cfg = self.config
        cand = self.refined(self.problem.predict(labels, trial=trial))
        reserve = min(2, cfg.max_measurements // 3)
        anchor = policy.is_anchor(cand, self._anchors, self.measures.fp32(), self.budget,
                                  finishable=labels in self._anchors and self.finishable(labels))
        if ((policy.looks_feasible(cand, self.budget, cfg) or anchor) and self.worth_measuring(cand)
                and self.can_measure(reserve)):
            self.measures.evaluate(cand, tag="anchor" if anchor else "search")
        elif cand.plan_hash in self.measures.by_hash:
            self.measures.copy_measured(self.measures.by_hash[cand.plan_hash], cand)
        self.candidates[trial] = cand
        return cand

    def exploit(self, extra: list[Candidate] | None = None) -> None:
        """Phase *exploit*: measure the most promising unmeasured plans (re-predicted with the final model),
        this process's and ``extra`` (other workers')."""
        self.progress.start("exploit", None, "measuring the most promising predictions")
        budget, cfg, fp32 = self.budget, self.config, self.measures.fp32()
        pool: dict[str, Candidate] = {}
        for c in [*self.candidates.values(), *(extra or [])]:
            if c.plan_hash not in self.measures.by_hash and c.plan_hash not in pool:
                pool[c.plan_hash] = c
        while self.can_measure() and pool:
            fresh = {h: self.refined(replace(self.problem.predict(c.labels, trial=c.trial), tags=list(c.tags)))
                     for h, c in pool.items()}
            ok = [c for c in fresh.values() if policy.looks_feasible(c, budget, cfg) and self.worth_measuring(c)]
            if not ok and self.best_passing() is None:
                # nothing predicted feasible and nothing passed: measure the fastest plans whose predicted drop
                # is within budget anyway — predictions can be wrong, measurements are what count — but not
                # one predicted slower than fp32 under a latency budget (the fit never returns one)
                ok = sorted((c for c in fresh.values() if policy.drop_ok(c, budget, cfg)
                             and (budget.latency_ms is None or policy.faster_than_fp32(c, fp32))),
                            key=lambda c: (c.predicted_ms, c.predicted_drop))
                # ... the first whose whole plan, fake-compressed at once, still looks within the drop budget
                # (per-layer drops of 0 on a small slice add up to nothing; 33 layers pruned at once do not)
                ok = next(([c] for c in ok if policy.drop_ok(self.problem.refine_drop(c), budget, cfg)), [])
                if not ok:
                    # ... and then the uniform anchors predicted faster than fp32, whatever their predicted drop
                    ok = [c for c in fresh.values() if c.labels in self._anchors and policy.faster_than_fp32(c, fp32)]
            if not ok:
                break
            pick = min(ok, key=lambda c: (c.predicted_ms, c.predicted_drop))
            pool.pop(pick.plan_hash)
            self.measures.evaluate(pick, tag="exploit")
            self.candidates[pick.trial] = pick
        self.progress.finish("exploit")

    def finish(self, cand: Candidate) -> Candidate:
        """Phase *finish*: ``cand``'s plan compressed again the thorough way and measured — distilled from the fp32
        model when it has prune / low-rank parts (``config.distill``), and with its techniques' quick search
        settings back at their thorough values (:meth:`.Plan.finished`: the int8 static recovery; ONNX only, the
        TFLite quantizer has none; 2:4 sparse int8 layers get 2:4 pruning first, so the distillation trains around
        their pattern). It replaces ``cand`` when :func:`.policy.keep_finished` says it is better."""
        if not cand.measured:
            return cand
        plan = self.problem.space.plan(cand.labels)
        finished = plan.finished(structure=self._distills_structure) if self.format == "onnx" else plan
        distill = self.config.distill if finished.uses("prune") or finished.uses("lowrank") else None
        if finished == plan and distill is None:
            return cand
        final = Plan(finished.rules, distill=distill)
        d = replace(cand, plan_hash=plan_hash(final), tags=[*cand.tags], measured_ms=None, metric=None, path=None)
        d.distilled, d.finished = distill is not None, finished != plan
        d = self.finished_last = self.measures.evaluate(d, tag="finish", plan=final, score=False)
        return d if policy.keep_finished(cand, d, self.budget, self.measures.fp32()) else cand

    def finishable(self, labels: dict[str, str]) -> bool:
        """The plan of ``labels`` has quick search settings :meth:`finish` would restore (its measured drop is
        not the one its finished file will have)."""
        plan = self.problem.space.plan(labels)
        return self.format == "onnx" and plan.finished() != plan

    @property
    def _distills_structure(self) -> bool:
        """The finish may add techniques' :meth:`~.Technique.finish_structure` (it distills them: a torch model and
        a distillation config)."""
        return self.config.distill is not None and not (self.facts is not None and self.facts.graph_only)

    def plan_of(self, cand: Candidate) -> Plan:
        """The plan ``cand``'s file was compressed with (finished and / or distilled where :meth:`finish` made it)."""
        plan = self.problem.space.plan(cand.labels)
        if cand.finished:
            plan = plan.finished(structure=cand.distilled)
        return Plan(plan.rules, distill=self.config.distill) if cand.distilled and self.config.distill else plan

    @property
    def format(self) -> str:
        """The export format every candidate is written in."""
        return self.config.space.format if self.config.space is not None else "onnx"

    def choose(self, others: list[Candidate] | None = None) -> SearchOutcome:
        """Phase *choose*: the fastest passing measured candidate (or the closest miss) among this process's
        and ``others`` (measured by other workers: the winner is measured again here, where its file is
        needed), then finished (:meth:`finish`). The fastest contenders are re-measured first (:meth:`confirm`).
        With nothing passing, the finish goes to the candidate that misses only the accuracy budget, by the
        least (:func:`.policy.accuracy_miss`: the search's quick settings may be all it lacks), else to the
        closest."""
        confidence = self.confirm()
        outcome = self.outcome(others=others)
        chosen = outcome.chosen
        if chosen.path is None and chosen is not self._baseline:  # measured by another worker: materialize it here
            self.progress.start("measure", None, "re-measuring the winner locally")
            self.measures.forget(chosen)
            self.measures.evaluate(chosen, tag="local", score=False)
        target = chosen
        if outcome.best is None:
            target = policy.accuracy_miss(self.measures.measured(), self.budget, self.measures.fp32()) or chosen
        self.progress.start("finish", None, "the chosen plan compressed again the thorough way (distillation, "
                                            "int8 recovery)")
        n = self.measures.count
        final = self.finish(target)
        if self.measures.count == n:
            self.progress.finish("finish", "nothing to finish")
            outcome.confidence = confidence
            return outcome
        tried = self.finished_last
        self.progress.finish("finish", f"drop {target.drop:.4f} -> {tried.drop if tried else float('nan'):.4f}, "
                                       + ("kept" if final is not target else "not better: the search's candidate is kept"))
        before = outcome.best, outcome.closest
        outcome = self.outcome(others=others)  # lists the finished candidate, kept or not: it was measured
        if final is target:  # not better: the choice stands
            outcome.best, outcome.closest = before
        elif final.passes(self.budget):
            outcome.best, outcome.closest = final, None
        elif target is chosen:
            outcome.closest, outcome.best = final, None
        # else: a finished accuracy miss that still misses; the closest is chosen again among everything measured
        outcome.confidence = confidence
        return outcome

    def confirm(self) -> dict[str, Any] | None:
        """Phase *confirm*: the fastest contenders measured here — passing candidates, and those that miss only
        the latency budget by at most ``confirm_within`` (:func:`.policy.contends`); at most ``confirm_top``,
        first measured within ``confirm_within`` of the fastest — re-measured in paired rounds with fp32
        (:mod:`.confirm`); each one's ``measured_ms`` becomes its median ratio to fp32 × the fp32 baseline's
        p50, which the choice then uses. Returns the pick's confidence (None when nothing passes after it)."""
        cfg, budget, fp32 = self.config, self.budget, self.measures.fp32()
        if cfg.confirm_rounds < 1 or fp32 is None or fp32.path is None or fp32.measured_ms is None:
            return None
        contenders = sorted((c for c in self.measures.measured() if c.plan_hash != fp32.plan_hash and c.path is not None
                             and policy.contends(c, budget, cfg.confirm_within)
                             and not policy.slower_than_fp32(c, fp32, budget, cfg.tie)),
                            key=lambda c: c.latency_ms)
        top = [c for c in contenders[: cfg.confirm_top]
               if c.latency_ms <= contenders[0].latency_ms * (1 + cfg.confirm_within)]
        if not top:
            return None
        self.progress.start("confirm", None, f"{len(top)} contending candidates × {cfg.confirm_rounds} rounds paired with fp32")
        paths = {c.plan_hash: Path(c.path) for c in top if c.path is not None}
        paired = paired_rounds(self.evaluator.block_p50, Path(fp32.path), paths, rounds=cfg.confirm_rounds)
        for c in top:
            if not paired.ratios[c.plan_hash]:  # no usable round (a failed block): its first measurement stands
                continue
            ratio = paired.ratio(c.plan_hash)
            c.paired = {"rounds": paired.rounds, "ratio_to_fp32": ratio, "first_ms": c.measured_ms,
                        "block_p50s_ms": paired.blocks[c.plan_hash]}
            c.measured_ms = ratio * fp32.measured_ms
        best = self.best_passing()
        if best is None or best.plan_hash not in paths:
            self.progress.finish("confirm", "no confirmed candidate passes")
            return None
        others = sorted((c for c in top if c is not best), key=lambda c: c.latency_ms)
        confidence = paired.confidence(best.plan_hash, others[0].plan_hash if others else None)
        versus = (f", faster than the runner-up in {confidence['faster_than_runner_up_share']:.0%} of rounds"
                  if "faster_than_runner_up_share" in confidence else "")
        self.progress.finish("confirm", f"pick {best.plan_hash[:8]}: {confidence['ratio_to_fp32']:.3f} × fp32{versus}")
        return {"pick": best.plan_hash, **confidence}

    def outcome(self, baseline: Candidate | None = None, *, others: list[Candidate] | None = None) -> SearchOutcome:
        """Every candidate so far, the best passing one, and the closest one when none passes."""
        base = baseline or self._baseline or self.measures.fp32()
        if base is None:
            raise RuntimeError("no fp32 baseline: run FitSession.baseline() first")
        for c in others or []:
            if c.measured and c.plan_hash not in self.measures.by_hash:
                self.measures.add(c)
        best = self.best_passing()
        closest = None if best is not None else policy.closest(self.measures.measured(), self.budget, self.measures.fp32())
        by_hash = self.measures.by_hash
        cands = sorted({id(c): c for c in [*self.candidates.values(), *by_hash.values()]}.values(), key=lambda c: c.trial)
        return SearchOutcome(cands, base, best, closest, trials=len(self.candidates), measurements=self.measures.count,
                             seconds=time.monotonic() - self.start, errors=self.problem.prediction_errors(),
                             reach=self.reach)

    # ------------------------------------------------------------------------------ helpers
    @property
    def budget(self) -> Any:
        return self.problem.budget

    @property
    def measurements(self) -> int:
        return self.measures.count

    @property
    def by_hash(self) -> dict[str, Candidate]:
        return self.measures.by_hash

    @property
    def probes(self) -> list[Candidate]:
        return self.measures.probes

    def anchors(self) -> list[dict[str, str]]:
        """The uniform single-technique plans (:func:`.policy.anchors`)."""
        return self._anchors

    def best_passing(self) -> Candidate | None:
        return policy.best_passing(self.measures.measured(), self.budget, self.config, self.measures.fp32())

    def worth_measuring(self, c: Candidate) -> bool:
        return not self.measures.known(c) and policy.worth_measuring(c, self.best_passing(), self.config)

    def can_measure(self, reserve: int = 0) -> bool:
        return self.measures.count < self.config.max_measurements - reserve and time.monotonic() < self.deadline

    def refined(self, c: Candidate) -> Candidate:
        """When only the predicted drop rules ``c`` out, predict it again from its whole plan compressed at
        once (:meth:`SearchProblem.refine_drop`): per-layer drops stop adding up on many-layer plans."""
        cfg = self.config
        if self.budget.accuracy_drop is None or policy.drop_ok(c, self.budget, cfg) or self.problem.joint is None:
            return c
        if not policy.looks_feasible_but_drop(c, self.budget, cfg) and c.labels not in self._anchors:
            return c
        return self.problem.refine_drop(c)

    def evaluate(self, cand: Candidate, *, tag: str = "", plan: Plan | None = None, score: bool = True,
                 register: bool = True) -> Candidate:
        """Measure ``cand`` (:meth:`.measure.Measurements.evaluate`)."""
        return self.measures.evaluate(cand, tag=tag, plan=plan, score=score, register=register)

    def _start_clock(self) -> None:
        self.start = time.monotonic()
        self.deadline = self.start + self.config.minutes * 60 if self.config.minutes else math.inf

    def _note_measure(self, msg: str) -> None:
        self.progress.note("measure", msg)
        self.progress.update("measure", self.measures.count, self.config.max_measurements or None, msg)

    def seeds(self) -> list[dict[str, str]]:
        """Starting plans: fp32, every uniform single-technique plan (:meth:`anchors`), sensitivity-ordered
        keep-float, structural + int8."""
        space, sens = self.problem.space, self.problem.sensitivity
        layers = space.layers
        quant_labels = sorted({p for layer in layers for o in space.atomic(layer) if o.quant is not None
                               and o.prune is None and o.lowrank is None for p in o.parts()})
        out = [self.problem.float_labels(), *self._anchors]  # the anchors include each quant scheme uniform
        best_q = min(quant_labels, key=lambda q: self.problem.predict(space.uniform(q)).predicted_ms, default=None)
        for q in dict.fromkeys(x for x in ("int8_dynamic", best_q) if x in quant_labels):
            order = sens.order(q)
            for frac in self.config.keep_float_counts:
                k = max(1, round(frac * len(order)))
                labels = space.uniform(q)
                for layer in order[:k]:
                    labels[layer] = space.labels(layer)[0]
                out.append(labels)
        structural = sorted({o.label for layer in layers for o in space.options[layer] if o.structural and o.quant is not None})
        for lab in structural:
            if best_q is not None and lab.endswith("+" + best_q):
                base = space.uniform(best_q)
                out.append({layer: lab if space.has(layer, lab) else base[layer] for layer in layers})
        unique: dict[str, dict[str, str]] = {}
        for labels in out:
            unique.setdefault(plan_hash(space.plan(labels)), labels)
        return list(unique.values())

    def save_latency(self) -> None:
        """Persist the calibrated latency model for the next session on this device."""
        if self.latency_path is not None:
            self.problem.latency.save(self.latency_path)
