"""One definition of "compressible layer": Linear and Conv of any dimension (quantization acts on all of
them); prune / low-rank rewrite Linear and Conv2d and refuse the others with a reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from devicefit.compressor.layers import is_compressible, layer_names
from devicefit.compressor.plan import Plan
from devicefit.compressor.structural import apply_structural
from devicefit.compressor.techniques import ChannelPrune, Int8Dynamic, MagnitudePrune


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 3, padding=1)
        self.c2 = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(8 * 16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.c2(x))  # [N, 4, 4, 4]
        y = torch.relu(self.c1(y.flatten(2)))  # [N, 8, 16]
        return self.fc(y.flatten(1))


def test_every_conv_is_compressible_and_only_linear_conv2d_are_rewritten() -> None:
    net = Mixed().eval()
    assert layer_names(net) == ["c1", "c2", "fc"]
    assert is_compressible(nn.Conv3d(1, 1, 1)) and not is_compressible(nn.LayerNorm(4))
    example = (torch.randn(2, 1, 4, 4),)
    res = apply_structural(net, Plan.uniform(prune=MagnitudePrune(0.5)), None, example, ["x"])
    assert {s.layer for s in res.applied} == {"c2", "fc"}
    (refused,) = res.refused
    assert refused.layer == "c1" and "Conv1d is not rewritten" in refused.detail
    res = apply_structural(net, Plan.uniform(prune=ChannelPrune(0.5), match="c1"), None, example, ["x"])
    assert [s.layer for s in res.refused] == ["c1"] and not res.applied


def test_quantization_covers_conv1d(tmp_path: Path) -> None:
    from devicefit.compressor.export import export_onnx
    from devicefit.compressor.quant import quantize_onnx
    from devicefit.data import Dataset

    torch.manual_seed(0)
    net = Mixed().eval()
    x = np.random.default_rng(0).normal(size=(8, 1, 4, 4)).astype(np.float32)
    export_onnx(net, (torch.from_numpy(x[:2]),), tmp_path / "m.onnx", input_names=["x"], output_names=["y"],
                dynamic_axes={"x": {0: "batch"}}, verify=Dataset({"x": x}))
    res = quantize_onnx(tmp_path / "m.onnx", tmp_path / "q.onnx", Plan.uniform(quant=Int8Dynamic()),
                        layer_names=layer_names(net))
    assert set(res.schemes) == {"c1", "c2", "fc"} and not res.unmapped_layers
