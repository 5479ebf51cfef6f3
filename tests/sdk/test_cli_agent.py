"""CLI: devicefit bench (host and --on), devicefit agent serve (real process via the CLI), devicefit deploy."""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devicefit.cli import main

pytestmark = pytest.mark.timeout(300)
HOST_KEYS = {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "load_ms", "peak_rss_mb", "runs", "source"}


def _writers() -> object:
    path = Path(__file__).parents[1] / "agent" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_agent_models", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _writers().write_tiny_onnx(tmp_path_factory.mktemp("cli") / "cli_model.onnx")  # type: ignore[attr-defined,no-any-return]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`devicefit agent serve` started through the CLI entry point; stopped with SIGTERM."""
    store = tmp_path_factory.mktemp("cli_agent")
    cmd = [sys.executable, "-m", "devicefit.cli", "agent", "serve", "--grpc", "127.0.0.1:0", "--store", str(store),
           "--device-id", "cli-dev"]
    log = open(store / "log.txt", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the first stdout line names the bound address
        m = re.search(r"listening on (grpc://127\.0\.0\.1:\d+)", line)
        assert m, f"unexpected first line {line!r}; log: {(store / 'log.txt').read_text()}"
        yield m.group(1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0  # graceful stop
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        log.close()


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out  # exactly one JSON object
    return json.loads(out[0])  # type: ignore[no-any-return]


def test_host_bench_json(capsys: pytest.CaptureFixture[str], model: Path) -> None:
    d = _json(capsys, ["bench", str(model), "--runs", "12", "--warmup", "1", "--threads", "1", "--min-seconds", "0",
                       "--json"])
    assert set(d) >= HOST_KEYS and d["source"] == "host" and d["runs"] == 12 and d["threads"] == 1
    # the default rule: at least --runs and at least 0.5 s of timed runs (or the agent's cap on runs)
    f = _json(capsys, ["bench", str(model), "--runs", "12", "--threads", "1", "--json"])
    assert f["min_seconds"] == 0.5 and f["runs"] >= 12 and (f["timed_s"] >= 0.5 or f["runs"] == 10_000)
    assert f["p10_ms"] <= f["p50_ms"] <= f["p90_ms"] and f["iqr_ms"] >= 0 and f["model_memory_mb"] > 0
    assert d["p50_ms"] <= d["p90_ms"] <= d["p99_ms"] and d["per_node"] == []
    d = _json(capsys, ["bench", str(model), "--runs", "5", "--per-node", "--json"])
    assert d["per_node"] and d["per_node_total_ms"] <= d["per_node_e2e_ms"]


def test_bench_human_output(capsys: pytest.CaptureFixture[str], model: Path) -> None:
    assert main(["bench", str(model), "--runs", "5", "--per-node"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("host: p50 ") and "per node (sum" in out and "MatMul" in out


def test_bench_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path, model: Path) -> None:
    assert main(["bench", str(tmp_path / "nope.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0] and "fix:" in err[0]
    assert main(["bench", str(model), "--runs", "0"]) == 2
    assert "runs=0" in capsys.readouterr().err
    assert main(["deploy", str(model), "--to", "grpc://127.0.0.1:1", "--json"]) == 2
    unreachable = capsys.readouterr().err
    assert "agent unreachable at grpc://127.0.0.1:1" in unreachable and "devicefit agent serve --grpc" in unreachable


def test_deploy_and_bench_on_device(capsys: pytest.CaptureFixture[str], served: str, model: Path) -> None:
    d = _json(capsys, ["deploy", str(model), "--to", served, "--json"])
    assert d["model_id"] == "cli_model" and d["active"] and d["device_id"] == "cli-dev"
    assert d["size_bytes"] == model.stat().st_size == d["bytes_sent"]
    b = _json(capsys, ["bench", str(model), "--on", served, "--runs", "8", "--threads", "1", "--min-seconds", "0",
                       "--json"])
    assert set(b) >= HOST_KEYS and b["source"] == "device:cli-dev" and b["runs"] == 8
    f = _json(capsys, ["bench", str(model), "--on", served, "--runs", "8", "--threads", "1", "--json"])
    assert f["min_seconds"] == 0.5 and f["runs"] >= 8 and (f["timed_s"] >= 0.5 or f["runs"] == 10_000)
    assert 0 < f["model_memory_mb"] < f["peak_rss_mb"] - f["baseline_rss_mb"] + 1e-6 < f["peak_rss_mb"]
    assert "per_node" in b and "runtime" in b and b["threads"] == 1
    p = _json(capsys, ["bench", str(model), "--on", served, "--runs", "4", "--per-node", "--json"])
    assert p["per_node"] and p["per_node_total_ms"] <= p["per_node_e2e_ms"]
    assert main(["deploy", str(model), "--to", served]) == 0
    assert "deployed cli_model" in capsys.readouterr().out
