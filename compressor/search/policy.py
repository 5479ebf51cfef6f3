"""The measure policy: pure functions of candidates, the budget and the settings.

Which prediction is worth a measurement (:func:`looks_feasible`, :func:`worth_measuring`, :func:`is_anchor`),
which measured candidate wins (:func:`best_passing`, :func:`closest`) and the rule the fit never breaks where
latency is a goal: no compressed model measured no faster than fp32 is handed back
(:func:`slower_than_fp32`). ``fp32`` is the measured fp32 baseline (None before it is measured).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from devicefit.compressor.search.candidate import Budget, Candidate
from devicefit.compressor.search.config import SearchConfig
from devicefit.compressor.search.space import SearchSpace


def drop_ok(c: Candidate, budget: Budget, cfg: SearchConfig) -> bool:
    """The predicted drop is within the accuracy budget (plus :attr:`SearchConfig.drop_margin`)."""
    b = budget.accuracy_drop
    return b is None or c.predicted_drop <= max(b * (1 + cfg.drop_margin), 1e-3)


def looks_feasible(c: Candidate, budget: Budget, cfg: SearchConfig) -> bool:
    """Every prediction of ``c`` is within its budget, up to the margins (wider for uncalibrated dtypes). Memory:
    the model's own predicted peak (:class:`~.problem.MemoryModel`, what the agent measures as
    ``model_memory_mb``) within 10% of the budget."""
    margin = cfg.explore_margin if c.uncalibrated else cfg.latency_margin
    if budget.latency_ms is not None and c.predicted_ms > budget.latency_ms * (1 + margin):
        return False
    if not drop_ok(c, budget, cfg):
        return False
    if budget.size_mb is not None and c.predicted_size_bytes / 1e6 > budget.size_mb * 1.05:
        return False
    return not (budget.memory_mb is not None and c.predicted_memory_mb > budget.memory_mb * 1.1)


def looks_feasible_but_drop(c: Candidate, budget: Budget, cfg: SearchConfig) -> bool:
    """:func:`looks_feasible` with the drop left out (is it worth predicting the drop more carefully?)."""
    return looks_feasible(replace(c, predicted_drop=0.0), budget, cfg)


def faster_than_fp32(c: Candidate, fp32: Candidate | None) -> bool:
    """``c`` is *predicted* faster than the measured fp32 baseline (true before there is one)."""
    return fp32 is None or fp32.measured_ms is None or c.predicted_ms < fp32.measured_ms


def slower_than_fp32(c: Candidate, fp32: Candidate | None, budget: Budget, tie: float = 0.0) -> bool:
    """``c`` is a compressed candidate *measured* no faster than the fp32 baseline (more than ``tie`` slower:
    within it, the same speed), where latency is a goal (a latency budget is set): the fit never hands such a
    model back. A storage-only technique (int8 weights of a GRU, which onnxruntime runs in float) measures at
    fp32's speed, give or take the noise: within ``tie`` it may still win a fit bound by size."""
    if budget.latency_ms is None or fp32 is None or c is fp32 or fp32.measured_ms is None:
        return False
    limit = fp32.measured_ms * (1 + tie) if tie > 0 else fp32.measured_ms
    return c.plan_hash != fp32.plan_hash and c.measured_ms is not None and (
        c.measured_ms > limit if tie > 0 else c.measured_ms >= limit)


def anchors(space: SearchSpace) -> list[dict[str, str]]:
    """The uniform single-technique plans (each quant scheme, each structural option, on every layer that
    offers it): the configs a user would try by hand. The fit measures those that could win, so its result is
    never beaten by one of them on both latency and accuracy."""
    labels = {o.label for layer in space.layers for o in space.atomic(layer) if o.parts()}
    return [space.uniform(lab) for lab in sorted(labels)]


def is_anchor(c: Candidate, anchor_plans: Sequence[dict[str, str]], fp32: Candidate | None, budget: Budget,
              *, finishable: bool = False) -> bool:
    """``c`` is an anchor predicted faster than the measured fp32 baseline, with a predicted drop within twice
    the accuracy budget — measured even if the latency prediction says it misses the budget (predictions can
    be wrong; a uniform config is what the fit must beat). A ``finishable`` anchor (its techniques have quick
    search settings the fit's finish restores: uniform int8 static) is measured whatever its predicted drop:
    the drop it is predicted is the quick one, and it may be the plan the finish brings within budget."""
    if c.labels not in anchor_plans or not faster_than_fp32(c, fp32):
        return False
    b = budget.accuracy_drop
    return b is None or finishable or c.predicted_drop <= max(2 * b, 1e-3)


def best_passing(measured: Iterable[Candidate], budget: Budget, cfg: SearchConfig,
                 fp32: Candidate | None) -> Candidate | None:
    """The fastest measured candidate within every budget (and not slower than fp32 beyond the tie); latencies
    within :attr:`SearchConfig.tie` of the fastest are a tie, broken by the lower drop (so a passing fp32 model
    wins over a compressed one as fast as it)."""
    passing = [c for c in measured if c.passes(budget) and not slower_than_fp32(c, fp32, budget, cfg.tie)]
    if not passing:
        return None
    fastest = min(c.latency_ms for c in passing)
    ties = [c for c in passing if c.latency_ms <= fastest * (1 + cfg.tie)]
    return min(ties, key=lambda c: (c.drop, c.latency_ms))


def contends(c: Candidate, budget: Budget, within: float) -> bool:
    """``c`` passes every budget, or misses only the latency one by at most ``within`` (relative): a paired
    re-measurement (:mod:`.confirm`) may decide it either way, a single measurement cannot."""
    if not c.measured or c.error is not None:
        return False
    latency, *others = c.constraints(budget)
    return all(x <= 0 for x in others) and latency <= within


def closest(measured: Iterable[Candidate], budget: Budget, fp32: Candidate | None) -> Candidate | None:
    """With nothing passing: the measured candidate with the smallest total relative excess over the budgets
    (never a compressed model measured slower than fp32; the fp32 baseline is among ``measured``)."""
    tried = [c for c in measured if not slower_than_fp32(c, fp32, budget)]
    if not tried:
        return None
    return min(tried, key=lambda c: (sum(max(0.0, v) for v in c.constraints(budget)), c.latency_ms))


def worth_measuring(c: Candidate, best: Candidate | None, cfg: SearchConfig) -> bool:
    """``c`` could beat ``best`` (the fastest passing candidate so far; anything could when there is none)."""
    if best is None:
        return True
    t = cfg.tie
    # optimism under uncertainty: a dtype never measured here may be faster than its prior says
    pred = c.predicted_ms / (1 + cfg.explore_margin) if c.uncalibrated else c.predicted_ms
    return pred < best.latency_ms * (1 - t) or (pred <= best.latency_ms * (1 + t) and c.predicted_drop < best.drop - 0.002)


def accuracy_miss(measured: Iterable[Candidate], budget: Budget, fp32: Candidate | None) -> Candidate | None:
    """With nothing passing: the measured candidate within every budget but the accuracy one, by the smallest
    drop (a thorough finish may bring it in); None when there is none (or no accuracy budget)."""
    if budget.accuracy_drop is None:
        return None
    misses = [c for c in measured if c.measured and c.error is None and not slower_than_fp32(c, fp32, budget)
              and all(x <= 0 for x in c.constraints(budget)[:-1])]
    return min(misses, key=lambda c: (c.drop, c.latency_ms), default=None)


def keep_finished(cand: Candidate, finished: Candidate, budget: Budget, fp32: Candidate | None) -> bool:
    """Whether the finished (distilled / thoroughly recovered) ``finished`` replaces the measured ``cand``: when
    both pass, only with a lower drop; otherwise when it passes or loses less (never one measured slower than
    fp32)."""
    if not finished.measured or finished.error is not None:
        return False
    if cand.passes(budget):
        return finished.passes(budget) and finished.drop < cand.drop
    if slower_than_fp32(finished, fp32, budget):
        return False
    return finished.passes(budget) or finished.drop < cand.drop
