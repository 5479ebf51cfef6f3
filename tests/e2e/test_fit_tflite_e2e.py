"""Issue #13's fit line: ``devicefit fit zoo:digits-cnn --format tflite --device grpc://…`` completes with the winner
measured on the agent's LiteRT runner.

A real agent on loopback; every candidate (the fp32 baseline too) is a ``.tflite`` written by the TFLite exporter
and measured there. What is asserted: the report names the format and the runner, every measurement the fit stored
was taken on LiteRT, the winner's latency was measured on this agent, and the written ``model.tflite`` reproduces
the reported accuracy when LiteRT runs it on the held-out split. The budget itself is not asserted: at ~0.04 ms
per run the ranking is the fit's business (its paired re-measurements), not this test's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from devicefit.agent.launch import spawn_agent
from devicefit.compress_tflite import tflite_methods
from devicefit.compressor.latency import MeasurementStore

pytest.importorskip("litert_torch", reason="needs the extra devicefit[tflite]")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_fit_digits_tflite_on_agent(tmp_path: Path) -> None:
    agent = spawn_agent(tmp_path / "store", device_id="fit-tflite-e2e")
    out, cache = tmp_path / "out", tmp_path / "cache"
    env = {**os.environ, "DEVICEFIT_CACHE": str(cache)}
    env.pop("DEVICEFIT_MEASUREMENTS_DB", None)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "devicefit.cli", "fit", "zoo:digits-cnn", "--format", "tflite", "--profile", "localhost",
             "--device", agent.url, "--max-latency-ratio", "0.8", "--max-accuracy-drop", "0.01", "--trials", "30",
             "--max-measurements", "3", "-o", str(out), "--json", "--no-progress"],
            capture_output=True, text=True, env=env, timeout=850,
        )
    finally:
        assert agent.stop() == 0
    assert proc.returncode in (0, 3), f"exit {proc.returncode}: {proc.stderr[-3000:]}"  # 3: budget not met
    rep = json.loads(proc.stdout)
    r, base = rep["result"], rep["baseline"]["latency"]
    print(f"\nfit tflite e2e: fp32 {base['p50_ms']:.4f} ms, winner {r['latency']['p50_ms']:.4f} ms on LiteRT, "
          f"plan {r['plan_summary']}, drop {r['metric']['drop']}, budget met {r['budget_met']}")
    assert r["format"] == "tflite" and r["runtime"] == "litert" and r["path"] == "model.tflite"
    assert r["latency"]["source"] == "measured" and r["latency"]["device"] == "fit-tflite-e2e"
    assert base["source"] == "measured" and base["p50_ms"] > 0 and r["latency"]["p50_ms"] > 0
    assert rep["search"]["measurements"] >= 1
    assert any("no per-op times" in n for n in rep["search"]["space"]["notes"])  # the report says so (#13)
    # the plan holds TFLite techniques only (the space was built for the format)
    allowed = set(tflite_methods()) | {"float"}
    for key in r["plan_summary"]:
        assert {part.split("@")[0] for part in key.split("+")} - {"structured", "lowrank"} <= allowed, key
    # every stored measurement ran on the agent's LiteRT runner, without per-op times
    rows = MeasurementStore(cache / "measurements.db").query(device_id="fit-tflite-e2e")
    assert len(rows) >= 2 and {m.runtime for m in rows} == {"litert"}
    assert {m.role for m in rows} >= {"baseline"} and all(not m.per_node for m in rows)
    # the winner's file: a .tflite that LiteRT runs to the reported accuracy on the held-out split
    model = out / "model.tflite"
    assert model.read_bytes()[4:8] == b"TFL3"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "tflite" and manifest["file_name"] == "model.tflite"
    from devicefit import zoo
    from devicefit.compressor.export_tflite import run_tflite

    bundle = zoo.get("digits-cnn")
    ev = bundle.eval
    assert ev is not None and ev.labels is not None
    logits = run_tflite(model.read_bytes(), ev, bundle.input_names)
    acc = float(np.mean(np.argmax(logits, axis=-1) == ev.labels))
    assert acc == pytest.approx(r["metric"]["compressed"], abs=1e-9)
    assert r["metric"]["name"] == "accuracy" and r["metric"]["drop"] <= 0.01
