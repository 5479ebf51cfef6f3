"""Low-rank decompositions of k×k ``nn.Conv2d`` (groups = 1; depthwise / grouped convs are refused).

* **Tucker-2** (HOSVD on the channel modes): ``W [out, in, kh, kw] ≈ core ×₀ U_out ×₁ U_in`` becomes
  ``<name>.down`` 1×1 (in → r_in, no bias) → ``<name>.core`` kh×kw (r_in → r_out, the original stride,
  padding, dilation — a copy of the original module, so "same"-padding subclasses keep their padding) →
  ``<name>.up`` 1×1 (r_out → out, original bias). Ranks ``r_in = ρ·in``, ``r_out = ρ·out`` with ρ solved so
  the params are ``(1 − ratio)`` of the original; or per mode from ``energy`` of the unfoldings.
* **Spatial SVD** (Jaderberg et al. 2014): ``W`` reshaped to ``[(in·kh), (out·kw)]`` and truncated to rank r
  becomes ``<name>.down`` kh×1 (in → r, stride (sh, 1), padding (ph, 0)) → ``<name>.up`` 1×kw
  (r → out, stride (1, sw), padding (0, pw), bias). Only plain ``nn.Conv2d`` with numeric padding.

MACs are computed from the layer's input/output spatial sizes (``spatial`` = (H_in, W_in, H_out, W_out)
from one forward pass; without it stride-1 "same" sizes are assumed): a decomposition whose MACs or params
are not below the original's is refused (:class:`LowRankRefused`).
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import torch
from torch import nn

from devicefit.compressor.lowrank.svd import LowRankRefused, rank_for_energy, rank_for_ratio, split_factors
from devicefit.errors import UserInputError


class LowRankConv2d(nn.Sequential):
    """A factorized Conv2d: ``down`` → (``core``) → ``up``; a drop-in for the original conv."""

    def __init__(self, **parts: nn.Module) -> None:
        super().__init__(OrderedDict(parts))


def _check(name: str, conv: nn.Module) -> nn.Conv2d:
    if not isinstance(conv, nn.Conv2d):
        raise LowRankRefused(f"{name}: {type(conv).__name__} is not a Conv2d", "use kind='svd'/'asvd' for Linear")
    if conv.groups != 1:
        raise LowRankRefused(f"{name}: grouped/depthwise conv (groups={conv.groups}) is not factorized", "skip it")
    if conv.kernel_size == (1, 1):
        raise LowRankRefused(f"{name}: a 1×1 conv has no spatial kernel to decompose", "use kind='svd' or 'asvd'")
    return conv


def _sizes(conv: nn.Conv2d, spatial: tuple[int, ...] | None) -> tuple[int, int, int, int]:
    if spatial is None:
        return 1, 1, 1, 1
    h_in, w_in, h_out, w_out = spatial
    return h_in, w_in, h_out, w_out


def _refuse_if_no_gain(name: str, what: str, new_macs: int, old_macs: int, new_p: int, old_p: int) -> None:
    if new_macs >= old_macs or new_p >= old_p:
        raise LowRankRefused(
            f"{name}: {what} would not reduce MACs/params (MACs {new_macs} vs {old_macs}, params {new_p} vs {old_p})",
            "raise the ratio (or lower the energy), or leave this conv dense",
        )


def _conv(in_c: int, out_c: int, k: tuple[int, int], *, stride: tuple[int, int] = (1, 1),
          padding: tuple[int, int] = (0, 0), dilation: tuple[int, int] = (1, 1), bias: bool) -> nn.Conv2d:
    return nn.Conv2d(in_c, out_c, k, stride=stride, padding=padding, dilation=dilation, bias=bias)


@torch.no_grad()
def tucker2_conv(
    conv: nn.Module,
    *,
    ratio: float | None = None,
    energy: float | None = None,
    spatial: tuple[int, ...] | None = None,
    name: str = "conv",
) -> LowRankConv2d:
    """Tucker-2 decomposition of a k×k conv (see module docstring)."""
    c = _check(name, conv)
    w = c.weight.detach().double()
    n_out, n_in, kh, kw = w.shape
    u_out, s_out, _ = torch.linalg.svd(w.reshape(n_out, -1), full_matrices=False)
    u_in, s_in, _ = torch.linalg.svd(w.transpose(0, 1).reshape(n_in, -1), full_matrices=False)
    if ratio is not None:
        rank_for_ratio(1, 1, ratio)  # validates the range
        a, b, target = n_in * n_out * kh * kw, n_in**2 + n_out**2, (1 - ratio) * n_in * n_out * kh * kw
        rho = (-b + math.sqrt(b * b + 4 * a * target)) / (2 * a)
        r_in, r_out = max(1, math.floor(rho * n_in)), max(1, math.floor(rho * n_out))
    elif energy is not None:
        r_in, r_out = rank_for_energy(s_in, energy), rank_for_energy(s_out, energy)
    else:
        raise UserInputError(f"{name}: give exactly one of ratio / energy", "e.g. LowRank(ratio=0.5, kind='tucker2')")
    r_in, r_out = min(r_in, len(s_in)), min(r_out, len(s_out))
    h_in, w_in, h_out, w_out = _sizes(c, spatial)
    old_p = n_out * n_in * kh * kw
    new_p = n_in * r_in + r_in * r_out * kh * kw + r_out * n_out
    old_macs = old_p * h_out * w_out
    new_macs = n_in * r_in * h_in * w_in + r_in * r_out * kh * kw * h_out * w_out + r_out * n_out * h_out * w_out
    _refuse_if_no_gain(name, f"Tucker-2 with ranks ({r_in}, {r_out})", new_macs, old_macs, new_p, old_p)
    a_out, a_in = u_out[:, :r_out], u_in[:, :r_in]
    core_w = torch.einsum("oikl,or,is->rskl", w, a_out, a_in)  # [r_out, r_in, kh, kw]
    dtype = c.weight.dtype
    down = _conv(n_in, r_in, (1, 1), bias=False)
    down.weight.copy_(a_in.T[:, :, None, None].to(dtype))
    core = copy.deepcopy(c)  # keeps stride / padding / dilation and any "same"-padding behaviour
    core.in_channels, core.out_channels = r_in, r_out
    core.weight = nn.Parameter(core_w.to(dtype))
    core.bias = None
    up = _conv(r_out, n_out, (1, 1), bias=c.bias is not None)
    up.weight.copy_(a_out[:, :, None, None].to(dtype))
    if c.bias is not None:
        assert up.bias is not None
        up.bias.copy_(c.bias.detach())
    return LowRankConv2d(down=down, core=core, up=up)


def _pair(v: object) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    assert isinstance(v, tuple)
    return int(v[0]), int(v[1])


@torch.no_grad()
def spatial_svd_conv(
    conv: nn.Module,
    *,
    ratio: float | None = None,
    energy: float | None = None,
    spatial: tuple[int, ...] | None = None,
    name: str = "conv",
) -> LowRankConv2d:
    """Spatial SVD: a kh×kw conv → kh×1 then 1×kw (see module docstring)."""
    c = _check(name, conv)
    if type(c) is not nn.Conv2d or isinstance(c.padding, str):
        raise LowRankRefused(
            f"{name}: spatial SVD needs a plain nn.Conv2d with numeric padding ({type(c).__name__}, padding={c.padding})",
            "use kind='tucker2' for this conv",
        )
    w = c.weight.detach().double()
    n_out, n_in, kh, kw = w.shape
    if kh == 1 or kw == 1:
        raise LowRankRefused(f"{name}: kernel {kh}×{kw} is already separable", "use kind='svd' or leave it")
    mat = w.permute(1, 2, 0, 3).reshape(n_in * kh, n_out * kw)  # [(in, i), (out, j)]
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    if ratio is not None:
        rank = rank_for_ratio(n_in * kh, n_out * kw, ratio)
    elif energy is not None:
        rank = rank_for_energy(s, energy)
    else:
        raise UserInputError(f"{name}: give exactly one of ratio / energy", "e.g. LowRank(ratio=0.5, kind='spatial')")
    rank = min(rank, len(s))
    if rank < 1:
        raise LowRankRefused(f"{name}: the requested reduction leaves rank {rank}", "remove a smaller fraction")
    (sh, sw), (ph, pw), (dh, dw) = _pair(c.stride), _pair(c.padding), _pair(c.dilation)
    _, w_in, h_out, w_out = _sizes(c, spatial)
    old_p = n_out * n_in * kh * kw
    new_p = rank * (n_in * kh + n_out * kw)
    old_macs = old_p * h_out * w_out
    new_macs = rank * n_in * kh * h_out * (w_in if spatial else 1) + n_out * rank * kw * h_out * w_out
    _refuse_if_no_gain(name, f"spatial SVD with rank {rank}", new_macs, old_macs, new_p, old_p)
    col, row = split_factors(u, s, vh, rank)  # col [(in, i), r], row [r, (out, j)]
    dtype = c.weight.dtype
    down = _conv(n_in, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), bias=False)
    down.weight.copy_(col.reshape(n_in, kh, rank).permute(2, 0, 1)[:, :, :, None].to(dtype))
    up = _conv(rank, n_out, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw), bias=c.bias is not None)
    up.weight.copy_(row.reshape(rank, n_out, kw).permute(1, 0, 2)[:, :, None, :].to(dtype))
    if c.bias is not None:
        assert up.bias is not None
        up.bias.copy_(c.bias.detach())
    return LowRankConv2d(down=down, up=up)
