"""Structured pruning of transformer blocks that follow Hugging Face BERT naming (``zoo:minilm-l6``):

* **attention heads** — a self-attention module with integer ``num_heads`` / ``head_dim`` attributes and
  Linear children ``query`` / ``key`` / ``value`` (``<block>.attention.self``), whose context feeds
  ``<block>.attention.output.dense``. Removing head ``h`` drops rows ``h·d … (h+1)·d`` of q/k/v
  (weights + biases) and the same input columns of the output projection, then sets ``num_heads``
  (and ``all_head_size`` if the module has one). A plan entry on ``query``, ``key`` or ``value`` prunes heads
  (``ratio`` = fraction of heads removed, rounded, at least one head kept).
* **FFN channels** — ``<block>.intermediate.dense`` (out) → activation → ``<block>.output.dense`` (in).
  A plan entry on ``intermediate.dense`` removes ``ratio`` of the intermediate channels.

The residual stream (hidden size) never changes: plan entries on ``attention.output.dense`` or the FFN's
``output.dense`` are refused. Importance per head / channel (the group = every weight removed with it):
``l1`` / ``l2`` — mean of the per-channel L1 / L2 norms of the rows and columns removed; ``activation`` —
‖X_c‖₂ of the consumer's input channel × ‖consumer column‖₂ (Wanda, structured); ``taylor`` — first order
(Σ w·∂L/∂w over the group)², summed over calibration batches (loss: see ``taylor_loss``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from devicefit.compressor.prune.calib import (
    ChannelStats,
    collect_input_stats,
    compensate_bias,
    forward,
    get_module,
    iter_batches,
    set_module,
)
from devicefit.data import Dataset


@dataclass(frozen=True)
class AttentionSite:
    name: str  # the self-attention module
    qkv: tuple[str, str, str]
    out: str


@dataclass(frozen=True)
class FFNSite:
    up: str
    down: str


def find_sites(module: nn.Module) -> tuple[list[AttentionSite], list[FFNSite]]:
    """Attention and FFN sites of a BERT-style model (empty lists for anything else)."""
    mods = dict(module.named_modules())
    attn, ffn = [], []
    for name, m in mods.items():
        heads, hd = getattr(m, "num_heads", None), getattr(m, "head_dim", None)
        kids = [f"{name}.{k}" for k in ("query", "key", "value")]
        if isinstance(heads, int) and isinstance(hd, int) and all(isinstance(mods.get(k), nn.Linear) for k in kids):
            out = f"{name.rpartition('.')[0]}.output.dense"
            o = mods.get(out)
            if isinstance(o, nn.Linear) and o.in_features == heads * hd:
                attn.append(AttentionSite(name, (kids[0], kids[1], kids[2]), out))
        if name.endswith("intermediate.dense") and isinstance(m, nn.Linear):
            down = name[: -len("intermediate.dense")] + "output.dense"
            d = mods.get(down)
            if isinstance(d, nn.Linear) and d.in_features == m.out_features:
                ffn.append(FFNSite(name, down))
    return attn, ffn


def residual_writers(attn: Sequence[AttentionSite], ffn: Sequence[FFNSite]) -> set[str]:
    """Layers whose output is the residual stream (cannot lose output channels)."""
    return {a.out for a in attn} | {f.down for f in ffn}


def taylor_loss(out: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Loss for first-order Taylor importance. Labels → cross-entropy. A classifier without labels →
    cross-entropy against its own argmax (pseudo-labels). Anything else (embeddings) → a random
    projection ⟨y, r⟩, r ~ N(0, I): squared over batches, (Σ w·g)² then estimates the output change
    ‖J·δ‖² caused by removing the group (an MSE-to-teacher loss is flat at the unpruned model, its gradient
    is zero)."""
    if labels is not None:
        return F.cross_entropy(out, labels)
    if out.dim() == 2 and out.shape[1] > 1 and not torch.allclose(out.norm(dim=1), torch.ones(len(out)), atol=1e-3):
        return F.cross_entropy(out, out.argmax(dim=1).detach())
    return (out * torch.randn_like(out)).sum() / max(len(out), 1)


def taylor_scores(
    module: nn.Module,
    groups: Mapping[str, Callable[[], torch.Tensor]],
    data: Dataset,
    input_names: Sequence[str],
    *,
    max_samples: int = 64,
    batch_size: int = 8,
) -> dict[str, torch.Tensor]:
    """For each key, accumulate ``(per-unit Σ w·g)²`` over batches; ``groups[key]()`` returns that sum
    (vector over units) from the current ``.grad`` fields."""
    torch.manual_seed(0)
    was_training = module.training
    module.eval()
    acc: dict[str, torch.Tensor] = {}
    labels = data.labels
    try:
        for i, tensors in enumerate(iter_batches(data.take(max_samples), input_names, batch_size)):
            module.zero_grad(set_to_none=False)
            with torch.enable_grad():
                out = forward(module, tensors)
                lab = None
                if labels is not None and out.dim() == 2:
                    lab = torch.from_numpy(labels[i * batch_size : i * batch_size + len(out)]).long()
                taylor_loss(out, lab).backward()
            with torch.no_grad():
                for key, fn in groups.items():
                    v = fn().double() ** 2
                    acc[key] = acc[key] + v if key in acc else v
    finally:
        module.zero_grad(set_to_none=True)
        module.train(was_training)
    return acc


def _lin(module: nn.Module, name: str) -> nn.Linear:
    m = get_module(module, name)
    assert isinstance(m, nn.Linear)
    return m


def _wg(layer: nn.Linear, dim: int) -> torch.Tensor:
    """Σ w·g per output row (dim=0, with bias) or input column (dim=1)."""
    assert layer.weight.grad is not None
    wg = layer.weight * layer.weight.grad
    if dim == 0:
        s = wg.sum(1)
        if layer.bias is not None and layer.bias.grad is not None:
            s = s + layer.bias * layer.bias.grad
        return s
    return wg.sum(0)


def _head_taylor(module: nn.Module, a: AttentionSite) -> Callable[[], torch.Tensor]:
    q, k, v = (_lin(module, n) for n in a.qkv)
    o, heads = _lin(module, a.out), _int_attr(get_module(module, a.name), "num_heads")
    return lambda: (_wg(q, 0) + _wg(k, 0) + _wg(v, 0) + _wg(o, 1)).reshape(heads, -1).sum(1)


def _ffn_taylor(up: nn.Linear, down: nn.Linear) -> Callable[[], torch.Tensor]:
    return lambda: _wg(up, 0) + _wg(down, 1)


def _int_attr(m: nn.Module, name: str) -> int:
    v = getattr(m, name)
    assert isinstance(v, int)
    return v


def _norms(layer: nn.Linear, dim: int, p: int) -> torch.Tensor:
    w = layer.weight.detach()
    return w.norm(p=p, dim=1 - dim) if dim == 0 else w.norm(p=p, dim=0)


def unit_scores(
    module: nn.Module,
    attn: Sequence[AttentionSite],
    ffn: Sequence[FFNSite],
    importance: str,
    data: Dataset | None,
    input_names: Sequence[str],
    stats: Mapping[str, ChannelStats] | None = None,
) -> dict[str, torch.Tensor]:
    """Importance per head (key = attention name) and per FFN channel (key = up name). ``stats``: input
    statistics of the output projections / FFN ``down`` layers, if already collected."""
    out: dict[str, torch.Tensor] = {}
    if importance == "taylor":
        assert data is not None
        groups: dict[str, Callable[[], torch.Tensor]] = {}
        for a in attn:
            # one Taylor term per head: Σ w·g over all the head's weights, squared per batch
            groups[a.name] = _head_taylor(module, a)
        for f in ffn:
            groups[f.up] = _ffn_taylor(_lin(module, f.up), _lin(module, f.down))
        return taylor_scores(module, groups, data, input_names) if groups else {}
    if importance != "activation":
        stats = None
    elif stats is None or any(n not in stats for n in [a.out for a in attn] + [f.down for f in ffn]):
        assert data is not None
        stats = collect_input_stats(module, [a.out for a in attn] + [f.down for f in ffn], data, input_names)
    for a in attn:
        heads = _int_attr(get_module(module, a.name), "num_heads")
        o = _lin(module, a.out)
        if stats is not None:
            ch = stats[a.out].l2.float() * _norms(o, 1, 2)
        else:
            p = 1 if importance == "l1" else 2
            ch = sum(_norms(_lin(module, n), 0, p) for n in a.qkv) + _norms(o, 1, p)
        out[a.name] = torch.as_tensor(ch).reshape(heads, -1).mean(1)
    for f in ffn:
        up, down = _lin(module, f.up), _lin(module, f.down)
        if stats is not None:
            out[f.up] = stats[f.down].l2.float() * _norms(down, 1, 2)
        else:
            p = 1 if importance == "l1" else 2
            out[f.up] = _norms(up, 0, p) + _norms(down, 1, p)
    return out


def _slice_linear(layer: nn.Linear, keep: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping output rows (dim=0) or input columns (dim=1) ``keep``."""
    w = layer.weight.detach()
    w = w[keep] if dim == 0 else w[:, keep]
    new = nn.Linear(w.shape[1], w.shape[0], bias=layer.bias is not None, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if layer.bias is not None:
            assert new.bias is not None
            new.bias.copy_(layer.bias.detach()[keep] if dim == 0 else layer.bias.detach())
    new.train(layer.training)
    return new


def _dropped(n: int, keep: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(n, dtype=torch.bool)
    mask[keep] = False
    return mask.nonzero().flatten()


def remove_heads(
    module: nn.Module, site: AttentionSite, keep_heads: torch.Tensor, mean: torch.Tensor | None = None
) -> None:
    """Remove all heads but ``keep_heads``; ``mean`` (calibration mean of the output projection's input)
    folds the removed heads' average context into the projection bias."""
    att = get_module(module, site.name)
    hd = _int_attr(att, "head_dim")
    keep = (keep_heads.sort().values[:, None] * hd + torch.arange(hd)[None, :]).reshape(-1)
    out = _lin(module, site.out)
    if mean is not None:
        compensate_bias(out, _dropped(out.in_features, keep), mean)
    for n in site.qkv:
        set_module(module, n, _slice_linear(_lin(module, n), keep, 0))
    set_module(module, site.out, _slice_linear(_lin(module, site.out), keep, 1))
    setattr(att, "num_heads", len(keep_heads))  # noqa: B010 (plain int attribute read at run time)
    if hasattr(att, "all_head_size"):
        setattr(att, "all_head_size", len(keep_heads) * hd)  # noqa: B010


def remove_channels(module: nn.Module, site: FFNSite, keep: torch.Tensor, mean: torch.Tensor | None = None) -> None:
    """Keep FFN channels ``keep``; ``mean`` (calibration mean of ``down``'s input) compensates the bias."""
    keep = keep.sort().values
    down = _lin(module, site.down)
    if mean is not None:
        compensate_bias(down, _dropped(down.in_features, keep), mean)
    set_module(module, site.up, _slice_linear(_lin(module, site.up), keep, 0))
    set_module(module, site.down, _slice_linear(_lin(module, site.down), keep, 1))


def keep_indices(scores: torch.Tensor, n_remove: int) -> torch.Tensor:
    n_remove = min(max(n_remove, 0), len(scores) - 1)
    return torch.argsort(scores, descending=True, stable=True)[: len(scores) - n_remove]


def global_removals(scores: Mapping[str, torch.Tensor], ratio: float) -> dict[str, int]:
    """Units to remove per site when ranking all sites together (scores normalized by their site mean)."""
    keys = list(scores)
    if not keys:
        return {}
    normed = [scores[k] / scores[k].mean().clamp(min=1e-12) for k in keys]
    flat = torch.cat(normed)
    n = round(ratio * len(flat))
    owner = torch.cat([torch.full((len(s),), i) for i, s in enumerate(normed)])
    removed = owner[torch.argsort(flat, stable=True)[:n]]
    return {k: int((removed == i).sum()) for i, k in enumerate(keys)}
