"""compressor.analysis: per-layer params / MACs / shapes and totals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from devicefit.bundle import ModelBundle
from devicefit.compressor.analysis import analyze, analyze_onnx, state_size_bytes


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)  # 8*3*3*3 = 216 weights + 8 bias
        self.act = nn.ReLU()
        self.fc = nn.Linear(8 * 4 * 4, 10)
        self.head = nn.Linear(10, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv(x)).flatten(1)
        y = self.fc(h)
        scores = torch.matmul(y.unsqueeze(2), y.unsqueeze(1))  # [N,10,10] matmul outside any layer: 100 MACs
        return self.head(scores.sum(1))


def test_layers_params_macs_shapes() -> None:
    a = analyze(Net(), (torch.zeros(5, 3, 4, 4),))
    conv, fc, head = a.layer("conv"), a.layer("fc"), a.layer("head")
    assert (conv.type, conv.params, conv.macs) == ("Conv2d", 224, 8 * 16 * 27)
    assert conv.input_shape == [1, 3, 4, 4] and conv.output_shape == [1, 8, 4, 4]  # batch 1 (per sample)
    assert (fc.params, fc.macs, fc.output_shape) == (1290, 1280, [1, 10])
    assert (head.params, head.macs) == (100, 100)
    assert a.params == 224 + 1290 + 100
    assert a.macs == conv.macs + fc.macs + head.macs + 100  # + the free-standing matmul
    assert a.layer("act").params == 0
    d = a.to_dict()
    assert set(d) == {"params", "macs", "layers"}
    assert set(d["layers"][0]) == {"name", "type", "params", "macs", "input_shape", "output_shape"}
    with pytest.raises(KeyError):
        a.layer("nope")


def test_tied_weights_count_once() -> None:
    emb = nn.Embedding(50, 8)
    out = nn.Linear(8, 50, bias=False)
    out.weight = emb.weight
    model = nn.Sequential(emb, out)
    a = analyze(model, (torch.zeros(2, 3, dtype=torch.long),))
    assert a.params == 400
    assert a.macs == 3 * 8 * 50
    assert state_size_bytes(model) == 400 * 4


def test_training_mode_restored() -> None:
    net = Net().train()
    analyze(net, (torch.zeros(1, 3, 4, 4),))
    assert net.training


@pytest.mark.slow
def test_minilm_totals(minilm_bundle: ModelBundle) -> None:
    assert minilm_bundle.module is not None
    a = analyze(minilm_bundle.module, minilm_bundle.example_inputs)
    assert abs(a.params - 22.7e6) / 22.7e6 <= 0.01
    linear_macs = sum(li.macs for li in a.layers if li.type == "Linear")
    assert linear_macs == 6 * 64 * (4 * 384 * 384 + 2 * 384 * 1536)
    assert a.macs == linear_macs + 6 * 2 * 12 * 64 * 64 * 32  # + QK^T and PV per layer
    assert a.layer("encoder.layer.3.attention.self.query").output_shape == [1, 64, 384]


@pytest.mark.slow
def test_onnx_analysis_matches_torch(digits_bundle: ModelBundle, digits_onnx: Path) -> None:
    assert digits_bundle.module is not None
    t = analyze(digits_bundle.module, digits_bundle.example_inputs)
    o = analyze_onnx(digits_onnx)
    assert o.macs == t.macs
    assert [li.name for li in o.layers] == ["conv1", "conv2", "fc1", "fc2"]
    for li in o.layers:
        assert li.macs == t.layer(li.name).macs
        assert li.params == t.layer(li.name).params  # BN folded into conv: weight + bias, same count
