"""``devicefit fit model.onnx --data d.npz``: the quant-only search of a graph without its torch module.

Small models exported inside the tests (``torch.onnx.export``): the graph-side sensitivity imitates the torch
one (same fake kernels), the fit's working copy names the layers once for every pass, bad inputs are refused
with the problem and the fix, and a fit on a local agent returns a quantized winner whose accuracy is the
one its file computes on the data.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from devicefit.compressor.latency import LayerSpec
from devicefit.compressor.search.onnx_model import GRAPH_FAMILIES, onnx_facts, prepare_onnx
from devicefit.compressor.search.onnx_sensitivity import FakeGraph, measure_onnx_sensitivity
from devicefit.compressor.search.space import SpaceConfig, build_space
from devicefit.compressor.techniques import TECHNIQUES
from devicefit.data import Dataset
from devicefit.errors import UserInputError

pytestmark = [pytest.mark.timeout(600)]

QUANT_METHODS = {m for (fam, m) in TECHNIQUES if fam == "quant"}


class SeqNet(nn.Module):
    """Token features [B, T, 16] -> Linear (a MatMul on a 3-D input) -> ReLU -> mean over T -> Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 48)
        self.head = nn.Linear(48, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.proj(x)).mean(1))


class ConvNet(nn.Module):
    """conv -> relu -> grouped conv -> relu -> flatten -> fc (a Gemm)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 8, 3, padding=1)
        self.gconv = nn.Conv2d(8, 8, 3, padding=1, stride=2, groups=2)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.gconv(torch.relu(self.conv(x)))).flatten(1))


def _export(net: nn.Module, example: torch.Tensor, path: Path, *, dynamic: bool = True) -> Path:
    torch.onnx.export(net, (example,), str(path), input_names=["x"], output_names=["logits"], dynamo=False,
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None)
    return path


def _net(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return cls().eval()


def _inputs(cls: type[nn.Module], n: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    shape = (n, 12, 16) if cls is SeqNet else (n, 2, 8, 8)
    return rng.standard_normal(shape).astype(np.float32)


def _quant_space(specs: list[LayerSpec]) -> Any:
    return build_space(specs, config=SpaceConfig().only(GRAPH_FAMILIES), has_calibration=True, prunable=frozenset())


@pytest.mark.parametrize("cls", [SeqNet, ConvNet])
def test_graph_sensitivity_applies_the_same_fakes_as_torch(tmp_path: Path, cls: type[nn.Module]) -> None:
    """Each layer × quant option, fake-applied on the graph, moves the outputs as the torch fake of the same layer
    does: the two differ by under 5% of the perturbation itself (rounding ties aside, the same arithmetic)."""
    from devicefit.compressor.export import torch_outputs
    from devicefit.compressor.search.sensitivity import _act_stats, applied

    net = _net(cls)
    x = _inputs(cls, 64)
    prep = prepare_onnx(_export(net, torch.from_numpy(x[:2]), tmp_path / "m.onnx"), tmp_path / "work.onnx", name="m.onnx",
                        data=Dataset({"x": x}), input_names=["x"])
    torch_names = [n for n, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert len(prep.layers) == len(torch_names)  # graph order = module order for these nets
    _, specs = onnx_facts(prep.path, prep.layers, example_shapes={"x": x.shape})
    space = _quant_space(specs)
    data = Dataset({"x": x})
    # batches of 16 of the 64 samples: int8 dynamic's per-batch ranges differ from int8 static's slice range
    graph = FakeGraph(prep.path, space.layers, input_names=["x"], batch_size=16)
    ref_graph = graph.run(data)
    with torch.no_grad():
        ref_torch = torch_outputs(net, data, ["x"], batch_size=16)
    np.testing.assert_allclose(ref_graph, ref_torch, rtol=1e-4, atol=1e-5)  # switched off, the graph is the fp32 one
    graph.collect_ranges(data)
    stats = _act_stats(net, torch_names, lambda: torch_outputs(net, data, ["x"], batch_size=16))
    checked = 0
    for layer, tname in zip(space.layers, torch_names, strict=True):
        for opt in space.atomic(layer):
            if not opt.parts():
                continue
            out_graph = graph.run(data, graph.feeds_for({layer: opt}))
            with torch.no_grad(), applied(net, tname, opt, stats):
                out_torch = torch_outputs(net, data, ["x"], batch_size=16)
            moved = float(np.linalg.norm(out_torch - ref_torch))
            assert moved > 0, (layer, opt.label)  # the fake changes something...
            assert float(np.linalg.norm(out_graph - out_torch)) <= 0.05 * moved, (layer, opt.label)  # ...the same thing
            checked += 1
    # linear layers: int8 dynamic, int8 static, int4 weight-only; convs: no int4
    n_lin = sum(1 for s in specs if s.kind == "linear")
    assert checked == 3 * n_lin + 2 * (len(specs) - n_lin)


def test_the_sensitivity_table_covers_every_option_caches_and_estimates_under_a_budget(tmp_path: Path) -> None:
    net = _net(SeqNet)
    x = _inputs(SeqNet, 64)
    data = Dataset({"x": x})
    prep = prepare_onnx(_export(net, torch.from_numpy(x[:2]), tmp_path / "m.onnx"), tmp_path / "w.onnx", name="m",
                        data=data, input_names=["x"])
    _, specs = onnx_facts(prep.path, prep.layers, example_shapes={"x": x.shape})
    space = _quant_space(specs)
    graph = FakeGraph(prep.path, space.layers, input_names=["x"])
    t1 = measure_onnx_sensitivity(graph, space, data, metric="cosine", model_hash="h" * 40, cache_dir=tmp_path / "c")
    assert t1.cached == 0 and t1.estimated == 0 and t1.samples == 64
    assert set(t1.drops) == set(space.layers) and all(set(d) == {"int8_dynamic", "int8_static", "int4_weight_only"}
                                                      for d in t1.drops.values())
    assert all(v >= 0 for d in t1.drops.values() for v in d.values())
    # int4 in groups of 32 hurts more than int8 per channel, on every layer
    assert all(t1.devs[layer]["int4_weight_only"] > t1.devs[layer]["int8_dynamic"] for layer in space.layers)
    t2 = measure_onnx_sensitivity(graph, space, data, metric="cosine", model_hash="h" * 40, cache_dir=tmp_path / "c")
    assert t2.cached == 6 and t2.drops == t1.drops
    # under a budget of full evaluations: one per layer, the rest estimated from the layers' own output errors
    t3 = measure_onnx_sensitivity(graph, space, data, metric="cosine", model_hash="i" * 40, cache_dir=tmp_path / "c",
                                  max_full=2)
    assert t3.estimated == 4 and t3.cached == 0
    for layer in space.layers:
        ref = max(t3.devs[layer], key=lambda k: t3.devs[layer][k])
        assert t3.devs[layer][ref] == pytest.approx(t1.devs[layer][ref], rel=1e-6)  # the one evaluated in full


def test_the_working_copy_names_each_layer_once_and_relaxes_a_fixed_batch(tmp_path: Path) -> None:
    net = _net(SeqNet)
    x = _inputs(SeqNet, 8)
    src = _export(net, torch.from_numpy(x[:2]), tmp_path / "fixed.onnx", dynamic=False)
    assert onnx.load(str(src)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    prep = prepare_onnx(src, tmp_path / "w.onnx", name="fixed.onnx", data=Dataset({"x": x}), input_names=["x"])
    assert prep.notes == ["fixed batch axis made symbolic on input(s) x (was 2)"]
    model = onnx.load(str(prep.path))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    inits = {i.name for i in model.graph.initializer}
    # the torchscript exporter names the 3-D Linear's MatMul weight "onnx::MatMul_…": the layer is named after its
    # node, and its weight renamed after the layer, so every later pass finds the same name
    assert len(prep.layers) == 2
    for layer in prep.layers:
        assert f"{layer}.weight" in inits or f"{layer}.weight.T" in inits
    _, specs = onnx_facts(prep.path, prep.layers, example_shapes={"x": x.shape}, batch_size=4)
    assert [s.name for s in specs] == prep.layers
    proj, head = specs
    # per inference at batch 4: proj is 12 tokens x 16 x 48 MACs per sample, head 48 x 6
    assert (proj.kind, proj.macs, proj.in_elems, proj.out_elems) == ("linear", 4 * 12 * 16 * 48, 4 * 12 * 16, 4 * 12 * 48)
    assert (head.macs, head.params) == (4 * 48 * 6, 48 * 6 + 6)


class _FixedReshape(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(2, 8))  # the batch written into the graph


class _NoWeights(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) * 2.0 + 1.0


def _write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_fit_refuses_an_onnx_it_cannot_search_with_the_fix(tmp_path: Path) -> None:
    import devicefit

    x = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    data = _write_npz(tmp_path / "d.npz", x=x)
    fixed = _export(_FixedReshape().eval(), torch.from_numpy(x[:2]), tmp_path / "fixed.onnx", dynamic=False)
    with pytest.raises(UserInputError) as e:
        devicefit.fit(str(fixed), data=str(data), out=tmp_path / "o1", progress=False, trials=2)
    assert "fixed batch (x: 2)" in e.value.problem and "does not run at another batch size" in e.value.problem
    assert "dynamic batch axis" in e.value.fix and "dynamic_axes" in e.value.fix
    plain = _export(_NoWeights().eval(), torch.from_numpy(x[:2]), tmp_path / "plain.onnx")
    with pytest.raises(UserInputError) as e:
        devicefit.fit(str(plain), data=str(data), out=tmp_path / "o2", progress=False, trials=2)
    assert "has no layer to quantize" in e.value.problem and "Relu" in e.value.problem
    assert "MatMul / Gemm / Conv" in e.value.fix
    net = _net(SeqNet)
    seq = _export(net, torch.from_numpy(_inputs(SeqNet, 2)), tmp_path / "seq.onnx")
    wrong = _write_npz(tmp_path / "wrong.npz", tokens=_inputs(SeqNet, 4), mask=np.ones((4, 12), np.float32))
    with pytest.raises(UserInputError) as e:
        devicefit.fit(str(seq), data=str(wrong), out=tmp_path / "o3", progress=False, trials=2)
    assert "['tokens', 'mask'] are not model inputs ['x']" in e.value.problem
    assert "name arrays like the model inputs" in e.value.fix
    with pytest.raises(UserInputError) as e:
        devicefit.fit(str(seq), out=tmp_path / "o4", progress=False, trials=2)
    assert "has no evaluation data" in e.value.problem and "--data" in e.value.fix


class WideMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 384)
        self.fc2 = nn.Linear(384, 384)
        self.fc3 = nn.Linear(384, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_fit_an_onnx_mlp_on_a_local_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole fit on an exported MLP, measured on an agent spawned on loopback. A size budget of 0.6 × the
    fp32 file makes every passing plan a quantized one (size is exact, not timed), so the winner's plan is
    checked for what it may hold: quant schemes only."""
    import devicefit
    from devicefit.runtime import run_onnx

    monkeypatch.setenv("DEVICEFIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DEVICEFIT_MEASUREMENTS_DB", str(tmp_path / "m.db"))
    torch.manual_seed(0)
    net = WideMLP().eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 64)).astype(np.float32)
    with torch.no_grad():
        teacher = net(torch.from_numpy(x)).argmax(1).numpy()
    labels = np.where(rng.random(256) < 0.2, (teacher + 1) % 10, teacher)  # fp32 accuracy ~0.8, not 1
    src = tmp_path / "mlp.onnx"
    torch.onnx.export(net, (torch.from_numpy(x[:2]),), str(src), input_names=["x"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))  # the default (dynamo) exporter
    data = _write_npz(tmp_path / "d.npz", x=x, labels=labels)
    n_params = 64 * 384 + 384 + 384 * 384 + 384 + 384 * 10 + 10
    fp32_mb = 4 * n_params / 1e6  # the weights sit in mlp.onnx.data (external data): the file alone is tiny
    out = tmp_path / "out"
    res = devicefit.fit(str(src), data=str(data), out=out, progress=False, max_size_mb=0.6 * fp32_mb,
                        max_accuracy_drop=0.1, trials=16, max_measurements=3, runs=10, batch_size=8, threads=1)
    rep = res.to_dict()
    # the model as the search saw it: a graph, three layers, four options each, the quant family only
    assert rep["model"]["format"] == "onnx" and rep["model"]["source"] == f"onnx:{src}" and rep["model"]["layers"] == 3
    assert rep["model"]["params"] == n_params
    assert rep["baseline"]["size_bytes"] == pytest.approx(4 * n_params, rel=0.02)  # one file, the weights inside
    assert rep["model"]["macs"] == 64 * 384 + 384 * 384 + 384 * 10
    space = rep["search"]["space"]
    assert space["families"] == ["quant"] and space["layers"] == 3 and space["options"] == 3 * 4
    assert "pruning, low-rank and distillation need the torch model" in space["notes"][0]
    assert rep["search"]["sensitivity"]["method"].startswith("onnxruntime fake-compress")
    assert [layer["name"] for layer in rep["layers"]] == ["fc1", "fc2", "fc3"]
    assert all(not layer["prunable"] for layer in rep["layers"])
    # every candidate, measured or predicted, is a quant plan
    for p in rep["pareto"]:
        assert set(p["summary"]) <= QUANT_METHODS | {"float"}, p["summary"]
    # the winner: measured on the agent, within the size budget, so quantized
    r = rep["result"]
    assert res.budget_met and r["latency"]["source"] == "measured" and r["latency"]["device"] == "host"
    assert r["size_bytes"] <= 0.6 * fp32_mb * 1e6
    assert (r["params"], r["macs"]) == (rep["model"]["params"], rep["model"]["macs"])  # quantization keeps both
    plan = devicefit.Plan.load(out / "plan.yaml")
    assert plan.rules and all(rule.prune is None and rule.lowrank is None and rule.quant is not None for rule in plan.rules)
    assert {rule.quant.method for rule in plan.rules if rule.quant is not None} <= QUANT_METHODS
    assert not plan.uses("prune") and not plan.uses("lowrank") and plan.distill is None
    # accuracy vs fp32, from ONNX outputs: the report's numbers are what the files compute on the data
    ds = Dataset({"x": x}, labels)
    acc = lambda path: float((run_onnx(path, ds).argmax(1) == labels).mean())  # noqa: E731
    assert r["metric"]["name"] == "accuracy"
    assert r["metric"]["baseline"] == pytest.approx(acc(src), abs=1e-12) and 0.7 < r["metric"]["baseline"] < 0.9
    assert r["metric"]["compressed"] == pytest.approx(acc(out / "model.onnx"), abs=1e-12)
    assert r["metric"]["drop"] == pytest.approx(r["metric"]["baseline"] - r["metric"]["compressed"], abs=1e-12)
    assert r["metric"]["drop"] <= 0.1
    assert json.loads((out / "report.json").read_text())["result"]["plan_summary"] == r["plan_summary"]
    from devicefit.cli.fit import _human

    assert ("  ONNX input: searched quant only (pruning, low-rank and distillation need the torch model)"
            in _human(rep).splitlines())


def test_cli_fit_help_says_what_an_onnx_model_gets() -> None:
    proc = subprocess.run([sys.executable, "-m", "devicefit.cli", "fit", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "file.onnx (with --data; an ONNX graph is searched for per-layer quantization only" in text
    assert "pruning, low-rank and distillation need the torch model" in text


def test_an_export_that_lists_its_weights_as_inputs_is_searched_too(tmp_path: Path) -> None:
    """Older exports (``keep_initializers_as_inputs=True``) list every initializer as a graph input: the layers
    are still found, the data feeds only the real input, and the graph-side fakes still replace the weights."""
    from devicefit.models import load_model

    net = _net(ConvNet)
    x = _inputs(ConvNet, 32)
    src = tmp_path / "old.onnx"
    torch.onnx.export(net, (torch.from_numpy(x[:2]),), str(src), input_names=["x"], output_names=["logits"], dynamo=False,
                      dynamic_axes={"x": {0: "batch"}}, keep_initializers_as_inputs=True)
    assert len(onnx.load(str(src)).graph.input) > 1
    bundle = load_model(str(src), data=_write_npz(tmp_path / "d.npz", x=x))
    assert bundle.input_names == ["x"] and bundle.metric == "top1_agreement"
    prep = prepare_onnx(src, tmp_path / "w.onnx", name="old.onnx", data=bundle.eval, input_names=bundle.input_names)
    assert prep.layers == ["conv", "gconv", "fc"]
    _, specs = onnx_facts(prep.path, prep.layers, example_shapes={"x": x.shape})
    space = _quant_space(specs)
    graph = FakeGraph(prep.path, space.layers, input_names=["x"])
    data = Dataset({"x": x})
    with torch.no_grad():
        np.testing.assert_allclose(graph.run(data), net(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)
    table = measure_onnx_sensitivity(graph, space, data, metric="cosine", model_hash="k" * 40)
    assert all(table.devs[layer]["int8_static"] > 0 for layer in prep.layers)
