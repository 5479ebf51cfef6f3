"""What a benchmark reports (the Python side of devicefit.v1.BenchmarkReport): latency percentiles, load time,
peak RSS, threads, runtime versions, session options, per-node times. The agent fills it; the host reads it.
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


@dataclass
class BenchReport:
    """One benchmark's result; ``to_dict()`` is the JSON of ``devicefit bench --json``."""

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
