"""``devicefit demo``: the main job end to end on this machine.

Starts a real agent on loopback, measures the fp32 model on it (median of three blocks), fits the model for
the measured ``localhost`` profile with a latency budget of ``--latency-fraction`` × fp32 (the fit's own fp32
baseline, measured on the agent when it starts: ``max_latency_ratio``), deploys
the winner, benchmarks it on the agent alternately with fp32 and prints the report. Every latency is the
p50 of one inference on ``--batch-size`` inputs (default 32 for digits-cnn: at batch 1 its ~0.05 ms are
onnxruntime's per-run overhead, which no compression removes) with ``--threads`` intra-op threads (default
1, fp32 and candidates alike: see :data:`DEFAULT_THREADS`). Everything printed as "measured" was measured by
the agent in this run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from devicefit.cli import emit

#: default ``--batch-size`` per model (others: 1). digits-cnn at batch 1 runs in ~0.05 ms on a 2-core host:
#: onnxruntime's per-run overhead, not the layers, so no compression can halve it. At batch 32 the
#: convolutions dominate and the fit has real work to do.
DEFAULT_BATCH = {"zoo:digits-cnn": 32}
#: default ``--threads``. On a 2-core host shared with other CPU-bound jobs, a 2-thread onnxruntime run
#: stalls whenever one of its threads is descheduled: digits-cnn at batch 32 measured 0.53–1.21 ms
#: (fp32, coefficient of variation 27%) and its int8/fp32 ratio moved 0.38–0.75 over 25 alternating
#: blocks; one thread: 0.83–1.02 ms (cv 5%), ratio 0.32–0.43 (cv 6%). The budget compares like with like.
DEFAULT_THREADS = 1


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("demo", parents=[common], help="fit a zoo model for this machine against a local agent")
    p.add_argument("--model", default="zoo:digits-cnn", help="model to fit (default: zoo:digits-cnn)")
    p.add_argument("--latency-fraction", type=float, default=0.5,
                   help="latency budget as a fraction of the fp32 p50 measured by the agent (default 0.5)")
    p.add_argument("--max-accuracy-drop", type=float, default=0.01, help="metric drop budget (default 0.01)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="inputs per benchmark run (default: 32 for zoo:digits-cnn, else 1; see the module docstring)")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help=f"intra-op threads for every benchmark, fp32 and fit alike (default {DEFAULT_THREADS}; "
                        "0 = the agent's default, = physical cores; see the module docstring)")
    p.add_argument("--trials", type=int, default=40, help="search trials (default 40)")
    p.add_argument("-o", "--out", default="devicefit-demo", help="output folder (default ./devicefit-demo)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    import devicefit
    from devicefit.agent.launch import spawn_agent
    from devicefit.compressor.analysis import analyze
    from devicefit.compressor.export import export_bundle
    from devicefit.errors import UserInputError

    if not 0 < args.latency_fraction <= 1:
        raise UserInputError(f"--latency-fraction={args.latency_fraction} is out of range", "give a number in (0, 1]")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserInputError(f"--batch-size={args.batch_size} is not positive", "give a batch size >= 1")
    bs = int(args.batch_size or DEFAULT_BATCH.get(args.model, 1))
    if args.threads < 0:
        raise UserInputError(f"--threads={args.threads} is negative", "give 1 or more, or 0 for the agent's default")
    threads = int(args.threads) or None
    console = Console(stderr=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    bundle = devicefit.load_model(args.model)
    module = bundle.require_module("demo")
    facts = analyze(module, bundle.example_inputs)
    console.print(f"[bold]1. model[/] {bundle.name}: {facts.params:,} params, {facts.macs:,} MACs, "
                  f"{len(facts.layers)} layers")
    with tempfile.TemporaryDirectory(prefix="devicefit-demo-agent-") as store, \
            spawn_agent(Path(store) / "store", device_id="demo-localhost") as agent:
        console.print(f"[bold]2. agent[/] started on {agent.url} (pid {agent.pid})")
        fp32 = export_bundle(bundle, out / "fp32.onnx")
        model_id = bundle.name.removeprefix("zoo:")
        dev = devicefit.connect(agent.url)
        dev.deploy(fp32.path, progress=False, model_id=f"{model_id}-fp32")
        # three blocks, their median: one block can land on a spike of the machine's load
        base = sorted((dev.benchmark(None, runs=40, warmup=5, batch_size=bs, threads=threads) for _ in range(3)),
                      key=lambda r: r.p50_ms)[1]
        console.print(f"[bold]3. fp32 on the agent[/]: p50 {base.p50_ms:.3f} ms per batch of {bs}, {_threads(threads)} "
                      f"(measured) → latency budget {args.latency_fraction:g} × fp32 (the fit measures fp32 again "
                      "when it starts and sets the budget from that)")
        console.print(f"[bold]4. fit[/] searching, measuring candidates on the agent at batch {bs}, {_threads(threads)} …")
        result = devicefit.fit(bundle, profile="localhost", device=agent.url, max_latency_ratio=args.latency_fraction,
                               max_accuracy_drop=args.max_accuracy_drop, trials=args.trials, out=out, batch_size=bs,
                               threads=threads)
        # the agent keys stored models by content (the fit re-deployed the same fp32 bytes under another id):
        # refer to both files by sha256
        fp32_sha = dev.deploy(fp32.path, progress=False, model_id=f"{model_id}-fp32", activate=False).sha256
        deployed = dev.deploy(result.model_path, progress=False, model_id=f"{model_id}-fit")  # and activated
        console.print("[bold]5. deployed[/] the winner; re-measuring it and fp32 on the agent, alternating …")
        # alternate the two so a change of load on the machine hits both alike
        fit_p50s, fp32_p50s = [], []
        for _ in range(3):
            fit_p50s.append(dev.benchmark(deployed.sha256, runs=40, warmup=5, batch_size=bs, threads=threads).p50_ms)
            fp32_p50s.append(dev.benchmark(fp32_sha, runs=40, warmup=5, batch_size=bs, threads=threads).p50_ms)
        dev.close()
    report = result.report
    budget = float(report["budget"]["latency_ms"])
    fit_after, fp32_after = sorted(fit_p50s)[1], sorted(fp32_p50s)[1]
    # the same comparison the budget makes (fraction × fp32), with both measured now, side by side
    ratio_after = sorted(f / b for f, b in zip(fit_p50s, fp32_p50s, strict=True))[1]
    summary = {
        "model": bundle.name,
        "agent": agent.url,
        "batch_size": bs,
        "threads": threads,
        "fp32_p50_ms": base.p50_ms,
        "fit_fp32_p50_ms": report["baseline"]["latency"]["p50_ms"],
        "budget_ms": budget,
        "fit_search_p50_ms": report["result"]["latency"]["p50_ms"],
        "fit_search_source": report["result"]["latency"]["source"],
        "fit_p50_ms": fit_after,
        "fp32_p50_after_ms": fp32_after,
        "speedup": fp32_after / fit_after if fit_after else None,
        "fit_over_fp32_after": ratio_after,
        "latency_fraction": args.latency_fraction,
        "deployed": deployed.to_dict(),
        "budget_met": result.budget_met,
        "metric": report["result"]["metric"],
        "size_bytes": report["result"]["size_bytes"],
        "compression_ratio": report["result"]["compression_ratio"],
        "out": str(out),
        "seconds": round(time.monotonic() - t0, 1),
    }
    emit(args, summary, _human(summary, report))
    return 0 if result.budget_met else 3


def _human(s: dict[str, Any], report: dict[str, Any]) -> str:
    m = s["metric"]
    bs = s["batch_size"]
    lines = [
        "",
        f"devicefit demo — {s['model']} fitted for this machine (profile localhost), agent at {s['agent']}",
        f"  every latency below: p50 of one inference on a batch of {bs} input{'s' if bs != 1 else ''}, "
        f"{_threads(s['threads'])}",
        f"  fp32 p50 on the agent        {s['fp32_p50_ms']:.3f} ms   (measured before the fit)",
        f"  fp32 p50 at the fit's start  {s['fit_fp32_p50_ms']:.3f} ms   (measured by the fit: its baseline)",
        f"  latency budget               {s['budget_ms']:.3f} ms   ({s['latency_fraction']:g} × the fit's fp32)",
        f"  fitted model p50 in search   {s['fit_search_p50_ms']:.3f} ms   ({s['fit_search_source']} on the agent)",
        f"  after deploy, alternating    fit {s['fit_p50_ms']:.3f} ms vs fp32 {s['fp32_p50_after_ms']:.3f} ms   "
        f"(measured; {s['speedup']:.2f}× faster)",
        f"                               fit ÷ fp32 per round, median {s['fit_over_fp32_after']:.2f} "
        f"({'within' if s['fit_over_fp32_after'] <= s['latency_fraction'] else 'OVER'} the {s['latency_fraction']:g} asked; "
        "the machine's load moves both)",
        f"  {m['name']:<28} {m['baseline']:.4f} → {m['compressed']:.4f} (drop {m['drop']:+.4f})",
        f"  size                         {s['size_bytes'] / 1e6:.3f} MB ({s['compression_ratio']:.2f}× smaller)",
        f"  plan                         {report['result'].get('plan_summary')}",
        f"  budget met                   {'yes' if s['budget_met'] else 'NO'}",
        f"  search                       {report['search'].get('trials')} trials, "
        f"{report['search'].get('measurements')} measured on the agent ({_reused(report)}); median prediction "
        f"error {_pct(report['search'].get('prediction_error', {}).get('median'))} over "
        f"{report['search'].get('prediction_error', {}).get('count', 0)}",
        f"  output                       {s['out']}/ (model.onnx, plan.yaml, report.json, report.html)",
        f"  wall time                    {s['seconds']} s",
    ]
    return "\n".join(lines)


def _threads(n: int | None) -> str:
    return "the agent's default threads" if not n else f"{n} intra-op thread{'s' if n != 1 else ''}"


def _reused(report: dict[str, Any]) -> str:
    n = sum(1 for p in report.get("pareto", []) if p.get("reused"))
    return f"{n} of them reused from the measurement store: same file, agent id, batch, threads and reference level" if n \
        else "none reused"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"
