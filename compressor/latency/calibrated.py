"""A per-device latency model calibrated from measurements.

Prior: the profile's roofline (:mod:`.roofline`). Each measurement of a plan on the device teaches it:

* with per-node times (mapped onto layers by :mod:`.nodemap`): per layer×dtype and per op-kind×dtype
  *efficiency ratios* measured ÷ roofline (robust: the median of what was seen), and the ``other`` time
  (norms, softmax, adds, session overhead) = p50 − Σ layer times;
* with end-to-end times only: non-negative least squares of p50 on the roofline time of each
  kind×dtype group plus a constant (falls back to one global scale while there are too few points).

A layer's prediction uses the most specific ratio known: layer×dtype → kind×dtype → layer×fp32 →
kind×fp32 → 1. Prediction errors (made before each measurement) are kept: ``median_error()``.
Parameters persist per device id (``save`` / ``load``, JSON); per-layer ratios are keyed by model hash.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from devicefit.compressor.latency.roofline import LayerCost, Roofline

_KEEP = 64  # ratios kept per key (oldest dropped)
_PRIOR_OTHER = 0.25  # other ≈ 25% of layer time before anything is measured


def _push(d: dict[str, list[float]], key: str, value: float) -> None:
    lst = d.setdefault(key, [])
    lst.append(float(value))
    del lst[:-_KEEP]


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
    kind_ratios: dict[str, list[float]] = field(default_factory=dict)
    layer_ratios: dict[str, list[float]] = field(default_factory=dict)
    #: (number of layers per non-fp32 dtype, other ms) per per-node measurement
    other_points: list[tuple[dict[str, int], float]] = field(default_factory=list)
    #: end-to-end-only observations: (roofline ms per group, measured p50)
    e2e_points: list[tuple[dict[str, float], float]] = field(default_factory=list)
    e2e_fit: dict[str, float] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)

    # ------------------------------------------------------------------------------ predict
    def _ratio(self, cost: LayerCost) -> tuple[float, bool]:
        for key in (f"{cost.name}|{cost.dtype}", f"{cost.kind}/{cost.dtype}"):
            src = self.layer_ratios if "|" in key else self.kind_ratios
            if src.get(key):
                return statistics.median(src[key]), True
        for key in (f"{cost.name}|fp32", f"{cost.kind}/fp32"):
            src = self.layer_ratios if "|" in key else self.kind_ratios
            if src.get(key):
                return statistics.median(src[key]), False
        return 1.0, False

    def predict(self, costs: Sequence[LayerCost]) -> Prediction:
        per_layer: dict[str, float] = {}
        unknown: set[str] = set()
        for c in costs:
            ratio, known = self._ratio(c)
            if not known and not self.e2e_fit:
                unknown.add(c.dtype)
            per_layer[c.name] = ratio * self.roofline.layer_ms(c)
        layer_sum = sum(per_layer.values())
        if self.e2e_fit and not self.kind_ratios:
            total = self._e2e_predict(costs)
            return Prediction(total, per_layer, max(0.0, total - layer_sum), tuple(sorted(unknown)))
        other = self._other_ms(costs) if self.other_points else _PRIOR_OTHER * layer_sum
        return Prediction(layer_sum + other, per_layer, other, tuple(sorted(unknown)))

    @staticmethod
    def _counts(costs: Iterable[LayerCost]) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in costs:
            if c.dtype != "fp32":
                out[c.dtype] = out.get(c.dtype, 0) + 1
        return out

    def _other_ms(self, costs: Sequence[LayerCost]) -> float:
        """Non-layer time: a + Σ_dtype b_dtype × (#layers at that dtype), ridge least squares.

        Quantizing a layer changes the ops around it (a GELU no longer fused with the bias, casts), so
        the time outside the layers moves with the plan; with one point it is that point's value.
        """
        pts = self.other_points
        keys = sorted({k for cnt, _ in pts for k in cnt})
        a = np.array([[1.0] + [float(cnt.get(k, 0)) for k in keys] for cnt, _ in pts])
        y = np.array([v for _, v in pts])
        ridge = np.diag([1e-6] + [1e-2] * len(keys))
        coef = np.linalg.solve(a.T @ a + ridge, a.T @ y)
        want = self._counts(costs)
        x = np.array([1.0] + [float(want.get(k, 0)) for k in keys])
        return max(0.0, float(x @ coef))

    # ------------------------------------------------------------------------------ learn
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
    ) -> None:
        """Learn from one measurement of the plan whose layer costs are ``costs``.

        ``per_layer_ms`` / ``other_ms`` are per-node times mapped onto layers (profiler time scale);
        they are rescaled to the un-profiled p50 by ``p50 / profiled_e2e_ms`` (or by p50 / their sum when
        that exceeds p50). ``predicted_ms`` (made before measuring) is recorded as a prediction error.
        """
        if predicted_ms is not None and p50_ms > 0:
            self.errors.append({"label": label, "predicted_ms": float(predicted_ms), "measured_ms": float(p50_ms),
                                "rel_error": abs(predicted_ms - p50_ms) / p50_ms})
        if per_layer_ms:
            node_sum = sum(per_layer_ms.values()) + float(other_ms or 0.0)
            if profiled_e2e_ms and profiled_e2e_ms > 0:
                scale = p50_ms / profiled_e2e_ms
            else:
                scale = p50_ms / node_sum if node_sum > p50_ms > 0 else 1.0
            layer_total = 0.0
            for c in costs:
                ms = per_layer_ms.get(c.name)
                if ms is None or ms <= 0:
                    continue
                ms *= scale
                layer_total += ms
                ratio = ms / max(self.roofline.layer_ms(c), 1e-9)
                _push(self.layer_ratios, f"{c.name}|{c.dtype}", ratio)
                _push(self.kind_ratios, f"{c.kind}/{c.dtype}", ratio)
            self.other_points.append((self._counts(costs), max(0.0, p50_ms - layer_total)))
            del self.other_points[:-_KEEP]
        else:
            self.e2e_points.append((self._groups(costs, self.roofline), float(p50_ms)))
            del self.e2e_points[:-_KEEP]
            self._refit_e2e()

    @staticmethod
    def _groups(costs: Iterable[LayerCost], roofline: Roofline) -> dict[str, float]:
        """Roofline ms summed per kind×dtype group."""
        out: dict[str, float] = {}
        for c in costs:
            out[f"{c.kind}/{c.dtype}"] = out.get(f"{c.kind}/{c.dtype}", 0.0) + roofline.layer_ms(c)
        return out

    def _refit_e2e(self) -> None:
        """NNLS of p50 on per-group roofline times + constant; a global scale while points are few."""
        pts = self.e2e_points
        keys = sorted({k for g, _ in pts for k in g})
        if len(pts) >= len(keys) + 2:
            from scipy.optimize import nnls

            a = np.array([[g.get(k, 0.0) for k in keys] + [1.0] for g, _ in pts])
            y = np.array([yv for _, yv in pts])
            coef, _ = nnls(a, y)
            self.e2e_fit = {**{k: float(c) for k, c in zip(keys, coef[:-1], strict=True)}, "__const__": float(coef[-1])}
        else:
            ratios = [yv / max(sum(g.values()), 1e-9) for g, yv in pts]
            self.e2e_fit = {"__scale__": float(statistics.median(ratios))}

    def _e2e_predict(self, costs: Sequence[LayerCost]) -> float:
        groups = self._groups(costs, self.roofline)
        if "__scale__" in self.e2e_fit:
            return self.e2e_fit["__scale__"] * sum(groups.values()) * (1.0 + _PRIOR_OTHER)
        return sum(self.e2e_fit.get(k, 1.0) * v for k, v in groups.items()) + self.e2e_fit.get("__const__", 0.0)

    # ------------------------------------------------------------------------------ errors
    def median_error(self) -> float | None:
        """Median |predicted − measured| / measured over recorded predictions (None when there are none)."""
        errs = [e["rel_error"] for e in self.errors]
        return float(statistics.median(errs)) if errs else None

    # ------------------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "roofline": self.roofline.to_dict(),
            "kind_ratios": self.kind_ratios,
            "models": {self.model_key: {"layer_ratios": self.layer_ratios,
                                        "other_points": [[c, v] for c, v in self.other_points],
                                        "e2e_points": [[g, y] for g, y in self.e2e_points], "e2e_fit": self.e2e_fit}},
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
        mine = self.to_dict()
        models = {**data.get("models", {}), **mine["models"]}
        data.update(mine)
        data["models"] = models
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(p)

    @classmethod
    def load(cls, path: str | Path, roofline: Roofline, *, device_id: str, model_key: str) -> CalibratedModel:
        """Parameters saved for ``device_id`` (kind ratios shared by every model; layer ratios by ``model_key``)."""
        model = cls(roofline, device_id=device_id, model_key=model_key)
        p = Path(path)
        if not p.is_file():
            return model
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            return model
        if data.get("device_id") != device_id:
            return model
        model.kind_ratios = {k: [float(x) for x in v] for k, v in data.get("kind_ratios", {}).items()}
        m = data.get("models", {}).get(model_key, {})
        model.layer_ratios = {k: [float(x) for x in v] for k, v in m.get("layer_ratios", {}).items()}
        model.other_points = [({str(k): int(n) for k, n in c.items()}, float(v)) for c, v in m.get("other_points", [])]
        model.e2e_points = [(dict(g), float(y)) for g, y in m.get("e2e_points", [])]
        model.e2e_fit = {k: float(v) for k, v in m.get("e2e_fit", {}).items()}
        return model
