"""Runners: one per runtime, registered by name, declaring what they can run.

A runner loads one model file and runs it; the benchmark, the agent and the host CLI all go through the
same runner with the same options, so a latency measured on the device is the latency the app will see.
Capabilities (formats, per-node profiling, torch) are data here, so callers read them instead of if-chains.
Runtimes are imported lazily inside each runner: importing this package costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from devicefit.errors import ModelLoadError, UserInputError
from devicefit.protos.report import NodeTime


@dataclass(frozen=True)
class TensorSpec:
    """A model input: name, numpy dtype name and shape (``int`` fixed, ``str``/``None`` symbolic)."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]


class Runner(Protocol):
    """A loaded model, ready to run."""

    def inputs(self) -> list[TensorSpec]: ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...

    def session_options(self) -> dict[str, Any]:
        """The options the model runs with (threads, optimization level, execution mode, ...)."""
        ...

    def node_times(self, *, last_runs: int) -> list[NodeTime]:
        """Per-node mean kernel times over the ``last_runs`` most recent runs (profiling runners only)."""
        ...

    def close(self) -> None: ...


#: factory(path, *, threads, profile) -> Runner
RunnerFactory = Callable[..., Runner]


@dataclass(frozen=True)
class RunnerSpec:
    """A registered runner and what it supports."""

    name: str
    formats: tuple[str, ...]
    extensions: tuple[str, ...]
    per_node: bool
    factory: RunnerFactory
    versions: Callable[[], dict[str, str]]
    available: Callable[[], bool]
    needs_torch: bool = False
    #: bring the runtime to its loaded-idle state (imported, its environment created) once per process, so a
    #: benchmark's RSS baseline holds it and a model's own memory does not count it
    prepare: Callable[[], None] = lambda: None

    def capabilities(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "formats": list(self.formats),
            "per_node": self.per_node,
            "needs_torch": self.needs_torch,
            "available": self.available(),
        }


RUNNERS: dict[str, RunnerSpec] = {}


def register(spec: RunnerSpec) -> RunnerSpec:
    RUNNERS[spec.name] = spec
    return spec


def format_of(path: str | Path) -> str:
    """The model format of ``path`` from its extension ("onnx" / "tflite")."""
    suffix = Path(path).suffix.lower()
    for spec in RUNNERS.values():
        if suffix in spec.extensions:
            return spec.formats[0]
    known = sorted({e for s in RUNNERS.values() for e in s.extensions})
    raise UserInputError(
        f"model file {str(path)!r} has extension {suffix!r}, which no runner handles",
        f"use one of {', '.join(known)}",
    )


def runner_for(path_or_format: str | Path, *, name: str | None = None) -> RunnerSpec:
    """The runner that runs this file (or format); ``name`` picks one explicitly."""
    if name is not None:
        if name not in RUNNERS:
            raise UserInputError(f"runner {name!r} is unknown", f"use one of {', '.join(sorted(RUNNERS))}")
        return RUNNERS[name]
    fmt = str(path_or_format)
    if fmt not in {f for s in RUNNERS.values() for f in s.formats}:
        fmt = format_of(path_or_format)
    candidates = [s for s in RUNNERS.values() if fmt in s.formats]
    for spec in candidates:
        if spec.available():
            return spec
    raise ModelLoadError(
        f"no runtime installed for {fmt!r} models (runners: {', '.join(s.name for s in candidates)})",
        "install the agent extra: pip install 'devicefit[agent]'",
    )


def runtime_versions() -> dict[str, str]:
    """Versions of every available runtime (for reports and device info)."""
    out: dict[str, str] = {}
    for spec in RUNNERS.values():
        if spec.available():
            out.update(spec.versions())
    return out


# Built-in runners register themselves on import (their runtimes are imported lazily).
from devicefit.agent.runners import litert_runner, onnxruntime_runner  # noqa: E402

__all__ = [
    "RUNNERS",
    "NodeTime",
    "Runner",
    "RunnerSpec",
    "TensorSpec",
    "format_of",
    "litert_runner",
    "onnxruntime_runner",
    "register",
    "runner_for",
    "runtime_versions",
]
