"""Can the latency budget be reached at all? A lower bound on any plan's latency, and the verdict.

The bound is the fastest plan the calibrated latency model can find in the space — the fastest uniform
plan (an *anchor*), then improved one layer at a time (coordinate descent over every layer's options,
drop ignored: a lower bound on latency must not care about accuracy) — or the fastest plan *measured* so far
when a measurement beat it (predictions can be wrong; measurements are what count). The budget is *out of
reach* only when that bound misses it by more than a margin: :attr:`~.config.SearchConfig.reach_margin`
when the bound's dtypes are calibrated on the device, :attr:`~.config.SearchConfig.explore_margin` while one
is not. The session (:meth:`~.session.FitSession.search`) then measures the seeds, looks again, and stops
the trials instead of predicting plans that cannot pass until the time limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from devicefit.compressor.search.candidate import Budget, Candidate, summarize
from devicefit.compressor.search.config import SearchConfig
from devicefit.compressor.search.problem import SearchProblem


@dataclass(frozen=True)
class Reach:
    """The verdict on the latency budget: ``bound_ms`` is the fastest plan found (``source``: predicted or
    measured), ``reachable`` whether it is within ``budget_ms`` × (1 + ``margin``)."""

    reachable: bool
    bound_ms: float
    source: str
    budget_ms: float
    margin: float
    fp32_ms: float | None
    labels: dict[str, str] = field(default_factory=dict)
    uncalibrated: tuple[str, ...] = ()
    #: trials run when the search stopped because of this verdict (None: it did not stop)
    stopped_after: int | None = None

    @property
    def bound_ratio(self) -> float | None:
        """The bound ÷ the fp32 baseline's p50."""
        return self.bound_ms / self.fp32_ms if self.fp32_ms else None

    @property
    def budget_ratio(self) -> float | None:
        return self.budget_ms / self.fp32_ms if self.fp32_ms else None

    def message(self) -> str:
        """One line for the progress output and the report."""
        def as_ratio(ms: float, ratio: float | None) -> str:
            return f"{ms:.3f} ms" + (f" = {ratio:.2f} × fp32" if ratio is not None else "")

        what = "predicted" if self.source == "predicted" else "measured"
        head = (f"the fastest plan {what} is {as_ratio(self.bound_ms, self.bound_ratio)}, the latency budget "
                f"{as_ratio(self.budget_ms, self.budget_ratio)}")
        if self.reachable:
            return f"latency budget within reach: {head}"
        tail = f"; stopped after {self.stopped_after} trials" if self.stopped_after is not None else ""
        return (f"latency budget out of reach: {head} (more than {self.margin:.0%} over it){tail}; the closest "
                "measured candidate is returned — relax the latency budget, or widen the space (prune / low-rank)")

    def to_dict(self) -> dict[str, Any]:
        return {"reachable": self.reachable, "bound_ms": self.bound_ms, "bound_ratio_to_fp32": self.bound_ratio,
                "source": self.source, "budget_ms": self.budget_ms, "budget_ratio_to_fp32": self.budget_ratio,
                "margin": self.margin, "uncalibrated": list(self.uncalibrated), "stopped_after_trials": self.stopped_after,
                "plan_summary": summarize(self.labels), "message": self.message()}


def _predicted_ms(problem: SearchProblem, labels: Mapping[str, str]) -> tuple[float, tuple[str, ...]]:
    pred = problem.latency.predict(problem.latency_costs(problem.costs(labels)))
    return pred.total_ms, pred.uncalibrated


def fastest_plan(problem: SearchProblem, starts: Sequence[dict[str, str]], *,
                 passes: int = 2) -> tuple[dict[str, str], float, tuple[str, ...]]:
    """(labels, predicted ms, uncalibrated dtypes) of the fastest plan found from ``starts`` (the anchors)
    by coordinate descent: each layer in turn takes the option that lowers the whole plan's prediction (the
    time outside the layers and the int8 / float boundaries included), for at most ``passes`` passes."""
    space = problem.space
    timed = [(_predicted_ms(problem, lab)[0], i) for i, lab in enumerate([problem.float_labels(), *starts])]
    best = dict([problem.float_labels(), *starts][min(timed)[1]])
    best_ms, _ = _predicted_ms(problem, best)
    for _ in range(passes):
        improved = False
        for layer in space.layers:
            for lab in space.labels(layer):
                if lab == best[layer]:
                    continue
                ms, _ = _predicted_ms(problem, {**best, layer: lab})
                if ms < best_ms * (1 - 1e-9):
                    best[layer], best_ms, improved = lab, ms, True
        if not improved:
            break
    return best, best_ms, _predicted_ms(problem, best)[1]


def assess(problem: SearchProblem, budget: Budget, cfg: SearchConfig, *, starts: Sequence[dict[str, str]],
           measured: Iterable[Candidate], fp32_ms: float | None) -> Reach | None:
    """The verdict on ``budget``'s latency limit (None without one). ``measured``: every plan measured so far
    (calibration probes included: they are plans of the space too)."""
    if budget.latency_ms is None:
        return None
    labels, bound, uncalibrated = fastest_plan(problem, starts)
    source = "predicted"
    done = [c for c in measured if c.measured_ms is not None and c.error is None]
    quickest = min(done, key=lambda c: c.measured_ms or 0.0, default=None)
    if quickest is not None and quickest.measured_ms is not None and quickest.measured_ms < bound:
        labels, bound, uncalibrated, source = dict(quickest.labels), quickest.measured_ms, (), "measured"
    margin = cfg.explore_margin if uncalibrated else cfg.reach_margin
    return Reach(reachable=bound <= budget.latency_ms * (1 + margin), bound_ms=bound, source=source,
                 budget_ms=budget.latency_ms, margin=margin, fp32_ms=fp32_ms, labels=labels, uncalibrated=uncalibrated)
