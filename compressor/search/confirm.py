"""Noise-proof choice: the top contenders re-measured in paired rounds with the fp32 reference.

One measurement per candidate cannot rank candidates a few percent apart on a shared board or host (a 0.1 ms
model's p50 moves by 15% between two runs). Before the winner is chosen, the fastest passing candidates (and
those that missed only the latency budget, by little) are re-measured in ``rounds`` rounds; in each round
every candidate's timed block is bracketed by two blocks of the fp32 reference (``ref, c1, ref, c2, ref, …``, the candidates' order rotated from round to round), and its
speed that round is its p50 over the geometric mean of its two bracketing reference p50s — the load moves the
candidate and its references alike, and cancels. A candidate's confirmed latency is its median ratio × the
fp32 baseline's p50 (the latency at the baseline's load, where the budget was set); the choice is then made
on those (:func:`~.policy.best_passing`), and the confidence of the pick is the share of rounds in which it
was faster than the runner-up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

#: one timed block of a model file -> its p50 (ms)
Block = Callable[[Path], float]


@dataclass
class Paired:
    """Per candidate key: its ratio to the bracketing fp32 blocks, per round, and its raw block p50s."""

    ratios: dict[str, list[float]]
    blocks: dict[str, list[float]]

    @property
    def rounds(self) -> int:
        return min((len(v) for v in self.ratios.values()), default=0)

    def ratio(self, key: str) -> float:
        return median(self.ratios[key])

    def faster_share(self, a: str, b: str) -> float:
        """Share of rounds in which ``a``'s ratio was below ``b``'s (ties count half)."""
        pairs = list(zip(self.ratios[a], self.ratios[b], strict=False))
        if not pairs:
            return 0.0
        return sum(1.0 if x < y else 0.5 if x == y else 0.0 for x, y in pairs) / len(pairs)

    def confidence(self, pick: str, runner_up: str | None) -> dict[str, Any]:
        """What the report says about the pick."""
        out: dict[str, Any] = {"rounds": self.rounds, "ratio_to_fp32": self.ratio(pick), "runner_up": runner_up}
        if runner_up is not None:
            out["runner_up_ratio_to_fp32"] = self.ratio(runner_up)
            out["faster_than_runner_up_share"] = self.faster_share(pick, runner_up)
        return out


def bracketed(t: float, before: float, after: float) -> float | None:
    """A block's p50 ``t`` relative to the reference blocks just before and after it (their geometric mean);
    None when a reference block failed (p50 ≤ 0)."""
    return t / math.sqrt(before * after) if before > 0 and after > 0 else None


def paired_rounds(block: Block, reference: Path, paths: Mapping[str, Path], *, rounds: int) -> Paired:
    """``rounds`` rounds of ``ref, c1, ref, c2, …, ref`` (candidate order rotated each round)."""
    keys = list(paths)
    ratios: dict[str, list[float]] = {k: [] for k in keys}
    blocks: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(rounds):
        order = keys[r % len(keys):] + keys[: r % len(keys)] if keys else []
        before = block(reference)
        for k in order:
            t = block(paths[k])
            after = block(reference)
            blocks[k].append(t)
            if (ratio := bracketed(t, before, after)) is not None:
                ratios[k].append(ratio)
            before = after
    return Paired(ratios, blocks)
