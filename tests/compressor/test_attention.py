"""Issue #17: ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` projections are layers the search can
quantize and factorize (:mod:`devicefit.compressor.attention`), and no structured option offered fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from devicefit.compressor.attention import UnfusedMultiheadAttention, unfuse_attention
from devicefit.compressor.search.config import SearchConfig
from devicefit.compressor.search.progress import NoProgress
from devicefit.compressor.search.setup import analyze_model
from devicefit.compressor.search.space import SpaceConfig, build_space
from devicefit.models import load_model


class TinyEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(16, 32)
        layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 5)
        with torch.no_grad():  # the encoder's blocks are copies of one layer: make them differ, as trained ones do
            for p in self.encoder.parameters():
                p.add_(0.05 * torch.randn_like(p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))


def _data(tmp_path: Path, model: nn.Module) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6, 16)).astype(np.float32)
    with torch.no_grad():
        labels = model(torch.from_numpy(x)).argmax(-1).numpy()
    np.savez(tmp_path / "d.npz", x=x, labels=labels)
    return tmp_path / "d.npz"


@pytest.mark.parametrize("batch_first", [True, False])
def test_unfused_attention_matches_torch_with_masks(batch_first: bool) -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(24, 3, batch_first=batch_first).eval()
    new = UnfusedMultiheadAttention.from_mha(mha)
    assert new is not None and all(isinstance(getattr(new, p), nn.Linear) for p in ("q_proj", "k_proj", "v_proj", "out_proj"))
    q = torch.randn(2, 5, 24) if batch_first else torch.randn(5, 2, 24)
    kv = torch.randn(2, 7, 24) if batch_first else torch.randn(7, 2, 24)
    pad = torch.tensor([[False] * 5 + [True] * 2, [False] * 7])
    causal = torch.ones(5, 7, dtype=torch.bool).triu(1)
    for kwargs in ({}, {"key_padding_mask": pad}, {"attn_mask": causal}, {"attn_mask": causal, "key_padding_mask": pad},
                   {"need_weights": False, "key_padding_mask": pad}, {"average_attn_weights": False}):
        want, want_w = mha(q, kv, kv, **kwargs)
        got, got_w = new(q, kv, kv, **kwargs)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert (got_w is None) == (want_w is None)
        if want_w is not None:
            torch.testing.assert_close(got_w, want_w, atol=1e-5, rtol=1e-5)
    # what it does not cover is left as it is
    assert UnfusedMultiheadAttention.from_mha(nn.MultiheadAttention(8, 2, add_bias_kv=True)) is None


def test_a_transformer_encoders_attention_projections_get_quant_and_lowrank_options(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    data = _data(tmp_path, model)
    bundle = load_model(model, data=data)
    assert bundle.module is not None
    # the caller's module is untouched; the loaded one has Linear projections and the same outputs
    assert isinstance(model.encoder.layers[0].self_attn, nn.MultiheadAttention)
    assert isinstance(bundle.module.get_submodule("encoder.layers.0.self_attn"), UnfusedMultiheadAttention)
    x = torch.from_numpy(np.load(data)["x"][:8])
    with torch.no_grad():
        torch.testing.assert_close(bundle.module(x), model(x), atol=1e-5, rtol=1e-5)
    facts = analyze_model(bundle, SearchConfig(), NoProgress())
    names = [s.name for s in facts.specs]
    projections = [f"encoder.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
    assert set(projections) <= set(names) and len(names) == 2 + 2 * 6  # + linear1 / linear2 per block
    space = build_space(facts.specs, config=SpaceConfig(), has_calibration=True, prunable=facts.deps.prunable)
    for layer in projections:
        labels = space.labels(layer)
        assert {"int8_dynamic", "int8_static"} <= set(labels), (layer, labels)
        assert any(o.lowrank is not None for o in space.options[layer]), layer
        assert not any(o.prune is not None for o in space.options[layer]), layer
    # the FFN's first Linear can lose channels (linear2 reads fewer); the projections never do
    assert "encoder.layers.0.linear1" in facts.deps.prunable
    assert not facts.deps.prunable & set(projections)
    # every structural option the space offers materializes: each one uniform, compressed and verified
    from devicefit.compress import compress

    structural = sorted({o.label for layer in space.layers for o in space.options[layer] if o.structural and o.quant is None})
    assert any("lowrank" in s for s in structural) and any("structured" in s for s in structural), structural
    for i, label in enumerate(structural):
        res = compress(bundle, space.plan(space.uniform(label)), out=tmp_path / f"s{i}.onnx", progress=False,
                       calib_samples=16)
        assert res.path.is_file() and res.metric.drop <= 1.0, label
    quant = compress(bundle, space.plan(space.uniform("int8_dynamic")), out=tmp_path / "q.onnx", progress=False,
                     calib_samples=16)
    assert not set(quant.float_fallback_layers) & set(projections), quant.float_fallback_layers
    assert quant.int_ops and quant.size_bytes < quant.fp32_size_bytes


def test_unfuse_attention_replaces_every_block_in_place() -> None:
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    assert unfuse_attention(model) == ["encoder.layers.0.self_attn", "encoder.layers.1.self_attn"]
    assert model.encoder.use_nested_tensor is False and unfuse_attention(model) == []
