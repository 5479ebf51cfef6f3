"""Device calibration probe: how much faster each quant scheme really runs *on this device* for this
model's layer shapes, measured before the search so its first predictions are not guesses.

The probe is a small ONNX model holding copies of the model's heaviest distinct Linear / Conv layers, each
fed its own input of the layer's real shape (sequence / batch axes dynamic like the model's, so the
device benchmark sizes them like it sizes the model). It is exported once, quantized uniformly with
every scheme the search space offers (through ``devicefit.compress``, the same pipeline candidates go
through), and measured on the device with per-node times. The per-layer fp32 / scheme time ratios become
the latency model's speed-up for that kind × scheme (or, when per-node times are unusable, the
end-to-end ratio). Cost: one small export, one quantization and one short benchmark per scheme.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from devicefit.compressor.plan import Plan


def _pick(specs: list[Any], module: Any, limit: int) -> list[Any]:
    """The heaviest distinct layer shapes (by total MACs of all layers sharing the shape)."""
    named = dict(module.named_modules())
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for s in specs:
        m = named[s.name]
        w = getattr(m, "weight", None)
        key = (s.kind, tuple(w.shape) if w is not None else (), tuple(getattr(m, "stride", ())), getattr(m, "groups", 1),
               s.in_elems)
        groups.setdefault(key, []).append(s)
    ranked = sorted(groups.values(), key=lambda g: -sum(x.macs for x in g))
    return [g[0] for g in ranked[:limit]]


def probe_bundle(bundle: Any, specs: list[Any], analysis: Any, *, limit: int = 3) -> tuple[Any, dict[str, str]]:
    """(ModelBundle of the probe, probe layer name -> kind); (None, {}) when no layer has a known input shape."""
    import torch
    from devicefit.bundle import ModelBundle
    from devicefit.data import Dataset
    from torch import nn

    named = dict(bundle.module.named_modules())
    infos = {li.name: li for li in analysis.layers}
    chosen = [s for s in _pick(specs, bundle.module, limit) if infos[s.name].input_shape]
    if not chosen:
        return None, {}
    chosen = (chosen * limit)[:limit]
    seq_dynamic = any(1 in {int(a) for a in axes} for axes in bundle.dynamic_axes.values())

    class Probe(nn.Module):
        """Three layers, three inputs (torch.export needs a fixed signature; short lists repeat a layer)."""

        def __init__(self, layers: list[nn.Module]) -> None:
            super().__init__()
            self.layers = nn.ModuleList(layers)

        def forward(self, in0: torch.Tensor, in1: torch.Tensor, in2: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return self.layers[0](in0), self.layers[1](in1), self.layers[2](in2)

    layers, examples, axes, kinds = [], [], {}, {}
    rng = np.random.default_rng(0)
    for s in chosen:
        shape = list(infos[s.name].input_shape or [])
        shape[0] = 2
        layers.append(copy.deepcopy(named[s.name]).float().eval())
        examples.append(rng.standard_normal(shape).astype(np.float32))
        name = f"in{len(examples) - 1}"
        axes[name] = {0: "batch", **({1: "seq"} if s.kind == "linear" and len(shape) == 3 and seq_dynamic else {})}
        kinds[f"layers.{len(layers) - 1}"] = s.kind
    module = Probe(layers).eval()
    names = [f"in{i}" for i in range(len(examples))]
    data = Dataset({n: np.concatenate([e] * 4) for n, e in zip(names, examples, strict=True)}, description="probe inputs")
    pb = ModelBundle(name="devicefit-probe", module=module, example_inputs=tuple(torch.from_numpy(e) for e in examples),
                     input_names=names, output_names=[f"out{i}" for i in range(len(names))], metric="cosine",
                     calib=data, eval=data, dynamic_axes=axes, source="probe")
    return pb, kinds


def run_probe(ctx_bundle: Any, specs: list[Any], analysis: Any, *, evaluator: Any, quants: dict[str, Any], work: Path,
              profile: Any = None) -> dict[str, list[float]]:
    """Measure fp32 and every scheme in ``quants`` (label -> technique) on the probe; returns
    ``{"kind/dtype": [speed-ups over fp32 per probe layer]}``."""
    from devicefit.compress import compress
    from devicefit.compressor.export import export_bundle
    from devicefit.compressor.latency import dtype_of, node_map_for

    pb, kinds = probe_bundle(ctx_bundle, specs, analysis)
    if pb is None:
        return {}
    work.mkdir(parents=True, exist_ok=True)
    fp32 = export_bundle(pb, work / "probe-fp32.onnx").path
    onnx_only = replace(pb, onnx_path=fp32)

    def layer_times(path: Path) -> tuple[dict[str, float], float]:
        t = evaluator.measure(path)
        times: dict[str, float] = {}
        if t.per_node and not (t.profiled_e2e_ms and t.profiled_e2e_ms > 2.5 * t.p50_ms):
            per, _other, _total = node_map_for(path, list(kinds), reference=fp32).split(t.per_node)
            scale = t.p50_ms / t.profiled_e2e_ms if t.profiled_e2e_ms else 1.0
            times = {k: v * scale for k, v in per.items() if v > 0}
        return times, t.p50_ms

    base, base_p50 = layer_times(fp32)
    out: dict[str, list[float]] = {}
    for label, tech in quants.items():
        try:
            res = compress(onnx_only, Plan.uniform(quant=tech), out=work / f"probe-{label}.onnx", profile=profile,
                           progress=False)
            times, p50 = layer_times(Path(res.path))
        except Exception:  # a scheme the probe cannot take: the search falls back to its prior
            continue
        dtype = dtype_of(tech)
        for layer, kind in kinds.items():
            if tech.layer_types and kind not in tech.layer_types:
                continue
            speedup = base[layer] / times[layer] if layer in base and layer in times else base_p50 / p50
            out.setdefault(f"{kind}/{dtype}", []).append(float(speedup))
    return out


def summary(speedups: dict[str, list[float]]) -> str:
    return ", ".join(f"{k} ×{statistics.median(v):.2f}" for k, v in sorted(speedups.items()))
