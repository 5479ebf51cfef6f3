"""Interleaved measurement of a candidate against the load reference (the fp32 baseline).

Rounds alternate reference and candidate: ``ref, cand, ref, cand, …, ref``; each candidate block is
bracketed by two reference blocks. The candidate's speed relative to the reference in round *i* is
``cand_i / sqrt(ref_i · ref_{i+1})`` — on a shared machine the load changes between blocks, and the
bracketing references saw (about) the load the candidate saw. The relative speed is the median over
rounds. After ``min_rounds`` rounds, more are run while the rounds disagree (the relative median absolute
deviation of the per-round ratios is above ``spread``): up to ``max_rounds``, and on to ``hard_max_rounds``
while they still disagree by more than ``loose_spread`` — a load spike during a few rounds is outvoted
instead of deciding the median.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import median

from devicefit.compressor.search.confirm import bracketed

MIN_ROUNDS = 3
MAX_ROUNDS = 8
HARD_MAX_ROUNDS = 16
#: rounds are added while the per-round ratios' relative median absolute deviation is above this
SPREAD = 0.05
#: ... and past MAX_ROUNDS while it is above this
LOOSE_SPREAD = 0.12


def rel_mad(xs: list[float]) -> float:
    """Median absolute deviation over the median (0 for fewer than two values)."""
    if len(xs) < 2:
        return 0.0
    m = median(xs)
    return median([abs(x - m) for x in xs]) / m if m > 0 else 0.0


@dataclass
class Interleaved:
    refs: list[float] = field(default_factory=list)
    cands: list[float] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        """Per round: candidate p50 ÷ geometric mean of the reference p50s just before and after it."""
        pairs = (bracketed(c, self.refs[i], self.refs[i + 1]) for i, c in enumerate(self.cands) if i + 1 < len(self.refs))
        return [r for r in pairs if r is not None]

    @property
    def ratio(self) -> float:
        return median(self.ratios)

    @property
    def spread(self) -> float:
        return rel_mad(self.ratios)

    def to_dict(self) -> dict[str, object]:
        return {"refs": self.refs, "cands": self.cands}


def interleave(ref: Callable[[], float], cand: Callable[[], float], *, min_rounds: int = MIN_ROUNDS,
               max_rounds: int = MAX_ROUNDS, spread: float = SPREAD, hard_max_rounds: int = HARD_MAX_ROUNDS,
               loose_spread: float = LOOSE_SPREAD) -> Interleaved:
    """Run ``ref, (cand, ref) × n`` with ``min_rounds <= n <= hard_max_rounds`` (see the module docstring)."""
    out = Interleaved([ref()])
    while True:
        out.cands.append(cand())
        out.refs.append(ref())
        n = len(out.cands)
        if n >= hard_max_rounds or (n >= min_rounds and out.spread <= spread) or (n >= max_rounds and out.spread <= loose_spread):
            return out
