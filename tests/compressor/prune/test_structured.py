"""Structured pruning: a tiny residual CNN (torch-pruning dependency groups) and a tiny BERT
(heads / FFN channels) become physically smaller, still run, and export to ONNX with the expected shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from devicefit.compressor.export import export_onnx
from devicefit.compressor.layers import layer_names
from devicefit.compressor.prune import prune_structured
from devicefit.compressor.prune.structured import aligned_keep
from devicefit.compressor.techniques import ChannelPrune
from devicefit.data import Dataset
from devicefit.runtime import make_session
from devicefit.zoo.minilm import MiniLM

torch.set_num_threads(1)


class TinyRes(nn.Module):
    """stem → inverted residual block (expand 1×1, depthwise 3×3, project 1×1, + skip) → head → fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(16)
        self.expand = nn.Conv2d(16, 32, 1)
        self.bn1 = nn.BatchNorm2d(32)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.bn2 = nn.BatchNorm2d(32)
        self.project = nn.Conv2d(32, 16, 1)
        self.bn3 = nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, 48, 1)
        self.fc = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.bn1(self.expand(x)))
        y = torch.relu(self.bn2(self.dw(y)))
        x = x + self.bn3(self.project(y))
        x = torch.relu(self.head(x)).mean(dim=(2, 3))
        return self.fc(x)


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _onnx_params(path: Path) -> int:
    return sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)


@pytest.fixture()
def tiny_res() -> tuple[TinyRes, Dataset]:
    torch.manual_seed(0)
    m = TinyRes().eval()
    data = Dataset({"x": np.random.default_rng(0).normal(size=(32, 3, 12, 12)).astype(np.float32)})
    return m, data


@pytest.mark.parametrize("importance", ["l1", "l2", "taylor", "activation"])
def test_residual_cnn_gets_smaller_and_exports(tiny_res: tuple[TinyRes, Dataset], importance: str, tmp_path: Path) -> None:
    model, data = tiny_res
    before = _params(model)
    state_before = sum(v.numel() for v in model.state_dict().values() if v.is_floating_point())
    plan = {n: ChannelPrune(0.5, importance=importance) for n in layer_names(model)}
    out = prune_structured(model, plan, example_inputs=(torch.zeros(2, 3, 12, 12),), data=data, input_names=["x"])
    assert "fc" in out.refused and "model output" in out.refused["fc"]
    # residual coupling: stem and project write the same tensor, so they keep the same width
    assert model.stem.out_channels == model.project.out_channels == model.bn0.num_features == 8
    assert model.expand.out_channels == model.dw.in_channels == model.dw.groups == model.project.in_channels == 16
    assert model.head.out_channels == 24 and model.fc.in_features == 24 and model.fc.out_features == 10
    assert _params(model) < 0.45 * before
    if importance != "l2":  # the export is the same for every importance: check it once (dynamo is slow)
        return
    res = export_onnx(model, (torch.zeros(2, 3, 12, 12),), tmp_path / "pruned.onnx", input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "batch"}}, verify=data)
    assert _onnx_params(res.path) < 0.45 * state_before  # initializers: weights + BN statistics
    sess = make_session(res.path, threads=1)
    got = sess.run(None, {"x": data.inputs["x"][:3]})[0]
    assert got.shape == (3, 10)
    np.testing.assert_allclose(got, model(torch.from_numpy(data.inputs["x"][:3])).detach().numpy(), atol=1e-4)


def test_global_ranking_prunes_unevenly(tiny_res: tuple[TinyRes, Dataset]) -> None:
    model, data = tiny_res
    plan = {n: ChannelPrune(0.5, importance="l2", global_ranking=True) for n in ("stem", "expand", "head")}
    out = prune_structured(model, plan, example_inputs=(torch.zeros(2, 3, 12, 12),), data=data, input_names=["x"],
                           channel_multiple=1)
    assert set(out.applied) >= {"stem", "expand", "head"}
    kept = (model.stem.out_channels + model.expand.out_channels + model.head.out_channels) / (16 + 32 + 48)
    assert kept == pytest.approx(0.5, abs=0.05)
    assert model(torch.zeros(1, 3, 12, 12)).shape == (1, 10)


def _tiny_bert() -> MiniLM:
    torch.manual_seed(0)
    cfg = {"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64, "num_hidden_layers": 2,
           "vocab_size": 50, "max_position_embeddings": 16, "type_vocab_size": 2, "layer_norm_eps": 1e-12}
    return MiniLM(cfg).eval()


def _tokens(n: int = 24) -> Dataset:
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50, size=(n, 10)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[:, 7:] = 0
    return Dataset({"input_ids": ids, "attention_mask": mask})


@pytest.mark.parametrize("importance", ["l2", "taylor", "activation"])
def test_bert_heads_and_ffn_channels_are_removed(importance: str, tmp_path: Path) -> None:
    model, data = _tiny_bert(), _tokens()
    names = ["input_ids", "attention_mask"]
    before = _params(model)
    plan = {n: ChannelPrune(0.5, importance=importance) for n in layer_names(model)}
    ex = (torch.from_numpy(data.inputs["input_ids"][:2]), torch.from_numpy(data.inputs["attention_mask"][:2]))
    out = prune_structured(model, plan, example_inputs=ex, data=data, input_names=names)
    for i in range(2):
        att = model.encoder.layer[i].attention
        assert att.self.num_heads == 2 and att.self.query.out_features == 16 == att.output.dense.in_features
        assert model.encoder.layer[i].intermediate.dense.out_features == 32 == model.encoder.layer[i].output.dense.in_features
        assert att.output.dense.out_features == 32  # hidden size stays
        assert "residual stream" in out.refused[f"encoder.layer.{i}.output.dense"]
        assert out.applied[f"encoder.layer.{i}.attention.self.key"].startswith("heads 4→2")
    assert _params(model) < before
    if importance != "l2":
        return
    res = export_onnx(model, ex, tmp_path / "bert.onnx", input_names=names, output_names=["embedding"],
                      dynamic_axes={n: {0: "batch", 1: "seq"} for n in names}, verify=data)
    got = make_session(res.path, threads=1).run(None, {k: v[:5, :9] for k, v in data.inputs.items()})[0]
    assert got.shape == (5, 32)


def test_taylor_without_data_is_refused() -> None:
    from devicefit.errors import UserInputError

    with pytest.raises(UserInputError, match="calibration data"):
        prune_structured(_tiny_bert(), {"encoder.layer.0.intermediate.dense": ChannelPrune(0.5, importance="taylor")},
                         example_inputs=(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.long)))


def test_bias_compensation_keeps_the_mean_of_removed_channels(tiny_res: tuple[TinyRes, Dataset]) -> None:
    model, data = tiny_res
    with torch.no_grad():  # give the BNs shifts, as trained nets have: removed channels then carry constants
        for bn in (model.bn0, model.bn1, model.bn2, model.bn3):
            bn.bias.uniform_(0.5, 1.5)
    x = torch.from_numpy(data.inputs["x"])
    ref = model(x).detach()
    errs = {}
    for with_data in (False, True):
        m = TinyRes().eval()
        m.load_state_dict(model.state_dict())
        plan = {n: ChannelPrune(0.25, importance="l2") for n in ("expand", "head")}
        prune_structured(m, plan, example_inputs=(x[:2],), data=data if with_data else None, input_names=["x"],
                         channel_multiple=1)
        assert m.expand.out_channels == 24 and m.head.out_channels == 36
        errs[with_data] = float(((m(x) - ref) ** 2).mean().detach())
    assert errs[True] < 0.5 * errs[False], errs


def test_kept_channels_are_aligned_to_the_multiple(tiny_res: tuple[TinyRes, Dataset]) -> None:
    assert [aligned_keep(n, r, 8) for n, r in ((48, 0.25), (64, 0.1), (16, 0.1), (30, 0.5), (1536, 0.5))] == [
        40, 56, 16, 15, 768]
    model, data = tiny_res
    plan = {n: ChannelPrune(0.1, importance="l2") for n in ("stem", "expand", "head")}
    out = prune_structured(model, plan, example_inputs=(torch.zeros(2, 3, 12, 12),), data=data, input_names=["x"])
    assert model.expand.out_channels == 32 and model.head.out_channels == 40  # 28.8 → 32 (no-op), 43.2 → 40
    assert "rounds to no removal" in out.refused["expand"] and "rounds to no removal" in out.refused["stem"]
    assert model(torch.zeros(1, 3, 12, 12)).shape == (1, 10)
