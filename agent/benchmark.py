"""Latency / memory benchmark of one model file — the same code on the host and on the device.

``benchmark_onnx(path)`` loads the model with its runner (timed: ``load_ms``), runs ``warmup`` untimed
runs, then timed runs (wall clock around each run call) under **the measuring rule** of :func:`timed_runs`:
at least ``runs`` of them, and more until they add up to ``min_seconds`` (capped at ``max_runs``). At
sub-millisecond latencies a fixed small count is noise (50 runs of a 0.2 ms model are 10 ms of work, which
one scheduler hiccup moves); a time floor makes every reading cover the same stretch of time. This is the
one place the rule lives: ``devicefit bench`` (on this host, or ``--on URL`` through an agent) and every
benchmark a fit asks of its agent run it, with the floors of :mod:`devicefit.defaults`. The report gives
p50/p90/p99/mean, the spread (p10, the interquartile range, min/max), the runs actually made and their
summed time.

Memory: the runner's runtime is first brought to its loaded-idle state (``RunnerSpec.prepare``: onnxruntime
imported and its environment created) and freed memory is returned to the OS
(:func:`~devicefit.agent.rss.release_free_memory`); the RSS then is the baseline — the agent idle, with
whatever other model it holds. ``model_memory_mb`` is the peak RSS over load + runs minus that baseline: the
model's own memory, what a memory budget applies to. ``run_memory_mb`` is how much the runs added over the
loaded model: onnxruntime's arena and activation buffers (onnxruntime does not expose its CPU arena's size
to Python; the RSS already includes it). ``peak_rss_mb`` stays the whole process's peak.

With ``per_node=True`` a second, profiling session of the same model runs ``warmup + runs`` more times
(``runs`` as asked, not raised by the time floor: a trace per run) and the profiler's per-node kernel times
(averaged over the timed runs) are reported; the timed latencies always come from the non-profiling session,
so profiling overhead never inflates them. ``per_node_e2e_ms`` is the mean wall time of the profiled runs: the
per-node sum is always below it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from devicefit.agent.rss import PeakRss, release_free_memory
from devicefit.agent.runners import Runner, TensorSpec, runner_for
from devicefit.errors import ModelLoadError, UserInputError
from devicefit.protos import errors as E
from devicefit.protos.errors import AgentError
from devicefit.protos.report import BenchReport, NodeTime

#: symbolic dims whose name looks like a sequence length get this size; other symbolic dims DEFAULT_DIM
DEFAULT_SEQ_LEN = 128
DEFAULT_DIM = 32
#: the most timed runs a time floor may add up to (a 10 µs model would otherwise run 50,000 times in 0.5 s)
MAX_RUNS = 10_000
#: the longest time floor a request may ask for (seconds)
MAX_MIN_SECONDS = 60.0
_SEQ_HINTS = ("seq", "len", "token", "sentence", "time")


def default_threads() -> int:
    """The thread count onnxruntime uses when none is given (one per physical core)."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except ImportError:  # pragma: no cover
        n = None
    return int(n or os.cpu_count() or 1)


def _resolve_dim(dim: int | str | None, axis: int, batch_size: int) -> int:
    if isinstance(dim, int) and dim > 0:
        return dim
    name = str(dim or "").lower()
    if axis == 0 or "batch" in name or name in ("n", "b"):
        return batch_size
    if any(h in name for h in _SEQ_HINTS) or axis == 1:
        return DEFAULT_SEQ_LEN
    return DEFAULT_DIM


def make_inputs(specs: Sequence[TensorSpec], *, batch_size: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid inputs generated from the model's input spec.

    Symbolic dims: axis 0 / batch-named -> ``batch_size``; sequence-like (or axis 1) -> DEFAULT_SEQ_LEN;
    others -> DEFAULT_DIM. Floats: standard normal. Integers: ``*mask*`` -> ones, ``*type*``/``*segment*``
    -> zeros, ``*position*`` -> arange, otherwise small ids in [1, 1000) (valid for any real vocabulary).
    """
    if batch_size < 1:
        raise UserInputError(f"batch_size={batch_size} is not positive", "pass batch_size >= 1")
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = tuple(_resolve_dim(d, i, batch_size) for i, d in enumerate(spec.shape))
        dtype = np.dtype(spec.dtype)
        lname = spec.name.lower()
        if dtype == np.bool_:
            arr = np.ones(shape, dtype=dtype)
        elif np.issubdtype(dtype, np.floating):
            arr = rng.standard_normal(shape).astype(dtype)
        elif "mask" in lname:
            arr = np.ones(shape, dtype=dtype)
        elif "type" in lname or "segment" in lname:
            arr = np.zeros(shape, dtype=dtype)
        elif "position" in lname and shape:
            arr = np.broadcast_to(np.arange(shape[-1]), shape).astype(dtype)
        elif np.issubdtype(dtype, np.integer):
            hi = min(1000, int(np.iinfo(dtype).max) + 1)
            lo = 1 if hi > 1 else 0
            arr = rng.integers(lo, hi, size=shape).astype(dtype)
        else:  # pragma: no cover - runners only report the dtypes above
            raise UserInputError(f"input {spec.name!r} has dtype {dtype}", "supply the inputs yourself")
        out[spec.name] = arr
    return out


def check_inputs(specs: Sequence[TensorSpec], inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Supplied inputs matched against the spec: all names present, none extra, dtypes cast when safe."""
    want = [s.name for s in specs]
    missing = [n for n in want if n not in inputs]
    extra = [n for n in inputs if n not in want]
    if missing or extra:
        raise UserInputError(
            f"supplied inputs do not match the model: missing {missing}, unexpected {extra}",
            f"supply exactly the inputs {want}",
        )
    out: dict[str, np.ndarray] = {}
    for s in specs:
        arr = np.asarray(inputs[s.name])
        if arr.dtype != np.dtype(s.dtype):
            if not np.can_cast(arr.dtype, s.dtype, casting="same_kind"):
                raise UserInputError(
                    f"input {s.name!r} has dtype {arr.dtype}, the model wants {s.dtype}", f"pass a {s.dtype} array"
                )
            arr = arr.astype(s.dtype)
        out[s.name] = np.ascontiguousarray(arr)
    return out


def _check_stop(should_stop: Callable[[], bool] | None, i: int) -> None:
    """Raise AgentError(CANCELLED) when ``should_stop()`` says so (asked every 8th run: it may cost a lock)."""
    if should_stop is not None and i % 8 == 0 and should_stop():
        raise AgentError(E.CANCELLED, "benchmark cancelled: the client left")


def timed_runs(
    runner: Runner,
    feeds: Mapping[str, np.ndarray],
    *,
    warmup: int,
    runs: int,
    min_seconds: float = 0.0,
    max_runs: int = MAX_RUNS,
    should_stop: Callable[[], bool] | None = None,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> np.ndarray:
    """The measuring rule: ``warmup`` untimed runs, then timed runs until there are at least ``runs`` of them
    **and** their times add up to ``min_seconds`` — or ``max(runs, max_runs)`` runs were made. Returns each
    timed run's milliseconds. ``clock``: a nanosecond clock (tests inject a simulated one)."""
    for i in range(warmup):
        _check_stop(should_stop, i)
        runner.run(feeds)
    floor_ns = max(0.0, float(min_seconds)) * 1e9
    cap = max(runs, max_runs)
    times: list[float] = []
    total_ns = 0
    while len(times) < runs or (total_ns < floor_ns and len(times) < cap):
        _check_stop(should_stop, len(times))
        t0 = clock()
        runner.run(feeds)
        dt = clock() - t0
        total_ns += dt
        times.append(dt / 1e6)
    return np.asarray(times, dtype=np.float64)


def benchmark_onnx(
    path: str | Path,
    *,
    runs: int = 50,
    warmup: int = 5,
    threads: int | None = None,
    inputs: Mapping[str, np.ndarray] | None = None,
    per_node: bool = False,
    batch_size: int = 1,
    source: str = "host",
    runner: str | None = None,
    should_stop: Callable[[], bool] | None = None,
    min_seconds: float = 0.0,
    max_runs: int = MAX_RUNS,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> BenchReport:
    """Benchmark a model file (.onnx via onnxruntime, .tflite via LiteRT) — see the module docstring.

    ``runs`` / ``min_seconds`` / ``max_runs``: the measuring rule (:func:`timed_runs`); ``clock`` times the
    runs (a nanosecond clock; tests inject a simulated one)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file {str(path)!r} does not exist", "pass the path of an .onnx or .tflite file")
    if runs < 1:
        raise UserInputError(f"runs={runs} is not positive", "pass runs >= 1")
    if warmup < 0:
        raise UserInputError(f"warmup={warmup} is negative", "pass warmup >= 0")
    if threads is not None and threads < 1:
        raise UserInputError(f"threads={threads} is not positive", "pass threads >= 1, or omit it for the default")
    if not 0.0 <= min_seconds <= MAX_MIN_SECONDS:
        raise UserInputError(f"min_seconds={min_seconds} is out of range",
                             f"pass a time floor between 0 and {MAX_MIN_SECONDS:g} seconds (0 = exactly `runs` runs)")
    if max_runs < 1:
        raise UserInputError(f"max_runs={max_runs} is not positive", "pass max_runs >= 1")
    spec = runner_for(path, name=runner)
    if per_node and not spec.per_node:
        raise UserInputError(
            f"per-node times are not available for {path.suffix} models (runner {spec.name!r})",
            "benchmark without per_node",
        )
    spec.prepare()  # the runtime's idle cost belongs to the agent, not to this model
    release_free_memory()
    with PeakRss() as load_rss:
        t0 = time.perf_counter_ns()
        model = spec.factory(path, threads=threads)
        load_ms = (time.perf_counter_ns() - t0) / 1e6
    try:
        specs = model.inputs()
        feeds = check_inputs(specs, inputs) if inputs is not None else make_inputs(specs, batch_size=batch_size)
        with PeakRss() as run_rss:
            times = timed_runs(model, feeds, warmup=warmup, runs=runs, min_seconds=min_seconds, max_runs=max_runs,
                               should_stop=should_stop, clock=clock)
        options = model.session_options()
    finally:
        model.close()
        del model
    nodes: list[NodeTime] = []
    per_node_e2e = 0.0
    if per_node:
        prof = spec.factory(path, threads=threads, profile=True)
        try:
            per_node_e2e = float(timed_runs(prof, feeds, warmup=warmup, runs=runs, should_stop=should_stop).mean())
            nodes = prof.node_times(last_runs=runs)
        finally:
            prof.close()
    p10, p25, p50, p75, p90, p99 = (float(v) for v in np.percentile(times, [10, 25, 50, 75, 90, 99]))
    peak = max(load_rss.peak_mb, run_rss.peak_mb)
    return BenchReport(
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        mean_ms=float(times.mean()),
        load_ms=float(load_ms),
        peak_rss_mb=float(peak),
        runs=int(times.size),
        threads=int(threads or default_threads()),
        source=source,
        per_node=nodes,
        runtime={"runner": spec.name, **spec.versions(), "numpy": np.__version__},
        session_options={**options, "rss_method": load_rss.method},
        warmup=warmup,
        batch_size=batch_size,
        min_ms=float(times.min()),
        max_ms=float(times.max()),
        baseline_rss_mb=float(load_rss.baseline_mb),
        per_node_e2e_ms=per_node_e2e,
        p10_ms=p10,
        iqr_ms=p75 - p25,
        timed_s=float(times.sum()) / 1e3,
        min_seconds=float(min_seconds),
        model_memory_mb=max(0.0, float(peak - load_rss.baseline_mb)),
        run_memory_mb=max(0.0, float(run_rss.peak_mb - run_rss.baseline_mb)),
    )


#: the benchmark is not ONNX-only; this is the format-neutral name
benchmark = benchmark_onnx
