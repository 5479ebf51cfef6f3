"""Calibration probes: measure every quant scheme in the model itself before the search.

For each scheme the space offers, one plan quantizes the first half of the layers of each kind (the rest
stay fp32) — and, when that half leaves a layer shape unmeasured, a second plan the other half — and is
measured on the device with per-node times and the interleaved load reference. The device then
shows the scheme's per-layer times in the model's real context (the ops around each layer included) and
how the time outside the layers changes, so the first predictions the search makes for that scheme are
calibrated rather than guessed from peak-throughput figures. A probe is a calibration measurement, not a
candidate: it is not offered as a result, its plan is one the search would not pick, and its prediction
error (made from the prior alone) is reported separately from the candidates'.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from devicefit.compressor.search.candidate import Candidate
from devicefit.compressor.search.problem import SearchProblem

if TYPE_CHECKING:
    from devicefit.compressor.search.session import FitSession


def quant_labels(problem: SearchProblem) -> list[str]:
    """Single-technique quant options of the space (in first-seen order)."""
    out: dict[str, None] = {}
    for layer in problem.space.layers:
        for opt in problem.space.atomic(layer):
            if opt.quant is not None and not opt.structural:
                out.setdefault(opt.label, None)
    return list(out)


def _shape(spec: Any) -> tuple[str, int, int, int]:
    return (spec.kind, spec.params, spec.in_elems, spec.out_elems)


def probe_plans(problem: SearchProblem) -> dict[str, dict[str, str]]:
    """Probe name -> labels. Per quant label: of each layer kind (conv, linear), the first half of the
    layers that offer it (in network order) get it, the rest stay float — contiguous runs, so schemes whose
    cost depends on their neighbours (static int8 keeps activations quantized between consecutive layers)
    are seen as in a uniform plan, and every kind is seen at every scheme. When that half leaves a layer
    shape unmeasured at the scheme (a small CNN, whose every layer has its own shape), a second probe
    ``"<label> (2nd half)"`` quantizes the other half: every shape is then measured at every scheme in the
    model's own context. (A transformer's first half already holds every shape of its blocks.)"""
    out: dict[str, dict[str, str]] = {}
    for q in quant_labels(problem):
        by_kind: dict[str, list[Any]] = {}
        for s in problem.specs:
            if problem.space.has(s.name, q):
                by_kind.setdefault(s.kind, []).append(s)
        first = [s for usable in by_kind.values() for s in usable[: max(1, len(usable) // 2)]]
        second = [s for usable in by_kind.values() for s in usable[max(1, len(usable) // 2):]]
        for name, part in ((q, first), (f"{q} (2nd half)", second)):
            if name != q and {_shape(s) for s in part} <= {_shape(s) for s in first}:
                continue
            labels = problem.float_labels()
            for s in part:
                labels[s.name] = q
            if labels != problem.float_labels():
                out[name] = labels
    return out


def run_probes(loop: FitSession, *, note: Callable[[str], None] | None = None) -> list[Candidate]:
    """Measure each probe whose quantized layers are not all measured at their scheme for this model on
    this device yet (a persisted latency model may already hold them)."""
    done: list[Candidate] = []
    base = loop.problem.float_labels()
    for name, labels in probe_plans(loop.problem).items():
        quantized = [c for c in loop.problem.costs(labels) if c.dtype != "fp32"]
        if all(loop.problem.latency.measured(c) for c in quantized):
            continue
        cand = loop.problem.predict(labels, trial=-2 - len(done))
        if note is not None:
            note(f"probe {name}: {sum(1 for k, v in labels.items() if v != base[k])} of {len(labels)} layers")
        loop.evaluate(cand, tag=f"probe:{name}", score=False, register=False)
        done.append(cand)
    return done
