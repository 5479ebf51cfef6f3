"""Activation-aware SVD: factorize ``W·S`` instead of ``W``, where ``S`` carries the statistics of the
layer's calibration inputs, then fold ``S⁻¹`` back into the first factor. The truncation then drops the
directions that matter least for the layer's **outputs on real data**, not for the raw weights.

Two choices of ``S`` (``method``):

* ``"whiten"`` (default) — ``S = L``, the Cholesky factor of the centred input covariance
  ``C = E[(x−μ)(x−μ)ᵀ] + λ·mean(diag C)·I`` (damping λ = ``damp``). Truncating ``W·L`` is then the
  exact minimiser of ``E‖(W − Ŵ)(x − μ)‖²`` over rank-r ``Ŵ`` (SVD-LLM's truncation-aware whitening),
  and the mean error ``(W − Ŵ)·μ`` is folded into the bias, so the pair is optimal on the calibration
  data for an affine layer.
* ``"scale"`` — ASVD (Yuan et al. 2023): diagonal ``S = diag(mean|x_j|^alpha)``. Cheaper and
  needs no covariance, weaker than whitening.

Rank by ``ratio`` (fraction of params removed) or ``energy`` (fraction of Σσ² of ``W·S`` kept — energy
of the output on the calibration data, not of the weights). Layer naming as in :mod:`.svd`:
``<name>.down`` / ``<name>.up``.
"""

from __future__ import annotations

import torch
from torch import nn

from devicefit.compressor.lowrank.svd import (
    as_linear_pair,
    bias_and_dtype,
    choose_rank,
    make_linear_pair,
    split_factors,
    weight_matrix,
)
from devicefit.compressor.prune.calib import ChannelStats
from devicefit.errors import UserInputError

METHODS = ("whiten", "scale")


def damped_cholesky(c: torch.Tensor, damp: float, problem: str, fix: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(L, L⁻¹, λ) with L Lᵀ = c + λ·I, λ = ``damp`` × mean diagonal of ``c`` (×10 until it factorizes)."""
    eye = torch.eye(c.shape[0], dtype=c.dtype)
    lam = damp * float(torch.diagonal(c).mean().clamp(min=1e-12))
    for attempt in range(6):
        chol, info = torch.linalg.cholesky_ex(c + lam * (10**attempt) * eye)
        if int(info) == 0:
            return chol, torch.linalg.solve_triangular(chol, eye, upper=False), lam * 10**attempt
    raise UserInputError(f"{problem} is not positive definite even after damping", fix)


def _whitener(stats: ChannelStats, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, L⁻¹) with L Lᵀ = damped centred covariance of the layer input."""
    if stats.gram is None:
        raise UserInputError("whitened ASVD needs the input Gram matrix", "collect stats with gram=True")
    n = max(stats.count, 1)
    mu = stats.mean
    cov = stats.gram / n - torch.outer(mu, mu)
    chol, chol_inv, _ = damped_cholesky((cov + cov.T) / 2, damp, "input covariance", "use method='scale'")
    return chol, chol_inv


@torch.no_grad()
def asvd_linear(
    layer: nn.Module,
    stats: ChannelStats,
    *,
    ratio: float | None = None,
    energy: float | None = None,
    method: str = "whiten",
    alpha: float = 0.5,
    damp: float = 0.01,
    name: str = "layer",
) -> nn.Module:
    """Activation-aware factorization of a Linear / 1×1 conv from its input ``stats``
    (``collect_input_stats(..., gram=True)`` for ``method="whiten"``)."""
    if method not in METHODS:
        raise UserInputError(f"ASVD method {method!r} is invalid", f"use one of {', '.join(METHODS)}")
    w = weight_matrix(name, layer)
    bias, dtype = bias_and_dtype(layer)
    bias = bias.double() if bias is not None else None
    if method == "whiten":
        s_mat, s_inv = _whitener(stats, damp)
        u, sv, vh = torch.linalg.svd(w @ s_mat, full_matrices=False)
        rank = choose_rank(name, sv, w.shape[1], w.shape[0], ratio=ratio, energy=energy)
        up_w, down_w = split_factors(u, sv, vh, rank)
        down_w = down_w @ s_inv
        # fold the error on the mean input into the bias: E[W x + b] is preserved exactly
        delta = (w - up_w @ down_w) @ stats.mean
        bias = delta if bias is None else bias + delta
    else:
        scale = stats.mean_abs.double().clamp(min=1e-6) ** alpha
        scale = scale / scale.mean()
        u, sv, vh = torch.linalg.svd(w * scale[None, :], full_matrices=False)
        rank = choose_rank(name, sv, w.shape[1], w.shape[0], ratio=ratio, energy=energy)
        up_w, down_w = split_factors(u, sv, vh, rank)
        down_w = down_w / scale[None, :]
    return as_linear_pair(layer, make_linear_pair(up_w, down_w, bias, dtype))
