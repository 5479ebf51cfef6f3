"""CLI conventions from the first-hour issue: --version, every problem of a profile at once, formatted numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from devicefit import __version__
from devicefit.cli import main
from devicefit.cli.format import mb, ms, pct, points, ratio
from devicefit.device_profiles import BUILTIN_DIR


def test_version_prints_the_version() -> None:
    res = subprocess.run([sys.executable, "-m", "devicefit.cli", "--version"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"devicefit {__version__}"


def _three_problems(tmp_path: Path) -> Path:
    text = (BUILTIN_DIR / "pixel-8.toml").read_text()
    lines = [ln for ln in text.splitlines() if not ln.startswith("vendor = ")]  # 1. a missing field
    text = "\n".join(lines) + "\n"
    text = text.replace("memory_mb = 8192\n", 'memory_mb = "lots"\n', 1)  # 2. a wrong type
    assert 'memory_mb = "lots"' in text
    text = text.replace("accuracy_drop = ", "accuracy_drop = 7.5 # was ", 1)  # 3. out of range
    f = tmp_path / "three.toml"
    f.write_text(text)
    return f


def test_validate_names_all_three_problems_in_one_run(tmp_path: Path) -> None:
    f = _three_problems(tmp_path)
    res = subprocess.run([sys.executable, "-m", "devicefit.cli", "profiles", "validate", str(f)],
                         capture_output=True, text=True, timeout=120, env={**__import__("os").environ,
                                                                           "DEVICEFIT_CONFIG_DIR": str(tmp_path)})
    assert res.returncode == 2, res.stderr
    err = res.stderr
    assert "Traceback" not in err
    assert "3 problems" in err, err
    # each: the field, the value found and what would be valid
    assert "`vendor`" in err and "missing" in err and "a non-empty string" in err, err
    assert "`memory_mb` = 'lots' (str)" in err and "an integer ≥ 1" in err, err
    assert "`budget.accuracy_drop` = 7.5" in err and "≤ 1.0" in err, err


def test_one_problem_keeps_the_one_line_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text((BUILTIN_DIR / "pixel-8.toml").read_text().replace("cores = 9", 'cores = "nine"'))
    assert main(["profiles", "validate", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "`cpu.cores`" in err


def test_number_formatting() -> None:
    assert pct(0.16102943488559868) == "16.1%"
    assert ms(0.45234) == "0.452 ms" and ms(4.2712) == "4.27 ms" and ms(42.71) == "42.7 ms" and ms(427.1) == "427 ms"
    assert ms(0.0123) == "0.012 ms"
    assert points(0.0034) == "0.34 pt" and mb(1_234_567) == "1.23 MB" and ratio(3.91) == "3.91×"
    assert ms(None) == pct(float("nan")) == "–"


def test_fit_summary_is_formatted_and_json_stays_raw() -> None:
    from devicefit.cli.fit import _human

    report = {
        "model": {"name": "zoo:digits-cnn"}, "profile": {"id": "localhost"},
        "benchmark": {"batch_size": 32, "threads": 1},
        "budget": {"latency_ms": 0.4523456, "accuracy_drop": 0.01},
        "baseline": {"latency": {"p50_ms": 0.90469}},
        "result": {"budget_met": False, "latency": {"p50_ms": 0.4712345, "source": "measured", "device": "d"},
                   "metric": {"name": "accuracy", "baseline": 0.98611, "compressed": 0.98333, "drop": 0.0027777},
                   "size_bytes": 118_213, "compression_ratio": 3.9123, "plan_summary": {"int8_static": 4},
                   "shortfall": {"latency": 0.0417}},
        "search": {"trials": 40, "measurements": 5, "minutes": 0.41, "prediction_error": {"median": 0.16102943488559868}},
    }
    text = _human(report)
    assert "median prediction error 16.1%" in text
    assert "p50 0.471 ms" in text and "fp32 0.905 ms" in text and "budget 0.452 ms" in text
    assert "drop 0.28 pt" in text and "0.12 MB" in text and "3.91×" in text
    assert "latency 4.2% over its budget" in text
    assert "0.16102943488559868" not in text
    assert json.loads(json.dumps(report))["search"]["prediction_error"]["median"] == 0.16102943488559868


def test_data_file_problems_are_all_named_at_once(tmp_path: Path) -> None:
    import numpy as np

    from devicefit.data import load_npz
    from devicefit.errors import UserInputError

    f = tmp_path / "bad.npz"
    np.savez(f, x=np.zeros((10, 3), np.float32), extra=np.zeros((7, 3), np.float32), labels=np.zeros(4, np.int64))
    with pytest.raises(UserInputError) as info:
        load_npz(f, input_names=["x"])
    msg = str(info.value)
    assert "3 problems" in msg, msg
    assert "['extra'] are not model inputs ['x']" in msg
    assert "{'x': 10, 'extra': 7}" in msg and "10 samples but 4 labels" in msg


def test_plan_file_problems_are_all_named_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "version: 1\n"
        "colour: blue\n"                                  # 1. unknown top-level key
        "layers:\n"
        "  - match: '*'\n"
        "    quant: {method: int8_statik}\n"              # 2. unknown method
        "  - match: fc1\n"
        "    prune: {method: structured, ratio: 1.5}\n"   # 3. out of range
        "  - quant: {method: float}\n"                    # 4. no match
    )
    assert main(["compress", "zoo:digits-cnn", "--plan", str(plan), "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "plan has 4 problems" in err, err
    assert "unknown key(s) ['colour']" in err
    assert "layers[0] (match '*'): unknown quant method 'int8_statik'" in err and "int8_static" in err
    assert "layers[1] (match 'fc1'): ChannelPrune.ratio=1.5 is invalid" in err and "(0, 1)" in err
    assert "layers[2]: {'quant': {'method': 'float'}} has no 'match'" in err
