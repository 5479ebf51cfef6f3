"""Recurrent layers (``nn.GRU`` / ``nn.LSTM``) are compressible layers (issue #17): named by plans, analysed,
priced by the latency model, given search options and sensitivity, quantized on the ONNX ``GRU`` / ``LSTM``
nodes — an LSTM in onnxruntime's int8 ``DynamicQuantizeLSTM``, a GRU (no integer kernel) in int8 storage — and
refused by the structural passes with the existing reason."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from devicefit.bundle import ModelBundle
from devicefit.compress import compress
from devicefit.compressor.analysis import analyze
from devicefit.compressor.latency import CalibratedModel, LayerSpec, Roofline, plan_costs
from devicefit.compressor.layers import (
    is_compressible,
    is_rewritable,
    layer_kind,
    layer_names,
    recurrent_macs,
)
from devicefit.compressor.plan import LayerChoice, LayerRule, Plan
from devicefit.compressor.search.sensitivity import measure_sensitivity
from devicefit.compressor.search.space import SpaceConfig, build_space
from devicefit.compressor.structural import apply_structural
from devicefit.compressor.techniques import Int8Dynamic, Int8WeightOnly, KeepFloat, LowRank
from devicefit.data import Dataset
from devicefit.models import load_model

IN, HIDDEN, STEPS = 12, 64, 20


class SeqClassifier(nn.Module):
    """A recurrent encoder (GRU or LSTM) and a Linear head on its last step."""

    def __init__(self, cell: type[nn.Module], *, layers: int = 2, batch_first: bool = True,
                 bidirectional: bool = False) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.rnn = cell(IN, HIDDEN, num_layers=layers, batch_first=batch_first, bidirectional=bidirectional)
        self.fc = nn.Linear(HIDDEN * (2 if bidirectional else 1), 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, STEPS, IN]
        if not self.batch_first:
            x = x.transpose(0, 1)
        y, _ = self.rnn(x)
        return self.fc(y[:, -1] if self.batch_first else y[-1])


def _bundle(cell: type[nn.Module], *, layers: int = 2, batch_first: bool = True, bidirectional: bool = False,
            n: int = 96) -> ModelBundle:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x = np.random.default_rng(0).normal(size=(n, STEPS, IN)).astype(np.float32)
    net = SeqClassifier(cell, layers=layers, batch_first=batch_first, bidirectional=bidirectional).eval()
    with torch.no_grad():
        labels = net(torch.from_numpy(x)).argmax(1).numpy()
    return load_model(net, example_inputs=torch.from_numpy(x[:2]), data=Dataset({"x": x}, labels, "random sequences"))


def _ops(path: Path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _int8_initializers(path: Path) -> list[str]:
    return sorted(i.name for i in onnx.load(str(path)).graph.initializer if i.data_type == onnx.TensorProto.INT8)


# ------------------------------------------------------------------------------ layers, analysis, latency
@pytest.mark.parametrize("cell,kind,gates", [(nn.GRU, "gru", 3), (nn.LSTM, "lstm", 4)])
def test_recurrent_layers_are_compressible_analysed_and_priced(cell: type[nn.Module], kind: str, gates: int) -> None:
    net = SeqClassifier(cell).eval()
    assert layer_names(net) == ["rnn", "fc"]
    assert is_compressible(net.rnn) and not is_rewritable(net.rnn) and layer_kind(net.rnn) == kind
    # per step: gates x (in + hidden) x hidden for layer 0, gates x (hidden + hidden) x hidden for layer 1
    per_step = gates * ((IN + HIDDEN) * HIDDEN + (HIDDEN + HIDDEN) * HIDDEN)
    info = analyze(net, [torch.randn(2, STEPS, IN)]).layer("rnn")
    assert info.type == cell.__name__ and info.macs == per_step * STEPS  # the LSTM's fused kernel counted too
    assert recurrent_macs(nn.GRU(IN, HIDDEN), [STEPS, 3, IN]) == 3 * (IN + HIDDEN) * HIDDEN * STEPS * 3  # seq-first
    spec = LayerSpec.from_info(info)
    assert spec.kind == kind and spec.macs == per_step * STEPS
    # the prior is not zero, and int8 storage (float compute) is never predicted faster than fp32
    model = CalibratedModel(Roofline(peak_gops_fp32=50.0, peak_gops_int8=150.0, mem_bandwidth_gbs=5.0))
    fp32 = model.predict(plan_costs([spec], {"rnn": LayerChoice()})).per_layer["rnn"]
    stored = model.predict(plan_costs([spec], {"rnn": LayerChoice(quant=Int8WeightOnly())})).per_layer["rnn"]
    assert fp32 > 0 and stored >= fp32


def test_structural_passes_refuse_recurrent_layers() -> None:
    net = SeqClassifier(nn.GRU).eval()
    example = (torch.randn(2, STEPS, IN),)
    res = apply_structural(net, Plan((LayerRule("rnn", lowrank=LowRank(0.5)),)), None, example, ["x"])
    (refused,) = res.refused
    assert refused.layer == "rnn" and "GRU is not rewritten (only Linear/Conv2d)" in refused.detail and not res.applied


# ------------------------------------------------------------------------------ ONNX: export, quantize
@pytest.mark.parametrize("layers,batch_first,bidirectional", [(2, True, False), (1, False, False), (2, True, True)])
def test_lstm_int8_dynamic_runs_dynamic_quantize_lstm(tmp_path: Path, layers: int, batch_first: bool,
                                                      bidirectional: bool) -> None:
    b = _bundle(nn.LSTM, layers=layers, batch_first=batch_first, bidirectional=bidirectional)
    fp32 = compress(b, Plan.uniform(quant=KeepFloat()), out=tmp_path / "fp32.onnx", progress=False)
    # the export folds W / R / B into initializers named after the layer
    inits = {i.name for i in onnx.load(str(fp32.path)).graph.initializer}
    assert {f"rnn.weight_{w}_l{k}" for w in ("ih", "hh") for k in range(layers)} <= inits
    res = compress(b, Plan((LayerRule("rnn", quant=Int8Dynamic()),)), out=tmp_path / "q.onnx", progress=False)
    ops = _ops(res.path)
    assert ops["DynamicQuantizeLSTM"] == layers and ops["LSTM"] == 0
    assert res.int_ops == {"DynamicQuantizeLSTM": layers} and res.float_fallback_layers == []
    assert res.quant["layer_status"]["rnn"] == "int" and res.quant["layer_status"]["fc"] == "float"
    # measured: cosine 0.999999, top-1 agreement 1.0
    assert res.fidelity["cosine"] >= 0.999 and res.metric.drop <= 0.02
    # W and R of each layer (both directions in one tensor) in int8: the file shrinks to well under half
    # (measured 0.35-0.43x)
    assert len([n for n in _int8_initializers(res.path) if n.endswith("_quantized")]) == 2 * layers
    assert res.size_bytes < 0.45 * fp32.size_bytes


@pytest.mark.parametrize("layers,batch_first", [(2, True), (1, False)])
def test_gru_weight_only_stores_int8_w_and_r(tmp_path: Path, layers: int, batch_first: bool) -> None:
    b = _bundle(nn.GRU, layers=layers, batch_first=batch_first)
    fp32 = compress(b, Plan.uniform(quant=KeepFloat()), out=tmp_path / "fp32.onnx", progress=False)
    res = compress(b, Plan((LayerRule("rnn", quant=Int8WeightOnly()),)), out=tmp_path / "w.onnx", progress=False)
    want = sorted(f"rnn.weight_{w}_l{k}_int8" for w in ("ih", "hh") for k in range(layers))
    assert _int8_initializers(res.path) == want
    ops = _ops(res.path)
    assert ops["GRU"] == layers and ops["Cast"] == 2 * layers  # int8 -> Cast -> Mul (folded at load) -> GRU
    assert res.quant["layer_status"]["rnn"] == "float" and res.int_ops == {} and res.float_fallback_layers == []
    # measured: cosine 0.999997, 0.37-0.40x the fp32 file
    assert res.fidelity["cosine"] >= 0.999 and res.metric.drop <= 0.02
    assert res.size_bytes < 0.5 * fp32.size_bytes
    # a GRU has no int8 kernel in onnxruntime: int8_dynamic leaves it float and says why
    dyn = compress(b, Plan((LayerRule("rnn", quant=Int8Dynamic()),)), out=tmp_path / "d.onnx", progress=False)
    assert dyn.quant["skipped"] == {"rnn": "int8_dynamic applies to linear/conv/lstm layers, rnn is a gru (GRU)"}
    assert _int8_initializers(dyn.path) == [] and _ops(dyn.path)["GRU"] == layers


def test_node_map_attributes_recurrent_nodes_to_their_layer(tmp_path: Path) -> None:
    from devicefit.compressor.latency import node_map_for

    b = _bundle(nn.LSTM)
    fp32 = compress(b, Plan.uniform(quant=KeepFloat()), out=tmp_path / "fp32.onnx", progress=False)
    q = compress(b, Plan((LayerRule("rnn", quant=Int8Dynamic()),)), out=tmp_path / "q.onnx", progress=False)
    for path, ref, op in ((fp32.path, None, "LSTM"), (q.path, fp32.path, "DynamicQuantizeLSTM")):
        nm = node_map_for(path, ["rnn", "fc"], reference=ref)
        opt = {n.name: n.op_type for n in onnx.load(str(path)).graph.node}
        rnn_nodes = [n for n, layer in nm.layer_of.items() if layer == "rnn"]
        assert len([n for n in rnn_nodes if opt.get(n) == op]) == 2, (op, nm.layer_of)


# ------------------------------------------------------------------------------ search space, sensitivity
def test_search_space_offers_recurrent_options_and_sensitivity_scores_them(tmp_path: Path) -> None:
    specs = {cell: [LayerSpec.from_info(li) for li in analyze(SeqClassifier(cell), [torch.randn(2, STEPS, IN)]).layers
                    if li.name in ("rnn", "fc")] for cell in (nn.GRU, nn.LSTM)}
    gru = build_space(specs[nn.GRU])
    assert gru.labels("rnn") == ["float", "int8_weight_only"]
    lstm = build_space(specs[nn.LSTM])
    assert lstm.labels("rnn") == ["float", "int8_dynamic", "int8_weight_only"]
    # structural techniques and int8 static / int4 are never offered on a recurrent layer; the Linear head is
    # unchanged (int8_weight_only stays off Linear / Conv in the search)
    assert not any(o.structural for o in gru.options["rnn"]) and "int8_weight_only" not in gru.labels("fc")
    assert {"int8_dynamic", "int8_static"} <= set(gru.labels("fc"))
    explicit = SpaceConfig(families={"prune": ("structured",), "lowrank": ("lowrank",), "quant": ("int8_static",)})
    assert build_space(specs[nn.GRU], config=explicit).labels("rnn") == ["float"]
    # TFLite carries no recurrent option
    assert build_space(specs[nn.LSTM], config=SpaceConfig(format="tflite")).labels("rnn") == ["float"]

    b = _bundle(nn.LSTM, n=64)
    assert b.module is not None and b.eval is not None
    before = {k: v.clone() for k, v in b.module.state_dict().items()}
    t = measure_sensitivity(b.module, lstm, b.eval, input_names=["x"], metric="top1_agreement", model_hash="lstm",
                            cache_dir=tmp_path)
    assert all(torch.equal(before[k], v) for k, v in b.module.state_dict().items())  # weights restored
    # int8 fake-quantized gate matrices move the output, a little: measured 1 - cosine 2.4e-7 (weight only)
    # and 5.7e-7 (int8 dynamic: the input sequence fake-quantized too)
    devs = t.devs["rnn"]
    assert set(devs) == {"int8_dynamic", "int8_weight_only"}
    assert 0 < devs["int8_weight_only"] < 1e-3 and 0 < devs["int8_dynamic"] < 1e-2
    assert devs["int8_dynamic"] > devs["int8_weight_only"]
