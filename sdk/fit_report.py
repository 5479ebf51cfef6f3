"""report.json of a fit: model, profile, budget, result, baseline, Pareto candidates, search statistics,
per-layer plan and the predicted-vs-measured points."""

from __future__ import annotations

from typing import Any

from devicefit.compressor.search.candidate import Candidate, summarize
from devicefit.compressor.search.studydb import front

REPORT_VERSION = 1


def _latency(c: Candidate, batch_size: int = 1) -> dict[str, Any]:
    measured = c.measured_ms is not None
    return {
        "p50_ms": c.measured_ms if measured else c.predicted_ms,
        "p90_ms": c.p90_ms if measured else None,
        "source": "measured" if measured else "predicted",
        "device": c.device or None,
        "batch_size": batch_size,
        "predicted_ms": c.predicted_ms,
        "reused": c.reused,
    }


def _metric(c: Candidate, baseline: Candidate) -> dict[str, Any]:
    m = dict(c.metric or {})
    base = baseline.metric or {}
    m.setdefault("name", base.get("name"))
    if m.get("baseline") is None:
        m["baseline"] = base.get("baseline")
    if m.get("compressed") is None and m.get("baseline") is not None:
        m["compressed"] = m["baseline"] - float(m.get("drop", c.predicted_drop))
    m.setdefault("drop", c.predicted_drop)
    return {k: m.get(k) for k in ("name", "baseline", "compressed", "drop", "data")}


def _layers(ctx: Any, chosen: Candidate) -> list[dict[str, Any]]:
    problem = ctx.problem
    labels = chosen.labels or problem.float_labels()
    pred = problem.latency.predict(problem.latency_costs(problem.costs(labels))).per_layer
    sens = problem.sensitivity
    out = []
    for s in ctx.specs:
        lab = labels.get(s.name, "float")
        opt = problem.space.option(s.name, lab) if problem.space.has(s.name, lab) else None
        out.append({
            "name": s.name, "kind": s.kind, "params": s.params, "macs": s.macs, "choice": lab,
            "prunable": s.name in ctx.deps.prunable,
            "predicted_ms": round(pred.get(s.name, 0.0), 5),
            "sensitivity_drop": round(sens.drop(s.name, opt), 6) if opt is not None else None,
        })
    return out


def build_report(ctx: Any, spec: Any, outcome: Any, *, origin: dict[str, str], seconds: float) -> dict[str, Any]:
    budget = ctx.problem.budget
    batch = int(getattr(spec, "batch_size", 1) or 1)
    chosen: Candidate = outcome.chosen
    base: Candidate = ctx.baseline
    met = outcome.best is not None and chosen is outcome.best and chosen.passes(budget)
    size = chosen.size_bytes if chosen.size_bytes is not None else int(chosen.predicted_size_bytes)
    result = {
        "params": chosen.params, "macs": chosen.macs, "size_bytes": size,
        "compression_ratio": (base.size_bytes or 0) / size if size else None,
        "metric": _metric(chosen, base),
        "latency": _latency(chosen, batch),
        "speedup_vs_fp32": (base.measured_ms / chosen.measured_ms) if chosen.measured_ms and base.measured_ms else None,
        "memory_mb": chosen.measured_memory_mb,
        "budget_met": bool(met),
        "shortfall": {} if met else chosen.shortfall(budget),
        "plan_summary": summarize(chosen.labels) if chosen is not base else {"float": len(ctx.specs)},
        "distilled": chosen.distilled,
        "trial": chosen.trial,
        "path": "model.onnx",
    }
    result["faster_than_fp32"] = bool(chosen.measured_ms is not None and base.measured_ms is not None
                                      and chosen is not base and chosen.measured_ms < base.measured_ms)
    if chosen is base and budget.latency_ms is not None:
        result["note"] = ("no compressed candidate was measured faster than the fp32 model and within the other "
                          "budgets; the fp32 model is returned")
    elif not met and outcome.best is None:
        result["note"] = ("no measured candidate met every budget; this is the closest measured one "
                          "(shortfall = relative excess over each missed budget)")
    unique: dict[str, Candidate] = {}
    for c in sorted(outcome.candidates, key=lambda c: (not c.measured, c.trial)):
        unique.setdefault(c.plan_hash, c)  # one row per distinct plan (its first measured trial)
    cands = list(unique.values())
    measured = [c for c in cands if c.measured and c.error is None]
    on_front = {id(c) for c in front([c for c in cands if c.error is None])}
    listed = {id(c): c for c in [*measured, *(c for c in cands if id(c) in on_front)]}
    pareto = []
    for c in sorted(listed.values(), key=lambda c: (c.latency_ms, c.drop)):
        d = c.to_dict()
        d["on_front"] = id(c) in on_front
        d["passes"] = c.passes(budget)
        d["chosen"] = c.plan_hash == chosen.plan_hash
        pareto.append(d)
    errors = list(outcome.errors)
    med = outcome.median_error()
    failed = [c for c in outcome.candidates if c.error]
    return {
        "version": REPORT_VERSION,
        "model": {"name": ctx.bundle.name, "source": ctx.bundle.source or spec.model, "params": base.params,
                  "macs": base.macs, "size_bytes": base.size_bytes, "hash": ctx.model_hash[:16],
                  "metric": ctx.bundle.metric, "layers": len(ctx.specs)},
        "profile": {"id": ctx.profile.id, "name": getattr(ctx.profile, "name", ctx.profile.id),
                    "peak_gops_fp32": ctx.profile.peak_gops_fp32, "peak_gops_int8": ctx.profile.peak_gops_int8,
                    "mem_bandwidth_gbs": ctx.profile.mem_bandwidth_gbs},
        "budget": {**budget.to_dict(), "origin": origin},
        # every latency in this report (budget, baseline, candidates) is the p50 of one run on this many inputs
        "benchmark": {"batch_size": batch, "runs": spec.runs, "warmup": spec.warmup, "threads": spec.threads},
        "result": result,
        "baseline": {"latency": _latency(base, batch), "metric": _metric(base, base), "size_bytes": base.size_bytes,
                     "memory_mb": base.measured_memory_mb},
        "pareto": pareto,
        "search": {
            "trials": outcome.trials, "measurements": outcome.measurements, "minutes": round(seconds / 60.0, 3),
            "search_minutes": round(outcome.seconds / 60.0, 3),
            "device": ctx.evaluator.device_id, "measured_on": "device" if spec.device else "host",
            "prediction_error": {"median": med, "count": len(errors), "points": errors,
                                 "definition": "median |predicted - measured| / measured p50 over the candidates measured "
                                               "in this search, each predicted before it was measured (calibration "
                                               "probes are listed under search.calibration with their own errors)"},
            "failed_candidates": [{"trial": c.trial, "error": c.error} for c in failed],
            "calibration": [
                {"probe": (c.tags or ["probe"])[-1], "predicted_ms": c.predicted_ms, "measured_ms": c.measured_ms,
                 "rel_error": abs(c.predicted_ms - c.measured_ms) / c.measured_ms if c.measured_ms else None,
                 "summary": summarize(c.labels), "error": c.error}
                for c in ctx.loop.probes
            ],
            "sensitivity": {"samples": ctx.problem.sensitivity.samples, "seconds": round(ctx.problem.sensitivity.seconds, 2),
                            "cached": ctx.problem.sensitivity.cached, "estimated": ctx.problem.sensitivity.estimated,
                            "data": ctx.sensitivity_data,
                            "method": "torch fake-compress of one layer at a time on a small eval slice (ranking "
                                      "only); 'estimated' entries scale one full evaluation per layer and option "
                                      "group by local output error"},
            "study": getattr(outcome, "study", None),
            "space": {"layers": len(ctx.problem.space.layers), "options": ctx.problem.space.size()},
            "drop_scale": ctx.problem.drops.scale,
            # fp32 baseline measured now ÷ predicted by the calibration persisted from earlier sessions (1: none)
            "latency_session_scale": ctx.problem.latency.session_scale,
        },
        "layers": _layers(ctx, chosen),
    }
