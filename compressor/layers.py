"""What a "compressible layer" is — the one definition the plan, the search, the passes and ``compress`` share.

* :data:`COMPRESSIBLE`: every layer a plan can name and the search gives options to: ``nn.Linear``,
  convolutions of any dimension (subclasses included: EfficientNet's ``Conv2dStaticSamePadding`` is an
  ``nn.Conv2d``) and the recurrent layers ``nn.GRU`` / ``nn.LSTM`` (:data:`RECURRENT`). Quantization acts on
  all of them (they export to ONNX ``MatMul`` / ``Gemm`` / ``Conv`` / ``GRU`` / ``LSTM``).
* :data:`REWRITABLE`: the subset the torch-side passes (channel pruning, low-rank, unstructured / N:M masks)
  rewrite: ``nn.Linear`` and ``nn.Conv2d``. A prune / low-rank entry on another compressible layer (a
  ``Conv1d``, a ``GRU``) is refused with a reason by :func:`devicefit.compressor.structural.apply_structural`.
* :func:`layer_kind`: the kind techniques declare they act on (``layer_types``): ``linear``, ``conv``,
  ``gru``, ``lstm``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from devicefit.compressor.techniques import RECURRENT_KINDS

RECURRENT: tuple[type[nn.Module], ...] = (nn.GRU, nn.LSTM)
COMPRESSIBLE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, *RECURRENT)
REWRITABLE: tuple[type[nn.Linear], type[nn.Conv2d]] = (nn.Linear, nn.Conv2d)


def is_compressible(m: nn.Module) -> bool:
    return isinstance(m, COMPRESSIBLE)


def is_rewritable(m: nn.Module) -> bool:
    return isinstance(m, REWRITABLE)


def is_recurrent(m: nn.Module) -> bool:
    return isinstance(m, RECURRENT)


def layer_names(module: nn.Module) -> list[str]:
    """Qualified names of every compressible layer of ``module`` (the names plans refer to), in module order."""
    return [n for n, m in module.named_modules() if n and isinstance(m, COMPRESSIBLE)]


def layer_kind(m: nn.Module) -> str:
    """``gru`` / ``lstm`` for a recurrent layer, ``conv`` for a convolution, else ``linear``."""
    if isinstance(m, nn.GRU):
        return "gru"
    if isinstance(m, nn.LSTM):
        return "lstm"
    return "conv" if isinstance(m, nn.modules.conv._ConvNd) else "linear"


def weight_names(m: nn.Module) -> list[str]:
    """The layer's own weight matrices that quantization acts on: ``weight``, or a recurrent layer's
    ``weight_ih_l*`` / ``weight_hh_l*`` (and ``weight_hr_l*``, an LSTM's projection) of every layer and direction."""
    if is_recurrent(m):
        return [n for n, _ in m.named_parameters(recurse=False) if n.startswith("weight_")]
    return ["weight"]


def recurrent_macs(m: nn.Module, input_shape: Sequence[int] | None) -> int:
    """MACs of one run of a recurrent layer on ``input_shape``: each step multiplies every weight matrix
    (gates × (input + hidden) × hidden per layer and direction, i.e. the sum of the weights' sizes) by one
    vector, per sequence element and batch row."""
    if not input_shape:
        return 0
    dims = [int(d) for d in input_shape]
    if len(dims) == 2:  # unbatched (L, H_in)
        steps, batch = dims[0], 1
    elif getattr(m, "batch_first", False):
        batch, steps = dims[0], dims[1]
    else:
        steps, batch = dims[0], dims[1]
    per_step = sum(int(getattr(m, n).numel()) for n in weight_names(m))
    return per_step * steps * batch


__all__ = ["COMPRESSIBLE", "RECURRENT", "RECURRENT_KINDS", "REWRITABLE", "is_compressible", "is_recurrent",
           "is_rewritable", "layer_kind", "layer_names", "recurrent_macs", "weight_names"]
