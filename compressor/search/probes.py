"""Calibration probes: measure every quant scheme in the model itself before the search.

For each scheme the space offers, one plan quantizes every other layer of each group of same-shaped
layers (the rest stay fp32) and is measured on the device with per-node times. In one run the device
then shows the scheme's time *and* the fp32 time of twins of the same shape, in the model's real context
(the ops around each layer included), so the first predictions the search makes for that scheme are
calibrated rather than guessed from peak-throughput figures. A probe is a calibration measurement, not a
candidate: it is not offered as a result, its plan is one the search would not pick, and its prediction
error (made from the prior alone) is reported separately from the candidates'.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from devicefit.compressor.latency.roofline import dtype_of
from devicefit.compressor.search.candidate import Candidate
from devicefit.compressor.search.problem import SearchProblem


def quant_labels(problem: SearchProblem) -> list[str]:
    """Single-technique quant options of the space (in first-seen order)."""
    out: dict[str, None] = {}
    for layer in problem.space.layers:
        for opt in problem.space.atomic(layer):
            if opt.quant is not None and not opt.structural:
                out.setdefault(opt.label, None)
    return list(out)


def probe_plans(problem: SearchProblem) -> dict[str, dict[str, str]]:
    """Per quant label: every other layer of each (kind, params, MACs) group gets it, the rest stay float;
    layers without a same-shaped twin alternate among themselves (so a probe never quantizes everything)."""
    groups: dict[tuple[str, int, int], list[str]] = {}
    for s in problem.specs:
        groups.setdefault((s.kind, s.params, s.macs), []).append(s.name)
    out: dict[str, dict[str, str]] = {}
    for q in quant_labels(problem):
        labels = problem.float_labels()
        singles: list[str] = []
        for members in groups.values():
            usable = [m for m in members if problem.space.has(m, q)]
            if len(usable) == 1:
                singles += usable
                continue
            for layer in usable[::2]:
                labels[layer] = q
        for layer in singles[::2]:
            labels[layer] = q
        if labels != problem.float_labels():
            out[q] = labels
    return out


def run_probes(loop: Any, *, note: Callable[[str], None] | None = None) -> list[Candidate]:
    """Measure a probe for every scheme this model has not been measured with on this device yet."""
    done: list[Candidate] = []
    for q, labels in probe_plans(loop.problem).items():
        cand = loop.problem.predict(labels, trial=-2 - len(done))
        dtype = None
        for layer, lab in labels.items():
            opt = loop.problem.space.option(layer, lab)
            if opt.quant is not None:
                dtype = dtype_of(opt.quant)
                break
        if dtype not in cand.uncalibrated:
            continue  # this device already showed this scheme for this model (persisted latency model)
        if note is not None:
            note(f"probe {q}: {sum(1 for v in labels.values() if v == q)} of {len(labels)} layers")
        loop.evaluate(cand, tag=f"probe:{q}", score=False, register=False)
        done.append(cand)
    return done
