"""The prediction side of a search: latency, size, the model's own peak memory and metric drop of a plan, and how each
prediction is corrected by what was measured."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from devicefit.compressor.latency.calibrated import CalibratedModel, without_profiler_overhead
from devicefit.compressor.latency.nodemap import NodeMap, effective_dtypes
from devicefit.compressor.latency.roofline import (
    LayerCost,
    LayerSpec,
    plan_costs,
    predicted_size_bytes,
    with_dtype,
)
from devicefit.compressor.search.candidate import Budget, Candidate, Materialized, Timing, plan_hash
from devicefit.compressor.search.sensitivity import SensitivityTable
from devicefit.compressor.search.space import SearchSpace


@dataclass
class MemoryModel:
    """The model's own peak memory (MB: RSS over the idle agent, :attr:`.Timing.model_memory_mb`) ≈ a + b × file
    size (MB) — the quantity the memory budget applies to, predicted the way it is measured.

    Prior a = 2 MB, b = 1.6: onnxruntime holds the weights once, plus the transient copy of the file while
    it loads and the activation arena while it runs. Measured by the agent's benchmark on a 2-core x86 host
    (onnxruntime 1.32, batch 1): MiniLM-L6 fp32 (90.7 MB file) 132–136 MB, int8 dynamic (23.1 MB) 46–49 MB,
    digits-cnn (1.1 MB) 2.5–6.6 MB. Measurements refit b (clamped to [0.5, 4]) and a."""

    points: list[tuple[float, float]] = field(default_factory=list)
    prior_base_mb: float = 2.0
    prior_slope: float = 1.6

    def predict(self, size_mb: float) -> float:
        if not self.points:
            return self.prior_base_mb + self.prior_slope * size_mb
        slope = self.prior_slope
        xs = [x for x, _ in self.points]
        if len(self.points) >= 2 and max(xs) - min(xs) > 1.0:
            mx, my = statistics.fmean(xs), statistics.fmean(y for _, y in self.points)
            cov = sum((x - mx) * (y - my) for x, y in self.points)
            var = sum((x - mx) ** 2 for x in xs)
            slope = min(4.0, max(0.5, cov / var))
        base = statistics.median(y - slope * x for x, y in self.points)
        return max(0.0, base + slope * size_mb)

    def observe(self, size_mb: float, model_mb: float) -> None:
        """A measured model memory (MB) of a file of ``size_mb``; 0 (not measured) is ignored."""
        if model_mb > 0:
            self.points.append((size_mb, model_mb))


@dataclass
class DropModel:
    """Measured drop ≈ scale × additive sensitivity sum (scale: median ratio, clamped to [0.25, 4])."""

    points: list[tuple[float, float]] = field(default_factory=list)

    @property
    def scale(self) -> float:
        ratios = [m / p for p, m in self.points if p > 1e-4]
        return min(4.0, max(0.25, statistics.median(ratios))) if ratios else 1.0

    def predict(self, additive: float) -> float:
        return additive * self.scale

    def observe(self, predicted_additive: float, measured: float) -> None:
        self.points.append((predicted_additive, measured))


class SearchProblem:
    """Everything needed to predict a plan's numbers and to learn from a measured one."""

    def __init__(
        self,
        specs: Sequence[LayerSpec],
        *,
        total_params: int,
        space: SearchSpace,
        sensitivity: SensitivityTable,
        latency: CalibratedModel,
        budget: Budget,
        consumers: Mapping[str, Sequence[str]] | None = None,
        model_hash: str = "",
        joint: Callable[[dict[str, str]], float] | None = None,
    ) -> None:
        self.specs = list(specs)
        self.total_params = int(total_params)
        self.space = space
        self.sensitivity = sensitivity
        self.latency = latency
        self.budget = budget
        self.consumers = dict(consumers or {})
        self.producers: dict[str, list[str]] = {}
        for src, dsts in self.consumers.items():
            for d in dsts:
                self.producers.setdefault(d, []).append(src)
        self.model_hash = model_hash
        self.memory = MemoryModel()
        self.drops = DropModel()
        self._errors: list[dict[str, Any]] = []
        #: whole-plan fake-compress drop (:class:`~.sensitivity.JointDrop`), used once the per-layer sum is large
        self.joint = joint
        self.joint_drops: dict[str, float] = {}

    # ------------------------------------------------------------------------------ predict
    def float_labels(self) -> dict[str, str]:
        return {layer: self.space.labels(layer)[0] for layer in self.space.layers}

    def costs(self, labels: Mapping[str, str]) -> list[LayerCost]:
        return plan_costs(self.specs, self.space.choices(labels), consumers=self.consumers)

    def latency_costs(self, costs: Sequence[LayerCost]) -> list[LayerCost]:
        """``costs`` as the runtime will run them. Once the device has been seen to run a float layer whose
        neighbours are statically quantized as int8 itself (onnxruntime quantizes a float Conv / MatMul
        between quantized activations at load time), such a layer is costed as int8 — every layer it
        takes its input from and every layer that takes its output being int8 static."""
        if not self.latency.quantizes_sandwiched:
            return list(costs)
        dtype = {c.name: c.dtype for c in costs}
        out = []
        for c in costs:
            prods, cons = self.producers.get(c.name, ()), self.consumers.get(c.name, ())
            if (c.dtype == "fp32" and prods and cons and all(dtype.get(p) == "int8" for p in prods)
                    and all(dtype.get(q) == "int8" for q in cons)):
                c = with_dtype(c, "int8")
            out.append(c)
        return out

    def predict(self, labels: Mapping[str, str], *, trial: int = -1) -> Candidate:
        labels = dict(labels)
        costs = self.costs(labels)
        pred = self.latency.predict(self.latency_costs(costs))
        size = predicted_size_bytes(self.specs, costs, self.total_params)
        additive = self.drop_basis(labels)
        return Candidate(
            trial=trial,
            labels=labels,
            plan_hash=plan_hash(self.space.plan(labels)),
            predicted_ms=pred.total_ms,
            predicted_size_bytes=size,
            predicted_memory_mb=self.memory.predict(size / 1e6),
            predicted_drop=self.drops.predict(additive),
            uncalibrated=pred.uncalibrated,
        )

    def drop_basis(self, labels: Mapping[str, str]) -> float:
        """What the drop model scales: the plan's joint fake-compress drop when it was computed, else the
        per-layer combination (:meth:`SensitivityTable.plan_drop`)."""
        key = plan_hash(self.space.plan(labels))
        if key in self.joint_drops:
            return self.joint_drops[key]
        return self.sensitivity.plan_drop(self.space, dict(labels))

    def refine_drop(self, cand: Candidate) -> Candidate:
        """``cand`` with its drop predicted from the joint fake-compress drop of its whole plan (computed once
        per plan; no-op without a joint estimator)."""
        if self.joint is None:
            return cand
        if cand.plan_hash not in self.joint_drops:
            self.joint_drops[cand.plan_hash] = max(0.0, float(self.joint(dict(cand.labels))))
        cand.predicted_drop = self.drops.predict(self.joint_drops[cand.plan_hash])
        return cand

    # ------------------------------------------------------------------------------ learn
    def learn(
        self, cand: Candidate, timing: Timing, mat: Materialized | None, node_map: NodeMap | None, *, score: bool = True
    ) -> dict[str, Any]:
        """Fold one measurement into the latency, memory and drop models. Returns the per-layer split.

        ``score``: record the candidate's prediction error (off for the fp32 baseline, which is the first
        calibration point and has nothing calibrated to be predicted from)."""
        costs = self.costs(cand.labels)
        per_layer: dict[str, float] = {}
        other = None
        profiled, overhead = timing.profiled_e2e_ms, 0.0
        if node_map is not None and timing.per_node:
            # the profiler's own per-kernel cost off every node before the times are rescaled to the p50
            nodes, profiled, overhead = without_profiler_overhead(timing.per_node, timing.p50_ms, timing.profiled_e2e_ms)
            per_layer, other, _total = node_map.split(nodes)
            # learn each layer under the dtype its kernels actually ran in (a float layer the runtime
            # quantized itself is an int8 layer, not a slow or fast fp32 one)
            ran = effective_dtypes(node_map, timing.per_node)
            upgraded = {c.name: ran[c.name] for c in costs if c.dtype == "fp32" and ran.get(c.name, "fp32") != "fp32"}
            if upgraded:
                self.latency.quantizes_sandwiched = True
                costs = [with_dtype(c, upgraded[c.name]) if c.name in upgraded else c for c in costs]
        self.latency.observe(
            costs,
            p50_ms=timing.p50_ms,
            per_layer_ms=per_layer or None,
            other_ms=other,
            profiled_e2e_ms=profiled,
            predicted_ms=cand.predicted_ms if score else None,
            label=f"trial {cand.trial}",
            n_nodes=len(timing.per_node) or None,
            overhead_ms=overhead,
        )
        size = mat.size_bytes if mat is not None else cand.size_bytes
        if size is not None:
            self.memory.observe(size / 1e6, timing.model_memory_mb)
        if mat is not None and not (cand.distilled or cand.finished):  # the drop model predicts the search's settings
            self.drops.observe(self.drop_basis(cand.labels), mat.drop)
        return {"per_layer": per_layer, "other_ms": other}

    def prediction_errors(self) -> list[dict[str, Any]]:
        return list(self.latency.errors)
