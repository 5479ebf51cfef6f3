"""Run ONNX models with onnxruntime on a :class:`~devicefit.data.Dataset` (numpy + onnxruntime, no torch).

Used by export verification, metrics of compressed models and the host side in general. The agent has its
own runners; this is the host's thin, batched helper.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from devicefit.data import Dataset
from devicefit.errors import ModelLoadError, UserInputError

if TYPE_CHECKING:
    import onnxruntime as ort

Optimization = Literal["disabled", "basic", "extended", "all"]

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


def make_session(
    path: str | Path,
    *,
    threads: int | None = None,
    optimization: Optimization = "all",
    custom_ops_libraries: Sequence[str | Path] = (),
) -> ort.InferenceSession:
    """A CPU onnxruntime session. ``threads`` sets intra-op threads (``None``: onnxruntime's default)."""
    import onnxruntime as ort

    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"ONNX file not found: {p}", "pass the path of an existing .onnx file")
    opts = ort.SessionOptions()
    levels = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if optimization not in levels:
        raise UserInputError(f"optimization={optimization!r} is not valid", f"use one of {sorted(levels)}")
    opts.graph_optimization_level = levels[optimization]
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    for lib in custom_ops_libraries:
        opts.register_custom_ops_library(str(lib))
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(p), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(
            f"onnxruntime cannot load {p}: {str(exc).splitlines()[0]}",
            "check the file is a complete ONNX model (re-export it) and its ops are supported by onnxruntime",
        ) from exc


def feeds(session: ort.InferenceSession, batch: dict[str, np.ndarray], input_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Map a dataset batch onto the session inputs, casting to the dtypes the model declares.

    ``input_names`` are the dataset's names in the order of the session inputs; by default the session's own
    names (a single-input dataset feeds a single-input model whatever its name).
    """
    model_inputs = session.get_inputs()
    if input_names is None:
        if len(batch) == 1 and len(model_inputs) == 1:
            input_names = list(batch)
        else:
            input_names = [i.name for i in model_inputs]
    if len(input_names) != len(model_inputs):
        raise UserInputError(
            f"model has inputs {[i.name for i in model_inputs]} but {len(input_names)} names were given",
            "give one data array per model input",
        )
    out: dict[str, np.ndarray] = {}
    for spec, name in zip(model_inputs, input_names, strict=True):
        if name not in batch:
            raise UserInputError(
                f"data has no array {name!r} for model input {spec.name!r} (it has {sorted(batch)})",
                "name the .npz arrays like the model inputs (or 'x' for a single input)",
            )
        arr = batch[name]
        want = _ORT_TYPES.get(spec.type)
        out[spec.name] = np.ascontiguousarray(arr if want is None or arr.dtype == want else arr.astype(want))
    return out


def run_onnx(
    path_or_session: str | Path | ort.InferenceSession,
    dataset: Dataset,
    *,
    input_names: Sequence[str] | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """The model's first output over every sample of ``dataset``, batched, concatenated on axis 0."""
    session = path_or_session if not isinstance(path_or_session, str | Path) else make_session(path_or_session)
    outs: list[np.ndarray] = []
    for batch in dataset.batches(batch_size):
        res = session.run(None, feeds(session, batch, input_names))
        outs.append(np.asarray(res[0]))
    if not outs:
        raise UserInputError("dataset is empty", "give at least one sample")
    return np.concatenate(outs, axis=0)


__all__ = ["feeds", "make_session", "run_onnx"]
