"""Shared helpers for the prune / lowrank / distill passes: run a module on a ``Dataset`` and collect
per-input-channel activation statistics of chosen ``nn.Linear`` / ``nn.Conv2d`` layers with forward hooks.

Channel statistics are taken over every position that feeds the layer: all samples and tokens for a
Linear (``x[..., in]``), all samples and pixels for a Conv2d (``x[N, in, H, W]``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from devicefit.compressor.layers import REWRITABLE
from devicefit.data import Dataset
from devicefit.errors import UserInputError

#: the layers the torch passes rewrite (see :mod:`devicefit.compressor.layers`)
LAYER_TYPES = REWRITABLE


def get_module(root: nn.Module, name: str) -> nn.Module:
    try:
        return root.get_submodule(name)
    except AttributeError as exc:
        raise UserInputError(f"layer {name!r} is not in the model", "use names from `devicefit inspect`") from exc


def set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted path) by ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_floating_point():
        return t.float()
    if t.dtype == torch.bool:
        return t
    return t.long()


def batch_tensors(batch: dict[str, np.ndarray], input_names: Sequence[str]) -> list[torch.Tensor]:
    missing = [n for n in input_names if n not in batch]
    if missing:
        raise UserInputError(f"calibration data lacks input(s) {missing}", f"give arrays named {list(input_names)}")
    return [to_tensor(batch[n]) for n in input_names]


def trim_padding(tensors: list[torch.Tensor], input_names: Sequence[str], mask_name: str = "attention_mask") -> list[torch.Tensor]:
    """Drop trailing sequence positions that are padding in every sample of the batch (Hugging Face
    convention: a 2-D ``attention_mask`` input, padding at the end). Pooled outputs and the statistics of
    real tokens do not change; it only saves compute. Per-token outputs get shorter: callers use it only
    where outputs are compared batch by batch."""
    if mask_name not in input_names:
        return tensors
    mask = tensors[list(input_names).index(mask_name)]
    if mask.dim() != 2 or not bool(mask.any()):
        return tensors
    keep = int(mask.any(dim=0).nonzero().max()) + 1
    if keep == mask.shape[1]:
        return tensors
    return [t[:, :keep] if t.dim() >= 2 and t.shape[:2] == mask.shape else t for t in tensors]


def first_output(out: object) -> torch.Tensor:
    """The first tensor of a model output (tensor, tuple/list or dict)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return first_output(out[0])
    if isinstance(out, dict) and out:
        return first_output(next(iter(out.values())))
    raise TypeError(f"model returned {type(out).__name__}, expected a tensor")


def forward(module: nn.Module, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    return first_output(module(*inputs))


def iter_batches(data: Dataset, input_names: Sequence[str], batch_size: int) -> Iterator[list[torch.Tensor]]:
    for batch in data.batches(batch_size):
        yield batch_tensors(batch, input_names)


@torch.no_grad()
def outputs(module: nn.Module, data: Dataset, input_names: Sequence[str], *, batch_size: int = 32) -> torch.Tensor:
    """First output of ``module`` over every sample of ``data`` (eval mode), concatenated."""
    was_training = module.training
    module.eval()
    try:
        return torch.cat([forward(module, b) for b in iter_batches(data, input_names, batch_size)])
    finally:
        module.train(was_training)


@dataclass
class ChannelStats:
    """Per-input-channel statistics of one layer's input: Σx², Σ|x|, Σx over ``count`` positions."""

    sum_sq: torch.Tensor
    sum_abs: torch.Tensor
    sum: torch.Tensor
    count: int
    gram: torch.Tensor | None = None  # Σ x xᵀ (when requested)

    @property
    def l2(self) -> torch.Tensor:
        """‖X_j‖₂ per input channel (Wanda's activation norm)."""
        return self.sum_sq.sqrt()

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / max(self.count, 1)

    @property
    def rms(self) -> torch.Tensor:
        return (self.sum_sq / max(self.count, 1)).sqrt()

    @property
    def mean_abs(self) -> torch.Tensor:
        return self.sum_abs / max(self.count, 1)


def _flatten_channels(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[positions, in_channels] view of a layer input."""
    if isinstance(layer, nn.Conv2d):
        return x.transpose(0, 1).reshape(x.shape[1], -1).T
    return x.reshape(-1, x.shape[-1])


@torch.no_grad()
def collect_input_stats(
    module: nn.Module,
    names: Iterable[str],
    data: Dataset,
    input_names: Sequence[str],
    *,
    max_samples: int = 128,
    batch_size: int = 16,
    gram: bool = False,
    token_mask: str | None = "attention_mask",
) -> dict[str, ChannelStats]:
    """Run ``data`` (first ``max_samples``) through ``module`` and collect input statistics of ``names``.

    For token models, positions where the input called ``token_mask`` is 0 (padding) are left out when the
    layer input has the mask's leading shape [batch, seq, ...].
    """
    wanted = list(dict.fromkeys(names))
    stats: dict[str, ChannelStats] = {}
    current_mask: list[torch.Tensor | None] = [None]

    def hook_for(name: str, layer: nn.Module):  # type: ignore[no-untyped-def]
        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().float()
            mask = current_mask[0]
            if isinstance(layer, nn.Linear) and mask is not None and x.dim() >= 3 and x.shape[:2] == mask.shape:
                x = x[mask.bool()]
            flat = _flatten_channels(layer, x)  # float32 per batch, accumulated in float64
            s = stats.get(name)
            g = (flat.T @ flat).double() if gram else None
            sq, ab, sm = (flat * flat).sum(0).double(), flat.abs().sum(0).double(), flat.sum(0).double()
            if s is None:
                stats[name] = ChannelStats(sq, ab, sm, flat.shape[0], g)
            else:
                s.sum_sq += sq
                s.sum_abs += ab
                s.sum += sm
                s.count += flat.shape[0]
                if g is not None and s.gram is not None:
                    s.gram += g

        return hook

    handles = [get_module(module, n).register_forward_pre_hook(hook_for(n, get_module(module, n))) for n in wanted]
    was_training = module.training
    module.eval()
    try:
        subset = data.take(max_samples)
        mask_idx = list(input_names).index(token_mask) if token_mask is not None and token_mask in input_names else None
        for tensors in iter_batches(subset, input_names, batch_size):
            tensors = trim_padding(tensors, input_names)
            current_mask[0] = tensors[mask_idx] if mask_idx is not None else None
            module(*tensors)
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    missing = [n for n in wanted if n not in stats]
    if missing:
        raise UserInputError(f"layers {missing} never ran on the calibration data", "check the layer names / inputs")
    return stats


@torch.no_grad()
def fold_mean_shift(layer: nn.Module, removed: torch.Tensor, mean: torch.Tensor) -> None:
    """Add ``removed · E[x]`` to ``layer``'s bias (created if missing): ``removed`` is the part of the
    weight that pruning takes away (same shape as the weight), ``mean`` the calibration mean of the
    layer's input channels. The layer's output then keeps its mean on the calibration data; for a conv
    this assumes the mean holds at every pixel (exact away from zero-padded borders)."""
    if not isinstance(layer, LAYER_TYPES):
        return
    w = layer.weight
    m = mean.to(w.dtype)
    if removed.dim() == 4:
        g = layer.groups if isinstance(layer, nn.Conv2d) else 1
        per_in, out = removed.shape[1], removed.shape[0]
        # input channels seen by each output filter: its group's slice of the mean
        m_rows = m.reshape(g, per_in).repeat_interleave(out // g, dim=0)  # [out, per_in]
        delta = (removed.sum(dim=(2, 3)) * m_rows).sum(1)
    else:
        delta = removed @ m
    if not bool(delta.abs().gt(0).any()):
        return
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype), requires_grad=w.requires_grad)
    layer.bias.add_(delta)


@torch.no_grad()
def compensate_bias(layer: nn.Module, idxs: Sequence[int] | torch.Tensor, mean: torch.Tensor) -> None:
    """Before input channels ``idxs`` of ``layer`` are removed, fold their mean contribution
    ``W[:, idxs] · E[x_idxs]`` into the bias (:func:`fold_mean_shift`). A pruned channel is rarely zero on
    average — a BatchNorm shift through ReLU makes a "weak" channel a constant — and dropping that
    constant would shift every downstream activation. Grouped convs are left alone."""
    if not isinstance(layer, LAYER_TYPES) or (isinstance(layer, nn.Conv2d) and layer.groups != 1):
        return
    idx = torch.as_tensor(list(idxs) if not isinstance(idxs, torch.Tensor) else idxs, dtype=torch.long)
    if idx.numel() == 0:
        return
    removed = torch.zeros_like(layer.weight)
    removed[:, idx] = layer.weight.detach()[:, idx]
    fold_mean_shift(layer, removed, mean)


@torch.no_grad()
def output_spatial(module: nn.Module, example_inputs: Sequence[torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Input and output spatial size (H_in, W_in, H_out, W_out) of every Conv2d for one forward pass."""
    sizes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):

            def hook(_m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor, name: str = name) -> None:
                sizes[name] = (*args[0].shape[-2:], *out.shape[-2:])

            handles.append(m.register_forward_hook(hook))
    was_training = module.training
    module.eval()
    try:
        module(*example_inputs)
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    return sizes
