"""Measuring and recording: turn a candidate into a measured one and keep what was measured.

:meth:`Measurements.evaluate` materializes a plan through the :class:`~.candidate.Evaluator`, measures it
(or reuses an earlier session's measurement of the same file on the same device and settings), folds the
result into the prediction models and the measurement store, and indexes it by plan hash.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devicefit.compressor.latency.nodemap import NodeMap, node_map_for
from devicefit.compressor.latency.store import Measurement, MeasurementStore
from devicefit.compressor.plan import Plan
from devicefit.compressor.search.candidate import Candidate, Evaluator, Timing, plan_hash
from devicefit.compressor.search.problem import SearchProblem

log = logging.getLogger("devicefit.search")

#: the fields of a candidate a measurement fills (copied to another trial of the same plan)
MEASURED_FIELDS = ("measured_ms", "raw_ms", "p90_ms", "measured_memory_mb", "size_bytes", "params", "macs", "metric", "path",
                   "reference", "device", "error", "reused")


def node_map(path: Path, layers: list[str], *, reference: Path | None = None) -> NodeMap | None:
    """Which runtime nodes compute which layer, for an ONNX file; None for another format (LiteRT reports no
    per-op times, so a ``.tflite`` candidate teaches the latency model its end-to-end time only)."""
    if Path(path).suffix != ".onnx":
        return None
    return node_map_for(path, layers, reference=reference)


class Measurements:
    """The measured candidates of one process's search, by plan hash; the count against the cap."""

    def __init__(self, problem: SearchProblem, evaluator: Evaluator, *, store: MeasurementStore | None = None,
                 profile_id: str = "", reuse: bool = True, note: Callable[[str], None] | None = None) -> None:
        self.problem = problem
        self.evaluator = evaluator
        self.store = store
        self.profile_id = profile_id
        self.reuse = reuse
        self.note = note
        self.by_hash: dict[str, Candidate] = {}
        #: candidates measured (calibration probes and re-measurements of known plans not counted)
        self.count = 0
        #: calibration probes measured (not candidates)
        self.probes: list[Candidate] = []

    # ------------------------------------------------------------------------------ lookup
    def measured(self) -> list[Candidate]:
        return [c for c in self.by_hash.values() if c.measured and c.error is None]

    def known(self, c: Candidate) -> bool:
        """``c``'s plan was measured (or failed) already."""
        k = self.by_hash.get(c.plan_hash)
        return k is not None and (k.measured or k.error is not None)

    def fp32(self) -> Candidate | None:
        """The measured fp32 baseline (None before it is registered)."""
        return self.by_hash.get(plan_hash(self.problem.space.plan(self.problem.float_labels())))

    def add(self, cand: Candidate) -> None:
        """Register an already measured candidate (the fp32 baseline, a candidate another worker measured)."""
        self.by_hash[cand.plan_hash] = cand

    def forget(self, cand: Candidate) -> None:
        """Drop ``cand``'s measurement (measured by another process: it is measured again here)."""
        cand.measured_ms = None
        cand.metric = None
        self.by_hash.pop(cand.plan_hash, None)

    @staticmethod
    def copy_measured(src: Candidate, dst: Candidate) -> None:
        for f in MEASURED_FIELDS:
            setattr(dst, f, getattr(src, f))

    # ------------------------------------------------------------------------------ measure
    def evaluate(self, cand: Candidate, *, tag: str = "", plan: Plan | None = None, score: bool = True,
                 register: bool = True) -> Candidate:
        """Materialize ``cand`` (compress + export), measure it, recalibrate, store the measurement.

        ``score=False``: not counted in the prediction error (a re-measurement of a structure already
        measured — distilled weights, a winner found by another worker — or a calibration probe).
        ``register=False``: a calibration probe — not a candidate, not counted against the measurements."""
        known = self.by_hash.get(cand.plan_hash)
        if known is not None and (known.measured or known.error):
            self.copy_measured(known, cand)
            return cand
        if tag:
            cand.tags.append(tag)
        plan = plan or self.problem.space.plan(cand.labels)
        if register:
            self.count += 1
        else:
            self.probes.append(cand)
        self._note(f"trial {cand.trial}: predicted {cand.predicted_ms:.2f} ms, drop {cand.predicted_drop:.4f}")
        try:
            mat = self.evaluator.materialize(plan, name=f"trial-{cand.trial:04d}-{cand.plan_hash[:8]}")
            timing = self._reuse(cand) if self.reuse and register else None
            cand.reused = timing is not None
            if timing is not None:
                # measured in an earlier session (whose calibration may already hold it): no prediction error
                score = False
                cand.load = timing.load
            else:
                timing = self.evaluator.measure(mat.path)
                cand.load, cand.rounds, cand.spread = timing.load, timing.rounds, timing.spread
                # the prediction with the latest calibration (this measurement not yet learned)
                cand.predicted_ms = self.problem.predict(cand.labels).predicted_ms
        except Exception as exc:  # a plan a pass cannot apply is a failed candidate, not a failed search
            log.warning("candidate %s failed: %s", cand.plan_hash, exc)
            cand.error = f"{type(exc).__name__}: {exc}"[:500]
            if register:
                self.by_hash[cand.plan_hash] = cand
            return cand
        try:
            nodes = node_map(mat.path, self.problem.space.layers, reference=mat.reference)
        except Exception as exc:  # pragma: no cover - mapping is best effort
            log.warning("node mapping failed for %s: %s", mat.path, exc)
            nodes = None
        load = cand.load or 1.0
        at_baseline = timing.scaled(load)
        n_err = len(self.problem.latency.errors)
        split = self.problem.learn(cand, at_baseline, mat, nodes, score=score)
        if len(self.problem.latency.errors) > n_err:  # with the load the reading was taken at
            self.problem.latency.errors[-1].update(load=load)
        # every latency the engine compares is at the fp32 baseline's load, where the budget was set: the p50 as
        # read ÷ the load its bracketing fp32 blocks measured (the reading itself is kept in raw_ms). A
        # candidate read during a load spike is neither "slower than fp32" nor over budget because of it.
        cand.raw_ms = timing.p50_ms
        cand.measured_ms, cand.p90_ms = at_baseline.p50_ms, at_baseline.p90_ms
        cand.measured_memory_mb = timing.model_memory_mb or None  # the model's own; 0 = not reported
        cand.size_bytes, cand.params, cand.macs = mat.size_bytes, mat.params, mat.macs
        cand.metric, cand.path, cand.reference, cand.device = dict(mat.metric), mat.path, mat.reference, timing.device
        if register:
            self.by_hash[cand.plan_hash] = cand
        if not cand.reused:
            self.record(cand, plan, timing, split, role="candidate" if register else "probe")
        self._note(f"trial {cand.trial}: measured {cand.measured_ms:.2f} ms at the baseline's load (read {timing.p50_ms:.2f} "
                   f"at load {load:.2f}; predicted {cand.predicted_ms:.2f}), drop {mat.drop:.4f}")
        return cand

    def _note(self, msg: str) -> None:
        if self.note is not None:
            self.note(msg)

    def _reuse(self, cand: Candidate) -> Timing | None:
        """An earlier measurement of the same file contents on the same device / runtime / threads."""
        if self.store is None:
            return None
        versions, threads = self.evaluator.runtime_key()
        row = self.store.find(device_id=self.evaluator.device_id, model_hash=self.problem.model_hash,
                              plan_hash=cand.plan_hash, runtime=self.evaluator.runtime, runtime_versions=versions, threads=threads,
                              batch_size=self.evaluator.batch_size, ref_ms=self._reference_level())
        return None if row is None else Timing.from_measurement(row)

    def _reference_level(self) -> float | None:
        """The evaluator's load reference p50 at load 1 (None when it keeps no reference)."""
        level = self.evaluator.reference_level
        return float(level) if level is not None and level > 0 else None

    def record(self, cand: Candidate, plan: Plan, timing: Timing, split: dict[str, Any], *, role: str = "candidate") -> None:
        """Add a measurement to the store (no-op without one)."""
        if self.store is None:
            return
        versions, threads = self.evaluator.runtime_key()
        self.store.add(Measurement(
            device_id=self.evaluator.device_id, profile_id=self.profile_id, model_hash=self.problem.model_hash,
            plan_hash=cand.plan_hash, plan=plan.to_dict(), runtime=self.evaluator.runtime, runtime_versions=versions,
            threads=threads, batch_size=timing.batch_size, p50_ms=timing.p50_ms, p90_ms=timing.p90_ms, mean_ms=timing.mean_ms,
            peak_rss_mb=timing.peak_rss_mb, model_memory_mb=timing.model_memory_mb or None, per_node=timing.per_node, per_layer=split.get("per_layer") or {},
            other_ms=split.get("other_ms"), profiled_e2e_ms=timing.profiled_e2e_ms,
            predicted_ms=cand.predicted_ms if cand.trial >= 0 else None, size_bytes=cand.size_bytes,
            metric_name=str((cand.metric or {}).get("name")), metric_drop=cand.drop if cand.metric else None,
            source=timing.source, role=role, ref_ms=self._reference_level(), load=timing.load))
