"""Measure this machine's fp32 / int8 GEMM throughput and memory bandwidth THROUGH onnxruntime.

Tiny ONNX graphs are built in memory with ``onnx.helper`` (``onnx`` is in the ``agent`` extra) and run
with I/O binding into preallocated outputs, so allocation does not count:

* fp32: ``MatMul`` A[M,K] x B[K,N] (B an initializer, as in a real model's Linear layer);
* int8: ``MatMulInteger`` u8 activations x s8 weights -> int32 (the op onnxruntime's dynamic/static int8
  quantization lowers to, and the one its VNNI / dotprod kernels serve);
* bandwidth: ``Add`` of a scalar over a fp32 tensor of ≥ 64 MiB and ≥ 4x the last-level cache, counted as
  bytes read + bytes written (a numpy copy is timed beside it for reference, in ``details``).

GOPS = 2·M·N·K / best time (one multiply-add = 2 ops). Best-of-N is reported as the peak; the median is
kept in ``details``. No torch.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from devicefit.errors import DevicefitError
from devicefit.kernels.ort_session import cpu_session, session_options

OPSET = 17
IR_VERSION = 8  # readable by onnxruntime ≥ 1.11, so old board images can run the probe too


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - only where the agent extra is half-installed
        raise DevicefitError(
            "the microbenchmark needs the `onnx` package to build its test graphs",
            "pip install 'devicefit[agent]' (or: pip install onnx)",
        ) from exc
    return onnx


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover
        raise DevicefitError("the microbenchmark needs onnxruntime", "pip install 'devicefit[agent]'") from exc
    return onnxruntime


def _model_bytes(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any]) -> bytes:
    onnx = _onnx()
    h = onnx.helper
    graph = h.make_graph(nodes, "devicefit_microbench", inputs, outputs, initializer=inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], producer_name="devicefit")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def gemm_fp32_model(m: int, n: int, k: int, seed: int = 0) -> bytes:
    onnx = _onnx()
    h, tp = onnx.helper, onnx.TensorProto
    b = np.random.default_rng(seed).standard_normal((k, n), dtype=np.float32)
    return _model_bytes(
        [h.make_node("MatMul", ["A", "B"], ["Y"])],
        [h.make_tensor_value_info("A", tp.FLOAT, [m, k])],
        [h.make_tensor_value_info("Y", tp.FLOAT, [m, n])],
        [onnx.numpy_helper.from_array(b, "B")],
    )


def gemm_int8_model(m: int, n: int, k: int, seed: int = 0) -> bytes:
    """``MatMulInteger``: A uint8 (zero point 128, an input) x B int8 (an initializer) -> int32."""
    onnx = _onnx()
    h, tp = onnx.helper, onnx.TensorProto
    b = np.random.default_rng(seed).integers(-127, 128, size=(k, n), dtype=np.int8)
    return _model_bytes(
        [h.make_node("MatMulInteger", ["A", "B", "a_zp"], ["Y"])],
        [h.make_tensor_value_info("A", tp.UINT8, [m, k])],
        [h.make_tensor_value_info("Y", tp.INT32, [m, n])],
        [onnx.numpy_helper.from_array(b, "B"), onnx.numpy_helper.from_array(np.array(128, np.uint8), "a_zp")],
    )


def stream_add_model(numel: int) -> bytes:
    onnx = _onnx()
    h, tp = onnx.helper, onnx.TensorProto
    return _model_bytes(
        [h.make_node("Add", ["X", "c"], ["Y"])],
        [h.make_tensor_value_info("X", tp.FLOAT, [numel])],
        [h.make_tensor_value_info("Y", tp.FLOAT, [numel])],
        [onnx.numpy_helper.from_array(np.array([1.0], np.float32), "c")],
    )


def _session(model: bytes, threads: int, optimized_path: str | None = None) -> Any:
    _ort()  # a clear error where onnxruntime is missing
    # the "optimized model is hardware specific" warning is expected here (silenced by session_options)
    return cpu_session(model, session_options(threads=threads, optimized_model_path=optimized_path))


def _bound_runner(sess: Any, feed: np.ndarray, out: np.ndarray) -> Callable[[], None]:
    ort = _ort()
    binding = sess.io_binding()
    binding.bind_ortvalue_input(sess.get_inputs()[0].name, ort.OrtValue.ortvalue_from_numpy(feed))
    binding.bind_ortvalue_output(sess.get_outputs()[0].name, ort.OrtValue.ortvalue_from_numpy(out))

    def run() -> None:
        sess.run_with_iobinding(binding)

    return run


def _time(run: Callable[[], None], seconds: float, *, min_runs: int = 3, max_runs: int = 200) -> dict[str, Any]:
    run()  # warm-up (first run packs weights, faults pages in)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < min_runs or (time.perf_counter() < deadline and len(times) < max_runs):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return {"runs": len(times), "best_s": min(times), "median_s": statistics.median(times)}


def _optimized_ops(path: str) -> list[str]:
    onnx = _onnx()
    return sorted({node.op_type for node in onnx.load(path, load_external_data=False).graph.node})


def _gemm(kind: str, size: int, threads: int, seconds: float, tmp: str) -> dict[str, Any]:
    """Time one square GEMM; halve the size while one run would eat over a quarter of the slice."""
    while True:
        m = n = k = size
        rng = np.random.default_rng(1)
        a: np.ndarray
        out: np.ndarray
        if kind == "fp32":
            model, op = gemm_fp32_model(m, n, k), "MatMul"
            a, out = rng.standard_normal((m, k), np.float32), np.empty((m, n), np.float32)
        else:
            model, op = gemm_int8_model(m, n, k), "MatMulInteger"
            a, out = rng.integers(0, 256, size=(m, k), dtype=np.uint8), np.empty((m, n), np.int32)
        opt_path = os.path.join(tmp, f"{kind}.opt.onnx")
        run = _bound_runner(_session(model, threads, opt_path), a, out)
        run()  # pack weights
        t0 = time.perf_counter()
        run()
        if time.perf_counter() - t0 <= seconds / 4 or size <= 128:
            break
        size //= 2
    t = _time(run, seconds)
    ops = 2.0 * m * n * k
    return {
        "op": op,
        "dtypes": "f32 x f32 -> f32" if kind == "fp32" else "u8 x s8 -> s32",
        "m": m, "n": n, "k": k,
        "gops": ops / t["best_s"] / 1e9,
        "gops_median": ops / t["median_s"] / 1e9,
        "optimized_ops": _optimized_ops(opt_path),
        **t,
    }


def _last_level_cache_mib() -> int:
    """Largest CPU cache in MiB from sysfs (0 when the OS does not say)."""
    best = 0
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip().upper() if f.is_file() else ""
        try:
            kib = int(text[:-1]) * 1024 if text.endswith("M") else int(text.rstrip("K"))
        except ValueError:
            continue
        best = max(best, kib // 1024)
    return best


def auto_bandwidth_mib() -> int:
    """≥ 64 MiB and ≥ 4x the last-level cache (so the stream is not served from cache), ≤ 1/8 of RAM."""
    mib = max(64, 4 * _last_level_cache_mib())
    try:
        ram_mib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
        mib = min(mib, max(16, ram_mib // 8))
    except (ValueError, OSError, AttributeError):
        pass
    return int(mib)


def _bandwidth(mib: int, threads: int, seconds: float) -> dict[str, Any]:
    numel = mib * 2**20 // 4
    x = np.ones(numel, np.float32)
    y = np.empty_like(x)
    sess = _session(stream_add_model(numel), threads)
    t = _time(_bound_runner(sess, x, y), seconds, min_runs=3, max_runs=100)
    moved = 2.0 * x.nbytes  # read X + write Y
    # a plain numpy copy beside it, for reference (single-threaded memcpy)
    t_np = _time(lambda: np.copyto(y, x), min(seconds, 0.3), min_runs=3, max_runs=50)
    return {
        "method": "onnxruntime Add(X, 1.0) over a fp32 tensor with I/O binding; bytes = read + write",
        "tensor_mib": mib,
        "bytes_per_run": int(moved),
        "gbs": moved / t["best_s"] / 1e9,
        "gbs_median": moved / t["median_s"] / 1e9,
        "numpy_copy_gbs": moved / t_np["best_s"] / 1e9,
        **t,
    }


def measure_throughput(
    *, seconds_budget: float = 3.0, threads: int | None = None, gemm_size: int = 1024, bandwidth_mib: int | None = None
) -> dict[str, Any]:
    """Peak fp32 / int8 GEMM GOPS and memory bandwidth of this machine, measured through onnxruntime.

    ``seconds_budget`` is the timing time (session creation and warm-up come on top, well under a
    second on a desktop). ``bandwidth_mib`` defaults to :func:`auto_bandwidth_mib`. ``threads`` defaults to every logical core, like a deployment that owns the board.
    """
    if seconds_budget <= 0:
        raise ValueError(f"seconds_budget must be > 0, got {seconds_budget}")
    bandwidth_mib = bandwidth_mib or auto_bandwidth_mib()
    if gemm_size < 16 or bandwidth_mib < 1:
        raise ValueError(f"gemm_size must be ≥ 16 and bandwidth_mib ≥ 1, got {gemm_size}, {bandwidth_mib}")
    ort = _ort()
    nthreads = threads or os.cpu_count() or 1
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="devicefit-microbench-") as tmp:
        fp32 = _gemm("fp32", gemm_size, nthreads, 0.4 * seconds_budget, tmp)
        int8 = _gemm("int8", gemm_size, nthreads, 0.4 * seconds_budget, tmp)
    bw = _bandwidth(bandwidth_mib, nthreads, 0.2 * seconds_budget)
    return {
        "peak_gops_fp32": round(fp32["gops"], 2),
        "peak_gops_int8": round(int8["gops"], 2),
        "mem_bandwidth_gbs": round(bw["gbs"], 2),
        "details": {
            "threads": nthreads,
            "onnxruntime": ort.__version__,
            "fp32": fp32,
            "int8": int8,
            "bandwidth": bw,
            "wall_s": round(time.perf_counter() - t0, 3),
            "formula": "GOPS = 2*M*N*K / best time; GB/s = bytes moved / best time",
        },
    }
