"""A per-device latency model calibrated from measurements.

Prior: the profile's roofline (:mod:`.roofline`). Each measurement of a plan on the device teaches it:

* with per-node times (mapped onto layers by :mod:`.nodemap`): per layer×dtype and per op-kind×dtype
  *efficiency ratios* measured ÷ roofline (robust: the median of what was seen), and the ``other`` time
  (norms, softmax, adds, session overhead) = p50 − Σ layer times;
* with end-to-end times only (or per-node times swamped by the profiler's own cost, as on tiny models):
  the p50 is split over the layers in proportion to their roofline times (the prior share left for the
  rest), so the same robust ratios apply; mixes of measured plans then interpolate between them.

A layer's prediction uses the most specific ratio known: layer×dtype → kind×dtype → layer×fp32 →
kind×fp32 → 1. Prediction errors (made before each measurement) are kept: ``median_error()``.
Parameters persist per device id (``save`` / ``load``, JSON); per-layer ratios are keyed by model hash.
Wherever this session has measured a key, its own values are used and the persisted ones set aside (they
were learned under another day's load): the model follows the search it steers.
"""

from __future__ import annotations

import json
import os
import statistics
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from devicefit.compressor.latency.roofline import DTYPE_COSTS, LayerCost, Roofline, glue_melems, with_dtype

#: version of the saved parameters: a file written by another version is not reused (its ratios were learned
#: under other rules — v2: per-node trust by kernel size, shape classes, ratios per benchmark settings; v3:
#: non-layer points carry their session and int8 / float conversion elements; v4: and their plan's p50, depthwise convs are kind dwconv)
FORMAT_VERSION = 4
_KEEP = 64  # ratios kept per key (oldest dropped)
_KEEP_CLASS = 256  # ... per shape class (many layers feed one class)
_PRIOR_OTHER = 0.25  # other ≈ 25% of layer time before anything is measured
#: penalty on a change of slope of the non-layer time between count segments (see ``_other_ms``)
SMOOTH = 10.0
#: per-node times are trusted when the mean kernel takes at least this long (onnxruntime's profiler adds a
#: few µs per kernel event: at 20 µs that is ≲ 20%; digits-cnn at batch 1 averages ~6 µs per kernel)
MIN_KERNEL_MS = 0.02


def profiler_overhead_ms(per_node: Sequence[Mapping[str, Any]], p50_ms: float, profiled_e2e_ms: float | None) -> float:
    """onnxruntime's profiler adds its own cost to every kernel event: per node, the cheapest node's time (a
    Reshape or Shape does no work: what it took is the profiler's and the dispatch's), never more than the
    profiled runs' excess over the p50 per node. 0 when there is nothing to tell it from."""
    times = [float(n["mean_ms"]) for n in per_node]
    if not times or not profiled_e2e_ms or profiled_e2e_ms <= p50_ms:
        return 0.0
    return max(0.0, min(min(times), (profiled_e2e_ms - p50_ms) / len(times)))


def without_profiler_overhead(per_node: Sequence[Mapping[str, Any]], p50_ms: float,
                              profiled_e2e_ms: float | None) -> tuple[list[dict[str, Any]], float | None, float]:
    """(per-node times, profiled wall time, the per-node overhead taken off) with :func:`profiler_overhead_ms` taken off every node and off the
    wall time once per node: a proportional rescale to the p50 then no longer hands a model of many small
    kernels' layers (and its norms, adds, reshapes) the profiler's cost."""
    o = profiler_overhead_ms(per_node, p50_ms, profiled_e2e_ms)
    if o <= 0:
        return [dict(n) for n in per_node], profiled_e2e_ms, 0.0
    nodes = [{**n, "mean_ms": max(0.0, float(n["mean_ms"]) - o)} for n in per_node]
    return nodes, (profiled_e2e_ms - o * len(nodes)) if profiled_e2e_ms else profiled_e2e_ms, o


#: the ratio tables (attributes of :class:`CalibratedModel`) whose values are split into earlier sessions'
#: and this session's
_TABLES = ("kind_ratios", "model_kind_ratios", "layer_ratios", "class_ratios")


class OtherPoint(NamedTuple):
    """One measurement's time outside the layers, and what explains it (see ``CalibratedModel._other_ms``)."""

    counts: dict[str, int]  # layers per non-fp32 dtype
    ms: float
    session: str
    glue: float  # :func:`~.roofline.glue_melems` of the plan
    p50_ms: float = 0.0  # the plan's whole latency (its weight in the fit: noise grows with it); 0 = unknown


@dataclass
class Prediction:
    """Predicted latency of one plan."""

    total_ms: float
    per_layer: dict[str, float]
    other_ms: float
    #: dtype classes in the plan never measured on this device (prediction is a prior for them)
    uncalibrated: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"total_ms": self.total_ms, "other_ms": self.other_ms, "uncalibrated": list(self.uncalibrated)}


@dataclass
class CalibratedModel:
    """Roofline × learned efficiency ratios + learned overhead, for one device and one model."""

    roofline: Roofline
    device_id: str = "host"
    model_key: str = ""
    #: the benchmark settings the measurements were made under ("" = batch 1, the runner's threads; else e.g.
    #: "batch32-threads1"): efficiencies differ with them, so device-wide ratios are kept per scope
    scope: str = ""
    #: device-wide (every model measured on this device) kind×dtype ratios
    kind_ratios: dict[str, list[float]] = field(default_factory=dict)
    #: this model's kind×dtype ratios
    model_kind_ratios: dict[str, list[float]] = field(default_factory=dict)
    layer_ratios: dict[str, list[float]] = field(default_factory=dict)
    #: this model's ratios per shape class (:attr:`LayerCost.shape_class`: same kind, shape, structural
    #: change and dtype), pooled over every layer of the class: per-node times of one layer in one run are
    #: noisy on a loaded machine; the median over all of a class's layers and runs is not
    class_ratios: dict[str, list[float]] = field(default_factory=dict)
    #: the runtime was seen running a float layer between statically quantized ones as int8
    quantizes_sandwiched: bool = False
    #: the time outside the layers, per measurement
    other_points: list[OtherPoint] = field(default_factory=list)
    #: this session's device speed relative to the persisted ratios (fp32 baseline measured ÷ predicted,
    #: see :meth:`anchor_session`): a shared host or board runs slower or faster from one day to the next.
    #: Predictions are multiplied by it and measurements divided by it before they are learned, so the
    #: saved ratios stay on one scale. Not persisted.
    session_scale: float = 1.0
    #: how many measurements were learned from per-node times / from the end-to-end time only
    sources: dict[str, int] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    #: per ratio table and key, how many of its (oldest) values were loaded from earlier sessions. What this
    #: session measured takes precedence (:meth:`_ratios`): a median over 64 values learned under another
    #: day's load would otherwise outvote today's few measurements, and the model would not learn from the
    #: search it steers. Not persisted.
    loaded: dict[str, dict[str, int]] = field(default_factory=dict, repr=False)
    #: this session's id (tags its :attr:`other_points`)
    session: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    # ------------------------------------------------------------------------------ ratios
    def _ratios(self, table: str, key: str) -> list[float] | None:
        """The values of ``table[key]`` measured in this session when there are any, else all of them (None
        when there are none)."""
        vals: list[float] | None = getattr(self, table).get(key)
        if not vals:
            return None
        return vals[self.loaded.get(table, {}).get(key, 0):] or vals

    def _push(self, table: str, key: str, value: float, keep: int = _KEEP) -> None:
        lst = getattr(self, table).setdefault(key, [])
        lst.append(float(value))
        dropped = len(lst) - keep
        if dropped > 0:
            del lst[:dropped]
            old = self.loaded.get(table, {})
            if key in old:
                old[key] = max(0, old[key] - dropped)

    def _mark_loaded(self) -> None:
        """Count everything held now as learned in earlier sessions."""
        self.loaded = {t: {k: len(v) for k, v in getattr(self, t).items()} for t in _TABLES}

    # ------------------------------------------------------------------------------ predict
    def _own(self, cost: LayerCost, dtype: str) -> list[float] | None:
        """Ratios measured for this layer's shape class at ``dtype`` (pooled), else for the layer itself."""
        if cost.shape:
            pooled = self._ratios("class_ratios", f"{cost.shape}@{cost.mac_scale:.3g}|{dtype}")
            if pooled:
                return pooled
        return self._ratios("layer_ratios", f"{cost.name}|{dtype}")

    def measured(self, cost: LayerCost) -> bool:
        """Whether this layer (or its shape class) has been measured at its dtype for this model."""
        return bool(self._own(cost, cost.dtype))

    def _layer_ms(self, cost: LayerCost, kinds: Mapping[str, str] | None = None) -> tuple[float, bool]:
        """(predicted ms, whether this dtype was measured for this model on this device) for one layer.

        Most specific first: this layer's shape class (or the layer itself) at this dtype → its own fp32
        efficiency × the dtype's speed-up measured on this model's other layers of the same kind (each
        against its own fp32) → this model's layers of the same kind at this dtype. A dtype not yet measured
        for this model starts from the layer's own fp32 efficiency, scaled by the dtype's speed-up over fp32
        seen for *other* models on this device (under the same benchmark settings) when there is one, else capped at
        :meth:`~.roofline.DtypeCost.prior_for` the layer's kind (and never faster than the roofline says); both count as uncalibrated. (A
        fit's calibration probes measure every dtype in the model itself before the search.) ``kinds``:
        layer name → kind, for the speed-up.
        """
        roof = self.roofline.layer_ms(cost)
        own = self._own(cost, cost.dtype)
        if own:
            return statistics.median(own) * roof, True
        fp32 = self._own(cost, "fp32")
        if cost.dtype != "fp32" and fp32 and kinds:
            speedup = self._sibling_speedup(cost.kind, cost.dtype, kinds)
            if speedup is not None:
                return statistics.median(fp32) * speedup * roof, True
        kind_d = self._ratios("model_kind_ratios", f"{cost.kind}/{cost.dtype}")
        if kind_d:
            return statistics.median(kind_d) * roof, True
        fp32 = fp32 or self._ratios("model_kind_ratios", f"{cost.kind}/fp32")
        if not fp32:
            return roof, False
        ratio = statistics.median(fp32)
        if cost.dtype == "fp32":
            return ratio * roof, True
        as_fp32 = ratio * self.roofline.layer_ms(with_dtype(cost, "fp32"))
        dev_d, dev_f = self._ratios("kind_ratios", f"{cost.kind}/{cost.dtype}"), self._ratios("kind_ratios", f"{cost.kind}/fp32")
        if dev_d and dev_f:
            return ratio * statistics.median(dev_d) / statistics.median(dev_f) * roof, False
        return max(ratio * roof, as_fp32 / DTYPE_COSTS[cost.dtype].prior_for(cost.kind)), False

    def _sibling_speedup(self, kind: str, dtype: str, kinds: Mapping[str, str]) -> float | None:
        """Median, over this model's shape classes (or layers) of ``kind`` measured at ``dtype`` and at fp32,
        of their ratio (dtype efficiency ÷ fp32 efficiency, both against the roofline); None when none is."""
        vals = []
        for key in self.class_ratios:
            shape, _, d = key.rpartition("|")
            ratios, f = self._ratios("class_ratios", key), self._ratios("class_ratios", f"{shape}|fp32")
            if d == dtype and ratios and f and shape.startswith(f"{kind}:"):
                vals.append(statistics.median(ratios) / max(statistics.median(f), 1e-12))
        if vals:
            return statistics.median(vals)
        for key in self.layer_ratios:
            name, _, d = key.rpartition("|")
            ratios, f = self._ratios("layer_ratios", key), self._ratios("layer_ratios", f"{name}|fp32")
            if d == dtype and ratios and f and kinds.get(name) == kind:
                vals.append(statistics.median(ratios) / max(statistics.median(f), 1e-12))
        return statistics.median(vals) if vals else None

    def predict(self, costs: Sequence[LayerCost]) -> Prediction:
        per_layer: dict[str, float] = {}
        unknown: set[str] = set()
        kinds = {c.name: c.kind for c in costs}
        for c in costs:
            ms, known = self._layer_ms(c, kinds)
            if not known:
                unknown.add(c.dtype)
            per_layer[c.name] = ms
        layer_sum = sum(per_layer.values())
        other = self._other_ms(costs) if self.other_points else _PRIOR_OTHER * layer_sum
        k = self.session_scale
        return Prediction(k * (layer_sum + other), {n: k * v for n, v in per_layer.items()}, k * other,
                          tuple(sorted(unknown)))

    def anchor_session(self, costs: Sequence[LayerCost], p50_ms: float) -> float | None:
        """Set :attr:`session_scale` from the fp32 baseline (``costs``, measured ``p50_ms``) when every one of
        its layers is already calibrated from earlier sessions; returns the scale set (None: nothing to
        anchor, the scale stays 1)."""
        if p50_ms <= 0 or not costs or not all(self.measured(c) for c in costs) or not self.other_points:
            return None
        self.session_scale = 1.0
        pred = self.predict(costs).total_ms
        if pred <= 0:
            return None
        self.session_scale = float(p50_ms / pred)
        return self.session_scale

    @staticmethod
    def _counts(costs: Iterable[LayerCost]) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in costs:
            if c.dtype != "fp32":
                out[c.dtype] = out.get(c.dtype, 0) + 1
        return out

    def _other_ms(self, costs: Sequence[LayerCost]) -> float:
        """Non-layer time (norms, softmax, adds, quantizers and casts, session overhead): an intercept per
        session + Σ_dtype f_dtype(layers at that dtype) + c × int8 / float conversion elements.

        ``f`` is piecewise linear in the count, with a knot at every count measured for that dtype, and flat
        beyond the largest: what a scheme adds or saves outside the layers (an int8 dynamic plan's
        activation quantizers, graph rewrites such as attention fusion that a quantized graph loses or
        gains) is interpolated between measured plans and never extrapolated past them. One int8 static
        layer among int8 dynamic ones therefore costs a share of what a uniform int8 static plan saves, not
        all of it. ``c`` prices the QuantizeLinear / DequantizeLinear ops where int8 static layers meet
        float ones (:func:`~.roofline.glue_melems`; ``c`` ≥ 0): where a float layer sits matters, not only
        how many.
        The session's intercept absorbs the day's overhead level; the rest is learned from every session.
        Penalized least squares: slopes lightly shrunk, a change of slope between neighbouring segments
        costs :data:`SMOOTH` (one mixed plan does not bend ``f``; a single plan per dtype is matched exactly).
        """
        pts = self.other_points
        knots = {d: sorted({p.counts[d] for p in pts if p.counts.get(d, 0) > 0}) for d in {k for p in pts for k in p.counts}}
        sessions = sorted({p.session for p in pts})
        today = self.session if any(p.session == self.session for p in pts) else pts[-1].session

        def row(cnt: Mapping[str, int], sess: str, glue: float) -> list[float]:
            # per dtype, the layers counted within each segment between knots: coefficients are slopes
            hinges = [float(min(cnt.get(d, 0), k) - min(cnt.get(d, 0), prev))
                      for d in sorted(knots) for prev, k in zip([0, *knots[d][:-1]], knots[d], strict=True)]
            return [1.0 if sess == s else 0.0 for s in sessions] + hinges + [glue]

        # each point weighs 1 / its plan's p50: measurement noise (a loaded device, profiler shares rescaled to a
        # p50) grows with the latency, and the error that matters is relative — a 10 ms plan measured ±50% must
        # not set the non-layer time of 0.5 ms plans
        w = np.array([1.0 / p.p50_ms if p.p50_ms > 0 else 1.0 for p in pts])
        w = w / w.max()
        a = np.array([row(p.counts, p.session, p.glue) for p in pts]) * w[:, None]
        y = np.array([p.ms for p in pts]) * w
        # a slope change is worth SMOOTH·Δ²: one point over a segment of length L gives L²·Δ² of evidence,
        # so it takes a segment of ~√SMOOTH layers (or several points) to bend f
        n_s = len(sessions)
        pen = np.diag([1e-6] * n_s + [1e-4] * (a.shape[1] - n_s))
        col = n_s
        for d in sorted(knots):
            for j in range(1, len(knots[d])):
                diff = np.zeros(a.shape[1])
                diff[col + j], diff[col + j - 1] = 1.0, -1.0
                pen += SMOOTH * np.outer(diff, diff)
            col += len(knots[d])
        coef = np.linalg.solve(a.T @ a + pen, a.T @ y)
        if coef[-1] < 0:  # a conversion never saves time: what looked like it is noise (or layer time) — c = 0
            coef = np.append(np.linalg.solve(a[:, :-1].T @ a[:, :-1] + pen[:-1, :-1], a[:, :-1].T @ y), 0.0)
        return max(0.0, float(np.array(row(self._counts(costs), today, glue_melems(costs))) @ coef))

    # ------------------------------------------------------------------------------ learn
    def split(
        self,
        costs: Sequence[LayerCost],
        p50_ms: float,
        per_layer_ms: Mapping[str, float] | None,
        other_ms: float | None,
        profiled_e2e_ms: float | None,
        n_nodes: int | None = None,
        overhead_ms: float = 0.0,
    ) -> tuple[dict[str, float], str]:
        """Per-layer times on the p50 time scale, and where they came from (``per-node`` / ``end-to-end``).

        Per-node times are used when they are trustworthy: mapped layers hold ≥ 20% of the node time and
        the kernels are not swamped by the profiler's own cost (a few µs per kernel event). With the node
        count known, swamped = the mean kernel time is below :data:`MIN_KERNEL_MS` — a property of the model,
        not of the moment: the profiled runs' wall time against the plain p50 (the test when the count is
        not known: > 2.5×) also moves with the machine's load (means take the load's tail, p50s do not).
        Trusted times are rescaled by p50 / profiled wall time. ``overhead_ms``: the profiler's per-kernel cost
        already taken off each node and off the wall time (:func:`without_profiler_overhead`); the swamped test
        counts it back in. Otherwise the end-to-end p50 is split over
        the layers in proportion to their roofline times, leaving the prior share for everything else.
        """
        if per_layer_ms and sum(per_layer_ms.values()) > 0:
            mapped = sum(per_layer_ms.values())
            node_sum = mapped + float(other_ms or 0.0)
            if n_nodes:
                swamped = node_sum / n_nodes + overhead_ms < MIN_KERNEL_MS
            else:
                swamped = bool(profiled_e2e_ms) and float(profiled_e2e_ms or 0.0) > 2.5 * p50_ms
            if mapped >= 0.2 * node_sum and not swamped:
                if profiled_e2e_ms and profiled_e2e_ms > 0:
                    scale = p50_ms / profiled_e2e_ms
                else:
                    scale = p50_ms / node_sum if node_sum > p50_ms > 0 else 1.0
                return {k: v * scale for k, v in per_layer_ms.items() if v > 0}, "per-node"
        roof = {c.name: self.roofline.layer_ms(c) for c in costs}
        total = sum(roof.values()) or 1.0
        share = p50_ms / (1.0 + _PRIOR_OTHER)
        return {k: share * v / total for k, v in roof.items()}, "end-to-end"

    def observe(
        self,
        costs: Sequence[LayerCost],
        *,
        p50_ms: float,
        per_layer_ms: Mapping[str, float] | None = None,
        other_ms: float | None = None,
        profiled_e2e_ms: float | None = None,
        predicted_ms: float | None = None,
        label: str = "",
        n_nodes: int | None = None,
        overhead_ms: float = 0.0,
    ) -> str:
        """Learn from one measurement of the plan whose layer costs are ``costs``; returns the split used.

        ``per_layer_ms`` / ``other_ms``: per-node times mapped onto layers (profiler time scale), see
        :meth:`split` (``overhead_ms`` too). ``predicted_ms`` (made before measuring) is recorded as a prediction error.
        """
        if predicted_ms is not None and p50_ms > 0:
            self.errors.append({"label": label, "predicted_ms": float(predicted_ms), "measured_ms": float(p50_ms),
                                "rel_error": abs(predicted_ms - p50_ms) / p50_ms})
        k = self.session_scale if self.session_scale > 0 else 1.0
        if k != 1.0:  # learn on the persisted ratios' scale (relative times are unchanged)
            p50_ms /= k
            per_layer_ms = {n: v / k for n, v in per_layer_ms.items()} if per_layer_ms else per_layer_ms
            other_ms = other_ms / k if other_ms is not None else None
            profiled_e2e_ms = profiled_e2e_ms / k if profiled_e2e_ms else profiled_e2e_ms
        layers, source = self.split(costs, p50_ms, per_layer_ms, other_ms, profiled_e2e_ms, n_nodes, overhead_ms / k)
        layer_total = 0.0
        for c in costs:
            ms = layers.get(c.name)
            if ms is None or ms <= 0:
                continue
            layer_total += ms
            ratio = ms / max(self.roofline.layer_ms(c), 1e-9)
            self._push("layer_ratios", f"{c.name}|{c.dtype}", ratio)
            if c.shape:
                self._push("class_ratios", c.shape_class, ratio, _KEEP_CLASS)
            self._push("kind_ratios", f"{c.kind}/{c.dtype}", ratio)
            self._push("model_kind_ratios", f"{c.kind}/{c.dtype}", ratio)
        self.other_points.append(OtherPoint(self._counts(costs), max(0.0, p50_ms - layer_total), self.session,
                                            glue_melems(costs), float(p50_ms)))
        del self.other_points[:-_KEEP]
        self.sources[source] = self.sources.get(source, 0) + 1
        return source

    # ------------------------------------------------------------------------------ errors
    def median_error(self) -> float | None:
        """Median |predicted − measured| / measured over recorded predictions (None when there are none)."""
        errs = [e["rel_error"] for e in self.errors]
        return float(statistics.median(errs)) if errs else None

    # ------------------------------------------------------------------------------ persistence
    @staticmethod
    def _kind_key(scope: str) -> str:
        return f"kind_ratios@{scope}" if scope else "kind_ratios"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "device_id": self.device_id,
            "roofline": self.roofline.to_dict(),
            self._kind_key(self.scope): self.kind_ratios,
            "models": {self.model_key: {"layer_ratios": self.layer_ratios, "kind_ratios": self.model_kind_ratios,
                                        "class_ratios": self.class_ratios,
                                        "quantizes_sandwiched": self.quantizes_sandwiched,
                                        "other_points": [list(p) for p in self.other_points],
                                        "sources": self.sources}},
            "errors": self.errors[-256:],
        }

    def save(self, path: str | Path) -> None:
        """Merge this model's parameters into the per-device JSON file at ``path``."""
        p = Path(path)
        data: dict[str, Any] = {}
        if p.is_file():
            try:
                data = json.loads(p.read_text())
            except (OSError, ValueError):
                data = {}
        if data.get("format") != FORMAT_VERSION:
            data = {}
        mine = self.to_dict()
        models = {**data.get("models", {}), **mine["models"]}
        data.update(mine)
        data["models"] = models
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f"{p.name}.{os.getpid()}.tmp")  # one per process: a fit and its workers share it
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(p)

    @classmethod
    def load(cls, path: str | Path, roofline: Roofline, *, device_id: str, model_key: str,
             scope: str = "") -> CalibratedModel:
        """Parameters saved for ``device_id`` (kind ratios shared by every model measured under ``scope``;
        layer ratios by ``model_key``, which should name the scope too)."""
        model = cls(roofline, device_id=device_id, model_key=model_key, scope=scope)
        p = Path(path)
        if not p.is_file():
            return model
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            return model
        if data.get("device_id") != device_id or data.get("format") != FORMAT_VERSION:
            return model
        model.kind_ratios = {k: [float(x) for x in v] for k, v in data.get(cls._kind_key(scope), {}).items()}
        m = data.get("models", {}).get(model_key, {})
        model.layer_ratios = {k: [float(x) for x in v] for k, v in m.get("layer_ratios", {}).items()}
        model.model_kind_ratios = {k: [float(x) for x in v] for k, v in m.get("kind_ratios", {}).items()}
        model.class_ratios = {k: [float(x) for x in v] for k, v in m.get("class_ratios", {}).items()}
        model.quantizes_sandwiched = bool(m.get("quantizes_sandwiched", False))
        model.other_points = [OtherPoint({str(k): int(n) for k, n in c.items()}, float(v), str(sess), float(g),
                                         float(rest[0]) if rest else 0.0)
                              for c, v, sess, g, *rest in m.get("other_points", [])]
        model.sources = {str(k): int(v) for k, v in m.get("sources", {}).items()}
        model._mark_loaded()
        return model
