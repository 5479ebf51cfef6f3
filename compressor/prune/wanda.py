"""Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs"): score each weight by
``|W_ij| · ‖X_j‖₂`` — its magnitude times the L2 norm of input channel ``j`` over the calibration
activations (captured with forward hooks) — and prune the lowest scores **within each output row**
(the paper's per-output comparison group). For Conv2d a row is one output filter (in × kh × kw) and the
channel norm is shared by the kernel positions of that channel.

Like magnitude pruning this keeps shapes (weights are zeroed): no dense-runtime speed-up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from devicefit.compressor.prune.calib import ChannelStats, collect_input_stats
from devicefit.compressor.prune.magnitude import check_ratio, prunable, rowwise_mask, sparsity
from devicefit.data import Dataset


def wanda_scores(layer: nn.Linear | nn.Conv2d, act_norm: torch.Tensor) -> torch.Tensor:
    """``|W| · ‖X_j‖`` as a [out, in·kh·kw] matrix (rows = comparison groups)."""
    w = layer.weight.detach().abs()
    if isinstance(layer, nn.Conv2d):
        norm = act_norm.to(w.dtype)
        if layer.groups > 1:  # grouped conv: the filter of output o sees only its group's input channels
            per_group = w.shape[1]
            out_per_group = w.shape[0] // layer.groups
            norm_rows = norm.reshape(layer.groups, per_group).repeat_interleave(out_per_group, dim=0)
            return (w * norm_rows[:, :, None, None]).reshape(w.shape[0], -1)
        return (w * norm[None, :, None, None]).reshape(w.shape[0], -1)
    return w * act_norm.to(w.dtype)[None, :]


@torch.no_grad()
def wanda_prune(
    module: nn.Module,
    ratios: Mapping[str, float],
    data: Dataset,
    input_names: Sequence[str],
    *,
    max_samples: int = 128,
    stats: Mapping[str, ChannelStats] | None = None,
) -> dict[str, float]:
    """Wanda-prune the named layers **in place** (``ratio`` of each row); returns layer → achieved sparsity.

    All layers are scored from one calibration pass over the unpruned model (as in the paper's
    one-shot variant). Pass ``stats`` to reuse statistics already collected.
    """
    for name, r in ratios.items():
        check_ratio(name, r)
        prunable(module, name)
    if stats is None:
        stats = collect_input_stats(module, ratios, data, input_names, max_samples=max_samples)
    out = {}
    for name, ratio in ratios.items():
        layer = prunable(module, name)
        scores = wanda_scores(layer, stats[name].l2)
        keep = rowwise_mask(scores, ratio).reshape(layer.weight.shape)
        layer.weight.mul_(keep)
        out[name] = sparsity(layer.weight)
    return out
