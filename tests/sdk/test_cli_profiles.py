"""``devicefit profiles list | show | validate | probe`` — JSON contract, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devicefit.cli import main
from devicefit.device_profiles import BUILTIN_DIR, load_profile_file


@pytest.fixture(autouse=True)
def isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cfg = tmp_path / "config"
    monkeypatch.setenv("DEVICEFIT_CONFIG_DIR", str(cfg))
    monkeypatch.delenv("DEVICEFIT_PROFILE_PATH", raising=False)
    return cfg


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    rc = main([*argv, "--json"])
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = out.strip().splitlines()
    assert len(lines) == 1, "--json prints exactly one JSON object"
    obj = json.loads(lines[0])
    assert isinstance(obj, dict)
    return obj


def test_probe_then_list_has_boards_and_measured_localhost(
    capsys: pytest.CaptureFixture[str], isolated_config: Path
) -> None:
    obj = run_json(capsys, "profiles", "probe", "--seconds", "0.6")
    path = Path(obj["path"])
    assert path == isolated_config / "profiles" / "localhost.toml" and path.is_file()
    assert obj["id"] == "localhost" and obj["measured"] is True
    assert obj["peak_gops_fp32"] > 0 and obj["peak_gops_int8"] > 0 and obj["mem_bandwidth_gbs"] > 0
    assert obj["cpu"]["cores"] >= 1 and obj["memory_mb"] > 0
    assert load_profile_file(path).peak_gops_int8 == obj["peak_gops_int8"]

    listing = run_json(capsys, "profiles", "list")  # uses the cached localhost: no second probe
    rows = listing["profiles"]
    boards = [r for r in rows if not r["measured"]]
    assert len(boards) >= 10 and listing["count"] == len(rows)
    local = [r for r in rows if r["id"] == "localhost"]
    assert len(local) == 1 and local[0]["measured"] is True
    assert {"id", "name", "vendor", "soc", "category", "cores", "peak_gops_fp32"} <= set(rows[0])
    assert {r["category"] for r in boards} >= {"iot", "mobile", "automotive"}


def test_probe_writes_to_output_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "me.toml"
    rc = main(["profiles", "probe", "--seconds", "0.5", "-o", str(out), "--id", "my-host", "--name", "My host"])
    assert rc == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "GOPS" in text
    prof = load_profile_file(out)
    assert prof.id == "my-host" and prof.name == "My host" and prof.measured


def test_list_without_localhost_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    listing = run_json(capsys, "profiles", "list", "--no-localhost")
    assert "localhost" not in {r["id"] for r in listing["profiles"]} and listing["count"] >= 10
    shown = run_json(capsys, "profiles", "show", "rpi5")
    assert shown["id"] == "raspberry-pi-5" and shown["cpu"]["isa"] == ["neon", "dotprod", "fp16"]
    assert shown["path"] == str(BUILTIN_DIR / "raspberry-pi-5.toml")
    assert main(["profiles", "show", "jetson-orin-nano"]) == 0
    assert 'id = "jetson-orin-nano"' in capsys.readouterr().out


def test_validate_ok_and_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    good = BUILTIN_DIR / "pixel-8.toml"
    assert main(["profiles", "validate", str(good)]) == 0
    assert capsys.readouterr().out.startswith("ok: pixel-8")

    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace("cores = 9", 'cores = "nine"'))
    assert main(["profiles", "validate", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "`cpu.cores`" in err and "'nine'" in err

    missing = tmp_path / "missing.toml"
    missing.write_text(good.read_text().replace("peak_gops_int8 = 1196.8\n", ""))
    assert main(["profiles", "validate", str(missing)]) == 2
    assert "`peak_gops_int8`" in capsys.readouterr().err

    assert main(["profiles", "show", "no-such-board"]) == 2
    assert "unknown device profile" in capsys.readouterr().err


def test_validate_subprocess_exit_code_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text((BUILTIN_DIR / "imx93.toml").read_text().replace("latency_ms = 100.0", 'latency_ms = "fast"'))
    env = {**os.environ, "DEVICEFIT_CONFIG_DIR": str(tmp_path / "cfg")}
    res = subprocess.run([sys.executable, "-m", "devicefit.cli", "profiles", "validate", str(bad)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "`budget.latency_ms`" in res.stderr


def test_probe_live_agent(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from devicefit.agent.server import AgentServer, make_service

    server = AgentServer(make_service(tmp_path / "store", device_id="Bench Pi #1"), "127.0.0.1:0", workers=2)
    try:
        out = tmp_path / "dev.toml"
        obj = run_json(capsys, "profiles", "probe", "--device", server.url, "-o", str(out))
    finally:
        server.stop(grace=1.0)
    prof = load_profile_file(out)
    assert prof.id == "bench-pi-1" == obj["id"] and prof.measured
    assert server.url in prof.sources[0]
    assert prof.peak_gops_fp32 > 0 and prof.peak_gops_int8 > 0 and prof.mem_bandwidth_gbs > 0
    assert prof.cpu.cores >= 1 and prof.memory_mb > 0 and "onnxruntime" in prof.runtimes
    from devicefit.agent.sysinfo import custom_kernels

    # the SIMD path of the agent's kernel library, as GetInfo reports it (None when it is not built there)
    assert (obj["custom_kernels_isa"] is not None) == (custom_kernels() is not None)


def test_probe_unreachable_device_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profiles", "probe", "--device", "grpc://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "127.0.0.1:9" in err
