"""LiteRT runner for ``.tflite`` files.

Uses ``ai_edge_litert.interpreter`` (the successor of tflite-runtime); falls back to
``tflite_runtime.interpreter`` only where LiteRT is missing (tflite-runtime crashes on numpy 2).
No per-node profiling (the Python interpreter API exposes none).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from devicefit.agent.runners import NodeTime, RunnerSpec, TensorSpec, register
from devicefit.errors import ModelLoadError, UserInputError

#: interpreter modules in order of preference
INTERPRETER_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")


def import_interpreter(candidates: Sequence[str] = INTERPRETER_MODULES) -> tuple[str, ModuleType]:
    """The first importable interpreter module among ``candidates`` as (module name, module)."""
    errors = []
    for name in candidates:
        try:
            return name, importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise ModelLoadError(
        "no TFLite interpreter is installed (" + "; ".join(errors) + ")",
        "pip install ai-edge-litert (or tflite-runtime where LiteRT has no wheel)",
    )


def _installed(candidates: Sequence[str] = INTERPRETER_MODULES) -> str | None:
    """The first candidate whose top-level package is installed (found without importing it)."""
    for name in candidates:
        if importlib.util.find_spec(name.split(".")[0]) is not None:
            return name
    return None


def _prepare() -> None:
    """Import the interpreter module (its import is the runtime's idle cost; a failure is left to the load)."""
    with contextlib.suppress(ModelLoadError):
        import_interpreter()


def _available() -> bool:
    return _installed() is not None


def _versions() -> dict[str, str]:
    from importlib import metadata

    name = _installed() or ""
    dist = "ai-edge-litert" if name.startswith("ai_edge_litert") else "tflite-runtime"
    try:
        return {dist: metadata.version(dist)}
    except metadata.PackageNotFoundError:
        return {dist: "unknown"}


def _physical_cores() -> int:
    """LiteRT's own default is not documented per version: use one thread per physical core, like onnxruntime."""
    try:
        import psutil

        return int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except ImportError:  # pragma: no cover
        return os.cpu_count() or 1


class LiteRTRunner:
    """One TFLite interpreter; dynamic dims (-1 in the shape signature) are resized on first run."""

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int | None = None,
        profile: bool = False,
        interpreter_modules: Sequence[str] = INTERPRETER_MODULES,
    ) -> None:
        if profile:
            raise UserInputError(
                "the LiteRT runner has no per-node profiler", "benchmark .tflite models without per_node"
            )
        self.path = Path(path)
        self.module_name, mod = import_interpreter(interpreter_modules)
        try:
            self._interp = mod.Interpreter(model_path=str(self.path), num_threads=threads or _physical_cores())
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(
                f"{self.module_name} could not load {str(self.path)!r}: {str(exc).strip()[:300]}",
                "check that the file is a complete .tflite flatbuffer (re-export it)",
            ) from exc
        self.threads = threads or _physical_cores()
        self._shapes: dict[int, tuple[int, ...]] = {}

    def inputs(self) -> list[TensorSpec]:
        specs = []
        for d in self._interp.get_input_details():
            sig = d.get("shape_signature", d["shape"])
            shape = tuple(None if int(s) < 0 else int(s) for s in sig)
            specs.append(TensorSpec(str(d["name"]), np.dtype(d["dtype"]).name, shape))
        return specs

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        details = self._interp.get_input_details()
        resized = False
        for d in details:
            if d["name"] not in feeds:
                raise UserInputError(f"input {d['name']!r} is missing", f"supply all of {[x['name'] for x in details]}")
            shape = tuple(feeds[d["name"]].shape)
            if self._shapes.get(d["index"], tuple(int(s) for s in d["shape"])) != shape:
                self._interp.resize_tensor_input(d["index"], list(shape))
                self._shapes[d["index"]] = shape
                resized = True
        if resized:
            self._interp.allocate_tensors()
        for d in details:
            self._interp.set_tensor(d["index"], np.ascontiguousarray(feeds[d["name"]], dtype=d["dtype"]))
        self._interp.invoke()
        return [self._interp.get_tensor(d["index"]) for d in self._interp.get_output_details()]

    def session_options(self) -> dict[str, Any]:
        return {"runner": "litert", "interpreter": self.module_name, "num_threads": self.threads}

    def node_times(self, *, last_runs: int) -> list[NodeTime]:
        raise UserInputError("the LiteRT runner has no per-node profiler", "benchmark without per_node")

    def close(self) -> None:
        self._interp = None


SPEC = register(
    RunnerSpec(
        name="litert",
        formats=("tflite",),
        extensions=(".tflite",),
        per_node=False,
        factory=LiteRTRunner,
        versions=_versions,
        available=_available,
        prepare=_prepare,
    )
)
