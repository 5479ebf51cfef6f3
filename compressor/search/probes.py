"""Calibration probes: measure every quant scheme in the model itself before the search.

For each scheme the space offers, one plan quantizes the first half of the layers (the rest stay fp32)
and is measured on the device with per-node times and the interleaved load reference. The device then
shows the scheme's per-layer times in the model's real context (the ops around each layer included) and
how the time outside the layers changes, so the first predictions the search makes for that scheme are
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
    """Per quant label: the first half of the layers that offer it (in network order) get it, the rest
    stay float — a contiguous run, so schemes whose cost depends on their neighbours (static int8 keeps
    activations quantized between consecutive layers) are seen as in a uniform plan."""
    out: dict[str, dict[str, str]] = {}
    for q in quant_labels(problem):
        labels = problem.float_labels()
        usable = [s.name for s in problem.specs if problem.space.has(s.name, q)]
        for layer in usable[: max(1, len(usable) // 2)]:
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
