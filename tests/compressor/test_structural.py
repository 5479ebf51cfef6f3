"""apply_structural: prune → low-rank → masks on a copy, with every refusal reported."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from devicefit.compressor.plan import LayerChoice, Plan
from devicefit.compressor.structural import StructuralResult, apply_structural
from devicefit.compressor.techniques import (
    ChannelPrune,
    LowRank,
    MagnitudePrune,
    SemiStructuredPrune,
    WandaPrune,
)
from devicefit.data import Dataset

torch.set_num_threads(1)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 48)
        self.fc3 = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean(dim=(2, 3))
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _run(plan: Plan) -> tuple[Net, StructuralResult]:
    torch.manual_seed(0)
    net = Net().eval()
    data = Dataset({"x": np.random.default_rng(0).normal(size=(32, 3, 8, 8)).astype(np.float32)})
    return net, apply_structural(net, plan, data, (torch.zeros(2, 3, 8, 8),), ["x"])


def _by_layer(res: StructuralResult) -> tuple[dict[str, str], dict[str, str]]:
    return {s.layer: s.detail for s in res.applied}, {s.layer: s.detail for s in res.refused}


def test_families_compose_in_order_on_a_copy() -> None:
    plan = Plan.per_layer({
        "conv1": LayerChoice(prune=ChannelPrune(0.5)),
        "conv2": LayerChoice(lowrank=LowRank(ratio=0.5, kind="tucker2")),
        "fc1": LayerChoice(prune=ChannelPrune(0.25), lowrank=LowRank(ratio=0.5, kind="asvd")),
        "fc2": LayerChoice(prune=WandaPrune(0.5), lowrank=LowRank(ratio=0.5)),
        "fc3": LayerChoice(prune=MagnitudePrune(0.5)),
    })
    net, res = _run(plan)
    applied, refused = _by_layer(res)
    assert net.conv1.out_channels == 16 and isinstance(net.fc2, nn.Linear)  # the input module is untouched
    m = res.module
    assert m.conv1.out_channels == 8 and m.conv2.down.in_channels == 8  # structured first, then Tucker-2 on 8 in
    assert m.fc1.down.out_features == m.fc1.rank and m.fc1.up.out_features == 48  # pruned 64→48, then factorized
    assert m.fc2.down.in_features == 48  # fc2's input shrank with fc1
    for part in (m.fc2.down, m.fc2.up):  # Wanda applied to both factors
        assert abs(float((part.weight == 0).float().mean()) - 0.5) < 0.02
    assert abs(float((m.fc3.weight == 0).float().mean()) - 0.5) < 1e-6
    assert set(applied) == {"conv1", "conv2", "fc1", "fc2", "fc3"} and not refused
    assert m(torch.zeros(4, 3, 8, 8)).shape == (4, 10)
    assert res.to_dict()["applied"][0]["family"] == "prune"


def test_impossible_requests_are_refused_with_reasons() -> None:
    plan = Plan.per_layer({
        "conv1": LayerChoice(prune=SemiStructuredPrune()),  # 3·3·3 = 27 inputs: not a multiple of 4
        "conv2": LayerChoice(prune=SemiStructuredPrune()),  # 16·9 = 144: fine
        "fc3": LayerChoice(prune=ChannelPrune(0.5), lowrank=LowRank(ratio=None, energy=0.99999)),
    })
    _, res = _run(plan)
    applied, refused = _by_layer(res)
    assert "multiple of m=4" in refused["conv1"]
    assert "conv2" in applied
    fc3 = {s.family: s.detail for s in res.refused if s.layer == "fc3"}
    assert "model output" in fc3["prune"] and "would not reduce" in fc3["lowrank"]


def test_no_calibration_data_refuses_data_hungry_techniques() -> None:
    torch.manual_seed(0)
    plan = Plan.uniform(prune=WandaPrune(0.5), match="fc*")
    res = apply_structural(Net().eval(), plan, None, (torch.zeros(1, 3, 8, 8),), ["x"])
    assert {s.layer for s in res.refused} == {"fc1", "fc2", "fc3"} and not res.applied
