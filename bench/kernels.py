"""devicefit's kernels vs onnxruntime's own, side by side in one run (1 intra-op thread on every side).

Per weight shape (N out x K in) and batch M, one session per variant, all run in turn (the variant order
rotates every round; each turn times a burst of runs and keeps the mean per call), ``--rounds`` turns,
median per variant — so load drift on a shared machine hits every variant alike. Time is the calling
thread's CPU time (``time.thread_time``; with 1 intra-op thread onnxruntime runs every op on the caller),
so time the OS gives other processes on a shared machine is not counted; ``--clock wall`` for wall time.

* ``fp32``        onnxruntime ``MatMul`` (float32 weights)
* ``ort_int8``    onnxruntime ``quantize_dynamic`` of the fp32 model (its default settings: dynamic u8
                  activations, s8 weights; onnxruntime fuses it into ``DynamicQuantizeMatMul``)
* ``nbits4``      ``MatMulNBits`` bits=4, block ``--group`` (accuracy_level 0: float activations)
* ``nbits4_i8``   the same with accuracy_level 4 (int8 activations, onnxruntime's fastest CPU path)
* ``s24``         devicefit ``Sparse24MatMul`` (2:4 sparse int8 weights, int8 activations per row)
* ``lowbit2/3``   devicefit ``LowBitMatMul`` bits=2 / 3, group ``--group`` (int8 activations per group)

Ratios are speed-ups (baseline time / devicefit time, > 1 = devicefit faster). GOPS = 2*M*N*K / time
(dense-equivalent MACs x 2), and the fraction of this machine's int8 peak measured by
``devicefit.agent.microbench`` (onnxruntime ``MatMulInteger``, 1 thread) in the same run.

    python bench/kernels.py [--shapes 1536x384,384x1536,3072x768,768x3072,4096x4096] [--batches 1,4,8]
                            [--rounds 7] [--burst-ms 25] [--group 128] [--clock cpu|wall] [--cache warm|cold]
                            [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SPEEDUPS = [("s24", "ort_int8"), ("s24", "fp32"), ("s24", "nbits4"), ("lowbit2", "nbits4"), ("lowbit2", "nbits4_i8"),
            ("lowbit3", "nbits4"), ("lowbit3", "nbits4_i8")]


def build_models(n: int, k: int, m: int, group: int, work: Path) -> dict[str, Any]:
    """onnx ModelProtos of every variant for weight W[n, k] and input X[m, k]."""
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    from devicefit.kernels import lowering, ops, pack

    h, tp, nh = onnx.helper, onnx.TensorProto, onnx.numpy_helper
    rng = np.random.default_rng(n * 7 + k)
    w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)

    def wrap(nodes: list[Any], inits: list[Any], extra_opsets: list[Any]) -> Any:
        graph = h.make_graph(nodes, "bench", [h.make_tensor_value_info("X", tp.FLOAT, [m, k])],
                             [h.make_tensor_value_info("Y", tp.FLOAT, [m, n])], initializer=inits)
        model = h.make_model(graph, opset_imports=[h.make_opsetid("", 21), *extra_opsets])
        model.ir_version = 10
        return model

    models: dict[str, Any] = {}
    models["fp32"] = wrap([h.make_node("MatMul", ["X", "Wt"], ["Y"])], [nh.from_array(np.ascontiguousarray(w.T), "Wt")],
                          [])
    fp32_path, int8_path = work / f"fp32_{n}_{k}_{m}.onnx", work / f"int8_{n}_{k}_{m}.onnx"
    onnx.save(models["fp32"], str(fp32_path))
    quantize_dynamic(str(fp32_path), str(int8_path))
    models["ort_int8"] = onnx.load(str(int8_path))
    kb = -(-k // group) * group  # 4-bit round-to-nearest, asymmetric per block (as MatMulNBitsQuantizer's RTN)
    wb = np.zeros((n, kb), np.float32)
    wb[:, :k] = w
    g4 = wb.reshape(n, kb // group, group)
    lo, hi = np.minimum(g4.min(-1), 0), np.maximum(g4.max(-1), 0)
    s4 = np.where(hi > lo, (hi - lo) / 15, 1).astype(np.float32)
    z4 = np.clip(np.rint(-lo / s4), 0, 15).astype(np.uint8)
    q4 = np.clip(np.rint(g4 / s4[..., None]) + z4[..., None], 0, 15).astype(np.uint8).reshape(n, kb)
    b, s, zp = lowering.pack_matmulnbits4(q4, s4, z4, block_size=group)
    for name, level in (("nbits4", 0), ("nbits4_i8", 4)):
        node = h.make_node("MatMulNBits", ["X", "B", "S", "Z"], ["Y"], domain="com.microsoft", K=k, N=n, bits=4,
                           block_size=group, accuracy_level=level)
        models[name] = wrap([node], [nh.from_array(b, "B"), nh.from_array(s, "S"), nh.from_array(zp, "Z")],
                            [h.make_opsetid("com.microsoft", 1)])
    sw = pack.pack_sparse24(w)
    node, inits = ops.sparse24_node("X", "Y", sw, prefix="fc")
    models["s24"] = wrap([node], inits, [h.make_opsetid(ops.DOMAIN, 1)])
    for bits in (2, 3):
        q, s_, z = pack.quantize_lowbit_rtn(w, bits=bits, group_size=group)
        node, inits = ops.lowbit_node("X", "Y", pack.pack_lowbit(q, s_, z, bits=bits, group_size=group), prefix="fc")
        models[f"lowbit{bits}"] = wrap([node], inits, [h.make_opsetid(ops.DOMAIN, 1)])
    return models


def runner(model: Any, x: np.ndarray, n: int) -> tuple[Callable[[], None], list[str]]:
    """A no-allocation run closure (I/O binding, 1 intra-op thread) and the optimized graph's op types."""
    import onnx
    import onnxruntime as ort

    from devicefit.kernels import library_path

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.register_custom_ops_library(str(library_path()))
    with tempfile.TemporaryDirectory() as tmp:
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        optimized = sorted({nd.op_type for nd in onnx.load(str(Path(tmp) / "opt.onnx")).graph.node})
    out = np.empty((x.shape[0], n), np.float32)
    binding = sess.io_binding()
    binding.bind_ortvalue_input("X", ort.OrtValue.ortvalue_from_numpy(x))
    binding.bind_ortvalue_output("Y", ort.OrtValue.ortvalue_from_numpy(out))

    def run() -> None:
        sess.run_with_iobinding(binding)

    return run, optimized


def measure(runs: dict[str, Callable[[], None]], rounds: int, burst_ms: float,
            clock: Callable[[], float] = time.thread_time) -> dict[str, float]:
    """Median over rounds of the per-call mean of a burst; variants alternate, order rotating per round."""
    names = list(runs)
    reps: dict[str, int] = {}
    for name in names:  # warm-up + burst sizing
        runs[name]()
        t0 = clock()
        runs[name]()
        reps[name] = max(3, int(burst_ms / 1e3 / max(clock() - t0, 1e-6)))
    samples: dict[str, list[float]] = {nm: [] for nm in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            fn, count = runs[name], reps[name]
            t0 = clock()
            for _ in range(count):
                fn()
            samples[name].append((clock() - t0) / count)
    return {nm: statistics.median(v) for nm, v in samples.items()}


def measure_cold(runs: dict[str, Callable[[], None]], rounds: int, evict: Callable[[], None],
                 clock: Callable[[], float] = time.thread_time) -> dict[str, float]:
    """Weights not in cache (a real model streams every layer's weights from memory): before each timed
    single call, stream through a buffer larger than the last-level cache; median over rounds."""
    names = list(runs)
    for name in names:
        runs[name]()  # warm-up (first-run allocations)
    samples: dict[str, list[float]] = {nm: [] for nm in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            evict()
            t0 = clock()
            runs[name]()
            samples[name].append(clock() - t0)
    return {nm: statistics.median(v) for nm, v in samples.items()}


def minilm_e2e(rounds: int, burst_ms: float, clock: Callable[[], float]) -> dict[str, Any]:
    """zoo:minilm-l6 exported to ONNX (fp32), the same with its 12 FFN MatMuls (384x1536, 1536x384) rewritten
    to 2:4 ``Sparse24MatMul`` (magnitude pruning, no fine-tuning: fidelity is reported, not claimed), that 2:4
    model lowered by ``kernels.lowering`` to standard ops (``s24_lowered``: the same weights as a dense int8
    ``MatMulInteger`` + float epilogue, identical results: the model as a device without the library runs it),
    and onnxruntime's ``quantize_dynamic`` of the whole model; latency on the bundle's example input (its token
    rows are the M of every FFN MatMul) and cosine of the first output vs fp32."""
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    from devicefit import zoo
    from devicefit.compressor.export import export_bundle
    from devicefit.kernels import lowering, rewrite

    bundle = zoo.get("minilm-l6")
    with tempfile.TemporaryDirectory(prefix="devicefit-bench-minilm-") as tmp:
        fp32_path = export_bundle(bundle, Path(tmp) / "minilm.onnx").path
        fp32 = onnx.load(str(fp32_path))
        inits = {i.name: tuple(i.dims) for i in fp32.graph.initializer}
        ffn = [nd.name for nd in fp32.graph.node if nd.op_type == "MatMul" and nd.name
               and inits.get(nd.input[1]) in {(384, 1536), (1536, 384)}]
        sparse, replaced = rewrite.to_sparse24(fp32, names=ffn)
        lowered = lowering.lower_model(sparse)
        quantize_dynamic(str(fp32_path), str(Path(tmp) / "int8.onnx"))
        int8 = onnx.load(str(Path(tmp) / "int8.onnx"))
    feeds = {name: np.asarray(t.numpy() if hasattr(t, "numpy") else t)
             for name, t in zip(bundle.input_names, bundle.example_inputs, strict=False)}
    import onnxruntime as ort

    from devicefit.kernels import library_path

    runs: dict[str, Callable[[], None]] = {}
    outs: dict[str, np.ndarray] = {}

    def runner_of(sess: Any) -> Callable[[], None]:
        def run() -> None:
            sess.run(None, feeds)

        return run

    for name, model in (("fp32", fp32), ("ort_int8", int8), ("s24_ffn", sparse), ("s24_lowered", lowered)):
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 1, 1, 3
        so.register_custom_ops_library(str(library_path()))
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        outs[name] = np.asarray(sess.run(None, feeds)[0], np.float64).ravel()
        runs[name] = runner_of(sess)
    times = measure(runs, rounds, burst_ms, clock)

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    return {"ffn_replaced": len(replaced), "input_shapes": {k: list(v.shape) for k, v in feeds.items()},
            "ms": {k: round(v * 1e3, 3) for k, v in times.items()},
            "speedup_s24_vs": {k: round(times[k] / times["s24_ffn"], 2) for k in ("fp32", "ort_int8", "s24_lowered")},
            "cosine_vs_fp32": {k: round(cos(outs[k], outs["fp32"]), 4) for k in ("ort_int8", "s24_ffn", "s24_lowered")}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="1536x384,384x1536,3072x768,768x3072,4096x4096", help="NxK list (out x in)")
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--burst-ms", type=float, default=25.0)
    ap.add_argument("--group", type=int, default=128, help="group / block size of the 2/3/4-bit variants")
    ap.add_argument("--peak-seconds", type=float, default=2.0, help="int8 peak microbench budget (0: skip)")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    ap.add_argument("--cache", choices=["warm", "cold"], default="warm",
                    help="warm: bursts of runs (weights stay in cache when they fit); cold: the cache is flushed "
                         "before every timed run (weights streamed from memory, as in a model larger than the cache)")
    ap.add_argument("--minilm", action="store_true",
                    help="also time zoo:minilm-l6 end to end with its FFN layers as 2:4 Sparse24MatMul (needs torch)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from devicefit.kernels import available

    isa = available()
    if isa is None:
        print("devicefit kernels unavailable (no C compiler?): python -m devicefit.kernels build", file=sys.stderr)
        return 1
    peak = None
    if args.peak_seconds > 0:
        from devicefit.agent.microbench import measure_throughput

        peak = measure_throughput(seconds_budget=args.peak_seconds, threads=1)["peak_gops_int8"]
    print(f"devicefit kernels ISA: {isa}; int8 peak (onnxruntime MatMulInteger, 1 thread): {peak} GOPS; "
          f"cache: {args.cache}; clock: {args.clock}")
    from devicefit.agent.microbench import auto_bandwidth_mib

    flush = np.zeros(auto_bandwidth_mib() * 2**20 // 4, np.float32)

    def evict() -> None:
        np.add(flush, 1.0, out=flush)  # read + write every line of a buffer >= 4x the last-level cache
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="devicefit-bench-kernels-") as tmp:
        for shape in args.shapes.split(","):
            n, k = (int(v) for v in shape.lower().split("x"))
            for m in (int(b) for b in args.batches.split(",")):
                x = np.random.default_rng(m).standard_normal((m, k)).astype(np.float32)
                models = build_models(n, k, m, args.group, Path(tmp))
                runs, graphs = {}, {}
                for name, model in models.items():
                    runs[name], graphs[name] = runner(model, x, n)
                clock = time.thread_time if args.clock == "cpu" else time.perf_counter
                if args.cache == "cold":
                    times = measure_cold(runs, args.rounds, evict, clock)
                else:
                    times = measure(runs, args.rounds, args.burst_ms, clock)
                gops = {nm: 2.0 * m * n * k / t / 1e9 for nm, t in times.items()}
                row: dict[str, Any] = {"n": n, "k": k, "m": m, "us": {nm: round(t * 1e6, 1) for nm, t in times.items()},
                       "gops": {nm: round(g, 2) for nm, g in gops.items()},
                       "peak_frac": {nm: round(g / peak, 3) for nm, g in gops.items()} if peak else None,
                       "speedup": {f"{a}/{b}": round(times[b] / times[a], 2) for a, b in SPEEDUPS},
                       "optimized_ops": graphs}
                rows.append(row)
                us = "  ".join(f"{nm}={t:.1f}" for nm, t in row["us"].items())
                sp = "  ".join(f"{key}={v:.2f}x" for key, v in row["speedup"].items())
                print(f"{n}x{k} M={m}: us {us}\n    speed-up {sp}", flush=True)
    print("\n| W (NxK) | M | " + " | ".join(f"{a} vs {b}" for a, b in SPEEDUPS) + " |")
    print("|---|---|" + "---|" * len(SPEEDUPS))
    for r in rows:
        print(f"| {r['n']}x{r['k']} | {r['m']} | " + " | ".join(f"{v:.2f}x" for v in r["speedup"].values()) + " |")
    if rows:
        names = list(rows[0]["gops"])
        print("\nGOPS (2*M*N*K / time; fraction of the int8 peak)")
        print("| W (NxK) | M | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
        for r in rows:
            cells = [f"{r['gops'][nm]:.1f}" + (f" ({r['peak_frac'][nm]:.2f})" if r["peak_frac"] else "") for nm in names]
            print(f"| {r['n']}x{r['k']} | {r['m']} | " + " | ".join(cells) + " |")
    minilm = None
    if args.minilm:
        minilm = minilm_e2e(args.rounds, args.burst_ms, time.thread_time if args.clock == "cpu" else time.perf_counter)
        print("\nzoo:minilm-l6 (example input):", json.dumps(minilm))
    if args.json:
        args.json.write_text(json.dumps({"isa": isa, "int8_peak_gops": peak, "cache": args.cache, "clock": args.clock,
                                         "rows": rows, "minilm": minilm}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
