"""``nn.MultiheadAttention`` with its projections as ``nn.Linear`` layers, so the search can compress them.

``nn.MultiheadAttention`` keeps its q / k / v input projection as one bare parameter (``in_proj_weight``)
and calls its ``out_proj`` (a ``NonDynamicallyQuantizableLinear``) through ``F.multi_head_attention_forward``,
never as a module: no layer to quantize or factorize, and structured candidates on it fail. :func:`unfuse_attention`
replaces every one of them by :class:`UnfusedMultiheadAttention` — the same weights as four ``nn.Linear``
(``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``), the same outputs (scaled dot-product attention), the
same call signature, so ``nn.TransformerEncoderLayer`` and user code keep working. Its projections are
quantized and factorized like any Linear; they are never channel-pruned (a head layout the dependency
analysis does not follow: :func:`attention_projections`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


class UnfusedMultiheadAttention(nn.Module):
    """:class:`torch.nn.MultiheadAttention`'s forward with ``q_proj`` / ``k_proj`` / ``v_proj`` / ``out_proj``
    as ``nn.Linear`` modules (built from an existing one by :meth:`from_mha`)."""

    #: read by ``nn.TransformerEncoder(Layer)``'s fast-path checks: this module never takes torch's fused path
    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None

    def __init__(self, embed_dim: int, num_heads: int, *, kdim: int | None = None, vdim: int | None = None,
                 bias: bool = True, dropout: float = 0.0, batch_first: bool = False) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.dropout, self.batch_first = dropout, batch_first
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kdim or embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(vdim or embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> UnfusedMultiheadAttention | None:
        """The same attention with the same weights (None for what it does not cover: ``add_bias_kv``,
        ``add_zero_attn``)."""
        if mha.bias_k is not None or mha.add_zero_attn:
            return None
        new = cls(mha.embed_dim, mha.num_heads, kdim=mha.kdim, vdim=mha.vdim, dropout=mha.dropout,
                  batch_first=mha.batch_first, bias=mha.in_proj_bias is not None)
        if mha._qkv_same_embed_dim:
            assert mha.in_proj_weight is not None
            wq, wk, wv = mha.in_proj_weight.detach().chunk(3)
        else:
            wq, wk, wv = (w.detach() for w in (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight))
        bq, bk, bv = mha.in_proj_bias.detach().chunk(3) if mha.in_proj_bias is not None else (None, None, None)
        new.q_proj, new.k_proj, new.v_proj = _linear(wq, bq), _linear(wk, bk), _linear(wv, bv)
        out_bias = mha.out_proj.bias.detach() if mha.out_proj.bias is not None else None
        new.out_proj = _linear(mha.out_proj.weight.detach(), out_bias)
        new.train(mha.training)
        return new

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        tgt, batch, _ = query.shape
        src = key.shape[0]
        heads, hd = self.num_heads, self.head_dim

        def split(x: torch.Tensor, n: int) -> torch.Tensor:  # (n, batch, E) -> (batch, heads, n, hd)
            return x.reshape(n, batch, heads, hd).permute(1, 2, 0, 3)

        q, k, v = split(self.q_proj(query), tgt), split(self.k_proj(key), src), split(self.v_proj(value), src)
        mask = self._mask(attn_mask, key_padding_mask, batch, tgt, src, q.dtype)
        if mask is None and is_causal:
            mask = torch.full((tgt, src), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
        p = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(hd)
            if mask is not None:
                scores = scores + mask
            weights = F.dropout(scores.softmax(-1), p=p)
            ctx = weights @ v
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = self.out_proj(ctx.permute(2, 0, 1, 3).reshape(tgt, batch, self.embed_dim))
        if unbatched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        w = weights.mean(1) if average_attn_weights else weights
        return out, (w.squeeze(0) if unbatched else w)

    def _mask(self, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, batch: int, tgt: int,
              src: int, dtype: torch.dtype) -> torch.Tensor | None:
        """One additive float mask, broadcastable to (batch, heads, tgt, src)."""

        def additive(m: torch.Tensor) -> torch.Tensor:
            if m.dtype == torch.bool:
                return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
            return m.to(dtype)

        mask = None
        if attn_mask is not None:
            m = additive(attn_mask)
            mask = m.reshape(batch, self.num_heads, tgt, src) if m.dim() == 3 else m
        if key_padding_mask is not None:
            kp = additive(key_padding_mask).reshape(batch, 1, 1, src)
            mask = kp if mask is None else mask + kp
        return mask


def unfuse_attention(module: nn.Module) -> list[str]:
    """Replace every ``nn.MultiheadAttention`` inside ``module`` by :class:`UnfusedMultiheadAttention` (in
    place; the same outputs). ``nn.TransformerEncoder``'s nested-tensor fast path is turned off where its
    layers changed. Returns the names replaced."""
    done = []
    for name, mha in list(module.named_modules()):
        if not isinstance(mha, nn.MultiheadAttention):
            continue
        new = UnfusedMultiheadAttention.from_mha(mha)
        if new is None:
            continue
        parent_name, _, leaf = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, leaf, new)
        done.append(name)
    if done:
        for m in module.modules():
            if isinstance(m, nn.TransformerEncoder):
                m.use_nested_tensor = False
    return done


def attention_projections(module: nn.Module) -> set[str]:
    """Names of the q / k / v / out projections of every :class:`UnfusedMultiheadAttention` in ``module``
    (quantized and factorized, never channel-pruned)."""
    return {f"{name}.{p}" if name else p for name, m in module.named_modules() if isinstance(m, UnfusedMultiheadAttention)
            for p in ("q_proj", "k_proj", "v_proj", "out_proj")}


__all__ = ["UnfusedMultiheadAttention", "attention_projections", "unfuse_attention"]
