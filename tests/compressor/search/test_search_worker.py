"""``devicefit search-worker``: two workers on two agents share one PostgreSQL study (two processes on one SQLite
study: tests/sdk/test_fit_pool.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from devicefit.errors import UserInputError


def test_worker_needs_a_started_study(tmp_path: Path) -> None:
    from devicefit.fitting import run_worker

    storage = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(storage=storage, study_name="plain", directions=["minimize", "minimize"])
    with pytest.raises(UserInputError, match="no devicefit spec"):
        run_worker(storage, "plain", progress=False)


@pytest.mark.slow
def test_two_workers_on_two_agents_share_a_postgres_study(tmp_path: Path, digits_bundle: object, postgres_url: str) -> None:
    """Optuna's RDB storage on a real PostgreSQL server: two ``search-worker``s, each measuring on its own local
    agent (``--device``), share one study and one measurement store; the fit then chooses among every process's
    measured candidates and its winner is measured."""
    from devicefit.agent.launch import spawn_agent
    from devicefit.fitting import fit, start_study

    # loose budgets: every plan the workers' start-up trials propose is worth measuring (the plumbing is tested)
    options: dict[str, object] = {"profile": "localhost", "max_latency_ms": 1.0, "max_accuracy_drop": 0.5,
                                  "sensitivity_samples": 32, "runs": 10, "probe": False, "store": str(tmp_path / "measurements.db")}
    with spawn_agent(tmp_path / "a1", device_id="board-1") as a1, spawn_agent(tmp_path / "a2", device_id="board-2") as a2:
        assert a1.url and a2.url
        name = start_study("zoo:digits-cnn", storage=postgres_url, study_name="pool", device=a1.url, **options)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "devicefit.cli", "search-worker", "--storage", postgres_url, "--study", name,
               "--trials", "4", "--max-measurements", "1", "--json"]
        procs = [subprocess.Popen([*cmd, "--device", url, "--work", str(tmp_path / f"w{i}")], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env) for i, url in enumerate((a1.url, a2.url))]
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=400)
            assert p.returncode == 0, err[-2000:]
            outs.append(json.loads(out.strip().splitlines()[-1]))
        assert [o["device"] for o in outs] == [a1.url, a2.url]
        assert all(o["trials"] == 4 and o["measurements"] == 1 for o in outs), outs  # each board measured

        study = optuna.load_study(study_name=name, storage=postgres_url)
        measured = [t.user_attrs["devicefit"] for t in study.trials
                    if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["devicefit"].get("measured_ms")]
        assert {a["device"] for a in measured} == {"board-1", "board-2"}  # both boards' measurements are shared
        assert {a["worker"] for a in measured} == {o["worker"] for o in outs}

        result = fit("zoo:digits-cnn", storage=postgres_url, study_name=name, device=a1.url, out=tmp_path / "out",
                     progress=False, trials=2, max_measurements=1, **options)
    report = result.to_dict()
    assert report["search"]["study"]["name"] == name
    assert report["search"]["study"]["storage"].startswith("postgresql+psycopg2://devicefit@127.0.0.1:")
    chosen = report["result"]
    assert chosen["latency"]["p50_ms"] > 0 and chosen["latency"]["source"] == "measured"
    assert (tmp_path / "out" / "model.onnx").stat().st_size > 0
