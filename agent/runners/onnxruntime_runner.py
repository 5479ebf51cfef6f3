"""onnxruntime runner: CPU execution provider, explicit and reported session options.

Options (the same on host and device, reported with every measurement):
intra-op threads = ``threads`` (0 = onnxruntime's default, one per physical core), inter-op threads = 1,
sequential execution, graph optimization level ALL. Registered custom-op libraries: devicefit's own kernels
when they are built here (what ``GetInfo`` reports as ``custom_kernels``), those passed in and those listed in
the environment variable ``DEVICEFIT_ORT_CUSTOM_OPS`` (``os.pathsep``-separated).

Per-node times come from onnxruntime's own profiler (``SessionOptions.enable_profiling``): the JSON trace
has one ``model_run`` event per run and one ``<node>_kernel_time`` event per executed node; node events are
attributed to the run whose time window holds them, so warm-up runs can be left out.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from devicefit.agent.runners import NodeTime, RunnerSpec, TensorSpec, register
from devicefit.errors import ModelLoadError, UserInputError
from devicefit.kernels.ort_session import cpu_session, custom_ops_libraries, session_options

#: onnxruntime type strings -> numpy dtype names
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(bool)": "bool",
}



#: a serialized ONNX model (Identity on float[1], opset 13): the smallest session that initializes the runtime
_IDLE_MODEL = (b"\x08\x08\x12\x00:7\n\x10\n\x01x\x12\x01y\"\x08Identity\x12\x01gZ\x0f\n\x01x\x12\n\n\x08\x08\x01\x12"
               b"\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\r")
_prepared = False


def _prepare() -> None:
    """Import onnxruntime and run one session of :data:`_IDLE_MODEL` (once per process): the first session
    creates onnxruntime's environment, ~10 MB that stay with the process whatever model comes next."""
    global _prepared
    if _prepared:
        return
    sess = cpu_session(_IDLE_MODEL, session_options(threads=1))
    sess.run(None, {"x": np.ones(1, dtype=np.float32)})
    del sess
    _prepared = True


def _available() -> bool:
    # find_spec, not import: the agent stays small (~20 MB less RSS) until it loads a model
    return importlib.util.find_spec("onnxruntime") is not None


def _versions() -> dict[str, str]:
    import sys

    mod = sys.modules.get("onnxruntime")
    if mod is not None:
        return {"onnxruntime": str(mod.__version__)}
    for dist in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"):
        try:
            return {"onnxruntime": importlib.metadata.version(dist)}
        except importlib.metadata.PackageNotFoundError:
            continue
    return {"onnxruntime": "unknown"}


def _own_kernels() -> list[str]:
    """devicefit's kernel library (ops of domain ``ai.devicefit``) when it is built on this machine — the one
    ``GetInfo`` reports as ``custom_kernels``: a device that reports it runs models using it."""
    from devicefit.agent.sysinfo import custom_kernels

    lib = custom_kernels()
    return [lib] if lib else []


class OnnxRuntimeRunner:
    """One onnxruntime InferenceSession with devicefit's standard options."""

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int | None = None,
        profile: bool = False,
        custom_op_libraries: Sequence[str] = (),
    ) -> None:
        if threads is not None and threads < 0:
            raise UserInputError(f"threads={threads} is negative", "pass threads >= 1, or None for the default")
        self.path = Path(path)
        self.threads = threads
        self._profile_dir: str | None = tempfile.mkdtemp(prefix="devicefit-ortprof-") if profile else None
        prefix = os.path.join(self._profile_dir, "trace") if self._profile_dir else None
        libs = custom_ops_libraries([*custom_op_libraries, *_own_kernels()])
        so = session_options(threads=int(threads or 0), profile_prefix=prefix, custom_ops=libs)
        self._libs = libs
        try:
            self._sess = cpu_session(self.path, so, lowering=False)
        except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
            self._cleanup()
            if "ai.devicefit" in str(exc):
                raise ModelLoadError(
                    f"{self.path.name} uses devicefit's kernel ops (domain ai.devicefit) and this agent has no kernel "
                    "library to run them",
                    "build it on the device (`python -m devicefit.kernels build`, needs a C compiler) and restart the "
                    "agent, or compress the model with --kernels standard (standard ONNX ops)",
                ) from exc
            raise ModelLoadError(
                f"onnxruntime could not load {str(self.path)!r}: {str(exc).strip().splitlines()[0][:300]}",
                "check that the file is a complete ONNX model (re-export it) and that custom-op libraries are set",
            ) from exc
        self._options = {
            "runner": "onnxruntime",
            "providers": self._sess.get_providers(),
            "intra_op_num_threads": so.intra_op_num_threads,
            "inter_op_num_threads": so.inter_op_num_threads,
            "execution_mode": "sequential",
            "graph_optimization_level": "all",
            "profiling": bool(profile),
            "custom_op_libraries": list(libs),
        }
        self._trace: list[dict[str, Any]] | None = None

    def inputs(self) -> list[TensorSpec]:
        specs = []
        for i in self._sess.get_inputs():
            dtype = _ORT_DTYPES.get(i.type)
            if dtype is None:
                raise ModelLoadError(
                    f"input {i.name!r} of {self.path.name} has type {i.type}, which devicefit cannot generate",
                    "supply the inputs yourself (inputs={...})",
                )
            specs.append(TensorSpec(i.name, dtype, tuple(i.shape)))
        return specs

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return list(self._sess.run(None, dict(feeds)))

    def session_options(self) -> dict[str, Any]:
        return dict(self._options)

    def node_times(self, *, last_runs: int) -> list[NodeTime]:
        if self._profile_dir is None:
            raise UserInputError("per-node times need a profiling session", "create the runner with profile=True")
        if self._trace is None:
            trace_path = self._sess.end_profiling()
            with open(trace_path, encoding="utf-8") as f:
                self._trace = json.load(f)
        return parse_trace(self._trace, last_runs=last_runs)

    def close(self) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        profile_dir = getattr(self, "_profile_dir", None)  # absent when __init__ failed early
        if profile_dir is not None:
            shutil.rmtree(profile_dir, ignore_errors=True)

    def __del__(self) -> None:
        self._cleanup()


def parse_trace(events: list[dict[str, Any]], *, last_runs: int) -> list[NodeTime]:
    """Mean kernel time per node over the last ``last_runs`` ``model_run`` windows of an onnxruntime trace.

    Nodes keep their first-execution order. Times are in ms; a node that did not run in a window counts 0.
    """
    runs = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"]
    )
    if last_runs <= 0 or not runs:
        return []
    kept = runs[-last_runs:]
    windows = [(int(e["ts"]), int(e["ts"]) + int(e["dur"])) for e in kept]
    start = windows[0][0]
    totals: dict[str, float] = {}
    ops: dict[str, str] = {}
    nodes = sorted(
        (e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")),
        key=lambda e: e["ts"],
    )
    for e in nodes:
        ts = int(e["ts"])
        if ts < start or not any(lo <= ts <= hi for lo, hi in windows):
            continue
        name = str(e["name"])[: -len("_kernel_time")]
        totals[name] = totals.get(name, 0.0) + float(e["dur"])
        ops.setdefault(name, str(e.get("args", {}).get("op_name", "")))
    n = len(kept)
    return [NodeTime(name, ops[name], total / n / 1000.0) for name, total in totals.items()]


SPEC = register(
    RunnerSpec(
        name="onnxruntime",
        formats=("onnx",),
        extensions=(".onnx", ".ort"),
        per_node=True,
        factory=OnnxRuntimeRunner,
        versions=_versions,
        available=_available,
        prepare=_prepare,
    )
)
