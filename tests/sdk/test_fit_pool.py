"""A device pool: ``fit`` over two local agents — one search-worker on the second board, in parallel."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from devicefit.errors import UserInputError
from devicefit.fitting.config import FitConfig


def test_a_pool_needs_the_fits_own_device_a_spec_and_distinct_boards() -> None:
    with pytest.raises(UserInputError, match="without the fit's own device"):
        FitConfig.create("zoo:digits-cnn", pool=["grpc://127.0.0.1:1"])
    with pytest.raises(UserInputError, match="appears twice"):
        FitConfig.create("zoo:digits-cnn", device="grpc://127.0.0.1:1", pool=["grpc://127.0.0.1:1"])
    with pytest.raises(UserInputError, match="model spec"):
        FitConfig.create(object(), device="grpc://127.0.0.1:1", pool="grpc://127.0.0.1:2")
    c = FitConfig.create("zoo:digits-cnn", device="grpc://127.0.0.1:1", pool="grpc://127.0.0.1:2")
    assert c.pool == ("grpc://127.0.0.1:2",)
    assert FitConfig.from_dict(c.to_dict()) == c  # the spec a study stores round-trips (lists back to tuples)


@pytest.mark.slow
def test_fit_over_a_pool_of_two_local_agents(tmp_path: Path, digits_bundle: object) -> None:
    """Both boards measure candidates; the fit chooses among them and measures its winner on its own board."""
    from devicefit.agent.launch import spawn_agent
    from devicefit.fitting import fit

    with spawn_agent(tmp_path / "a1", device_id="board-1") as a1, spawn_agent(tmp_path / "a2", device_id="board-2") as a2:
        assert a1.url and a2.url
        # loose budgets so that every start-up trial is worth measuring: the pool's plumbing is what is tested
        result = fit("zoo:digits-cnn", device=a1.url, pool=[a2.url], out=tmp_path / "out", progress=False,
                     max_latency_ms=1.0, max_accuracy_drop=0.5, sensitivity_samples=32, runs=10, probe=False,
                     trials=4, max_measurements=1, store=tmp_path / "measurements.db")
    report = result.to_dict()
    pool = report["search"]["study"]["pool"]
    assert len(pool) == 1 and "error" not in pool[0], pool
    assert pool[0]["device"] == a2.url and pool[0]["trials"] == 4 and pool[0]["measurements"] == 1
    study = optuna.load_study(study_name=report["search"]["study"]["name"], storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    boards = {a["device"] for t in study.trials if (a := t.user_attrs.get("devicefit", {})).get("measured_ms")}
    boards |= {v["device"] for k, v in study.user_attrs.items() if k.startswith("devicefit_measured:")}
    assert boards == {"board-1", "board-2"}  # measured on both boards
    assert study.user_attrs[f"devicefit_fp32:{pool[0]['worker']}"] > 0  # board 2's own fp32 scale is shared
    latency = report["result"]["latency"]
    assert latency["source"] == "measured" and latency["device"] == "board-1" and latency["p50_ms"] > 0
    assert result.budget_met
