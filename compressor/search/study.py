"""The search loop: an Optuna study over per-layer options, predictions everywhere, measurements where
they matter.

* **Study**: two objectives, both minimized — metric drop and latency — with every budget as an Optuna
  constraint (``Trial.set_constraint``, read by ``TPESampler``; Optuna 5 deprecated ``constraints_func``): latency, size, peak memory, accuracy drop; ≤ 0 = met).
  Storage is any Optuna RDB URL (SQLite file by default); workers join the same study.
* **Seeds** (``enqueue_trial``): the fp32 model, every uniform single-technique plan (the *anchors*), int8
  dynamic with the most sensitive layers kept float (sensitivity order), structural + int8 uniform plans.
* **Every trial is predicted** (calibrated latency model, size, memory, additive sensitivity drop). A
  trial is *materialized and measured* when its prediction looks feasible (latency within a margin that
  is wider while its dtypes are uncalibrated on this device) and it could beat the fastest passing
  candidate so far — up to ``max_measurements``. The latency model is recalibrated after each.
* After the trial/minute budget an **exploit** pass re-predicts the unmeasured trials with the final model
  and measures the most promising ones with the measurements left; the **fastest passing** measured
  candidate wins (ties within ``tie`` → lower drop). With none passing, the closest one is reported with
  its shortfall. Distillation then runs on the winner if its plan has prune / low-rank parts.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import optuna

from devicefit.compressor.latency.nodemap import node_map_for
from devicefit.compressor.latency.store import Measurement, MeasurementStore
from devicefit.compressor.plan import Plan
from devicefit.compressor.search.candidate import Candidate, Evaluator, Timing, plan_hash
from devicefit.compressor.search.problem import SearchProblem
from devicefit.compressor.search.studydb import CONSTRAINTS
from devicefit.compressor.techniques import Distill

log = logging.getLogger("devicefit.search")
Progress = Callable[[str, int, int, str], None]


@dataclass
class LoopConfig:
    trials: int | None = 120
    minutes: float | None = None
    max_measurements: int = 6
    seed: int = 0
    #: predicted latency may exceed the budget by this fraction and still be measured (calibrated dtypes)
    latency_margin: float = 0.08
    #: ... and by this much while a dtype in the plan has never been measured on the device
    explore_margin: float = 0.6
    #: predicted drop may exceed the accuracy budget by this fraction (sensitivity is a rough sum)
    drop_margin: float = 0.25
    #: latencies within this fraction are a tie (then the lower drop wins): about the run-to-run noise
    tie: float = 0.05
    reuse: bool = True
    distill: Distill | None = field(default_factory=lambda: Distill(steps=150))
    keep_float_counts: tuple[float, ...] = (0.05, 0.15)


@dataclass
class SearchOutcome:
    candidates: list[Candidate]
    baseline: Candidate
    best: Candidate | None
    closest: Candidate | None
    trials: int
    measurements: int
    seconds: float
    errors: list[dict[str, Any]]
    study: dict[str, Any] | None = None

    @property
    def chosen(self) -> Candidate:
        return self.best or self.closest or self.baseline

    def median_error(self) -> float | None:
        errs = sorted(e["rel_error"] for e in self.errors)
        if not errs:
            return None
        mid = len(errs) // 2
        return errs[mid] if len(errs) % 2 else (errs[mid - 1] + errs[mid]) / 2


class SearchLoop:
    """One process's part of a search (the fit driver or a ``search-worker``)."""

    def __init__(self, problem: SearchProblem, evaluator: Evaluator, *, config: LoopConfig,
                 store: MeasurementStore | None = None, profile_id: str = "", progress: Progress | None = None,
                 worker_id: str = "main") -> None:
        self.problem = problem
        self.worker_id = worker_id
        self.evaluator = evaluator
        self.config = config
        self.store = store
        self.profile_id = profile_id
        self.progress = progress
        self.candidates: dict[int, Candidate] = {}
        self.by_hash: dict[str, Candidate] = {}
        self.measurements = 0
        self.probes: list[Candidate] = []
        self._anchors: list[dict[str, str]] | None = None
        self.start = time.monotonic()
        self.deadline = self.start + config.minutes * 60 if config.minutes else math.inf

    # ------------------------------------------------------------------------------ helpers
    @property
    def budget(self) -> Any:
        return self.problem.budget

    @property
    def batch_size(self) -> int:
        """Inputs per benchmark run of the evaluator (1 when it does not say)."""
        return int(getattr(self.evaluator, "batch_size", 1) or 1)

    def measured(self) -> list[Candidate]:
        return [c for c in self.by_hash.values() if c.measured and c.error is None]

    def best_passing(self) -> Candidate | None:
        passing = [c for c in self.measured() if c.passes(self.budget) and not self.slower_than_fp32(c)]
        if not passing:
            return None
        fastest = min(c.latency_ms for c in passing)
        ties = [c for c in passing if c.latency_ms <= fastest * (1 + self.config.tie)]
        return min(ties, key=lambda c: (c.drop, c.latency_ms))

    def fp32(self) -> Candidate | None:
        """The measured fp32 baseline (None before it is registered)."""
        return self.by_hash.get(plan_hash(self.problem.space.plan(self.problem.float_labels())))

    def slower_than_fp32(self, c: Candidate) -> bool:
        """``c`` is a compressed candidate measured no faster than the fp32 baseline, where latency is a
        goal (a latency budget is set): the fit never hands such a model back."""
        base = self.fp32()
        if self.budget.latency_ms is None or base is None or c is base or base.measured_ms is None:
            return False
        return c.plan_hash != base.plan_hash and c.measured_ms is not None and c.measured_ms >= base.measured_ms

    def looks_feasible(self, c: Candidate) -> bool:
        b = self.budget
        margin = self.config.explore_margin if c.uncalibrated else self.config.latency_margin
        if b.latency_ms is not None and c.predicted_ms > b.latency_ms * (1 + margin):
            return False
        if b.accuracy_drop is not None and c.predicted_drop > max(b.accuracy_drop * (1 + self.config.drop_margin), 1e-3):
            return False
        if b.size_mb is not None and c.predicted_size_bytes / 1e6 > b.size_mb * 1.05:
            return False
        return not (b.memory_mb is not None and c.predicted_memory_mb > b.memory_mb * 1.1)

    def anchors(self) -> list[dict[str, str]]:
        """The uniform single-technique plans (each quant scheme, each structural option, on every layer
        that offers it): the configs a user would try by hand. The fit measures those that could win, so
        its result is never beaten by one of them on both latency and accuracy."""
        if self._anchors is None:
            space = self.problem.space
            labels = {o.label for layer in space.layers for o in space.atomic(layer) if o.parts()}
            self._anchors = [space.uniform(lab) for lab in sorted(labels)]
        return self._anchors

    def is_anchor(self, c: Candidate) -> bool:
        """``c`` is an anchor (:meth:`anchors`) predicted faster than the measured fp32 baseline, with a
        predicted drop within twice the accuracy budget — measured even if the latency prediction says it
        misses the budget (predictions can be wrong; a uniform config is what the fit must beat)."""
        if c.labels not in self.anchors():
            return False
        if not self._faster_than_fp32(c):
            return False
        b = self.budget.accuracy_drop
        return b is None or c.predicted_drop <= max(2 * b, 1e-3)

    def _faster_than_fp32(self, c: Candidate) -> bool:
        """``c`` is predicted faster than the measured fp32 baseline (true before there is one)."""
        base = self.fp32()
        return base is None or base.measured_ms is None or c.predicted_ms < base.measured_ms

    def refined(self, c: Candidate) -> Candidate:
        """When only the predicted drop rules ``c`` out, predict it again from its whole plan compressed at
        once (:meth:`SearchProblem.refine_drop`): per-layer drops stop adding up on many-layer plans."""
        b = self.budget.accuracy_drop
        if b is None or self._drop_ok(c) or self.problem.joint is None:
            return c
        if not self.looks_feasible(replace(c, predicted_drop=0.0)) and c.labels not in self.anchors():
            return c
        return self.problem.refine_drop(c)

    def _drop_ok(self, c: Candidate) -> bool:
        b = self.budget.accuracy_drop
        return b is None or c.predicted_drop <= max(b * (1 + self.config.drop_margin), 1e-3)

    def worth_measuring(self, c: Candidate) -> bool:
        if c.plan_hash in self.by_hash and (self.by_hash[c.plan_hash].measured or self.by_hash[c.plan_hash].error):
            return False
        best = self.best_passing()
        if best is None:
            return True
        t = self.config.tie
        # optimism under uncertainty: a dtype never measured here may be faster than its prior says
        pred = c.predicted_ms / (1 + self.config.explore_margin) if c.uncalibrated else c.predicted_ms
        return pred < best.latency_ms * (1 - t) or (pred <= best.latency_ms * (1 + t) and c.predicted_drop < best.drop - 0.002)

    def can_measure(self, reserve: int = 0) -> bool:
        return self.measurements < self.config.max_measurements - reserve and time.monotonic() < self.deadline

    def _note(self, phase: str, msg: str) -> None:
        if self.progress is not None:
            self.progress(phase, self.measurements, self.config.max_measurements, msg)

    # ------------------------------------------------------------------------------ measure
    def add_measured(self, cand: Candidate) -> None:
        """Register an already measured candidate (the fp32 baseline)."""
        self.by_hash[cand.plan_hash] = cand

    def evaluate(self, cand: Candidate, *, tag: str = "", plan: Plan | None = None, score: bool = True,
                 register: bool = True) -> Candidate:
        """Materialize ``cand`` (compress + export), measure it, recalibrate, store the measurement.

        ``score=False``: not counted in the prediction error (a re-measurement of a structure already
        measured — distilled weights, a winner found by another worker — or a calibration probe).
        ``register=False``: a calibration probe — not a candidate, not counted against the measurements."""
        known = self.by_hash.get(cand.plan_hash)
        if known is not None and (known.measured or known.error):
            self._copy_measured(known, cand)
            return cand
        if tag:
            cand.tags.append(tag)
        plan = plan or self.problem.space.plan(cand.labels)
        if register:
            self.measurements += 1
        else:
            self.probes.append(cand)
        self._note("measure", f"trial {cand.trial}: predicted {cand.predicted_ms:.2f} ms, drop {cand.predicted_drop:.4f}")
        try:
            mat = self.evaluator.materialize(plan, name=f"trial-{cand.trial:04d}-{cand.plan_hash[:8]}")
            timing = self._reuse(cand) if self.config.reuse and register else None
            cand.reused = timing is not None
            if timing is not None:
                # measured in an earlier session (whose calibration may already hold it): no prediction error
                score = False
                cand.load = timing.load
            else:
                timing = self.evaluator.measure(mat.path)
                cand.load, cand.rounds, cand.spread = timing.load, timing.rounds, timing.spread
                # the prediction with the latest calibration (this measurement not yet learned), for the
                # device load measured by the reference runs interleaved with the candidate's
                cand.predicted_ms = self.problem.predict(cand.labels).predicted_ms * (timing.load or 1.0)
        except Exception as exc:  # a plan a pass cannot apply is a failed candidate, not a failed search
            log.warning("candidate %s failed: %s", cand.plan_hash, exc)
            cand.error = f"{type(exc).__name__}: {exc}"[:500]
            if register:
                self.by_hash[cand.plan_hash] = cand
            return cand
        try:
            node_map = node_map_for(mat.path, self.problem.space.layers, reference=mat.reference)
        except Exception as exc:  # pragma: no cover - mapping is best effort
            log.warning("node mapping failed for %s: %s", mat.path, exc)
            node_map = None
        load = cand.load or 1.0
        n_err = len(self.problem.latency.errors)
        split = self.problem.learn(replace(cand, predicted_ms=cand.predicted_ms / load), timing.scaled(load), mat,
                                   node_map, score=score)
        if len(self.problem.latency.errors) > n_err:  # report the error in device time, with the load it was made for
            self.problem.latency.errors[-1].update(predicted_ms=cand.predicted_ms, measured_ms=timing.p50_ms, load=load)
        cand.measured_ms, cand.p90_ms = timing.p50_ms, timing.p90_ms
        cand.measured_memory_mb = timing.peak_rss_mb
        cand.size_bytes, cand.params, cand.macs = mat.size_bytes, mat.params, mat.macs
        cand.metric, cand.path, cand.reference, cand.device = dict(mat.metric), mat.path, mat.reference, timing.device
        if register:
            self.by_hash[cand.plan_hash] = cand
        if not cand.reused:
            self.record(cand, plan, timing, split, role="candidate" if register else "probe")
        self._note("measure", f"trial {cand.trial}: measured {timing.p50_ms:.2f} ms (predicted {cand.predicted_ms:.2f}), "
                   f"drop {mat.drop:.4f}")
        return cand

    def _reuse(self, cand: Candidate) -> Timing | None:
        """An earlier measurement of the same file contents on the same device / runtime / threads."""
        if self.store is None:
            return None
        versions, threads = self.evaluator.runtime_key()
        row = self.store.find(device_id=self.evaluator.device_id, model_hash=self.problem.model_hash,
                              plan_hash=cand.plan_hash, runtime_versions=versions, threads=threads,
                              batch_size=self.batch_size, ref_ms=self._reference_level())
        if row is None:
            return None
        return Timing(p50_ms=row.p50_ms, p90_ms=row.p90_ms or row.p50_ms, mean_ms=row.mean_ms or row.p50_ms,
                      peak_rss_mb=row.peak_rss_mb or 0.0, per_node=list(row.per_node), profiled_e2e_ms=row.profiled_e2e_ms,
                      threads=row.threads, runtime=dict(row.runtime_versions), source=row.source, device=row.device_id,
                      batch_size=row.batch_size, load=row.load)

    def _reference_level(self) -> float | None:
        """The evaluator's load reference p50 at load 1 (None when it keeps no reference)."""
        level = getattr(self.evaluator, "reference_level", None)
        return float(level) if isinstance(level, (int, float)) and level > 0 else None

    def record(self, cand: Candidate, plan: Plan, timing: Timing, split: dict[str, Any], *, role: str = "candidate") -> None:
        """Add a measurement to the store (no-op without one)."""
        if self.store is None:
            return
        versions, threads = self.evaluator.runtime_key()
        self.store.add(Measurement(
            device_id=self.evaluator.device_id, profile_id=self.profile_id, model_hash=self.problem.model_hash,
            plan_hash=cand.plan_hash, plan=plan.to_dict(), runtime="onnxruntime", runtime_versions=versions,
            threads=threads, batch_size=timing.batch_size, p50_ms=timing.p50_ms, p90_ms=timing.p90_ms, mean_ms=timing.mean_ms,
            peak_rss_mb=timing.peak_rss_mb, per_node=timing.per_node, per_layer=split.get("per_layer") or {},
            other_ms=split.get("other_ms"), profiled_e2e_ms=timing.profiled_e2e_ms,
            predicted_ms=cand.predicted_ms if cand.trial >= 0 else None, size_bytes=cand.size_bytes,
            metric_name=str((cand.metric or {}).get("name")), metric_drop=cand.drop if cand.metric else None,
            source=timing.source, role=role, ref_ms=self._reference_level(), load=timing.load))

    @staticmethod
    def _copy_measured(src: Candidate, dst: Candidate) -> None:
        for f in ("measured_ms", "p90_ms", "measured_memory_mb", "size_bytes", "params", "macs", "metric", "path",
                  "reference", "device", "error", "reused"):
            setattr(dst, f, getattr(src, f))

    # ------------------------------------------------------------------------------ optuna
    def objective(self, trial: optuna.Trial) -> tuple[float, float]:
        space = self.problem.space
        labels = {layer: str(trial.suggest_categorical(layer, space.labels(layer))) for layer in space.layers}
        cand = self.refined(self.problem.predict(labels, trial=trial.number))
        reserve = min(2, self.config.max_measurements // 3)
        anchor = self.is_anchor(cand)
        if (self.looks_feasible(cand) or anchor) and self.worth_measuring(cand) and self.can_measure(reserve):
            self.evaluate(cand, tag="anchor" if anchor else "search")
        elif cand.plan_hash in self.by_hash:
            self._copy_measured(self.by_hash[cand.plan_hash], cand)
        self.candidates[trial.number] = cand
        self._record(trial, cand)
        if time.monotonic() > self.deadline:
            trial.study.stop()
        if cand.error:
            return 1.0, cand.predicted_ms * 10
        return cand.drop, cand.latency_ms

    def _record(self, trial: optuna.Trial, c: Candidate) -> None:
        attrs: dict[str, Any] = {
            "worker": self.worker_id, "plan_hash": c.plan_hash, "predicted_ms": c.predicted_ms, "predicted_drop": c.predicted_drop,
            "predicted_size_bytes": c.predicted_size_bytes, "predicted_memory_mb": c.predicted_memory_mb,
            "uncalibrated": list(c.uncalibrated), "measured_ms": c.measured_ms, "p90_ms": c.p90_ms,
            "memory_mb": c.measured_memory_mb, "size_bytes": c.size_bytes, "metric": c.metric,
            "device": c.device, "error": c.error, "tags": c.tags,
            "constraints": [1.0, 1.0, 1.0, 1.0] if c.error else c.constraints(self.budget),
        }
        trial.set_user_attr("devicefit", attrs)
        for name, value in zip(CONSTRAINTS, attrs["constraints"], strict=True):
            trial.set_constraint(name, float(value))

    def seeds(self) -> list[dict[str, str]]:
        """Starting plans: fp32, every uniform single-technique plan (:meth:`anchors`), sensitivity-ordered
        keep-float, structural + int8."""
        space, sens = self.problem.space, self.problem.sensitivity
        layers = space.layers
        quant_labels = sorted({p for layer in layers for o in space.atomic(layer) if o.quant is not None
                               and o.prune is None and o.lowrank is None for p in o.parts()})
        out = [self.problem.float_labels(), *self.anchors()]  # the anchors include each quant scheme uniform
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

    def run(self, study: optuna.Study, *, enqueue: bool = True) -> None:
        """Optimize until the trial / minute budget is spent."""
        if enqueue:
            for labels in self.seeds():
                study.enqueue_trial(labels, skip_if_exists=True)
        timeout = max(1.0, self.deadline - time.monotonic()) if math.isfinite(self.deadline) else None
        n = self.config.trials
        done = [0]

        def tick(_s: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
            done[0] += 1
            if self.progress is not None:
                self.progress("trials", done[0], n or 0, f"trial {t.number}")

        study.optimize(self.objective, n_trials=n, timeout=timeout, callbacks=[tick], catch=(Exception,))

    # ------------------------------------------------------------------------------ finish
    def exploit(self, extra: list[Candidate] | None = None) -> None:
        """Measure the most promising unmeasured plans (re-predicted with the final model)."""
        pool: dict[str, Candidate] = {}
        for c in [*self.candidates.values(), *(extra or [])]:
            if c.plan_hash not in self.by_hash and c.plan_hash not in pool:
                pool[c.plan_hash] = c
        while self.can_measure() and pool:
            fresh = {h: self.refined(replace(self.problem.predict(c.labels, trial=c.trial), tags=list(c.tags)))
                     for h, c in pool.items()}
            ok = [c for c in fresh.values() if self.looks_feasible(c) and self.worth_measuring(c)]
            if not ok and self.best_passing() is None:
                # nothing predicted feasible and nothing passed: measure the fastest plans whose predicted drop
                # is within budget anyway — predictions can be wrong, measurements are what count — but not
                # one predicted slower than fp32 under a latency budget (the fit never returns one)
                ok = sorted((c for c in fresh.values() if self._drop_ok(c)
                             and (self.budget.latency_ms is None or self._faster_than_fp32(c))),
                            key=lambda c: (c.predicted_ms, c.predicted_drop))
                # ... the first whose whole plan, fake-compressed at once, still looks within the drop budget
                # (per-layer drops of 0 on a small slice add up to nothing; 33 layers pruned at once do not)
                ok = next(([c] for c in ok if self._drop_ok(self.problem.refine_drop(c))), [])
                if not ok:
                    # ... and then the uniform anchors predicted faster than fp32, whatever their predicted drop
                    ok = [c for c in fresh.values() if c.labels in self.anchors() and self._faster_than_fp32(c)]
            if not ok:
                break
            pick = min(ok, key=lambda c: (c.predicted_ms, c.predicted_drop))
            pool.pop(pick.plan_hash)
            self.evaluate(pick, tag="exploit")
            self.candidates[pick.trial] = pick

    def distill_winner(self, cand: Candidate) -> Candidate:
        """Run distillation on ``cand``'s plan when it has prune / low-rank parts; keep it if it helps."""
        cfg = self.config.distill
        plan = self.problem.space.plan(cand.labels)
        if cfg is None or not (plan.uses("prune") or plan.uses("lowrank")) or not cand.measured:
            return cand
        plan = Plan(plan.rules, distill=cfg)
        d = replace(cand, plan_hash=plan_hash(plan), tags=[*cand.tags], measured_ms=None, metric=None, path=None)
        d.distilled = True
        d = self.evaluate(d, tag="distill", plan=plan, score=False)
        if not d.measured or d.error is not None:
            return cand
        if cand.passes(self.budget):
            return d if d.passes(self.budget) and d.drop < cand.drop else cand
        if self.slower_than_fp32(d):
            return cand
        return d if d.passes(self.budget) or d.drop < cand.drop else cand

    def outcome(self, baseline: Candidate, *, others: list[Candidate] | None = None) -> SearchOutcome:
        for c in others or []:
            if c.measured and c.plan_hash not in self.by_hash:
                self.by_hash[c.plan_hash] = c
        best = self.best_passing()
        closest = None
        if best is None:
            # never a compressed model measured slower than fp32 (the fp32 baseline is among ``tried``)
            tried = [c for c in self.measured() if not self.slower_than_fp32(c)]
            if tried:
                closest = min(tried, key=lambda c: (sum(max(0.0, v) for v in c.constraints(self.budget)), c.latency_ms))
        cands = sorted({id(c): c for c in [*self.candidates.values(), *self.by_hash.values()]}.values(), key=lambda c: c.trial)
        return SearchOutcome(cands, baseline, best, closest, trials=len(self.candidates), measurements=self.measurements,
                             seconds=time.monotonic() - self.start, errors=self.problem.prediction_errors())
