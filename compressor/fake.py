"""Fake (simulated) techniques in torch: what per-layer sensitivity applies to one layer at a time.

Each technique names its imitation in :meth:`devicefit.compressor.techniques.Technique.fake`: a weight
transform plus, for int8 compute, an activation quantizer. These approximate the real passes for
**ranking** (see :mod:`devicefit.compressor.search.sensitivity`): int8 weights symmetric per output
channel; int4 asymmetric RTN in groups along the input dimension (GPTQ / AWQ scored as RTN, an upper bound
on their drop); 2:4 sparse int8 a 2:4 magnitude mask then int8 per channel; 2/3-bit weight-only asymmetric RTN
in groups; float16 rounded; channel pruning zeroes the lowest-L2 output channels; low-rank truncates
the (out, in·k·k) weight, activation-aware for ``asvd``; unstructured / N:M zero the smallest |W|.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from devicefit.compressor.techniques import Technique

WeightFn = Callable[[torch.Tensor, "Technique", "torch.Tensor | None"], torch.Tensor]


def q_sym_per_channel(w: torch.Tensor, bits: int) -> torch.Tensor:
    flat = w.reshape(w.shape[0], -1)
    qmax = 2 ** (bits - 1) - 1
    scale = flat.abs().amax(1, keepdim=True).clamp_min(1e-12) / qmax
    return (torch.round(flat / scale).clamp(-qmax - 1, qmax) * scale).reshape(w.shape)


def q_group_asym(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    flat = w.reshape(w.shape[0], -1)
    cols = flat.shape[1]
    pad = (-cols) % group
    x = torch.nn.functional.pad(flat, (0, pad)).reshape(flat.shape[0], -1, group)
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    qmax = 2**bits - 1
    scale = ((hi - lo) / qmax).clamp_min(1e-12)
    zp = torch.round(-lo / scale)
    q = (torch.round(x / scale) + zp).clamp(0, qmax)
    return ((q - zp) * scale).reshape(flat.shape[0], -1)[:, :cols].reshape(w.shape)


def w_int8(w: torch.Tensor, tech: Technique, act: torch.Tensor | None) -> torch.Tensor:
    return q_sym_per_channel(w, 8)


def w_int4(w: torch.Tensor, tech: Technique, act: torch.Tensor | None) -> torch.Tensor:
    return q_group_asym(w, 4, int(getattr(tech, "group_size", 32)))


def w_s24_int8(w: torch.Tensor, tech: Technique, act: torch.Tensor | None) -> torch.Tensor:
    """2:4 magnitude mask along the input dimension (a ragged tail group of < 4 inputs padded with zeros,
    as the kernel does), then symmetric per-output-channel int8 (``Sparse24Int8``)."""
    flat = w.reshape(w.shape[0], -1)
    cols = flat.shape[1]
    pad = (-cols) % 4
    groups = torch.nn.functional.pad(flat, (0, pad)).reshape(flat.shape[0], -1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.abs().topk(2, dim=-1).indices, True)
    pruned = (groups * keep).reshape(flat.shape[0], -1)[:, :cols]
    return q_sym_per_channel(pruned, 8).reshape(w.shape)


def w_lowbit(w: torch.Tensor, tech: Technique, act: torch.Tensor | None) -> torch.Tensor:
    """Group-wise asymmetric ``tech.bits`` RTN along the input dimension (``LowBitWeightOnly``; GPTQ scored as RTN)."""
    return q_group_asym(w, int(getattr(tech, "bits", 2)), int(getattr(tech, "group_size", 128)))


def w_fp16(w: torch.Tensor, tech: Technique, act: torch.Tensor | None) -> torch.Tensor:
    return w.half().float()


def w_channels(w: torch.Tensor, tech: Technique, act: torch.Tensor | None) -> torch.Tensor:
    flat = w.reshape(w.shape[0], -1)
    k = round(flat.shape[0] * float(getattr(tech, "ratio", 0.0)))
    out = w.clone()
    if k > 0:
        idx = torch.argsort(flat.norm(dim=1))[:k]
        out[idx] = 0.0
    return out


def w_lowrank(w: torch.Tensor, tech: Technique, act: torch.Tensor | None) -> torch.Tensor:
    """Best rank-k approximation through the eigendecomposition of the smaller Gram matrix (W Wᵀ or WᵀW):
    the same truncation as an SVD, ~50x cheaper on CPU for these shapes."""
    flat = w.reshape(w.shape[0], -1).double()
    n_out, n_in = flat.shape
    scale = None
    if getattr(tech, "kind", "svd") == "asvd" and act is not None and act.numel() == n_in:
        scale = act.double().clamp_min(1e-6) ** 0.5
        flat = flat * scale
    right = n_in <= n_out
    gram = flat.T @ flat if right else flat @ flat.T
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    ratio = getattr(tech, "ratio", None)
    if ratio is not None:
        rank = int((1.0 - float(ratio)) * n_out * n_in / (n_out + n_in))
    else:
        energy = torch.cumsum(evals, 0) / evals.sum().clamp_min(1e-30)
        rank = int(torch.searchsorted(energy, float(getattr(tech, "energy", 0.9)))) + 1
    rank = max(1, min(rank, evals.numel()))
    basis = evecs[:, :rank]
    approx = (flat @ basis) @ basis.T if right else basis @ (basis.T @ flat)
    if scale is not None:
        approx = approx / scale
    return approx.to(w.dtype).reshape(w.shape)


def w_magnitude(w: torch.Tensor, tech: Technique, act: torch.Tensor | None) -> torch.Tensor:
    n = w.numel()
    k = int(n * float(getattr(tech, "ratio", 0.5)))
    if k <= 0:
        return w
    thresh = w.abs().flatten().kthvalue(k).values
    return torch.where(w.abs() <= thresh, torch.zeros_like(w), w)


def w_nm(w: torch.Tensor, tech: Technique, act: torch.Tensor | None) -> torch.Tensor:
    n, m = int(getattr(tech, "n", 2)), int(getattr(tech, "m", 4))
    flat = w.reshape(w.shape[0], -1)
    cols = flat.shape[1] - flat.shape[1] % m
    groups = flat[:, :cols].reshape(flat.shape[0], -1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.abs().topk(n, dim=-1).indices, True)
    out = flat.clone()
    out[:, :cols] = (groups * keep).reshape(flat.shape[0], cols)
    return out.reshape(w.shape)


@dataclass(frozen=True)
class FakeOp:
    """How a technique is imitated in torch: a weight transform and an activation quantizer (or none)."""

    weight: WeightFn | None
    activation: str | None = None  # "dynamic" | "static"
    zero_bias_rows: bool = False


def fake_act_quant(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-12) / 255.0
    zp = round(-lo / scale)
    return (torch.clamp(torch.round(x / scale) + zp, 0, 255) - zp) * scale
