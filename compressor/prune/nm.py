"""N:M semi-structured pruning (2:4 by default): in every run of ``m`` consecutive weights along the
**input** dimension keep the ``n`` most important and zero the rest.

Axis: a Linear weight is [out, in]; groups are ``W[o, g·m : (g+1)·m]``. A Conv2d weight [out, in, kh, kw]
is flattened row-major to [out, in·kh·kw] (PyTorch / ONNX layout) and grouped the same way, so a group of
4 holds consecutive kernel positions of one input channel (or spans channels when kh·kw is not a multiple
of m). The reduction length must be divisible by ``m``; layers where it is not are refused.

Importance: ``magnitude`` (|W|) or ``wanda`` (|W|·‖X_j‖₂ from calibration activations). Shapes are kept
(zeros in the weights): the 2:4 pattern only pays off on runtimes/hardware with sparse tensor kernels
(e.g. NVIDIA Ampere sparse tensor cores); onnxruntime's CPU kernels run it as a dense matrix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from devicefit.compressor.prune.calib import ChannelStats, collect_input_stats
from devicefit.compressor.prune.magnitude import prunable, sparsity
from devicefit.compressor.prune.wanda import wanda_scores
from devicefit.data import Dataset
from devicefit.errors import UserInputError


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask for a 2-D [rows, cols] ``scores``: the top ``n`` of every ``m`` consecutive columns."""
    rows, cols = scores.shape
    if cols % m:
        raise UserInputError(f"input length {cols} is not a multiple of m={m}", f"use an m that divides {cols}")
    groups = scores.reshape(rows, cols // m, m)
    top = torch.topk(groups, n, dim=-1, sorted=False).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return keep.reshape(rows, cols)


def check_nm(layer: nn.Linear | nn.Conv2d, name: str, m: int) -> None:
    cols = layer.weight[0].numel()
    if cols % m:
        raise UserInputError(
            f"layer {name!r} has an input length of {cols} (in·kh·kw), not a multiple of m={m}",
            f"exclude {name!r} from N:M pruning or pick an m that divides {cols}",
        )


@torch.no_grad()
def nm_prune(
    module: nn.Module,
    layers: Sequence[str],
    *,
    n: int = 2,
    m: int = 4,
    importance: str = "magnitude",
    data: Dataset | None = None,
    input_names: Sequence[str] = (),
    max_samples: int = 128,
    stats: Mapping[str, ChannelStats] | None = None,
) -> dict[str, float]:
    """Apply N:M sparsity to the named layers **in place**; returns layer → achieved sparsity (1 - n/m)."""
    if not (0 < n < m):
        raise UserInputError(f"N:M pruning with n={n}, m={m} is invalid", "need 0 < n < m, e.g. 2:4")
    if importance not in ("magnitude", "wanda"):
        raise UserInputError(f"N:M importance {importance!r} is invalid", "use 'magnitude' or 'wanda'")
    mods = {name: prunable(module, name) for name in layers}
    for name, layer in mods.items():
        check_nm(layer, name, m)
    if importance == "wanda" and stats is None:
        if data is None:
            raise UserInputError("N:M pruning with importance='wanda' needs calibration data", "pass data")
        stats = collect_input_stats(module, layers, data, input_names, max_samples=max_samples)
    out = {}
    for name, layer in mods.items():
        w = layer.weight
        if importance == "wanda":
            assert stats is not None
            scores = wanda_scores(layer, stats[name].l2)
        else:
            scores = w.detach().abs().reshape(w.shape[0], -1)
        w.mul_(nm_mask(scores, n, m).reshape(w.shape))
        out[name] = sparsity(w)
    return out
