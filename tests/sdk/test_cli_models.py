"""CLI: devicefit inspect / export (JSON contract, human output, done-when checks of issue #2)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from devicefit.cli import main


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1  # exactly one JSON object
    return json.loads(out[0])


@pytest.mark.slow
def test_inspect_digits_human_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "zoo:digits-cnn"]) == 0
    human = capsys.readouterr().out
    assert "conv2" in human and "fc1" in human and "total: 283,978 params" in human
    d = _json(capsys, ["inspect", "zoo:digits-cnn", "--json"])
    assert set(d) >= {"params", "macs", "size_bytes", "layers"}
    assert d["params"] == 283_978 and d["macs"] == 1_462_784 and d["size_bytes"] == 4 * (283_978 + 192) + 2 * 8  # + BN running stats (fp32) and counters (int64)
    assert [li["name"] for li in d["layers"] if li["type"] in ("Conv2d", "Linear")] == ["conv1", "conv2", "fc1", "fc2"]


@pytest.mark.slow
def test_inspect_minilm_params(capsys: pytest.CaptureFixture[str]) -> None:
    d = _json(capsys, ["inspect", "zoo:minilm-l6", "--json"])
    assert abs(d["params"] - 22.7e6) / 22.7e6 <= 0.01, d["params"]  # done-when of #2
    assert d["size_bytes"] >= 4 * d["params"] and len(d["layers"]) > 36


@pytest.mark.slow
def test_export_minilm_single_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    d = _json(capsys, ["export", "zoo:minilm-l6", "-o", str(out), "--json"])
    assert set(d) == {"path", "size_bytes", "max_abs_error", "cosine"}
    assert d["path"] == str(out) and d["size_bytes"] == out.stat().st_size > 80e6
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # single file: no external data
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.load(str(out)).graph.initializer)
    assert d["cosine"] >= 0.9999 and d["max_abs_error"] < 1e-3  # done-when of #2


def test_inspect_and_export_with_factory_and_data(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((10, 6)).astype(np.float32))
    d = _json(capsys, ["inspect", "factories_helper:tiny_module", "--data", str(data), "--json"])
    assert d["params"] == 6 * 16 + 16 + 16 * 3 + 3 and d["macs"] == 6 * 16 + 16 * 3
    out = tmp_path / "t.onnx"
    e = _json(capsys, ["export", "factories_helper:tiny_module", "--data", str(data), "-o", str(out), "--json"])
    assert e["cosine"] >= 0.9999 and out.is_file()
    o = _json(capsys, ["inspect", str(out), "--json"])  # ONNX input: graph-level analysis
    assert o["macs"] == d["macs"] and [li["name"] for li in o["layers"]] == ["fc1", "fc2"]
    assert main(["export", str(out), "-o", str(tmp_path / "again.onnx")]) == 2
    assert "already an ONNX model" in capsys.readouterr().err


def test_export_requires_output(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["export", "zoo:digits-cnn"])
    assert exc.value.code == 2
