"""Budgets, candidates and the two things a search needs from outside: materialize and measure.

The compressor never imports the agent: the search gets an :class:`Evaluator` (built by ``devicefit.fit``)
that compresses a plan through ``devicefit.compress`` and measures the file on an agent (the device's, or
one spawned on this host) through the transport.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from devicefit.compressor.plan import Plan
from devicefit.errors import UserInputError
from devicefit.protos.report import own_memory_mb


@dataclass(frozen=True)
class Budget:
    """The limits a fit must meet (``None`` = no limit). Size in MB of the stored model file; memory in MB of the
    model's own peak memory on the agent (:attr:`Timing.model_memory_mb`: the RSS it adds over the idle agent,
    not the whole process's).

    ``latency_ratio`` is a latency limit relative to the fp32 model measured on the same device at the fit's
    start (0.6 = at most 0.6 × fp32's p50): :meth:`resolved` turns it into ``latency_ms`` once the baseline is
    measured, so a budget set this way moves with the device's speed instead of with a number read earlier.
    """

    latency_ms: float | None = None
    size_mb: float | None = None
    memory_mb: float | None = None
    accuracy_drop: float | None = None
    latency_ratio: float | None = None

    def __post_init__(self) -> None:
        for name in ("latency_ms", "size_mb", "memory_mb", "accuracy_drop", "latency_ratio"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or math.isinf(v)):
                raise UserInputError(f"budget {name}={v!r} is invalid", f"{name} must be a finite number ≥ 0 (or unset)")
        if self.latency_ratio is not None and self.latency_ratio == 0:
            raise UserInputError("budget latency_ratio=0 is invalid", "give a fraction of the fp32 latency > 0, e.g. 0.6")

    def resolved(self, fp32_ms: float) -> Budget:
        """The budget with ``latency_ratio`` turned into ``latency_ms`` (× the fp32 p50 ``fp32_ms``; the
        stricter one when both are set)."""
        if self.latency_ratio is None:
            return self
        limit = self.latency_ratio * fp32_ms
        return replace(self, latency_ms=limit if self.latency_ms is None else min(limit, self.latency_ms))

    def constraints(self, *, latency_ms: float, size_bytes: float, memory_mb: float, drop: float) -> list[float]:
        """One value per budget, ≤ 0 when met (relative: (value − limit) / limit); −1 where unset."""

        def rel(value: float, limit: float | None, floor: float = 1e-9) -> float:
            if limit is None:
                return -1.0
            return (value - limit) / max(limit, floor)

        return [
            rel(latency_ms, self.latency_ms),
            rel(size_bytes / 1e6, self.size_mb),
            rel(memory_mb, self.memory_mb),
            rel(drop, self.accuracy_drop, 1e-3) if self.accuracy_drop is not None else -1.0,
        ]

    def met(self, *, latency_ms: float, size_bytes: float, memory_mb: float, drop: float) -> bool:
        return all(c <= 0 for c in self.constraints(latency_ms=latency_ms, size_bytes=size_bytes, memory_mb=memory_mb, drop=drop))

    def to_dict(self) -> dict[str, float | None]:
        return {"latency_ms": self.latency_ms, "size_mb": self.size_mb, "memory_mb": self.memory_mb,
                "accuracy_drop": self.accuracy_drop, "latency_ratio": self.latency_ratio}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Budget:
        return cls(**{k: (None if d.get(k) is None else float(d[k]))
                      for k in ("latency_ms", "size_mb", "memory_mb", "accuracy_drop", "latency_ratio")})


@dataclass
class Timing:
    """A latency measurement of one model file (a BenchReport, reduced to what the search uses).

    ``peak_rss_mb`` is the measuring process's whole peak (interpreter, runtime, other models);
    ``model_memory_mb`` the model's own (peak over load + runs − the RSS before the load; 0 = not measured):
    the memory budget applies to this one."""

    p50_ms: float
    p90_ms: float
    mean_ms: float
    peak_rss_mb: float
    per_node: list[dict[str, Any]] = field(default_factory=list)
    profiled_e2e_ms: float | None = None
    threads: int = 0
    runtime: dict[str, str] = field(default_factory=dict)
    source: str = "host"
    device: str = "host"
    #: device load while measured (reference p50 now ÷ at the baseline), when the evaluator measured it
    load: float | None = None
    #: inputs per run the benchmark used
    batch_size: int = 1
    #: interleaved rounds against the load reference, and the relative MAD of their candidate/reference ratios
    rounds: int = 0
    spread: float | None = None
    #: the model's own peak memory (MB) over the idle agent; 0 when the measurement did not say
    model_memory_mb: float = 0.0

    @classmethod
    def from_report(cls, report: Mapping[str, Any], *, device: str) -> Timing:
        """A benchmark report (``BenchReport.to_dict()``, the agent's record) as the search uses it."""
        d = report
        return cls(
            p50_ms=float(d["p50_ms"]), p90_ms=float(d.get("p90_ms", d["p50_ms"])),
            mean_ms=float(d.get("mean_ms", d["p50_ms"])), peak_rss_mb=float(d.get("peak_rss_mb", 0.0)),
            per_node=list(d.get("per_node", [])),
            profiled_e2e_ms=float(d["per_node_e2e_ms"]) if d.get("per_node_e2e_ms") else None,
            threads=int(d.get("threads", 0)), runtime={str(k): str(v) for k, v in (d.get("runtime") or {}).items()},
            source=str(d.get("source", "host")), device=device, batch_size=int(d.get("batch_size") or 1),
            model_memory_mb=own_memory_mb(d),
        )

    @classmethod
    def from_measurement(cls, row: Any) -> Timing:
        """A stored :class:`~devicefit.compressor.latency.store.Measurement` (an earlier session's)."""
        return cls(p50_ms=row.p50_ms, p90_ms=row.p90_ms or row.p50_ms, mean_ms=row.mean_ms or row.p50_ms,
                   peak_rss_mb=row.peak_rss_mb or 0.0, per_node=list(row.per_node), profiled_e2e_ms=row.profiled_e2e_ms,
                   threads=row.threads, runtime=dict(row.runtime_versions), source=row.source, device=row.device_id,
                   batch_size=row.batch_size, load=row.load, model_memory_mb=row.model_memory_mb or 0.0)

    def scaled(self, factor: float) -> Timing:
        """The same measurement divided by ``factor`` (a load factor: times at the reference load)."""
        f = factor if factor > 0 else 1.0
        return Timing(
            self.p50_ms / f, self.p90_ms / f, self.mean_ms / f, self.peak_rss_mb,
            per_node=[{**n, "mean_ms": float(n["mean_ms"]) / f} for n in self.per_node],
            profiled_e2e_ms=self.profiled_e2e_ms / f if self.profiled_e2e_ms else None,
            threads=self.threads, runtime=dict(self.runtime), source=self.source, device=self.device,
            batch_size=self.batch_size, rounds=self.rounds, spread=self.spread, model_memory_mb=self.model_memory_mb,
        )


@dataclass
class Materialized:
    """A plan applied for real: the exported file and its metric on the evaluation data."""

    path: Path
    size_bytes: int
    params: int
    macs: int
    metric: dict[str, Any]  # {name, baseline, compressed, drop, data}
    reference: Path | None = None  # the fp32 ONNX the file was quantized from (for node mapping)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def drop(self) -> float:
        return float(self.metric["drop"])


class Evaluator(Protocol):
    """What the engine calls to turn a plan into a measured candidate (built by ``devicefit.fit``)."""

    #: the measuring device's id (the latency model and the measurement store are kept per device)
    device_id: str
    #: inputs per benchmark run
    batch_size: int
    #: the runner candidates run on: "onnxruntime" (.onnx) or "litert" (.tflite); measurements are kept per runner
    runtime: str

    @property
    def reference_level(self) -> float | None:
        """The load reference's p50 at load 1 (the fp32 baseline's) once :meth:`mark_reference` set it."""
        ...

    def fp32(self) -> Materialized:
        """The unmodified model exported once, with its metric on the evaluation data (drop 0)."""
        ...

    def materialize(self, plan: Plan, *, name: str) -> Materialized: ...

    def measure(self, path: Path) -> Timing:
        """Benchmark the file; ``Timing.load`` may carry the device load measured alongside."""
        ...

    def mark_reference(self, p50_ms: float) -> None:
        """The file measured last (the fp32 baseline, ``p50_ms``) becomes the load reference."""
        ...

    def runtime_key(self) -> tuple[dict[str, str], int]:
        """(runtime versions, threads) measurements are comparable under (for store reuse)."""
        ...

    def block_p50(self, path: Path) -> float:
        """p50 of one short timed block of a file already measured (paired re-measurements, :mod:`.confirm`)."""
        ...


@dataclass
class Candidate:
    """One plan the search looked at: predictions always, measurements when it was materialized."""

    trial: int
    labels: dict[str, str]
    plan_hash: str
    predicted_ms: float
    predicted_size_bytes: float
    predicted_memory_mb: float
    predicted_drop: float
    uncalibrated: tuple[str, ...] = ()
    #: measured p50 at the fp32 baseline's load (the reading ÷ ``load``; or confirmed in paired rounds)
    measured_ms: float | None = None
    #: the p50 as the device read it, at its load then
    raw_ms: float | None = None
    p90_ms: float | None = None
    #: the model's own peak memory measured on the agent (MB; :attr:`Timing.model_memory_mb`), None = unknown
    measured_memory_mb: float | None = None
    size_bytes: int | None = None
    params: int | None = None
    macs: int | None = None
    metric: dict[str, Any] | None = None
    path: Path | None = None
    reference: Path | None = None
    device: str = ""
    reused: bool = False
    distilled: bool = False
    #: compressed again with the thorough settings of its techniques (:meth:`.Plan.finished`)
    finished: bool = False
    #: device load when measured: fp32 reference p50 now / at the baseline (``raw_ms`` / ``measured_ms``)
    load: float | None = None
    #: rounds interleaved with the reference, and how much they disagreed (relative MAD of the ratios)
    rounds: int = 0
    spread: float | None = None
    error: str | None = None
    tags: list[str] = field(default_factory=list)
    #: the paired re-measurement that confirmed ``measured_ms`` (:mod:`.confirm`), when there was one
    paired: dict[str, Any] | None = None

    @property
    def measured(self) -> bool:
        return self.measured_ms is not None and self.metric is not None

    @property
    def latency_ms(self) -> float:
        return self.measured_ms if self.measured_ms is not None else self.predicted_ms

    @property
    def drop(self) -> float:
        return float(self.metric["drop"]) if self.metric is not None else self.predicted_drop

    @property
    def size(self) -> float:
        return float(self.size_bytes) if self.size_bytes is not None else self.predicted_size_bytes

    @property
    def memory_mb(self) -> float:
        """The model's own peak memory: measured when known, else predicted (the same quantity)."""
        return self.measured_memory_mb if self.measured_memory_mb is not None else self.predicted_memory_mb

    def constraints(self, budget: Budget) -> list[float]:
        return budget.constraints(latency_ms=self.latency_ms, size_bytes=self.size, memory_mb=self.memory_mb, drop=self.drop)

    def passes(self, budget: Budget) -> bool:
        """Measured and within every budget."""
        return self.measured and self.error is None and all(c <= 0 for c in self.constraints(budget))

    def shortfall(self, budget: Budget) -> dict[str, float]:
        """How far over each budget (relative, only the ones missed)."""
        names = ("latency_ms", "size_mb", "memory_mb", "accuracy_drop")
        return {n: round(c, 4) for n, c in zip(names, self.constraints(budget), strict=True) if c > 0}

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial": self.trial, "plan_hash": self.plan_hash, "predicted_ms": self.predicted_ms,
            "measured_ms": self.measured_ms, "raw_ms": self.raw_ms, "p90_ms": self.p90_ms,
            "predicted_drop": self.predicted_drop, "metric_drop": self.drop if self.metric is not None else None,
            "predicted_size_bytes": int(self.predicted_size_bytes), "size_bytes": self.size_bytes,
            "predicted_memory_mb": self.predicted_memory_mb, "memory_mb": self.measured_memory_mb,
            "source": "measured" if self.measured else "predicted", "device": self.device or None,
            "reused": self.reused, "distilled": self.distilled, "finished": self.finished, "load": self.load,
            "rounds": self.rounds, "spread": self.spread, "error": self.error, "tags": list(self.tags),
            "paired": self.paired,
            "summary": summarize(self.labels),
        }


def summarize(labels: Mapping[str, str]) -> dict[str, int]:
    """Option label -> number of layers using it."""
    out: dict[str, int] = {}
    for lab in labels.values():
        out[lab] = out.get(lab, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def plan_hash(plan: Plan) -> str:
    return plan.fingerprint()[:16]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated (both coordinates minimized)."""
    front = []
    for i, (a, b) in enumerate(points):
        if not any((c <= a and d <= b) and (c < a or d < b) for j, (c, d) in enumerate(points) if j != i):
            front.append(i)
    return front
