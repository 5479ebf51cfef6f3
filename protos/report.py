"""What a benchmark reports (the Python side of devicefit.v1.BenchmarkReport): latency percentiles and their
spread, the runs made and their time, load time, memory (the model's own and the whole process's), threads,
runtime versions, session options, per-node times. The agent fills it; the host reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class NodeTime:
    """Mean kernel time of one graph node over the profiled runs."""

    name: str
    op_type: str
    mean_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op_type": self.op_type, "mean_ms": self.mean_ms}


def own_memory_mb(report: Mapping[str, Any]) -> float:
    """A report's (``BenchReport.to_dict()``) model memory in MB: its ``model_memory_mb``; from an agent that
    did not report it, ``peak_rss_mb − baseline_rss_mb`` (0 when neither is known)."""
    own = float(report.get("model_memory_mb") or 0.0)
    if own > 0:
        return own
    peak, base = float(report.get("peak_rss_mb") or 0.0), float(report.get("baseline_rss_mb") or 0.0)
    return max(0.0, peak - base) if peak > 0 and base > 0 else 0.0


@dataclass
class BenchReport:
    """One benchmark's result; ``to_dict()`` is the JSON of ``devicefit bench --json``.

    ``runs``: timed runs actually made (at least the runs asked; more when ``min_seconds``, the time floor,
    needed them), ``timed_s`` their summed time; ``p10_ms`` / ``iqr_ms`` (p75 − p25) their spread.
    Memory: ``peak_rss_mb`` is the whole process (interpreter, runtime, other models, this model);
    ``model_memory_mb`` is this model's own (peak over load + runs − ``baseline_rss_mb``, the RSS before the
    load); ``run_memory_mb`` the part the runs added over the loaded model (onnxruntime's arena and activation
    buffers: the arena cannot be read separately, the RSS holds it). A report from an agent older than these
    fields carries 0 for them (:attr:`own_memory_mb` falls back to ``peak_rss_mb − baseline_rss_mb``).
    """

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    load_ms: float
    peak_rss_mb: float
    runs: int
    threads: int
    source: str = "host"
    per_node: list[NodeTime] = field(default_factory=list)
    runtime: dict[str, str] = field(default_factory=dict)
    session_options: dict[str, Any] = field(default_factory=dict)
    warmup: int = 0
    batch_size: int = 1
    min_ms: float = 0.0
    max_ms: float = 0.0
    baseline_rss_mb: float = 0.0
    per_node_e2e_ms: float = 0.0
    p10_ms: float = 0.0
    iqr_ms: float = 0.0
    timed_s: float = 0.0
    min_seconds: float = 0.0
    model_memory_mb: float = 0.0
    run_memory_mb: float = 0.0

    @property
    def own_memory_mb(self) -> float:
        """The model's own peak memory: ``model_memory_mb``, or from an older agent peak − baseline RSS."""
        return own_memory_mb({"model_memory_mb": self.model_memory_mb, "peak_rss_mb": self.peak_rss_mb,
                              "baseline_rss_mb": self.baseline_rss_mb})

    @property
    def per_node_total_ms(self) -> float:
        return float(sum(n.mean_ms for n in self.per_node))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["per_node"] = [n.to_dict() for n in self.per_node]
        d["per_node_total_ms"] = self.per_node_total_ms
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BenchReport:
        names = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in names}
        kw["per_node"] = [NodeTime(str(n["name"]), str(n["op_type"]), float(n["mean_ms"])) for n in d.get("per_node", [])]
        return cls(**kw)
