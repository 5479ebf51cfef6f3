"""Held-out evaluation of the per-device latency model: how well does it predict plans it has not seen?

    .venv/bin/python bench/latency_model.py [--models digits-cnn minilm-l6 efficientnet-lite0] [--plans 30]
        [--orders 5] [--ks 0 5 10 20] [--device URL] [--batch-size N] [--json out.json] [--save DIR]
    .venv/bin/python bench/latency_model.py --load DIR/digits-cnn.pkl ...   # re-evaluate, measuring nothing

Per model, on one agent (a local agent spawned for the bench, or ``--device``): the fit's own set-up runs with a
fresh cache (no calibration persisted from earlier sessions: the roofline prior only) — the per-layer table, the
search space, the fp32 baseline measured, exactly as ``fit`` does. Then ``--plans`` random plans are drawn from
the fit's search space (the first half quant-only: float / int8 static / int8 dynamic / int4 per layer; the
second half any option, structure included), each compressed, exported and measured with per-node times
(the evaluator's measurement: interleaved with fp32 blocks, every latency at the baseline's load).

For each of ``--orders`` random orders of the measured plans and each k in ``--ks``: a copy of the latency
model as it stood after the baseline learns the first k plans (the same ``SearchProblem.learn`` the search
calls), then predicts every other plan. Printed per model and k: the share of held-out predictions within
±10% of the measured p50, and the median relative error (over all orders), after a table of every plan: its
labels, measured p50 and, per k, the median of what was predicted for it where it was held out. ``--json``: one
object ``{model: {k: {"within_10pct": x, "median_error": y, "n": n}}}`` (k as strings), plus ``_plans`` with
every plan's labels, measured and predicted p50s. ``--repeat N`` measures the first N plans a second time: how
often two measurements of one file agree within ±10% (``_noise`` in the JSON, per model) bounds what any model can
reach on that device.

``--save DIR`` keeps what was measured (DIR/MODEL.pkl: timings, node maps, labels, the problem's static parts;
DIR/MODEL/: the ONNX files; the record is rewritten after every plan, so an interrupted run keeps what it
measured); ``--load DIR/MODEL.pkl`` rebuilds the latency model with the current code from
those measurements and evaluates it again, deterministically, without a device.

The machine may be shared: each plan's latency is read at the load its bracketing fp32 blocks measured, but a
loaded 2-core host still adds noise to what is called "measured"; say so next to the numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import pickle
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
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
                  batch_size: int = 1, keep_files: Path | None = None, repeat: int = 0) -> dict[str, Any]:
    """Set up the fit's problem for ``model`` (fresh cache), measure its baseline and ``n`` random plans.

    Returns a *record* (picklable): the problem's static parts (layer specs, search space, consumers, roofline,
    sensitivity, budget), the fp32 baseline's measurement and node map, and per plan its labels, timing (at the
    baseline's load), node map and measured p50 — everything :func:`replay` needs to rebuild the latency model
    with the current code and predict again, without measuring. ``keep_files``: copy each ONNX file there.
    ``repeat``: the first ``repeat`` plans are measured a second time at the end (``remeasured_ms``): how far
    two measurements of one file disagree is the floor under any prediction error."""
    import shutil

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
    paths: dict[int, Path] = {}
    base: dict[str, Any] = {}
    with measuring_device(device) as dev:
        evaluator = FitEvaluator(bundle, dev, workdir=work / "files", profile=profile, runs=config.runs,
                                 warmup=config.warmup, batch_size=batch_size)
        session = FitSession.open(bundle, profile, evaluator, config.search_config(budget), cache_dir=work / "cache")
        problem = session.problem
        learn = problem.learn

        def record_baseline(cand: Any, timing: Any, mat: Any, node_map: Any, *, score: bool = True) -> dict[str, Any]:
            base.update(labels=dict(cand.labels), timing=timing, node_map=node_map)
            return learn(cand, timing, mat, node_map, score=score)

        def record() -> dict[str, Any]:
            lat = problem.latency
            return {"model": model, "batch_size": batch_size, "specs": problem.specs,
                    "total_params": problem.total_params, "space": problem.space, "sensitivity": problem.sensitivity,
                    "budget": problem.budget, "consumers": problem.consumers, "model_hash": problem.model_hash,
                    "roofline": lat.roofline, "scope": lat.scope, "device_id": lat.device_id, "model_key": lat.model_key,
                    "baseline": base, "rows": rows, "files": str(keep_files) if keep_files is not None else None}

        def save() -> None:
            """The record so far, next to the kept files (a long run interrupted keeps what it measured)."""
            if keep_files is not None:
                with open(keep_files.parent / f"{model}.pkl", "wb") as fh:
                    pickle.dump(record(), fh)

        problem.learn = record_baseline  # type: ignore[method-assign]
        session.baseline()
        problem.learn = learn  # type: ignore[method-assign]
        if keep_files is not None:
            keep_files.mkdir(parents=True, exist_ok=True)
            shutil.copy(evaluator.fp32().path, keep_files / "fp32.onnx")
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
            if keep_files is not None:
                shutil.copy(mat.path, keep_files / f"plan-{i:03d}.onnx")
            at = timing.scaled(timing.load or 1.0)
            rows.append({"index": i, "labels": labels, "timing": at, "node_map": node_map, "measured_ms": at.p50_ms,
                         "load": timing.load, "structured": not all(_quant_only(v) for v in labels.values())})
            paths[i] = mat.path
            save()
            print(f"  {model} plan {i + 1}/{len(plans)}: {at.p50_ms:.3f} ms at the baseline's load "
                  f"(load {timing.load or 1.0:.2f}, {time.monotonic() - t0:.0f} s)  {summary(labels)}", file=sys.stderr)
        for r in rows[:repeat]:
            again = evaluator.measure(paths[r["index"]])
            r["remeasured_ms"] = again.p50_ms / (again.load or 1.0)
            save()
            print(f"  {model} plan {r['index'] + 1} again: {r['remeasured_ms']:.3f} ms (first {r['measured_ms']:.3f})",
                  file=sys.stderr)
    return record()


def replay(rec: Mapping[str, Any]) -> tuple[Any, Any, list[dict[str, Any]]]:
    """(problem, its latency model as it stands after the fp32 baseline, rows) rebuilt from a record of
    :func:`measure_plans` with the current code: a fresh latency model (the roofline prior only, as the bench's
    fresh cache gives) learns the recorded baseline through ``SearchProblem.learn``, as ``FitSession.baseline``
    does. Node maps are rebuilt from the kept ONNX files (``--save``) when they are there, so a change to
    :mod:`devicefit.compressor.latency.nodemap` is evaluated too."""
    from devicefit.compressor.latency.calibrated import CalibratedModel
    from devicefit.compressor.latency.nodemap import node_map_for
    from devicefit.compressor.search.problem import SearchProblem

    latency = CalibratedModel(rec["roofline"], device_id=rec["device_id"], model_key=rec["model_key"], scope=rec["scope"])
    problem = SearchProblem(rec["specs"], total_params=rec["total_params"], space=rec["space"],
                            sensitivity=rec["sensitivity"], latency=latency, budget=rec["budget"],
                            consumers=rec["consumers"], model_hash=rec["model_hash"])
    files = Path(rec["files"]) if rec.get("files") else None
    layers = problem.space.layers

    def remap(row: Mapping[str, Any], name: str) -> dict[str, Any]:
        """``row`` with its node map rebuilt by the current code from its kept file, when there is one."""
        if files is None or not (files / name).is_file():
            return dict(row)
        ref = files / "fp32.onnx"
        return {**row, "node_map": node_map_for(files / name, layers, reference=ref if ref.is_file() else None)}

    b = remap(rec["baseline"], "fp32.onnx")
    problem.learn(problem.predict(b["labels"]), b["timing"], None, b["node_map"], score=False)
    return problem, copy.deepcopy(problem.latency), [remap(r, f"plan-{r['index']:03d}.onnx") for r in rec["rows"]]


def summary(labels: Mapping[str, str]) -> str:
    """A plan's labels in one line: ``layer=label`` for up to 8 layers, else label×count (most common first)."""
    if len(labels) <= 8:
        return " ".join(f"{k}={v}" for k, v in labels.items())
    return " ".join(f"{lab}×{n}" for lab, n in Counter(labels.values()).most_common())


def held_out(problem: Any, after_baseline: Any, rows: list[dict[str, Any]], ks: list[int], orders: int,
             seed: int) -> tuple[dict[str, dict[str, float]], dict[int, dict[str, list[float]]]]:
    """Per k: share of held-out predictions within ±10% and their median relative error, over ``orders``; and
    per plan (its index) and k, what was predicted for it in each order where it was held out."""
    rng = np.random.default_rng(seed)
    errors: dict[int, list[float]] = {k: [] for k in ks}
    preds: dict[int, dict[str, list[float]]] = {r["index"]: {str(k): [] for k in ks} for r in rows}
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
                preds[r["index"]][str(k)].append(pred)
                errors[k].append(abs(pred - r["measured_ms"]) / r["measured_ms"])
    problem.latency = after_baseline
    table = {str(k): {"within_10pct": float(np.mean([e <= 0.10 for e in errs])),
                      "median_error": float(statistics.median(errs)), "n": len(errs)}
             for k, errs in errors.items() if errs}
    return table, preds


def evaluate(rec: Mapping[str, Any], ks: list[int], orders: int, seed: int, *, verbose: bool = True) -> dict[str, Any]:
    """The held-out table of one recorded model (:func:`replay` with the current code), printed with every
    plan's measured and predicted p50; returns ``{"table": ..., "plans": [...]}``."""
    problem, after_baseline, rows = replay(rec)
    table, preds = held_out(problem, after_baseline, rows, ks, orders, seed)
    plans = []
    for r in rows:
        per_k = {k: float(statistics.median(v)) for k, v in preds[r["index"]].items() if v}
        plans.append({"index": r["index"], "labels": r["labels"], "summary": summary(r["labels"]),
                      "measured_ms": r["measured_ms"], "load": r["load"], "structured": r["structured"],
                      "predicted_ms": per_k, "remeasured_ms": r.get("remeasured_ms")})
    if verbose:
        head = "  ".join(f"k={k:>2} pred" for k in ks)
        print(f"{rec['model']} (batch {rec['batch_size']}): {len(rows)} plans; predicted = median over the orders "
              f"where the plan was held out; measured at the baseline's load")
        print(f"  plan  measured ms  {head}  labels")
        for pl in sorted(plans, key=lambda x: -x["measured_ms"]):
            cells = "  ".join(f"{pl['predicted_ms'][str(k)]:10.3f}" if str(k) in pl["predicted_ms"] else " " * 10
                              for k in ks)
            print(f"  {pl['index']:4d}  {pl['measured_ms']:11.3f}  {cells}  {pl['summary']}")
        again = [abs(r["remeasured_ms"] - r["measured_ms"]) / r["measured_ms"] for r in rows if "remeasured_ms" in r]
        if again:
            print(f"  noise floor: {len(again)} plans measured twice, {100 * np.mean([e <= 0.10 for e in again]):.0f}% "
                  f"within ±10% of each other, median disagreement {100 * statistics.median(again):.1f}%")
        for k, v in table.items():
            print(f"  k={k:>2}: {100 * v['within_10pct']:5.1f}% within ±10%, median error {100 * v['median_error']:5.1f}%"
                  f"  ({v['n']} held-out predictions)")
    again = [abs(r["remeasured_ms"] - r["measured_ms"]) / r["measured_ms"] for r in rows if "remeasured_ms" in r]
    noise = {"within_10pct": float(np.mean([e <= 0.10 for e in again])), "median_error": float(statistics.median(again)),
             "n": len(again)} if again else None
    return {"table": table, "plans": plans, "noise": noise}


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
    ap.add_argument("--save", metavar="DIR", default=None,
                    help="keep each model's measurements (DIR/MODEL.pkl) and ONNX files (DIR/MODEL/) for --load")
    ap.add_argument("--repeat", type=int, default=10,
                    help="measure the first N plans twice: the noise floor, printed as 'remeasured' (default 10)")
    ap.add_argument("--load", metavar="PKL", nargs="+", default=None,
                    help="evaluate recorded measurements (of --save) with the current latency model, measuring nothing")
    args = ap.parse_args()
    out: dict[str, Any] = {"_plans": {}, "_noise": {}}
    records: list[dict[str, Any]] = []
    if args.load:
        for f in args.load:
            with open(f, "rb") as fh:
                records.append(pickle.load(fh))
    else:
        with tempfile.TemporaryDirectory(prefix="devicefit-latency-bench-") as tmp:
            for model in args.models:
                t0 = time.monotonic()
                batch = args.batch_size or DEFAULT_BATCH.get(model, 1)
                keep = Path(args.save) / model if args.save else None
                rec = measure_plans(model, args.plans, args.seed, args.device, Path(tmp) / model, batch_size=batch,
                                    keep_files=keep, repeat=args.repeat)
                print(f"{model} (batch {batch}): {len(rec['rows'])} plans measured in {time.monotonic() - t0:.0f} s")
                records.append(rec)
    for rec in records:
        res = evaluate(rec, args.ks, args.orders, args.seed)
        out[rec["model"]] = res["table"]
        out["_plans"][rec["model"]] = res["plans"]
        if res["noise"]:
            out["_noise"][rec["model"]] = res["noise"]
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
