"""The techniques on devicefit's own kernels (``Sparse24Int8``, ``LowBitWeightOnly``) through ``quantize_onnx``:
the ``ai.devicefit`` ops with ``kernels=True``, their standard-op lowering with ``kernels=False``, on a tiny MLP
with every Linear pattern the exporter produces (3-D input → MatMul + Add and MatMul without bias, 2-D input →
Gemm with and without bias; K = 64, 96, 64, 30: multiples of the group size and ragged ones)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from devicefit.compressor.plan import Plan
from devicefit.compressor.quant import quantize_onnx
from devicefit.compressor.quant.gptq import HessianAccumulator, gptq
from devicefit.compressor.quant.kernel_layers import MATMULNBITS_NOTE, lowbit_weights
from devicefit.compressor.quant.mapping import layer_of_initializer
from devicefit.compressor.quant.nbits import rtn
from devicefit.compressor.techniques import LowBitWeightOnly, Sparse24Int8, Technique
from devicefit.data import Dataset
from devicefit.kernels import dequantize_lowbit, prune_24, unpack_sparse24
from devicefit.runtime import run_onnx

LAYERS = ["a", "b", "c", "d"]


def runs(op: str) -> str:
    """The op onnxruntime runs for a custom op here: itself, or (no compiler: the library cannot be built)
    the MatMulInteger of its exact lowering, which ``cpu_session`` runs instead."""
    from devicefit.kernels import available

    return op if available() is not None else "MatMulInteger"
GROUP = 64  # K = 64 (one whole group), 96 and 30 (ragged)


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(64, 96)  # 3-D input: MatMul + Add
        self.b = torch.nn.Linear(96, 64, bias=False)  # 3-D input: MatMul
        self.c = torch.nn.Linear(64, 30)  # 2-D input: Gemm with bias
        self.d = torch.nn.Linear(30, 10, bias=False)  # 2-D input: Gemm without bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.b(torch.relu(self.a(x)))
        return self.d(torch.relu(self.c(h.mean(dim=1))))


@dataclass
class Case:
    module: MLP
    onnx: Path
    calib: Dataset
    eval: Dataset
    ref: np.ndarray  # fp32 outputs on eval


def _export(m: MLP, path: Path, calib: Dataset, ev: Dataset) -> Path:
    from devicefit.compressor.export import export_onnx

    export_onnx(m, (torch.from_numpy(calib.inputs["x"][:2]),), path, input_names=["x"], output_names=["y"],
                dynamic_axes={"x": {0: "batch"}}, verify=ev)
    return path


def _data(n: int, seed: int) -> Dataset:
    return Dataset({"x": np.random.default_rng(seed).normal(size=(n, 6, 64)).astype(np.float32)})


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: Any) -> Case:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    m = MLP().eval()
    calib, ev = _data(64, 0), _data(32, 1)
    path = _export(m, tmp_path_factory.mktemp("mlp") / "mlp.onnx", calib, ev)
    ops = Counter(n.op_type for n in onnx.load(path).graph.node)
    assert ops["MatMul"] == 2 and ops["Gemm"] == 2  # the patterns the module docstring promises
    return Case(m, path, calib, ev, run_onnx(path, ev))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _quantize(case: Case, tmp: Path, tech: Technique, kernels: bool) -> tuple[Any, onnx.ModelProto, np.ndarray]:
    out = tmp / f"q_{kernels}.onnx"
    res = quantize_onnx(case.onnx, out, Plan.uniform(quant=tech), layer_names=LAYERS, calib=case.calib, kernels=kernels)
    return res, onnx.load(out), run_onnx(out, case.eval)


def _check_int(res: Any, model: onnx.ModelProto) -> None:
    assert res.float_fallback_layers == [], res.fallback_reasons
    assert res.layer_status == dict.fromkeys(LAYERS, "int"), res.layer_status
    # every initializer the rewrite wrote traces back to its layer (verify's weight lineage)
    new = [i.name for i in model.graph.initializer if "weight_s24" in i.name or "weight_lowbit" in i.name]
    assert new and all(layer_of_initializer(n, LAYERS) is not None for n in new), new
    assert {layer_of_initializer(n, LAYERS) for n in new} == set(LAYERS)


# ------------------------------------------------------------------------------------------------ 2:4 int8
def test_sparse24_op_and_lowering_are_bit_identical(mlp: Case, tmp_path: Path) -> None:
    res_k, model_k, y_k = _quantize(mlp, tmp_path, Sparse24Int8(), kernels=True)
    res_s, model_s, y_s = _quantize(mlp, tmp_path, Sparse24Int8(), kernels=False)
    ops_k = Counter(n.op_type for n in model_k.graph.node)
    ops_s = Counter(n.op_type for n in model_s.graph.node)
    assert ops_k["Sparse24MatMul"] == 4 and ops_k["MatMul"] == ops_k["Gemm"] == ops_k["Add"] == 0, ops_k
    assert any(o.domain == "ai.devicefit" for o in model_k.opset_import)
    assert ops_s["Sparse24MatMul"] == 0 and ops_s["MatMulInteger"] == 4 and ops_s["MatMul"] == ops_s["Gemm"] == 0, ops_s
    assert not any(o.domain == "ai.devicefit" for o in model_s.opset_import)
    assert res_k.int_ops == {runs("Sparse24MatMul"): 4}, res_k.int_ops
    assert res_s.int_ops.get("MatMulInteger", 0) + res_s.int_ops.get("MatMulIntegerToFloat", 0) == 4, res_s.int_ops
    _check_int(res_k, model_k)
    _check_int(res_s, model_s)
    assert np.array_equal(y_k, y_s)  # the lowering is bit-identical to the op
    # random dense weights lose about half their entries to 2:4 pruning: measured cosine 0.914 vs fp32
    assert 0.88 < cosine(mlp.ref, y_k) < 0.999


def test_sparse24_keeps_weights_that_are_already_24(mlp: Case, tmp_path: Path) -> None:
    """A model pruned 2:4 first (what an ``nm`` 2:4 stage leaves) keeps its pattern; only int8 rounding is left."""
    pruned = MLP()
    pruned.load_state_dict(mlp.module.state_dict())
    with torch.no_grad():
        for name in LAYERS:
            lin = getattr(pruned, name)
            lin.weight.copy_(torch.from_numpy(prune_24(lin.weight.numpy())))
    path = _export(pruned.eval(), tmp_path / "pruned.onnx", mlp.calib, mlp.eval)
    case = Case(pruned, path, mlp.calib, mlp.eval, run_onnx(path, mlp.eval))
    res, model, y = _quantize(case, tmp_path, Sparse24Int8(), kernels=True)
    _check_int(res, model)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    from devicefit.kernels.pack import Sparse24Weights

    for name in LAYERS:
        node = next(n for n in model.graph.node if n.name == f"{name}.weight_s24")
        values, index, scales = (inits[i] for i in node.input[1:4])
        dense = unpack_sparse24(Sparse24Weights(values, index, scales, k=int(node.attribute[0].i)))
        want = getattr(pruned, name).weight.detach().numpy()
        # int8 rounding can zero a tiny kept weight, never keep a pruned one
        assert not (dense != 0)[want == 0].any()
        assert (dense != 0).sum() >= 0.98 * (want != 0).sum()
    # only int8 rounding of weights and activations separates it from the pruned fp32 model (measured 0.99998)
    assert cosine(case.ref, y) > 0.9995


# ------------------------------------------------------------------------------------------------ 2/3 bit
# measured cosine vs fp32 on the eval data (group 64; kernels=True, MatMulNBits within 1e-4 of it): 2-bit rtn 0.960,
# gptq 0.976; 3-bit rtn 0.987, gptq 0.996 (the floors sit below)
FLOORS = {(2, "rtn"): 0.93, (2, "gptq"): 0.96, (3, "rtn"): 0.98, (3, "gptq"): 0.99}


@pytest.mark.parametrize(("bits", "algorithm"), sorted(FLOORS))
def test_lowbit_op_and_lowering(mlp: Case, tmp_path: Path, bits: int, algorithm: str) -> None:
    tech = LowBitWeightOnly(bits=bits, group_size=GROUP, algorithm=algorithm)
    res_k, model_k, y_k = _quantize(mlp, tmp_path, tech, kernels=True)
    res_s, model_s, y_s = _quantize(mlp, tmp_path, tech, kernels=False)
    ops_k = Counter(n.op_type for n in model_k.graph.node)
    ops_s = Counter(n.op_type for n in model_s.graph.node)
    assert ops_k["LowBitMatMul"] == 4 and ops_k["MatMul"] == ops_k["Gemm"] == ops_k["Add"] == 0, ops_k
    assert ops_s["LowBitMatMul"] == 0 and ops_s["MatMulNBits"] == 4 and ops_s["MatMul"] == ops_s["Gemm"] == 0, ops_s
    assert res_k.int_ops == {runs("LowBitMatMul"): 4} and res_s.int_ops == {"MatMulNBits": 4}
    _check_int(res_k, model_k)
    _check_int(res_s, model_s)
    assert MATMULNBITS_NOTE in res_s.notes and MATMULNBITS_NOTE not in res_k.notes
    # same codes, scales, zero points; they differ only by the op's int8 activation rounding (bounded per
    # layer in test_lowbit_op_vs_matmulnbits_within_the_activation_rounding_bound)
    assert not np.array_equal(y_k, y_s)
    assert cosine(y_s, y_k) > 0.9999
    assert FLOORS[(bits, algorithm)] < cosine(mlp.ref, y_k) < 0.9999
    assert FLOORS[(bits, algorithm)] < cosine(mlp.ref, y_s) < 0.9999


def _sq_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a.astype(np.float64) - b) ** 2).sum())


@pytest.mark.parametrize("bits", [2, 3])
def test_lowbit_gptq_beats_rtn_on_the_calibration_data(mlp: Case, tmp_path: Path, bits: int) -> None:
    ref = run_onnx(mlp.onnx, mlp.calib)
    errs = {}
    for algorithm in ("rtn", "gptq"):
        tech = LowBitWeightOnly(bits=bits, group_size=GROUP, algorithm=algorithm)
        out = tmp_path / f"{algorithm}.onnx"
        quantize_onnx(mlp.onnx, out, Plan.uniform(quant=tech), layer_names=LAYERS, calib=mlp.calib, kernels=True)
        errs[algorithm] = _sq_err(ref, run_onnx(out, mlp.calib))
    assert errs["gptq"] < 0.8 * errs["rtn"], errs  # measured gptq / rtn: 0.48 (2-bit), 0.23 (3-bit)


def test_lowbit_gptq_codes_pack_unchanged() -> None:
    """GPTQ's / RTN's BlockQuant (codes, scales, integer zero points, ``w = (q - z) s``) is what pack_lowbit
    takes: the packed weights dequantize to exactly the same matrix (ragged K, padding dropped)."""
    rng = np.random.default_rng(3)
    k, n = 100, 24
    w_kn = rng.normal(size=(k, n)).astype(np.float32)
    acc = HessianAccumulator(k)
    acc.add(rng.normal(size=(256, k)).astype(np.float32))
    for bits in (2, 3):
        bq = gptq(w_kn, acc.hessian(), bits=bits, group_size=32)
        packed = lowbit_weights(w_kn, bits=bits, group_size=32, hessian=acc.hessian())
        np.testing.assert_array_equal(dequantize_lowbit(packed), bq.dequantize().T)
        packed_rtn = lowbit_weights(w_kn, bits=bits, group_size=32)
        np.testing.assert_array_equal(dequantize_lowbit(packed_rtn), rtn(w_kn, bits=bits, block_size=32).dequantize().T)
        assert not np.array_equal(dequantize_lowbit(packed), dequantize_lowbit(packed_rtn))


def _single_linear(tmp: Path) -> tuple[Path, Dataset, torch.nn.Linear]:
    torch.manual_seed(1)
    lin = torch.nn.Linear(160, 48).eval()  # K = 160: 2.5 groups of 64

    class One(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = lin

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    data = Dataset({"x": np.random.default_rng(5).normal(size=(8, 5, 160)).astype(np.float32) * 3})
    return _export(One().eval(), tmp / "one.onnx", data, data), data, lin


def test_lowbit_op_vs_matmulnbits_within_the_activation_rounding_bound(tmp_path: Path) -> None:
    """``LowBitMatMul`` quantizes each row's activations per group to int8 (step ``amax_g / 127``) inside the op;
    the lowering (``MatMulNBits``, float activations) does not. With the same weights ``Wq``,
    ``|y_op - y_nbits| <= sum_g amax_g / 254 * sum_{k in g} |Wq[n, k]|`` (half a step per activation) plus
    float32 accumulation error ``K * 2^-23 * sum_k |x_k| |Wq[n, k]|`` for each side (the lowering docstring)."""
    path, data, _ = _single_linear(tmp_path)
    tech = LowBitWeightOnly(bits=3, group_size=GROUP)
    ys = {}
    for kernels in (True, False):
        out = tmp_path / f"one_{kernels}.onnx"
        quantize_onnx(path, out, Plan.uniform(quant=tech), layer_names=["fc"], kernels=kernels)
        ys[kernels] = run_onnx(out, data)
        if kernels:
            model = onnx.load(out)
            inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
            node = next(n for n in model.graph.node if n.op_type == "LowBitMatMul")
            from devicefit.kernels.pack import LowBitWeights

            wq = dequantize_lowbit(LowBitWeights(inits[node.input[1]], inits[node.input[2]], inits[node.input[3]],
                                                 bits=3, group_size=GROUP, k=160))  # [N, K]
    x = data.inputs["x"].reshape(-1, 160).astype(np.float64)
    kp = -(-160 // GROUP) * GROUP
    xp = np.zeros((x.shape[0], kp))
    xp[:, :160] = x
    amax = np.abs(xp.reshape(x.shape[0], -1, GROUP)).max(-1)  # [M, groups]
    wabs = np.zeros((wq.shape[0], kp))
    wabs[:, :160] = np.abs(wq)
    wsum = wabs.reshape(wq.shape[0], -1, GROUP).sum(-1)  # [N, groups]
    bound = (amax / 254.0) @ wsum.T + 2 * 160 * 2.0**-23 * (np.abs(x) @ np.abs(wq).T)
    diff = np.abs(ys[True].reshape(-1, 48).astype(np.float64) - ys[False].reshape(-1, 48))
    assert (diff <= bound).all(), float((diff - bound).max())
    assert diff.max() > 0  # they are not the same computation


# ------------------------------------------------------------------------------------------------ techniques
def test_technique_fields_are_validated_and_round_trip() -> None:
    from devicefit.compressor.shortcuts import parse_quant
    from devicefit.compressor.techniques import technique_from_dict
    from devicefit.errors import UserInputError

    for bad, field in ((dict(bits=4), "bits"), (dict(group_size=48), "group_size"), (dict(group_size=16), "group_size"),
                       (dict(algorithm="awq"), "algorithm")):
        with pytest.raises(UserInputError, match=field):
            LowBitWeightOnly(**bad)  # type: ignore[arg-type]
    with pytest.raises(UserInputError, match="importance"):
        Sparse24Int8(importance="wanda")
    for tech in (Sparse24Int8(), LowBitWeightOnly(), LowBitWeightOnly(bits=3, group_size=32, algorithm="gptq")):
        assert technique_from_dict("quant", tech.to_dict()) == tech
        assert tech.needs_kernels and tech.int_compute and tech.onnx_pass == "weights"
    assert parse_quant("int3_gptq") == LowBitWeightOnly(bits=3, algorithm="gptq")
    assert parse_quant("int2:group_size=64") == LowBitWeightOnly(bits=2, group_size=64)
    assert parse_quant("sparse24") == parse_quant("int8_sparse24") == Sparse24Int8()
    gq = LowBitWeightOnly(algorithm="gptq")
    assert gq.needs_calibration and gq.calib_stat == "hessian"
    assert not LowBitWeightOnly().needs_calibration and LowBitWeightOnly().calib_stat is None
    assert (LowBitWeightOnly().compute_dtype, LowBitWeightOnly(bits=3).compute_dtype) == ("lowbit2w", "lowbit3w")
    assert LowBitWeightOnly(group_size=32).extra_weight_bytes(3200) == 500.0  # fp32 scale + uint8 zero per group


def test_cost_classes() -> None:
    from devicefit.compressor.latency.roofline import DTYPE_COSTS, dtype_of

    assert dtype_of(Sparse24Int8()) == "s24" and DTYPE_COSTS["s24"].weight_bytes == 0.625
    assert DTYPE_COSTS["s24"].int8_peak and DTYPE_COSTS["s24"].prior_speedup == 1.5
    assert dtype_of(LowBitWeightOnly(bits=2)) == "lowbit2w" and DTYPE_COSTS["lowbit2w"].weight_bytes == 0.25
    assert dtype_of(LowBitWeightOnly(bits=3)) == "lowbit3w" and DTYPE_COSTS["lowbit3w"].weight_bytes == 0.375


def test_fake_imitations() -> None:
    from devicefit.kernels import pack_sparse24

    rng = np.random.default_rng(0)
    w = rng.normal(size=(16, 30)).astype(np.float32)  # 30: a ragged last group of 4
    fake = Sparse24Int8().fake()
    assert fake is not None and fake.weight is not None and fake.activation == "dynamic"
    got = fake.weight(torch.from_numpy(w), Sparse24Int8(), None).numpy()
    p = pack_sparse24(w)
    want = unpack_sparse24(p).astype(np.float32) * p.scales[:, None]  # what the kernel computes with
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    lb = LowBitWeightOnly(bits=2, group_size=32).fake()
    assert lb is not None and lb.weight is not None and lb.activation is None
    w2 = rng.normal(size=(8, 64)).astype(np.float32)
    for bits in (2, 3):
        q = lb.weight(torch.from_numpy(w2), LowBitWeightOnly(bits=bits, group_size=32), None).numpy()
        levels = [len(np.unique(q[r, g * 32:(g + 1) * 32])) for r in range(8) for g in range(2)]
        assert max(levels) <= 2**bits and max(levels) > 2 ** (bits - 1)


def test_mixed_plan_with_static_int8(mlp: Case, tmp_path: Path) -> None:
    """The static pass calibrates on the graph as it is after the weight pass, custom ops included."""
    from devicefit.compressor.plan import LayerChoice
    from devicefit.compressor.techniques import Int8Static

    s24, static = LayerChoice(quant=Sparse24Int8()), LayerChoice(quant=Int8Static())
    plan = Plan.per_layer({"a": s24, "b": s24, "c": static, "d": static})
    res = quantize_onnx(mlp.onnx, tmp_path / "mix.onnx", plan, layer_names=LAYERS, calib=mlp.calib, kernels=True)
    assert res.float_fallback_layers == [] and res.layer_status == dict.fromkeys(LAYERS, "int")
    assert res.int_ops.get(runs("Sparse24MatMul")) == 2 and res.int_ops.get("QGemm") == 2, res.int_ops
    # the measured cosine is 0.964; 2:4 on a and b alone costs most of it
    assert cosine(mlp.ref, run_onnx(tmp_path / "mix.onnx", mlp.eval)) > 0.94


def _matmul_model(opset: int) -> onnx.ModelProto:
    h, tp, nh = onnx.helper, onnx.TensorProto, onnx.numpy_helper
    rng = np.random.default_rng(0)
    g = h.make_graph([h.make_node("MatMul", ["x", "fc.weight.T"], ["mm"], name="mm"),
                      h.make_node("Add", ["mm", "fc.bias"], ["y"], name="add")], "g",
                     [h.make_tensor_value_info("x", tp.FLOAT, ["B", 64])], [h.make_tensor_value_info("y", tp.FLOAT, ["B", 8])],
                     [nh.from_array(rng.normal(size=(64, 8)).astype(np.float32), "fc.weight.T"),
                      nh.from_array(rng.normal(size=8).astype(np.float32), "fc.bias")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)])


def test_standard_form_of_sparse24_needs_opset_18() -> None:
    from devicefit.compressor.quant.kernel_layers import sparse24_layer
    from devicefit.compressor.quant.mapping import map_layers
    from devicefit.compressor.quant.weight_only import QuantContext

    for kernels, opset in ((True, 17), (False, 18), (False, 17)):
        model = _matmul_model(opset)
        ln = map_layers(model, ["fc"]).first("fc")
        ctx = QuantContext(model, kernels=kernels)
        if (kernels, opset) == (False, 17):
            with pytest.raises(ValueError, match="opset >= 18"):
                sparse24_layer(ctx, ln)
            continue
        sparse24_layer(ctx, ln)
        assert [n.op_type for n in model.graph.node if n.op_type in ("MatMul", "Add", "Sparse24MatMul", "MatMulInteger")] \
            == (["Sparse24MatMul"] if kernels else ["MatMulInteger", "Add"])
