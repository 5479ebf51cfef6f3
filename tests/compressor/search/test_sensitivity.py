"""Channel-dependency probe and per-layer sensitivity (fake techniques in torch), with its disk cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from devicefit.compressor.latency import LayerSpec
from devicefit.compressor.search.deps import find_deps
from devicefit.compressor.search.sensitivity import measure_sensitivity
from devicefit.compressor.search.space import SpaceConfig, build_space
from devicefit.data import Dataset


class Net(nn.Module):
    """conv -> bn -> relu -> depthwise -> pointwise (+ residual over the block) -> fc1 -> relu -> fc2 -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.fc1 = nn.Linear(8 * 16, 64)
        self.fc2 = nn.Linear(64, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        h = h + self.pw(torch.relu(self.dw(h)))  # residual: conv's channels are tied to pw's
        h = torch.nn.functional.avg_pool2d(h, 2).flatten(1)
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(h)))))


LAYERS = ["conv", "dw", "pw", "fc1", "fc2", "head"]


def _net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


def test_deps_probe_finds_prunable_layers_and_consumers() -> None:
    deps = find_deps(_net(), (torch.randn(2, 1, 8, 8),), LAYERS)
    # fc1's neurons feed only fc2 (through a ReLU); fc2's only head
    assert "fc1" in deps.prunable and deps.consumers["fc1"] == ("fc2",)
    assert "fc2" in deps.prunable and deps.consumers["fc2"] == ("head",)
    # conv and pw write the residual stream; head writes the model output; dw is depthwise
    assert {"conv", "pw", "head", "dw"}.isdisjoint(deps.prunable)


def _data(n: int = 64) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset({"x": rng.standard_normal((n, 1, 8, 8)).astype(np.float32)}, rng.integers(0, 10, n), "synthetic")


def _specs() -> list[LayerSpec]:
    net = _net()
    return [LayerSpec(n, "conv" if isinstance(m, nn.Conv2d) else "linear", sum(p.numel() for p in m.parameters()), 1000, 10, 10)
            for n, m in net.named_modules() if n in LAYERS]


def test_sensitivity_ranks_and_caches(tmp_path: Path) -> None:
    net = _net()
    cfg = SpaceConfig(ratios={"prune": (0.5,), "lowrank": (0.75,)}, settings={"lowrank": {"kind": "svd"}})
    space = build_space(_specs(), config=cfg, prunable={"fc1", "fc2"})
    data = _data()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    t1 = measure_sensitivity(net, space, data, input_names=["x"], metric="top1_agreement", model_hash="abc",
                             cache_dir=tmp_path)
    # the module is restored after every fake application
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert t1.cached == 0 and t1.samples == 64 and t1.baseline == 1.0
    for layer in space.layers:
        assert set(t1.drops[layer]) == {o.label for o in space.atomic(layer) if o.parts()}
    # int8 barely moves outputs; removing half of fc1's neurons or 3/4 of a layer's rank moves them far more
    assert t1.devs["fc1"]["int8_dynamic"] < 1e-3
    assert t1.devs["fc1"]["structured@0.5"] > 10 * t1.devs["fc1"]["int8_dynamic"]
    assert t1.devs["fc2"]["lowrank@0.75"] > t1.devs["fc2"]["int8_static"]
    assert t1.drops["fc1"]["structured@0.5"] >= t1.drops["fc1"]["int8_dynamic"]
    opt = space.option("fc1", "structured@0.5+int8_dynamic")
    assert t1.drop("fc1", opt) == pytest.approx(max(0, t1.drops["fc1"]["structured@0.5"]) + max(0, t1.drops["fc1"]["int8_dynamic"]))
    # second run: every entry from the disk cache (keyed by model hash + data fingerprint + option)
    t2 = measure_sensitivity(net, space, data, input_names=["x"], metric="top1_agreement", model_hash="abc",
                             cache_dir=tmp_path)
    assert t2.cached == sum(len(v) for v in t1.drops.values()) and t2.drops == t1.drops
    # another data slice is a cache miss
    t3 = measure_sensitivity(net, space, data.take(32), input_names=["x"], metric="top1_agreement", model_hash="abc",
                             cache_dir=tmp_path)
    assert t3.cached == 0


def test_sensitivity_under_a_budget_estimates_from_local_errors(tmp_path: Path) -> None:
    net = _net()
    cfg = SpaceConfig(ratios={"prune": (0.5,), "lowrank": (0.75,)}, settings={"lowrank": {"kind": "svd"}})
    space = build_space(_specs(), config=cfg, prunable={"fc1", "fc2"})
    data = _data()
    full = measure_sensitivity(net, space, data, input_names=["x"], metric="top1_agreement", model_hash="h1")
    cheap = measure_sensitivity(net, space, data, input_names=["x"], metric="top1_agreement", model_hash="h1",
                                cache_dir=tmp_path, max_full=5)
    n = sum(len(v) for v in full.drops.values())
    groups = sum(len({o.structural for o in space.atomic(layer) if o.parts()}) for layer in space.layers)
    assert cheap.estimated == n - groups and cheap.cached == 0  # one full evaluation per layer and option group
    # the anchors are exact; estimates keep the ordering that matters: structural >> int8 on fc1
    for layer in space.layers:
        anchors = [lab for lab in cheap.devs[layer] if cheap.devs[layer][lab] == full.devs[layer][lab]]
        assert anchors
    assert cheap.devs["fc1"]["structured@0.5"] > 10 * cheap.devs["fc1"]["int8_dynamic"]
    # a later run without the budget recomputes the estimated entries for real
    again = measure_sensitivity(net, space, data, input_names=["x"], metric="top1_agreement", model_hash="h1",
                                cache_dir=tmp_path)
    assert again.estimated == 0 and again.cached == groups and again.devs == full.devs


def test_plan_drop_is_bounded_and_additive_when_small() -> None:
    from devicefit.compressor.search.sensitivity import SensitivityTable

    space = build_space(_specs(), prunable={"fc1", "fc2"})
    t = SensitivityTable("top1_agreement", 1.0, 8, drops={layer: {"int8_static": 0.5} for layer in LAYERS})
    labels = space.uniform("int8_static")
    # six layers each flipping half the samples: the sum says 3.0, a drop above the whole metric
    assert t.plan_drop(space, labels) == pytest.approx(1 - 0.5**6) and t.plan_drop(space, labels) < 1
    small = SensitivityTable("top1_agreement", 1.0, 8, drops={layer: {"int8_static": 1e-4} for layer in LAYERS})
    assert small.plan_drop(space, labels) == pytest.approx(6e-4, rel=1e-3)
    assert t.plan_drop(space, space.uniform("float")) == 0.0


def test_joint_drop_applies_the_whole_plan_and_restores_the_module() -> None:
    from devicefit.compressor.search.sensitivity import JointDrop

    net = _net()
    cfg = SpaceConfig(ratios={"prune": (0.5,), "lowrank": (0.75,)}, settings={"lowrank": {"kind": "svd"}})
    space = build_space(_specs(), config=cfg, prunable={"fc1", "fc2"})
    data = _data()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    joint = JointDrop(net, space, data, input_names=["x"], metric="top1_agreement")
    assert joint(space.uniform("float")) == 0.0
    one = measure_sensitivity(net, space, data, input_names=["x"], metric="top1_agreement", model_hash="j")
    lr = space.uniform("float")
    lr["fc2"] = "lowrank@0.75"
    assert joint(lr) == pytest.approx(one.drops["fc2"]["lowrank@0.75"])  # one layer: the table's own number
    heavy = joint({**space.uniform("lowrank@0.75"), "fc1": "structured@0.5", "fc2": "structured@0.5"})
    assert 0.0 < heavy <= 1.0 and heavy >= joint(lr) - 1e-9
    assert joint.calls == 4
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
