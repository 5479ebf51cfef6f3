"""Unstructured magnitude pruning: zero the smallest |W| of each layer (``scope="layer"``) or of all
chosen layers ranked together (``scope="global"``).

Shapes do not change: the weights are zeroed in place. That shrinks a file only once it is stored in a
sparse format or compressed (zip/zstd of the ONNX file), and it does **not** make a dense runtime such as
onnxruntime's CPU GEMM any faster. Biases are never pruned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

from devicefit.compressor.prune.calib import LAYER_TYPES, get_module
from devicefit.errors import UserInputError


def check_ratio(name: str, ratio: float) -> None:
    if not (0.0 <= ratio < 1.0):
        raise UserInputError(f"pruning ratio {ratio!r} for {name!r} is out of range", "use a fraction in [0, 1)")


def prunable(module: nn.Module, name: str) -> nn.Linear | nn.Conv2d:
    layer = get_module(module, name)
    if not isinstance(layer, LAYER_TYPES):
        raise UserInputError(
            f"layer {name!r} is a {type(layer).__name__}, not Linear/Conv2d", "prune Linear or Conv2d layers only"
        )
    return layer


def smallest_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean keep-mask of ``scores``' shape with exactly ``k`` entries (the smallest scores) False."""
    flat = scores.reshape(-1)
    keep = torch.ones_like(flat, dtype=torch.bool)
    if k > 0:
        keep[torch.argsort(flat, stable=True)[:k]] = False
    return keep.reshape(scores.shape)


def rowwise_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Keep-mask pruning ``round(ratio * cols)`` lowest scores in every row of a 2-D ``scores``."""
    k = round(ratio * scores.shape[1])
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        idx = torch.argsort(scores, dim=1, stable=True)[:, :k]
        keep.scatter_(1, idx, False)
    return keep


def sparsity(weight: torch.Tensor) -> float:
    return float((weight == 0).sum()) / weight.numel()


@torch.no_grad()
def magnitude_prune(
    module: nn.Module, ratios: Mapping[str, float], *, scope: Literal["layer", "global"] = "layer"
) -> dict[str, float]:
    """Zero the smallest-|W| weights of the named layers **in place**; returns layer → achieved sparsity.

    ``scope="layer"``: each layer loses exactly ``round(ratio·numel)`` weights. ``scope="global"``: all named
    layers are ranked together and ``round(ratio·total)`` weights go (``ratio`` must then be one value).
    """
    layers = {name: prunable(module, name) for name in ratios}
    for name, r in ratios.items():
        check_ratio(name, r)
    if scope == "layer":
        for name, layer in layers.items():
            k = round(ratios[name] * layer.weight.numel())
            layer.weight.mul_(smallest_mask(layer.weight.abs(), k))
    elif scope == "global":
        values = set(ratios.values())
        if len(values) != 1:
            raise UserInputError(f"global magnitude pruning got several ratios {sorted(values)}", "give one ratio")
        flat = torch.cat([layer.weight.abs().reshape(-1) for layer in layers.values()])
        keep = smallest_mask(flat, round(values.pop() * flat.numel()))
        offset = 0
        for layer in layers.values():
            n = layer.weight.numel()
            layer.weight.mul_(keep[offset : offset + n].reshape(layer.weight.shape))
            offset += n
    else:
        raise UserInputError(f"scope={scope!r} is invalid", "use 'layer' or 'global'")
    return {name: sparsity(layer.weight) for name, layer in layers.items()}
