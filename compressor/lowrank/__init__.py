"""Low-rank factorization: truncated SVD and activation-aware SVD of Linear / 1×1 conv layers (one-shot
whitening, or the default error-compensating refit weighted by the model output), Tucker-2 and spatial SVD
of k×k convs. Layer ``<name>`` becomes ``<name>.down`` / (``<name>.core``) / ``<name>.up``."""

from devicefit.compressor.lowrank.apply import LowRankOutcome, apply_lowrank
from devicefit.compressor.lowrank.asvd import asvd_linear
from devicefit.compressor.lowrank.conv import LowRankConv2d, spatial_svd_conv, tucker2_conv
from devicefit.compressor.lowrank.refit import refit_asvd
from devicefit.compressor.lowrank.svd import (
    LowRankConv1x1,
    LowRankLinear,
    LowRankRefused,
    breakeven_rank,
    rank_for_energy,
    rank_for_ratio,
    svd_linear,
)

__all__ = [
    "LowRankConv1x1",
    "LowRankConv2d",
    "LowRankLinear",
    "LowRankOutcome",
    "LowRankRefused",
    "apply_lowrank",
    "asvd_linear",
    "breakeven_rank",
    "rank_for_energy",
    "rank_for_ratio",
    "refit_asvd",
    "spatial_svd_conv",
    "svd_linear",
    "tucker2_conv",
]
