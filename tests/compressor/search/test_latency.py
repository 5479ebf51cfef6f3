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
from devicefit.compressor.latency.roofline import dtype_of, glue_melems, structural_scales
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
        # per-node times whose profiled run took 10x the plain p50 (node count unknown): not trusted
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



def test_batched_specs_scale_work_not_weights() -> None:
    spec = _specs()[1]  # fc: memory-bound at batch 1 (weights dominate)
    b64 = spec.batched(64)
    assert spec.batched(1) is spec
    assert (b64.macs, b64.in_elems, b64.out_elems, b64.params) == (spec.macs * 64, spec.in_elems * 64,
                                                                   spec.out_elems * 64, spec.params)
    (one,) = plan_costs([spec], Plan())
    (many,) = plan_costs([b64], Plan())
    assert many.weight_bytes == one.weight_bytes and many.act_bytes == pytest.approx(64 * one.act_bytes)
    # weights are read once per run: 64 inputs cost far less than 64 runs of one
    assert ROOF.layer_ms(one) < ROOF.layer_ms(many) < 64 * ROOF.layer_ms(one) / 4


def test_per_node_trusted_by_kernel_size_not_by_profiled_wall_time() -> None:
    specs = _specs()
    costs = plan_costs(specs, Plan())
    per = {"conv": 2.0, "fc": 1.0, "head": 0.1}
    model = CalibratedModel(ROOF, device_id="dev")
    # a loaded machine: the profiled runs' mean took 3x the plain p50, but kernels of ~0.5 ms are well measured
    layers, src = model.split(costs, 2.0, per, 0.9, profiled_e2e_ms=6.0, n_nodes=8)
    assert src == "per-node" and layers["conv"] == pytest.approx(2.0 * 2.0 / 6.0)
    # a tiny model: 8 kernels of ~5 µs each are mostly the profiler's own cost
    tiny = {k: v / 500 for k, v in per.items()}
    assert model.split(costs, 0.01, tiny, 0.0018, profiled_e2e_ms=0.012, n_nodes=8)[1] == "end-to-end"


def test_unmeasured_layer_gets_its_own_fp32_efficiency_times_siblings_speedup() -> None:
    specs = [LayerSpec(f"l{i}", "linear", 100_000 * (i + 1), 100_000 * (i + 1) * 32, 32 * 300, 32 * 300) for i in range(4)]
    fp32_eff = {"l0": 2.0, "l1": 4.0, "l2": 2.0, "l3": 4.0}  # differently efficient layers
    model = CalibratedModel(ROOF, device_id="dev")
    costs = plan_costs(specs, Plan())
    model.observe(costs, p50_ms=sum(fp32_eff[c.name] * ROOF.layer_ms(c) for c in costs) + 0.1,
                  per_layer_ms={c.name: fp32_eff[c.name] * ROOF.layer_ms(c) for c in costs}, other_ms=0.1)
    half = Plan.per_layer({"l0": LayerChoice(quant=Int8Static()), "l1": LayerChoice(quant=Int8Static())})
    hcosts = plan_costs(specs, half)
    # int8 halves each layer's efficiency figure (against its int8 roofline)
    true8 = {c.name: (0.5 if c.dtype == "int8" else 1.0) * fp32_eff[c.name] * ROOF.layer_ms(c) for c in hcosts}
    model.observe(hcosts, p50_ms=sum(true8.values()) + 0.1, per_layer_ms=true8, other_ms=0.1)
    other_half = Plan.per_layer({"l2": LayerChoice(quant=Int8Static()), "l3": LayerChoice(quant=Int8Static())})
    pred = model.predict(plan_costs(specs, other_half))
    for c in plan_costs(specs, other_half):
        if c.dtype == "int8":  # l2 / l3 never measured at int8: fp32 efficiency of the layer × the siblings' speed-up
            assert pred.per_layer[c.name] == pytest.approx(0.5 * fp32_eff[c.name] * ROOF.layer_ms(c))


def test_layers_of_one_shape_pool_their_noisy_per_node_times() -> None:
    """Six identical layers whose per-node times scatter ±60% around the truth (a loaded machine): each is
    predicted from the median of its shape class, not from its own single noisy sample."""
    specs = [LayerSpec(f"q{i}", "linear", 147_840, 147_456 * 128, 128 * 384, 128 * 384) for i in range(6)]
    costs = plan_costs(specs, Plan())
    truth = 2.0 * ROOF.layer_ms(costs[0])
    noise = [1.6, 0.4, 1.0, 1.1, 0.9, 0.5]
    model = CalibratedModel(ROOF, device_id="dev")
    model.observe(costs, p50_ms=6 * truth + 0.5, per_layer_ms={c.name: truth * f for c, f in zip(costs, noise, strict=True)},
                  other_ms=0.5)
    pred = model.predict(costs)
    assert all(v == pytest.approx(pred.per_layer["q0"]) for v in pred.per_layer.values())
    assert pred.per_layer["q0"] == pytest.approx(truth, rel=0.1)  # the pooled median; q0 alone said 1.6x


def test_device_wide_ratios_are_kept_per_benchmark_settings(tmp_path: Path) -> None:
    path = tmp_path / "dev.json"
    costs = plan_costs(_specs(), Plan())
    one = CalibratedModel(ROOF, device_id="dev", model_key="m")
    one.observe(costs, p50_ms=5.0, per_layer_ms={"conv": 2.0, "fc": 2.0, "head": 0.1}, other_ms=0.9)
    one.save(path)
    many = CalibratedModel(ROOF, device_id="dev", model_key="m@batch32", scope="batch32")
    many.observe(costs, p50_ms=50.0, per_layer_ms={"conv": 20.0, "fc": 20.0, "head": 1.0}, other_ms=9.0)
    many.save(path)
    again = CalibratedModel.load(path, ROOF, device_id="dev", model_key="x")
    assert again.kind_ratios == one.kind_ratios != many.kind_ratios
    assert CalibratedModel.load(path, ROOF, device_id="dev", model_key="y", scope="batch32").kind_ratios == many.kind_ratios


def test_parameters_saved_by_another_format_version_are_not_reused(tmp_path: Path) -> None:
    import json

    path = tmp_path / "dev.json"
    model = CalibratedModel(ROOF, device_id="dev", model_key="m")
    model.observe(plan_costs(_specs(), Plan()), p50_ms=5.0, per_layer_ms={"conv": 2.0, "fc": 2.0, "head": 0.1}, other_ms=0.9)
    model.save(path)
    assert CalibratedModel.load(path, ROOF, device_id="dev", model_key="m").layer_ratios == model.layer_ratios
    data = json.loads(path.read_text())
    data.pop("format")  # as written before the format was versioned
    path.write_text(json.dumps(data))
    old = CalibratedModel.load(path, ROOF, device_id="dev", model_key="m")
    assert old.layer_ratios == {} and old.kind_ratios == {}


def test_node_the_runtime_quantized_itself_maps_to_its_layer_and_counts_as_int8() -> None:
    """onnxruntime turns a float Conv between statically quantized activations into a QLinearConv that
    reads a weight it quantized at load time (``node_Conv_20_weight_q``): the node keeps the original
    node's name as prefix, which the unoptimized file ties to ``conv2.weight``."""
    from onnx import TensorProto, helper

    from devicefit.compressor.latency.nodemap import effective_dtypes, map_nodes

    def init(name: str) -> object:
        return helper.make_tensor(name, TensorProto.FLOAT, [1], [0.0])

    src = helper.make_model(helper.make_graph(
        [helper.make_node("DequantizeLinear", ["conv1.weight_quantized", "s"], ["w1"], name="conv1.weight_DequantizeLinear"),
         helper.make_node("Conv", ["x", "w1"], ["a"], name="node_Conv_19"),
         helper.make_node("Conv", ["a", "conv2.weight", "conv2.bias"], ["y"], name="node_Conv_20")],
        "src", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [init("conv1.weight_quantized"), init("s"), init("conv2.weight"), init("conv2.bias")]))
    opt = helper.make_model(helper.make_graph(
        [helper.make_node("QLinearConv", ["x", "s", "z", "conv1.weight_quantized"], ["a"], name="node_Conv_19_token_3"),
         helper.make_node("QLinearConv", ["a", "s", "z", "node_Conv_20_weight_q"], ["y"], name="node_Conv_20_token_6")],
        "opt", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [init("s"), init("z"), init("conv1.weight_quantized"), init("node_Conv_20_weight_q")]))
    nm = map_nodes(opt, ["conv1", "conv2"], sources=[src])
    assert nm.layer_of == {"node_Conv_19_token_3": "conv1", "node_Conv_20_token_6": "conv2"}
    times = [{"name": "node_Conv_19_token_3", "op_type": "QLinearConv", "mean_ms": 0.1},
             {"name": "node_Conv_20_token_6", "op_type": "QLinearConv", "mean_ms": 0.2}]
    assert effective_dtypes(nm, times) == {"conv1": "int8", "conv2": "int8"}


def test_time_outside_the_layers_steps_per_scheme() -> None:
    """An int8 dynamic probe whose plan adds 5 ms of quantizers and casts outside the layers must not make
    a plan with one int4 layer look 5 ms slower: each scheme has its own step."""
    specs = _specs()
    model = CalibratedModel(ROOF, device_id="dev")
    layers = {"conv": 2.0, "fc": 2.0, "head": 0.1}
    model.observe(plan_costs(specs, Plan()), p50_ms=5.0, per_layer_ms=layers, other_ms=0.9)
    dyn = Plan.per_layer({"conv": LayerChoice(quant=Int8Dynamic())})
    model.observe(plan_costs(specs, dyn), p50_ms=4.1 + 5.9, per_layer_ms=layers, other_ms=5.9)
    int4 = Plan.per_layer({"head": LayerChoice(quant=Int4WeightOnly(group_size=32))})
    model.observe(plan_costs(specs, int4), p50_ms=5.0, per_layer_ms=layers, other_ms=0.9)
    head4 = Plan.per_layer({"fc": LayerChoice(quant=Int4WeightOnly(group_size=32))})
    assert model.predict(plan_costs(specs, head4)).other_ms == pytest.approx(0.9, abs=0.05)
    assert model.predict(plan_costs(specs, dyn)).other_ms == pytest.approx(5.9, abs=0.05)


def test_session_scale_rescales_a_persisted_calibration(tmp_path: Path) -> None:
    """Calibrated on a quiet day, loaded on a day the shared host runs 2x slower: the fp32 baseline anchors
    the session scale, int8 predictions follow it, and what is learned today stays on the saved scale."""
    specs = _specs()
    fp32 = plan_costs(specs, {})
    int8 = plan_costs(specs, {s.name: LayerChoice(quant=Int8Static()) for s in specs})
    day1 = CalibratedModel(ROOF, device_id="d", model_key="m")
    for costs, per in ((fp32, {"conv": 2.0, "fc": 3.0, "head": 0.1}), (int8, {"conv": 0.8, "fc": 1.2, "head": 0.05})):
        day1.observe(costs, p50_ms=sum(per.values()) + 0.4, per_layer_ms=per, other_ms=0.4)
    path = tmp_path / "lat.json"
    day1.save(path)
    day2 = CalibratedModel.load(path, ROOF, device_id="d", model_key="m")
    assert day2.anchor_session(fp32, 2 * day1.predict(fp32).total_ms) == pytest.approx(2.0)
    assert day2.predict(int8).total_ms == pytest.approx(2 * day1.predict(int8).total_ms)
    before = {k: list(v) for k, v in day2.layer_ratios.items()}
    day2.observe(int8, p50_ms=2 * 2.45, per_layer_ms={"conv": 1.6, "fc": 2.4, "head": 0.1}, other_ms=0.8,
                 predicted_ms=day2.predict(int8).total_ms)
    assert day2.layer_ratios["conv|int8"][-1] == pytest.approx(before["conv|int8"][-1])  # learned at day-1 scale
    assert day2.errors[-1]["rel_error"] == pytest.approx(0.0, abs=1e-6)  # errors in today's time
    # nothing calibrated: no anchor, scale 1
    fresh = CalibratedModel(ROOF, device_id="d", model_key="other")
    assert fresh.anchor_session(fp32, 5.0) is None and fresh.session_scale == 1.0


def test_this_sessions_measurements_outvote_the_persisted_ones(tmp_path: Path) -> None:
    """40 int8 measurements from an earlier session and one today that disagrees with them by 30%: today's
    prediction of the same plan follows today's measurement (a median over the 41 would not move), and the
    non-layer time takes today's intercept while the int8 step learned earlier still applies."""
    specs = _specs()
    fp32 = plan_costs(specs, {})
    int8 = plan_costs(specs, {s.name: LayerChoice(quant=Int8Static()) for s in specs})
    day1 = CalibratedModel(ROOF, device_id="d", model_key="m")
    old8 = {"conv": 0.8, "fc": 1.2, "head": 0.05}
    day1.observe(fp32, p50_ms=5.1 + 0.4, per_layer_ms={"conv": 2.0, "fc": 3.0, "head": 0.1}, other_ms=0.4)
    for _ in range(40):
        day1.observe(int8, p50_ms=sum(old8.values()) + 0.6, per_layer_ms=old8, other_ms=0.6)
    path = tmp_path / "lat.json"
    day1.save(path)
    day2 = CalibratedModel.load(path, ROOF, device_id="d", model_key="m")
    assert day2.predict(int8).total_ms == pytest.approx(day1.predict(int8).total_ms)  # nothing measured today yet
    new8 = {k: 1.3 * v for k, v in old8.items()}
    day2.observe(int8, p50_ms=sum(new8.values()) + 0.9, per_layer_ms=new8, other_ms=0.9)
    pred = day2.predict(int8)
    assert pred.per_layer == pytest.approx(new8, rel=1e-6)
    assert pred.total_ms == pytest.approx(sum(new8.values()) + 0.9, rel=0.02)
    assert len(day2.layer_ratios["conv|int8"]) == 41  # kept, set aside
    # fp32 not measured today: still the persisted ratio; its other time follows today's intercept, minus
    # the int8 step learned from both days (0.6 - 0.4 earlier)
    assert day2.predict(fp32).per_layer == pytest.approx(day1.predict(fp32).per_layer)
    assert day2.predict(fp32).other_ms == pytest.approx(0.9 - 0.2, abs=0.05)


def test_where_a_float_layer_sits_in_an_int8_run_prices_its_conversions() -> None:
    """Non-layer time that follows the int8 / float conversion elements: learned from fp32, uniform int8 and
    two plans with one float layer, it tells a float layer on the big early activation (two conversions of
    4M elements) from one at the same count elsewhere — a count-only model predicts both the same."""
    specs = [LayerSpec("a", "conv", params=1000, macs=10**8, in_elems=1_000_000, out_elems=4_000_000),
             LayerSpec("b", "conv", params=1000, macs=10**8, in_elems=4_000_000, out_elems=1_000_000),
             LayerSpec("c", "linear", params=1000, macs=10**6, in_elems=1_000_000, out_elems=10_000),
             LayerSpec("d", "linear", params=1000, macs=10**4, in_elems=10_000, out_elems=1000)]

    def plan(*float_layers: str) -> list:
        return plan_costs(specs, {s.name: LayerChoice(quant=Int8Static()) for s in specs if s.name not in float_layers})

    def truth(costs: list) -> float:
        return 0.5 + 0.02 * sum(c.dtype == "int8" for c in costs) + 0.1 * glue_melems(costs)

    assert glue_melems(plan("b")) == pytest.approx(1 + 4 + 1 + 0.001)
    model = CalibratedModel(ROOF, device_id="d")
    for costs in (plan_costs(specs, {}), plan(), plan("b"), plan("d")):
        model.observe(costs, p50_ms=1.0 + truth(costs), per_layer_ms={s.name: 0.25 for s in specs}, other_ms=truth(costs))
    for held_out in (plan("a"), plan("c")):
        assert model.predict(held_out).other_ms == pytest.approx(truth(held_out), rel=0.03)
    assert model.predict(plan("a")).other_ms > model.predict(plan("c")).other_ms + 0.15


def test_conversions_never_predicted_to_save_time() -> None:
    """Two half-int8 plans whose non-layer times differ the 'wrong' way (the one with more conversion
    elements measured faster — noise, or layer time mis-split): the conversion price is clamped at 0, so
    a plan with many float layers inside an int8 run is not predicted faster than the uniform int8 plan."""
    specs = [LayerSpec(f"l{i}", "conv", params=1000, macs=10**7, in_elems=(4 - i) * 1_000_000, out_elems=(3 - i) * 1_000_000 + 1000)
             for i in range(4)]
    int8 = {s.name: LayerChoice(quant=Int8Static()) for s in specs}
    first, second = dict(list(int8.items())[:2]), dict(list(int8.items())[2:])
    model = CalibratedModel(ROOF, device_id="d")
    layers = {s.name: 0.25 for s in specs}
    for plan, other in (({}, 0.5), (first, 0.3), (second, 0.6), (int8, 0.35)):
        costs = plan_costs(specs, plan)
        model.observe(costs, p50_ms=1.0 + other, per_layer_ms=layers, other_ms=other)
    assert glue_melems(plan_costs(specs, first)) > glue_melems(plan_costs(specs, second))
    middle_float = {k: v for k, v in int8.items() if k not in ("l1", "l2")}
    assert model.predict(plan_costs(specs, middle_float)).other_ms >= model.predict(plan_costs(specs, int8)).other_ms - 0.02
