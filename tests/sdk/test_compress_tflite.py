"""``devicefit compress --format tflite`` on the zoo: the issue's numbers (digits-cnn full int8 within 1 point,
MiniLM dynamic range cosine ≥ 0.99), a pruned plan with a float layer, the ONNX JSON contract, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from devicefit.cli import main

pytest.importorskip("litert_torch", reason="needs the extra devicefit[tflite]")

#: the keys of ``devicefit compress --json`` (CompressResult.to_dict), whatever the format
KEYS = {"path", "size_bytes", "fp32_size_bytes", "compression_ratio", "metric", "fidelity", "float_fallback_layers",
        "fallback_reasons", "int_ops", "params", "macs", "plan", "structural", "distill", "quant", "seconds"}


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1  # exactly one JSON object: the converter's chatter stays off stdout
    return json.loads(out[0])


def _interpreter_dtypes(path: Path) -> tuple[type, type]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    return it.get_input_details()[0]["dtype"], it.get_output_details()[0]["dtype"]


def test_digits_full_int8_within_one_point(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "digits.tflite"
    d = _json(capsys, ["compress", "zoo:digits-cnn", "--quant", "int8_static", "--format", "tflite", "-o", str(out),
                       "--json", "--no-progress"])
    assert set(d) == KEYS and d["path"] == str(out) and out.stat().st_size == d["size_bytes"]
    m = d["metric"]
    assert m["name"] == "accuracy" and m["baseline"] > 0.97 and m["drop"] <= 0.01  # issue #13: ≤ 1 point
    assert d["fidelity"]["top1_agreement"] > 0.98 and d["fidelity"]["cosine"] > 0.99
    assert d["quant"]["format"] == "tflite" and set(d["quant"]["layer_status"].values()) == {"int8"}
    assert d["int_ops"] == {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 2}
    assert d["float_fallback_layers"] == [] and 3.5 < d["compression_ratio"] < 4.1  # int8 weights ≈ 1/4
    assert _interpreter_dtypes(out) == (np.float32, np.float32)  # float edges, integer body
    assert d["quant"]["export"]["float_cosine"] > 0.9999  # the float conversion was verified first


def test_pruned_plan_keeps_its_float_layer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("version: 1\nlayers:\n  - match: fc2\n    quant: {method: float}\n")
    d = _json(capsys, ["compress", "zoo:digits-cnn", "--prune", "structured:0.25", "--quant", "int8_static",
                       "--plan", str(plan), "-o", str(tmp_path / "p.tflite"), "--json", "--no-progress"])
    assert d["quant"]["layer_status"] == {"conv1": "int8", "conv2": "int8", "fc1": "int8", "fc2": "float32"}
    assert d["quant"]["schemes"]["fc2"] == "float" and d["structural"]["applied"]
    assert d["params"] < 283978 * 0.9 and d["float_fallback_layers"] == []
    assert d["fp32_size_bytes"] > 1.1e6 and d["compression_ratio"] > 3.5  # vs the unpruned float32 .tflite
    assert d["metric"]["drop"] < 0.1 and d["fidelity"]["cosine"] > 0.9


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--quant", "int8_weight_only"], "quant technique int8_weight_only (rule '*') cannot be exported to TFLite"),
        (["--quant", "int4"], "quant technique int4_weight_only"),
        (["--prune", "2:4"], "prune technique nm (rule"),
    ],
    ids=["int8_weight_only", "int4", "2:4"],
)
def test_refuses_what_tflite_cannot_carry(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                          needle: str) -> None:
    out = tmp_path / "x.tflite"  # the suffix alone picks TFLite
    assert main(["compress", "zoo:digits-cnn", *argv, "-o", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "--format onnx" in err and "int8_static" in err and not out.exists()


@pytest.mark.slow
def test_minilm_dynamic_range_cosine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "minilm.tflite"
    d = _json(capsys, ["compress", "zoo:minilm-l6", "--quant", "int8_dynamic", "--format", "tflite", "-o", str(out),
                       "--json", "--no-progress"])
    assert set(d) == KEYS and d["quant"]["format"] == "tflite"
    assert set(d["quant"]["layer_status"].values()) == {"dynamic_int8"} and len(d["quant"]["layer_status"]) == 36
    assert d["int_ops"]["FULLY_CONNECTED"] == 36 and d["compression_ratio"] > 3.3  # int8 weights and embeddings
    m = d["metric"]
    assert m["name"] == "cosine" and m["compressed"] >= 0.99, m  # issue #13, on the bundle's evaluation sentences


def test_output_suffix_must_match_the_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.onnx"
    assert main(["compress", "zoo:digits-cnn", "--quant", "int8_static", "--format", "tflite", "-o", str(out)]) == 2
    assert "output x.onnx does not match the format tflite — fix: write to x.tflite" in capsys.readouterr().err


def test_digits_full_int8_with_int8_inputs_and_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--int8-io``: int8 edges (no QUANTIZE / DEQUANTIZE left in the file), the same accuracy within a point
    (the metric runs the file with each edge's scale and zero point)."""
    out = tmp_path / "digits-io.tflite"
    d = _json(capsys, ["compress", "zoo:digits-cnn", "--quant", "int8_static", "--format", "tflite", "--int8-io",
                       "-o", str(out), "--json", "--no-progress"])
    assert _interpreter_dtypes(out) == (np.int8, np.int8)
    assert d["quant"]["int_format"]["io"] == "int8" and d["quant"]["export"]["int8_io"] is True
    ops = d["quant"]["export"]["ops"]
    assert ops.get("QUANTIZE", 0) == 0 and ops.get("DEQUANTIZE", 0) == 0
    assert d["metric"]["name"] == "accuracy" and d["metric"]["drop"] <= 0.01


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--quant", "int8_static", "-o", "x.onnx"], "int8 inputs / outputs are a TFLite option"),
        (["--quant", "int8_dynamic", "-o", "x.tflite"], "int8 inputs / outputs need full-integer int8 layers"),
    ],
    ids=["onnx", "no-int8-layer"],
)
def test_int8_io_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    *flags, out_flag, name = argv
    out = tmp_path / name
    assert main(["compress", "zoo:digits-cnn", *flags, "--int8-io", out_flag, str(out), "--no-progress"]) == 2
    assert needle in capsys.readouterr().err and not out.exists()
