"""Held-out evaluation of the per-device latency model: how well does it predict plans it has not seen?

    .venv/bin/python bench/latency_model.py [--models digits-cnn minilm-l6 efficientnet-lite0] [--plans 30]
        [--orders 5] [--ks 0 5 10 20] [--device URL] [--batch-size N] [--json out.json]

Per model, on one agent (a local agent spawned for the bench, or ``--device``): the fit's own set-up runs with a
fresh cache (no calibration persisted from earlier sessions: the roofline prior only) — the per-layer table, the
search space, the fp32 baseline measured, exactly as ``fit`` does. Then ``--plans`` random plans are drawn from
the fit's search space (the first half quant-only: float / int8 static / int8 dynamic / int4 per layer; the
second half any option, structure included), each compressed, exported and measured with per-node times
(the evaluator's measurement: interleaved with fp32 blocks, every latency at the baseline's load).

For each of ``--orders`` random orders of the measured plans and each k in ``--ks``: a copy of the latency
model as it stood after the baseline learns the first k plans (the same ``SearchProblem.learn`` the search
calls), then predicts every other plan. Printed per model and k: the share of held-out predictions within
±10% of the measured p50, and the median relative error (over all orders). ``--json``: one object
``{model: {k: {"within_10pct": x, "median_error": y, "n": n}}}`` (k as strings), plus ``_plans`` with every
plan's measured and k=0 predicted p50.

The machine may be shared: each plan's latency is read at the load its bracketing fp32 blocks measured, but a
loaded 2-core host still adds noise to what is called "measured"; say so next to the numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MODELS = ("digits-cnn", "minilm-l6", "efficientnet-lite0")
#: inputs per benchmark run (as bench/fit_vs_uniform.py): digits-cnn runs in ~0.05 ms at batch 1, onnxruntime's
#: per-run overhead, where plans differ by less than the noise
DEFAULT_BATCH = {"digits-cnn": 32}
QUANT_ONLY = ("float", "int8_static", "int8_dynamic", "int4")


def _quant_only(label: str) -> bool:
    return any(label == q or label.startswith(q) for q in QUANT_ONLY) and "prune" not in label and "lowrank" not in label


def random_plans(space: Any, n: int, rng: np.random.Generator) -> list[dict[str, str]]:
    """``n`` distinct per-layer label maps: the first half quant-only, the rest from every option."""
    plans: list[dict[str, str]] = []
    seen: set[tuple[str, ...]] = set()
    tries = 0
    while len(plans) < n and tries < 100 * n:
        tries += 1
        quant_only = len(plans) < n // 2
        labels = {}
        for layer in space.layers:
            options = [lab for lab in space.labels(layer) if not quant_only or _quant_only(lab)] or ["float"]
            labels[layer] = str(options[int(rng.integers(len(options)))])
        key = tuple(labels[layer] for layer in space.layers)
        if key in seen or set(key) == {"float"}:
            continue
        seen.add(key)
        plans.append(labels)
    return plans


def measure_plans(model: str, n: int, seed: int, device: str | None, work: Path,
                  batch_size: int = 1) -> tuple[Any, Any, list[dict[str, Any]]]:
    """Set up the fit's problem for ``model`` (fresh cache), measure its baseline and ``n`` random plans."""
    from devicefit.compressor.latency.nodemap import node_map_for
    from devicefit.compressor.search.session import FitSession
    from devicefit.fitting.config import FitConfig
    from devicefit.fitting.evaluator import FitEvaluator, measuring_device
    from devicefit.models import load_model

    config = FitConfig(model=f"zoo:{model}", device=device, batch_size=batch_size)
    profile = config.load_profile()
    budget, _ = config.budget(profile)
    bundle = load_model(f"zoo:{model}")
    rows: list[dict[str, Any]] = []
    with measuring_device(device) as dev:
        evaluator = FitEvaluator(bundle, dev, workdir=work / "files", profile=profile, runs=config.runs,
                                 warmup=config.warmup, batch_size=batch_size)
        session = FitSession.open(bundle, profile, evaluator, config.search_config(budget), cache_dir=work / "cache")
        session.baseline()
        problem = session.problem
        after_baseline = copy.deepcopy(problem.latency)
        plans = random_plans(problem.space, n, np.random.default_rng(seed))
        for i, labels in enumerate(plans):
            t0 = time.monotonic()
            try:
                mat = evaluator.materialize(problem.space.plan(labels), name=f"plan-{i:03d}")
                timing = evaluator.measure(mat.path)
                node_map = node_map_for(mat.path, problem.space.layers, reference=mat.reference)
            except Exception as exc:  # a plan a pass cannot apply: reported, not measured
                print(f"  {model} plan {i}: failed ({type(exc).__name__}: {str(exc)[:120]})", file=sys.stderr)
                continue
            at = timing.scaled(timing.load or 1.0)
            rows.append({"labels": labels, "timing": at, "node_map": node_map, "measured_ms": at.p50_ms,
                         "load": timing.load, "structured": not all(_quant_only(v) for v in labels.values())})
            print(f"  {model} plan {i + 1}/{len(plans)}: {at.p50_ms:.3f} ms at the baseline's load "
                  f"(load {timing.load or 1.0:.2f}, {time.monotonic() - t0:.0f} s)", file=sys.stderr)
    return problem, after_baseline, rows


def held_out(problem: Any, after_baseline: Any, rows: list[dict[str, Any]], ks: list[int], orders: int,
             seed: int) -> dict[str, dict[str, float]]:
    """Per k: share of held-out predictions within ±10% and their median relative error, over ``orders``."""
    rng = np.random.default_rng(seed)
    errors: dict[int, list[float]] = {k: [] for k in ks}
    for _ in range(orders):
        order = [rows[int(i)] for i in rng.permutation(len(rows))]
        for k in ks:
            if k >= len(order):
                continue
            problem.latency = copy.deepcopy(after_baseline)
            for r in order[:k]:
                cand = problem.predict(r["labels"])
                problem.learn(cand, r["timing"], None, r["node_map"], score=False)
            for r in order[k:]:
                pred = problem.predict(r["labels"]).predicted_ms
                errors[k].append(abs(pred - r["measured_ms"]) / r["measured_ms"])
    problem.latency = after_baseline
    return {str(k): {"within_10pct": float(np.mean([e <= 0.10 for e in errs])),
                     "median_error": float(statistics.median(errs)), "n": len(errs)}
            for k, errs in errors.items() if errs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--plans", type=int, default=30, help="random plans measured per model (default 30)")
    ap.add_argument("--orders", type=int, default=5, help="random orders of the measured plans (default 5)")
    ap.add_argument("--ks", type=int, nargs="+", default=[0, 5, 10, 20], help="calibration sizes (default 0 5 10 20)")
    ap.add_argument("--device", default=None, help="agent URL (default: a local agent spawned for the bench)")
    ap.add_argument("--batch-size", type=int, default=None, help="inputs per run (default: digits-cnn 32, others 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="FILE", default=None, help="write the table as JSON")
    args = ap.parse_args()
    out: dict[str, Any] = {"_plans": {}}
    with tempfile.TemporaryDirectory(prefix="devicefit-latency-bench-") as tmp:
        for model in args.models:
            t0 = time.monotonic()
            batch = args.batch_size or DEFAULT_BATCH.get(model, 1)
            problem, after_baseline, rows = measure_plans(model, args.plans, args.seed, args.device, Path(tmp) / model,
                                                          batch_size=batch)
            out[model] = held_out(problem, after_baseline, rows, args.ks, args.orders, args.seed)
            problem.latency = after_baseline
            out["_plans"][model] = [{"measured_ms": r["measured_ms"], "load": r["load"], "structured": r["structured"],
                                     "predicted_k0_ms": problem.predict(r["labels"]).predicted_ms} for r in rows]
            print(f"{model} (batch {batch}): {len(rows)} plans measured in {time.monotonic() - t0:.0f} s")
            for k, v in out[model].items():
                print(f"  k={k:>2}: {100 * v['within_10pct']:5.1f}% within ±10%, median error {100 * v['median_error']:5.1f}%"
                      f"  ({v['n']} held-out predictions)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
