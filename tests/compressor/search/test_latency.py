"""Roofline math, calibration from per-node / end-to-end data, persistence, and ONNX node -> layer mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devicefit.compressor.latency import (
    CalibratedModel,
    LayerSpec,
    Roofline,
    plan_costs,
    predicted_size_bytes,
)
from devicefit.compressor.latency.roofline import dtype_of, structural_scales
from devicefit.compressor.plan import LayerChoice, Plan
from devicefit.compressor.techniques import (
    ChannelPrune,
    Int4WeightOnly,
    Int8Dynamic,
    Int8Static,
    KeepFloat,
    LowRank,
)

ROOF = Roofline(peak_gops_fp32=100.0, peak_gops_int8=400.0, mem_bandwidth_gbs=10.0, kernel_overhead_ms=0.0)


def _specs() -> list[LayerSpec]:
    # a compute-bound layer (big MACs, small weights) and a memory-bound one (batch-1 GEMV)
    return [
        LayerSpec("conv", "conv", params=10_000, macs=50_000_000, in_elems=1000, out_elems=1000),
        LayerSpec("fc", "linear", params=4_000_000, macs=4_000_000, in_elems=1000, out_elems=4000),
        LayerSpec("head", "linear", params=40_000, macs=40_000, in_elems=4000, out_elems=10),
    ]


def test_roofline_compute_and_memory_bound() -> None:
    conv, fc, _ = plan_costs(_specs(), Plan())
    # compute: 2 * 50e6 / 100e9 s = 1.0 ms; memory: (40 kB + 8 kB) / 10 GB/s = 0.0048 ms
    assert ROOF.layer_ms(conv) == pytest.approx(1.0)
    # fc: compute 2*4e6/100e9 = 0.08 ms; memory (16 MB + 20 kB) / 10 GB/s = 1.602 ms
    assert ROOF.layer_ms(fc) == pytest.approx((4_000_000 * 4 + 5000 * 4) / 10e9 * 1e3)
    plan = Plan.per_layer({"conv": LayerChoice(quant=Int8Static()), "fc": LayerChoice(quant=Int4WeightOnly(group_size=32))})
    conv8, fc4, head = plan_costs(_specs(), plan)
    assert conv8.dtype == "int8" and ROOF.layer_ms(conv8) == pytest.approx(0.25)  # int8 peak is 4x
    # int4: 0.5 byte / weight + one fp32 scale per 32 weights
    assert fc4.weight_bytes == pytest.approx(4_000_000 * 0.5 + 4_000_000 / 32 * 4)
    assert ROOF.layer_ms(fc4) < ROOF.layer_ms(fc) / 3
    assert head.dtype == "fp32"


def test_dtype_classes_and_kernel_overhead() -> None:
    assert dtype_of(None) == "fp32"
    assert dtype_of(KeepFloat()) == "fp32"
    assert dtype_of(Int8Dynamic()) == "int8dyn"
    costs = plan_costs(_specs(), Plan.uniform(quant=Int8Dynamic()))
    assert all(c.kernels == 2 for c in costs)  # matmul + dynamic activation quantizer
    r = Roofline(100.0, 400.0, 10.0, kernel_overhead_ms=0.01)
    assert r.layer_ms(costs[2]) == pytest.approx(ROOF.layer_ms(costs[2]) + 0.02)


def test_structural_scales_prune_consumers_and_lowrank() -> None:
    specs = _specs()
    choices = {"conv": LayerChoice(prune=ChannelPrune(ratio=0.25)), "fc": LayerChoice(lowrank=LowRank(ratio=0.5))}
    sc = structural_scales(specs, choices, consumers={"conv": ["fc"]})
    assert sc["conv"][:3] == pytest.approx((0.75, 0.75, 0.75))
    # fc: 0.75 (its inputs shrink with conv's outputs) x 0.5 (low-rank keeps half its params), in 2 kernels
    assert sc["fc"][0] == pytest.approx(0.375) and sc["fc"][1] == pytest.approx(0.375) and sc["fc"][3] == 2
    assert sc["head"] == (1.0, 1.0, 1.0, 1)
    size = predicted_size_bytes(specs, plan_costs(specs, choices, consumers={"conv": ["fc"]}), total_params=4_050_000 + 100)
    assert size == pytest.approx((10_000 * 0.75 + 4_000_000 * 0.375 + 40_000 + 100) * 4)


def _truth(costs: list, eff: dict[str, float], other: float) -> tuple[float, dict[str, float]]:
    per = {c.name: eff[c.dtype] * ROOF.layer_ms(c) * (1.3 if c.name == "fc" else 1.0) for c in costs}
    return sum(per.values()) + other, per


def test_calibration_from_per_node_reduces_error() -> None:
    """Synthetic device: fp32 runs at 2.5x roofline, int8 dynamic at 6x (quantizer overhead), +0.4 ms other."""
    specs = _specs()
    eff = {"fp32": 2.5, "int8dyn": 6.0, "int8": 3.0, "int4w": 2.0}
    model = CalibratedModel(ROOF, device_id="dev")
    mixed = Plan.per_layer({"conv": LayerChoice(quant=Int8Dynamic()), "fc": LayerChoice()})
    truth_mixed, _ = _truth(plan_costs(specs, mixed), eff, 0.4)
    before = abs(model.predict(plan_costs(specs, mixed)).total_ms - truth_mixed) / truth_mixed
    assert model.predict(plan_costs(specs, mixed)).uncalibrated == ("fp32", "int8dyn")
    for plan in (Plan(), Plan.uniform(quant=Int8Dynamic())):
        costs = plan_costs(specs, plan)
        total, per = _truth(costs, eff, 0.4)
        # the profiler's per-node times run 10% slow; the un-profiled p50 is `total`
        model.observe(costs, p50_ms=total, per_layer_ms={k: v * 1.1 for k, v in per.items()}, other_ms=0.44,
                      profiled_e2e_ms=total * 1.1, predicted_ms=model.predict(costs).total_ms)
    pred = model.predict(plan_costs(specs, mixed))
    after = abs(pred.total_ms - truth_mixed) / truth_mixed
    assert pred.uncalibrated == ()
    assert before > 0.5 and after < 0.02
    assert len(model.errors) == 2 and model.median_error() is not None


def test_calibration_from_end_to_end_only() -> None:
    """No per-node times (or ones swamped by the profiler): p50 split over layers by roofline share."""
    specs = _specs()
    eff = {"fp32": 2.0, "int8": 5.0, "int8dyn": 5.0, "int4w": 1.5}
    model = CalibratedModel(ROOF, device_id="dev")
    for plan in (Plan(), Plan.uniform(quant=Int8Static())):
        costs = plan_costs(specs, plan)
        total, per = _truth(costs, eff, 0.2)
        # per-node times whose profiled run took 10x the plain p50: not trusted
        src = model.observe(costs, p50_ms=total, per_layer_ms=per, other_ms=0.2, profiled_e2e_ms=10 * total)
        assert src == "end-to-end"
        assert model.predict(costs).total_ms == pytest.approx(total, rel=1e-3)  # a measured plan is reproduced
    assert model.sources == {"end-to-end": 2}
    target = Plan.per_layer({"fc": LayerChoice(quant=Int8Static()), "head": LayerChoice(quant=Int8Static())})
    truth = _truth(plan_costs(specs, target), eff, 0.2)[0]
    assert model.predict(plan_costs(specs, target)).total_ms == pytest.approx(truth, rel=0.15)
    assert model.observe(plan_costs(specs, target), p50_ms=truth) == "end-to-end"


def test_calibrated_model_persists_per_device(tmp_path: Path) -> None:
    specs = _specs()
    model = CalibratedModel(ROOF, device_id="pi-5", model_key="m1")
    costs = plan_costs(specs, Plan())
    model.observe(costs, p50_ms=5.0, per_layer_ms={"conv": 2.0, "fc": 2.0, "head": 0.1}, other_ms=0.9)
    path = tmp_path / "lat" / "pi-5.json"
    model.save(path)
    same = CalibratedModel.load(path, ROOF, device_id="pi-5", model_key="m1")
    assert same.predict(costs).total_ms == pytest.approx(model.predict(costs).total_ms)
    other_model = CalibratedModel.load(path, ROOF, device_id="pi-5", model_key="m2")
    assert other_model.kind_ratios == model.kind_ratios and not other_model.layer_ratios  # kind ratios are per device
    assert CalibratedModel.load(path, ROOF, device_id="other", model_key="m1").kind_ratios == {}


def test_node_map_attributes_nodes_to_layers(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from onnxruntime.quantization import quantize_dynamic

    from devicefit.compressor.latency import node_map_for

    class M(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = torch.nn.Linear(32, 64)
            self.fc2 = torch.nn.Linear(64, 32)
            self.ln = torch.nn.LayerNorm(32)
            self.head = torch.nn.Linear(32, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.ln(self.fc2(torch.relu(self.fc1(x))) + x))

    m = M().eval()
    fp32 = tmp_path / "m.onnx"
    torch.onnx.export(m, (torch.randn(2, 8, 32),), str(fp32), dynamo=True, external_data=False, input_names=["x"])
    q = tmp_path / "q.onnx"
    quantize_dynamic(str(fp32), str(q))
    layers = ["fc1", "fc2", "head"]
    for path, ref in ((fp32, None), (q, fp32)):
        nm = node_map_for(path, layers, reference=ref)
        assert set(nm.layer_of.values()) == set(layers), nm
        times = [{"name": n, "op_type": "X", "mean_ms": 1.0} for n in nm.layer_of] + [{"name": "zz", "op_type": "Y", "mean_ms": 2.0}]
        per, other, total = nm.split(times)
        assert other == 2.0 and total == pytest.approx(len(nm.layer_of) + 2.0)
        assert sum(per.values()) == pytest.approx(len(nm.layer_of))
    assert np.isfinite(total)

