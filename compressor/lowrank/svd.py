"""Truncated SVD of ``nn.Linear`` (and 1×1 ``nn.Conv2d``) into two smaller layers.

``W [out, in] ≈ U_r Σ_r V_rᵀ`` becomes ``down = √Σ_r V_rᵀ`` (in → r, no bias) followed by
``up = U_r √Σ_r`` (r → out, with the original bias). The replacement is a :class:`LowRankLinear`
(an ``nn.Sequential``) put **under the original name**, so layer ``<name>`` becomes ``<name>.down`` and
``<name>.up`` (torch names; the dynamo ONNX exporter names their MatMul/Gemm nodes after the same scope).

Rank: ``ratio`` = fraction of the layer's weight parameters removed →
``r = ⌊(1 − ratio)·in·out / (in + out)⌋``; or ``energy`` = fraction of Σσ² kept → the smallest such r.
A Linear costs ``in·out`` MACs per row and the pair ``r·(in + out)``, so MACs and params shrink together;
a rank at or above ``in·out / (in + out)`` (the break-even) would not reduce them and is refused
(:class:`LowRankRefused`).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from devicefit.errors import UserInputError


class LowRankRefused(UserInputError):
    """The factorization would not reduce MACs / params (or the layer cannot be factorized)."""


class LowRankLinear(nn.Sequential):
    """``down`` (in → rank, no bias) then ``up`` (rank → out, bias): a drop-in for an ``nn.Linear``."""

    def __init__(self, down: nn.Linear, up: nn.Linear) -> None:
        super().__init__(OrderedDict(down=down, up=up))

    def _part(self, name: str) -> nn.Linear:
        m = self._modules[name]
        assert isinstance(m, nn.Linear)
        return m

    @property
    def in_features(self) -> int:
        return self._part("down").in_features

    @property
    def out_features(self) -> int:
        return self._part("up").out_features

    @property
    def rank(self) -> int:
        return self._part("down").out_features


class LowRankConv1x1(nn.Sequential):
    """A 1×1 Conv2d factorized into two 1×1 convs: ``down`` (in → rank) and ``up`` (rank → out, bias)."""

    def __init__(self, down: nn.Conv2d, up: nn.Conv2d) -> None:
        super().__init__(OrderedDict(down=down, up=up))

    @property
    def rank(self) -> int:
        m = self._modules["down"]
        assert isinstance(m, nn.Conv2d)
        return m.out_channels


def breakeven_rank(n_in: int, n_out: int) -> float:
    """The rank at which the two factors cost as much as the dense matrix."""
    return n_in * n_out / (n_in + n_out)


def rank_for_ratio(n_in: int, n_out: int, ratio: float) -> int:
    """Largest rank whose factors have at most ``(1 − ratio)`` of the dense weight's parameters."""
    if not 0.0 < ratio < 1.0:
        raise UserInputError(f"low-rank ratio {ratio!r} is out of range", "use the fraction of params removed, in (0, 1)")
    return math.floor((1.0 - ratio) * n_in * n_out / (n_in + n_out))


def rank_for_energy(singular: torch.Tensor, energy: float) -> int:
    """Smallest rank keeping at least ``energy`` of Σσ²."""
    if not 0.0 < energy <= 1.0:
        raise UserInputError(f"low-rank energy {energy!r} is out of range", "use the fraction kept, in (0, 1]")
    e = singular.double() ** 2
    cum = torch.cumsum(e, 0) / e.sum().clamp(min=1e-300)
    return int(torch.searchsorted(cum, torch.tensor(energy, dtype=cum.dtype) - 1e-12).item()) + 1


def check_rank(name: str, rank: int, n_in: int, n_out: int) -> None:
    limit = breakeven_rank(n_in, n_out)
    if rank < 1:
        raise LowRankRefused(f"{name}: the requested reduction leaves rank {rank}", "remove a smaller fraction")
    if rank >= limit:
        raise LowRankRefused(
            f"{name}: rank {rank} of a {n_out}×{n_in} weight would not reduce MACs/params "
            f"(break-even rank {limit:.1f})",
            "raise the ratio (or lower the energy), or leave this layer dense",
        )


def choose_rank(
    name: str, singular: torch.Tensor, n_in: int, n_out: int, *, ratio: float | None, energy: float | None
) -> int:
    if (ratio is None) == (energy is None):
        raise UserInputError(f"{name}: give exactly one of ratio / energy", "e.g. LowRank(ratio=0.5)")
    rank = rank_for_ratio(n_in, n_out, ratio) if ratio is not None else rank_for_energy(singular, energy or 1.0)
    rank = min(rank, len(singular))
    check_rank(name, rank, n_in, n_out)
    return rank


def split_factors(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(up [out, r], down [r, in]) sharing √σ between the two factors."""
    root = s[:rank].sqrt()
    return u[:, :rank] * root[None, :], root[:, None] * vh[:rank]


def make_linear_pair(
    up_w: torch.Tensor, down_w: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype
) -> LowRankLinear:
    rank, n_in = down_w.shape
    down = nn.Linear(n_in, rank, bias=False, dtype=dtype)
    up = nn.Linear(rank, up_w.shape[0], bias=bias is not None, dtype=dtype)
    with torch.no_grad():
        down.weight.copy_(down_w)
        up.weight.copy_(up_w)
        if bias is not None:
            assert up.bias is not None
            up.bias.copy_(bias)
    return LowRankLinear(down, up)


def as_linear_pair(layer: nn.Module, pair: LowRankLinear) -> nn.Module:
    """Return ``pair`` as-is for a Linear, or rebuilt as two 1×1 convs for a 1×1 Conv2d ``layer``."""
    if isinstance(layer, nn.Linear):
        return pair
    assert isinstance(layer, nn.Conv2d)
    down_l, up_l = pair.down, pair.up
    assert isinstance(down_l, nn.Linear) and isinstance(up_l, nn.Linear)
    stride = (int(layer.stride[0]), int(layer.stride[1]))
    down = nn.Conv2d(layer.in_channels, pair.rank, 1, stride=stride, bias=False)
    up = nn.Conv2d(pair.rank, layer.out_channels, 1, bias=up_l.bias is not None)
    with torch.no_grad():
        down.weight.copy_(down_l.weight[:, :, None, None])
        up.weight.copy_(up_l.weight[:, :, None, None])
        if up_l.bias is not None:
            assert up.bias is not None
            up.bias.copy_(up_l.bias)
    return LowRankConv1x1(down, up)


def weight_matrix(name: str, layer: nn.Module) -> torch.Tensor:
    """The [out, in] matrix of a Linear or a plain 1×1 Conv2d; other layers are refused."""
    if isinstance(layer, nn.Linear):
        return layer.weight.detach().double()
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise LowRankRefused(f"{name}: grouped/depthwise conv (groups={layer.groups}) is not factorized", "skip it")
        # "same"-padding subclasses (EfficientNet's Conv2dStaticSamePadding) pad nothing for a 1×1 kernel
        pad = getattr(getattr(layer, "static_padding", None), "padding", 0)
        padded = any(int(p) != 0 for p in (pad if isinstance(pad, (tuple, list)) else (pad,)))
        if layer.kernel_size != (1, 1) or layer.padding not in ((0, 0), "valid") or padded:
            raise LowRankRefused(
                f"{name}: svd/asvd factorize Linear and 1×1 convs; this conv is {layer.kernel_size}",
                "use kind='tucker2' or kind='spatial' for k×k convolutions",
            )
        return layer.weight.detach().double()[:, :, 0, 0]
    raise LowRankRefused(f"{name}: {type(layer).__name__} cannot be factorized", "factorize Linear / Conv2d layers")


@torch.no_grad()
def svd_linear(
    layer: nn.Module, *, ratio: float | None = None, energy: float | None = None, name: str = "layer"
) -> nn.Module:
    """Plain truncated SVD of a Linear (→ :class:`LowRankLinear`) or 1×1 conv (→ :class:`LowRankConv1x1`)."""
    w = weight_matrix(name, layer)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    rank = choose_rank(name, s, w.shape[1], w.shape[0], ratio=ratio, energy=energy)
    up_w, down_w = split_factors(u, s, vh, rank)
    bias, dtype = bias_and_dtype(layer)
    return as_linear_pair(layer, make_linear_pair(up_w, down_w, bias, dtype))


def bias_and_dtype(layer: nn.Module) -> tuple[torch.Tensor | None, torch.dtype]:
    """(detached bias or None, weight dtype) of a Linear / Conv2d."""
    assert isinstance(layer, (nn.Linear, nn.Conv2d))
    bias = layer.bias.detach() if layer.bias is not None else None
    return bias, layer.weight.dtype
