"""Shared fixtures for the kernel tests: the built library (skip with the fix when it cannot be built)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest


@pytest.fixture(scope="session")
def kernel_lib() -> Path:
    from devicefit.kernels import KernelBuildError, library_path

    try:
        path = library_path()
    except KernelBuildError as exc:  # no compiler on this machine
        pytest.skip(str(exc))
    assert path is not None and path.is_file()
    return path


@pytest.fixture(scope="session")
def isas(kernel_lib: Path) -> list[str]:
    """Every SIMD path this CPU supports (scalar included)."""
    from devicefit.kernels import supported_isas

    found = supported_isas()
    assert "scalar" in found
    return found


@pytest.fixture(scope="session")
def run_model(kernel_lib: Path) -> Callable[..., np.ndarray]:
    """run_model(model, x) -> the first output, in a fresh onnxruntime session with the library registered
    (fresh, so the DEVICEFIT_KERNELS_ISA in force now is the one its kernels pick)."""
    import onnxruntime as ort

    def run(model: Any, x: np.ndarray, *, threads: int = 1) -> np.ndarray:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.register_custom_ops_library(str(kernel_lib))
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        out: np.ndarray = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        return out

    return run
