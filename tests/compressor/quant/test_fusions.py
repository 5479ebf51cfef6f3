"""Exact fp32 rewrites: erf-GELU → Gelu and the exported attention core → MultiHeadAttention."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from quant_helpers import TinyCase, run

from devicefit.compressor.quant.fusions import fuse_attention, fuse_gelu
from devicefit.data import Dataset
from devicefit.zoo.minilm import SelfAttention


class Block(torch.nn.Module):
    """MiniLM's attention with its additive padding mask, then an output Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = SelfAttention(32, 4)
        self.out = torch.nn.Linear(32, 32)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        bias = (1.0 - attention_mask.to(torch.float32))[:, None, None, :] * -10000.0
        return self.out(self.attn(x, bias))


def test_gelu_fusion_is_exact(tiny: TinyCase, tmp_path: Path) -> None:
    model = onnx.load(str(tiny.onnx))
    assert fuse_gelu(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert "Gelu" in ops and "Erf" not in ops
    out = tmp_path / "g.onnx"
    onnx.save(model, str(out))
    np.testing.assert_allclose(run(out, tiny.eval), run(tiny.onnx, tiny.eval), rtol=1e-5, atol=1e-5)


def test_attention_fusion_is_exact(tmp_path: Path) -> None:
    from devicefit.compressor.export import export_onnx
    from devicefit.runtime import run_onnx

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 10, 32)).astype(np.float32)
    mask = np.ones((6, 10), np.int64)
    mask[1, 7:] = 0
    mask[4, 3:] = 0
    data = Dataset({"x": x, "attention_mask": mask})
    src = tmp_path / "attn.onnx"
    export_onnx(Block().eval(), (torch.from_numpy(x[:2]), torch.from_numpy(mask[:2])), src,
                input_names=["x", "attention_mask"], output_names=["y"],
                dynamic_axes={"x": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}, verify=data)
    model = onnx.load(str(src))
    assert fuse_attention(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MultiHeadAttention") == 1 and "Softmax" not in ops and "Transpose" not in ops
    assert ops.count("MatMul") == 4  # q, k, v and out Linears untouched (quantized like any layer)
    out = tmp_path / "fused.onnx"
    onnx.save(model, str(out))
    np.testing.assert_allclose(run_onnx(out, data), run_onnx(src, data), rtol=1e-4, atol=1e-5)
