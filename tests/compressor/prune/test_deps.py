"""One source of channel dependencies: what the search prices (a layer and its consumers shrink) is exactly
what the structured pruner does, on a model where the old NaN probe and the pruner disagreed (a residual
stage whose producers are coupled through the add; a conv read through a flatten)."""

from __future__ import annotations

import torch
from torch import nn

from devicefit.compressor.layers import layer_names
from devicefit.compressor.prune.deps import find_deps
from devicefit.compressor.prune.structured import prune_structured
from devicefit.compressor.search import deps as search_deps
from devicefit.compressor.techniques import ChannelPrune


class Stage(nn.Module):
    """stem → a block with a residual (expand → project, + input) → a reader → flatten → fc → head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.expand = nn.Conv2d(16, 32, 1)
        self.project = nn.Conv2d(32, 16, 1)
        self.reader = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 32)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = h + self.project(torch.relu(self.expand(h)))  # project's channels are tied to stem's
        h = torch.relu(self.reader(h))
        return self.head(torch.relu(self.fc(h.flatten(1))))


def _changed(before: nn.Module, after: nn.Module) -> set[str]:
    b = {n: m.weight.shape for n, m in before.named_modules() if hasattr(m, "weight")}
    return {n for n, m in after.named_modules() if hasattr(m, "weight") and m.weight.shape != b[n]}


def test_the_search_prices_exactly_what_the_pruner_does() -> None:
    import copy

    torch.manual_seed(0)
    net = Stage().eval()
    example = (torch.randn(2, 3, 4, 4),)
    names = layer_names(net)
    deps = find_deps(net, example, names)
    assert search_deps.find_deps is find_deps  # the search reads the same definition
    # the old NaN probe called stem and project prunable alone (the NaN stays in their channels) and reader
    # not (the flatten spreads each channel over 16 inputs of fc); the pruner does the opposite
    assert deps.prunable == {"expand", "reader", "fc"}
    assert deps.consumers == {"expand": ("project",), "reader": ("fc",), "fc": ("head",)}
    for layer in names:
        pruned = copy.deepcopy(net)
        out = prune_structured(pruned, {layer: ChannelPrune(0.5)}, example_inputs=example, channel_multiple=1)
        changed = _changed(net, pruned)
        if layer in deps.prunable:
            assert layer in out.applied and changed == {layer, *deps.consumers[layer]}, (layer, changed)
        else:  # coupled (stem / project: the residual add) or a model output (head): more, or nothing
            assert changed != {layer, *deps.consumers.get(layer, ())} or not changed, (layer, changed)
    # coupled producers shrink together: pruning project alone also prunes stem
    pruned = copy.deepcopy(net)
    prune_structured(pruned, {"project": ChannelPrune(0.5)}, example_inputs=example, channel_multiple=1)
    assert {"stem", "project"} <= _changed(net, pruned)
