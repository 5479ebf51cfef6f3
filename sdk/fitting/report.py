"""The outputs of a fit: model.onnx (model.tflite for a TFLite fit), plan.yaml, manifest.json, report.json (model, profile, budget, result,
baseline, Pareto candidates, search statistics, per-layer plan and the predicted-vs-measured points) and
report.html."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devicefit import defaults
from devicefit.compressor.plan import Plan
from devicefit.compressor.search.candidate import Candidate, summarize
from devicefit.compressor.search.session import FitSession, SearchOutcome
from devicefit.compressor.search.studydb import front
from devicefit.fitting.config import FitConfig

REPORT_VERSION = 1

#: what every ``memory_mb`` in report.json is (budget, baseline, result, pareto)
MEMORY_DEFINITION = ("the model's own peak memory on the agent: peak RSS over its load and runs minus the agent's "
                     "RSS before the load (onnxruntime's arena included)")


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
        # p50_ms is at the fp32 baseline's load (where the budget was set); the reading and its load
        "raw_p50_ms": c.raw_ms,
        "load": c.load,
        "confirmed_in_paired_rounds": c.paired is not None,
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


def _layers(session: FitSession, chosen: Candidate) -> list[dict[str, Any]]:
    problem = session.problem
    facts = session.facts
    assert facts is not None, "a fit's session is opened from a model (FitSession.open)"
    labels = chosen.labels or problem.float_labels()
    pred = problem.latency.predict(problem.latency_costs(problem.costs(labels))).per_layer
    sens = problem.sensitivity
    out = []
    for s in facts.specs:
        lab = labels.get(s.name, "float")
        opt = problem.space.option(s.name, lab) if problem.space.has(s.name, lab) else None
        out.append({
            "name": s.name, "kind": s.kind, "params": s.params, "macs": s.macs, "choice": lab,
            "prunable": s.name in facts.deps.prunable,
            "predicted_ms": round(pred.get(s.name, 0.0), 5),
            "sensitivity_drop": round(sens.drop(s.name, opt), 6) if opt is not None else None,
        })
    return out


def _families(session: FitSession) -> list[str]:
    """The technique families the search space offers on at least one layer."""
    space = session.problem.space
    used = {t.family for opts in space.options.values() for o in opts for t in (o.prune, o.lowrank, o.quant)
            if t is not None}
    return sorted(used)


def build_report(session: FitSession, config: FitConfig, outcome: SearchOutcome, *, bundle: Any, profile: Any,
                 origin: dict[str, str], seconds: float, study: dict[str, Any] | None = None,
                 warnings: list[str] | None = None) -> dict[str, Any]:
    """report.json of a fit (``study``: the Optuna storage, password redacted, and study name; ``warnings``:
    what the user must know about the result, printed by the CLI's summary; the engine's are added)."""
    facts = session.facts
    assert facts is not None, "a fit's session is opened from a model (FitSession.open)"
    budget = session.problem.budget
    batch = config.batch_size
    chosen: Candidate = outcome.chosen
    base: Candidate = outcome.baseline
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
        "plan_summary": summarize(chosen.labels) if chosen is not base else {"float": len(facts.specs)},
        "distilled": chosen.distilled,
        # compressed again at the end with the thorough settings the search skipped (int8 static recovery)
        "finished": chosen.finished,
        # the passing candidates re-measured in paired rounds with fp32 before the choice (None: fewer than two
        # passed): the pick's median ratio to fp32 and the share of rounds it beat the runner-up in
        "confidence": outcome.confidence,
        "trial": chosen.trial,
        "path": f"model.{config.format}",
        # the file's format and the agent runner every latency here was measured on
        "format": config.format, "runtime": session.evaluator.runtime,
        # the file uses devicefit's own kernel ops (ai.devicefit; the search offers them only to an agent reporting
        # the kernel library): it runs where the library is built (compress --kernels standard: standard ops)
        "kernels": chosen is not base and session.plan_of(chosen).needs_kernels(),
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
    sens = session.problem.sensitivity
    med = outcome.median_error()
    failed = [c for c in outcome.candidates if c.error]
    return {
        "version": REPORT_VERSION,
        "warnings": [*(warnings or []), *outcome.warnings()],
        "model": {"name": bundle.name, "source": bundle.source or config.model,
                  "format": "onnx" if facts.graph_only else "torch", "params": base.params,
                  "macs": base.macs, "size_bytes": base.size_bytes, "hash": facts.model_hash[:16],
                  "metric": bundle.metric, "layers": len(facts.specs)},
        "profile": {"id": profile.id, "name": getattr(profile, "name", profile.id),
                    "peak_gops_fp32": profile.peak_gops_fp32, "peak_gops_int8": profile.peak_gops_int8,
                    "mem_bandwidth_gbs": profile.mem_bandwidth_gbs},
        "budget": {**budget.to_dict(), "origin": origin},
        # every latency in this report (budget, baseline, candidates) is the p50 of one run on this many inputs
        "benchmark": {"batch_size": batch, "runs": config.runs, "warmup": config.warmup, "threads": config.threads,
                      # the measuring rule (the agent's timed_runs): fp32 baseline blocks as `devicefit bench`
                      "min_seconds": defaults.MIN_SECONDS, "block_min_seconds": defaults.BLOCK_MIN_SECONDS,
                      "memory": MEMORY_DEFINITION},
        "result": result,
        "baseline": {"latency": _latency(base, batch), "metric": _metric(base, base), "size_bytes": base.size_bytes,
                     "memory_mb": base.measured_memory_mb},
        "pareto": pareto,
        "search": {
            "trials": outcome.trials, "measurements": outcome.measurements, "minutes": round(seconds / 60.0, 3),
            "search_minutes": round(outcome.seconds / 60.0, 3),
            "device": session.evaluator.device_id, "measured_on": "device" if config.device else "host",
            "prediction_error": {"median": med, "count": len(errors), "points": errors,
                                 "definition": "median |predicted - measured| / measured p50 over the candidates measured "
                                               "in this search, each predicted before it was measured (calibration "
                                               "probes are listed under search.calibration with their own errors)"},
            "failed_candidates": [{"trial": c.trial, "error": c.error} for c in failed],
            "calibration": [
                {"probe": (c.tags or ["probe"])[-1], "predicted_ms": c.predicted_ms, "measured_ms": c.measured_ms,
                 "rel_error": abs(c.predicted_ms - c.measured_ms) / c.measured_ms if c.measured_ms else None,
                 "summary": summarize(c.labels), "error": c.error}
                for c in session.probes
            ],
            "sensitivity": {"samples": sens.samples, "seconds": round(sens.seconds, 2),
                            "cached": sens.cached, "estimated": sens.estimated, "data": facts.sensitivity_data,
                            "method": ("onnxruntime fake-compress of one layer at a time on the fp32 ONNX graph"
                                       if facts.graph_only else "torch fake-compress of one layer at a time")
                                      + " on a small eval slice (ranking only); 'estimated' entries scale one full "
                                        "evaluation per layer and option group by local output error"},
            "study": study,
            # can the latency budget be reached at all: the fastest plan predicted (or measured), and whether the
            # trials stopped early because even that misses the budget
            "reach": outcome.reach.to_dict() if outcome.reach is not None else None,
            # families: the technique families the search could use (an ONNX input: quant only); notes: why
            # kernels: devicefit's kernel techniques were offered (the agent reports the kernel library)
            "space": {"layers": len(session.problem.space.layers), "options": session.problem.space.size(),
                      "families": _families(session), "notes": list(facts.notes),
                      "kernels": bool(session.config.space is not None and session.config.space.kernels)},
            "drop_scale": session.problem.drops.scale,
            # fp32 baseline measured now ÷ predicted by the calibration persisted from earlier sessions (1: none)
            "latency_session_scale": session.problem.latency.session_scale,
        },
        "layers": _layers(session, chosen),
    }


@dataclass
class Written:
    model_path: Path
    plan: Plan
    report: dict[str, Any]


def write_outputs(session: FitSession, config: FitConfig, outcome: SearchOutcome, out_dir: Path, *, bundle: Any,
                  profile: Any, origin: dict[str, str], seconds: float, study: dict[str, Any],
                  warnings: list[str] | None = None) -> Written:
    """Write model.onnx (or model.tflite), plan.yaml, manifest.json, report.json and report.html; persist the latency model."""
    from devicefit.artifact import Artifact
    from devicefit.report_html import render_html

    chosen = outcome.chosen
    plan = session.plan_of(chosen) if chosen is not outcome.baseline else Plan()
    model_path = out_dir / f"model.{config.format}"
    src = chosen.path or outcome.baseline.path
    if src is not None and Path(src).resolve() != model_path.resolve():
        shutil.copyfile(src, model_path)
    plan.save(out_dir / "plan.yaml")
    report = build_report(session, config, outcome, bundle=bundle, profile=profile, origin=origin, seconds=seconds,
                          study=study, warnings=warnings)
    model_id = re.sub(r"[^A-Za-z0-9._+-]+", "-", bundle.name).strip("-.") or "model"
    Artifact.from_file(model_path, model_id=f"{model_id}-fit"[:128], plan=plan, metrics=report["result"]["metric"]).save()
    report["manifest"] = "manifest.json (devicefit.artifact)"
    session.save_latency()
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out_dir / "report.html").write_text(render_html(report), encoding="utf-8")
    return Written(model_path, plan, report)
