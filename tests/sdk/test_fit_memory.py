"""A fit whose binding budget is memory, measured on a local agent (the model's own memory, not the process's).

An MLP built here (8.9 M weights: a 35.8 MB fp32 file) on a profile whose memory budget (40 MB) no float
plan meets: onnxruntime holds the weights plus the file while it loads, so fp32 reads ~55 MB of its own
memory (54.7 MB on a 2-core x86 host), a plan with its big layers in 8 or 4 bits ~14–25 MB (int4 weight-only
on every layer: 13.9 MB). The agent measures that (peak RSS over the idle agent); the whole agent process is
~60 MB more, so a budget checked against it (as it was) could be met by nothing. The latency budget is far
off (1 s) and the drop budget loose: memory is what binds. ~50 s on that host (slow).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

BUDGET_MB = 40.0

pytestmark = [pytest.mark.timeout(600)]


class WideMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(256, 2048), nn.Linear(2048, 2048), nn.Linear(2048, 2048)
        self.head = nn.Linear(2048, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))))


def _profile() -> Any:
    from devicefit.device_profiles import load_profile
    from devicefit.device_profiles.schema import Budget

    host = load_profile("localhost")
    return dataclasses.replace(host, budget=Budget(latency_ms=1000.0, memory_mb=BUDGET_MB, storage_mb=1000.0,
                                                   accuracy_drop=0.05))


@pytest.mark.slow
def test_fit_with_memory_as_the_binding_budget_rejects_fp32_and_picks_a_plan_under_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import devicefit
    from devicefit.compressor.search.space import SpaceConfig

    monkeypatch.setenv("DEVICEFIT_MEASUREMENTS_DB", str(tmp_path / "m.db"))
    torch.manual_seed(0)
    model = WideMLP().eval()
    x = np.random.default_rng(0).standard_normal((128, 256)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    res = devicefit.fit(model, str(tmp_path / "d.npz"), profile=_profile(), out=tmp_path / "out", progress=False,
                        trials=12, max_measurements=2, probe=False, sensitivity_samples=32, sens_seconds=5.0,
                        runs=10, threads=1, distill_steps=None,
                        space=SpaceConfig(families={"quant": ("int8_dynamic", "int4_weight_only")}))
    rep = res.to_dict()
    budget, base, result = rep["budget"], rep["baseline"], rep["result"]
    assert budget["memory_mb"] == BUDGET_MB and budget["origin"]["memory_mb"] == "profile"
    assert "own peak memory" in rep["benchmark"]["memory"] and rep["benchmark"]["min_seconds"] == 0.5
    fp32_file_mb = base["size_bytes"] / 1e6
    assert 35.0 < fp32_file_mb < 37.0
    # fp32's own memory: at least its weights, over the budget — and far below the agent's whole process
    assert fp32_file_mb <= base["memory_mb"] <= 3 * fp32_file_mb and base["memory_mb"] > BUDGET_MB
    fp32_row = next(p for p in rep["pareto"] if p["summary"] == {"float": 4})
    assert not fp32_row["passes"] and fp32_row["memory_mb"] == base["memory_mb"]
    # the pick: measured, within every budget, its own memory under the memory budget
    assert res.budget_met and result["budget_met"] and result["shortfall"] == {}
    assert result["latency"]["source"] == "measured"
    assert result["memory_mb"] is not None and 0 < result["memory_mb"] <= BUDGET_MB
    assert result["size_bytes"] < fp32_file_mb * 1e6 / 2.5  # the big layers are in 8 bits or less
    assert set(result["plan_summary"]) - {"float"}  # a quantized plan
    for p in rep["pareto"]:  # every measured candidate judged on its own memory
        if p["source"] == "measured":
            assert p["passes"] == (p["memory_mb"] <= BUDGET_MB and (p["metric_drop"] or 0.0) <= 0.05
                                   and p["measured_ms"] <= 1000.0)
            assert p["predicted_memory_mb"] > 0
