"""A short host fit of a GRU classifier built here (issue #17: the GRU was invisible, only the Linear head was
offered): the GRU is a layer of the search, probed, measured and reported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from devicefit.data import Dataset
from devicefit.models import load_model

pytestmark = [pytest.mark.timeout(600)]


class GruClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(12, 64, num_layers=2, batch_first=True)
        self.fc = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.fc(y[:, -1])


@pytest.mark.slow
def test_fit_gru_classifier_searches_and_measures_the_gru(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import devicefit

    monkeypatch.setenv("DEVICEFIT_MEASUREMENTS_DB", str(tmp_path / "m.db"))
    monkeypatch.setenv("DEVICEFIT_CACHE", str(tmp_path / "cache"))  # no latency model learned by an earlier run
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x = np.random.default_rng(0).normal(size=(128, 20, 12)).astype(np.float32)
    net = GruClassifier().eval()
    with torch.no_grad():
        labels = net(torch.from_numpy(x)).argmax(1).numpy()
    bundle = load_model(net, example_inputs=torch.from_numpy(x[:2]), data=Dataset({"x": x}, labels, "random sequences"))
    out = tmp_path / "out"
    # a storage budget the GRU's fp32 weights (40k params, 189 kB file) miss and int8 GRU weights meet
    res = devicefit.fit(bundle, profile="localhost", max_size_mb=0.1, max_accuracy_drop=0.05, trials=8,
                        max_measurements=3, out=out, progress=False, sensitivity_samples=64, runs=10, batch_size=4,
                        threads=1)
    rep = json.loads((out / "report.json").read_text())
    assert rep == json.loads(json.dumps(res.to_dict(), default=str))
    layers = {li["name"]: li for li in rep["layers"]}
    assert set(layers) == {"rnn", "fc"} and layers["rnn"]["kind"] == "gru" and not layers["rnn"]["prunable"]
    # per run of 4 samples: 3 gates x ((12 + 64) x 64 + (64 + 64) x 64) MACs per step, 20 steps; a non-zero prior
    assert layers["rnn"]["macs"] == 4 * 20 * 3 * ((12 + 64) * 64 + (64 + 64) * 64) and layers["rnn"]["predicted_ms"] > 0
    # int8 storage of the GRU is a scheme of the search: probed on the model itself, measured
    probes = {p["probe"]: p for p in rep["search"]["calibration"]}
    probe = probes["probe:int8_weight_only"]
    assert probe["error"] is None and probe["measured_ms"] > 0 and probe["summary"] == {"int8_weight_only": 1, "float": 1}
    fp32 = next(p for p in rep["pareto"] if "fp32" in p["tags"])
    stored = [p for p in rep["pareto"] if p["source"] == "measured" and "int8_weight_only" in p["summary"]]
    # measured: 75 kB (0.40x fp32), no accuracy drop, within the size budget
    assert stored and all(p["size_bytes"] < 0.5 * fp32["size_bytes"] for p in stored)
    assert any(p["passes"] and p["metric_drop"] <= 0.05 and p["size_bytes"] <= 0.1e6 for p in stored)
