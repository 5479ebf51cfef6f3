"""CLI: ``devicefit bench`` (host, ``--on URL``, ``--fleet NAME``), ``devicefit agent serve``, ``devicefit deploy``.

Heavy imports (grpc, onnxruntime) stay inside the handlers so ``devicefit --help`` is fast.
"""

from __future__ import annotations

import argparse
from typing import Any

from devicefit import defaults
from devicefit.cli import emit


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "bench", parents=[common], help="benchmark a model file on this host or on a device (--on grpc://…)"
    )
    p.add_argument("file", metavar="FILE", help="model file (.onnx or .tflite)")
    p.add_argument("--runs", type=int, default=defaults.RUNS,
                   help=f"timed runs, at least (default {defaults.RUNS}, as a fit's baseline)")
    p.add_argument("--min-seconds", type=float, default=defaults.MIN_SECONDS,
                   help="time floor: timed runs go on past --runs until they add up to this many seconds "
                        f"(default {defaults.MIN_SECONDS:g}, the rule a fit's baseline uses; 0 = exactly --runs)")
    p.add_argument("--warmup", type=int, default=defaults.WARMUP, help=f"untimed warm-up runs (default {defaults.WARMUP})")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: one per physical core)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size of the generated inputs (default 1)")
    p.add_argument("--per-node", action="store_true", help="also report per-node times (onnxruntime profiler)")
    p.add_argument("--on", metavar="URL", default=None, help="benchmark on a device agent, e.g. grpc://pi.local:50051")
    p.add_argument("--fleet", metavar="NAME", default=None, help="benchmark on every selected device of a fleet")
    p.add_argument("--broker", metavar="URL", default=None, help="the fleet's MQTT broker (with --fleet)")
    p.add_argument("--select", metavar="K=V", action="append", default=[], help="fleet devices by tag (repeat)")
    p.set_defaults(func=_bench)

    agent = subparsers.add_parser("agent", parents=[common], help="run the on-device agent")
    agent_sub = agent.add_subparsers(dest="agent_command", metavar="COMMAND", parser_class=type(agent))
    serve = agent_sub.add_parser("serve", parents=[common], help="serve the agent over gRPC and/or MQTT")
    from devicefit.agent.serve_args import add_serve_arguments

    add_serve_arguments(serve)
    serve.set_defaults(func=_serve)
    agent.set_defaults(func=lambda args: (agent.print_help(), 2)[1])

    d = subparsers.add_parser("deploy", parents=[common], help="upload a model to a device agent and activate it")
    d.add_argument("file", metavar="FILE",
                   help="model file (.onnx or .tflite), or an artifact directory / manifest.json (keeps its signature)")
    d.add_argument("--to", metavar="URL", required=True, help="device agent, e.g. grpc://pi.local:50051")
    d.add_argument("--model-id", default=None, help="model id (default: the file name without extension)")
    d.add_argument("--no-activate", action="store_true", help="store the model without activating it")
    d.add_argument("--chunk-kib", type=int, default=512, help="upload chunk size in KiB (256-1024, default 512)")
    d.set_defaults(func=_deploy)


def _bench_human(d: dict[str, Any]) -> str:
    lines = [
        f"{d['source']}: p50 {d['p50_ms']:.3f} ms  p90 {d['p90_ms']:.3f} ms  p99 {d['p99_ms']:.3f} ms  "
        f"mean {d['mean_ms']:.3f} ms",
        f"spread: p10 {d.get('p10_ms', 0.0):.3f} ms  IQR {d.get('iqr_ms', 0.0):.3f} ms  "
        f"({d['runs']} runs in {d.get('timed_s', 0.0):.2f} s, floor {d.get('min_seconds', 0.0):g} s)",
        f"memory: model {d.get('model_memory_mb', 0.0):.1f} MB (runs added {d.get('run_memory_mb', 0.0):.1f})  "
        f"process peak RSS {d['peak_rss_mb']:.1f} MB",
        f"load {d['load_ms']:.1f} ms  threads {d['threads']}  "
        + "  ".join(f"{k} {v}" for k, v in d.get("runtime", {}).items()),
    ]
    nodes = d.get("per_node") or []
    if nodes:
        lines.append(f"per node (sum {d.get('per_node_total_ms', 0.0):.3f} ms, slowest first):")
        for n in sorted(nodes, key=lambda n: -n["mean_ms"])[:20]:
            lines.append(f"  {n['mean_ms']:9.4f} ms  {n['op_type']:<16} {n['name']}")
        if len(nodes) > 20:
            lines.append(f"  … {len(nodes) - 20} more (use --json)")
    return "\n".join(lines)


def _fleet_human(d: dict[str, Any]) -> str:
    lines = [f"{d['model_id']} on {len(d['devices'])} device(s), {d['failed']} failed"]
    for k, v in d["distribution"].items():
        lines.append(f"  {k}: min {v['min']:.3f}  median {v['median']:.3f}  max {v['max']:.3f}")
    lines += [f"    {r['device_id']:<20} " + (f"p50 {r['p50_ms']:.3f} ms  p90 {r['p90_ms']:.3f} ms" if "p50_ms" in r
                                                  else r["error"]) for r in d["devices"]]
    return "\n".join(lines)


def _bench(args: argparse.Namespace) -> int:
    if args.fleet:
        from devicefit.agent.serve_args import parse_tags
        from devicefit.errors import UserInputError
        from devicefit.fleet import Fleet

        if not args.broker:
            raise UserInputError("--fleet needs --broker URL", "pass e.g. --broker mqtt://127.0.0.1:1883")
        with Fleet(args.broker, fleet=args.fleet) as fleet:
            dist = fleet.bench(args.file, select=parse_tags(args.select) or None, runs=args.runs, warmup=args.warmup,
                              min_seconds=args.min_seconds)
        emit(args, dist, _fleet_human)
        return 0
    if args.on:
        from devicefit.device import connect

        with connect(args.on) as dev:
            deployed = dev.deploy(args.file, progress=False, activate=False)
            report = dev.benchmark(
                deployed.model_id, runs=args.runs, warmup=args.warmup, threads=args.threads,
                per_node=args.per_node, batch_size=args.batch_size, min_seconds=args.min_seconds,
            )
    else:
        from devicefit.agent.benchmark import benchmark_onnx

        report = benchmark_onnx(
            args.file, runs=args.runs, warmup=args.warmup, threads=args.threads, per_node=args.per_node,
            batch_size=args.batch_size, min_seconds=args.min_seconds,
        )
    emit(args, report.to_dict(), _bench_human)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from devicefit.agent.serve_args import serve

    return serve(args)


def _deploy(args: argparse.Namespace) -> int:
    from pathlib import Path

    from devicefit.artifact import Artifact
    from devicefit.device import connect

    target: Any = args.file
    if Path(target).is_dir() or Path(target).name == "manifest.json":  # a (signed) artifact
        target = Artifact.load(target)
    with connect(args.to) as dev:
        res = dev.deploy(
            target, progress=not args.json, model_id=args.model_id, activate=not args.no_activate,
            chunk_size=args.chunk_kib * 1024,
        )
    emit(
        args,
        res.to_dict(),
        lambda d: f"deployed {d['model_id']} ({d['size_bytes'] / 1e6:.2f} MB, sha256 {d['sha256'][:12]}…) to "
        f"{d['device_id']} in {d['seconds']:.2f} s ({d['mb_per_s']:.1f} MB/s)"
        + (f"; active, first run {d['first_run_ms']:.2f} ms" if d["active"] else "; stored, not active"),
    )
    return 0
