"""What a "compressible layer" is — the one definition the plan, the search, the passes and ``compress`` share.

* :data:`COMPRESSIBLE`: every layer a plan can name and the search gives options to: ``nn.Linear`` and
  convolutions of any dimension (subclasses included: EfficientNet's ``Conv2dStaticSamePadding`` is an
  ``nn.Conv2d``). Quantization acts on all of them (they export to ONNX ``MatMul`` / ``Gemm`` / ``Conv``).
* :data:`REWRITABLE`: the subset the torch-side passes (channel pruning, low-rank, unstructured / N:M masks)
  rewrite: ``nn.Linear`` and ``nn.Conv2d``. A prune / low-rank entry on another compressible layer (a
  ``Conv1d``) is refused with a reason by :func:`devicefit.compressor.structural.apply_structural`.
"""

from __future__ import annotations

from torch import nn

COMPRESSIBLE: tuple[type[nn.Linear], type[nn.Conv1d], type[nn.Conv2d], type[nn.Conv3d]] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
)
REWRITABLE: tuple[type[nn.Linear], type[nn.Conv2d]] = (nn.Linear, nn.Conv2d)


def is_compressible(m: nn.Module) -> bool:
    return isinstance(m, COMPRESSIBLE)


def is_rewritable(m: nn.Module) -> bool:
    return isinstance(m, REWRITABLE)


def layer_names(module: nn.Module) -> list[str]:
    """Qualified names of every compressible layer of ``module`` (the names plans refer to), in module order."""
    return [n for n, m in module.named_modules() if n and isinstance(m, COMPRESSIBLE)]


__all__ = ["COMPRESSIBLE", "REWRITABLE", "is_compressible", "is_rewritable", "layer_names"]
