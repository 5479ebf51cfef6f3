"""Pruning and low-rank side by side on the zoo models — same machine, same run.

    .venv/bin/python bench/prune_lowrank.py [--models digits-cnn minilm-l6 efficientnet-lite0]
        [--runs 40] [--rounds 3] [--distill-steps N] [--out DIR] [--json FILE]

Rows per model (each metric before → after distillation with the same budget):

* magnitude vs Wanda, 50 % unstructured on every Linear/Conv — fidelity only:
  zeros in dense tensors do **not** change dense onnxruntime latency or file size (they would compress
  with zip/zstd or a sparse format);
* plain vs activation-aware SVD at **equal params** (MiniLM: the 12 FFN matrices, 50 % of their params;
  digits: fc1; EfficientNet: the 1×1 convs) — fidelity;
* structured channel pruning (digits 35 % L2, MiniLM 25 % of heads + 50 % of FFN channels, EfficientNet
  10 % and 25 %; activation-aware importance for the last two) — MAC ratio next to the **measured** host p50 ratio (``benchmark_onnx``, threads=1, batch 1 and
  ``--batch``).

Latency: each ONNX file is benchmarked in alternating rounds (fp32, pruned, fp32, pruned …) and the median
p50 over rounds is reported, so slow drift hits both. The host is shared with other jobs (2 cores): treat
the latency ratios as ±10 %.
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

DEFAULT_STEPS = {"digits-cnn": 150, "minilm-l6": 40, "efficientnet-lite0": 20}
DISTILL = {"digits-cnn": dict(lr=1e-3, batch_size=64), "minilm-l6": dict(lr=1e-4, batch_size=16),
           "efficientnet-lite0": dict(lr=1e-5, batch_size=8)}


def metric(bundle: Any, module: Any) -> float:
    """The bundle metric of ``module`` on the eval split (accuracy, cosine or top-1 agreement vs fp32)."""
    from devicefit.compressor.prune.calib import outputs
    from devicefit.metrics import score

    ref = outputs(bundle.module, bundle.eval, bundle.input_names).numpy()
    got = outputs(module, bundle.eval, bundle.input_names).numpy()
    return score(bundle.metric, ref, got, bundle.eval.labels).compressed


def distilled(bundle: Any, module: Any, steps: int) -> Any:
    from devicefit.compressor.distill import distill
    from devicefit.compressor.techniques import Distill

    cfg = Distill(steps=steps, **DISTILL[bundle.name.removeprefix("zoo:")])  # type: ignore[arg-type]
    return distill(copy.deepcopy(module), bundle.module, bundle.calib, cfg, bundle.input_names, progress=False).module


def p50s(paths: dict[str, Path], inputs: dict[str, Any], runs: int, rounds: int) -> dict[str, float]:
    from devicefit.agent.benchmark import benchmark_onnx

    got: dict[str, list[float]] = {k: [] for k in paths}
    # tiny models: enough runs for ≥ 0.5 s per measurement, so a p50 is not a handful of samples
    est = benchmark_onnx(next(iter(paths.values())), runs=5, warmup=2, threads=1, inputs=inputs).p50_ms
    runs = min(5000, max(runs, int(500.0 / max(est, 1e-3))))
    for _ in range(rounds):
        for label, path in paths.items():
            got[label].append(benchmark_onnx(path, runs=runs, warmup=5, threads=1, inputs=inputs).p50_ms)
    return {k: statistics.median(v) for k, v in got.items()}


def onnx_params(path: Path) -> int:
    import numpy as np
    import onnx

    return sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)


def plans(name: str, layers: list[str]) -> dict[str, dict[str, Any]]:
    """label → {plan, kind}; kind 'fidelity' (no latency change expected) or 'latency' (structured)."""
    from devicefit.compressor.plan import LayerChoice, Plan
    from devicefit.compressor.techniques import ChannelPrune, LowRank, MagnitudePrune, WandaPrune

    out: dict[str, dict[str, Any]] = {}
    for tech in (MagnitudePrune(0.5), WandaPrune(0.5)):
        out[f"unstructured 50% {tech.method}"] = {"plan": Plan.uniform(prune=tech), "kind": "fidelity"}
    if name == "minilm-l6":
        lr_layers = [n for n in layers if n.endswith("intermediate.dense") or (n.endswith("output.dense") and "attention" not in n)]
        structured = Plan.per_layer({
            **{n: LayerChoice(prune=ChannelPrune(0.25, importance="activation")) for n in layers if n.endswith("self.query")},
            **{n: LayerChoice(prune=ChannelPrune(0.5, importance="activation")) for n in layers if n.endswith("intermediate.dense")},
        })
    elif name == "digits-cnn":
        lr_layers = ["fc1"]
        structured = Plan.uniform(prune=ChannelPrune(0.35, importance="l2"))
    else:
        lr_layers = [n for n in layers if n.endswith(("_expand_conv", "_project_conv"))]
        structured = Plan.uniform(prune=ChannelPrune(0.25, importance="activation"))
        out["structured 10%"] = {"plan": Plan.uniform(prune=ChannelPrune(0.1, importance="activation")),
                                 "kind": "latency"}
    for kind in ("svd", "asvd"):
        plan = Plan.per_layer({n: LayerChoice(lowrank=LowRank(ratio=0.5, kind=kind)) for n in lr_layers})
        out[f"low-rank 50% {kind} ({len(lr_layers)} layers)"] = {"plan": plan, "kind": "fidelity"}
    out["structured" + (" 25%" if name == "efficientnet-lite0" else "")] = {"plan": structured, "kind": "latency"}
    return out


def bench_model(name: str, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    from devicefit.compressor.analysis import analyze
    from devicefit.compressor.export import export_bundle
    from devicefit.compressor.layers import layer_names
    from devicefit.compressor.structural import apply_structural
    from devicefit.zoo import get

    bundle = get(name)
    steps = args.distill_steps or DEFAULT_STEPS[name]
    base = analyze(bundle.module, bundle.example_inputs)
    fp32 = export_bundle(bundle, work / f"{name}-fp32.onnx").path
    inputs = {k: v[:1] for k, v in bundle.eval.inputs.items()}
    batch = {k: v[: args.batch] for k, v in bundle.eval.inputs.items()}
    rows = []
    for label, spec in plans(name, layer_names(bundle.module)).items():
        t0 = time.monotonic()
        res = apply_structural(bundle.module, spec["plan"], bundle.calib, bundle.example_inputs, bundle.input_names)
        before = metric(bundle, res.module)
        student = distilled(bundle, res.module, steps)
        after = metric(bundle, student)
        info = analyze(student, bundle.example_inputs)
        row: dict[str, Any] = {
            "model": name, "row": label, "metric": bundle.metric, "before_distill": before, "after_distill": after,
            "params_ratio": info.params / base.params, "macs_ratio": info.macs / base.macs,
            "applied": len(res.applied), "refused": len(res.refused), "seconds": round(time.monotonic() - t0, 1),
        }
        if spec["kind"] == "latency":
            path = export_bundle(bundle, work / f"{name}-{label.replace(' ', '_').replace('%', '')}.onnx",
                                 module=student).path
            lat = p50s({"fp32": fp32, "pruned": path}, inputs, args.runs, args.rounds)
            latb = p50s({"fp32": fp32, "pruned": path}, batch, max(5, args.runs // 4), args.rounds)
            row.update(onnx_params_ratio=onnx_params(path) / onnx_params(fp32), fp32_p50_ms=lat["fp32"],
                       p50_ms=lat["pruned"], latency_ratio=lat["pruned"] / lat["fp32"],
                       batch=args.batch, fp32_p50_batch_ms=latb["fp32"], p50_batch_ms=latb["pruned"],
                       latency_ratio_batch=latb["pruned"] / latb["fp32"])
        rows.append(row)
        print(_fmt(row), flush=True)
    return rows


def _fmt(r: dict[str, Any]) -> str:
    s = (f"{r['model']:<18} {r['row']:<34} {r['metric']:<14} {r['before_distill']:.4f} → {r['after_distill']:.4f}"
         f"  params×{r['params_ratio']:.3f} MACs×{r['macs_ratio']:.3f}")
    if "latency_ratio" in r:
        s += (f"  onnx-params×{r['onnx_params_ratio']:.3f}  p50@1 {r['fp32_p50_ms']:.3f}→{r['p50_ms']:.3f} ms"
              f" (×{r['latency_ratio']:.3f})  p50@{r['batch']} {r['fp32_p50_batch_ms']:.2f}→{r['p50_batch_ms']:.2f} ms"
              f" (×{r['latency_ratio_batch']:.3f})")
    return s + f"  [{r['applied']} applied, {r['refused']} refused, {r['seconds']}s]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["digits-cnn", "minilm-l6", "efficientnet-lite0"])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16, help="second latency point: this batch size")
    ap.add_argument("--distill-steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for compression / distillation")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    work = args.out or Path(tempfile.mkdtemp(prefix="devicefit-prune-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print("metric: before → after distillation; ratios vs fp32; p50 = median over rounds, threads=1, batch 1",
          file=sys.stderr)
    rows = [r for name in args.models for r in bench_model(name, args, work)]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
