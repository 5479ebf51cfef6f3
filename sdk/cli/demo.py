"""``devicefit demo``: the main job end to end on this machine.

Starts a real agent on loopback, measures the fp32 model on it, fits the model for the measured
``localhost`` profile with a latency budget of ``--latency-fraction`` × that fp32 p50, deploys the winner,
benchmarks it on the agent and prints the report. Everything printed as "measured" was measured by the
agent in this run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from devicefit.cli import emit


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("demo", parents=[common], help="fit a zoo model for this machine against a local agent")
    p.add_argument("--model", default="zoo:digits-cnn", help="model to fit (default: zoo:digits-cnn)")
    p.add_argument("--latency-fraction", type=float, default=0.5,
                   help="latency budget as a fraction of the fp32 p50 measured by the agent (default 0.5)")
    p.add_argument("--max-accuracy-drop", type=float, default=0.01, help="metric drop budget (default 0.01)")
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
        base = dev.benchmark(None, runs=100, warmup=10)
        budget = round(args.latency_fraction * base.p50_ms, 4)
        console.print(f"[bold]3. fp32 on the agent[/]: p50 {base.p50_ms:.3f} ms (measured) → latency budget "
                      f"{budget:.3f} ms ({args.latency_fraction:g} × fp32)")
        console.print("[bold]4. fit[/] searching, measuring candidates on the agent …")
        result = devicefit.fit(bundle, profile="localhost", device=agent.url, max_latency_ms=budget,
                               max_accuracy_drop=args.max_accuracy_drop, trials=args.trials, out=out)
        deployed = dev.deploy(result.model_path, progress=False, model_id=f"{model_id}-fit")
        final = dev.benchmark(None, runs=100, warmup=10)
        dev.close()
    report = result.report
    summary = {
        "model": bundle.name,
        "agent": agent.url,
        "fp32_p50_ms": base.p50_ms,
        "budget_ms": budget,
        "fit_p50_ms": final.p50_ms,
        "speedup": base.p50_ms / final.p50_ms if final.p50_ms else None,
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
    lines = [
        "",
        f"devicefit demo — {s['model']} fitted for this machine (profile localhost), agent at {s['agent']}",
        f"  fp32 p50 on the agent        {s['fp32_p50_ms']:.3f} ms   (measured)",
        f"  latency budget               {s['budget_ms']:.3f} ms",
        f"  fitted model p50 on agent    {s['fit_p50_ms']:.3f} ms   (measured after deploy; {s['speedup']:.2f}× faster)",
        f"  {m['name']:<28} {m['baseline']:.4f} → {m['compressed']:.4f} (drop {m['drop']:+.4f})",
        f"  size                         {s['size_bytes'] / 1e6:.3f} MB ({s['compression_ratio']:.2f}× smaller)",
        f"  budget met                   {'yes' if s['budget_met'] else 'NO'}",
        f"  search                       {report['search'].get('trials')} trials, "
        f"{report['search'].get('measurements')} measured on the agent",
        f"  output                       {s['out']}/ (model.onnx, plan.yaml, report.json, report.html)",
        f"  wall time                    {s['seconds']} s",
    ]
    return "\n".join(lines)
