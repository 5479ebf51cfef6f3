"""Run ONNX models with onnxruntime on a :class:`~devicefit.data.Dataset` (numpy + onnxruntime, no torch).

Used by export verification, metrics of compressed models and the host side in general. The agent has its
own runners; this is the host's thin, batched helper.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from devicefit.data import Dataset
from devicefit.errors import ModelLoadError, UserInputError
from devicefit.kernels import ort_session
from devicefit.kernels.ort_session import OPTIMIZATIONS, cpu_session, session_options

if TYPE_CHECKING:
    import onnxruntime as ort

Optimization = Literal["disabled", "basic", "extended", "all"]


def make_session(
    path: str | Path,
    *,
    threads: int | None = None,
    optimization: Optimization = "all",
    custom_ops_libraries: Sequence[str | Path] = (),
) -> ort.InferenceSession:
    """A CPU onnxruntime session with devicefit's options (:func:`devicefit.kernels.ort_session.session_options`).
    ``threads`` sets intra-op threads (``None``: onnxruntime's default)."""
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"ONNX file not found: {p}", "pass the path of an existing .onnx file")
    if optimization not in OPTIMIZATIONS:
        raise UserInputError(f"optimization={optimization!r} is not valid", f"use one of {sorted(OPTIMIZATIONS)}")
    opts = session_options(threads=threads, optimization=optimization, custom_ops=custom_ops_libraries)
    try:
        return cpu_session(p, opts)
    except Exception as exc:
        raise ModelLoadError(
            f"onnxruntime cannot load {p}: {str(exc).splitlines()[0]}",
            "check the file is a complete ONNX model (re-export it) and its ops are supported by onnxruntime",
        ) from exc


@contextmanager
def _as_user_errors() -> Iterator[None]:
    """Missing / surplus input arrays (``KeyError`` / ``ValueError`` of the session helpers) as user errors."""
    try:
        yield
    except KeyError as exc:
        raise UserInputError(exc.args[0], "name the .npz arrays like the model inputs (or 'x' for a single input)") from exc
    except ValueError as exc:
        raise UserInputError(str(exc), "give one data array per model input") from exc


def feeds(session: ort.InferenceSession, batch: dict[str, np.ndarray], input_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Map a dataset batch onto the session inputs, casting to the dtypes the model declares (see
    :func:`devicefit.kernels.ort_session.feeds`)."""
    with _as_user_errors():
        return ort_session.feeds(session, batch, input_names)


def run_onnx(
    path_or_session: str | Path | ort.InferenceSession,
    dataset: Dataset,
    *,
    input_names: Sequence[str] | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """The model's first output over every sample of ``dataset``, batched, concatenated on axis 0."""
    session = path_or_session if not isinstance(path_or_session, str | Path) else make_session(path_or_session)
    if len(dataset) == 0:
        raise UserInputError("dataset is empty", "give at least one sample")
    with _as_user_errors():
        return ort_session.run_batches(session, dataset.batches(batch_size), input_names)


__all__ = ["feeds", "make_session", "run_onnx"]
