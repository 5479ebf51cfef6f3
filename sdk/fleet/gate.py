"""The gate between rollout waves: measured on the devices, not just "did it install".

A wave passes when (1) the fraction of its devices that failed (offline, transfer, load or benchmark error) is
at most ``max_failed_fraction``; (2) every measured p90 is within ``max_p90_ms``; (3) the median over the wave
of new p90 / previous model's p90 (both measured on the same device, same run) is at most
``max_regression`` (the median, so one noisy device does not decide it; devices without a previous model
do not count here).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from devicefit.errors import UserInputError


@dataclass(frozen=True)
class Gate:
    """Conditions a wave must meet before the next one starts; ``None`` disables a condition."""

    max_p90_ms: float | None = None
    max_regression: float | None = 1.10
    max_failed_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.max_p90_ms is not None and not self.max_p90_ms > 0:
            raise UserInputError(f"Gate.max_p90_ms={self.max_p90_ms} is not positive", "pass a budget in ms > 0, or None")
        if self.max_regression is not None and not self.max_regression >= 1.0:
            raise UserInputError(f"Gate.max_regression={self.max_regression} is below 1.0",
                                 "pass a ratio >= 1.0 (1.10 = at most 10% slower), or None")
        if not 0.0 <= self.max_failed_fraction <= 1.0:
            raise UserInputError(f"Gate.max_failed_fraction={self.max_failed_fraction} is outside [0, 1]",
                                 "pass a fraction, e.g. 0.0 (no failures allowed) or 0.05")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Gate:
        return cls(**{k: d[k] for k in ("max_p90_ms", "max_regression", "max_failed_fraction") if k in d})


@dataclass(frozen=True)
class DeviceResult:
    """One device's outcome in a wave, as the gate sees it."""

    device_id: str
    ok: bool
    p90_ms: float | None = None
    prev_p90_ms: float | None = None


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reasons: list[str] = field(default_factory=list)
    failed_fraction: float = 0.0
    max_p90_ms: float | None = None
    median_regression: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(gate: Gate, results: Sequence[DeviceResult]) -> Verdict:
    """The gate's verdict on one wave."""
    if not results:
        return Verdict(ok=True)
    failed = sum(not r.ok for r in results) / len(results)
    p90s = [r.p90_ms for r in results if r.ok and r.p90_ms is not None]
    ratios = [r.p90_ms / r.prev_p90_ms for r in results
              if r.ok and r.p90_ms is not None and r.prev_p90_ms and r.prev_p90_ms > 0]
    worst = max(p90s) if p90s else None
    median = statistics.median(ratios) if ratios else None
    reasons = []
    if failed > gate.max_failed_fraction:
        reasons.append(f"{failed:.0%} of the wave failed (allowed {gate.max_failed_fraction:.0%})")
    if gate.max_p90_ms is not None and worst is not None and worst > gate.max_p90_ms:
        over = [r.device_id for r in results if r.ok and r.p90_ms is not None and r.p90_ms > gate.max_p90_ms]
        reasons.append(f"p90 {worst:.3f} ms > budget {gate.max_p90_ms:g} ms on {len(over)} device(s)")
    if gate.max_regression is not None and median is not None and median > gate.max_regression:
        reasons.append(f"median p90 ratio new/previous {median:.3f} > {gate.max_regression:g}")
    return Verdict(ok=not reasons, reasons=reasons, failed_fraction=failed, max_p90_ms=worst, median_regression=median)
