"""The one place onnxruntime sessions are configured, for the host (compressor, sdk) and the agent alike.

Everything that runs a model — the agent's runner and microbenchmark, the host's metric runs, export and
quantization checks, the optimized-graph dumps — builds its ``SessionOptions`` here, so a candidate is
measured with the options it is deployed with. Custom-op libraries named in ``DEVICEFIT_ORT_CUSTOM_OPS``
(``os.pathsep``-separated) are registered in every session. onnxruntime (and onnx) are imported lazily:
this module imports only numpy at load time.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

Optimization = Literal["disabled", "basic", "extended", "all"]
OPTIMIZATIONS: tuple[str, ...] = ("disabled", "basic", "extended", "all")
#: environment variable listing custom-op libraries to register in every session
CUSTOM_OPS_ENV = "DEVICEFIT_ORT_CUSTOM_OPS"
PROVIDERS = ("CPUExecutionProvider",)
#: the domain of devicefit's own ops (:mod:`devicefit.kernels.ops`)
KERNEL_DOMAIN = "ai.devicefit"

log = logging.getLogger(__name__)
_warned_lowering = False

_ORT_TYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _ort() -> Any:
    import onnxruntime

    return onnxruntime


def custom_ops_libraries(extra: Sequence[str | Path] = ()) -> list[str]:
    """``extra`` followed by the libraries named in ``DEVICEFIT_ORT_CUSTOM_OPS`` (duplicates dropped)."""
    env = filter(None, os.environ.get(CUSTOM_OPS_ENV, "").split(os.pathsep))
    return list(dict.fromkeys([*(str(p) for p in extra), *env]))


def session_options(
    *,
    threads: int | None = None,
    optimization: str = "all",
    custom_ops: Sequence[str | Path] = (),
    profile_prefix: str | None = None,
    optimized_model_path: str | None = None,
) -> Any:
    """devicefit's ``onnxruntime.SessionOptions``: sequential execution, warnings silenced (severity 3).

    ``threads``: intra-op threads (0 = onnxruntime's default, one inter-op thread); ``None`` leaves both at
    onnxruntime's defaults. ``optimization``: graph optimization level (one of :data:`OPTIMIZATIONS`).
    ``custom_ops``: libraries registered besides those of ``DEVICEFIT_ORT_CUSTOM_OPS``. ``profile_prefix``:
    enable onnxruntime's profiler writing traces there. ``optimized_model_path``: write the optimized graph.
    """
    ort = _ort()
    levels = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if optimization not in levels:
        raise ValueError(f"optimization={optimization!r} is not valid; use one of {', '.join(OPTIMIZATIONS)}")
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[optimization]
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    if optimized_model_path is not None:
        so.optimized_model_filepath = optimized_model_path
    for lib in custom_ops_libraries(custom_ops):
        so.register_custom_ops_library(lib)
    return so


def _needs_kernels(exc: Exception) -> bool:
    """onnxruntime refused a model because the ``ai.devicefit`` ops are not registered."""
    return KERNEL_DOMAIN in str(exc)


def _lowered(model: str | Path | bytes) -> bytes:
    """The model with its ``ai.devicefit`` nodes rewritten into standard ops (exact, identical outputs)."""
    import onnx

    from devicefit.kernels.lowering import lower_model

    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    lowered: bytes = lower_model(proto, lowbit="exact").SerializeToString()
    return lowered


def cpu_session(model: str | Path | bytes, options: Any | None = None, *, lowering: bool = True) -> Any:
    """An ``InferenceSession`` on the CPU provider (``model``: a path or serialized bytes).

    A model using devicefit's own ops (domain ``ai.devicefit``) runs without the caller registering
    anything: when onnxruntime refuses it for that domain, the kernel library
    (:func:`devicefit.kernels.library_path`, built on first use) is registered on the options and the session
    made again; when the library cannot be built or loaded here (no compiler), the model's standard-op
    lowering runs instead (:func:`devicefit.kernels.lowering.lower_model`, exact mode: identical outputs) and
    one warning is logged. Other models pay nothing for this (only that failure is retried). ``lowering=False``
    (the agent: it measures the model it was sent, not a stand-in) raises instead of running the lowering."""
    ort = _ort()
    src = model if isinstance(model, bytes) else str(model)
    so = options or session_options()
    try:
        return ort.InferenceSession(src, sess_options=so, providers=list(PROVIDERS))
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        if not _needs_kernels(exc):
            raise
    from devicefit.kernels.builder import KernelBuildError, library_path

    try:
        so.register_custom_ops_library(str(library_path()))
    except (KernelBuildError, OSError) as exc:
        reason: Exception | None = exc
    except Exception as exc:  # onnxruntime's Fail: the library does not load
        reason = exc
    else:
        reason = None
    if reason is None:
        return ort.InferenceSession(src, sess_options=so, providers=list(PROVIDERS))
    if not lowering:
        raise RuntimeError(f"the {KERNEL_DOMAIN} ops need devicefit's kernel library, which is unavailable here: "
                           f"{str(reason).splitlines()[0][:200]}") from reason
    global _warned_lowering
    if not _warned_lowering:
        log.warning("devicefit kernel library unavailable (%s); running the standard-op lowering of the %s ops "
                    "instead (identical outputs, slower)", str(reason).splitlines()[0][:200], KERNEL_DOMAIN)
        _warned_lowering = True
    return ort.InferenceSession(_lowered(model), sess_options=so, providers=list(PROVIDERS))


def optimized_model(model: str | Path | bytes, *, optimization: str = "all") -> Any:
    """The graph onnxruntime really runs on the CPU provider (``onnx.ModelProto``, external data not loaded)."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="devicefit-opt-") as tmp:
        out = os.path.join(tmp, "optimized.onnx")
        cpu_session(model, session_options(threads=1, optimization=optimization, optimized_model_path=out))
        return onnx.load(out, load_external_data=False)


def feeds(session: Any, batch: Mapping[str, np.ndarray], input_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Map a batch onto the session inputs, cast to the dtypes the model declares.

    ``input_names`` are the batch's names in the order of the session inputs; by default the session's own
    names (a single-array batch feeds a single-input model whatever its name). Raises ``KeyError`` /
    ``ValueError`` naming what is missing.
    """
    model_inputs = session.get_inputs()
    if input_names is None:
        input_names = list(batch) if len(batch) == 1 and len(model_inputs) == 1 else [i.name for i in model_inputs]
    if len(input_names) != len(model_inputs):
        raise ValueError(f"model has inputs {[i.name for i in model_inputs]} but {len(input_names)} names were given")
    out: dict[str, np.ndarray] = {}
    for spec, name in zip(model_inputs, input_names, strict=True):
        if name not in batch:
            raise KeyError(f"data has no array {name!r} for model input {spec.name!r} (it has {sorted(batch)})")
        arr = batch[name]
        want = _ORT_TYPES.get(spec.type)
        out[spec.name] = np.ascontiguousarray(arr if want is None or arr.dtype == want else arr.astype(want))
    return out


def run_batches(session: Any, batches: Iterable[Mapping[str, np.ndarray]], input_names: Sequence[str] | None = None) -> np.ndarray:
    """The model's first output over ``batches``, concatenated on axis 0 (``ValueError`` when there is none)."""
    outs = [np.asarray(session.run(None, feeds(session, b, input_names))[0]) for b in batches]
    if not outs:
        raise ValueError("no batch to run")
    return np.concatenate(outs, axis=0)


__all__ = [
    "CUSTOM_OPS_ENV",
    "OPTIMIZATIONS",
    "cpu_session",
    "custom_ops_libraries",
    "feeds",
    "optimized_model",
    "run_batches",
    "session_options",
]
