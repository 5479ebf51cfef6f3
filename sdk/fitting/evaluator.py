"""What a fit plugs into the engine: materialize plans with ``devicefit.compress``, measure them on an agent.

Every measurement goes through the transport to an agent: the device's (``--device grpc://…``,
``source="device:<id>"``) or, without one, an agent spawned on loopback for the fit
(:func:`measuring_device`, device id ``host``) — a separate process, so the memory measured is the agent's and
not this torch-laden process's, and torch threads do not compete with the runs.

Every benchmark goes through the agent's measuring rule (:func:`devicefit.agent.benchmark.timed_runs`: at
least ``runs`` timed runs and at least a time floor), the same rule ``devicefit bench`` uses: the fp32
baseline's blocks with the floor of ``devicefit bench`` (:data:`devicefit.defaults.MIN_SECONDS`), the short
interleaved blocks with :data:`devicefit.defaults.BLOCK_MIN_SECONDS`. A candidate's memory is the agent's
``model_memory_mb``: its own peak over the idle agent, what the memory budget applies to.

Candidates use devicefit's own kernel ops (``ai.devicefit``: 2:4 sparse int8, 2- / 3-bit weights) only when the
agent reports the kernel library (``GetInfo`` ``custom_kernels``, :attr:`FitEvaluator.kernels`); the search offers
those techniques only then (``SpaceConfig.kernels``).

``format="tflite"``: every candidate (the fp32 baseline too) is a ``.tflite`` written by ``devicefit.compress``
(verified against torch with LiteRT) and measured on the agent's LiteRT runner. LiteRT reports no per-op
times, so those benchmarks run without ``per_node`` and the latency model learns end-to-end times only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from devicefit import defaults
from devicefit.bundle import ModelBundle
from devicefit.compressor.plan import Plan
from devicefit.compressor.search.candidate import Materialized, Timing
from devicefit.device import Device
from devicefit.errors import DeviceError, UserInputError
from devicefit.fitting.config import RUNTIMES
from devicefit.fitting.interleave import interleave, median, rel_mad

#: reference / candidate block size: ``runs // ROUNDS`` timed runs (at least 5), and at least
#: :data:`devicefit.defaults.BLOCK_MIN_SECONDS` of them (a block of 10 runs of a 0.2 ms model is 2 ms of work,
#: where one scheduler hiccup moves its p50 and with it the load estimate)
ROUNDS = 3
#: the device id of the agent a fit spawns on this host when no device is given
HOST_DEVICE_ID = "host"


@contextmanager
def measuring_device(url: str | None) -> Iterator[Device]:
    """The device a fit measures on: ``url``'s agent, or one spawned on loopback for the fit (its model store in
    a temporary folder, removed afterwards)."""
    import tempfile

    from devicefit.device import connect

    if url:
        with connect(url) as dev:
            yield dev
        return
    from devicefit.agent.launch import spawn_agent

    with tempfile.TemporaryDirectory(prefix="devicefit-agent-") as store, \
            spawn_agent(Path(store) / "store", device_id=HOST_DEVICE_ID) as agent, connect(agent.url) as dev:
        yield dev


class FitEvaluator:
    """Materializes plans of one bundle and measures them on one agent (the engine's ``Evaluator``)."""

    def __init__(self, bundle: ModelBundle, device: Device, *, workdir: Path, profile: Any = None, runs: int = defaults.RUNS,
                 warmup: int = defaults.WARMUP, threads: int | None = None, batch_size: int = 1,
                 format: str = "onnx") -> None:
        if format not in RUNTIMES:
            raise UserInputError(f"unknown export format {format!r}", f"use one of {', '.join(RUNTIMES)}")
        if format == "tflite" and bundle.module is None:
            raise UserInputError(f"{bundle.name} is an ONNX graph: a TFLite fit needs the PyTorch model",
                                 "pass the PyTorch model (zoo:NAME, file.pt2, package.module:factory), or fit with --format onnx")
        self.bundle = bundle
        self.format = format
        self.runtime = RUNTIMES[format]
        #: per-op times: onnxruntime's profiler; LiteRT has none
        self.per_node = format == "onnx"
        #: inputs per benchmark run
        self.batch_size = int(batch_size)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.profile = profile
        self.device = device
        self.runs, self.warmup, self.threads = runs, warmup, threads
        self._fp32: Materialized | None = None
        self._last_model_id: str | None = None
        self._ref: str | None = None  # the reference's model id on the agent
        self._ids: dict[Path, str] = {}  # file measured -> its model id on the agent
        self._ref_base: float | None = None
        self._info = dict(device.info())
        self.device_id = str(self._info.get("device_id") or device.id)
        rt = self._info.get("runtimes") or {}
        if format == "tflite" and isinstance(rt, dict) and not (rt.get("litert") or rt.get("tflite_runtime")):
            raise DeviceError(f"the agent on {self.device_id} has no LiteRT runtime to run .tflite candidates",
                              "install ai-edge-litert (or tflite-runtime) on the board and restart the agent, "
                              "or fit with --format onnx")
        #: the agent runs devicefit's kernel library (ONNX candidates only): candidates may use its ops
        self.kernels = format == "onnx" and bool(self._info.get("custom_kernels"))

    # ------------------------------------------------------------------------------ materialize
    def fp32(self) -> Materialized:
        """The unmodified model exported once (verified against torch), with its metric on the evaluation
        data; reused as the quantizers' input."""
        if self._fp32 is None:
            from devicefit.metrics import score
            from devicefit.runtime import run_onnx

            out = self.workdir / f"fp32.{self.format}"
            if self.format == "tflite":  # the float32 .tflite, verified with LiteRT; its metric against torch
                from devicefit.compress import compress

                res = compress(self.bundle, Plan(), out=out, format="tflite", profile=self.profile, progress=False)
                self._fp32 = Materialized(out, int(res.size_bytes), *self._count(), metric=res.metric.to_dict())
                return self._fp32
            if self.bundle.module is not None:
                from devicefit.compressor.export import export_bundle

                size = int(export_bundle(self.bundle, out).size_bytes)
            else:
                if self.bundle.onnx_path is None:  # pragma: no cover - load_model always sets one of them
                    raise DeviceError("bundle has neither a module nor an ONNX file", "load it with devicefit.load_model")
                out.write_bytes(Path(self.bundle.onnx_path).read_bytes())
                size = out.stat().st_size
            data = self.bundle.eval or self.bundle.calib
            metric: dict[str, Any] = {"name": self.bundle.metric, "baseline": None, "compressed": None, "drop": 0.0,
                                      "data": "fp32 reference"}
            if data is not None:
                ref = run_onnx(out, data, input_names=self.bundle.input_names)
                metric = score(self.bundle.metric, ref, ref, data.labels, data=data.description or "eval").to_dict()
            self._fp32 = Materialized(out, size, *self._count(), metric=metric)
        return self._fp32

    def _count(self) -> tuple[int, int]:
        if self.bundle.module is None:  # an ONNX input: counted on its graph (MACs per sample)
            from devicefit.compressor.analysis import analyze_onnx

            if self.bundle.onnx_path is None:  # pragma: no cover - load_model always sets one of them
                return 0, 0
            shapes = {n: [1, *getattr(a, "shape", (1,))[1:]] for n, a in
                      zip(self.bundle.input_names, self.bundle.example_inputs, strict=False)}
            g = analyze_onnx(self.bundle.onnx_path, shapes)
            return int(g.params), int(g.macs)
        from devicefit.compressor.analysis import analyze

        a = analyze(self.bundle.module, self.bundle.example_inputs)
        return int(a.params), int(a.macs)

    def materialize(self, plan: Plan, *, name: str) -> Materialized:
        if not plan.rules and plan.distill is None:
            return self.fp32()
        from devicefit.compress import compress

        fp32 = self.fp32()
        # the fp32 ONNX export we already have is the quantizers' input (graph-level plans) and the reference;
        # a TFLite candidate is converted from the torch model
        source: ModelBundle = replace(self.bundle, onnx_path=fp32.path) if self.format == "onnx" else self.bundle
        # the search's LowRank options carry asvd_method="whiten" (LowRank.search_settings)
        res = compress(source, plan, out=self.workdir / f"{name}.{self.format}", format=self.format, profile=self.profile,
                       progress=False, kernels=self.kernels)
        metric = res.metric.to_dict()
        params = int(getattr(res, "params", 0) or 0) or fp32.params
        macs = int(getattr(res, "macs", 0) or 0) or fp32.macs
        if self.bundle.module is None:  # an ONNX input's plans only quantize: counts are the fp32 graph's
            params, macs = fp32.params, fp32.macs
        extra = {"float_fallback_layers": list(getattr(res, "float_fallback_layers", []) or []),
                 "int_ops": dict(getattr(res, "int_ops", {}) or {}), "fidelity": dict(getattr(res, "fidelity", {}) or {})}
        return Materialized(Path(res.path), int(res.size_bytes), params, macs, metric, reference=fp32.path, extra=extra)

    # ------------------------------------------------------------------------------ measure
    def measure(self, path: Path) -> Timing:
        """Benchmark ``path`` on the agent (per-node times included). Once a reference is set (the fp32
        baseline), the candidate's timed blocks are interleaved with the reference's
        (:mod:`devicefit.fitting.interleave`: each candidate block bracketed by reference blocks, 3 to 16
        rounds until they agree), then the per-node run. ``Timing.p50_ms`` is the median of the candidate
        blocks' p50s — what was measured, as it was. ``Timing.load`` is that p50 ÷ (median per-round candidate
        / reference ratio × the reference's p50 at the baseline): the device's load while the candidate ran
        relative to when the baseline was measured (shared boards and hosts speed up and slow down over
        minutes); ``p50_ms / load`` is the candidate at the baseline's load, which is what the latency model
        learns."""
        dep = self.device.deploy(path, progress=False, activate=False)
        self._last_model_id = self._ids[Path(path)] = cid = str(dep.sha256)
        if self._ref is None:
            return self._plain(cid)
        k = max(5, self.runs // ROUNDS)
        ref_id = self._ref
        pair = interleave(lambda: self._p50(ref_id, k), lambda: self._p50(cid, k))
        # per-node times are means over the profiled runs: all ``runs`` of them, so the load's tail averages out
        timing = self._timing(self.device.benchmark(cid, runs=self.runs, warmup=2, threads=self.threads, per_node=self.per_node,
                                                    batch_size=self.batch_size))
        timing.p50_ms = median(pair.cands)
        timing.rounds, timing.spread = len(pair.cands), pair.spread
        if self._ref_base:
            timing.load = timing.p50_ms / (pair.ratio * self._ref_base)
        return timing

    def block_p50(self, path: Path) -> float:
        """p50 of one timed block of ``path`` (as long as the interleaved blocks of :meth:`measure`)."""
        cid = self._ids.get(Path(path))
        if cid is None:
            cid = self._ids[Path(path)] = str(self.device.deploy(path, progress=False, activate=False).sha256)
        return self._p50(cid, max(5, self.runs // ROUNDS))

    def _plain(self, model_id: str) -> Timing:
        """The first measurement (the fp32 baseline, before there is a reference): three blocks under the
        measuring rule of ``devicefit bench`` (``runs`` timed runs and at least :data:`defaults.MIN_SECONDS`),
        the first with per-node times; its p50 is the median of the three blocks' p50s (one block can land on
        a load spike, and this p50 becomes the reference's load-1 level)."""
        timing = self._timing(self.device.benchmark(model_id, runs=self.runs, warmup=self.warmup, threads=self.threads,
                                                    per_node=self.per_node, batch_size=self.batch_size,
                                                    min_seconds=defaults.MIN_SECONDS))
        blocks = [timing.p50_ms, *(self._p50(model_id, self.runs, defaults.MIN_SECONDS) for _ in range(2))]
        timing.p50_ms, timing.rounds, timing.spread = median(blocks), len(blocks), rel_mad(blocks)
        return timing

    def _timing(self, report: Any) -> Timing:
        return Timing.from_report(report.to_dict(), device=self.device_id)

    def _p50(self, model_id: str, runs: int, min_seconds: float = defaults.BLOCK_MIN_SECONDS) -> float:
        """p50 of one timed block: at least ``runs`` runs and at least ``min_seconds`` (the agent's rule)."""
        return float(self.device.benchmark(model_id, runs=runs, warmup=2, threads=self.threads, per_node=False,
                                           batch_size=self.batch_size, min_seconds=min_seconds).p50_ms)

    def mark_reference(self, p50_ms: float) -> None:
        """The model measured last (the fp32 baseline, ``p50_ms``) becomes the load reference; that p50 is
        the load-1 level, so the baseline and everything measured later share one scale."""
        if self._last_model_id is not None:
            self._ref = self._last_model_id
            self._ref_base = float(p50_ms)

    @property
    def reference_level(self) -> float | None:
        """The load reference's p50 at load 1 (the fp32 baseline's), once it is set."""
        return self._ref_base

    def runtime_key(self) -> tuple[dict[str, str], int]:
        rt = self._info.get("runtimes") or self._info.get("runtime_versions") or {}
        versions = {str(k): str(v) for k, v in rt.items()} if isinstance(rt, dict) else {"runtimes": str(rt)}
        return versions, int(self.threads or 0)
