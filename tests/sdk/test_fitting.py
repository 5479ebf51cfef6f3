"""devicefit.fit / `devicefit fit` on zoo:digits-cnn, measured on the host, with a small search budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devicefit.compressor.plan import Plan
from devicefit.errors import UserInputError

pytestmark = [pytest.mark.timeout(600)]

RESULT_KEYS = {"params", "macs", "size_bytes", "compression_ratio", "metric", "latency", "budget_met"}


def _check_report(rep: dict[str, Any], out: Path) -> None:
    assert {"model", "profile", "budget", "result", "pareto", "search", "baseline", "layers"} <= set(rep)
    assert {"params", "macs", "size_bytes"} <= set(rep["model"]) and rep["model"]["params"] > 200_000
    assert set(rep["result"]) >= RESULT_KEYS
    assert set(rep["result"]["metric"]) >= {"name", "baseline", "compressed", "drop"}
    assert rep["result"]["metric"]["name"] == "accuracy"
    assert set(rep["result"]["latency"]) >= {"p50_ms", "p90_ms", "source", "device"}
    assert {"trials", "measurements", "minutes", "prediction_error"} <= set(rep["search"])
    assert "median" in rep["search"]["prediction_error"]
    for p in rep["pareto"]:
        assert {"predicted_ms", "measured_ms", "metric_drop", "size_bytes", "source"} <= set(p)
        assert (p["measured_ms"] is not None) == (p["source"] == "measured")
    for name in ("model.onnx", "manifest.json", "plan.yaml", "report.json", "report.html"):
        assert (out / name).is_file(), name
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(rep, default=str))
    from devicefit.artifact import Artifact

    art = Artifact.load(out)  # manifest matches model.onnx (size + sha256)
    assert art.path == out / "model.onnx"
    Plan.load(out / "plan.yaml")


@pytest.mark.slow
def test_fit_digits_on_host_meets_budget(tmp_path: Path, digits_bundle: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import devicefit

    monkeypatch.setenv("DEVICEFIT_MEASUREMENTS_DB", str(tmp_path / "m.db"))
    out = tmp_path / "out"
    # batch 8 on one thread: at batch 1 digits-cnn's ~40 µs are runtime overhead, and 2-thread timings on a
    # shared 2-core host swing by ±25%; the comparisons below need measurements that repeat
    res = devicefit.fit(digits_bundle, profile="localhost", max_latency_ms=20.0, max_accuracy_drop=0.01, trials=25,
                        max_measurements=3, out=out, progress=False, sensitivity_samples=128, runs=20, batch_size=8,
                        threads=1)
    rep = res.to_dict()
    _check_report(rep, out)
    r = rep["result"]
    # budget_met means: a candidate *measured* (on the host here) within every budget
    assert res.budget_met and r["budget_met"] is True and r["shortfall"] == {}
    assert r["latency"]["source"] == "measured" and r["latency"]["device"] == "host"
    assert r["latency"]["p50_ms"] <= 20.0 and r["metric"]["drop"] <= 0.01
    assert rep["budget"]["latency_ms"] == 20.0 and rep["budget"]["origin"]["latency_ms"] == "given"
    assert rep["budget"]["origin"]["memory_mb"] == "profile"  # budgets not given come from the profile
    # max_measurements caps the search; the distilled winner is measured once more on top (by design)
    assert rep["search"]["trials"] >= 25 and 0 <= rep["search"]["measurements"] <= 3 + 1
    assert rep["baseline"]["latency"]["source"] == "measured"
    assert rep["benchmark"]["batch_size"] == 8 and rep["benchmark"]["threads"] == 1
    chosen = [p for p in rep["pareto"] if p["chosen"]]
    assert len(chosen) == 1 and chosen[0]["passes"]
    # the fastest passing measured candidate was kept
    passing = [p for p in rep["pareto"] if p["passes"]]
    # the fastest passing candidate is kept; the distilled winner is re-measured separately, and a
    # re-measurement on a shared 2-core host moves by up to ~10%, so allow that much
    assert chosen[0]["measured_ms"] <= min(p["measured_ms"] for p in passing) * 1.15 + 1e-9


@pytest.mark.slow
def test_cli_fit_impossible_budget_exits_3_and_writes_report(tmp_path: Path, digits_bundle: Any) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DEVICEFIT_MEASUREMENTS_DB": str(tmp_path / "m.db")}
    # a board's profile without --device: measured on this host, and the fit says so
    proc = subprocess.run(
        [sys.executable, "-m", "devicefit.cli", "fit", "zoo:digits-cnn", "--profile", "raspberry-pi-4",
         "--max-latency-ms", "0.00001", "--max-accuracy-drop", "0.01", "--trials", "300", "--max-measurements", "2",
         "--batch-size", "8", "-o", str(out), "--json"],
        capture_output=True, text=True, env=env, timeout=500,
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    rep = json.loads(proc.stdout)  # exactly one JSON object: report.json
    _check_report(rep, out)
    r = rep["result"]
    assert r["budget_met"] is False and r["shortfall"]["latency_ms"] > 0
    assert r["latency"]["source"] == "measured"  # the closest candidate is still a measured one
    assert "no measured candidate met the budget" in proc.stderr
    assert "devicefit: warning: profile 'raspberry-pi-4' is a board's" in proc.stderr
    # the budget is out of reach: said early (the progress line), the trials stopped after the seeds, not at 300
    reach = rep["search"]["reach"]
    assert reach["reachable"] is False and reach["stopped_after_trials"] == rep["search"]["trials"] < 300
    assert reach["bound_ratio_to_fp32"] > 0.05 and reach["budget_ms"] == 0.00001
    assert "latency budget out of reach" in proc.stderr
    warnings = rep["warnings"]
    assert len(warnings) == 2 and "measured on this host, not on the board" in warnings[0]
    assert warnings[1] == reach["message"] and f"{reach['bound_ratio_to_fp32']:.2f} × fp32" in warnings[1]
    # every measurement ran at the batch size asked for, and the report says so
    assert rep["benchmark"]["batch_size"] == 8 and r["latency"]["batch_size"] == 8
    from devicefit.compressor.latency import MeasurementStore

    rows = MeasurementStore(tmp_path / "m.db").query()
    assert rows and {m.batch_size for m in rows} == {8}


def test_fit_rejects_bad_arguments() -> None:
    import devicefit

    with pytest.raises(UserInputError, match="format"):
        devicefit.fit("zoo:digits-cnn", format="coreml", progress=False)
    with pytest.raises(UserInputError, match="trials"):
        devicefit.fit("zoo:digits-cnn", trials=0, progress=False)
    with pytest.raises(UserInputError, match="batch_size"):
        devicefit.fit("zoo:digits-cnn", batch_size=0, progress=False)
    from devicefit.compressor.search.candidate import Budget

    with pytest.raises(UserInputError, match="latency_ms"):
        Budget(latency_ms=-1.0)
    with pytest.raises(UserInputError, match="both max_latency_ms and max_latency_ratio"):
        devicefit.fit("zoo:digits-cnn", max_latency_ms=5.0, max_latency_ratio=0.6, progress=False)


def test_a_latency_ratio_replaces_the_profiles_latency_budget() -> None:
    """``max_latency_ratio``: no millisecond limit until the baseline is measured (the profile's is dropped);
    the other budgets still come from the profile; the CLI takes one latency budget or the other."""
    from devicefit.cli import build_parser
    from devicefit.fitting.config import FitConfig

    config = FitConfig(profile="raspberry-pi-4", max_latency_ratio=0.6)
    profile = config.load_profile()
    assert profile.budget.latency_ms is not None
    budget, origin = config.budget(profile)
    assert budget.latency_ms is None and budget.latency_ratio == 0.6
    assert budget.accuracy_drop == profile.budget.accuracy_drop and origin["accuracy_drop"] == "profile"
    assert origin["latency_ratio"] == "given" and FitConfig.from_dict(config.to_dict()) == config
    assert FitConfig(profile="raspberry-pi-4").budget(profile)[0].latency_ms == profile.budget.latency_ms
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fit", "zoo:digits-cnn", "--max-latency-ms", "5", "--max-latency-ratio", "0.6"])


def test_the_fit_format_reaches_the_search_space_and_scopes_the_latency_model() -> None:
    """``format="tflite"``: the space offers TFLite techniques only, and the latency model learns apart from the
    ONNX runs of the same model (another runtime: another scope); a space naming another format is refused."""
    from devicefit.compress_tflite import tflite_methods
    from devicefit.compressor.search.space import SpaceConfig
    from devicefit.fitting.config import FitConfig

    config = FitConfig(format="tflite", max_latency_ratio=0.5)
    search = config.search_config(config.budget(config.load_profile())[0])
    assert search.space is not None and search.space.format == "tflite" and search.scope() == "tflite"
    assert FitConfig().search_config(search.budget).scope() == ""
    assert FitConfig(format="tflite", batch_size=4).search_config(search.budget).scope() == "tflite-batch4"
    assert "int4" not in tflite_methods() and {"int8_static", "float"} <= set(tflite_methods())
    assert FitConfig.from_dict(config.to_dict()) == config
    with pytest.raises(UserInputError, match="is not supported by fit"):
        FitConfig(format="coreml")
    with pytest.raises(UserInputError, match="disagrees"):
        FitConfig(format="onnx", space=SpaceConfig(format="tflite"))


def test_a_boards_profile_without_a_device_warns_that_latencies_are_measured_on_this_host() -> None:
    """Issue #17 (honest defaults): a board's profile and no --device means an agent spawned on this host
    measures every latency: the fit says so (stderr and report.json's ``warnings``, printed by the summary).
    With a device, or with the localhost profile, there is nothing to warn about."""
    from dataclasses import replace

    from devicefit.cli.fit import _human
    from devicefit.fitting.config import FitConfig

    pi = FitConfig(profile="raspberry-pi-4").load_profile()
    (warning,) = FitConfig(profile="raspberry-pi-4").measurement_warnings(pi)
    assert "'raspberry-pi-4'" in warning and "measured on this host, not on the board" in warning
    assert "--device" in warning
    assert FitConfig(profile="raspberry-pi-4", device="grpc://pi.local:50051").measurement_warnings(pi) == []
    assert FitConfig(profile="localhost").measurement_warnings(replace(pi, id="localhost")) == []
    report = {
        "model": {"name": "m"}, "profile": {"id": "raspberry-pi-4"}, "benchmark": {"batch_size": 1, "threads": None},
        "budget": {"latency_ms": 5.0, "accuracy_drop": 0.01}, "baseline": {"latency": {"p50_ms": 9.0}},
        "result": {"budget_met": True, "latency": {"p50_ms": 4.0, "source": "measured", "device": "host"},
                   "metric": {"name": "accuracy", "baseline": 0.9, "compressed": 0.9, "drop": 0.0},
                   "size_bytes": 1000, "compression_ratio": 4.0, "plan_summary": {"int8_static": 2}},
        "search": {"trials": 3, "measurements": 1, "minutes": 0.1, "prediction_error": {"median": 0.1}},
        "warnings": [warning],
    }
    assert f"  warning: {warning}" in _human(report).splitlines()


def test_interleaved_measurement_follows_the_load() -> None:
    """The candidate / reference ratio is taken per round against the two bracketing references, so a load
    that drifts (here: 20% more every block) cancels; rounds are added while they disagree, up to the cap."""
    from devicefit.fitting.interleave import (
        HARD_MAX_ROUNDS,
        LOOSE_SPREAD,
        MAX_ROUNDS,
        MIN_ROUNDS,
        SPREAD,
        interleave,
    )

    t = {"block": 0}

    def load() -> float:
        t["block"] += 1
        return float(1.2 ** t["block"])

    pair = interleave(lambda: 10.0 * load(), lambda: 4.0 * load())
    assert len(pair.cands) == MIN_ROUNDS and len(pair.refs) == MIN_ROUNDS + 1
    assert pair.ratio == pytest.approx(0.4) and pair.spread == pytest.approx(0.0, abs=1e-12)
    # a candidate whose speed relative to the reference jumps around by ±25%: more rounds, then the cap
    noisy = iter([0.3, 0.5, 0.4] * 10)
    pair = interleave(lambda: 10.0, lambda: 10.0 * next(noisy))
    assert len(pair.cands) == HARD_MAX_ROUNDS and pair.spread > LOOSE_SPREAD and pair.ratio == pytest.approx(0.4)
    # ±10%: past MIN_ROUNDS, accepted at MAX_ROUNDS
    wobbly = iter([0.36, 0.44, 0.4] * 10)
    pair = interleave(lambda: 10.0, lambda: 10.0 * next(wobbly))
    assert len(pair.cands) == MAX_ROUNDS and SPREAD < pair.spread <= LOOSE_SPREAD
