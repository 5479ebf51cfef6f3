"""What a fit plugs into the search: materialize plans with ``devicefit.compress``, measure on a device or
on the host.

Host measurements run ``benchmark_onnx`` (the agent's own benchmark) in a fresh Python process, so the
peak RSS is the model's, not this torch-laden process's, and torch threads do not compete with the run.
They are labelled ``source="host"``, ``device="host"``. Device measurements deploy the file to the agent
and ask it to benchmark it with per-node times (``source="device:<id>"``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from devicefit.bundle import ModelBundle
from devicefit.compressor.plan import Plan
from devicefit.compressor.search.candidate import Materialized, Timing
from devicefit.errors import DeviceError

_HOST_BENCH = (
    "import json, sys\n"
    "from devicefit.agent.benchmark import benchmark_onnx\n"
    "r = benchmark_onnx(sys.argv[1], runs=int(sys.argv[2]), warmup=int(sys.argv[3]),"
    " threads=(int(sys.argv[4]) or None), per_node=sys.argv[5] == '1')\n"
    "sys.stdout.write(json.dumps(r.to_dict()))\n"
)


_HOST_PAIR = (
    "import json, sys\n"
    "from devicefit.agent.benchmark import benchmark_onnx\n"
    "ref, cand, rounds, runs, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]) or None\n"
    "refs, cands = [], []\n"
    "for _ in range(rounds):\n"
    "    refs.append(benchmark_onnx(ref, runs=runs, warmup=2, threads=threads).p50_ms)\n"
    "    cands.append(benchmark_onnx(cand, runs=runs, warmup=2, threads=threads).p50_ms)\n"
    "refs.append(benchmark_onnx(ref, runs=runs, warmup=2, threads=threads).p50_ms)\n"
    "r = benchmark_onnx(cand, runs=runs, warmup=2, threads=threads, per_node=True)\n"
    "cands.append(r.p50_ms)\n"
    "sys.stdout.write(json.dumps({'report': r.to_dict(), 'refs': refs, 'cands': cands}))\n"
)
ROUNDS = 3


def _median(xs: list[float]) -> float:
    ys = sorted(xs)
    mid = len(ys) // 2
    return ys[mid] if len(ys) % 2 else (ys[mid - 1] + ys[mid]) / 2


def _timing(rep: Any, device: str) -> Timing:
    d = rep.to_dict() if hasattr(rep, "to_dict") else dict(rep)
    return Timing(
        p50_ms=float(d["p50_ms"]), p90_ms=float(d.get("p90_ms", d["p50_ms"])), mean_ms=float(d.get("mean_ms", d["p50_ms"])),
        peak_rss_mb=float(d.get("peak_rss_mb", 0.0)), per_node=list(d.get("per_node", [])),
        profiled_e2e_ms=float(d["per_node_e2e_ms"]) if d.get("per_node_e2e_ms") else None,
        threads=int(d.get("threads", 0)), runtime={str(k): str(v) for k, v in (d.get("runtime") or {}).items()},
        source=str(d.get("source", "host")), device=device,
    )


def host_benchmark(path: Path, *, runs: int, warmup: int, threads: int | None, per_node: bool = True,
                   timeout: float = 600.0) -> Timing:
    """``benchmark_onnx`` (with per-node times by default) in a clean subprocess."""
    cmd = [sys.executable, "-c", _HOST_BENCH, str(path), str(runs), str(warmup), str(threads or 0), "1" if per_node else "0"]
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
    ) -> None:
        self.bundle = bundle
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
        candidate's timed runs are interleaved with the reference's — ``ROUNDS`` × (reference, candidate),
        a closing reference, then the per-node run — and ``Timing.load`` = median reference p50 now ÷ at
        the baseline: the device's load while the candidate ran (shared boards and hosts speed up and
        slow down over minutes). The candidate's p50 is the median of its rounds' p50s."""
        if self._ref is None:
            return self._plain(path)
        k = max(5, self.runs // ROUNDS)
        if self.device is None:
            self._last_model_id = str(path)
            cmd = [sys.executable, "-c", _HOST_PAIR, self._ref[1], str(path), str(ROUNDS), str(k), str(self.threads or 0)]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
                raise DeviceError(f"host benchmark of {path.name} failed: {tail[0][:300]}", "run `devicefit bench` on it")
            out = json.loads(proc.stdout)
            rep, refs, cands = out["report"], list(out["refs"]), list(out["cands"])
        else:
            dep = self.device.deploy(path, progress=False)
            self._last_model_id = cid = str(dep.model_id)
            refs, cands = [], []
            for _ in range(ROUNDS):
                refs.append(self._device_p50(self._ref[1], k))
                cands.append(self._device_p50(cid, k))
            refs.append(self._device_p50(self._ref[1], k))
            rep = self.device.benchmark(cid, runs=k, warmup=2, threads=self.threads, per_node=True)
            cands.append(float(rep.p50_ms))
        timing = _timing(rep, self.device_id)
        timing.p50_ms = _median(cands)
        timing.load = _median(refs) / self._ref_base if self._ref_base else None
        return timing

    def _plain(self, path: Path) -> Timing:
        if self.device is None:
            self._last_model_id = str(path)
            return host_benchmark(path, runs=self.runs, warmup=self.warmup, threads=self.threads)
        dep = self.device.deploy(path, progress=False)
        self._last_model_id = str(dep.model_id)
        rep = self.device.benchmark(dep.model_id, runs=self.runs, warmup=self.warmup, threads=self.threads, per_node=True)
        return _timing(rep, self.device_id)

    def _device_p50(self, model_id: str, runs: int) -> float:
        return float(self.device.benchmark(model_id, runs=runs, warmup=2, threads=self.threads, per_node=False).p50_ms)

    def mark_reference(self, p50_ms: float) -> None:
        """The model measured last (the fp32 baseline, ``p50_ms``) becomes the load reference; that p50 is
        the load-1 level, so the baseline and everything measured later share one scale."""
        if self._last_model_id is not None:
            self._ref = ("device" if self.device is not None else "host", self._last_model_id)
            self._ref_base = float(p50_ms)

    def reference_ms(self) -> float | None:
        """p50 of a short benchmark of the reference model now (the same runner, threads and inputs)."""
        if self._ref is None:
            return None
        where, ident = self._ref
        runs = max(5, self.runs // 3)
        if where == "host":
            return host_benchmark(Path(ident), runs=runs, warmup=2, threads=self.threads, per_node=False).p50_ms
        rep = self.device.benchmark(ident, runs=runs, warmup=2, threads=self.threads, per_node=False)
        return float(rep.p50_ms)

    def runtime_key(self) -> tuple[dict[str, str], int]:
        if self.device is not None:
            rt = self._info.get("runtimes") or self._info.get("runtime_versions") or {}
            versions = {str(k): str(v) for k, v in rt.items()} if isinstance(rt, dict) else {"runtimes": str(rt)}
            return versions, int(self.threads or 0)
        import onnxruntime

        return {"onnxruntime": onnxruntime.__version__}, int(self.threads or 0)
