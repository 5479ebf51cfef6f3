"""What a fit plugs into the search: materialize plans with ``devicefit.compress``, measure on a device or
on the host.

Host measurements run ``benchmark_onnx`` (the agent's own benchmark) in a fresh Python process, so the
peak RSS is the model's, not this torch-laden process's, and torch threads do not compete with the run.
They are labelled ``source="host"``, ``device="host"``. Device measurements deploy the file to the agent
and ask it to benchmark it with per-node times (``source="device:<id>"``).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from devicefit.bundle import ModelBundle
from devicefit.compressor.plan import Plan
from devicefit.compressor.search.candidate import Materialized, Timing
from devicefit.errors import DeviceError
from devicefit.fit_measure import Interleaved, interleave, median, rel_mad

_HOST_BENCH = (
    "import json, sys\n"
    "from devicefit.agent.benchmark import benchmark_onnx\n"
    "r = benchmark_onnx(sys.argv[1], runs=int(sys.argv[2]), warmup=int(sys.argv[3]),"
    " threads=(int(sys.argv[4]) or None), per_node=sys.argv[5] == '1', batch_size=int(sys.argv[6]))\n"
    "sys.stdout.write(json.dumps(r.to_dict()))\n"
)


_HOST_PAIR = (
    "import json, sys\n"
    "from devicefit.agent.benchmark import benchmark_onnx\n"
    "from devicefit.fit_measure import interleave\n"
    "ref, cand, runs, threads, bs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) or None, int(sys.argv[5])\n"
    "def p50(path):\n"
    "    return benchmark_onnx(path, runs=runs, warmup=2, threads=threads, batch_size=bs).p50_ms\n"
    "pair = interleave(lambda: p50(ref), lambda: p50(cand))\n"
    "r = benchmark_onnx(cand, runs=int(sys.argv[6]), warmup=2, threads=threads, per_node=True, batch_size=bs)\n"
    "sys.stdout.write(json.dumps({'report': r.to_dict(), **pair.to_dict()}))\n"
)
#: reference / candidate block size: ``runs // ROUNDS`` timed runs (at least 5) ...
ROUNDS = 3
#: ... and at least this many milliseconds of them: a block of 10 runs of a 0.2 ms model is 2 ms of work,
#: where one scheduler hiccup moves its p50 and with it the load estimate
MIN_BLOCK_MS = 50.0


def _timing(rep: Any, device: str) -> Timing:
    d = rep.to_dict() if hasattr(rep, "to_dict") else dict(rep)
    return Timing(
        p50_ms=float(d["p50_ms"]), p90_ms=float(d.get("p90_ms", d["p50_ms"])), mean_ms=float(d.get("mean_ms", d["p50_ms"])),
        peak_rss_mb=float(d.get("peak_rss_mb", 0.0)), per_node=list(d.get("per_node", [])),
        profiled_e2e_ms=float(d["per_node_e2e_ms"]) if d.get("per_node_e2e_ms") else None,
        threads=int(d.get("threads", 0)), runtime={str(k): str(v) for k, v in (d.get("runtime") or {}).items()},
        source=str(d.get("source", "host")), device=device, batch_size=int(d.get("batch_size") or 1),
    )


def host_benchmark(path: Path, *, runs: int, warmup: int, threads: int | None, per_node: bool = True,
                   timeout: float = 600.0, batch_size: int = 1) -> Timing:
    """``benchmark_onnx`` (with per-node times by default) in a clean subprocess, ``batch_size`` inputs per run."""
    cmd = [sys.executable, "-c", _HOST_BENCH, str(path), str(runs), str(warmup), str(threads or 0), "1" if per_node else "0",
           str(int(batch_size))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise DeviceError(f"host benchmark of {path.name} failed: {tail[0][:300]}", "run `devicefit bench` on the file to see why")
    return _timing(json.loads(proc.stdout), "host")


class FitEvaluator:
    """Materializes plans of one bundle and measures them where the fit was asked to."""

    def __init__(
        self,
        bundle: ModelBundle,
        *,
        workdir: Path,
        profile: Any = None,
        device: Any = None,
        runs: int = 30,
        warmup: int = 5,
        threads: int | None = None,
        batch_size: int = 1,
    ) -> None:
        self.bundle = bundle
        #: inputs per benchmark run, on the device and on the host alike
        self.batch_size = int(batch_size)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.profile = profile
        self.device = device
        self.runs, self.warmup, self.threads = runs, warmup, threads
        self._fp32: Materialized | None = None
        self._last_model_id: str | None = None
        self._ref: tuple[str, str] | None = None  # ("device", model id) | ("host", path)
        self._ref_base: float | None = None
        self._info: dict[str, Any] = {}
        if device is not None:
            self._info = dict(device.info())
            self.device_id = str(self._info.get("device_id") or device.id)
        else:
            self.device_id = "host"

    # ------------------------------------------------------------------------------ materialize
    def fp32(self) -> Materialized:
        """The unmodified model exported once (verified against torch); reused as the quantizers' input."""
        if self._fp32 is None:
            out = self.workdir / "fp32.onnx"
            if self.bundle.module is not None:
                from devicefit.compressor.export import export_bundle

                res = export_bundle(self.bundle, out)
                size = int(res.size_bytes)
            else:
                if self.bundle.onnx_path is None:  # pragma: no cover - load_model always sets one of them
                    raise DeviceError("bundle has neither a module nor an ONNX file", "load it with devicefit.load_model")
                out.write_bytes(Path(self.bundle.onnx_path).read_bytes())
                size = out.stat().st_size
            name = self.bundle.metric
            self._fp32 = Materialized(out, size, *self._count(), metric={"name": name, "baseline": None, "compressed": None,
                                                                        "drop": 0.0, "data": "fp32 reference"})
        return self._fp32

    def _count(self) -> tuple[int, int]:
        if self.bundle.module is None:
            return 0, 0
        from devicefit.compressor.analysis import analyze

        a = analyze(self.bundle.module, self.bundle.example_inputs)
        return int(a.params), int(a.macs)

    def materialize(self, plan: Plan, *, name: str) -> Materialized:
        if not plan.rules and plan.distill is None:
            return self.fp32()
        from devicefit.compress import compress

        fp32 = self.fp32()
        # the fp32 export we already have is the quantizers' input (graph-level plans) and the reference
        source: ModelBundle = replace(self.bundle, onnx_path=fp32.path)
        # the search's LowRank options carry asvd_method="whiten" (LowRank.search_settings)
        res = compress(source, plan, out=self.workdir / f"{name}.onnx", profile=self.profile, progress=False)
        metric = res.metric.to_dict()
        params = int(getattr(res, "params", 0) or 0) or fp32.params
        macs = int(getattr(res, "macs", 0) or 0) or fp32.macs
        extra = {"float_fallback_layers": list(getattr(res, "float_fallback_layers", []) or []),
                 "int_ops": dict(getattr(res, "int_ops", {}) or {}), "fidelity": dict(getattr(res, "fidelity", {}) or {})}
        return Materialized(Path(res.path), int(res.size_bytes), params, macs, metric, reference=fp32.path, extra=extra)

    # ------------------------------------------------------------------------------ measure
    def measure(self, path: Path) -> Timing:
        """Benchmark ``path`` (per-node times included). Once a reference is set (the fp32 baseline), the
        candidate's timed blocks are interleaved with the reference's (:mod:`devicefit.fit_measure`: each
        candidate block bracketed by reference blocks, 3 to 16 rounds until they agree), then the per-node
        run. ``Timing.p50_ms`` is the median of the candidate blocks' p50s — what was measured, as it was.
        ``Timing.load`` is that p50 ÷ (median per-round candidate / reference ratio × the reference's p50 at
        the baseline): the device's load while the candidate ran relative to when the baseline was measured
        (shared boards and hosts speed up and slow down over minutes); ``p50_ms / load`` is the candidate at
        the baseline's load, which is what the latency model learns."""
        if self._ref is None:
            return self._plain(path)
        k = self._block_runs(max(5, self.runs // ROUNDS), self._ref_base)
        if self.device is None:
            self._last_model_id = str(path)
            cmd = [sys.executable, "-c", _HOST_PAIR, self._ref[1], str(path), str(k), str(self.threads or 0),
                   str(self.batch_size), str(self.runs)]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
                raise DeviceError(f"host benchmark of {path.name} failed: {tail[0][:300]}", "run `devicefit bench` on it")
            out = json.loads(proc.stdout)
            rep, pair = out["report"], Interleaved(list(out["refs"]), list(out["cands"]))
        else:
            dep = self.device.deploy(path, progress=False, activate=False)
            self._last_model_id = cid = str(dep.sha256)
            ref_id = self._ref[1]
            pair = interleave(lambda: self._device_p50(ref_id, k), lambda: self._device_p50(cid, k))
            # per-node times are means over the profiled runs: all ``runs`` of them, so the load's tail averages out
            rep = self.device.benchmark(cid, runs=self.runs, warmup=2, threads=self.threads, per_node=True,
                                        batch_size=self.batch_size)
        timing = _timing(rep, self.device_id)
        timing.p50_ms = median(pair.cands)
        timing.rounds, timing.spread = len(pair.cands), pair.spread
        if self._ref_base:
            timing.load = timing.p50_ms / (pair.ratio * self._ref_base)
        return timing

    def _plain(self, path: Path) -> Timing:
        """The first measurement (the fp32 baseline, before there is a reference): the per-node run plus two
        plain blocks (each at least :data:`MIN_BLOCK_MS` long); its p50 is the median of the three blocks'
        p50s (one block can land on a load spike, and this p50 becomes the reference's load-1 level)."""
        if self.device is None:
            self._last_model_id = str(path)
            timing = host_benchmark(path, runs=self.runs, warmup=self.warmup, threads=self.threads, batch_size=self.batch_size)
            n = self._block_runs(self.runs, timing.p50_ms)
            more = [host_benchmark(path, runs=n, warmup=2, threads=self.threads, per_node=False,
                                   batch_size=self.batch_size).p50_ms for _ in range(2)]
        else:
            dep = self.device.deploy(path, progress=False, activate=False)
            self._last_model_id = str(dep.sha256)
            rep = self.device.benchmark(self._last_model_id, runs=self.runs, warmup=self.warmup, threads=self.threads,
                                        per_node=True, batch_size=self.batch_size)
            timing = _timing(rep, self.device_id)
            more = [self._device_p50(self._last_model_id, self._block_runs(self.runs, timing.p50_ms)) for _ in range(2)]
        blocks = [timing.p50_ms, *more]
        timing.p50_ms, timing.rounds, timing.spread = median(blocks), len(blocks), rel_mad(blocks)
        return timing

    @staticmethod
    def _block_runs(runs: int, p50_ms: float | None) -> int:
        """``runs``, raised so that a block takes at least :data:`MIN_BLOCK_MS` at ``p50_ms`` (capped at 1000)."""
        if not p50_ms or p50_ms <= 0:
            return runs
        return max(runs, min(1000, math.ceil(MIN_BLOCK_MS / p50_ms)))

    def _device_p50(self, model_id: str, runs: int) -> float:
        return float(self.device.benchmark(model_id, runs=runs, warmup=2, threads=self.threads, per_node=False,
                                           batch_size=self.batch_size).p50_ms)

    def mark_reference(self, p50_ms: float) -> None:
        """The model measured last (the fp32 baseline, ``p50_ms``) becomes the load reference; that p50 is
        the load-1 level, so the baseline and everything measured later share one scale."""
        if self._last_model_id is not None:
            self._ref = ("device" if self.device is not None else "host", self._last_model_id)
            self._ref_base = float(p50_ms)

    @property
    def reference_level(self) -> float | None:
        """The load reference's p50 at load 1 (the fp32 baseline's), once it is set."""
        return self._ref_base

    def reference_ms(self) -> float | None:
        """p50 of a short benchmark of the reference model now (the same runner, threads and inputs)."""
        if self._ref is None:
            return None
        where, ident = self._ref
        runs = max(5, self.runs // 3)
        if where == "host":
            return host_benchmark(Path(ident), runs=runs, warmup=2, threads=self.threads, per_node=False,
                                  batch_size=self.batch_size).p50_ms
        rep = self.device.benchmark(ident, runs=runs, warmup=2, threads=self.threads, per_node=False, batch_size=self.batch_size)
        return float(rep.p50_ms)

    def runtime_key(self) -> tuple[dict[str, str], int]:
        if self.device is not None:
            rt = self._info.get("runtimes") or self._info.get("runtime_versions") or {}
            versions = {str(k): str(v) for k, v in rt.items()} if isinstance(rt, dict) else {"runtimes": str(rt)}
            return versions, int(self.threads or 0)
        import onnxruntime

        return {"onnxruntime": onnxruntime.__version__}, int(self.threads or 0)
