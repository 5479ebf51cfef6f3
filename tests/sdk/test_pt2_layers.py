"""Issue #17: a ``.pt2`` (torch.export) file gets the same search as the module it was exported from.

The unlifted module ``torch.export.load(...).module()`` calls ``aten.linear`` / ``aten.conv2d`` on bare
parameters; :func:`devicefit.models_pt2.restore_layers` gives it real Linear / Conv / BatchNorm modules back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from devicefit.compressor.search.config import SearchConfig
from devicefit.compressor.search.progress import NoProgress
from devicefit.compressor.search.setup import analyze_model
from devicefit.compressor.search.space import SpaceConfig, build_space
from devicefit.models import load_model


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, stride=2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv1(x)))
        return self.head(torch.relu(self.conv2(x)))


class SmallMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.norm = nn.Linear(64, 128), nn.LayerNorm(128)
        self.fc2, self.fc3 = nn.Linear(128, 128), nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.norm(self.fc1(x))))))


def _digits(kind: str) -> np.ndarray:
    from sklearn.datasets import load_digits

    x = (load_digits().data[:96] / 16.0).astype(np.float32)
    return x.reshape(-1, 1, 8, 8) if kind == "cnn" else x


def _saved(kind: str, tmp_path: Path) -> tuple[nn.Module, Path, Path]:
    """The model (seeded, eval mode), its .pt2 (dynamic batch) and an .npz of digits labelled by it."""
    torch.manual_seed(0)
    model = (SmallCNN() if kind == "cnn" else SmallMLP()).eval()
    if kind == "cnn":
        with torch.no_grad():  # statistics that are not the identity, so a BatchNorm left out would show
            model.bn.running_mean.uniform_(-0.5, 0.5)  # type: ignore[union-attr]
            model.bn.running_var.uniform_(0.5, 2.0)  # type: ignore[union-attr]
    x = _digits(kind)
    ep = torch.export.export(model, (torch.from_numpy(x[:2]),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / f"{kind}.pt2"
    torch.export.save(ep, str(path))
    with torch.no_grad():
        labels = model(torch.from_numpy(x)).argmax(-1).numpy()
    data = tmp_path / f"{kind}.npz"
    np.savez(data, x=x, labels=labels)
    return model, path, data


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_a_pt2_has_the_modules_layers_dependencies_and_space(kind: str, tmp_path: Path) -> None:
    model, path, data = _saved(kind, tmp_path)
    from_pt2 = load_model(str(path), data=data)
    from_module = load_model(model, data=data)
    assert from_pt2.module is not None and from_module.module is not None
    mods = dict(from_pt2.module.named_modules())
    expected = {"cnn": {"conv1": nn.Conv2d, "bn": nn.BatchNorm2d, "conv2": nn.Conv2d, "head.1": nn.Linear,
                        "head.3": nn.Linear},
                "mlp": {"fc1": nn.Linear, "norm": nn.LayerNorm, "fc2": nn.Linear, "fc3": nn.Linear}}[kind]
    assert {n: type(mods[n]) for n in expected} == expected
    # the same parameter tensors, the same outputs
    x = torch.from_numpy(_digits(kind)[:5])
    with torch.no_grad():
        torch.testing.assert_close(from_pt2.module(x), model(x), rtol=0, atol=0)
    # the engine's view: same layers (params, MACs, shapes), same channel dependencies, same options per layer
    facts = [analyze_model(b, SearchConfig(), NoProgress()) for b in (from_pt2, from_module)]
    assert facts[0].specs == facts[1].specs and len(facts[0].specs) == (4 if kind == "cnn" else 3)
    assert facts[0].deps == facts[1].deps and facts[0].deps.prunable
    spaces = [build_space(f.specs, config=SpaceConfig(), has_calibration=True, prunable=f.deps.prunable) for f in facts]
    assert {layer: spaces[0].labels(layer) for layer in spaces[0].layers} == {
        layer: spaces[1].labels(layer) for layer in spaces[1].layers}
    assert all(len(spaces[0].labels(layer)) > 2 for layer in spaces[0].layers)


def test_a_shared_weight_is_left_alone(tmp_path: Path) -> None:
    """A Linear called twice (one weight, two calls) cannot become one module per call: it stays a graph
    call, the model still runs unchanged, and the other layers are restored."""
    from devicefit.models_pt2 import restore_layers

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shared, self.out = nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.shared(torch.relu(self.shared(x))))

    torch.manual_seed(0)
    model = Twice().eval()
    gm: Any = torch.export.export(model, (torch.randn(2, 8),)).module()
    assert restore_layers(gm) == ["out"]
    assert type(gm.get_submodule("shared")) is nn.Module and isinstance(gm.get_submodule("out"), nn.Linear)
    x = torch.randn(2, 8)
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)


def test_a_pt2_exported_at_a_fixed_batch_is_refused_with_the_fix(tmp_path: Path) -> None:
    import devicefit
    from devicefit.errors import UserInputError

    torch.manual_seed(0)
    x = _digits("mlp")
    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(SmallMLP().eval(), (torch.from_numpy(x[:2]),)), str(path))
    np.savez(tmp_path / "d.npz", x=x, labels=np.zeros(len(x), dtype=np.int64))
    with pytest.raises(UserInputError, match="exported for a fixed batch") as err:
        devicefit.fit(str(path), str(tmp_path / "d.npz"), out=tmp_path / "out", progress=False)
    assert "Dim('batch')" in str(err.value.fix)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_fit_a_pt2_measures_compressed_candidates(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`fit model.pt2` (failed with "has no Linear / Conv layers to compress") searches per-layer options and
    measures compressed candidates. The binding budget is the file size (half the fp32 weights; the profile's
    50 ms latency budget is far off): fp32 cannot pass, so compressed plans are measured whatever the timings;
    whether one also beats fp32's latency (the fit never hands back a slower one) is up to the host."""
    import devicefit

    monkeypatch.setenv("DEVICEFIT_MEASUREMENTS_DB", str(tmp_path / "m.db"))
    model, path, data = _saved(kind, tmp_path)
    half_mb = sum(p.numel() for p in model.parameters()) * 4 / 1e6 / 2
    res = devicefit.fit(str(path), str(data), profile="localhost", max_accuracy_drop=0.1, max_size_mb=half_mb,
                        trials=15, max_measurements=3, out=tmp_path / "out", progress=False, sensitivity_samples=32,
                        runs=10, batch_size=8, threads=1, distill_steps=None)
    rep = res.to_dict()
    layers = [layer["name"] for layer in rep["layers"]]
    assert layers == (["conv1", "conv2", "head.1", "head.3"] if kind == "cnn" else ["fc1", "fc2", "fc3"])
    assert rep["search"]["space"]["options"] > 2 * len(layers)
    compressed = [p for p in rep["pareto"] if p["source"] == "measured" and set(p["summary"]) != {"float"}]
    assert compressed and rep["search"]["failed_candidates"] == []
    assert any(p["size_bytes"] <= half_mb * 1e6 and p["metric_drop"] <= 0.1 for p in compressed)
    assert rep["result"]["latency"]["source"] == "measured" and rep["result"]["metric"]["name"] == "accuracy"
    if res.budget_met:
        assert set(rep["result"]["plan_summary"]) != {"float"} and rep["result"]["size_bytes"] <= half_mb * 1e6
