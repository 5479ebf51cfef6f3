"""TFLite export: every mode's structure (ops, tensor dtypes in the file) and numbers (cosine vs torch), the
per-layer plan kept in the file, layers found through nested containers, and the loud failures."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("litert_torch", reason="needs the extra devicefit[tflite]")

from devicefit.compressor.export_tflite import TFLiteExportResult, export_tflite, run_tflite
from devicefit.data import Dataset
from devicefit.errors import ExportError, UserInputError
from devicefit.metrics import cosine


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = torch.nn.Linear(8 * 8 * 8, 32)
        self.fc2 = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


class Nested(torch.nn.Module):
    """Layers inside a ModuleList (never called itself) and a Sequential (called)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(16, 16) for _ in range(2)])
        self.head = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = torch.relu(b(x))
        return self.head(x)


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture(scope="module")
def data() -> Dataset:
    return Dataset({"x": np.random.default_rng(0).normal(size=(48, 3, 8, 8)).astype(np.float32)})


def _export(net: torch.nn.Module, data: Dataset, path: Path, **kw: Any) -> TFLiteExportResult:
    return export_tflite(net, (torch.from_numpy(data.inputs["x"][:2]),), path, input_names=["x"], calib=data,
                         verify=data, **kw)


def _tensors(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    return it.get_tensor_details(), it.get_input_details()[0], it.get_output_details()[0]


def _weight_dtypes(path: Path, layer: str) -> set[str]:
    """dtypes of the constant 2-D+ tensors litert-torch named after ``layer`` (its weight), read from the file."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    model = fb.read_model(path.read_bytes())
    out = set()
    for t in model.subgraphs[0].tensors:
        name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
        buf = model.buffers[t.buffer] if t.buffer > 0 else None
        has_data = buf is not None and (buf.data is not None or getattr(buf, "size", 0))
        if has_data and name.split(";")[0].endswith(f"_{layer}") and len(t.shape) >= 2:
            out.add(fb.TENSOR_CODE_TO_TYPE[t.type].lower())
    return out


def _torch(net: torch.nn.Module, data: Dataset) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(data.inputs["x"])).numpy()


def test_float32_is_exact_and_names_every_layer(net: torch.nn.Module, data: Dataset, tmp_path: Path) -> None:
    r = _export(net, data, tmp_path / "f32.tflite")
    assert r.mode == "float32" and r.ops == {"CONV_2D": 1, "FULLY_CONNECTED": 2, "RESHAPE": 1, "TRANSPOSE": 2}
    assert r.layer_status == {"conv": "float32", "fc1": "float32", "fc2": "float32"} and r.unmapped_layers == []
    assert r.int_ops == {} and r.size_bytes == r.float_size_bytes and r.verified_samples == 32
    got = run_tflite(r.path.read_bytes(), data, ["x"])  # every sample, not only the verified ones
    assert got.shape == (48, 10) and np.max(np.abs(got - _torch(net, data))) < 1e-4
    assert r.to_dict()["format"] == "tflite" and r.cosine > 0.99999


def test_float16_stores_half_weights(net: torch.nn.Module, data: Dataset, tmp_path: Path) -> None:
    r = _export(net, data, tmp_path / "f16.tflite", mode="float16")
    assert r.ops["DEQUANTIZE"] == 3 and "QUANTIZE" not in r.ops  # one fp16 → fp32 weight per layer
    assert set(r.layer_status.values()) == {"float16"} and _weight_dtypes(r.path, "fc1") == {"float16"}
    assert r.size_bytes < 0.6 * r.float_size_bytes and r.cosine > 0.9999


def test_dynamic_range_int8(net: torch.nn.Module, data: Dataset, tmp_path: Path) -> None:
    r = _export(net, data, tmp_path / "dyn.tflite", mode="dynamic_int8")
    _, inp, out = _tensors(r.path)
    assert np.dtype(inp["dtype"]) == np.float32 and np.dtype(out["dtype"]) == np.float32
    assert set(r.layer_status.values()) == {"dynamic_int8"} and "QUANTIZE" not in r.ops
    assert r.int_ops == {"CONV_2D": 1, "FULLY_CONNECTED": 2} and _weight_dtypes(r.path, "fc1") == {"int8"}
    assert r.size_bytes < 0.35 * r.float_size_bytes and r.cosine > 0.999


@pytest.mark.parametrize("int8_io", [False, True])
def test_full_integer_int8(net: torch.nn.Module, data: Dataset, tmp_path: Path, int8_io: bool) -> None:
    r = _export(net, data, tmp_path / "int8.tflite", mode="int8", int8_io=int8_io)
    _, inp, out = _tensors(r.path)
    edge = np.int8 if int8_io else np.float32
    assert np.dtype(inp["dtype"]) == edge and np.dtype(out["dtype"]) == edge and r.int8_io is int8_io
    assert (r.ops.get("QUANTIZE", 0), r.ops.get("DEQUANTIZE", 0)) == ((0, 0) if int8_io else (1, 1))
    assert set(r.layer_status.values()) == {"int8"} and r.int_ops == {"CONV_2D": 1, "FULLY_CONNECTED": 2}
    details, _, _ = _tensors(r.path)  # the body is integer: float tensors only at the edges (if any)
    assert len([d for d in details if np.dtype(d["dtype"]) == np.float32]) == (0 if int8_io else 2)
    assert r.cosine > 0.98  # LiteRT dequantizes an int8 output for the comparison


def test_plan_keeps_float_layers_float(net: torch.nn.Module, data: Dataset, tmp_path: Path) -> None:
    r = _export(net, data, tmp_path / "mixed.tflite", mode="int8", layer_modes={"fc1": "float32", "fc2": "float16"})
    assert r.layer_status == {"conv": "int8", "fc1": "float32", "fc2": "float16"}
    assert _weight_dtypes(r.path, "fc1") == {"float32"} and _weight_dtypes(r.path, "fc2") == {"float16"}
    assert _weight_dtypes(r.path, "conv") == {"int8"} and r.int_ops == {"CONV_2D": 1}
    # int8 input → conv; back to float for fc1; fc2's float16 weight dequantized; float output
    assert r.mode == "float32+float16+int8" and (r.ops["QUANTIZE"], r.ops["DEQUANTIZE"]) == (1, 2)
    assert r.cosine > 0.99


def test_layers_in_containers_are_found(tmp_path: Path) -> None:
    torch.manual_seed(1)
    m = Nested().eval()
    d = Dataset({"x": np.random.default_rng(1).normal(size=(24, 16)).astype(np.float32)})
    r = export_tflite(m, (torch.from_numpy(d.inputs["x"][:1]),), tmp_path / "nested.tflite", input_names=["x"],
                      mode="dynamic_int8", layer_modes={"blocks.1": "float32"}, verify=d)
    assert r.unmapped_layers == []
    assert r.layer_status == {"blocks.0": "dynamic_int8", "blocks.1": "float32", "head.0": "dynamic_int8",
                              "head.2": "dynamic_int8"}
    assert r.int_ops == {"FULLY_CONNECTED": 3} and r.cosine > 0.999


def test_mismatch_fails_loudly(net: torch.nn.Module, data: Dataset, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"int8 \.tflite disagrees with torch on 32 samples: cosine 0\.9"):
        _export(net, data, tmp_path / "bad.tflite", mode="int8", min_cosine=0.99999)


def test_int8_needs_calibration_and_modes_are_checked(net: torch.nn.Module, data: Dataset, tmp_path: Path) -> None:
    ex = (torch.from_numpy(data.inputs["x"][:1]),)
    with pytest.raises(UserInputError, match="calibration data"):
        export_tflite(net, ex, tmp_path / "a.tflite", input_names=["x"], mode="int8", verify=data)
    with pytest.raises(UserInputError, match="unknown TFLite mode 'int4'"):
        export_tflite(net, ex, tmp_path / "b.tflite", input_names=["x"], layer_modes={"fc1": "int4"})


def test_missing_extra_names_it(net: torch.nn.Module, data: Dataset, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # import litert_torch → ImportError
    with pytest.raises(UserInputError) as exc:
        _export(net, data, tmp_path / "x.tflite")
    assert "devicefit[tflite]" in exc.value.problem and "pip install 'devicefit[tflite]'" in exc.value.fix
    assert not (tmp_path / "x.tflite").exists()


def test_cosine_matches_a_fresh_run(net: torch.nn.Module, data: Dataset, tmp_path: Path) -> None:
    r = _export(net, data, tmp_path / "again.tflite", mode="int8")
    ref, got = _torch(net, data.take(32)), run_tflite(r.path.read_bytes(), data.take(32), ["x"])
    assert cosine(ref, got) == pytest.approx(r.cosine, abs=1e-9)
