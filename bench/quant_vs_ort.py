"""devicefit quantization vs onnxruntime's own quantizers, side by side in one run.

For each zoo model: fp32; onnxruntime's ``quantize_dynamic``, ``quantize_static`` (QDQ, calibrated on the
model's calibration split) and ``MatMulNBitsQuantizer`` — all with their default settings, after
``quant_pre_process`` where it works — and devicefit's schemes through ``quantize_onnx``. Per row: host
latency p50 (onnxruntime with the agent runner's session settings, threads=1, one real sample, batch 1;
all rows' sessions are loaded and run in turn, one run each, ``--rounds x --runs`` turns, median per row,
so load drift on a shared machine hits every row alike), speed-up vs fp32, ratio to the fastest onnxruntime row
(``vs_ort`` < 1 = devicefit faster), size, and fidelity on the eval split (the zoo metric, mean cosine and
SQNR vs fp32 outputs, and float-fallback layers found in the optimized graph).

    python bench/quant_vs_ort.py [--models minilm-l6,digits-cnn,efficientnet-lite0] [--rounds 5] [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

DEVICEFIT_SCHEMES = {
    "minilm-l6": ["int8_dynamic", "int8_static:calibration=mse", "smoothquant:alpha=0.75", "int8_weight_only", "int4",
                  "int4_gptq", "int4_awq"],
    "digits-cnn": ["int8_dynamic", "int8_static", "int8_static:calibration=mse", "int8_weight_only", "float16"],
    "efficientnet-lite0": ["int8_dynamic", "int8_static", "int8_static:calibration=mse", "int8_weight_only"],
}


def ort_rows(fp32: Path, calib: Any, work: Path) -> dict[str, Path]:
    """onnxruntime's own quantizers with their defaults (after ``quant_pre_process`` where it works)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, quantize_dynamic, quantize_static
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from devicefit.compressor.quant.calibration import DatasetReader, batches

    src = work / "ort_pre.onnx"
    try:
        quant_pre_process(str(fp32), str(src))
    except Exception:
        try:
            quant_pre_process(str(fp32), str(src), skip_symbolic_shape=True)
        except Exception:
            src = fp32
    out: dict[str, Path] = {}
    quantize_dynamic(str(src), str(work / "ort_dynamic.onnx"))
    out["ort quantize_dynamic"] = work / "ort_dynamic.onnx"
    if src != fp32:  # pre-processing can also slow a graph down (it decomposes Gelu): keep the better of both
        quantize_dynamic(str(fp32), str(work / "ort_dynamic_raw.onnx"))
        out["ort quantize_dynamic (no pre-process)"] = work / "ort_dynamic_raw.onnx"
    model = onnx.load(str(src))
    reader = DatasetReader(batches(calib, model, batch_size=16, limit=128))
    quantize_static(str(src), str(work / "ort_static.onnx"), reader, quant_format=QuantFormat.QDQ)
    out["ort quantize_static"] = work / "ort_static.onnx"
    q = MatMulNBitsQuantizer(model)
    q.process()
    if any(n.op_type == "MatMulNBits" for n in q.model.model.graph.node):
        q.model.save_model_to_file(str(work / "ort_nbits.onnx"))
        out["ort MatMulNBits"] = work / "ort_nbits.onnx"
    return out


def devicefit_rows(fp32: Path, bundle: Any, schemes: list[str], work: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    import torch

    from devicefit.compressor.plan import Plan
    from devicefit.compressor.quant import quantize_onnx
    from devicefit.compressor.shortcuts import parse_quant

    out: dict[str, Path] = {}
    info: dict[str, Any] = {}
    names = [n for n, m in bundle.module.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d))]
    for s in schemes:
        label = f"devicefit {s}"
        path = work / f"df_{s.replace(':', '_').replace('=', '')}.onnx"
        t0 = time.perf_counter()
        res = quantize_onnx(fp32, path, Plan.uniform(quant=parse_quant(s)), layer_names=names, calib=bundle.calib,
                            module=bundle.module)
        out[label] = path
        info[label] = {"fallback": res.float_fallback_layers, "int_ops": res.int_ops, "seconds": time.perf_counter() - t0}
    return out, info


def quality(bundle: Any, fp32: Path, path: Path) -> dict[str, float]:
    from devicefit.metrics import fidelity, score
    from devicefit.runtime import run_onnx

    ev = bundle.eval
    ref = run_onnx(fp32, ev)
    test = run_onnx(path, ev)
    m = score(bundle.metric, ref, test, ev.labels)
    f = fidelity(ref, test)
    return {"metric": m.compressed, "metric_name": m.name, "baseline": m.baseline, "cosine": f["cosine"],
            "sqnr_db": f["sqnr_db"]}


def _session(path: Path) -> Any:
    """The agent runner's session settings (``devicefit.agent.runners.onnxruntime_runner``), one thread."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def latencies(rows: dict[str, Path], feeds: dict[str, np.ndarray], rounds: int, runs: int) -> dict[str, float]:
    """Median latency per row, interleaved *run by run*: every row runs once per turn, for ``rounds x runs``
    turns, so a load spike from other processes hits all rows alike. (``benchmark_onnx`` times one file at a
    time; on a shared 2-core host that lets load drift decide the ranking — the settings here are the same.)"""
    sessions = {k: _session(p) for k, p in rows.items()}
    for s in sessions.values():
        for _ in range(5):
            s.run(None, feeds)
    per: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(rounds * runs):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feeds)
            per[k].append((time.perf_counter() - t0) * 1000.0)
    return {k: statistics.median(v) for k, v in per.items()}


def bench_model(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    from devicefit import zoo
    from devicefit.compressor.export import export_bundle

    work = Path(args.workdir) / name
    work.mkdir(parents=True, exist_ok=True)
    bundle = zoo.get(name)
    fp32 = work / "fp32.onnx"
    if not fp32.exists():
        export_bundle(bundle, fp32)
    rows: dict[str, Path] = {"fp32": fp32}
    rows.update(ort_rows(fp32, bundle.calib, work))
    df, info = devicefit_rows(fp32, bundle, DEVICEFIT_SCHEMES[name], work)
    rows.update(df)
    feeds = {k: v[:1] for k, v in bundle.eval.inputs.items()}
    lat = latencies(rows, feeds, args.rounds, args.runs)
    ort_best = min(v for k, v in lat.items() if k.startswith("ort"))
    table = []
    for k, p in rows.items():
        q = quality(bundle, fp32, p)
        table.append({"model": name, "row": k, "p50_ms": lat[k], "speedup_vs_fp32": lat["fp32"] / lat[k],
                      "vs_best_ort": lat[k] / ort_best, "size_mb": p.stat().st_size / 1e6, **q, **info.get(k, {})})
    return table


def show(table: list[dict[str, Any]]) -> None:
    hdr = f"{'model':<19}{'row':<42}{'p50 ms':>8}{'x fp32':>8}{'vs ORT':>8}{'MB':>8}  {'metric':>16}{'cosine':>8}{'SQNR':>7}  fallback"
    print(hdr)
    for r in table:
        metric = f"{r['metric_name'][:8]} {r['metric']:.4f}"
        fb = len(r.get("fallback", [])) if "fallback" in r else "-"
        print(f"{r['model']:<19}{r['row']:<42}{r['p50_ms']:>8.3f}{r['speedup_vs_fp32']:>8.2f}{r['vs_best_ort']:>8.2f}"
              f"{r['size_mb']:>8.2f}  {metric:>16}{r['cosine']:>8.4f}{r['sqnr_db']:>7.1f}  {fb}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="minilm-l6,digits-cnn,efficientnet-lite0")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--workdir", default="/tmp/devicefit-bench-quant")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = ap.parse_args(argv)
    import logging

    import torch

    logging.disable(logging.WARNING)  # onnxruntime's quantizers log every node at INFO

    torch.set_num_threads(1)
    table: list[dict[str, Any]] = []
    for name in args.models.split(","):
        rows = bench_model(name.strip(), args)
        show(rows)
        table += rows
    print("\nall rows:")
    show(table)
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
