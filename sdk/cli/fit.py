"""CLI: ``devicefit fit MODEL --profile NAME …`` and ``devicefit search-worker --storage URL --study NAME``.

``MODEL`` may be an ``.onnx`` file (``--data`` required): its graph is searched for per-layer quantization only.

``fit`` writes OUTDIR/{model.onnx, manifest.json, plan.yaml, report.json, report.html}; ``--json`` prints
report.json. Exit 3 when no measured candidate meets the budget (the report is still written).
"""

from __future__ import annotations

import argparse
from typing import Any

from devicefit import defaults
from devicefit.cli import emit

_MODEL_HELP = ("zoo:NAME, file.pt2, package.module:factory, or file.onnx (with --data; an ONNX graph is searched "
               "for per-layer quantization only: int8 static / dynamic, int4 weight-only, keep-float — pruning, "
               "low-rank and distillation need the torch model)")


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("fit", parents=[common], help="search the best compressed model meeting a device budget")
    p.add_argument("model", metavar="MODEL", help=_MODEL_HELP)
    p.add_argument("--profile", default="localhost", help="device profile name or .toml file (default: localhost)")
    p.add_argument("--device", metavar="URL", action="append", default=None,
                   help="measure on this agent (grpc://host:port); repeat for a pool of identical boards measured in "
                        "parallel (one search-worker per extra board); default: an agent spawned on this host")
    latency = p.add_mutually_exclusive_group()
    latency.add_argument("--max-latency-ms", type=float, default=None, help="latency budget (p50 ms); default: the profile's")
    latency.add_argument("--max-latency-ratio", type=float, default=None, metavar="R",
                         help="latency budget as a fraction of the fp32 model's p50, measured on the device when the "
                              "fit starts (0.6 = at most 0.6 × fp32); replaces the profile's")
    p.add_argument("--max-size-mb", type=float, default=None, help="model file size budget (MB); default: the profile's")
    p.add_argument("--max-memory-mb", type=float, default=None, help="peak memory budget (MB); default: the profile's")
    p.add_argument("--max-accuracy-drop", type=float, default=None,
                   help="metric drop budget as a fraction (0.01 = 1 point); default: the profile's")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--trials", type=int, default=None, help=f"number of search trials (default {defaults.TRIALS})")
    group.add_argument("--minutes", type=float, default=None, help="search time budget in minutes")
    p.add_argument("--max-measurements", type=int, default=None, help=f"candidates to compress and measure (default {defaults.MAX_MEASUREMENTS})")
    p.add_argument("--batch-size", type=int, default=1,
                   help="inputs per benchmark run; every latency (budget included) is per run at this batch (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads for every benchmark (default: the runner's, = physical cores)")
    p.add_argument("--format", default="onnx", choices=["onnx", "tflite"],
                   help="export format (default onnx); tflite: every candidate is a .tflite measured on the agent's LiteRT "
                        "runner (needs the extra devicefit[tflite] here and ai-edge-litert on the board; techniques "
                        "whose formats list tflite only; LiteRT reports no per-op times)")
    p.add_argument("--storage", metavar="URL", default=None,
                   help="Optuna storage: sqlite:///file.db (default: OUTDIR/study.db), postgresql://…, mysql+pymysql://…")
    p.add_argument("--study", default=None, help="study name (workers join it with search-worker)")
    p.add_argument("--data", metavar="FILE.npz", default=None, help="your data (.npz, one array per input, optional labels)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument("--no-probes", action="store_true",
                   help="skip the calibration probes (each quant scheme measured on half the layers before the search): "
                        "saves a measurement per scheme, at the cost of first predictions from the roofline prior")
    p.add_argument("-o", "--output", metavar="OUTDIR", default="devicefit-out", help="output folder (default devicefit-out)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_fit)

    w = subparsers.add_parser("search-worker", parents=[common], help="join a fit's study and contribute trials")
    w.add_argument("--storage", metavar="URL", required=True, help="the study's Optuna storage URL")
    w.add_argument("--study", required=True, help="the study name (report.json → search.study.name)")
    wg = w.add_mutually_exclusive_group()
    wg.add_argument("--trials", type=int, default=defaults.WORKER_TRIALS,
                    help=f"trials to run (default {defaults.WORKER_TRIALS})")
    wg.add_argument("--minutes", type=float, default=None, help="time to run instead of a trial count")
    w.add_argument("--max-measurements", type=int, default=None, help="candidates this worker may measure")
    w.add_argument("--device", metavar="URL", default=None,
                   help="measure on this agent instead of the study's device (one worker per board; each measures its "
                        "own fp32 baseline, and its candidates are recorded at that baseline's scale)")
    w.add_argument("--work", metavar="DIR", default=None, help="scratch folder (default: a temp folder)")
    w.add_argument("--no-progress", action="store_true", help="no progress bars")
    w.set_defaults(func=_worker)


def _human(d: dict[str, Any]) -> str:
    from devicefit.cli.format import mb, ms, num, pct, points, ratio

    r = d["result"]
    lat = r["latency"]
    budget = d["budget"]
    batch = int((d.get("benchmark") or {}).get("batch_size") or 1)
    threads = (d.get("benchmark") or {}).get("threads") or "default"
    drop_budget = budget.get("accuracy_drop")
    via = f" via {r['runtime']}" if r.get("runtime") not in (None, "onnxruntime") else ""
    lines = [
        f"{d['model']['name']} on {d['profile']['id']}: budget {'MET' if r['budget_met'] else 'NOT met'}",
        f"  latency p50 {ms(lat['p50_ms'])} ({lat['source']} on {lat.get('device')}{via}, batch {batch}, threads {threads}), fp32 "
        f"{ms(d['baseline']['latency']['p50_ms'])}; budget {ms(budget.get('latency_ms'))}"
        + (f" ({budget['latency_ratio']:g} × fp32)" if budget.get("latency_ratio") is not None else ""),
        f"  {r['metric']['name']}: {num(r['metric'].get('baseline'))} → {num(r['metric'].get('compressed'))} "
        f"(drop {points(r['metric']['drop'])}; budget {points(drop_budget) if drop_budget is not None else '–'})",
        f"  size {mb(r['size_bytes'])} ({ratio(r.get('compression_ratio') or 0)} smaller); plan {r['plan_summary']}",
        f"  search: {d['search']['trials']} trials, {d['search']['measurements']} measured, {d['search']['minutes']:.1f} min; "
        f"median prediction error {pct(d['search']['prediction_error']['median'])}",
    ]
    finish = [w for w, on in (("distilled", r.get("distilled")), ("int8 recovery restored", r.get("finished"))) if on]
    if finish:
        lines.append(f"  finished: {', '.join(finish)} (compressed again after the search, measured, kept as better)")
    if r.get("kernels"):
        lines.append("  uses devicefit's own kernels (ai.devicefit ops): the device needs the kernel library, as the one "
                     "measured has")
    families = (d["search"].get("space") or {}).get("families")
    if d["model"].get("format") == "onnx":
        lines.append(f"  ONNX input: searched {', '.join(families or ['quant'])} only (pruning, low-rank and "
                     "distillation need the torch model)")
    if not r["budget_met"]:
        miss = r.get("shortfall") or {}
        lines.append("  shortfall: " + (", ".join(f"{k} {pct(v)} over its budget" for k, v in miss.items()) or "–"))
    lines += [f"  warning: {w}" for w in d.get("warnings") or []]
    return "\n".join(lines)


def _fit(args: argparse.Namespace) -> int:
    from devicefit.fitting import fit

    result = fit(
        args.model, args.data, profile=args.profile, device=args.device[0] if args.device else None,
        pool=tuple(args.device[1:]) if args.device else (), max_latency_ms=args.max_latency_ms,
        max_latency_ratio=args.max_latency_ratio,
        max_size_mb=args.max_size_mb, max_memory_mb=args.max_memory_mb, max_accuracy_drop=args.max_accuracy_drop,
        trials=args.trials, minutes=args.minutes, format=args.format, out=args.output, storage=args.storage,
        progress=not args.no_progress and not args.json, max_measurements=args.max_measurements, seed=args.seed,
        study_name=args.study, batch_size=args.batch_size, threads=args.threads, probe=not args.no_probes,
    )
    emit(args, result.to_dict(), _human)
    result.raise_if_not_met()
    return 0


def _worker(args: argparse.Namespace) -> int:
    from devicefit.fitting import run_worker

    res = run_worker(args.storage, args.study, trials=args.trials, minutes=args.minutes,
                     max_measurements=args.max_measurements, progress=not args.no_progress and not args.json, work=args.work,
                     device=args.device)
    emit(args, res, lambda d: f"worker {d['worker']} ran {d['trials']} trials ({d['measurements']} measured on "
                              f"{d['device']}) on {d['study']}")
    return 0
