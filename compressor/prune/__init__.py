"""Pruning: unstructured magnitude / Wanda and N:M (weights zeroed, shapes kept — smaller only when stored
sparse or compressed, no dense-runtime speed-up) and structured (channels, heads, FFN channels physically
removed — a smaller and faster graph)."""

from devicefit.compressor.prune.magnitude import magnitude_prune
from devicefit.compressor.prune.nm import nm_mask, nm_prune
from devicefit.compressor.prune.structured import StructuredOutcome, prune_structured
from devicefit.compressor.prune.wanda import wanda_prune

__all__ = ["StructuredOutcome", "magnitude_prune", "nm_mask", "nm_prune", "prune_structured", "wanda_prune"]
