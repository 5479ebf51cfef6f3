"""Channel dependencies for the search: the same answer the structured pruner uses
(:mod:`devicefit.compressor.prune.deps`, torch-pruning's dependency graph + the transformer sites)."""

from devicefit.compressor.prune.deps import Deps, find_deps

__all__ = ["Deps", "find_deps"]
